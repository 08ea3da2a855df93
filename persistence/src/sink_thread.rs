//! The `sokdo-sink` thread: write-behind batches from the backlog into the sink.
//!
//! A batch is taken when `batch_messages_max` records wait or the oldest has waited
//! `batch_age_ms`. It leaves the backlog — and the confirmed lsn moves, letting the WAL thread
//! trim — only after the sink said `Ok`. A failed batch is retried, the same records again,
//! after a backoff that doubles from [`SINK_RETRY_MIN_MS`] to [`SINK_RETRY_MAX_MS`]; meanwhile
//! the log grows and `Stats::sink_up` is false. On shutdown it keeps draining for at most
//! [`SHUTDOWN_DRAIN_MS`]; what is left stays in the log and is replayed at the next start.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::sink::Sink;
use crate::state::Pipeline;
use crate::wal_thread::WalCmd;

pub const SINK_RETRY_MIN_MS: u64 = 50;
pub const SINK_RETRY_MAX_MS: u64 = 2_000;
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;

pub(crate) fn run(mut sink: Box<dyn Sink>, wal: Sender<WalCmd>, pipeline: Arc<Pipeline>) {
    let count_max = pipeline.batch_messages_max;
    let age = Duration::from_millis(pipeline.batch_age_ms);
    let mut backoff_ms = SINK_RETRY_MIN_MS;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let batch = pipeline.backlog.next_batch(count_max, age);
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
        match sink.apply(&batch) {
            Ok(()) => {
                pipeline.backlog.confirm(last_lsn);
                pipeline.confirmed_lsn.store(last_lsn, Relaxed);
                // A nudge, not a request: if the queue is full the WAL thread is awake anyway.
                let _ = wal.try_send(WalCmd::Trim);
                pipeline.sink_batches.fetch_add(1, Relaxed);
                pipeline.sink_up.store(true, Relaxed);
                backoff_ms = SINK_RETRY_MIN_MS;
            }
            Err(e) => {
                pipeline.sink_errors.fetch_add(1, Relaxed);
                pipeline.sink_up.store(false, Relaxed);
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
