//! One handler per request: join · create · update · read · delete · typing · presence ·
//! search · leave · send · history, and the `rooms` part a home contributes.
#![forbid(unsafe_code)]

use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sokdo_persistence::{ReadRequest, Record};

use super::clustered::Then;
use super::{not_member, AcceptedSend, Call, Homes, Joining, Now, Offload, PasswordCheck, Waiting};
use crate::cluster::meta::MetaOp;
use crate::mesh::msg::{
    Leaving, Origin, Outgoing, RoomEntry, RoomsPart, RoomsQuery, ShardMsg, Subscribe,
};
use crate::room::{refusals, Room, RoomInfo};
use crate::wire::protocol::{self, ErrorCode, Msg, ProtoError};

#[derive(Serialize)]
struct ReadEvent<'a> {
    room: &'a str,
    user: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct ReadOk<'a> {
    room: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct DeletedEvent<'a> {
    room: &'a str,
    seq: u64,
    by: &'a str,
}

#[derive(Serialize)]
struct JoinOk<'a> {
    room: &'a str,
    last_seq: u64,
    unread: u64,
    /// With `after_seq`: whether every message after it was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    /// With `recovered: false`: the first seq replayed (older ones: `history`).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seq: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct SendOk<'a> {
    pub(super) room: &'a str,
    pub(super) seq: u64,
    pub(super) msg_id: &'a str,
    pub(super) ts: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) duplicate: bool,
}

#[derive(Serialize)]
pub(super) struct RoomOk<'a> {
    pub(super) room: &'a str,
}

#[derive(Serialize)]
pub(super) struct HistoryOk<'a> {
    pub(super) room: &'a str,
    pub(super) messages: &'a [&'a Msg],
}

#[derive(Serialize)]
struct UserInRoom<'a> {
    room: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct PresenceOk<'a> {
    room: &'a str,
    users: Vec<&'a str>,
}

/// The fields of a `send` the home needs beyond room and user.
pub(super) struct Send {
    pub(super) name: Option<String>,
    pub(super) body: String,
    pub(super) client_msg_id: Option<String>,
    pub(super) received_at: Instant,
}

impl Homes {
    // === join ===

