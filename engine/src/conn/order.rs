//! Per-connection request order: every request of a connection takes effect, and is
//! answered, in the order the client sent it, although its requests run on several shards.
//!
//! Requests for one room's home travel over one FIFO channel and run there in order, so a
//! run of them (a publisher's pipelined `send`s) goes out at once. What could overtake is
//! everything else: a request answered here (`ping`, a refusal) while others are still out,
//! a request for another shard, or one whose checks here depend on an answer still out (a
//! `send` right behind its `join`: the connection becomes a member when the `join` is
//! answered). Such a request is *held*, parsed, until everything before it is answered.
//!
//! Answers are applied in the order the requests were sent, too: each request that goes out
//! gets a *turn*, its answer comes back with it, and one that arrives before an earlier
//! answer (a `typing` answered at once behind a `send` whose answer waits for its sync) is
//! parked by the shard until its turn.
//!
//! Pure bookkeeping, no I/O: the shard asks [`Order::may_start`], tells [`Order::sent`] and
//! [`Order::arrive`], and keeps the held requests here. While requests are held the
//! connection's task reads nothing more (the held ones are at most one read's worth), so a
//! client that pipelines faster than its answers come back is slowed by TCP, not buffered.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use crate::placement::ShardId;

/// Where a request takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Answered on the connection's own shard at once (`ping`, a request refused by a check
    /// here, a malformed request).
    Here,
    /// Sent to the home shard of its room; answered from there. `barrier`: the request
    /// changes what this shard checks later requests against (`join`, `leave`), or reaches its
    /// home by a detour (`create` and `update_room` with a password go through the blocking
    /// pool first): nothing may start while it is out.
    Home { shard: ShardId, barrier: bool },
    /// Asked of every shard (`rooms`).
    Everywhere,
}

/// A connection's requests that were sent and not answered yet, and the ones held behind
/// them (`T`: a parsed request).
#[derive(Debug)]
pub struct Order<T> {
    /// The turn of the oldest request out.
    first: u32,
    /// The requests out, oldest first: whether each one's answer has arrived (early).
    owed: VecDeque<bool>,
    /// Where the requests out went; meaningful while `owed` is not empty.
    dest: Dest,
    held: VecDeque<T>,
}

/// When an answer arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Its turn: apply it now, then [`Order::pop_arrived`] the early ones behind it.
    InTurn,
    /// Before an earlier answer: park it until [`Order::pop_arrived`] names its turn.
    Early,
}

impl<T> Default for Order<T> {
    fn default() -> Self {
        Order {
            first: 0,
            owed: VecDeque::new(),
            dest: Dest::Here,
            held: VecDeque::new(),
        }
    }
}

impl<T> Order<T> {
    /// A new request for `dest` may start now: nothing is held, and it may follow what is
    /// out.
    pub fn may_start(&self, dest: Dest) -> bool {
        self.held.is_empty() && self.may_follow(dest)
    }

    /// Nothing is out, or what is out went to the same home as a run of requests that
    /// change nothing here, and so does this one.
    fn may_follow(&self, dest: Dest) -> bool {
        if self.owed.is_empty() {
            return true;
        }
        let run = |d| match d {
            Dest::Home {
                shard,
                barrier: false,
            } => Some(shard),
            _ => None,
        };
        run(self.dest).is_some_and(|out| run(dest) == Some(out))
    }

    /// A request for `dest` (not [`Dest::Here`]) went out; returns its turn, which its
    /// answer carries back.
    pub fn sent(&mut self, dest: Dest) -> u32 {
        debug_assert!(dest != Dest::Here, "a request answered here is never out");
        debug_assert!(self.owed.is_empty() || self.dest == dest);
        let turn = self.next_turn();
        self.owed.push_back(false);
        self.dest = dest;
        turn
    }

    /// The turn the next request sent gets.
    pub fn next_turn(&self) -> u32 {
        self.first.wrapping_add(self.owed.len() as u32)
    }

    /// The answer for `turn` arrived.
    pub fn arrive(&mut self, turn: u32) -> Arrival {
        let at = turn.wrapping_sub(self.first) as usize;
        debug_assert!(at < self.owed.len(), "an answer for no request out");
        if at == 0 {
            self.owed.pop_front();
            self.first = self.first.wrapping_add(1);
            return Arrival::InTurn;
        }
        if let Some(arrived) = self.owed.get_mut(at) {
            *arrived = true;
        }
        Arrival::Early
    }

    /// The turn of the oldest answer out, if it arrived early: its turn is now.
    pub fn pop_arrived(&mut self) -> Option<u32> {
        if self.owed.front() != Some(&true) {
            return None;
        }
        self.owed.pop_front();
        let turn = self.first;
        self.first = self.first.wrapping_add(1);
        Some(turn)
    }

