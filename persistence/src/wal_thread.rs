//! The `sokdo-wal` thread: group commit.
//!
//! It blocks on the append channel; when something arrives it takes everything else already
//! queued (up to [`GROUP_RECORDS_MAX`] / [`GROUP_BYTES_MAX`]), encodes the group, writes it with
//! one io_uring write and — under [`Durability::Sync`] — one linked `fdatasync`, and only then
//! delivers [`Completion::Durable`] to each shard for its tickets. The more shards append at
//! once, the bigger the group and the fewer syncs per record: load makes it cheaper per record.
//! Under [`Durability::Async`] tickets complete after the write and the log is synced at most
//! [`ASYNC_SYNC_INTERVAL_MS`] later.
//!
//! Between groups it trims segments the checkpoint covers (the sink confirmed them and the
//! checkpoint holds their folded state). It never talks to the sink.
//!
//! **A log that cannot be written** (disk full, I/O error) does not stop the thread. The group
//! whose write or sync failed is not acknowledged: each of its tickets gets
//! [`Completion::Failed`], and the log is cut back to its state before the group (`Wal::repair`).
//! From then on handles refuse appends at once ([`SubmitError::Unwritable`](crate::SubmitError)),
//! and appends already queued are failed the same way without being tried. The thread probes the
//! disk (`Wal::probe`) after [`WAL_RETRY_BACKOFF_MIN_MS`], doubling up to
//! `wal_retry_backoff_max_ms`; the first probe that writes and syncs ends the failure, and
//! appends are accepted again. The change to failing and the recovery are logged once each.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::{Receiver, RecvTimeoutError};

use crate::contract::{
    Completion, Durability, Error, Record, Ticket, COMMIT_SECONDS_BOUNDS, WAL_RETRY_BACKOFF_MIN_MS,
};
use crate::record::encode_frame;
use crate::state::Pipeline;
use crate::wal::Wal;

/// The most records one group commit carries.
pub const GROUP_RECORDS_MAX: usize = 4096;
/// A group stops growing once its encoded frames reach this size (or `wal_segment_bytes`, if
/// smaller, so that one group never makes a segment much larger than configured and trimming
/// keeps its granularity).
pub const GROUP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Under `Durability::Async`, the longest a written group waits for its `fdatasync`.
pub const ASYNC_SYNC_INTERVAL_MS: u64 = 50;
/// How often an idle WAL thread wakes to trim confirmed segments.
pub const WAL_IDLE_TICK_MS: u64 = 100;

pub(crate) enum WalCmd {
    Append {
        rec: Record,
        ticket: Option<Ticket>,
        reserved_bytes: u64,
        /// The shard whose handle appended it ([`Handle::for_shard`](crate::Handle::for_shard)):
        /// counted in its `settled` once written.
        shard: Option<u16>,
    },
    /// The sink confirmed more: trim now rather than at the next idle tick.
    Trim,
    Shutdown,
    /// Fault injection for tests ([`Handle::inject_panic`](crate::Handle::inject_panic)).
    Panic,
}

struct Group {
    buf: Vec<u8>,
    records: Vec<(u64, Arc<Record>)>,
    /// Per record: its reservation, whether a ticket waits for it, and its counted shard.
    kinds: Vec<(u64, bool, Option<u16>)>,
    tickets: Vec<Vec<Ticket>>,
    /// Per shard, the group's records appended through its counted handle.
    counted: Vec<u64>,
    reserved_bytes: u64,
    /// [`GROUP_BYTES_MAX`], or `wal_segment_bytes` if smaller.
    bytes_max: usize,
}

impl Group {
    fn full(&self) -> bool {
        self.records.len() >= GROUP_RECORDS_MAX || self.buf.len() >= self.bytes_max
    }

