//! The lock-free mesh between shards: one bounded single-producer queue for every ordered
//! pair of shards (memory by use: see [`Queue`]), and one [`Doorbell`] per shard.
//!
//! A shard that sends pushes onto the queue `(from, to)` and rings `to`'s doorbell; `to`'s
//! inbox task drains every queue addressed to it, a bounded batch at a time. Nothing spins:
//! an idle shard's inbox task is parked on its doorbell.
//!
//! Messages between one pair of shards keep their order: that is what lets a room's home
//! send a `join` reply and then live messages, and the subscriber shard see them in that
//! order. When a queue is full the sender keeps its own ordered, bounded backlog
//! (`shard::outbox`) and asks the receiver, through `stalled`, to ring it once it has made
//! room.
//!
//! What travels on the mesh is [`msg::ShardMsg`]; `msg.rs` is the one file of cross-shard
//! messages and draws which message may cause which.
#![forbid(unsafe_code)]

pub mod msg;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;

pub use crate::placement::ShardId;

pub struct Mesh<T> {
    shards: usize,
    queues: Vec<Queue<T>>,
    doorbells: Arc<[Doorbell]>,
    stalled: Vec<AtomicBool>,
    drain_requested: AtomicBool,
}

impl<T> Mesh<T> {
    pub fn new(shards: usize, queue_messages_max: usize) -> Mesh<T> {
        assert!(shards > 0 && queue_messages_max > 0);
        Mesh {
            shards,
            queues: (0..shards * shards)
                .map(|_| Queue::new(queue_messages_max))
                .collect(),
            doorbells: (0..shards).map(|_| Doorbell::default()).collect(),
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

    /// Pushes `msg` from `from` to `to` and rings `to`. Gives the message back when the
    /// queue is full; the caller then marks itself stalled and keeps it in order.
    pub fn try_send(&self, from: ShardId, to: ShardId, msg: T) -> Result<(), T> {
        self.queues[self.pair(from, to)].push(msg)?;
        self.doorbells[to as usize].ring();
        Ok(())
    }

    /// The doorbell of `shard`'s inbox task: other threads (the persistence threads after
    /// a completion) ring it after publishing work for that shard.
    pub fn doorbell(&self, shard: ShardId) -> &Doorbell {
        &self.doorbells[shard as usize]
    }

    /// Every shard's doorbell, for threads that are not shards (the persistence threads'
    /// completion sinks) and so need no queue of the mesh.
    pub fn doorbells(&self) -> Arc<[Doorbell]> {
        self.doorbells.clone()
    }

    /// Asks `to` to ring `from` once it has drained the queue between them.
    pub fn mark_stalled(&self, from: ShardId, to: ShardId) {
        self.stalled[self.pair(from, to)].store(true, Ordering::Release);
        // The receiver may have drained everything before the flag was set.
        self.doorbells[to as usize].ring();
    }

    /// Pops up to `budget` messages addressed to `shard`, fairly across senders, and rings
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
                self.doorbells[from as usize].ring();
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
        for bell in self.doorbells.iter() {
            bell.ring();
        }
    }

    pub fn drain_requested(&self) -> bool {
        self.drain_requested.load(Ordering::Acquire)
    }
}

/// One pair's queue: bounded in messages, but holding memory only for what it holds.
///
/// An `ArrayQueue` allocates and writes its whole capacity at once: 65,536 slots of a
/// `ShardMsg` are ≈ 12 MB, and a process of N shards has N² queues, which made most of an
/// idle process's memory (issue 14). A `SegQueue` allocates blocks of 31 slots as messages
/// come and frees them as they are taken; the bound is a count beside it. Each queue has
/// one producer (its `from` shard), so the count never lets a push past the bound.
struct Queue<T> {
    messages: SegQueue<T>,
    len: AtomicUsize,
    max: usize,
}

impl<T> Queue<T> {
    fn new(max: usize) -> Queue<T> {
        Queue {
            messages: SegQueue::new(),
            len: AtomicUsize::new(0),
            max,
        }
    }

