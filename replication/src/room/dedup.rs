//! The owner's window of retry keys for one room: which seq each recent key was sequenced
//! at, so that a retried publish (same key) is answered with its original seq instead of
//! being stored twice (docs/REPLICATION.md "Exactly once").
//!
//! A key is opaque bytes (the engine's author + `client_msg_id`; this crate never reads
//! it). The window holds the last `keys_max` keyed records *of the log*, in seq order,
//! oldest evicted first. It is a pure function of the log: a hit never refreshes a key, so
//! any node that replays the same log through a window of the same size gets the same
//! window. That is what lets a new owner rebuild it from the log it takes over, and what
//! the claim merge uses to find a copy no owner would have sequenced
//! ([`Window::first_copy`]).

use std::collections::{HashMap, VecDeque};

use crate::frame::Record;

/// The recent keys of one room's log → the seq each was sequenced at.
#[derive(Debug, Clone)]
pub struct Window {
    keys_max: usize,
    seqs: HashMap<Vec<u8>, u64>,
    /// Keys in the order their records are in the log (seq ascending).
    order: VecDeque<Vec<u8>>,
}

impl Window {
    /// An empty window holding at most `keys_max` keys (at least one).
    pub fn new(keys_max: usize) -> Self {
        Self {
            keys_max: keys_max.max(1),
            seqs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The window after every record of `log`, in order.
    pub fn of_log(keys_max: usize, log: &[Record]) -> Self {
        let mut window = Self::new(keys_max);
        for record in log {
            window.insert(record);
        }
        window
    }

    /// The seq `key` was sequenced at, if it is still in the window.
    pub fn seq_of(&self, key: &[u8]) -> Option<u64> {
        self.seqs.get(key).copied()
    }

    /// Adds `record`'s key (if it has one) as the newest, evicting the oldest beyond the
    /// bound. A key already in the window keeps its earlier seq (the owner sequences a key
    /// once, and a claim's merged log ends before a copy: only a log built without that
    /// rule has one).
    pub fn insert(&mut self, record: &Record) {
        let Some(key) = &record.key else {
            return;
        };
        if self.seqs.contains_key(key) {
            return;
        }
        if self.order.len() == self.keys_max {
            if let Some(old) = self.order.pop_front() {
                self.seqs.remove(&old);
            }
        }
        self.seqs.insert(key.clone(), record.seq);
        self.order.push_back(key.clone());
        debug_assert!(self.order.len() <= self.keys_max);
        debug_assert_eq!(self.order.len(), self.seqs.len());
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Where `log`, following the records this window was built of, first holds a record
    /// whose key was still in the window of the records before it — a copy that no owner
    /// would have sequenced (it finds the key and answers the original seq instead). Such
    /// a copy comes from a stale owner that sequenced the send without acknowledging it
    /// while another owner sequenced the retry; the index of the first one, if any.
    pub fn first_copy(&self, log: &[Record]) -> Option<usize> {
        let mut window = self.clone();
        for (at, record) in log.iter().enumerate() {
            if record
                .key
                .as_deref()
                .is_some_and(|k| window.seq_of(k).is_some())
            {
                return Some(at);
            }
            window.insert(record);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, key: Option<&str>) -> Record {
        Record {
            epoch: 1,
            seq,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Vec::new(),
        }
    }

    #[test]
    fn keys_map_to_their_seq_and_the_oldest_goes_first() {
        let log = [
            record(1, Some("a")),
            record(2, None),
            record(3, Some("b")),
            record(4, Some("c")),
        ];
        let w = Window::of_log(2, &log);
        assert_eq!(w.len(), 2);
        assert_eq!(w.seq_of(b"a"), None, "evicted: the window holds two keys");
        assert_eq!(w.seq_of(b"b"), Some(3));
        assert_eq!(w.seq_of(b"c"), Some(4));
    }

    #[test]
    fn the_first_copy_within_the_window_is_found_and_one_beyond_it_is_not() {
        let log = [
            record(1, Some("a")),
            record(2, Some("b")),
            record(3, Some("a")),
            record(4, Some("b")),
        ];
        assert_eq!(Window::new(8).first_copy(&log), Some(2));
        // With a window of one, "a" was evicted by "b" before seq 3: a new send, not a copy.
        assert_eq!(Window::new(1).first_copy(&log), None);
        assert_eq!(Window::new(8).first_copy(&log[..2]), None);
        let unkeyed = [record(1, None), record(2, None)];
        assert_eq!(Window::new(8).first_copy(&unkeyed), None);
        // After a prefix the window was built of: the suffix's copy is found at its index.
        let prefix = Window::of_log(8, &log[..2]);
        assert_eq!(prefix.first_copy(&log[2..]), Some(0));
        assert_eq!(prefix.first_copy(&log[3..]), Some(0), "b is in the prefix");
    }
}