    /// Encodes `rec` as the next frame of the group, whose first lsn is `first_lsn`.
    fn push(
        &mut self,
        first_lsn: u64,
        rec: Arc<Record>,
        reserved_bytes: u64,
        ticket: Option<Ticket>,
        shard: Option<u16>,
    ) -> Result<(), Error> {
        let lsn = first_lsn + self.records.len() as u64;
        let size = encode_frame(&rec, lsn, &mut self.buf)?;
        assert!(
            size as u64 <= reserved_bytes,
            "frame larger than its reservation"
        );
        self.reserved_bytes += reserved_bytes;
        self.records.push((lsn, rec));
        self.kinds.push((reserved_bytes, ticket.is_some(), shard));
        if let Some(t) = ticket {
            self.tickets[usize::from(t.shard)].push(t);
        }
        if let Some(c) = shard.and_then(|s| self.counted.get_mut(usize::from(s))) {
            *c += 1;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.records.clear();
        self.kinds.clear();
        self.counted.iter_mut().for_each(|c| *c = 0);
        self.reserved_bytes = 0;
        debug_assert!(self.tickets.iter().all(Vec::is_empty));
    }
}

/// The log could not be written: appends are refused until a probe writes again.
struct Failing {
    since: Instant,
    next_probe: Instant,
    backoff_ms: u64,
}

/// The thread's state between commands.
struct Log {
    wal: Wal,
    pipeline: Arc<Pipeline>,
    group: Group,
    last_sync: Instant,
    failing: Option<Failing>,
    /// Records without a ticket whose group could not be written, in log order, with their
    /// reservations. Nobody waits for them because they were already answered (rooms,
    /// members, read pointers; sends under `Durability::Async`), so they are not dropped:
    /// they are written first once the log can be written again. Bounded by what the append
    /// channel held when the log failed, since handles refuse appends while it fails.
    held: VecDeque<(Arc<Record>, u64, Option<u16>)>,
    /// Per shard, the counted records of refused groups that had a ticket (answered
    /// `Failed`, never written): they join `settled` once the held records are written, so
    /// `settled` never covers a held record before it is written.
    refused_counted: Vec<u64>,
}

pub(crate) fn run(wal: Wal, rx: Receiver<WalCmd>, pipeline: Arc<Pipeline>) -> Result<(), Error> {
    let bytes_max =
        GROUP_BYTES_MAX.min(usize::try_from(pipeline.wal_segment_bytes).unwrap_or(usize::MAX));
    let mut log = Log {
        wal,
        group: Group {
            buf: Vec::with_capacity(64 * 1024),
            records: Vec::new(),
            kinds: Vec::new(),
            tickets: vec![Vec::new(); pipeline.sinks.len()],
            counted: vec![0; pipeline.sinks.len()],
            reserved_bytes: 0,
            bytes_max,
        },
        refused_counted: vec![0; pipeline.sinks.len()],
        pipeline,
        last_sync: Instant::now(),
        failing: None,
        held: VecDeque::new(),
    };
    let mut shutdown = false;
    while !shutdown {
        let first = match rx.recv_timeout(log.tick()) {
            Ok(cmd) => Some(cmd),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            shutdown = collect(&mut log.wal, first, &rx, &mut log.group)?;
        }
        log.write_group();
        log.between_groups();
    }
    // Appends that raced with shutdown still get written (or refused) rather than dropped.
    while let Ok(cmd) = rx.try_recv() {
        collect(&mut log.wal, cmd, &rx, &mut log.group)?;
        log.write_group();
    }
    if log.failing.is_some() {
        log.recover();
    }
    if !log.held.is_empty() {
        tracing::error!(
            records = log.held.len(),
            "shutting down with records the write-ahead log could not write: they are lost"
        );
    }
    log.wal.sync()?;
    log.pipeline.fdatasyncs.store(log.wal.fdatasyncs(), Relaxed);
    Ok(())
}

impl Log {
    /// How long to wait for the next command: until the async sync or the next probe is due.
    fn tick(&self) -> Duration {
        let tick = if self.pipeline.durability == Durability::Async {
            Duration::from_millis(ASYNC_SYNC_INTERVAL_MS).saturating_sub(self.last_sync.elapsed())
        } else {
            Duration::from_millis(WAL_IDLE_TICK_MS)
        };
        match &self.failing {
            Some(f) => tick.min(f.next_probe.saturating_duration_since(Instant::now())),
            None => tick,
        }
    }

