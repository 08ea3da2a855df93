//! The `sokdo-sink` thread: write-behind batches from the backlog into the sink.
//!
//! A batch is taken when `batch_messages_max` records wait or the oldest has waited
//! `batch_age_ms`. It leaves the backlog — and the confirmed lsn moves, letting the WAL thread
//! trim — only after the sink said `Ok`. A failed batch is retried, the same records again,
//! after a backoff that doubles from [`SINK_RETRY_MIN_MS`] to [`SINK_RETRY_MAX_MS`]; meanwhile
//! the log grows and `Stats::sink_up` is false. On shutdown it keeps draining for at most
//! [`SHUTDOWN_DRAIN_MS`]; what is left stays in the log and is replayed at the next start.
//!
//! It also keeps the folded state of every confirmed record and, when the WAL thread has a
//! whole segment it could delete, writes it to the checkpoint file before allowing the trim
//! (`checkpoint.rs`). Going down and coming back up is logged once each.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::Sender;

use crate::checkpoint::{self, Checkpoint};
use crate::sched::Priority;
use crate::sink::Sink;
use crate::snapshot::Rooms;
use crate::state::Pipeline;
use crate::wal_thread::WalCmd;

pub const SINK_RETRY_MIN_MS: u64 = 50;
pub const SINK_RETRY_MAX_MS: u64 = 2_000;
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;

/// The folded state of every confirmed record, and where to checkpoint it.
pub(crate) struct Confirmed {
    pub rooms: Rooms,
    pub path: std::path::PathBuf,
}

impl Confirmed {
    /// Writes the checkpoint once it lets the WAL thread delete a segment: the oldest one's
    /// end is confirmed (its value may be a moment old: that only delays), or every closed
    /// segment is (published before the records reach the backlog, so the last batch of a
    /// drain always sees it — nothing stays untrimmed for want of another batch).
    fn checkpoint_if_wanted(&self, pipeline: &Pipeline, lsn: u64, wal: &Sender<WalCmd>) {
        let covered = pipeline.checkpoint_lsn.load(Relaxed);
        let frees = |end: u64| covered < end && end <= lsn;
        if !frees(pipeline.trim_wanted_lsn.load(Relaxed))
            && !frees(pipeline.closed_lsn.load(Relaxed))
        {
            return;
        }
        let cp = Checkpoint {
            lsn,
            rooms: self.rooms.snapshots(),
        };
        match checkpoint::store(&self.path, &cp) {
            Ok(()) => {
                pipeline.checkpoint_lsn.store(lsn, Relaxed);
                pipeline.checkpoints_written.fetch_add(1, Relaxed);
                let _ = wal.try_send(WalCmd::Trim);
            }
            // The log keeps the records (it may fill up and refuse appends): nothing is lost.
            Err(e) => {
                tracing::error!(error = %e, "writing the checkpoint failed; the log is not trimmed")
            }
        }
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn run(
    mut sink: Box<dyn Sink>,
    wal: Sender<WalCmd>,
    pipeline: Arc<Pipeline>,
    mut confirmed: Confirmed,
) {
    let count_max = pipeline.batch_messages_max;
    let age = Duration::from_millis(pipeline.batch_age_ms);
    let mut backoff_ms = SINK_RETRY_MIN_MS;
    let mut drain_deadline: Option<Instant> = None;
    let mut priority = Priority::start(pipeline.sink_idle_lag_ms);
    pipeline.sink_idle.store(priority.keeps_up(), Relaxed);
    loop {
        let batch = pipeline.backlog.next_batch(count_max, age);
        // The batch is still in the backlog: its first record is the oldest waiting.
        let waited = pipeline.backlog.oldest_waited().unwrap_or_default();
        if pipeline.closing.load(Relaxed) {
            let deadline = *drain_deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS));
            if batch.is_empty() || Instant::now() >= deadline {
                return;
            }
        }
        let Some(&(last_lsn, _)) = batch.last() else {
            continue;
        };
        // The write (and the fold of its records) in the shards' idle time while the sink
        // keeps up (`sched.rs`); nothing shared is locked in between.
        let (idle, behind) = priority.enter(waited, drain_deadline.is_some());
        pipeline.sink_idle.store(priority.keeps_up(), Relaxed);
        if behind {
            pipeline.sink_batches_behind.fetch_add(1, Relaxed);
        }
        let written = sink.apply(&batch).inspect(|()| {
            batch.iter().for_each(|(_, r)| confirmed.rooms.apply(r));
        });
        priority.leave(idle);
        match written {
            Ok(()) => {
                pipeline.backlog.confirm(last_lsn);
                pipeline.confirmed_lsn.store(last_lsn, Relaxed);
                confirmed.checkpoint_if_wanted(&pipeline, last_lsn, &wal);
                pipeline.sink_batches.fetch_add(1, Relaxed);
                if !pipeline.sink_up.swap(true, Relaxed) {
                    tracing::info!(
                        pending = pipeline.backlog.len(),
                        "sink is up: draining the log"
                    );
                }
                backoff_ms = SINK_RETRY_MIN_MS;
            }
            Err(e) => {
                pipeline.sink_errors.fetch_add(1, Relaxed);
                pipeline
                    .sink_last_error_unix_ms
                    .store(now_unix_ms(), Relaxed);
                if pipeline.sink_up.swap(false, Relaxed) {
                    tracing::warn!(error = %e, "sink is down: records stay in the log, retrying");
                }
                pipeline.set_last_sink_error(e.to_string());
                let wait = Duration::from_millis(backoff_ms);
                match drain_deadline {
                    // Shutting down: the backlog no longer blocks, so pace retries here.
                    Some(d) => {
                        std::thread::sleep(wait.min(d.saturating_duration_since(Instant::now())))
                    }
                    None => pipeline.backlog.wait_unless_closing(wait),
                }
                backoff_ms = (backoff_ms * 2).min(SINK_RETRY_MAX_MS);
            }
        }
    }
}
