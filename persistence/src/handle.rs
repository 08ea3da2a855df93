//! [`Persistence`] (owns the threads) and [`Handle`] (what shards hold).
//!
//! `open` replays the log, opens the sink, folds the replay over the sink's snapshot and starts
//! the three threads. A `Handle` only reserves log space with one atomic and `try_send`s on a
//! bounded channel: it never blocks, never locks, never does I/O.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::queue::{bounded, Sender, TrySendError};

use crate::checkpoint::{self, Checkpoint};
use crate::contract::{
    CompletionSink, Config, Error, ReadRequest, Record, RoomSnapshot, Stats, SubmitError, Ticket,
};
use crate::mongo;
use crate::read_thread::{self, ReadCmd};
use crate::record::RECORD_BYTES_MAX;
use crate::sink::{Opened, Sink, SinkReader};
use crate::sink_thread::{self, Confirmed};
use crate::snapshot::Rooms;
use crate::state::Pipeline;
use crate::store;
use crate::wal::Wal;
use crate::wal_thread::{self, WalCmd};

/// Appends queued for the WAL thread before `append` answers `Full`.
pub const APPEND_QUEUE_RECORDS_MAX: usize = 65_536;
/// Reads queued for the read thread before `read` answers `Full`.
pub const READ_QUEUE_REQUESTS_MAX: usize = 4_096;

/// What shards hold: cheap to clone, `Send`. **It never blocks and never locks.**
///
/// A shard thread runs thousands of connections on one core (DESIGN §1): one blocking call
/// stalls all of them, and a lock shared with a persistence thread would let a slow disk or a
/// slow sink reach into the shard through that lock. So every method here touches only
/// relaxed atomics, the immutable part of the shared `Pipeline` (`state.rs`), and the non-blocking `try_send` of a
/// bounded channel (`queue.rs`: crossbeam's, allocated by use), whose refusal is an answer
/// (`Full`), never a wait:
/// - [`append`](Handle::append): one `fetch_add` reserves log space, then `try_send`;
/// - [`read`](Handle::read): `try_send`;
/// - [`stats`](Handle::stats): atomic loads only — the backlog's length included, which its
///   lock holders maintain as an atomic (`Backlog::len`);
/// - [`inject_panic`](Handle::inject_panic) (tests): `try_send`.
///
/// The one lock on that path is not ours: when the receiving thread is parked, crossbeam's
/// `try_send` takes the channel's waker mutex for the few instructions it needs to unpark it.
/// No holder of that mutex ever waits while holding it. What does take a lock — the last sink
/// error — is on [`Persistence`], which the process holds, not the shards.
#[derive(Clone)]
pub struct Handle {
    appends: Sender<WalCmd>,
    reads: Sender<ReadCmd>,
    pipeline: Arc<Pipeline>,
    /// Set by [`Handle::for_shard`]: this handle's appends are counted in that shard's
    /// [`settled`](Handle::settled).
    shard: Option<u16>,
}

impl Handle {
    /// A handle whose appends are counted for `shard` (one thread's appends: the count is
    /// in the order they were accepted). `None` when `shard` is not one of the shards.
    pub fn for_shard(&self, shard: u16) -> Option<Handle> {
        (usize::from(shard) < self.pipeline.settled.len()).then(|| Handle {
            shard: Some(shard),
            ..self.clone()
        })
    }

    /// How many of this handle's appends (a [`for_shard`](Handle::for_shard) handle; 0 for
    /// another) are written and readable by [`read`](Handle::read), in the order accepted:
    /// the first `settled()` appends are. A record refused with `Failed` counts once the
    /// log can be written again (records written after it then are too). One atomic load.
    pub fn settled(&self) -> u64 {
        self.shard
            .and_then(|s| self.pipeline.settled.get(usize::from(s)))
            .map_or(0, |a| a.load(std::sync::atomic::Ordering::Acquire))
    }