    fn push(&self, msg: T) -> Result<(), T> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(msg);
        }
        self.messages.push(msg);
        Ok(())
    }

    fn pop(&self) -> Option<T> {
        let msg = self.messages.pop()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(msg)
    }

    /// Messages pushed and not yet taken (one being pushed may count already).
    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

const IDLE: u8 = 0;
const ARMED: u8 = 1;
const RUNG: u8 = 2;

/// How any thread wakes one task that sleeps on it, with **at most one wake in flight**.
///
/// Why not just an `AtomicWaker`: glommio turns every wake from a foreign thread into a
/// *clone* of the task's waker, queued on the owning executor and dropped only when that
/// executor next polls its reactor (at the latest after its 100 ms preemption timer). A
/// task that registers again and again inside one such turn, while a persistence thread or
/// another shard wakes it each time, queues one clone per round; glommio counts a task's
/// references in an `i16`, and at 32,768 the shard panics ("Waker invariant broken").
///
/// The doorbell makes the number of wakes independent of the traffic:
/// - `ring` (any thread, after publishing work) swaps the state to `RUNG` and wakes the
///   task only if the state was `ARMED`, that is, only if the task is asleep;
/// - the task arms the bell only when it is about to sleep ([`Doorbell::sleep`]): if a
///   ring came since it last slept, it does not sleep at all. While the task is busy,
///   rings cost one atomic swap and no wake.
///
/// A wake is sent only on an `ARMED → RUNG` transition, and the task arms again only after
/// the wake has made it run (its waker is handed to nobody else), so one clone at most
/// waits in glommio's foreign-wake queue, whatever the number of rings.
#[derive(Default)]
pub struct Doorbell {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Tells the sleeper that work was published. Safe from any thread; never blocks.
    pub fn ring(&self) {
        if self.state.swap(RUNG, Ordering::AcqRel) == ARMED {
            self.waker.wake();
        }
    }

    /// Resolves once the bell has been rung since the last `sleep` resolved. Await it from
    /// one task only, and only from a task whose waker goes nowhere else: that is what
    /// bounds the wakes in flight to one.
    pub fn sleep(&self) -> Sleep<'_> {
        Sleep {
            bell: self,
            armed: false,
        }
    }

    /// Runs `drain` (which takes a bounded batch of the published work and returns how many
    /// items it took, or `None` to stop) for as long as work keeps coming, and sleeps on the
    /// bell once a drain finds nothing. While work comes the loop yields only when glommio
    /// asks (its preemption slice is up).
    pub async fn serve(&self, mut drain: impl FnMut() -> Option<usize>) {
        while let Some(popped) = drain() {
            if popped > 0 {
                glommio::yield_if_needed().await;
            } else {
                self.sleep().await;
            }
        }
    }
}

/// The future of [`Doorbell::sleep`].
pub struct Sleep<'a> {
    bell: &'a Doorbell,
    armed: bool,
}

