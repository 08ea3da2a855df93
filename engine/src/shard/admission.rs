//! Admission past capacity, for the whole instance. `Places` (crate::places) counts the
//! admitted and the waiting connections in atomics; while nobody waits, a shard admits a new
//! connection with one compare-and-swap and no message. Past capacity the connection waits
//! in **one queue for the instance**, kept by the desk shard ([`DESK`]): its shard asks the
//! desk (`ShardMsg::AdmissionAsk`), which queues it in the order the asks arrive — first
//! come first served across shards, up to the latency of the shard channels — and answers
//! with its position or, when a place is free, `Admit`. A released place while connections
//! wait is reported to the desk (`PlaceFreed`), which takes it for the head of the queue.
//!
//! Positions: a connection is told its position when it joins the queue, then at most once
//! a second (the desk's sweep), and only when it changed — never a frame per waiter for
//! every admission.
//!
//! [`Desk`] is the pure queue; the `impl Shard` below applies it.
#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::Shard;
use crate::conn::{ConnRef, Phase};
use crate::mesh::msg::ShardMsg;
use crate::mesh::ShardId;
use crate::wire::protocol;
use crate::wire::ws;

/// The shard that keeps the instance's admission queue.
pub const DESK: ShardId = 0;

/// How often the desk tells waiting connections their new positions.
const POSITIONS_EVERY: Duration = Duration::from_secs(1);

/// A waiting connection, named across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Waiter {
    pub shard: ShardId,
    pub conn: ConnRef,
}

/// The instance's admission queue, in arrival order. Connections that leave are dropped
/// from `live` at once (O(1)) and from `queue` when they reach its head or at the sweep.
#[derive(Debug, Default)]
pub struct Desk {
    /// Arrival order, with the position each was last told (0: not yet).
    queue: VecDeque<(Waiter, u32)>,
    live: HashSet<Waiter>,
    last_sweep: Option<Instant>,
}

impl Desk {
    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// `waiter` joins the end of the queue; its position (1 = next).
    pub fn ask(&mut self, waiter: Waiter) -> u32 {
        if self.live.insert(waiter) {
            let position = self.live.len() as u32;
            self.queue.push_back((waiter, position));
        }
        self.live.len() as u32
    }

    /// `waiter` went away; whether it was still waiting.
    pub fn left(&mut self, waiter: Waiter) -> bool {
        self.live.remove(&waiter)
    }

    /// Gives places to the head of the queue while `take()` finds one free; the connections
    /// admitted, in queue order (each out of the queue for good).
    pub fn fill(&mut self, mut take: impl FnMut() -> bool) -> Vec<Waiter> {
        let mut admitted = Vec::new();
        while !self.live.is_empty() && take() {
            loop {
                let (waiter, _) = self.queue.pop_front().expect("live waiters are queued");
                if self.live.remove(&waiter) {
                    admitted.push(waiter);
                    break;
                }
            }
        }
        admitted
    }

    /// Once per `POSITIONS_EVERY`: the waiters whose position changed since they were last
    /// told, with the new one; also drops the ones that left from the queue.
    pub fn sweep(&mut self, now: Instant) -> Vec<(Waiter, u32)> {
        if self.last_sweep.is_some_and(|t| now - t < POSITIONS_EVERY) {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let live = &self.live;
        self.queue.retain(|(w, _)| live.contains(w));
        let mut moved = Vec::new();
        for (position, (waiter, told)) in self.queue.iter_mut().enumerate() {
            let position = position as u32 + 1;
            if *told != position {
                *told = position;
                moved.push((*waiter, position));
            }
        }
        moved
    }
}

impl Shard {
    /// A connection upgraded and authenticated: admitted at once if a place is free and
    /// nobody waits, else it asks the desk for a place (the bound on the queue was checked
    /// before upgrading).
    pub(super) fn arrive(&mut self, key: usize) {
        let places = self.instance.places.clone();
        if places.try_enter() {
            self.conns[key].admitted = true;
            return self.admit(key);
        }
        places.start_waiting();
        self.conns[key].phase = Phase::Queued;
        self.conns[key].queued = true;
        self.metrics.connections_queued.inc();
        let conn = self.conn_ref(key);
        self.emit(
            DESK,
            ShardMsg::AdmissionAsk {
                shard: self.id,
                conn,
            },
        );
    }

    pub(super) fn tell_position(&mut self, key: usize, position: u32) {
        let entry = &mut self.conns[key];
        entry.queue_position = position;
        let event = protocol::event("queued", serde_json::json!({"position": position}));
        entry.out.push(ws::text(&event));
        entry.wake();
    }

    /// The desk took a place for `conn`: it gets its `hello`, or, gone, the place back.
    fn on_admit(&mut self, conn: ConnRef) {
        match self.live(conn) {
            Some(key) if self.conns[key].phase == Phase::Queued => {
                self.metrics.connections_queued.dec();
                self.conns[key].queued = false;
                self.conns[key].admitted = true;
                self.admit(key);
            }
            _ => self.release_place(),
        }
    }

    /// An admitted connection went away (or declined its place): the place is free.
    pub(super) fn release_place(&mut self) {
        if self.instance.places.release() {
            self.emit(DESK, ShardMsg::PlaceFreed);
        }
    }

    /// A connection that waited went away before its place came.
    pub(super) fn left_queue(&mut self, conn: ConnRef) {
        self.metrics.connections_queued.dec();
        self.emit(
            DESK,
            ShardMsg::AdmissionLeft {
                shard: self.id,
                conn,
            },
        );
    }

