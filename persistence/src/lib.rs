//! # sokdo-persistence — the write-ahead log and the write-behind sinks
//!
//! Shards never touch a disk or a database. They hand every accepted record to this crate
//! through a [`Handle`], which never blocks and never locks: it reserves log space with one
//! atomic and pushes onto a bounded crossbeam channel, and a full channel is an answer
//! ([`SubmitError::Full`]), not a wait. Everything slow happens on three threads owned by
//! [`Persistence`]:
//!
//! 1. **`sokdo-wal`** (`wal_thread.rs`) drains the append channel — everything queued, up to
//!    a group bound — encodes the group (`record.rs`: rkyv payload, length, CRC32, log
//!    sequence number), writes it with one io_uring `write` linked to one `fdatasync`
//!    (`wal.rs`), and then tells each shard which of its tickets are durable
//!    ([`Completion::Durable`]). This is group commit: a thousand concurrent sends cost one
//!    sync. The written records then join the in-memory backlog (`backlog.rs`) of records the
//!    sink has not confirmed yet.
//! 2. **`sokdo-sink`** (`sink_thread.rs`) takes batches from the backlog — by count
//!    (`batch_messages_max`) or age (`batch_age_ms`) — and applies them to the sink: the
//!    embedded store (`store.rs`, redb) by default, or MongoDB (`mongo.rs`) when a URI is
//!    configured. Only when a batch is confirmed does it leave the backlog and move the
//!    *confirmed* log sequence number forward; the WAL thread deletes whole segments below that
//!    mark and nothing else. A sink that is down is retried with backoff while appends keep
//!    succeeding and the log grows, up to `wal_bytes_max`, where [`Handle::append`] answers
//!    [`SubmitError::Full`] — never a silent drop. A log that cannot be written (disk full, I/O
//!    error) is survived the same way: the WAL thread answers the group it could not write with
//!    [`Completion::Failed`], cuts the log back to before it, refuses appends with
//!    [`SubmitError::Unwritable`] while it probes the disk with backoff, and takes appends
//!    again once a probe writes (`wal_thread.rs`).
//! 3. **`sokdo-read`** (`read_thread.rs`) serves `history` and `join after_seq` reads: it
//!    copies the backlog's records for the room, queries the sink, merges the two and delivers
//!    a [`Completion::Read`] to the asking shard.
//!
//! [`Persistence::open`] replays the log first (stopping cleanly at a torn or corrupt tail,
//! which it truncates), folds the replayed records over the sink's own snapshot and returns one
//! [`RoomSnapshot`] per room, so the engine continues sequence numbers without reuse and
//! restores rooms, members and read pointers. The replayed records are re-applied to the sink,
//! which is harmless because every sink write is idempotent (keyed by room and seq).
//!
//! ## The modules, lowest layer first
//!
//! Every module is private; the engine sees only what is re-exported here. A module uses only
//! modules listed before it, so the graph has no cycle:
//!
//! | module | holds | uses |
//! |---|---|---|
//! | `contract` | the types the engine sees: [`Config`], [`Record`], [`Ticket`], [`Completion`], [`Stats`], [`SubmitError`], [`Error`] | — |
//! | `record` | the log's frame: encode, decode, the frame-size bound | contract |
//! | `snapshot` | folding records into [`RoomSnapshot`]s (pure) | contract |
//! | `backlog` | records written but not confirmed (a mutex of persistence threads only) | contract |
//! | `sink` | the `Sink` / `SinkReader` traits | contract |
//! | `checkpoint` | the checkpoint file: folded state of what the log no longer holds | contract |
//! | `wal` | segment files, io_uring appends, replay, trimming (`unsafe`: io_uring) | contract, record |
//! | `sched` | the sink thread's scheduling class: idle while it keeps up (`unsafe`: libc calls) | — |
//! | `store` | the redb sink | contract, sink |
//! | `mongo` | the MongoDB sink | contract, sink, snapshot |
//! | `state` | `Pipeline`: what the handles and threads share, each field naming its writer | contract, backlog, wal |
//! | `wal_thread` | group commit | contract, record, state, wal |
//! | `sink_thread` | write-behind batches, checkpoints | checkpoint, sched, sink, snapshot, state, wal_thread (its command type) |
//! | `read_thread` | reads merged from sink and backlog | contract, sink, state |
//! | `handle` | [`Handle`] and [`Persistence`] | all of the above |
//! | `fuzz` | feature `fuzzing` only: entry points for `fuzz/` (docs/SECURITY.md) | checkpoint, contract, record |
//!
//! To check the table against the code (code lines only; doc links are not imports, and no
//! module names an item through the root's re-exports, which the second command shows):
//!
//! ```text
//! for f in persistence/src/*.rs; do printf '%-12s uses %s\n' "$(basename $f .rs)" \
//!   "$(grep -v '^\s*//' $f | grep -o 'crate::[a-z_]\+' | sed 's/crate:://' | sort -u | tr '\n' ' ')"; done
//! grep -rn 'crate::[A-Z{]' persistence/src | grep -v '//'   # prints nothing
//! ```
//!
//! Where to start reading: `contract.rs` for the types the engine sees, then `handle.rs` for
//! the threads, `wal.rs` for the file format. `docs/PERSISTENCE.md` has the whole story and the
//! measured figures.

// Only `wal` has `unsafe` (io_uring submissions); every other module forbids it in its own
// first lines. These two rules are checked on every build, not only when asked for.
#![warn(clippy::undocumented_unsafe_blocks, clippy::too_many_lines)]

// By layer, as in the table above. Layer 0: the contract.
mod contract;
// Layer 1: pure pieces over the contract.
mod backlog;
mod record;
mod sink;
mod snapshot;
// Layer 2: files and databases.
mod checkpoint;
mod mongo;
mod sched;
mod store;
mod wal;
// Layer 3: what the threads share.
mod state;
// Layer 4: the WAL thread.
mod wal_thread;
// Layer 5: the sink thread (it nudges the WAL thread with a `WalCmd`) and the read thread.
mod read_thread;
mod sink_thread;
// Layer 6: what the engine holds.
mod handle;
mod queue;
// The fuzz targets' entry points (`fuzz/`), with the feature `fuzzing` (and in the unit
// tests, which run them on their corpus).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;

pub use checkpoint::CHECKPOINT_FILE;
pub use contract::{
    Completion, CompletionSink, Config, Durability, Error, ReadRequest, Record, RetryKey,
    RoomSnapshot, Stats, StoredMessage, SubmitError, Ticket, COMMIT_SECONDS_BOUNDS,
};
pub use handle::{Handle, Persistence};

/// The former name of [`SubmitError`], from when only appends returned it; the engine still
/// uses it.
pub type AppendError = SubmitError;

// The limits the contract's behaviour depends on (`Full`, `TooLarge`, read caps, timings).
pub use contract::{
    os_error_text, READ_MESSAGES_MAX, WAL_RETRY_BACKOFF_MIN_MS, WAL_SEGMENT_BYTES_MIN,
};
pub use handle::{APPEND_QUEUE_RECORDS_MAX, READ_QUEUE_REQUESTS_MAX};
pub use sink_thread::SHUTDOWN_DRAIN_MS;
pub use wal_thread::ASYNC_SYNC_INTERVAL_MS;

// The log itself, below the threads: its file format and its files. The engine never needs
// these; the crate's tests write and damage logs with them.
pub use record::{encode_frame, Damage, RECORD_BYTES_MAX};
pub use wal::{Replay, Wal};
