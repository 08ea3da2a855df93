//! The types the engine sees: configuration, records, tickets, completions, errors.
//!
//! This module owns no behaviour beyond validation; it never does I/O.

#![forbid(unsafe_code)]

use std::path::PathBuf;

/// When a `send` may be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// [`Completion::Durable`] only after the record's group is `fdatasync`ed.
    Sync,
    /// [`Completion::Durable`] as soon as the group is written (page cache); the log is synced
    /// every [`ASYNC_SYNC_INTERVAL_MS`](crate::ASYNC_SYNC_INTERVAL_MS). A crash may
    /// lose the last unsynced groups.
    Async,
}

/// Persistence configuration. Every limit carries its unit in its name.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory holding `wal/` (segments) and `store.redb` (the embedded store).
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Total bytes of log segments; past it, [`SubmitError::Full`].
    pub wal_bytes_max: u64,
    /// A segment is closed and a new one started past this size; trimming deletes whole segments.
    pub wal_segment_bytes: u64,
    /// A sink batch is written once it holds this many records…
    pub batch_messages_max: usize,
    /// …or once its oldest record has waited this long.
    pub batch_age_ms: u64,
    /// The sink thread writes its batches as `SCHED_IDLE` (only in time the shards leave)
    /// until a record has waited this long for it, and as a normal thread until it has
    /// caught up (below half of it); 0: always a normal thread (`sched.rs`).
    pub sink_idle_lag_ms: u64,
    /// `Some` selects the MongoDB sink instead of the embedded store.
    pub mongodb_uri: Option<String>,
    pub mongodb_database: String,
    /// While the log cannot be written, the WAL thread probes it again after 100 ms, doubling
    /// the wait up to this bound.
    pub wal_retry_backoff_max_ms: u64,
    /// `client_msg_id`s recovered per room (the engine's retry window, by count): the
    /// newest this many messages with a key come back in [`RoomSnapshot::retry_keys`].
    pub retry_keys_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            durability: Durability::Sync,
            wal_bytes_max: 256 * 1024 * 1024,
            wal_segment_bytes: 16 * 1024 * 1024,
            batch_messages_max: 1000,
            batch_age_ms: 50,
            sink_idle_lag_ms: 1000,
            mongodb_uri: None,
            mongodb_database: "sokdo".to_string(),
            wal_retry_backoff_max_ms: 1000,
            retry_keys_max: 4096,
        }
    }
}

/// The first wait before the WAL thread probes a log it could not write; it doubles up to
/// [`Config::wal_retry_backoff_max_ms`].
pub const WAL_RETRY_BACKOFF_MIN_MS: u64 = 100;

/// The smallest segment we accept: below it, rotation would dominate the write path.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 4096;

impl Config {
    /// Rejects configurations that could never work, with the reason.
    pub fn validate(&self) -> Result<(), Error> {
        if self.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN {
            return Err(Error::Config(format!(
                "wal_segment_bytes must be at least {WAL_SEGMENT_BYTES_MIN}"
            )));
        }
        // The live segment is never trimmed, so the log needs room for it plus at least one more.
        if self.wal_bytes_max < 2 * self.wal_segment_bytes {
            return Err(Error::Config(
                "wal_bytes_max must be at least twice wal_segment_bytes".to_string(),
            ));
        }
        if self.wal_retry_backoff_max_ms < WAL_RETRY_BACKOFF_MIN_MS {
            return Err(Error::Config(format!(
                "wal_retry_backoff_max_ms must be at least {WAL_RETRY_BACKOFF_MIN_MS}"
            )));
        }
        if self.retry_keys_max == 0 {
            return Err(Error::Config(
                "retry_keys_max must be at least 1".to_string(),
            ));
        }
        if self.batch_messages_max == 0 {
            return Err(Error::Config(
                "batch_messages_max must be at least 1".to_string(),
            ));
        }
        Ok(())
    }
}

/// One accepted fact. The log stores these; the sinks apply them idempotently.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Record {
    Message {
        room: String,
        seq: u64,
        msg_id: String,
        from: String,
        name: Option<String>,
        body: String,
        ts_ms: u64,
        client_msg_id: Option<String>,
    },
    Deleted {
        room: String,
        seq: u64,
        by: String,
        ts_ms: u64,
    },
    Room {
        room: String,
        title: Option<String>,
        private: bool,
        password_hash: Option<String>,
        creator: String,
        created_ms: u64,
    },
    Member {
        room: String,
        user: String,
        joined: bool,
    },
    ReadPointer {
        room: String,
        user: String,
        seq: u64,
    },
}

impl Record {
    pub fn room(&self) -> &str {
        match self {
            Record::Message { room, .. }
            | Record::Deleted { room, .. }
            | Record::Room { room, .. }
            | Record::Member { room, .. }
            | Record::ReadPointer { room, .. } => room,
        }
    }
}