    /// Requests out and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.owed.len()
    }

    pub fn hold(&mut self, request: T) {
        self.held.push_back(request);
    }

    /// The oldest held request, if it may start now (it is first in line).
    pub fn next_ready(&mut self, dest_of: impl Fn(&T) -> Dest) -> Option<T> {
        let dest = dest_of(self.held.front()?);
        if self.may_follow(dest) {
            self.held.pop_front()
        } else {
            None
        }
    }

    /// Requests are waiting: the connection must not read more.
    /// Gives the queues' memory back once nothing is out or held (the shard's ticker: see
    /// `Outbound::trim_idle`).
    pub fn release_if_idle(&mut self) {
        if self.owed.is_empty() && self.owed.capacity() > 0 {
            self.owed = VecDeque::new();
        }
        if self.held.is_empty() && self.held.capacity() > 0 {
            self.held = VecDeque::new();
        }
    }

    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// A closing connection drops what it holds: nobody reads the answers.
    pub fn clear_held(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_0: Dest = Dest::Home {
        shard: 0,
        barrier: false,
    };
    const SEND_1: Dest = Dest::Home {
        shard: 1,
        barrier: false,
    };
    const JOIN_0: Dest = Dest::Home {
        shard: 0,
        barrier: true,
    };

    #[test]
    fn an_idle_order_gives_its_memory_back_and_a_busy_one_keeps_its_state() {
        let mut order = Order::<Dest>::default();
        assert_eq!(order.sent(SEND_0), 0);
        order.hold(Dest::Here);
        order.release_if_idle();
        assert!(order.is_holding(), "a held request is kept");
        assert!(!order.may_start(SEND_1), "and so is the one owed");
        assert_eq!(order.arrive(0), Arrival::InTurn);
        assert_eq!(order.next_ready(|d| *d), Some(Dest::Here));
        assert!(order.owed.capacity() > 0 && order.held.capacity() > 0);
        order.release_if_idle();
        assert_eq!((order.owed.capacity(), order.held.capacity()), (0, 0));
        assert!(order.may_start(SEND_1), "nothing out: anything may start");
        assert_eq!(order.sent(SEND_1), 1, "turns go on counting");
    }

    #[test]
    fn a_run_for_one_home_pipelines_and_anything_else_waits() {
        let mut order = Order::<Dest>::default();
        assert!(order.may_start(SEND_0));
        assert_eq!(order.sent(SEND_0), 0);
        assert!(order.may_start(SEND_0), "same home, nothing changes here");
        assert_eq!(order.sent(SEND_0), 1);
        for other in [SEND_1, JOIN_0, Dest::Here, Dest::Everywhere] {
            assert!(!order.may_start(other), "{other:?} would overtake");
        }
        order.hold(Dest::Here);
        assert!(!order.may_start(SEND_0), "nothing overtakes a held request");
        assert_eq!(order.arrive(0), Arrival::InTurn);
        assert_eq!(order.next_ready(|d| *d), None);
        assert_eq!(order.arrive(1), Arrival::InTurn);
        assert_eq!(order.next_ready(|d| *d), Some(Dest::Here));
        assert!(!order.is_holding());
    }

    #[test]
    fn nothing_starts_while_a_barrier_is_out() {
        let mut order = Order::<Dest>::default();
        order.sent(JOIN_0);
        assert!(!order.may_start(SEND_0));
        assert!(!order.may_start(JOIN_0));
        order.hold(SEND_0);
        order.hold(SEND_0);
        order.hold(SEND_1);
        assert_eq!(order.arrive(0), Arrival::InTurn);
        assert_eq!(order.next_ready(|d| *d), Some(SEND_0));
        order.sent(SEND_0);
        assert_eq!(order.next_ready(|d| *d), Some(SEND_0));
        order.sent(SEND_0);
        assert_eq!(order.next_ready(|d| *d), None, "another home waits");
        assert_eq!(order.in_flight(), 2);
        order.arrive(1);
        order.arrive(2);
        assert_eq!(order.next_ready(|d| *d), Some(SEND_1));
    }

    #[test]
    fn an_early_answer_waits_for_its_turn() {
        let mut order = Order::<Dest>::default();
        let turns: Vec<u32> = (0..3).map(|_| order.sent(SEND_0)).collect();
        assert_eq!(turns, [0, 1, 2]);
        assert_eq!(order.arrive(2), Arrival::Early);
        assert_eq!(order.arrive(1), Arrival::Early);
        assert_eq!(order.pop_arrived(), None, "turn 0 is still owed");
        assert_eq!(order.arrive(0), Arrival::InTurn);
        assert_eq!(order.pop_arrived(), Some(1));
        assert_eq!(order.pop_arrived(), Some(2));
        assert_eq!(order.pop_arrived(), None);
        assert_eq!(order.in_flight(), 0);
        assert_eq!(order.next_turn(), 3);
    }

    #[test]
    fn turns_wrap() {
        let mut order = Order::<Dest> {
            first: u32::MAX,
            ..Order::default()
        };
        assert_eq!(order.sent(SEND_0), u32::MAX);
        assert_eq!(order.sent(SEND_0), 0);
        assert_eq!(order.arrive(0), Arrival::Early);
        assert_eq!(order.arrive(u32::MAX), Arrival::InTurn);
        assert_eq!(order.pop_arrived(), Some(0));
    }
}