    /// The admission messages (`mesh::msg`); the desk's and its connections' sides.
    pub(super) fn on_admission(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::AdmissionAsk { shard, conn } => {
                let waiter = Waiter { shard, conn };
                self.desk.ask(waiter);
                let admitted = self.desk_fill();
                if !admitted.contains(&waiter) {
                    // It joined last: its position is the number waiting.
                    let position = self.desk.len() as u32;
                    self.emit(shard, ShardMsg::AdmissionPositions(vec![(conn, position)]));
                }
            }
            ShardMsg::AdmissionLeft { shard, conn } => {
                if self.desk.left(Waiter { shard, conn }) {
                    self.instance.places.stop_waiting();
                }
            }
            ShardMsg::PlaceFreed => {
                self.desk_fill();
            }
            ShardMsg::Admit { conn } => self.on_admit(conn),
            ShardMsg::AdmissionPositions(moved) => {
                for (conn, position) in moved {
                    let Some(key) = self.live(conn) else { continue };
                    let entry = &self.conns[key];
                    if entry.phase == Phase::Queued && entry.queue_position != position {
                        self.tell_position(key, position);
                    }
                }
            }
            other => unreachable!("not an admission message: {other:?}"),
        }
    }

    /// The desk gives free places to the head of its queue; the waiters admitted.
    fn desk_fill(&mut self) -> Vec<Waiter> {
        let places = self.instance.places.clone();
        let admitted = self.desk.fill(|| places.try_take());
        for waiter in &admitted {
            places.stop_waiting();
            self.emit(waiter.shard, ShardMsg::Admit { conn: waiter.conn });
        }
        admitted
    }

    /// The desk, every tick: free places to the queue (a safety net: every ask and release
    /// already does it), and new positions at most once a second, one message per shard.
    pub(super) fn desk_tick(&mut self, now: Instant) {
        if self.id != DESK {
            return;
        }
        self.desk_fill();
        let moved = self.desk.sweep(now);
        if moved.is_empty() {
            return;
        }
        let mut by_shard: Vec<Vec<(ConnRef, u32)>> =
            vec![Vec::new(); self.instance.shards().into()];
        for (waiter, position) in moved {
            by_shard[waiter.shard as usize].push((waiter.conn, position));
        }
        for (shard, moved) in by_shard.into_iter().enumerate() {
            if !moved.is_empty() {
                self.emit(shard as ShardId, ShardMsg::AdmissionPositions(moved));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::places::Places;

    fn waiter(shard: ShardId, n: u64) -> Waiter {
        Waiter {
            shard,
            conn: ConnRef {
                key: n as u32,
                generation: n,
            },
        }
    }

    /// Goal: places go to waiters in arrival order across shards; one that left loses its
    /// turn without costing a place; positions go out only when they changed.
    #[test]
    fn first_come_first_served_across_shards() {
        let places = Places::new(1, 10);
        assert!(places.try_enter());
        let mut desk = Desk::default();
        for (i, w) in [waiter(1, 1), waiter(0, 2), waiter(1, 3), waiter(0, 4)]
            .into_iter()
            .enumerate()
        {
            places.start_waiting();
            assert_eq!(desk.ask(w), i as u32 + 1);
            assert!(desk.fill(|| places.try_take()).is_empty(), "no place free");
        }
        let t0 = Instant::now();
        assert!(desk.sweep(t0).is_empty(), "everyone knows their position");

        assert!(desk.left(waiter(0, 2)));
        places.stop_waiting();
        assert!(places.release(), "three still wait");
        let admitted = desk.fill(|| places.try_take());
        assert_eq!(admitted, vec![waiter(1, 1)]);
        places.stop_waiting();
        assert_eq!(
            desk.sweep(t0 + Duration::from_millis(10)),
            vec![],
            "at most once a second"
        );
        assert_eq!(
            desk.sweep(t0 + POSITIONS_EVERY),
            vec![(waiter(1, 3), 1), (waiter(0, 4), 2)]
        );
        assert_eq!((places.admitted(), places.waiting(), desk.len()), (1, 2, 2));
    }

    /// Goal: a place taken for a connection that has gone meanwhile (it left after the desk
    /// popped it) goes to the next waiter; no place leaks, however many are gone.
    #[test]
    fn a_declined_place_goes_to_the_next_and_never_leaks() {
        let places = Places::new(2, 10);
        assert!(places.try_enter() && places.try_enter());
        let mut desk = Desk::default();
        for n in 1..=5 {
            places.start_waiting();
            desk.ask(waiter((n % 2) as ShardId, n));
        }
        let gone: HashSet<u64> = [1, 2, 4].into();
        // Two places free; every admit of a gone connection is declined, passing it on.
        let mut holders = 0;
        for _ in 0..2 {
            let _ = places.release();
        }
        let mut admitted = desk.fill(|| places.try_take());
        while let Some(w) = admitted.pop() {
            places.stop_waiting();
            if gone.contains(&w.conn.generation) {
                let _ = places.release(); // its shard declines: `on_admit`
                admitted.extend(desk.fill(|| places.try_take()));
            } else {
                holders += 1;
            }
        }
        assert_eq!(holders, 2, "3 and 5 got the places");
        assert_eq!((places.admitted(), places.waiting(), desk.len()), (2, 0, 0));
        // A connection that leaves while waiting gives back nothing: it held no place.
        places.start_waiting();
        desk.ask(waiter(0, 9));
        assert!(desk.left(waiter(0, 9)));
        assert!(!desk.left(waiter(0, 9)), "only once");
        places.stop_waiting();
        assert!(desk.fill(|| places.try_take()).is_empty());
        assert_eq!(places.admitted(), 2);
    }
}
