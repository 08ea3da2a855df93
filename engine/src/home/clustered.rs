//! A clustered room's home (with `--peers`; docs/REPLICATION.md "Send and deliver"): the
//! home checks a `send` as always, then hands it to the cluster thread instead of
//! assigning a seq; the room's owner sequences it, and the home answers the sender when
//! the owner has acknowledged. Every acknowledged record of the room comes back as a
//! delivery (or a replay), which the home applies in seq order, exactly once — ring, log,
//! store, one copy per subscriber shard — as it applies its own sends on one instance.
//!
//! `create`, `join`, `update_room` and `delete` go to the owner too (`ask_owner`): it
//! decides them on the room's metadata (`cluster::meta`), and the home applies the
//! metadata a majority holds to its copy of the room — creating it, its title and
//! password, its tombstones — before it goes on as on one instance (a `join` then checks
//! the password here, against the owner's hash). Every change also comes to every
//! instance with members (`FromCluster::Meta`).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use sokdo_persistence::Record as LogRecord;
use sokdo_replication::frame::{Meta, Record, RefusalCode};

use super::requests::{RoomOk, Send, SendOk};
use super::{reply_err, reply_ok, Call, Homes, Now, Offload};
use crate::cluster::meta::{MetaOp, MetaRequest, RoomMeta};
use crate::cluster::port::{FromCluster, Note, Payload, ToCluster};
use crate::mesh::msg::{Origin, Outgoing, Subscribe};
use crate::room::RoomInfo;
use crate::wire::protocol::{self, ErrorCode, ProtoError};

/// A `send` handed to the cluster thread, waiting for the owner's answer.
#[derive(Debug)]
pub(super) struct Publishing {
    origin: Origin,
    room: Arc<str>,
    ts: u64,
}

/// A request about a clustered room's metadata, waiting for the owner's decision.
#[derive(Debug)]
pub(super) struct Deciding {
    origin: Origin,
    user: String,
    room: String,
    then: Then,
}

/// What a request does here once the owner's metadata is applied.
#[derive(Debug)]
pub(super) enum Then {
    /// `create`: the creator becomes a member.
    Create,
    /// `join`: as on one instance, against the owner's metadata.
    Join {
        password: Option<String>,
        peer: Option<std::net::IpAddr>,
        after_seq: Option<u64>,
        subscribe: Subscribe,
    },
    /// `update_room`, `delete`: applying the metadata was the change; answer `ok`.
    Answer,
}

/// The owner's metadata of a room as applied here, and its position (epoch, version).
#[derive(Debug)]
pub(super) struct Applied {
    position: (u64, u64),
    meta: RoomMeta,
}

