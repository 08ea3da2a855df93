//! # sokdo-persistence — the write-ahead log and the write-behind sinks
//!
//! Shards never touch a disk or a database. They hand every accepted record to this crate
//! through a [`Handle`], which only pushes onto a bounded crossbeam channel and returns at once.
//! Everything slow happens on three threads owned by [`Persistence`]:
//!
//! 1. **`sokdo-wal`** ([`wal_thread`]) drains the append channel — everything queued, up to
//!    a group bound — encodes the group ([`record`]: rkyv payload, length, CRC32, log sequence
//!    number), writes it with one io_uring `write` linked to one `fdatasync` ([`wal`]), and
//!    then tells each shard which of its tickets are durable ([`Completion::Durable`]). This is
//!    group commit: a thousand concurrent sends cost one sync. The written records then join
//!    the in-memory [`backlog`] of records the sink has not confirmed yet.
//! 2. **`sokdo-sink`** ([`sink_thread`]) takes batches from the backlog — by count
//!    (`batch_messages_max`) or age (`batch_age_ms`) — and applies them to the sink:
//!    the embedded [`store`] (redb) by default, or [`mongo`] when a URI is configured. Only when a
//!    batch is confirmed does it leave the backlog and move the *confirmed* log sequence number
//!    forward; the WAL thread deletes whole segments below that mark and nothing else. A sink that
//!    is down is retried with backoff while appends keep succeeding and the log grows, up to
//!    `wal_bytes_max`, where [`Handle::append`] answers [`SubmitError::Full`] — never a silent drop.
//! 3. **`sokdo-read`** ([`read_thread`]) serves `history` and `join after_seq` reads: it copies
//!    the backlog's records for the room, queries the sink, merges the two and delivers a
//!    [`Completion::Read`] to the asking shard.
//!
//! [`Persistence::open`] replays the log first (stopping cleanly at a torn or corrupt tail,
//! which it truncates), folds the replayed records over the sink's own snapshot and returns one
//! [`RoomSnapshot`] per room, so the engine continues sequence numbers without reuse and
//! restores rooms, members and read pointers. The replayed records are re-applied to the sink,
//! which is harmless because every sink write is idempotent (keyed by room and seq).
//!
//! Where to start reading: [`contract`] for the types the engine sees, then [`handle`] for the
//! threads, [`wal`] for the file format. `docs/PERSISTENCE.md` has the whole story and the
//! measured figures.

// Only `wal` has `unsafe` (io_uring submissions); every other module forbids it in its own
// first lines. These two rules are checked on every build, not only when asked for.
#![warn(clippy::undocumented_unsafe_blocks, clippy::too_many_lines)]

// Lowest layer first: a module uses only modules of the layers above it (see the graph above).
// Layer 0, the types the engine sees:
mod contract;
// Layer 1, pure pieces over those types: the frame codec, folding, the backlog, the sink traits:
mod backlog;
mod record;
mod sink;
mod snapshot;
// Layer 2, files and databases: the log's segments, the two sinks:
mod mongo;
mod store;
mod wal;
// Layer 3, what the threads share:
mod state;
// Layer 4, the threads:
mod read_thread;
mod sink_thread;
mod wal_thread;
// Layer 5, what the engine holds:
mod handle;

pub use contract::{
    Completion, CompletionSink, Config, Durability, Error, ReadRequest, Record, RoomSnapshot,
    Stats, StoredMessage, SubmitError, Ticket,
};
/// The former name of [`SubmitError`], from when only appends returned it; the engine still
/// uses it.
pub type AppendError = SubmitError;
pub use handle::{Handle, Persistence};

/// The log itself, below the threads: its file format and its files. The engine never needs
/// these; the crate's tests and tools write and damage logs with them.
pub use record::{encode_frame, Damage, RECORD_BYTES_MAX};
pub use wal::{Replay, Wal};
