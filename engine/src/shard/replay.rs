//! The pace of a `join`'s replay from the store, on the connection's side: each page the
//! home sends (`ShardMsg::ReplayPage`) is queued to the connection, and the home is asked
//! for the next (`HomeOp::ReplayMore`) once the connection's queue is at most half its cap
//! — at once, or at a later tick. So a replay of any length holds at most about one cap of
//! frames per connection, and a client that reads is never closed by its own replay.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;

use super::fanout::Slow;
use super::Shard;
use crate::conn::{ConnRef, Phase};
use crate::mesh::msg::{HomeOp, HomeReq, Origin, ShardMsg};

/// A replay page queued to a connection, whose home waits to be asked for the next.
pub(super) struct ReplayWait {
    conn: ConnRef,
    room: Arc<str>,
    token: u64,
}

impl Shard {
    /// A page of a replay for one of this shard's connections.
    pub(super) fn on_replay_page(
        &mut self,
        conn: ConnRef,
        room: Arc<str>,
        token: u64,
        frames: Vec<Bytes>,
    ) {
        let wait = ReplayWait { conn, room, token };
        let Some(key) = self
            .live(conn)
            .filter(|k| self.conns[*k].phase == Phase::Open)
        else {
            return self.answer_replay(wait, true);
        };
        let max = self.cfg().outbound_queue_bytes_max as usize;
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        let entry = &mut self.conns[key];
        if !entry.out.is_empty() && entry.out.bytes() + bytes > max {
            // Other rooms filled the queue meanwhile: the hard cap holds for replays too.
            self.close_slow(key, Slow::Cap);
            return self.answer_replay(wait, true);
        }
        for frame in frames {
            entry.out.push(frame);
        }
        entry.wake();
        if entry.out.bytes() <= max / 2 {
            self.answer_replay(wait, false);
        } else {
            self.replay_waits.push(wait);
        }
    }

    /// Per tick: asks for the next page of every replay whose connection took enough of the
    /// last one; forgets those whose connection went. O(replays waiting).
    pub(super) fn pace_replays(&mut self) {
        if self.replay_waits.is_empty() {
            return;
        }
        let max = self.cfg().outbound_queue_bytes_max as usize;
        let waits = std::mem::take(&mut self.replay_waits);
        for wait in waits {
            let queued = self
                .live(wait.conn)
                .filter(|k| self.conns[*k].phase == Phase::Open)
                .map(|k| self.conns[k].out.bytes());
            match queued {
                None => self.answer_replay(wait, true),
                Some(bytes) if bytes <= max / 2 => self.answer_replay(wait, false),
                Some(_) => self.replay_waits.push(wait),
            }
        }
    }

    /// Tells the home to send the next page, or (`cancel`) to forget the replay.
    fn answer_replay(&mut self, wait: ReplayWait, cancel: bool) {
        let ReplayWait { conn, room, token } = wait;
        let user = self
            .live(conn)
            .map_or_else(String::new, |k| self.conns[k].user.to_string());
        let req = HomeReq {
            room: room.to_string(),
            user,
            op: HomeOp::ReplayMore { token, cancel },
        };
        let origin = Origin {
            shard: self.id,
            conn,
            request: None,
            turn: 0,
        };
        self.emit(self.home_of(&room), ShardMsg::Home(origin, req));
    }
}
