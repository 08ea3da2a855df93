//! The instance's admission places, counted in two atomics every shard reads and writes:
//! `admitted` (connections holding a place) and `waiting` (connections in the instance's
//! admission queue, or on their way to it). The queue itself lives on one shard, the desk
//! (`shard::admission`); these counters let every other shard admit without a message while
//! nobody waits, and tell `/readyz` about the whole instance.
//!
//! The rule that keeps a place from being lost: a shard that wants to wait increments
//! `waiting` *before* it asks the desk, a shard that frees a place decrements `admitted`
//! *before* it reads `waiting`, and the desk tries to take a place on every ask. Either the
//! release sees the waiter (and tells the desk), or the desk's ask sees the free place.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct Places {
    /// Connections the instance admits at once (`--connections-max`, or derived).
    capacity: usize,
    /// Connections the queue holds (`--admission-queue-max`).
    queue_max: usize,
    admitted: AtomicUsize,
    waiting: AtomicUsize,
}

impl Places {
    pub fn new(capacity: usize, queue_max: usize) -> Places {
        Places {
            capacity,
            queue_max,
            admitted: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn admitted(&self) -> usize {
        self.admitted.load(SeqCst)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    /// The fast path of a new connection: nobody waits and a place is free, taken.
    pub fn try_enter(&self) -> bool {
        self.waiting() == 0 && self.try_take()
    }

    /// Takes a free place (the desk, for the head of its queue).
    pub fn try_take(&self) -> bool {
        self.admitted
            .fetch_update(SeqCst, SeqCst, |n| (n < self.capacity).then_some(n + 1))
            .is_ok()
    }

    /// A connection will wait: counted before the desk hears of it.
    pub fn start_waiting(&self) {
        self.waiting.fetch_add(1, SeqCst);
    }

    /// A connection no longer waits (admitted by the desk, or gone).
    pub fn stop_waiting(&self) {
        let before = self.waiting.fetch_sub(1, SeqCst);
        debug_assert!(before > 0, "more waiters left than came");
    }

    /// A place is free again. Returns whether someone waits for it: then the desk must hear.
    #[must_use]
    pub fn release(&self) -> bool {
        let before = self.admitted.fetch_sub(1, SeqCst);
        assert!(before > 0, "released more places than were taken");
        self.waiting() > 0
    }

    /// Every place is taken: `/readyz` answers 503 `full`.
    pub fn full(&self) -> bool {
        self.admitted() >= self.capacity
    }

    /// No place and no room in the queue: upgrades get 503 `at capacity`.
    pub fn queue_full(&self) -> bool {
        self.full() && self.waiting() >= self.queue_max
    }
}

/// `sokdo_connections_max`, `sokdo_connections_admitted`, `sokdo_admission_waiting`: the
/// instance's figures, read at scrape time (no `shard` label).
#[derive(Debug)]
pub struct PlacesCollector(pub std::sync::Arc<Places>);

impl Collector for PlacesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let gauges = [
            (
                "connections_max",
                "Connections the instance admits at once (--connections-max, or derived from memory and the open-file limit)",
                p.capacity(),
            ),
            (
                "connections_admitted",
                "Connections holding an admission place, over every shard",
                p.admitted(),
            ),
            (
                "admission_waiting",
                "Connections in the instance's admission queue (and asks on their way to it)",
                p.waiting(),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value as i64);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the fast path admits only while nobody waits; releases say when the desk must
    /// hear; the queue bound counts only once every place is taken.
    #[test]
    fn fast_path_and_release() {
        let p = Places::new(2, 1);
        assert!(p.try_enter() && p.try_enter());
        assert!(!p.try_enter() && p.full() && !p.queue_full());
        p.start_waiting();
        assert!(p.queue_full());
        assert!(p.release(), "someone waits: the desk must hear");
        assert!(
            !p.try_enter(),
            "a new connection does not overtake the waiting one"
        );
        assert!(p.try_take(), "the desk takes the place for the waiter");
        p.stop_waiting();
        assert!(!p.release(), "nobody waits");
        assert_eq!((p.admitted(), p.waiting()), (1, 0));
    }
}