/// Opaque to this crate: the shard that asked and its token, returned in the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub shard: u16,
    pub token: u64,
}

/// A message as read back; `body: None` with `deleted: true` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub room: String,
    pub seq: u64,
    pub msg_id: String,
    pub from: String,
    pub name: Option<String>,
    pub body: Option<String>,
    pub ts_ms: u64,
    pub deleted: bool,
}

/// The most messages one read returns, whatever the request asks.
pub const READ_MESSAGES_MAX: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadRequest {
    /// The newest `limit` messages with `seq < before_seq` (all, if `None`), ascending.
    Before {
        room: String,
        before_seq: Option<u64>,
        limit: usize,
    },
    /// The oldest `limit` messages with `seq > after_seq`, ascending.
    After {
        room: String,
        after_seq: u64,
        limit: usize,
    },
}

impl ReadRequest {
    pub fn room(&self) -> &str {
        match self {
            ReadRequest::Before { room, .. } | ReadRequest::After { room, .. } => room,
        }
    }

    pub fn limit(&self) -> usize {
        match self {
            ReadRequest::Before { limit, .. } | ReadRequest::After { limit, .. } => {
                (*limit).min(READ_MESSAGES_MAX)
            }
        }
    }

    /// Whether `seq` lies in the requested range (ignoring the limit).
    pub fn admits(&self, seq: u64) -> bool {
        match self {
            ReadRequest::Before { before_seq, .. } => before_seq.is_none_or(|b| seq < b),
            ReadRequest::After { after_seq, .. } => seq > *after_seq,
        }
    }
}

#[derive(Debug)]
pub enum Completion {
    /// These tickets' records are durable (see [`Durability`]). Each ticket is delivered once.
    Durable(Vec<Ticket>),
    Read {
        ticket: Ticket,
        result: Result<Vec<StoredMessage>, Error>,
    },
    /// These tickets' records were **not** written: the log could not be written or synced
    /// (the error is [`SubmitError::Unwritable`]). Nothing of them is durable or will be
    /// retried; each ticket is delivered once, either `Durable` or `Failed`.
    Failed(Vec<Ticket>, SubmitError),
}

/// The engine's side of completions: push to the shard's inbox and wake it.
/// Called from persistence threads; must be cheap and must never block.
pub trait CompletionSink: Send + Sync + 'static {
    fn complete(&self, c: Completion);
}

/// A `client_msg_id` the engine remembers so that a retry gets its original `seq`.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RetryKey {
    pub from: String,
    pub client_msg_id: String,
    pub seq: u64,
    pub ts_ms: u64,
}

/// Everything the engine needs to resume a room after a restart.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RoomSnapshot {
    pub room: String,
    pub title: Option<String>,
    pub private: bool,
    pub password_hash: Option<String>,
    pub creator: String,
    pub created_ms: u64,
    /// The highest seq ever logged for the room; the next message gets `last_seq + 1`.
    pub last_seq: u64,
    /// Sorted.
    pub members: Vec<String>,
    /// Sorted by user.
    pub read_pointers: Vec<(String, u64)>,
    /// The newest keyed messages (at most `Config::retry_keys_max`), ascending by seq, one
    /// entry per `(from, client_msg_id)`: the engine's retry window after a restart.
    pub retry_keys: Vec<RetryKey>,
}

/// Upper bounds of the group-commit duration buckets ([`Stats::commit_buckets`]), in
/// seconds: 25 µs … ~6.5 s, doubling.
pub const COMMIT_SECONDS_BOUNDS: [f64; 19] = {
    let mut bounds = [0.0; 19];
    let mut i = 0;
    let mut b = 0.000_025;
    while i < bounds.len() {
        bounds[i] = b;
        b *= 2.0;
        i += 1;
    }
    bounds
};