impl Homes {
    /// Asks the room's owner to decide a request about the room's metadata; the home goes
    /// on with `then` when the answer comes ([`Homes::on_cluster`]).
    pub(super) fn ask_owner(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        op: MetaOp,
        then: Then,
    ) -> Result<(), ProtoError> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(ProtoError::new(ErrorCode::Internal, "not clustered"));
        };
        let seed = self.rooms.get(room).map(|r| RoomMeta {
            creator: r.info().creator.clone(),
            created_ms: r.info().created_ms,
            title: r.info().title.clone(),
            private: r.info().private,
            password_hash: r.password_hash.clone(),
            deleted: std::collections::BTreeMap::new(),
        });
        let request = MetaRequest {
            room: room.to_owned(),
            op,
            seed,
        };
        let token = self.ticket().token;
        let req = ToCluster::Meta {
            shard: self.shard,
            token,
            room: room.to_owned(),
            request: request.encode(),
        };
        if !cluster.port.publish(req) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "overloaded: the cluster thread's queue is full: retry shortly",
            ));
        }
        let deciding = Deciding {
            origin: call.origin.clone(),
            user: call.user.to_owned(),
            room: room.to_owned(),
            then,
        };
        self.deciding.insert(token, deciding);
        Ok(())
    }

    /// The owner decided: its metadata applied here, the request goes on.
    fn decided(
        &mut self,
        token: u64,
        meta: &Meta,
        now: Now,
        out: &mut Outgoing,
    ) -> Option<Offload> {
        let d = self.deciding.remove(&token)?;
        let mut call = Call {
            origin: &d.origin,
            user: &d.user,
            now,
            out,
        };
        let result = self
            .apply_meta(&d.room, meta, now, call.out)
            .and_then(|key| match d.then {
                Then::Create => {
                    self.add_member(&key, &d.user)?;
                    call.ok(RoomOk { room: &key });
                    Ok(None)
                }
                Then::Join {
                    password,
                    peer,
                    after_seq,
                    subscribe,
                } => self.join_local(&mut call, &key, (password, peer), after_seq, subscribe),
                Then::Answer => {
                    call.ok(RoomOk { room: &key });
                    Ok(None)
                }
            });
        result.unwrap_or_else(|e| {
            reply_err(out, &d.origin, e);
            None
        })
    }

    /// Applies the owner's metadata of `room` to the copy here (an older position than the
    /// one applied changes nothing): creates the room, takes its creator, title, privacy
    /// and password hash, and tombstones the seqs newly deleted that it holds (later ones
    /// when their records come, `apply_record`).
    fn apply_meta(
        &mut self,
        room: &str,
        meta: &Meta,
        now: Now,
        out: &mut Outgoing,
    ) -> Result<Arc<str>, ProtoError> {
        // What this home applied already (an owner re-sends it, as to each registration)
        // is not decoded again.
        let position = meta.position();
        if let (Some(a), Ok(key)) = (self.metas.get(room), self.room_key(room)) {
            if a.position >= position {
                return Ok(key);
            }
        }
        let Some(new) = RoomMeta::decode(&meta.bytes) else {
            tracing::warn!(room, "room metadata from the owner that is not readable");
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "the room's owner answered with metadata this instance cannot read: retry",
            ));
        };
        let info = RoomInfo {
            title: new.title.clone(),
            private: new.private,
            creator: new.creator.clone(),
            created_ms: new.created_ms,
        };
        let key = match self.room_key(room) {
            Ok(key) => {
                self.take_info(&key, info, &new)?;
                key
            }
            Err(_) => self.new_room(room.to_owned(), info, new.password_hash.clone())?,
        };
        let last_seq = self.room(&key).last_seq();
        let fresh: Vec<(u64, String)> = new
            .deleted
            .iter()
            .filter(|(seq, _)| {
                **seq <= last_seq
                    && !self
                        .metas
                        .get(&key)
                        .is_some_and(|a| a.meta.deleted.contains_key(seq))
            })
            .map(|(seq, by)| (*seq, by.clone()))
            .collect();
        for (seq, by) in fresh {
            self.tombstone(out, (&key, seq), &by, now)?;
        }
        self.metas.insert(
            key.clone(),
            Applied {
                position,
                meta: new,
            },
        );
        Ok(key)
    }

    /// The owner's info and password hash for the room's copy here, logged when they
    /// differ from it.
    fn take_info(
        &mut self,
        key: &Arc<str>,
        info: RoomInfo,
        new: &RoomMeta,
    ) -> Result<(), ProtoError> {
        let r = self.room(key);
        let same = r.info().title == info.title
            && r.info().private == info.private
            && r.info().creator == info.creator
            && r.password_hash == new.password_hash;
        if same {
            return Ok(());
        }
        self.log(
            LogRecord::Room {
                room: key.to_string(),
                title: info.title.clone(),
                private: info.private,
                password_hash: new.password_hash.clone(),
                creator: info.creator.clone(),
                created_ms: info.created_ms,
            },
            None,
        )?;
        let r = self.room_mut(key);
        r.replace_info(info);
        r.password_hash = new.password_hash.clone();
        Ok(())
    }

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

    /// An answer or a delivery from the cluster thread; a `join` it lets go on may need
    /// its password checked off the shard.
    pub fn on_cluster(
        &mut self,
        msg: FromCluster,
        now: Now,
        out: &mut Outgoing,
    ) -> Option<Offload> {
        match msg {
            FromCluster::Published {
                token,
                seq,
                duplicate,
                original_ts,
            } => {
                let p = self.publishing.remove(&token)?;
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
                let origin = match (self.publishing.remove(&token), self.deciding.remove(&token)) {
                    (Some(p), _) => p.origin,
                    (None, Some(d)) => d.origin,
                    (None, None) => return None,
                };
                // Every refusal is `unavailable` (the contract has no `overloaded`): the
                // message says which, and a retry is the answer to all of them.
                let why = match code {
                    RefusalCode::Overloaded => format!("overloaded: {why}"),
                    _ => why,
                };
                reply_err(out, &origin, ProtoError::new(ErrorCode::Unavailable, why));
            }
            FromCluster::Records { room, records } => self.apply_records(&room, records, now, out),
            FromCluster::CaughtUp { room } => {
                self.catching_up.remove(room.as_str());
            }
            FromCluster::MetaDone { token, meta } => return self.decided(token, &meta, now, out),
            FromCluster::MetaRefused { token, error } => {
                if let Some(d) = self.deciding.remove(&token) {
                    reply_err(out, &d.origin, error);
                }
            }
            FromCluster::Meta { room, meta } => {
                if self.rooms.contains_key(room.as_str()) {
                    if let Err(e) = self.apply_meta(&room, &meta, now, out) {
                        tracing::warn!(
                            room,
                            "the owner's room metadata not applied: {}",
                            e.message
                        );
                    }
                }
            }
        }
        None
    }

    /// Acknowledged records of `room`, in seq order: each applied once; a gap stops here
    /// and asks the owner for what is missing.
    fn apply_records(&mut self, room: &str, records: Vec<Record>, now: Now, out: &mut Outgoing) {
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
            let seq = record.seq;
            if !self.apply_record(&key, record, out) {
                return;
            }
            let deleted = self.metas.get(&key).and_then(|a| a.meta.deleted.get(&seq));
            if let Some(by) = deleted.cloned() {
                if let Err(e) = self.tombstone(out, (&key, seq), &by, now) {
                    tracing::warn!(room, seq, "a deleted message not tombstoned: {}", e.message);
                }
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