    fn check_shard(&self, ticket: Option<Ticket>) -> Result<(), SubmitError> {
        match ticket {
            Some(t) if usize::from(t.shard) >= self.pipeline.sinks.len() => {
                Err(SubmitError::UnknownShard(t.shard))
            }
            _ => Ok(()),
        }
    }

    /// Queues `rec` for the log. `Ok` means accepted: it will be written (and `ticket`, if any,
    /// completed with [`Completion::Durable`](crate::Completion::Durable)) unless the process
    /// dies first, or completed with [`Completion::Failed`](crate::Completion::Failed) if the
    /// log cannot be written. `Full` means nothing was accepted: the log is at `wal_bytes_max`
    /// (the sink is behind) or the hand-off queue is full. `Unwritable` means nothing was
    /// accepted because the log's last write or sync failed and it has not recovered yet.
    pub fn append(&self, rec: Record, ticket: Option<Ticket>) -> Result<(), SubmitError> {
        self.check_shard(ticket)?;
        if self.pipeline.closing.load(Relaxed) {
            return Err(SubmitError::Closed);
        }
        if let Some(e) = self.pipeline.write_failure() {
            return Err(e);
        }
        let reserved_bytes = rec.frame_bytes_upper_bound();
        if reserved_bytes > RECORD_BYTES_MAX as u64 {
            return Err(SubmitError::TooLarge);
        }
        let before = self.pipeline.wal_bytes.fetch_add(reserved_bytes, Relaxed);
        if before + reserved_bytes > self.pipeline.wal_bytes_max {
            self.pipeline.wal_bytes.fetch_sub(reserved_bytes, Relaxed);
            return Err(SubmitError::Full);
        }
        match self.appends.try_send(WalCmd::Append {
            rec,
            ticket,
            reserved_bytes,
            shard: self.shard,
        }) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.pipeline.wal_bytes.fetch_sub(reserved_bytes, Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }

    /// `Some(SubmitError::Unwritable { .. })` while the log cannot be written (for `/readyz`);
    /// one atomic load.
    pub fn write_failure(&self) -> Option<SubmitError> {
        self.pipeline.write_failure()
    }

    /// Test only (fault injection): makes the log thread panic once it takes this command.
    /// Like every `Handle` method it does not wait: with the append queue full
    /// ([`APPEND_QUEUE_RECORDS_MAX`] records waiting) the fault is not injected.
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        let _ = self.appends.try_send(WalCmd::Panic);
    }

