//! Upgraded connections per client address, for the whole instance
//! (`--connections-per-ip-max`): one address's connections land on every shard, so the
//! count is shared, in atomics every shard updates (like `places`), with no lock and no
//! message.
//!
//! The table is fixed (two rows of [`SLOTS`] counters, 512 KiB): an address counts in one
//! slot of each row, chosen by two independently keyed hashes, and its count is the smaller
//! of the two (a count-min sketch). A slot may also hold other addresses' connections, so a
//! count is never below the truth — the limit is never passed — and is above it only when
//! both of an address's slots are shared with busy addresses, which with 65,536 slots a
//! row and a limit in the hundreds does not happen in practice.
//!
//! The rule that keeps the limit exact under races: a shard adds first and checks after,
//! and takes its addition back when the check fails.
#![forbid(unsafe_code)]

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

/// Counters per row.
pub const SLOTS: usize = 65_536;

pub struct IpCounts {
    /// Connections one address may hold; 0: no limit (nothing is counted).
    max: u32,
    rows: [(RandomState, Box<[AtomicU32]>); 2],
}

impl IpCounts {
    pub fn new(max: u32) -> IpCounts {
        let row = || {
            let slots = if max == 0 { 0 } else { SLOTS };
            let counters: Box<[AtomicU32]> = (0..slots).map(|_| AtomicU32::new(0)).collect();
            (RandomState::new(), counters)
        };
        IpCounts {
            max,
            rows: [row(), row()],
        }
    }

    /// One more connection from `ip`: `true` if it is within the limit (then counted while
    /// the limit is [`on`](IpCounts::on), to be given back with [`IpCounts::leave`]),
    /// `false` if not (nothing counted).
    pub fn enter(&self, ip: IpAddr) -> bool {
        if !self.on() {
            return true;
        }
        let counts = self.slots(ip).map(|slot| slot.fetch_add(1, SeqCst) + 1);
        if counts.into_iter().min().unwrap_or(0) <= self.max {
            return true;
        }
        self.leave(ip);
        false
    }

    /// A connection counted by [`IpCounts::enter`] went away.
    pub fn leave(&self, ip: IpAddr) {
        if !self.on() {
            return;
        }
        for slot in self.slots(ip) {
            let before = slot.fetch_sub(1, SeqCst);
            debug_assert!(before > 0, "a connection leaves only once it entered");
        }
    }

    /// The limit is on.
    pub fn on(&self) -> bool {
        self.max > 0
    }

    fn slots(&self, ip: IpAddr) -> [&AtomicU32; 2] {
        self.rows.each_ref().map(|(hasher, counters)| {
            let idx = hasher.hash_one(ip) as usize % counters.len();
            &counters[idx]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n))
    }

    /// Goal: an address holds at most `max`; one leaving lets one more in; other addresses
    /// are not affected, even many of them.
    #[test]
    fn at_most_max_per_address() {
        let counts = IpCounts::new(3);
        for _ in 0..3 {
            assert!(counts.enter(ip(1)));
        }
        assert!(!counts.enter(ip(1)), "the fourth");
        assert!(!counts.enter(ip(1)), "a refusal counts nothing");
        counts.leave(ip(1));
        assert!(counts.enter(ip(1)), "one left, one more");
        for n in 2..10_000 {
            assert!(counts.enter(ip(n)), "address {n}");
        }
        assert!(!counts.enter(ip(1)));
    }

    /// Goal: the limit counts nothing when off.
    #[test]
    fn off_is_a_no_op() {
        let counts = IpCounts::new(0);
        assert!(!counts.on());
        for _ in 0..10 {
            assert!(counts.enter(ip(1)));
        }
        counts.leave(ip(1));
    }
}
