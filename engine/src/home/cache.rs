//! The shard's budget for its rooms' recent messages (`--room-cache-bytes-per-shard`,
//! issue 14): each room's ring and search index count their estimated bytes
//! (`room::cache_cost`); past the budget the rooms whose last message is oldest lose
//! their ring and index — history and replays then read the store, which already holds
//! every one of their messages (a room is dropped only once the log's `settled` count
//! covers its last record, so a read finds all of them).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Rooms looked at per eviction: a burst of rooms whose records are not readable yet
/// cannot make one send scan the whole shard.
const EVICTION_SCAN_MAX: usize = 64;

#[derive(Debug)]
pub(super) struct Cache {
    budget: usize,
    bytes: usize,
    /// Rooms holding cached messages by their last publish, oldest first.
    by_age: BTreeMap<u64, Arc<str>>,
    age_of: HashMap<Arc<str>, u64>,
    clock: u64,
}

impl Cache {
    pub(super) fn new(budget: usize) -> Cache {
        Cache {
            budget,
            bytes: 0,
            by_age: BTreeMap::new(),
            age_of: HashMap::new(),
            clock: 0,
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The room's cache changed by `delta` bytes; `fresh`: by a new message (it becomes the
    /// youngest). Returns whether the shard is over its budget.
    pub(super) fn changed(&mut self, key: &Arc<str>, delta: isize, fresh: bool) -> bool {
        self.bytes = self.bytes.saturating_add_signed(delta);
        if fresh {
            self.clock += 1;
            if let Some(old) = self.age_of.insert(key.clone(), self.clock) {
                self.by_age.remove(&old);
            }
            self.by_age.insert(self.clock, key.clone());
        }
        self.bytes > self.budget
    }

    /// The oldest rooms to drop until the cache is back to 7/8 of its budget (some room of
    /// the budget, so that not every next send evicts), `keep` excluded.
    pub(super) fn candidates(&self, keep: Option<&Arc<str>>) -> Vec<Arc<str>> {
        self.by_age
            .values()
            .filter(|k| Some(*k) != keep)
            .take(EVICTION_SCAN_MAX)
            .cloned()
            .collect()
    }

    /// Over the budget.
    pub(super) fn over(&self) -> bool {
        self.bytes > self.budget
    }

    pub(super) fn satisfied(&self) -> bool {
        self.bytes <= self.budget / 8 * 7
    }

    /// The room holds no cached message any more (evicted, or removed).
    pub(super) fn forget(&mut self, key: &Arc<str>) {
        if let Some(age) = self.age_of.remove(key) {
            self.by_age.remove(&age);
        }
    }
}