    pub(super) fn join(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        (password, peer): (Option<String>, Option<std::net::IpAddr>),
        after_seq: Option<u64>,
        subscribe: Subscribe,
    ) -> Result<Option<Offload>, ProtoError> {
        // Without quorum no owner can decide: a room known here is joined on its copy (kept
        // current by the owner while this instance had members), as reads are served; an
        // unknown one is not created.
        let alone = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.no_quorum().is_some());
        if self.cluster.is_some() && !(alone && self.rooms.contains_key(room)) {
            let op = MetaOp::Join {
                user: call.user.to_owned(),
                created_ms: call.now.ms,
                auto_create: self.rules.auto_create_rooms,
            };
            let then = Then::Join {
                password,
                peer,
                after_seq,
                subscribe,
            };
            return self.ask_owner(call, room, op, then).map(|()| None);
        }
        self.join_local(call, room, (password, peer), after_seq, subscribe)
    }

    /// A `join` as this instance decides it (with `--peers`: once the owner's metadata of
    /// the room is applied here, so the password checked is the owner's).
    pub(super) fn join_local(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        (password, peer): (Option<String>, Option<std::net::IpAddr>),
        after_seq: Option<u64>,
        subscribe: Subscribe,
    ) -> Result<Option<Offload>, ProtoError> {
        let key = match self.room_key(room) {
            Ok(key) => key,
            Err(_) if self.rules.auto_create_rooms => {
                let info = RoomInfo {
                    title: None,
                    private: false,
                    creator: call.user.to_owned(),
                    created_ms: call.now.ms,
                };
                self.new_room(room.to_owned(), info, None)?
            }
            Err(e) => return Err(e),
        };
        let joining = Joining {
            origin: call.origin.clone(),
            room: key.clone(),
            user: call.user.to_owned(),
            after_seq,
            cut_at: None,
            subscribe,
        };
        let r = self.room(&key);
        if !r.info().private || r.is_member(call.user) {
            self.join_admitted(call.out, joining, call.now)?;
            return Ok(None);
        }
        let (Some(password), Some(hash)) = (password, r.password_hash.clone()) else {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("room `{room}` is private: `join` needs its password"),
            ));
        };
        if let Err(e) = self.guard.admit(&key, call.user, peer, call.now.at) {
            self.counters.room_password_refusals.inc();
            return Err(e);
        }
        let check = PasswordCheck {
            password,
            hash,
            peer,
            joining,
        };
        Ok(Some(Offload::VerifyPassword(check)))
    }

    /// A private room's `join` after its password was checked on the blocking pool.
    pub fn join_verified(
        &mut self,
        check: PasswordCheck,
        matches: bool,
        now: Now,
        out: &mut Outgoing,
    ) {
        let origin = check.joining.origin.clone();
        let (room, user) = (&check.joining.room, &check.joining.user);
        self.guard.checked(room, user, check.peer, matches, now.at);
        if !matches {
            self.counters.room_password_failures.inc();
        }
        let result = if matches {
            self.join_admitted(out, check.joining, now)
        } else {
            Err(ProtoError::new(ErrorCode::Forbidden, "wrong password"))
        };
        if let Err(e) = result {
            super::reply_err(out, &origin, e);
        }
    }

    /// A `join` the room admits: a member from now on; the replay starts with a store read
    /// when it reaches below the ring. A client further behind than `replay_messages_max`
    /// gets the newest that many.
    fn join_admitted(
        &mut self,
        out: &mut Outgoing,
        mut joining: Joining,
        now: Now,
    ) -> Result<(), ProtoError> {
        let last_seq = self.room(&joining.room).last_seq();
        let max = self.rules.replay_messages_max;
        if let Some(after) = joining.after_seq {
            if last_seq.saturating_sub(after) > max {
                joining.after_seq = Some(last_seq - max);
                joining.cut_at = Some(last_seq - max + 1);
            }
        }
        self.add_member(&joining.room, &joining.user)?;
        self.check_caught_up(&joining.room, joining.after_seq)?;
        self.replay_next(out, joining, now)
    }

    /// The next step of a join's replay, a page at a time (`replay_page_messages`): a store
    /// read while the replay is below the ring, then the ring's messages; the last page
    /// goes with the `ok` and the subscription (`finish_join`).
    pub(super) fn replay_next(
        &mut self,
        out: &mut Outgoing,
        mut joining: Joining,
        now: Now,
    ) -> Result<(), ProtoError> {
        let Some(after) = joining.after_seq else {
            self.finish_join(out, &joining, Vec::new(), now);
            return Ok(());
        };
        let page_max = self.rules.replay_page_messages;
        let r = self.room(&joining.room);
        if after.saturating_add(1) < r.ring_first_seq() {
            let req = ReadRequest::After {
                room: joining.room.to_string(),
                after_seq: after,
                limit: page_max,
            };
            return self.read_store(req, Waiting::Join(joining));
        }
        let rest = r.replay(after).messages;
        if rest.len() <= page_max {
            self.finish_join(out, &joining, Vec::new(), now);
            return Ok(());
        }
        let page: Vec<&Msg> = rest[..page_max].to_vec();
        joining.after_seq = page.last().map(|m| m.seq);
        let frames = page.into_iter().map(msg_frame).collect();
        self.send_page(out, joining, frames);
        Ok(())
    }

    /// A page of a join's replay came from the store: its part below the ring goes to the
    /// connection, and the replay waits for it to ask for more. Messages published
    /// meanwhile go to the ring, and the connection is not subscribed yet: nothing live can
    /// pass the replay.
    pub(super) fn replay_page(
        &mut self,
        out: &mut Outgoing,
        mut joining: Joining,
        stored: Vec<Msg>,
        now: Now,
    ) {
        let after = joining.after_seq.unwrap_or(0);
        let ring_first = self.room(&joining.room).ring_first_seq();
        let frames: Vec<bytes::Bytes> = stored
            .iter()
            .filter(|m| m.seq > after && m.seq < ring_first)
            .map(msg_frame)
            .collect();
        let Some(last) = stored
            .iter()
            .map(|m| m.seq)
            .filter(|s| *s < ring_first)
            .max()
        else {
            if after + 1 < ring_first {
                // The store holds nothing between: no replay can fill it; say so.
                tracing::warn!(room = %joining.room, after, ring_first, "replay: store has a gap");
                joining.cut_at = Some(ring_first);
                joining.after_seq = Some(ring_first - 1);
            }
            let origin = joining.origin.clone();
            if let Err(e) = self.replay_next(out, joining, now) {
                super::reply_err(out, &origin, e);
            }
            return;
        };
        joining.after_seq = Some(last.max(after));
        self.send_page(out, joining, frames);
    }

    /// Sends one replay page to the connection; the replay waits under a token until the
    /// connection asks for the next (`replay_more`).
    fn send_page(&mut self, out: &mut Outgoing, joining: Joining, frames: Vec<bytes::Bytes>) {
        let token = self.ticket().token;
        let msg = ShardMsg::ReplayPage {
            conn: joining.origin.conn,
            room: joining.room.clone(),
            token,
            frames,
        };
        out.push(joining.origin.shard, msg);
        self.paused.insert(token, joining);
    }

    /// The connection took a replay page: read the next (or forget the replay).
    pub(super) fn replay_more(&mut self, out: &mut Outgoing, token: u64, cancel: bool, now: Now) {
        let Some(joining) = self.paused.remove(&token) else {
            debug_assert!(false, "a replay token answered twice");
            return;
        };
        if cancel {
            return;
        }
        let origin = joining.origin.clone();
        if let Err(e) = self.replay_next(out, joining, now) {
            super::reply_err(out, &origin, e);
        }
    }

    /// Subscribes the connection and sends it the `ok`, then every message after
    /// `after_seq` not sent yet: first those read from the store, then the ring's. Run on
    /// the home, so no live message can slip between the replay and the subscription.
    pub(super) fn finish_join(
        &mut self,
        out: &mut Outgoing,
        joining: &Joining,
        stored: Vec<Msg>,
        now: Now,
    ) {
        let Joining {
            origin,
            room: key,
            user,
            after_seq,
            cut_at,
            subscribe,
        } = joining;
        let r = self.room_mut(key);
        let came_online = *subscribe == Subscribe::New && r.subscribe(origin.shard as usize, user);
        let ok = protocol::ok(
            origin.request.as_deref(),
            JoinOk {
                room: key,
                last_seq: r.last_seq(),
                unread: r.unread(user),
                recovered: after_seq.map(|_| cut_at.is_none()),
                first_seq: *cut_at,
            },
        );
        let replay = after_seq.map_or_else(Vec::new, |after| replay_frames(r, after, &stored));
        let msg = ShardMsg::Subscribed {
            conn: origin.conn,
            turn: origin.turn,
            request: origin.request.clone(),
            room: key.clone(),
            user: Arc::from(user.as_str()),
            subscribe: *subscribe,
            ok: ok.into(),
            replay,
        };
        out.push(origin.shard, msg);
        if came_online {
            let event = protocol::event("joined", UserInRoom { room: key, user });
            self.broadcast(out, key, event, now.at, None);
        }
    }

    // === create, update ===

    pub(super) fn create(
        &mut self,
        call: &mut Call<'_>,
        room: String,
        title: Option<String>,
        private: bool,
        password_hash: Option<String>,
    ) -> Result<(), ProtoError> {
        if self.rooms.contains_key(room.as_str()) {
            return Err(refusals::room_exists(&room));
        }
        if self.cluster.is_some() {
            let op = MetaOp::Create {
                user: call.user.to_owned(),
                created_ms: call.now.ms,
                title,
                private,
                password_hash,
            };
            return self.ask_owner(call, &room, op, Then::Create);
        }
        let info = RoomInfo {
            title,
            private,
            creator: call.user.to_owned(),
            created_ms: call.now.ms,
        };
        let key = self.new_room(room, info, password_hash)?;
        self.add_member(&key, call.user)?;
        call.ok(RoomOk { room: &key });
        Ok(())
    }

    pub(super) fn update_room(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        title: Option<String>,
        private: Option<bool>,
        password_hash: Option<String>,
    ) -> Result<(), ProtoError> {
        if self.cluster.is_some() {
            let op = MetaOp::Update {
                user: call.user.to_owned(),
                title,
                private,
                password_hash,
            };
            return self.ask_owner(call, room, op, Then::Answer);
        }
        let key = self.room_key(room)?;
        let r = self.room(&key);
        if r.info().creator != call.user {
            return Err(refusals::not_creator());
        }
        let password_hash = password_hash.or_else(|| r.password_hash.clone());
        if private == Some(true) && password_hash.is_none() {
            return Err(refusals::private_needs_password());
        }
        let info = r.info();
        self.log(
            Record::Room {
                room: room.to_owned(),
                title: title.clone().or_else(|| info.title.clone()),
                private: private.unwrap_or(info.private),
                password_hash: password_hash.clone(),
                creator: info.creator.clone(),
                created_ms: info.created_ms,
            },
            None,
        )?;
        let r = self.room_mut(&key);
        r.set_info(title, private);
        r.password_hash = password_hash;
        call.ok(RoomOk { room });
        Ok(())
    }

    pub(super) fn new_room(
        &mut self,
        room: String,
        info: RoomInfo,
        password_hash: Option<String>,
    ) -> Result<Arc<str>, ProtoError> {
        let max = self.rules.rooms_max;
        if self.rooms.len() >= max {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("this shard homes rooms_per_shard_max ({max}) rooms"),
            ));
        }
        self.log(
            Record::Room {
                room: room.clone(),
                title: info.title.clone(),
                private: info.private,
                password_hash: password_hash.clone(),
                creator: info.creator.clone(),
                created_ms: info.created_ms,
            },
            None,
        )?;
        let key: Arc<str> = Arc::from(room.as_str());
        let mut r = Room::new(room, info, self.rules.limits, self.shards as usize);
        r.password_hash = password_hash;
        self.rooms.insert(key.clone(), r);
        self.ids.insert(key.clone());
        Ok(key)
    }

    pub(super) fn add_member(&mut self, key: &Arc<str>, user: &str) -> Result<(), ProtoError> {
        if self.room(key).is_member(user) {
            return Ok(());
        }
        let record = Record::Member {
            room: key.to_string(),
            user: user.to_owned(),
            joined: true,
        };
        self.log(record, None)?;
        let had = self.room(key).member_count();
        self.room_mut(key).add_member(user);
        self.index_member(key, user, true);
        self.members_changed(key, had);
        Ok(())
    }

    // === read, delete ===

    pub(super) fn read(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        seq: u64,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let user = call.user;
        let r = self.room(&key);
        if !r.is_member(user) {
            return Err(not_member(room));
        }
        let seq = seq.min(r.last_seq());
        if seq > r.read_seq(user) {
            // Logged first: a full log refuses the request and changes nothing.
            let target = r.read_target(user, seq);
            self.log(pointer_record(&key, user, target), None)?;
            self.room_mut(&key).mark_read(user, seq);
            debug_assert_eq!(self.room(&key).read_seq(user), target);
            self.tell_read(call.out, &key, user, call.now.at);
        }
        let seq = self.room(&key).read_seq(user);
        call.ok(ReadOk { room, seq });
        Ok(())
    }

    /// A `read` event to the room: `user`'s pointer moved (only `read` moves it).
    fn tell_read(&self, out: &mut Outgoing, key: &Arc<str>, user: &str, at: Instant) {
        let seq = self.room(key).read_seq(user);
        let event = protocol::event(
            "read",
            ReadEvent {
                room: key,
                user,
                seq,
            },
        );
        self.broadcast(out, key, event, at, None);
    }

    pub(super) fn delete(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        seq: u64,
    ) -> Result<(), ProtoError> {
        if self.cluster.is_some() {
            let op = MetaOp::Delete {
                user: call.user.to_owned(),
                seq,
            };
            return self.ask_owner(call, room, op, Then::Answer);
        }
        let key = self.room_key(room)?;
        let r = self.room(&key);
        if seq == 0 || seq > r.last_seq() {
            return Err(no_message(room, seq));
        }
        if let Some(m) = r.in_ring(seq) {
            let author = m.from.clone();
            let (origin, user, now) = (call.origin, call.user, call.now);
            return self.finish_delete(call.out, origin, (&key, seq), user, &author, now);
        }
        let req = ReadRequest::After {
            room: room.to_owned(),
            after_seq: seq - 1,
            limit: 1,
        };
        let waiting = Waiting::Delete {
            origin: call.origin.clone(),
            room: key,
            user: call.user.to_owned(),
            seq,
        };
        self.read_store(req, waiting)
    }

    /// Deletes a message once its author is known: the author and the room's creator may.
    pub(super) fn finish_delete(
        &mut self,
        out: &mut Outgoing,
        origin: &Origin,
        (key, seq): (&Arc<str>, u64),
        user: &str,
        author: &str,
        now: Now,
    ) -> Result<(), ProtoError> {
        if author != user && self.room(key).info().creator != user {
            return Err(refusals::not_author_or_creator());
        }
        self.tombstone(out, (key, seq), user, now)?;
        super::reply_ok(out, origin, RoomOk { room: key });
        Ok(())
    }

    /// Logs a message's deletion and turns it into a tombstone; `deleted` to the room.
    pub(super) fn tombstone(
        &mut self,
        out: &mut Outgoing,
        (key, seq): (&Arc<str>, u64),
        by: &str,
        now: Now,
    ) -> Result<(), ProtoError> {
        let record = Record::Deleted {
            room: key.to_string(),
            seq,
            by: by.to_owned(),
            ts_ms: now.ms,
        };
        self.log(record, None)?;
        let deleted = self.room_mut(key).delete(seq);
        self.cache_changed(key, false);
        if deleted {
            let event = DeletedEvent { room: key, seq, by };
            self.broadcast(out, key, protocol::event("deleted", event), now.at, None);
        }
        Ok(())
    }

    // === typing, presence, search ===

    pub(super) fn typing(&mut self, call: &mut Call<'_>, room: &str) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let user = call.user;
        let event = protocol::event("typing", UserInRoom { room, user });
        self.broadcast(call.out, &key, event, call.now.at, Some(user));
        call.ok(RoomOk { room });
        Ok(())
    }

    /// A private room shows its content to members only.
    fn visible(&self, key: &Arc<str>, user: &str) -> Result<(), ProtoError> {
        let r = self.room(key);
        if r.info().private && !r.is_member(user) {
            return Err(ProtoError::new(
                ErrorCode::NotMember,
                format!("room `{key}` is private"),
            ));
        }
        Ok(())
    }

    pub(super) fn presence(&mut self, call: &mut Call<'_>, room: &str) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        self.visible(&key, call.user)?;
        let mut users: Vec<&str> = self.room(&key).online_users().collect();
        users.sort_unstable();
        call.ok(PresenceOk { room, users });
        Ok(())
    }

    pub(super) fn search(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        query: &str,
        limit: u32,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        self.visible(&key, call.user)?;
        let r = self.room(&key);
        let found: Vec<&Msg> = r
            .search(query, limit as usize)
            .into_iter()
            .filter_map(|seq| r.in_ring(seq))
            .collect();
        call.ok(HistoryOk {
            room,
            messages: &found,
        });
        Ok(())
    }

    /// This shard's part of a `rooms` answer: the rooms it homes that match, by id, after
    /// the cursor, at most `limit` + 1 (so the asker knows whether there are more). A range
    /// of the id index (or of the user's own rooms with `joined`) from the cursor: at most
    /// `scan_rooms_max` rooms are looked at, so a page costs O(scan + log rooms) whatever the
    /// shard homes.
    pub fn rooms_part(&self, q: &RoomsQuery) -> RoomsPart {
        let needle = q.query.as_deref().map(str::to_lowercase);
        let matches = |r: &Room| {
            if !r.is_member(&q.user) && (q.joined || r.info().private) {
                return false;
            }
            needle.as_deref().is_none_or(|n| {
                contains_caseless(r.id(), n)
                    || r.info()
                        .title
                        .as_deref()
                        .is_some_and(|t| contains_caseless(t, n))
            })
        };
        let from = match q.cursor.as_deref() {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let mut part = RoomsPart::default();
        let wanted = q.limit as usize + 1;
        let index: Box<dyn Iterator<Item = &Arc<str>>> = if q.joined {
            let rooms = self
                .joined
                .get(q.user.as_str())
                .map_or(&[][..], Vec::as_slice);
            let start = match q.cursor.as_deref() {
                Some(c) => rooms.partition_point(|r| &**r <= c),
                None => 0,
            };
            Box::new(rooms[start..].iter())
        } else {
            Box::new(self.ids.range::<str, _>((from, Bound::Unbounded)))
        };
        let mut last: Option<&Arc<str>> = None;
        for (looked, id) in index.enumerate() {
            if looked == q.scan_rooms_max as usize {
                part.scanned_to = last.map(|l| l.to_string());
                break;
            }
            last = Some(id);
            let r = self.room(id);
            if matches(r) {
                part.entries.push(RoomEntry {
                    room: r.id().to_owned(),
                    title: r.info().title.clone(),
                    private: r.info().private,
                    members: r.member_count(),
                    last_seq: r.last_seq(),
                    unread: r.is_member(&q.user).then(|| r.unread(&q.user)),
                });
                if part.entries.len() == wanted {
                    break;
                }
            }
        }
        part
    }

    // === leave ===

    pub(super) fn leave(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        leaving: Leaving,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let user = call.user;
        // The connection has stopped receiving the room whatever happens below: count it
        // out first, so the home and the subscriber shard never disagree.
        let went_offline = self
            .room_mut(&key)
            .unsubscribe(call.origin.shard as usize, user);
        if went_offline {
            let event = protocol::event("left", UserInRoom { room, user });
            self.broadcast(call.out, &key, event, call.now.at, None);
        }
        if leaving == Leaving::Membership {
            let record = Record::Member {
                room: room.to_owned(),
                user: user.to_owned(),
                joined: false,
            };
            self.log(record, None)?;
            let had = self.room(&key).member_count();
            self.room_mut(&key).remove_member(user);
            self.index_member(&key, user, false);
            self.members_changed(&key, had);
            call.ok(RoomOk { room });
        }
        Ok(())
    }

    // === send ===

    pub(super) fn send(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        send: Send,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let user = call.user;
        let client_msg_id = send.client_msg_id.as_deref();
        let r = self.room(&key);
        if let Some((seq, ts)) = r.retry_of(user, client_msg_id) {
            let msg_id = Room::msg_id(room, seq);
            call.ok(SendOk {
                room,
                seq,
                msg_id: &msg_id,
                ts,
                duplicate: true,
            });
            return Ok(());
        }
        if self.cluster.is_some() {
            return self.publish_clustered(call, key, send);
        }
        let (seq, ts) = (r.next_seq(), call.now.ms);
        let ticket = self.rules.durable_acks.then(|| self.ticket());
        let record = Record::Message {
            room: room.to_owned(),
            seq,
            msg_id: Room::msg_id(room, seq),
            from: user.to_owned(),
            name: send.name.clone(),
            body: send.body.clone(),
            ts_ms: ts,
            client_msg_id: send.client_msg_id.clone(),
        };
        self.log(record, ticket)?;
        let reserved = self.room_mut(&key).reserve(user, client_msg_id, ts);
        assert_eq!(reserved, seq, "the logged seq is the reserved seq");
        self.counters.messages_in.inc();
        let accepted = AcceptedSend {
            origin: call.origin.clone(),
            room: key,
            seq,
            from: user.to_owned(),
            name: send.name,
            body: send.body,
            ts,
            received_at: send.received_at,
            client_msg_id: send.client_msg_id,
        };
        match ticket {
            Some(t) => {
                self.waiting.insert(t.token, Waiting::Ack(accepted));
            }
            None => self.publish_send(call.out, accepted),
        }
        Ok(())
    }

    /// Makes an accepted message visible: into the room, `ok` to the sender, `msg` to every
    /// subscriber. With durable acks this runs when the record is durable, so nobody ever
    /// sees a message (or a seq) that a crash could take back.
    pub(super) fn publish_send(&mut self, out: &mut Outgoing, send: AcceptedSend) {
        let AcceptedSend {
            origin,
            room,
            seq,
            from,
            name,
            body,
            ts,
            received_at,
            client_msg_id: _,
        } = send;
        self.room_mut(&room)
            .publish(seq, &from, name.as_deref(), body, ts);
        self.cache_changed(&room, true);
        let msg = self.room(&room).in_ring(seq).expect("just published");
        let ok = SendOk {
            room: &room,
            seq,
            msg_id: &msg.msg_id,
            ts,
            duplicate: false,
        };
        super::reply_ok(out, &origin, ok);
        let event = protocol::event("msg", msg);
        self.broadcast(out, &room, event, received_at, None);
        self.room_mut(&room).sent_by(&from, seq);
    }

    /// A send whose record the log could not write: the sender gets `error` and nobody else
    /// hears of it (it was never visible).
    pub(super) fn abandon_send(
        &mut self,
        out: &mut Outgoing,
        send: AcceptedSend,
        error: ProtoError,
    ) {
        let client_msg_id = send.client_msg_id.as_deref();
        self.room_mut(&send.room)
            .abandon(send.seq, &send.from, client_msg_id);
        super::reply_err(out, &send.origin, error);
    }

    // === history ===

    pub(super) fn history(
        &mut self,
        call: &mut Call<'_>,
        room: &str,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        self.visible(&key, call.user)?;
        let r = self.room(&key);
        let from_ring = r.history(before_seq, limit as usize);
        if from_ring.len() == limit as usize || r.ring_first_seq() <= 1 {
            call.ok(HistoryOk {
                room,
                messages: &from_ring,
            });
            return Ok(());
        }
        let req = ReadRequest::Before {
            room: room.to_owned(),
            before_seq,
            limit: limit as usize,
        };
        let waiting = Waiting::History {
            origin: call.origin.clone(),
            room: key,
        };
        self.read_store(req, waiting)
    }
}

