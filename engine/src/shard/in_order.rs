//! A connection's requests take effect, and are answered, in the order sent
//! (`conn::order`): each parsed request starts at once or is held; each answer is applied in
//! its turn (an early one is parked here), and the last one owed releases what was held.
#![forbid(unsafe_code)]

use bytes::Bytes;

use super::fanout::{Joined, Unsent};
use super::Shard;
use crate::conn::order::Arrival;
use crate::conn::{ConnRef, Dest, Parsed, Phase};
use crate::mesh::msg::Reply;
use crate::placement::ShardId;
use crate::wire::protocol::Request;

/// The answer to one request that went out.
pub(super) enum Answer {
    Reply(Reply),
    /// A `join`'s: the `ok` and the replay, and the connection receives the room.
    Joined {
        joined: Joined,
        ok: Bytes,
        replay: Vec<Bytes>,
    },
}

impl Shard {
    /// A parsed request of connection `key`: started now if nothing it must not overtake is
    /// out or held, else held.
    pub(super) fn submit(&mut self, key: usize, parsed: Parsed) {
        let dest = dest_of(&parsed, self.instance.shards());
        if self.conns[key].order.may_start(dest) {
            self.start(key, parsed, dest);
        } else {
            self.conns[key].order.hold(parsed);
        }
    }

    fn start(&mut self, key: usize, parsed: Parsed, dest: Dest) {
        let (id, req) = match parsed {
            Ok(request) => request,
            Err((id, err)) => return self.reply_error(key, id.as_deref(), &err),
        };
        if dest == Dest::Here {
            if let Err(err) = self.on_request(key, id.clone(), req, 0) {
                self.reply_error(key, id.as_deref(), &err);
            }
            return;
        }
        // Counted out before it leaves: a room homed here answers within `on_request`.
        let turn = self.conns[key].order.sent(dest);
        if let Err(error) = self.on_request(key, id.clone(), req, turn) {
            // Refused here: that is its answer, in its turn like any other.
            let reply = Reply::Error { request: id, error };
            self.on_answer(self.conn_ref(key), turn, Answer::Reply(reply));
        }
    }

    /// The answer for `conn`'s request of `turn`: applied now if it is the oldest owed
    /// (then the early ones behind it), parked otherwise. When none is owed any more, the
    /// held requests start.
    pub(super) fn on_answer(&mut self, conn: ConnRef, turn: u32, answer: Answer) {
        let ordered = self
            .live(conn)
            .filter(|&key| self.conns[key].order.in_flight() > 0);
        let Some(key) = ordered else {
            // Gone (a `join`'s answer still gives back its subscription), or an HTTP API
            // call's, which is not ordered.
            return self.apply_answer(conn, answer);
        };
        if self.conns[key].order.arrive(turn) == Arrival::Early {
            self.early_answers.insert((conn.key, turn), answer);
            return;
        }
        self.apply_answer(conn, answer);
        while let Some(turn) = self.conns[key].order.pop_arrived() {
            let answer = self.early_answers.remove(&(conn.key, turn));
            debug_assert!(answer.is_some(), "an early answer is parked");
            if let Some(answer) = answer {
                self.apply_answer(conn, answer);
            }
        }
        if self.conns[key].order.in_flight() == 0 {
            self.release_held(key);
            self.close_if_answered(key);
        }
    }

    /// Closes `key` with `code` once every request it sent before has been answered (at
    /// once if none is out or held): an accepted `send` hears its `ok`, a refused one its
    /// error. What it sends meanwhile is not read as a request (`over_request_rate`).
    pub(super) fn close_when_answered(&mut self, key: usize, code: u16, reason: &'static str) {
        self.conns[key].close_when_answered = Some((code, reason));
        self.close_if_answered(key);
    }

    fn close_if_answered(&mut self, key: usize) {
        let entry = &mut self.conns[key];
        if entry.order.in_flight() > 0 || entry.order.is_holding() {
            return;
        }
        if let Some((code, reason)) = entry.close_when_answered.take() {
            self.close_conn(key, code, reason, Unsent::Send);
        }
    }

    fn apply_answer(&mut self, conn: ConnRef, answer: Answer) {
        match answer {
            Answer::Reply(reply) => self.on_reply(conn, reply),
            Answer::Joined { joined, ok, replay } => self.on_subscribed(joined, ok, replay),
        }
    }

    /// Starts held requests, oldest first, while they may start; lets the connection read
    /// again once none is held.
    fn release_held(&mut self, key: usize) {
        // A request answered at once (refused on this shard) answers inside `start` and
        // lands here again: the outer call's loop goes on with it instead, so a long run of
        // pipelined refusals is a loop, not a recursion as deep as the run.
        if self.releasing.contains(&key) {
            return;
        }
        self.releasing.push(key);
        let shards = self.instance.shards();
        loop {
            let entry = &mut self.conns[key];
            if entry.phase != Phase::Open {
                // Closing: nobody reads the answers.
                entry.order.clear_held();
                break;
            }
            let Some(parsed) = entry.order.next_ready(|p| dest_of(p, shards)) else {
                break;
            };
            let dest = dest_of(&parsed, shards);
            self.start(key, parsed, dest);
        }
        self.releasing.retain(|k| *k != key);
        let entry = &mut self.conns[key];
        if !entry.order.is_holding() {
            entry.wake();
        }
    }

    /// `conn` went away (it is forgotten): answers parked for it are applied to nobody,
    /// so that a `join`'s still gives back its subscription.
    pub(super) fn drop_early_answers(&mut self, conn: ConnRef) {
        if self.early_answers.is_empty() {
            return;
        }
        let turns: Vec<u32> = (self.early_answers.keys())
            .filter(|(key, _)| *key == conn.key)
            .map(|(_, turn)| *turn)
            .collect();
        for turn in turns {
            if let Some(answer) = self.early_answers.remove(&(conn.key, turn)) {
                self.apply_answer(conn, answer);
            }
        }
    }
}

/// Where a parsed request takes effect (`conn::order::Dest`).
fn dest_of(parsed: &Parsed, shards: u16) -> Dest {
    let Ok((_, req)) = parsed else {
        return Dest::Here;
    };
    let home = |room: &str| -> ShardId { crate::placement::home_of(room, shards) };
    match req {
        Request::Ping | Request::Refresh { .. } => Dest::Here,
        Request::Rooms { .. } => Dest::Everywhere,
        Request::Join { room, .. }
        | Request::Leave { room }
        | Request::Create { room, .. }
        | Request::UpdateRoom { room, .. } => Dest::Home {
            shard: home(room),
            barrier: true,
        },
        Request::Send { room, .. }
        | Request::Typing { room }
        | Request::History { room, .. }
        | Request::Read { room, .. }
        | Request::Delete { room, .. }
        | Request::Presence { room }
        | Request::Search { room, .. } => Dest::Home {
            shard: home(room),
            barrier: false,
        },
    }
}
