//! `rooms`: asked of every shard (each answers for the rooms it homes from its id index,
//! looking at no more than `--rooms-query-scan-rooms-max` rooms), gathered on the asking
//! shard, merged, cut to the page and answered with a cursor. Each connection may ask
//! `--room-queries-per-connection-per-s` times a second.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use super::in_order::Answer;
use super::Shard;
use crate::mesh::msg::{Origin, Reply, RoomEntry, RoomsPart, RoomsQuery, ShardMsg};
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
    /// The lowest `scanned_to` of the parts so far: no shard's rooms past it are known.
    scanned_to: Option<String>,
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
                protocol::ErrorCode::Unavailable,
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
            scanned_to: None,
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

    pub(super) fn on_rooms_part(&mut self, token: u64, part: RoomsPart) {
        let waiting = &mut self.rooms_queries.waiting;
        let Some(gather) = waiting.get_mut(&token) else {
            debug_assert!(false, "a part for no `rooms` request");
            return;
        };
        gather.entries.extend(part.entries);
        if let Some(to) = part.scanned_to {
            if gather.scanned_to.as_ref().is_none_or(|t| to < *t) {
                gather.scanned_to = Some(to);
            }
        }
        gather.parts_left -= 1;
        if gather.parts_left > 0 {
            return;
        }
        let gather = waiting.remove(&token).expect("present");
        let (entries, cursor) = merge(gather.entries, gather.scanned_to, gather.limit);
        let ok = protocol::ok(
            gather.origin.request.as_deref(),
            serde_json::json!({"rooms": entries, "cursor": cursor}),
        );
        let (conn, turn) = (gather.origin.conn, gather.origin.turn);
        self.on_answer(conn, turn, Answer::Reply(Reply::Ok(ok.into())));
    }

    /// A connection's `rooms` query within `--room-queries-per-connection-per-s`, or
    /// `rate_limited` with how long to wait.
    pub(super) fn check_rooms_rate(&mut self, key: usize) -> Result<(), ProtoError> {
        let per_s = self.cfg().room_queries_per_connection_per_s;
        if per_s == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let rate = self.conns[key]
            .rooms_rate
            .get_or_insert_with(|| crate::throttle::Rate::new(per_s, now));
        rate.take(per_s, now).map_err(|wait| {
            self.metrics.room_queries_rate_limited.inc();
            ProtoError::rate_limited(format!("at most {per_s} `rooms` queries per second"), wait)
        })
    }
}

/// The page of a gathered `rooms` answer and its cursor. Entries past the lowest point a
/// shard's scan stopped at are dropped (that shard may home unseen rooms before them); the
/// cursor is then that point, so the next page goes on from it — a short page with a
/// cursor when the filter matched few of the rooms looked at.
fn merge(
    mut entries: Vec<RoomEntry>,
    scanned_to: Option<String>,
    limit: usize,
) -> (Vec<RoomEntry>, Option<String>) {
    if let Some(to) = &scanned_to {
        entries.retain(|e| e.room <= *to);
    }
    entries.sort_by(|a, b| a.room.cmp(&b.room));
    if entries.len() > limit {
        entries.truncate(limit);
        let cursor = entries.last().map(|e| e.room.clone());
        return (entries, cursor);
    }
    (entries, scanned_to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &str) -> RoomEntry {
        RoomEntry {
            room: room.to_owned(),
            title: None,
            private: false,
            members: 0,
            last_seq: 0,
            unread: None,
        }
    }

    fn rooms(entries: &[RoomEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.room.as_str()).collect()
    }

    #[test]
    fn a_full_page_ends_at_its_last_room() {
        let (page, cursor) = merge(vec![entry("c"), entry("a"), entry("b")], None, 2);
        assert_eq!(rooms(&page), ["a", "b"]);
        assert_eq!(cursor.as_deref(), Some("b"));
        let (page, cursor) = merge(vec![entry("b"), entry("a")], None, 2);
        assert_eq!(rooms(&page), ["a", "b"]);
        assert_eq!(cursor, None, "the last page");
    }

    #[test]
    fn a_scan_cut_short_drops_what_lies_past_it_and_goes_on_from_there() {
        let parts = vec![entry("a"), entry("m"), entry("z")];
        let (page, cursor) = merge(parts, Some("n".to_owned()), 10);
        assert_eq!(rooms(&page), ["a", "m"]);
        assert_eq!(cursor.as_deref(), Some("n"));
        let (page, cursor) = merge(Vec::new(), Some("n".to_owned()), 10);
        assert!(page.is_empty());
        assert_eq!(cursor.as_deref(), Some("n"), "a short page still goes on");
    }
}