/// Counters for `/metrics`. Read from atomics; never on the message path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of log segments on disk plus space reserved by appends in flight.
    pub wal_bytes: u64,
    pub wal_segments: u64,
    /// Records written to the log but not yet confirmed by the sink.
    pub wal_records_pending_sink: u64,
    /// Log sequence numbers between the last one written and the last one confirmed.
    pub sink_lag_records: u64,
    pub records_appended: u64,
    /// Group commits done; each is exactly one `write` and at most one `fdatasync`.
    pub group_commits: u64,
    /// Group commits by how long each took — its write and, under `Durability::Sync`, its
    /// `fdatasync` — one count per bucket of [`COMMIT_SECONDS_BOUNDS`] (not cumulative)
    /// and the last one above them.
    pub commit_buckets: [u64; COMMIT_SECONDS_BOUNDS.len() + 1],
    /// The sum of those durations, ns.
    pub commit_ns_sum: u64,
    pub fdatasyncs: u64,
    pub last_group_records: u64,
    pub sink_batches: u64,
    pub sink_errors: u64,
    pub sink_up: bool,
    /// The sink keeps up: it writes its batches as `SCHED_IDLE` ([`Config::sink_idle_lag_ms`]).
    pub sink_idle: bool,
    /// Batches the sink wrote as a normal thread because a record had waited
    /// [`Config::sink_idle_lag_ms`] (the shards left it too little idle time, or it was down).
    pub sink_batches_behind: u64,
    /// The log cannot be written now: appends are refused with [`SubmitError::Unwritable`].
    pub wal_write_failing: bool,
    /// Failed log writes, syncs, rotations, trims and recovery probes.
    pub wal_write_errors: u64,
    /// When the sink last failed, ms since the Unix epoch (0: never since start-up).
    pub sink_last_error_unix_ms: u64,
    /// Checkpoint files written since start-up (each allowed the log to be trimmed).
    pub checkpoints_written: u64,
}

/// Why an append or a read was refused at submission. Nothing refused was accepted.
/// (`AppendError` is the former name, still exported as an alias.)
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The log is at `wal_bytes_max` or the hand-off queue is full: the engine answers
    /// `unavailable`.
    #[error("persistence is full")]
    Full,
    #[error("persistence is closed")]
    Closed,
    /// An append only: the record could never fit in a log frame (`RECORD_BYTES_MAX`); the
    /// engine's body limit should make this unreachable.
    #[error("record too large for the log")]
    TooLarge,
    #[error("ticket names shard {0}, which has no completion sink")]
    UnknownShard(u16),
    /// The last log write or sync failed with this OS error (`ENOSPC`, `EIO`, …) and the WAL
    /// thread has not yet written to it again: appends are refused at once until it has.
    #[error("the message log cannot be written ({})", os_error_text(*.os_error))]
    Unwritable { os_error: i32 },
}

/// `No space left on device` for 28: the OS's text without Rust's `(os error N)` suffix.
pub fn os_error_text(os_error: i32) -> String {
    let text = std::io::Error::from_raw_os_error(os_error).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// What went wrong inside persistence. Each variant that wraps a library's error keeps it as
/// its [`source`](std::error::Error::source); the message repeats it, because the engine logs
/// only the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// rkyv could not encode or decode a log frame's record.
    #[error("record codec: {0}")]
    Codec(#[source] rkyv::rancor::Error),
    /// A record whose archive exceeds `RECORD_BYTES_MAX`.
    #[error("record codec: record of {bytes} bytes exceeds RECORD_BYTES_MAX")]
    RecordTooLarge { bytes: usize },
    #[error("embedded store: {0}")]
    Store(#[source] redb::Error),
    /// rkyv could not encode or decode a row of the embedded store.
    #[error("embedded store: {0}")]
    StoreRow(#[source] rkyv::rancor::Error),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("a persistence thread panicked: {0}")]
    ThreadPanicked(&'static str),
    /// The checkpoint file exists but cannot be trusted (bad magic, length or checksum).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// The sink could not be reached at start-up and this data directory has no checkpoint:
    /// starting would risk reusing sequence numbers the sink already holds.
    #[error(
        "the sink is unreachable and {path} does not exist, so the rooms' sequence numbers are \
         unknown (refusing to start rather than reuse them): {cause}"
    )]
    NoCheckpoint { path: PathBuf, cause: Box<Error> },
    /// A read that needs the sink while the sink is down (and the log alone cannot answer).
    #[error("the sink is unavailable: {0}")]
    SinkDown(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The OS error behind a failed log operation, for [`SubmitError::Unwritable`]; an error
    /// that carries none (a short write, a lost completion) counts as `EIO`.
    pub(crate) fn os_error(&self) -> i32 {
        const EIO: i32 = 5;
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(EIO),
            _ => EIO,
        }
    }
}

// Every redb error type converts into `redb::Error`, which keeps it as the source.
macro_rules! redb_errors {
    ($($t:ty),*) => { $(impl From<$t> for Error {
        fn from(e: $t) -> Self { Error::Store(e.into()) }
    })* };
}
redb_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn wrapped_errors_keep_their_source_and_their_message() {
        let store = Error::from(redb::StorageError::Corrupted("bad page".into()));
        let source = store.source().expect("the redb error is the source");
        assert!(source.to_string().contains("bad page"), "{source}");
        assert!(store.to_string().contains("bad page"), "{store}");

        let garbage = rkyv::util::AlignedVec::<16>::new();
        let codec = rkyv::from_bytes::<Record, rkyv::rancor::Error>(&garbage)
            .map_err(Error::Codec)
            .expect_err("an empty buffer is no record");
        assert!(codec.source().is_some());
    }
}
