//! [`Pipeline`]: what the handles and the three threads share about the log → sink pipeline.
//!
//! It holds three kinds of thing, and says on each field who writes it:
//! - what `open` fixed: the completion sinks and the limits from [`Config`](crate::Config);
//!   nobody writes them afterwards;
//! - the [`Backlog`] of records written but not yet confirmed, which has its own lock, taken
//!   only by persistence threads;
//! - relaxed atomics, each written by one thread (the reservation in `wal_bytes` is the one
//!   counter that handles write too). They are statistics or monotonic marks, never used as
//!   locks: a reader sees a recent value, and nothing waits on them.
//!
//! It owns no behaviour: the threads (`wal_thread`, `sink_thread`, `read_thread`) and
//! [`Handle`](crate::Handle) act on it. It sits below all of them, so none imports another
//! through it.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::backlog::Backlog;
use crate::contract::{
    CompletionSink, Config, Durability, Record, SubmitError, COMMIT_SECONDS_BOUNDS,
};
use crate::wal::Wal;

pub(crate) struct Pipeline {
    /// `sinks[i]` receives the completions of shard `i`'s tickets. Fixed at open.
    pub sinks: Vec<Arc<dyn CompletionSink>>,
    /// Fixed at open, like the five limits below.
    pub durability: Durability,
    pub batch_messages_max: usize,
    pub batch_age_ms: u64,
    pub sink_idle_lag_ms: u64,
    pub wal_bytes_max: u64,
    pub wal_segment_bytes: u64,
    pub wal_retry_backoff_max_ms: u64,
    /// Pushed by the WAL thread, drained by the sink thread, copied by the read thread.
    pub backlog: Backlog,
    /// Set once by `Persistence::shutdown`; handles then refuse appends.
    pub closing: AtomicBool,
    /// Segment bytes plus reservations of appends not yet written: handles add and remove
    /// their reservations, the WAL thread settles them on commit and subtracts trimmed bytes.
    pub wal_bytes: AtomicU64,
    /// Written by the WAL thread, like every counter down to `last_group_records`.
    pub wal_segments: AtomicU64,
    pub written_lsn: AtomicU64,
    /// Per shard, its counted handle's records written and readable (in the backlog), in
    /// append order ([`Handle::settled`](crate::Handle::settled)).
    pub settled: Vec<AtomicU64>,
    pub records_appended: AtomicU64,
    pub group_commits: AtomicU64,
    /// Per [`COMMIT_SECONDS_BOUNDS`] bucket, group commits that took that long, and their sum.
    pub commit_buckets: [AtomicU64; COMMIT_SECONDS_BOUNDS.len() + 1],
    pub commit_ns_sum: AtomicU64,
    pub fdatasyncs: AtomicU64,
    pub last_group_records: AtomicU64,
    /// The OS error of the log's last failed write or sync while it fails, 0 once it wrote
    /// again: handles refuse appends while it is set. Written by the WAL thread.
    pub wal_write_error: AtomicI32,
    pub wal_write_errors: AtomicU64,
    /// Written by the WAL thread: the lsn a checkpoint must reach for the oldest segment to
    /// be deleted (0 while there is only the live segment).
    pub trim_wanted_lsn: AtomicU64,
    /// Written by the WAL thread before a group reaches the backlog: the last lsn in a closed
    /// segment (`Wal::closed_lsn`).
    pub closed_lsn: AtomicU64,
    /// Written by the sink thread, like every field down to `sink_last_error_unix_ms`.
    pub confirmed_lsn: AtomicU64,
    /// The lsn the checkpoint file covers; the WAL thread trims only up to it.
    pub checkpoint_lsn: AtomicU64,
    pub checkpoints_written: AtomicU64,
    pub sink_batches: AtomicU64,
    pub sink_errors: AtomicU64,
    pub sink_up: AtomicBool,
    /// Whether the sink keeps up (writes its batches idle), and the batches it wrote behind.
    pub sink_idle: AtomicBool,
    pub sink_batches_behind: AtomicU64,
    /// Wall-clock time of the last failed sink batch, ms since the epoch (0: none).
    pub sink_last_error_unix_ms: AtomicU64,
    /// Written by the sink thread on each failure.
    pub last_sink_error: Mutex<Option<String>>,
}

impl Pipeline {
    /// The state after recovery: `replayed` are the records the log holds beyond what the
    /// sink confirmed; they start the backlog, and the confirmed lsn is just below them (the
    /// checkpoint covers it). `sink_up` is whether the sink answered at start-up.
    pub fn new(
        cfg: &Config,
        sinks: Vec<Arc<dyn CompletionSink>>,
        wal: &Wal,
        replayed: Vec<(u64, Record)>,
        sink_up: bool,
    ) -> Pipeline {
        let written_lsn = wal.next_lsn() - 1;
        let confirmed_lsn = written_lsn - replayed.len() as u64;
        let backlog = Backlog::default();
        backlog.push(replayed.into_iter().map(|(lsn, r)| (lsn, Arc::new(r))));
        Pipeline {
            settled: (0..sinks.len()).map(|_| AtomicU64::new(0)).collect(),
            sinks,
            durability: cfg.durability,
            batch_messages_max: cfg.batch_messages_max,
            batch_age_ms: cfg.batch_age_ms,
            sink_idle_lag_ms: cfg.sink_idle_lag_ms,
            wal_bytes_max: cfg.wal_bytes_max,
            wal_segment_bytes: cfg.wal_segment_bytes,
            wal_retry_backoff_max_ms: cfg.wal_retry_backoff_max_ms,
            backlog,
            closing: AtomicBool::new(false),
            wal_bytes: AtomicU64::new(wal.bytes()),
            wal_segments: AtomicU64::new(wal.segments() as u64),
            written_lsn: AtomicU64::new(written_lsn),
            records_appended: AtomicU64::new(0),
            group_commits: AtomicU64::new(0),
            commit_buckets: Default::default(),
            commit_ns_sum: AtomicU64::new(0),
            fdatasyncs: AtomicU64::new(0),
            last_group_records: AtomicU64::new(0),
            wal_write_error: AtomicI32::new(0),
            wal_write_errors: AtomicU64::new(0),
            trim_wanted_lsn: AtomicU64::new(wal.trim_wanted_lsn()),
            closed_lsn: AtomicU64::new(wal.closed_lsn()),
            confirmed_lsn: AtomicU64::new(confirmed_lsn),
            checkpoint_lsn: AtomicU64::new(confirmed_lsn),
            checkpoints_written: AtomicU64::new(0),
            sink_batches: AtomicU64::new(0),
            sink_errors: AtomicU64::new(0),
            sink_up: AtomicBool::new(sink_up),
            sink_idle: AtomicBool::new(false),
            sink_batches_behind: AtomicU64::new(0),
            sink_last_error_unix_ms: AtomicU64::new(0),
            last_sink_error: Mutex::new(None),
        }
    }

    /// `Some` while the log cannot be written.
    pub fn write_failure(&self) -> Option<SubmitError> {
        match self.wal_write_error.load(Relaxed) {
            0 => None,
            os_error => Some(SubmitError::Unwritable { os_error }),
        }
    }

    pub fn set_last_sink_error(&self, e: String) {
        *self
            .last_sink_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}