    /// Queues a history read; the answer comes as [`Completion::Read`](crate::Completion::Read)
    /// to `ticket.shard`.
    pub fn read(&self, req: ReadRequest, ticket: Ticket) -> Result<(), SubmitError> {
        self.check_shard(Some(ticket))?;
        match self.reads.try_send(ReadCmd::Read { req, ticket }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// The figures for `/metrics`, from atomic loads only: a shard may call it at any time.
    pub fn stats(&self) -> Stats {
        let s = &self.pipeline;
        Stats {
            wal_bytes: s.wal_bytes.load(Relaxed),
            wal_segments: s.wal_segments.load(Relaxed),
            wal_records_pending_sink: s.backlog.len() as u64,
            sink_lag_records: s
                .written_lsn
                .load(Relaxed)
                .saturating_sub(s.confirmed_lsn.load(Relaxed)),
            records_appended: s.records_appended.load(Relaxed),
            group_commits: s.group_commits.load(Relaxed),
            commit_buckets: std::array::from_fn(|i| s.commit_buckets[i].load(Relaxed)),
            commit_ns_sum: s.commit_ns_sum.load(Relaxed),
            fdatasyncs: s.fdatasyncs.load(Relaxed),
            last_group_records: s.last_group_records.load(Relaxed),
            sink_batches: s.sink_batches.load(Relaxed),
            sink_errors: s.sink_errors.load(Relaxed),
            sink_up: s.sink_up.load(Relaxed),
            sink_idle: s.sink_idle.load(Relaxed),
            sink_batches_behind: s.sink_batches_behind.load(Relaxed),
            wal_write_failing: s.wal_write_error.load(Relaxed) != 0,
            wal_write_errors: s.wal_write_errors.load(Relaxed),
            sink_last_error_unix_ms: s.sink_last_error_unix_ms.load(Relaxed),
            checkpoints_written: s.checkpoints_written.load(Relaxed),
        }
    }
}

/// The state of everything the log no longer holds: the sink's snapshot with the checkpoint
/// laid over it (the checkpoint is never older than what it covers: settings and members come
/// from it), or the checkpoint alone while the sink is unreachable. Unreachable and no
/// checkpoint is refused: the sink may hold rooms whose seqs this instance would reuse.
fn recovered_base(
    cp_path: &std::path::Path,
    sink_rooms: Result<Vec<RoomSnapshot>, Error>,
    retry_keys_max: usize,
) -> Result<Rooms, Error> {
    let checkpoint = match (checkpoint::load(cp_path), &sink_rooms) {
        // With the sink reachable, sink ⊕ log is complete without it: it is rewritten below.
        (Err(e), Ok(_)) => {
            tracing::warn!(error = %e, "ignoring a damaged checkpoint: the sink is reachable");
            None
        }
        (loaded, _) => loaded?,
    };
    match (sink_rooms, checkpoint) {
        (Ok(rooms), cp) => {
            let mut base = Rooms::from_snapshots(rooms, retry_keys_max);
            if let Some(cp) = cp {
                base.overlay(cp.rooms);
            }
            Ok(base)
        }
        (Err(e), Some(cp)) => {
            tracing::warn!(error = %e, checkpoint_lsn = cp.lsn,
                "the sink is unreachable: starting from the checkpoint and the log");
            Ok(Rooms::from_snapshots(cp.rooms, retry_keys_max))
        }
        (Err(e), None) => Err(Error::NoCheckpoint {
            path: cp_path.to_path_buf(),
            cause: Box::new(e),
        }),
    }
}

/// Owns the WAL, sink and read threads. Dropping it shuts down like [`Persistence::shutdown`],
/// ignoring errors.
pub struct Persistence {
    handle: Handle,
    wal: Option<JoinHandle<Result<(), Error>>>,
    sink: Option<JoinHandle<()>>,
    read: Option<JoinHandle<()>>,
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(Error::io(name))
}

impl Persistence {
    /// Replays the log, opens the sink and starts the threads. `sinks[i]` receives the
    /// completions of tickets with `shard == i`. Returns every room's state for the engine.
    pub fn open(
        cfg: Config,
        sinks: Vec<Arc<dyn CompletionSink>>,
    ) -> Result<(Persistence, Vec<RoomSnapshot>), Error> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(Error::io(&cfg.data_dir))?;
        let (wal, replay) = Wal::open(&cfg.data_dir.join("wal"), cfg.wal_segment_bytes)?;
        let Opened {
            sink,
            reader,
            rooms,
        } = match &cfg.mongodb_uri {
            Some(uri) => mongo::open_sink(uri, &cfg.mongodb_database, cfg.retry_keys_max)?,
            None => store::Store::open_sink(&cfg.data_dir.join("store.redb"), cfg.retry_keys_max)?,
        };
        let sink_up = rooms.is_ok();
        let cp_path = checkpoint::path(&cfg.data_dir);
        let base = recovered_base(&cp_path, rooms, cfg.retry_keys_max)?;
        let mut folded = base.clone();
        replay.records.iter().for_each(|(_, r)| folded.apply(r));
        let pipeline = Arc::new(Pipeline::new(&cfg, sinks, &wal, replay.records, sink_up));
        if sink_up {
            // The sink's snapshot ⊕ the old checkpoint is everything below the log: keeping it
            // lets a later start go on without the sink (a fresh data dir gets one here).
            let lsn = pipeline.checkpoint_lsn.load(Relaxed);
            let rooms = base.snapshots();
            checkpoint::store(&cp_path, &Checkpoint { lsn, rooms })?;
        }
        let confirmed = Confirmed {
            rooms: base,
            path: cp_path,
        };
        let p = Persistence::start(pipeline, wal, (sink, confirmed), reader)?;
        Ok((p, folded.into_snapshots()))
    }

    /// Starts the three threads on a recovered log and an opened sink.
    fn start(
        pipeline: Arc<Pipeline>,
        wal: Wal,
        (sink, confirmed): (Box<dyn Sink>, Confirmed),
        reader: Box<dyn SinkReader>,
    ) -> Result<Persistence, Error> {
        let (append_tx, append_rx) = bounded(APPEND_QUEUE_RECORDS_MAX);
        let (read_tx, read_rx) = bounded(READ_QUEUE_REQUESTS_MAX);
        let s = pipeline.clone();
        let wal = spawn("sokdo-wal", move || {
            let result = wal_thread::run(wal, append_rx, s.clone());
            if let Err(e) = &result {
                // Nothing would take the records of the callers still waiting for their
                // completions: a process that goes on without its log only seems alive.
                assert!(
                    s.closing.load(Relaxed),
                    "the log thread failed and cannot take more records: {e}"
                );
            }
            result
        })?;
        let (s, nudge) = (pipeline.clone(), append_tx.clone());
        let sink = spawn("sokdo-sink", move || {
            sink_thread::run(sink, nudge, s, confirmed)
        })?;
        let s = pipeline.clone();
        let read = spawn("sokdo-read", move || read_thread::run(reader, read_rx, s))?;
        let handle = Handle {
            appends: append_tx,
            reads: read_tx,
            pipeline,
            shard: None,
        };
        Ok(Persistence {
            handle,
            wal: Some(wal),
            sink: Some(sink),
            read: Some(read),
        })
    }

    /// The persistence threads (`sokdo-wal`, `sokdo-sink`, `sokdo-read`) as pthreads, for
    /// the process to set their scheduling (the engine's `--persistence-threads-idle`).
    pub fn threads(&self) -> Vec<(&'static str, std::os::unix::thread::RawPthread)> {
        use std::os::unix::thread::JoinHandleExt;
        let mut out = Vec::new();
        if let Some(t) = &self.wal {
            out.push(("sokdo-wal", t.as_pthread_t()));
        }
        if let Some(t) = &self.sink {
            out.push(("sokdo-sink", t.as_pthread_t()));
        }
        if let Some(t) = &self.read {
            out.push(("sokdo-read", t.as_pthread_t()));
        }
        out
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The last error the sink returned, for logs (`None` if it never failed). It takes the
    /// lock the sink thread writes under, which is why it is here and not on [`Handle`].
    pub fn last_sink_error(&self) -> Option<String> {
        self.handle
            .pipeline
            .last_sink_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Flushes and syncs the log, drains what the sink accepts within
    /// [`SHUTDOWN_DRAIN_MS`](crate::SHUTDOWN_DRAIN_MS) (the rest stays in the log
    /// for the next start) and joins the threads. Call it after the shards stopped appending.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let pipeline = &self.handle.pipeline;
        pipeline.closing.store(true, Relaxed);
        let mut result = Ok(());
        if let Some(wal) = self.wal.take() {
            // The WAL thread may have died of an I/O error, dropping its receiver: ignore that.
            let _ = self.handle.appends.send(WalCmd::Shutdown);
            result = wal
                .join()
                .map_err(|_| Error::ThreadPanicked("sokdo-wal"))
                .and_then(|r| r);
        }
        pipeline.backlog.close();
        if let Some(sink) = self.sink.take() {
            if sink.join().is_err() && result.is_ok() {
                result = Err(Error::ThreadPanicked("sokdo-sink"));
            }
        }
        if let Some(read) = self.read.take() {
            let _ = self.handle.reads.send(ReadCmd::Shutdown);
            if read.join().is_err() && result.is_ok() {
                result = Err(Error::ThreadPanicked("sokdo-read"));
            }
        }
        result
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