/// The `msg` frames of a replay after `after`: the store's part below the ring, then the
/// ring's, in seq order without a repeat.
fn replay_frames(r: &Room, after: u64, stored: &[Msg]) -> Vec<bytes::Bytes> {
    let ring_first = r.ring_first_seq();
    let mut frames = Vec::new();
    let mut last = after;
    for m in stored
        .iter()
        .filter(|m| m.seq > after && m.seq < ring_first)
    {
        frames.push(msg_frame(m));
        last = m.seq;
    }
    let from_ring = r.replay(last).messages;
    frames.extend(from_ring.into_iter().map(msg_frame));
    frames
}

fn msg_frame(m: &Msg) -> bytes::Bytes {
    crate::wire::ws::text(&protocol::event("msg", m))
}

fn pointer_record(room: &str, user: &str, seq: u64) -> Record {
    Record::ReadPointer {
        room: room.to_owned(),
        user: user.to_owned(),
        seq,
    }
}

pub(super) use refusals::no_message;

/// Whether `text` holds `needle` (already lower-cased), ignoring case; without allocating
/// when both are ASCII (the common case, on the `rooms` scan's path).
fn contains_caseless(text: &str, needle: &str) -> bool {
    if text.is_ascii() && needle.is_ascii() {
        let n = needle.as_bytes();
        return n.is_empty()
            || text
                .as_bytes()
                .windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n));
    }
    text.to_lowercase().contains(needle)
}