impl Drop for Sleep<'_> {
    /// Dropped while asleep (its task cancelled): disarm, so no ring wakes a task that is
    /// not waiting, and the next `sleep` does not return at once for nothing.
    fn drop(&mut self) {
        if self.armed {
            let _ =
                self.bell
                    .state
                    .compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let bell = self.bell;
        if self.armed {
            // Still ARMED: polled although nothing rang (not expected, since the waker is
            // private); keep sleeping. Otherwise a ring moved it to RUNG and woke us.
            return match bell.state.compare_exchange(
                RUNG,
                IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.armed = false;
                    Poll::Ready(())
                }
                Err(_) => {
                    bell.waker.register(cx.waker());
                    // Still ARMED (or IDLE, if another sleeper broke the one-sleeper rule):
                    // make sure a ring will wake us.
                    let _ = bell.state.compare_exchange(
                        IDLE,
                        ARMED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    Poll::Pending
                }
            };
        }
        // Register before arming: a ring that sees ARMED must find the waker.
        bell.waker.register(cx.waker());
        match bell
            .state
            .compare_exchange(IDLE, ARMED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.armed = true;
                Poll::Pending
            }
            Err(_) => {
                // Rung while we worked: work may be waiting, do not sleep. A swap, not a
                // store, so that it acquires the latest ring's work too.
                bell.state.swap(IDLE, Ordering::AcqRel);
                Poll::Ready(())
            }
        }
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
        assert_eq!(mesh.depth(1), 0);
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

    /// The regression test for the waker-reference overflow (issue 9). A receiver that
    /// always finds work (a standing backlog) while a "shard" thread (mesh pushes) and a
    /// "persistence" thread (completions) ring it without pause: the shape in which the
    /// former inbox, which registered its waker anew on every round, left one waker clone in
    /// glommio's foreign-wake queue per round and panicked past 32,768 (reproduced with
    /// that pattern in this harness). Far more rings than that reach one task here, with a
    /// busy task beside it, and every message arrives in order.
    #[test]
    #[allow(
        clippy::too_many_lines,
        reason = "one scenario with its three threads side by side: split, the reader loses the timing between them"
    )]
    fn a_busy_executor_survives_any_number_of_foreign_rings() {
        use crossbeam_queue::SegQueue;
        use std::sync::atomic::AtomicBool;

        const BACKLOG: u64 = 300_000;
        const EACH: u64 = 600_000;
        let mesh: Arc<Mesh<u64>> = Arc::new(Mesh::new(2, 1 << 20));
        let completions: Arc<SegQueue<u64>> = Arc::new(SegQueue::new());
        for i in 0..BACKLOG {
            mesh.try_send(0, 1, i).unwrap();
            completions.push(i);
        }
        let done = Arc::new(AtomicBool::new(false));
        let pace = || (0..20).for_each(|_| std::hint::spin_loop());

        let shard_thread = {
            let mesh = mesh.clone();
            std::thread::spawn(move || {
                for i in BACKLOG..EACH {
                    let mut msg = i;
                    while let Err(back) = mesh.try_send(0, 1, msg) {
                        msg = back;
                        std::hint::spin_loop();
                    }
                    pace();
                }
            })
        };
        let persistence_thread = {
            let (mesh, completions) = (mesh.clone(), completions.clone());
            std::thread::spawn(move || {
                for i in BACKLOG..EACH {
                    completions.push(i);
                    mesh.doorbell(1).ring();
                    pace();
                }
            })
        };

        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn({
                let (mesh, completions, done) = (mesh.clone(), completions.clone(), done.clone());
                move || async move {
                    let busy = glommio::spawn_local({
                        let done = done.clone();
                        async move {
                            while !done.load(Ordering::Relaxed) {
                                std::hint::black_box((0..200).sum::<u64>());
                                glommio::executor().yield_now().await;
                            }
                        }
                    });
                    // The production layout (shard/tasks.rs): the inbox alone in a queue of
                    // its own, not latency-sensitive. With `Latency::Matters` this test hung
                    // in CI the way a shard did (docs/ARCHITECTURE.md, "The inbox task
                    // queue"): glommio slept with the inbox runnable.
                    let queue = glommio::executor().create_task_queue(
                        glommio::Shares::Static(1000),
                        glommio::Latency::NotImportant,
                        "inbox",
                    );
                    let inbox = glommio::spawn_local_into(
                        async move {
                            let (mut next_msg, mut next_completion) = (0, 0);
                            let bell = mesh.doorbell(1);
                            bell.serve(|| {
                                if next_msg == EACH && next_completion == EACH {
                                    return None;
                                }
                                // Small batches: many rounds per reactor turn.
                                let mut popped = mesh.drain(1, 2, |_, m| {
                                    assert_eq!(m, next_msg, "mesh order");
                                    next_msg += 1;
                                });
                                if let Some(c) = completions.pop() {
                                    assert_eq!(c, next_completion, "completion order");
                                    next_completion += 1;
                                    popped += 1;
                                }
                                Some(popped)
                            })
                            .await;
                        },
                        queue,
                    )
                    .unwrap();
                    inbox.await;
                    done.store(true, Ordering::Relaxed);
                    busy.await;
                }
            })
            .unwrap();
        shard_thread.join().unwrap();
        persistence_thread.join().unwrap();
        // A lost wake would leave the inbox asleep for ever: fail instead of hanging.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(executor.join()));
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("the inbox took every message (no wake was lost)")
            .expect("the executor thread did not panic");
    }
}
