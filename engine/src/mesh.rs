//! The lock-free mesh between shards: one bounded single-producer queue for every ordered
//! pair of shards, and one waker per shard.
//!
//! A shard that sends pushes onto the queue `(from, to)` and wakes `to`'s inbox task, which
//! drains every queue addressed to it, a bounded batch at a time. Nothing spins: an idle
//! shard's inbox task is parked on its waker, and glommio turns a wake from a foreign
//! thread into an eventfd notification. Waking is naturally coalesced — `AtomicWaker`
//! hands its waker out once per registration, so a burst of pushes wakes the receiver once.
//!
//! Messages between one pair of shards keep their order: that is what lets a room's home
//! send a `join` reply and then live messages, and the subscriber shard see them in that
//! order. When a queue is full the sender keeps its own ordered backlog (see
//! `shard::Outbox`) and asks the receiver, through `stalled`, to wake it once it has made
//! room.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

pub type ShardId = u16;

pub struct Mesh<T> {
    shards: usize,
    queues: Vec<ArrayQueue<T>>,
    wakers: Vec<AtomicWaker>,
    stalled: Vec<AtomicBool>,
    drain_requested: AtomicBool,
}

impl<T> Mesh<T> {
    pub fn new(shards: usize, queue_messages_max: usize) -> Mesh<T> {
        assert!(shards > 0 && queue_messages_max > 0);
        Mesh {
            shards,
            queues: (0..shards * shards)
                .map(|_| ArrayQueue::new(queue_messages_max))
                .collect(),
            wakers: (0..shards).map(|_| AtomicWaker::new()).collect(),
            stalled: (0..shards * shards)
                .map(|_| AtomicBool::new(false))
                .collect(),
            drain_requested: AtomicBool::new(false),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    fn pair(&self, from: ShardId, to: ShardId) -> usize {
        debug_assert!((from as usize) < self.shards && (to as usize) < self.shards);
        from as usize * self.shards + to as usize
    }

    /// Pushes `msg` from `from` to `to` and wakes `to`. Gives the message back when the
    /// queue is full; the caller then marks itself stalled and keeps it in order.
    pub fn try_send(&self, from: ShardId, to: ShardId, msg: T) -> Result<(), T> {
        self.queues[self.pair(from, to)].push(msg)?;
        self.wakers[to as usize].wake();
        Ok(())
    }

    /// Wakes `shard`'s inbox task (used by the persistence threads after a completion).
    pub fn wake(&self, shard: ShardId) {
        self.wakers[shard as usize].wake();
    }

    /// Asks `to` to wake `from` once it has drained the queue between them.
    pub fn mark_stalled(&self, from: ShardId, to: ShardId) {
        self.stalled[self.pair(from, to)].store(true, Ordering::Release);
        // The receiver may have drained everything before the flag was set.
        self.wakers[to as usize].wake();
    }

    /// Registers the waker of `shard`'s inbox task. Call before checking for messages.
    pub fn register(&self, shard: ShardId, waker: &Waker) {
        self.wakers[shard as usize].register(waker);
    }

    pub fn has_pending(&self, shard: ShardId) -> bool {
        (0..self.shards).any(|from| !self.queues[self.pair(from as ShardId, shard)].is_empty())
    }

    /// Pops up to `budget` messages addressed to `shard`, fairly across senders, and wakes
    /// senders that were stalled on a full queue. Returns how many it popped.
    pub fn drain(
        &self,
        shard: ShardId,
        budget: usize,
        mut on_msg: impl FnMut(ShardId, T),
    ) -> usize {
        let per_sender = budget.div_ceil(self.shards).max(1);
        let mut popped = 0;
        for from in 0..self.shards as ShardId {
            let pair = self.pair(from, shard);
            for _ in 0..per_sender {
                let Some(msg) = self.queues[pair].pop() else {
                    break;
                };
                on_msg(from, msg);
                popped += 1;
            }
            if self.stalled[pair].swap(false, Ordering::AcqRel) {
                self.wakers[from as usize].wake();
            }
        }
        popped
    }

    /// Messages queued for `shard` (a gauge for metrics).
    pub fn depth(&self, shard: ShardId) -> usize {
        (0..self.shards)
            .map(|from| self.queues[self.pair(from as ShardId, shard)].len())
            .sum()
    }

    /// Asks every shard to drain (SIGTERM). Safe from any thread.
    pub fn request_drain(&self) {
        self.drain_requested.store(true, Ordering::Release);
        for waker in &self.wakers {
            waker.wake();
        }
    }

    pub fn drain_requested(&self) -> bool {
        self.drain_requested.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pairs_keep_order_and_full_queues_give_back() {
        let mesh: Mesh<u32> = Mesh::new(2, 2);
        mesh.try_send(0, 1, 1).unwrap();
        mesh.try_send(0, 1, 2).unwrap();
        assert_eq!(mesh.try_send(0, 1, 3), Err(3));
        mesh.try_send(1, 1, 9).unwrap();
        let mut got = Vec::new();
        mesh.drain(1, 10, |from, m| got.push((from, m)));
        assert_eq!(got, [(0, 1), (0, 2), (1, 9)]);
        assert!(!mesh.has_pending(1));
    }

    #[test]
    fn threads_exchange_every_message_in_order() {
        let mesh: Arc<Mesh<u64>> = Arc::new(Mesh::new(2, 64));
        let sender = {
            let mesh = mesh.clone();
            std::thread::spawn(move || {
                for i in 0..100_000u64 {
                    let mut msg = i;
                    while let Err(back) = mesh.try_send(0, 1, msg) {
                        msg = back;
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut next = 0;
        while next < 100_000 {
            mesh.drain(1, 32, |_, m| {
                assert_eq!(m, next);
                next += 1;
            });
        }
        sender.join().unwrap();
    }
}
