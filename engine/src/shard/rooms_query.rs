//! `rooms`: asked of every shard (each answers for the rooms it homes), gathered on the
//! asking shard, sorted, cut to the page and answered with a cursor.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use super::in_order::Answer;
use super::Shard;
use crate::mesh::msg::{Origin, Reply, RoomEntry, RoomsQuery, ShardMsg};
use crate::wire::protocol::{self, ProtoError};

/// The `rooms` requests of this shard waiting for every shard's part.
#[derive(Default)]
pub(super) struct Gathers {
    waiting: HashMap<u64, Gather>,
    next_token: u64,
}

struct Gather {
    origin: Origin,
    parts_left: u16,
    entries: Vec<RoomEntry>,
    limit: usize,
}

impl Shard {
    pub(super) fn gather_rooms(
        &mut self,
        origin: Origin,
        query: RoomsQuery,
    ) -> Result<(), ProtoError> {
        if self.outbox.any_full() {
            self.metrics.shard_outbox_refusals.inc();
            return Err(ProtoError::new(
                crate::wire::protocol::ErrorCode::Unavailable,
                "a shard is backed up: retry shortly",
            ));
        }
        let gathers = &mut self.rooms_queries;
        gathers.next_token += 1;
        let token = gathers.next_token;
        let gather = Gather {
            origin,
            parts_left: self.instance.shards(),
            entries: Vec::new(),
            limit: query.limit as usize,
        };
        gathers.waiting.insert(token, gather);
        let query = Arc::new(query);
        for shard in 0..self.instance.shards() {
            let ask = ShardMsg::RoomsQuery {
                from: self.id,
                token,
                query: query.clone(),
            };
            self.emit(shard, ask);
        }
        Ok(())
    }

    pub(super) fn on_rooms_part(&mut self, token: u64, entries: Vec<RoomEntry>) {
        let waiting = &mut self.rooms_queries.waiting;
        let Some(gather) = waiting.get_mut(&token) else {
            debug_assert!(false, "a part for no `rooms` request");
            return;
        };
        gather.entries.extend(entries);
        gather.parts_left -= 1;
        if gather.parts_left > 0 {
            return;
        }
        let mut gather = waiting.remove(&token).expect("present");
        gather.entries.sort_by(|a, b| a.room.cmp(&b.room));
        let more = gather.entries.len() > gather.limit;
        gather.entries.truncate(gather.limit);
        let cursor = if more {
            gather.entries.last().map(|e| e.room.clone())
        } else {
            None
        };
        let ok = protocol::ok(
            gather.origin.request.as_deref(),
            serde_json::json!({"rooms": gather.entries, "cursor": cursor}),
        );
        let (conn, turn) = (gather.origin.conn, gather.origin.turn);
        self.on_answer(conn, turn, Answer::Reply(Reply::Ok(ok.into())));
    }
}