    /// Commits the collected group, or refuses it if the log cannot be written.
    fn write_group(&mut self) {
        if self.group.records.is_empty() {
            return;
        }
        if self.failing.is_none() {
            let p = &self.pipeline;
            match commit(&mut self.wal, &mut self.group, p, &mut self.last_sync) {
                Ok(()) => return,
                Err(e) => self.failed(&e),
            }
        }
        self.refuse_group();
    }

    /// Completes every ticket of the group with `Failed` and releases those records'
    /// reservations (none was acknowledged); the records without a ticket are held.
    fn refuse_group(&mut self) {
        let p = &self.pipeline;
        let error = p
            .write_failure()
            .expect("groups are refused only while failing");
        let records = self.group.records.drain(..).map(|(_, r)| r);
        for (rec, (reserved_bytes, ticketed, shard)) in records.zip(self.group.kinds.drain(..)) {
            if ticketed {
                p.wal_bytes.fetch_sub(reserved_bytes, Relaxed);
                if let Some(c) = shard.and_then(|s| self.refused_counted.get_mut(usize::from(s))) {
                    *c += 1;
                }
            } else {
                self.held.push_back((rec, reserved_bytes, shard));
            }
        }
        for (shard, tickets) in self.group.tickets.iter_mut().enumerate() {
            if !tickets.is_empty() {
                p.sinks[shard].complete(Completion::Failed(std::mem::take(tickets), error.clone()));
            }
        }
        self.group.clear();
    }

    /// A write, sync, rotation, trim or probe failed. Handles refuse appends from now on; the
    /// change to failing is logged once, and the next probe waits twice as long as the last.
    fn failed(&mut self, e: &Error) {
        let p = &self.pipeline;
        p.wal_write_errors.fetch_add(1, Relaxed);
        // Before any `Failed` completion goes out: an append after the refusal is refused too.
        p.wal_write_error.store(e.os_error(), Relaxed);
        let now = Instant::now();
        let backoff_ms = match &self.failing {
            Some(f) => (f.backoff_ms * 2).min(p.wal_retry_backoff_max_ms),
            None => {
                tracing::error!(
                    error = %e,
                    "the write-ahead log cannot be written: sends are refused and /readyz \
                     answers 503 until a retry writes it again"
                );
                WAL_RETRY_BACKOFF_MIN_MS
            }
        };
        let since = self.failing.as_ref().map_or(now, |f| f.since);
        self.failing = Some(Failing {
            since,
            next_probe: now + Duration::from_millis(backoff_ms),
            backoff_ms,
        });
    }

    /// Probes the log and writes the held records; if both work, appends are accepted again.
    fn recover(&mut self) {
        let since = self.failing.as_ref().map_or_else(Instant::now, |f| f.since);
        if let Err(e) = self.wal.probe().and_then(|()| self.write_held()) {
            self.failed(&e);
            return;
        }
        self.failing = None;
        self.pipeline.wal_write_error.store(0, Relaxed);
        for (settled, refused) in self.pipeline.settled.iter().zip(&mut self.refused_counted) {
            settled.fetch_add(std::mem::take(refused), Release);
        }
        let failed_ms = since.elapsed().as_millis() as u64;
        tracing::info!(failed_ms, "the write-ahead log is written again");
    }

    /// Writes the held records, in order, as groups; each leaves `held` once written.
    fn write_held(&mut self) -> Result<(), Error> {
        while !self.held.is_empty() {
            let first_lsn = self.wal.next_lsn();
            let mut n = 0;
            for (rec, reserved_bytes, shard) in &self.held {
                if self.group.full() {
                    break;
                }
                if let Err(e) =
                    self.group
                        .push(first_lsn, rec.clone(), *reserved_bytes, None, *shard)
                {
                    self.group.clear();
                    return Err(e);
                }
                n += 1;
            }
            let p = &self.pipeline;
            if let Err(e) = commit(&mut self.wal, &mut self.group, p, &mut self.last_sync) {
                self.group.clear();
                return Err(e);
            }
            self.held.drain(..n);
        }
        Ok(())
    }

