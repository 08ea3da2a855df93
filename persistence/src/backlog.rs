//! Records written to the log but not yet confirmed by the sink, in lsn order.
//!
//! The WAL thread pushes each written group; the sink thread takes batches from the front (by
//! count or age) and pops them only once the sink confirmed them; the read thread copies a
//! room's records to merge them with what the sink returns. Its size is bounded by the log's:
//! every record here is also in a segment, and segments are bounded by `wal_bytes_max`.
//!
//! A `std` mutex is right here: the three users are persistence threads, never shards. The
//! one figure shards read, [`Backlog::len`], is an atomic that the lock holders keep equal to
//! the queue's length, so reading it never takes the lock.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::contract::Record;

struct Pending {
    lsn: u64,
    at: Instant,
    rec: Arc<Record>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<Pending>,
    closing: bool,
    /// The `count_max` of the batch a waiting `next_batch` wants, 0 while none waits.
    waiting_for: usize,
}

#[derive(Default)]
pub struct Backlog {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// `inner.records.len()`, stored by whoever changed it while still holding the lock.
    len: AtomicUsize,
}

/// A batch for the sink: `(lsn, record)` in lsn order.
pub type Batch = Vec<(u64, Arc<Record>)>;

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the queue consistent (every method mutates it
        // in one step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a written group. Wakes the sink only when that changes what it waits for —
    /// the first record (it then waits for that record's age) or a full batch — not at every
    /// group: a woken thread on the shards' core costs them a switch each time.
    pub fn push(&self, group: impl IntoIterator<Item = (u64, Arc<Record>)>) {
        let at = Instant::now();
        let mut inner = self.lock();
        let was_empty = inner.records.is_empty();
        for (lsn, rec) in group {
            debug_assert!(
                inner.records.back().is_none_or(|p| p.lsn < lsn),
                "lsns increase"
            );
            inner.records.push_back(Pending { lsn, at, rec });
        }
        self.len.store(inner.records.len(), Relaxed);
        let wake = inner.waiting_for > 0 && (was_empty || inner.records.len() >= inner.waiting_for);
        drop(inner);
        if wake {
            self.changed.notify_all();
        }
    }

    /// Records written but not confirmed yet. Lock-free (shards read it for `/metrics`): the
    /// value of a moment ago, exact once the writers are quiet.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Wakes every waiter; from now on [`Backlog::next_batch`] returns without waiting.
    pub fn close(&self) {
        self.lock().closing = true;
        self.changed.notify_all();
    }

    /// Waits until `count_max` records are queued, the oldest is `age` old, or the backlog is
    /// closing; returns up to `count_max` records from the front (empty only when closing).
    pub fn next_batch(&self, count_max: usize, age: Duration) -> Batch {
        let mut inner = self.lock();
        loop {
            let ready = match inner.records.front() {
                _ if inner.closing => true,
                None => false,
                Some(oldest) => inner.records.len() >= count_max || oldest.at.elapsed() >= age,
            };
            if ready {
                inner.waiting_for = 0;
                let take = inner.records.len().min(count_max);
                return inner
                    .records
                    .iter()
                    .take(take)
                    .map(|p| (p.lsn, p.rec.clone()))
                    .collect();
            }
            inner.waiting_for = count_max.max(1);
            let wait = inner
                .records
                .front()
                .map(|p| age.saturating_sub(p.at.elapsed()));
            inner = match wait {
                Some(d) => {
                    self.changed
                        .wait_timeout(inner, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(inner).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// How long the oldest record still here has waited (`None`: none waits).
    pub fn oldest_waited(&self) -> Option<Duration> {
        self.lock().records.front().map(|p| p.at.elapsed())
    }

    /// Drops every record with lsn ≤ `lsn` (the sink confirmed them).
    pub fn confirm(&self, lsn: u64) {
        let mut inner = self.lock();
        while inner.records.front().is_some_and(|p| p.lsn <= lsn) {
            inner.records.pop_front();
        }
        self.len.store(inner.records.len(), Relaxed);
    }

    /// Copies the room's records, in lsn order.
    pub fn for_room(&self, room: &str) -> Vec<Arc<Record>> {
        let inner = self.lock();
        inner
            .records
            .iter()
            .filter(|p| p.rec.room() == room)
            .map(|p| p.rec.clone())
            .collect()
    }

    /// Sleeps for `d` unless the backlog closes first (the sink's retry backoff).
    pub fn wait_unless_closing(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut inner = self.lock();
        while !inner.closing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(room: &str) -> Arc<Record> {
        Arc::new(Record::Member {
            room: room.into(),
            user: "u".into(),
            joined: true,
        })
    }

    #[test]
    fn a_full_batch_is_returned_without_waiting_for_age() {
        let b = Backlog::default();
        b.push((1..=5).map(|lsn| (lsn, rec("a"))));
        let batch = b.next_batch(3, Duration::from_secs(3600));
        assert_eq!(
            batch.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        b.confirm(3);
        assert_eq!(b.len(), 2);
    }

    /// A waiting sink is woken by the first record (to wait for its age) and by a full
    /// batch, not by every push — and never missed: each waits at most its bound.
    #[test]
    fn a_waiting_batch_is_woken_by_the_first_record_and_by_a_full_batch() {
        let b = Arc::new(Backlog::default());
        let wait = |count_max: usize, age: Duration| {
            let (tx, rx) = std::sync::mpsc::channel();
            let sink = b.clone();
            std::thread::spawn(move || tx.send(sink.next_batch(count_max, age).len()));
            rx
        };
        let aged = wait(10, Duration::from_millis(50));
        b.push([(1, rec("a"))]);
        assert_eq!(aged.recv_timeout(Duration::from_secs(10)), Ok(1), "by age");
        b.confirm(1);
        let full = wait(3, Duration::from_secs(3600));
        for lsn in 2..=4 {
            b.push([(lsn, rec("a"))]);
        }
        assert_eq!(
            full.recv_timeout(Duration::from_secs(10)),
            Ok(3),
            "by count"
        );
    }

    #[test]
    fn closing_releases_a_partial_batch_and_then_an_empty_one() {
        let b = Backlog::default();
        b.push([(1, rec("a")), (2, rec("b"))]);
        b.close();
        assert_eq!(b.next_batch(10, Duration::from_secs(3600)).len(), 2);
        b.confirm(2);
        assert!(b.next_batch(10, Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn len_follows_the_queue_and_is_read_without_the_lock() {
        let b = Arc::new(Backlog::default());
        b.push((1..=3).map(|lsn| (lsn, rec("a"))));
        b.confirm(1);
        let held = b.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = b.clone();
        std::thread::spawn(move || tx.send(reader.len()));
        // A `len` that took the lock would still be waiting for `held`.
        let len = rx.recv_timeout(Duration::from_secs(10));
        drop(held);
        assert_eq!(len, Ok(2));
    }

    #[test]
    fn for_room_filters_by_room() {
        let b = Backlog::default();
        b.push([(1, rec("a")), (2, rec("b")), (3, rec("a"))]);
        assert_eq!(b.for_room("a").len(), 2);
    }
}
