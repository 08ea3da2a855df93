//! Where a room's records are when they are not in memory: its node's disk.
//!
//! A bounded room ([`super::Room::with_log_tail`]) keeps in memory only the records after
//! its acknowledged prefix less a tail; the records before (`Durable::base`) are on the
//! node's disk, never rewritten (an acknowledged prefix never changes), and read back through
//! a [`Source`] when a lagging replica, a replay, a claimant that knows less, a retry of an
//! old key or a take-over's window of keys needs them.

use std::fmt::Debug;

use crate::frame::Record;

/// The node's disk, for the records a room no longer holds in memory.
pub trait Source: Send + Sync + Debug {
    /// Records `from`, `from + 1`, … of `room`, at most `max`, in order. Fewer (none) when
    /// the disk does not hold them yet or cannot be read: the machine then sends less, or
    /// nothing, and a later tick or request asks again.
    fn read(&self, room: &str, from: u64, max: usize) -> Vec<Record>;
}

/// No disk: every record stays in memory (an unbounded room: the default).
#[derive(Debug)]
pub struct NoSource;

impl Source for NoSource {
    fn read(&self, _room: &str, _from: u64, _max: usize) -> Vec<Record> {
        Vec::new()
    }
}
