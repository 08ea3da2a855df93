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
//! Between groups it trims segments the sink has confirmed. It never talks to the sink.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::contract::{Completion, Durability, Error, Record, Ticket};
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
    tickets: Vec<Vec<Ticket>>,
    reserved_bytes: u64,
}

pub(crate) fn run(
    mut wal: Wal,
    rx: Receiver<WalCmd>,
    pipeline: Arc<Pipeline>,
) -> Result<(), Error> {
    let shards = pipeline.sinks.len();
    let mut group = Group {
        buf: Vec::with_capacity(64 * 1024),
        records: Vec::new(),
        tickets: vec![Vec::new(); shards],
        reserved_bytes: 0,
    };
    let group_bytes_max =
        GROUP_BYTES_MAX.min(usize::try_from(pipeline.wal_segment_bytes).unwrap_or(usize::MAX));
    let mut last_sync = Instant::now();
    let mut shutdown = false;
    while !shutdown {
        let tick = if pipeline.durability == Durability::Async {
            Duration::from_millis(ASYNC_SYNC_INTERVAL_MS).saturating_sub(last_sync.elapsed())
        } else {
            Duration::from_millis(WAL_IDLE_TICK_MS)
        };
        let first = match rx.recv_timeout(tick) {
            Ok(cmd) => Some(cmd),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            shutdown = collect(&mut wal, first, &rx, &mut group, group_bytes_max)?;
        }
        if !group.records.is_empty() {
            commit(&mut wal, &mut group, &pipeline, &mut last_sync)?;
        }
        let sync_due = last_sync.elapsed() >= Duration::from_millis(ASYNC_SYNC_INTERVAL_MS);
        if pipeline.durability == Durability::Async && sync_due {
            wal.sync()?;
            pipeline.fdatasyncs.store(wal.fdatasyncs(), Relaxed);
            last_sync = Instant::now();
        }
        // Only what the checkpoint covers may leave the log (checkpoint.rs).
        let freed = wal.trim(pipeline.checkpoint_lsn.load(Relaxed))?;
        pipeline
            .trim_wanted_lsn
            .store(wal.trim_wanted_lsn(), Relaxed);
        pipeline.wal_bytes.fetch_sub(freed, Relaxed);
        pipeline.wal_segments.store(wal.segments() as u64, Relaxed);
    }
    // Appends that raced with shutdown still get written rather than dropped.
    while let Ok(cmd) = rx.try_recv() {
        collect(&mut wal, cmd, &rx, &mut group, group_bytes_max)?;
        if !group.records.is_empty() {
            commit(&mut wal, &mut group, &pipeline, &mut last_sync)?;
        }
    }
    wal.sync()?;
    pipeline.fdatasyncs.store(wal.fdatasyncs(), Relaxed);
    Ok(())
}

/// Encodes `first` and whatever else is queued into `group`. Returns whether shutdown was asked.
fn collect(
    wal: &mut Wal,
    first: WalCmd,
    rx: &Receiver<WalCmd>,
    group: &mut Group,
    group_bytes_max: usize,
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
            } => {
                let lsn = wal.next_lsn() + group.records.len() as u64;
                let size = encode_frame(&rec, lsn, &mut group.buf)?;
                assert!(
                    size as u64 <= reserved_bytes,
                    "frame larger than its reservation"
                );
                group.reserved_bytes += reserved_bytes;
                group.records.push((lsn, Arc::new(rec)));
                if let Some(t) = ticket {
                    group.tickets[usize::from(t.shard)].push(t);
                }
            }
        }
        if group.records.len() < GROUP_RECORDS_MAX && group.buf.len() < group_bytes_max {
            next = rx.try_recv().ok();
        }
    }
    Ok(false)
}

fn commit(
    wal: &mut Wal,
    group: &mut Group,
    pipeline: &Pipeline,
    last_sync: &mut Instant,
) -> Result<(), Error> {
    let n = group.records.len() as u64;
    let sync = pipeline.durability == Durability::Sync;
    wal.append(&group.buf, n, sync)?;
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
    for (shard, tickets) in group.tickets.iter_mut().enumerate() {
        if !tickets.is_empty() {
            pipeline.sinks[shard].complete(Completion::Durable(std::mem::take(tickets)));
        }
    }
    pipeline.backlog.push(group.records.drain(..));
    group.buf.clear();
    group.reserved_bytes = 0;
    Ok(())
}
