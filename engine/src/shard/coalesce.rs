//! `--write-coalesce-us`: how long a delivery that reaches a connection's empty queue waits
//! before the connection's task is woken to write it, so that the deliveries arriving
//! meanwhile go out in the same `sendmsg`. The deadlines of a shard are one FIFO and one
//! task (the "coalescer", in the ticker's task queue) that sleeps until the oldest is due and
//! wakes every connection due then: no timer per connection, no allocation per delivery.
//!
//! Only deliveries wait. Replies to a connection's own requests, replay pages, pongs, pings
//! and close frames wake its task at once (`fanout::push_frame`, `close_conn`), and the task
//! then writes everything queued, the waiting deliveries first — so a reply is never held
//! back, and no frame is held across a close. A connection whose task is woken for another
//! reason (its client sent something, its socket became writable) writes its deliveries
//! then, early; the coalescer's wake that comes later finds nothing, or the next burst.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::conn::ConnEntry;

/// The delayed wakes of one shard's connections.
pub(super) struct Coalesce {
    delay: Duration,
    /// Connections to wake, (due, slab key, generation), oldest first: every deadline is
    /// `now + delay` with a clock that never goes back, so the front is the next due.
    due: VecDeque<(Instant, u32, u64)>,
    /// The coalescer task, parked while nothing is due.
    waker: Option<Waker>,
}

impl Coalesce {
    pub(super) fn new(delay: Duration) -> Coalesce {
        Coalesce {
            delay,
            due: VecDeque::new(),
            waker: None,
        }
    }

    /// The delay is not zero: deliveries wait (and the shard runs the coalescer).
    pub(super) fn is_on(&self) -> bool {
        !self.delay.is_zero()
    }

    /// A delivery reached the empty queue of connection `key` at `now`: wake its task at
    /// once when the delay is zero, at `now + delay` otherwise.
    pub(super) fn wake_or_defer(&mut self, entry: &mut ConnEntry, key: u32, now: Instant) {
        if !self.is_on() {
            return entry.wake();
        }
        let at = now + self.delay;
        debug_assert!(self.due.back().is_none_or(|(last, _, _)| *last <= at));
        if self.due.is_empty() {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
        self.due.push_back((at, key, entry.generation));
    }

    /// The coalescer's wait: the next deadline, or pending until there is one.
    pub(super) fn poll_next_due(&mut self, cx: &Context<'_>) -> Poll<Instant> {
        match self.due.front() {
            Some((at, _, _)) => Poll::Ready(*at),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Wakes every connection due at `now` that is still the one it was (a slot reused by
    /// a newer connection is skipped). Returns how many it woke.
    pub(super) fn wake_due(&mut self, conns: &mut Slab<ConnEntry>, now: Instant) -> usize {
        let mut woken = 0;
        while let Some(&(at, key, generation)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            if let Some(entry) = conns.get_mut(key as usize) {
                if entry.generation == generation {
                    entry.wake();
                    woken += 1;
                }
            }
        }
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn parked(conns: &mut Slab<ConnEntry>, generation: u64, now: Instant) -> (usize, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let key = conns.insert(ConnEntry::new(generation, now));
        conns[key].waker = Some(Waker::from(count.clone()));
        (key, count)
    }

    #[test]
    fn a_delivery_wakes_its_connection_after_the_delay_and_not_before() {
        let t0 = Instant::now();
        let mut conns = Slab::new();
        let (a, woke_a) = parked(&mut conns, 1, t0);
        let (b, woke_b) = parked(&mut conns, 2, t0);
        let mut co = Coalesce::new(Duration::from_micros(500));
        co.wake_or_defer(&mut conns[a], a as u32, t0);
        co.wake_or_defer(&mut conns[b], b as u32, t0 + Duration::from_micros(300));
        assert_eq!(woke_a.0.load(Ordering::Relaxed), 0, "deferred, not woken");
        assert_eq!(co.wake_due(&mut conns, t0 + Duration::from_micros(499)), 0);
        assert_eq!(co.wake_due(&mut conns, t0 + Duration::from_micros(500)), 1);
        assert_eq!(woke_a.0.load(Ordering::Relaxed), 1);
        assert_eq!(woke_b.0.load(Ordering::Relaxed), 0);
        // b's slot goes to a newer connection: the old wake is not for it.
        conns.remove(b);
        let (c, woke_c) = parked(&mut conns, 3, t0);
        assert_eq!(c, b);
        assert_eq!(co.wake_due(&mut conns, t0 + Duration::from_millis(1)), 0);
        assert_eq!(woke_c.0.load(Ordering::Relaxed), 0);
        assert!(co.due.is_empty());
    }

    #[test]
    fn with_no_delay_a_delivery_wakes_at_once() {
        let t0 = Instant::now();
        let mut conns = Slab::new();
        let (a, woke) = parked(&mut conns, 1, t0);
        let mut co = Coalesce::new(Duration::ZERO);
        co.wake_or_defer(&mut conns[a], a as u32, t0);
        assert_eq!(woke.0.load(Ordering::Relaxed), 1);
        assert!(co.due.is_empty());
    }
}