    /// The work between groups: the async sync, the probe of a failing log, trimming.
    fn between_groups(&mut self) {
        let p = self.pipeline.clone();
        match &self.failing {
            Some(f) if Instant::now() >= f.next_probe => self.recover(),
            Some(_) => {}
            None => {
                let sync_due =
                    self.last_sync.elapsed() >= Duration::from_millis(ASYNC_SYNC_INTERVAL_MS);
                if p.durability == Durability::Async && sync_due {
                    self.last_sync = Instant::now();
                    if let Err(e) = self.wal.sync() {
                        self.failed(&e);
                    }
                }
            }
        }
        p.fdatasyncs.store(self.wal.fdatasyncs(), Relaxed);
        // Only what the checkpoint covers may leave the log (checkpoint.rs).
        match self.wal.trim(p.checkpoint_lsn.load(Relaxed)) {
            Ok(freed) => {
                p.wal_bytes.fetch_sub(freed, Relaxed);
            }
            Err(e) => self.failed(&e),
        }
        p.trim_wanted_lsn.store(self.wal.trim_wanted_lsn(), Relaxed);
        p.wal_segments.store(self.wal.segments() as u64, Relaxed);
    }
}

/// Encodes `first` and whatever else is queued into `group`. Returns whether shutdown was asked.
fn collect(
    wal: &mut Wal,
    first: WalCmd,
    rx: &Receiver<WalCmd>,
    group: &mut Group,
) -> Result<bool, Error> {
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        match cmd {
            WalCmd::Shutdown => return Ok(true),
            WalCmd::Trim => {}
            WalCmd::Panic => panic!("injected fault: the log thread panics"),
            WalCmd::Append {
                rec,
                ticket,
                reserved_bytes,
                shard,
            } => group.push(wal.next_lsn(), Arc::new(rec), reserved_bytes, ticket, shard)?,
        }
        if !group.full() {
            next = rx.try_recv().ok();
        }
    }
    Ok(false)
}

/// One group commit's duration into the pipeline's buckets (`sokdo_wal_commit_seconds`).
fn observe_commit(pipeline: &Pipeline, took: Duration) {
    let at = COMMIT_SECONDS_BOUNDS.partition_point(|b| *b < took.as_secs_f64());
    pipeline.commit_buckets[at].fetch_add(1, Relaxed);
    let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    pipeline.commit_ns_sum.fetch_add(ns, Relaxed);
}

fn commit(
    wal: &mut Wal,
    group: &mut Group,
    pipeline: &Pipeline,
    last_sync: &mut Instant,
) -> Result<(), Error> {
    let n = group.records.len() as u64;
    let sync = pipeline.durability == Durability::Sync;
    let started = Instant::now();
    wal.append(&group.buf, n, sync)?;
    observe_commit(pipeline, started.elapsed());
    // Before the sink can see this group: it checkpoints once a closed segment is confirmed.
    pipeline.closed_lsn.store(wal.closed_lsn(), Relaxed);
    if sync {
        *last_sync = Instant::now();
    }
    pipeline
        .wal_bytes
        .fetch_sub(group.reserved_bytes - group.buf.len() as u64, Relaxed);
    pipeline.written_lsn.store(wal.next_lsn() - 1, Relaxed);
    pipeline.records_appended.fetch_add(n, Relaxed);
    pipeline.group_commits.fetch_add(1, Relaxed);
    pipeline.fdatasyncs.store(wal.fdatasyncs(), Relaxed);
    pipeline.last_group_records.store(n, Relaxed);
    // Readable (the read thread merges the backlog) before anyone hears it is written: a
    // shard may drop a message from its cache as soon as either says so.
    pipeline.backlog.push(group.records.drain(..));
    for (settled, counted) in pipeline.settled.iter().zip(&group.counted) {
        if *counted > 0 {
            settled.fetch_add(*counted, Release);
        }
    }
    for (shard, tickets) in group.tickets.iter_mut().enumerate() {
        if !tickets.is_empty() {
            pipeline.sinks[shard].complete(Completion::Durable(std::mem::take(tickets)));
        }
    }
    group.clear();
    Ok(())
}
