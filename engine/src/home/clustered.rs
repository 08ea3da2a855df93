//! A clustered room's home (with `--peers`; docs/REPLICATION.md "Send and deliver"): the
//! home checks a `send` as always, then hands it to the cluster thread instead of
//! assigning a seq; the room's owner sequences it, and the home answers the sender when
//! the owner has acknowledged. Every acknowledged record of the room comes back as a
//! delivery (or a replay), which the home applies in seq order, exactly once — ring, log,
//! store, one copy per subscriber shard — as it applies its own sends on one instance.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use sokdo_persistence::Record as LogRecord;
use sokdo_replication::frame::{Record, RefusalCode};

use super::requests::{Send, SendOk};
use super::{reply_err, reply_ok, Call, Homes};
use crate::cluster::port::{FromCluster, Note, Payload, ToCluster};
use crate::mesh::msg::{Origin, Outgoing};
use crate::wire::protocol::{self, ErrorCode, ProtoError};

/// A `send` handed to the cluster thread, waiting for the owner's answer.
#[derive(Debug)]
pub(super) struct Publishing {
    origin: Origin,
    room: Arc<str>,
    ts: u64,
}

impl Homes {
    /// Hands a checked `send` to the cluster thread; the answer comes with
    /// [`Homes::on_cluster`].
    pub(super) fn publish_clustered(
        &mut self,
        call: &mut Call<'_>,
        key: Arc<str>,
        send: Send,
    ) -> Result<(), ProtoError> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(ProtoError::new(ErrorCode::Internal, "not clustered"));
        };
        let ts = call.now.ms;
        let payload = Payload {
            from: call.user.to_owned(),
            name: send.name,
            body: send.body,
            ts,
            client_msg_id: send.client_msg_id,
        };
        let token = self.ticket().token;
        let req = ToCluster::Publish {
            shard: self.shard,
            token,
            room: key.to_string(),
            key: payload.retry_key(),
            payload: payload.encode(),
        };
        if !cluster.port.publish(req) {
            // The contract has no `overloaded` code: a busy server is `unavailable`.
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "overloaded: the cluster thread's queue is full: retry shortly",
            ));
        }
        self.counters.messages_in.inc();
        let publishing = Publishing {
            origin: call.origin.clone(),
            room: key,
            ts,
        };
        self.publishing.insert(token, publishing);
        Ok(())
    }

    /// An answer or a delivery from the cluster thread.
    pub fn on_cluster(&mut self, msg: FromCluster, out: &mut Outgoing) {
        match msg {
            FromCluster::Published {
                token,
                seq,
                duplicate,
                original_ts,
            } => {
                let Some(p) = self.publishing.remove(&token) else {
                    return;
                };
                let msg_id = crate::room::Room::msg_id(&p.room, seq);
                // A retry's `ok` is the original's: its seq, `msg_id` and `ts`.
                let ok = SendOk {
                    room: &p.room,
                    seq,
                    msg_id: &msg_id,
                    ts: original_ts.unwrap_or(p.ts),
                    duplicate,
                };
                reply_ok(out, &p.origin, ok);
            }
            FromCluster::Refused { token, code, why } => {
                let Some(p) = self.publishing.remove(&token) else {
                    return;
                };
                // Every refusal is `unavailable` (the contract has no `overloaded`): the
                // message says which, and a retry is the answer to all of them.
                let why = match code {
                    RefusalCode::Overloaded => format!("overloaded: {why}"),
                    _ => why,
                };
                reply_err(out, &p.origin, ProtoError::new(ErrorCode::Unavailable, why));
            }
            FromCluster::Records { room, records } => self.apply_records(&room, records, out),
            FromCluster::CaughtUp { room } => {
                self.catching_up.remove(room.as_str());
            }
        }
    }

    /// Acknowledged records of `room`, in seq order: each applied once; a gap stops here
    /// and asks the owner for what is missing.
    fn apply_records(&mut self, room: &str, records: Vec<Record>, out: &mut Outgoing) {
        let Some((key, _)) = self.rooms.get_key_value(room) else {
            return; // not a room here (any more): nothing to apply it to
        };
        let key = key.clone();
        for record in records {
            let last = self.room(&key).last_seq();
            if record.seq <= last {
                // Delivered before (a replay, a new owner's resend) — or a seq the cluster
                // gave out again after losing its log (docs/REPLICATION.md "Not built yet").
                self.check_same(&key, &record);
                continue;
            }
            if record.seq > last + 1 {
                self.note(Note::Replay {
                    room: room.to_owned(),
                    after_seq: last,
                });
                return;
            }
            if !self.apply_record(&key, record, out) {
                return;
            }
        }
    }

    /// Logs and publishes one record at the room's next seq. `false`: the log refused it;
    /// the owner is asked again for it later.
    fn apply_record(&mut self, key: &Arc<str>, record: Record, out: &mut Outgoing) -> bool {
        let seq = record.seq;
        let payload = Payload::decode(&record.payload).unwrap_or_else(|| {
            tracing::warn!(room = %key, seq, "a cluster record that is not a message: shown empty");
            Payload {
                from: String::new(),
                name: None,
                body: String::new(),
                ts: 0,
                client_msg_id: None,
            }
        });
        let log = LogRecord::Message {
            room: key.to_string(),
            seq,
            msg_id: crate::room::Room::msg_id(key, seq),
            from: payload.from.clone(),
            name: payload.name.clone(),
            body: payload.body.clone(),
            ts_ms: payload.ts,
            client_msg_id: payload.client_msg_id.clone(),
        };
        if let Err(e) = self.log(log, None) {
            tracing::warn!(room = %key, seq, "a cluster record not applied: {}", e.message);
            self.note(Note::Replay {
                room: key.to_string(),
                after_seq: seq - 1,
            });
            return false;
        }
        self.room_mut(key).apply_external(
            seq,
            (
                &payload.from,
                payload.name.as_deref(),
                payload.body,
                payload.ts,
            ),
            payload.client_msg_id.as_deref(),
        );
        self.cache_changed(key, true);
        let msg = self.room(key).in_ring(seq).expect("just applied");
        let event = protocol::event("msg", msg);
        self.broadcast(out, key, event, Instant::now(), None);
        self.room_mut(key).sent_by(&payload.from, seq);
        true
    }

    /// Logs an ERROR when a record's seq is already held (in the ring) with another
    /// message: the cluster reused a seq, and that message is not shown here.
    fn check_same(&self, key: &Arc<str>, record: &Record) {
        let Some(held) = self.room(key).in_ring(record.seq) else {
            return;
        };
        let Some(p) = Payload::decode(&record.payload) else {
            return;
        };
        if held.deleted || (held.from == p.from && held.body.as_deref() == Some(p.body.as_str())) {
            return;
        }
        tracing::error!(
            room = %key, seq = record.seq, epoch = record.epoch,
            "seq {} reused by the cluster with another message (its log was lost): that message is not shown",
            record.seq
        );
    }

    fn note(&self, note: Note) {
        if let Some(cluster) = &self.cluster {
            cluster.port.note(note);
        }
    }

    /// A `join` asking for messages after `after_seq` while this instance's copy of the
    /// room is behind it and still catching up from the owner: `unavailable`, retry (the
    /// catch-up was asked when the room got its first member here). Past the copy with no
    /// catch-up under way, the join goes on as on one instance.
    pub(super) fn check_caught_up(
        &self,
        key: &Arc<str>,
        after_seq: Option<u64>,
    ) -> Result<(), ProtoError> {
        let behind = after_seq.is_some_and(|a| a > self.room(key).last_seq());
        if behind && self.catching_up.contains(key) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "this instance is catching up on the room's messages from its owner: retry shortly",
            ));
        }
        Ok(())
    }

    /// Tells the cluster thread when a room gets its first local member or loses its last
    /// (`had`: the members before the change).
    pub(super) fn members_changed(&mut self, key: &Arc<str>, had: usize) {
        let r = self.room(key);
        let has = r.member_count();
        if self.cluster.is_some() && had == 0 && has > 0 {
            self.catching_up.insert(key.clone());
        }
        let r = self.room(key);
        if (had == 0) != (has == 0) {
            self.note(Note::Interest {
                room: key.to_string(),
                on: has > 0,
                last_seq: r.last_seq(),
            });
        }
    }

    /// At start: every restored room with members is of interest, and catching up.
    pub(super) fn register_restored(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        for (key, r) in &self.rooms {
            if r.member_count() > 0 {
                self.catching_up.insert(key.clone());
                self.note(Note::Interest {
                    room: key.to_string(),
                    on: true,
                    last_seq: r.last_seq(),
                });
            }
        }
    }
}
