//! The room side of requests, run on the room's home shard: the only place a room's state
//! changes. A home answers the origin connection with a `Reply` or `Subscribed`, and sends
//! each event once to every shard that holds subscribers of the room (`Deliver`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use sokdo_persistence::{AppendError, Completion, ReadRequest, Record, Ticket};

use crate::persist::to_msg;
use crate::protocol::{self, ErrorCode, Msg, ProtoError};
use crate::room::{Room, RoomInfo, RoomLimits};
use crate::shard::{not_member, now_ms, HomeReq, Origin, RoomEntry, RoomsQuery, Shard, ShardMsg};
use crate::ws;

/// Most messages a `join` replays from the store before the ring (PROTOCOL.md: a client
/// that was away longer pages the rest with `history`).
const REPLAY_FROM_STORE_MESSAGES_MAX: usize = 1000;

/// A `send` whose record is logged and whose seq is reserved.
pub(crate) struct AcceptedSend {
    origin: Origin,
    room: Arc<str>,
    seq: u64,
    from: String,
    name: Option<String>,
    body: String,
    ts: u64,
    received_at: Instant,
}

/// A request waiting for the persistence thread.
pub(crate) enum Pending {
    /// A `send` whose `ok` goes out once its record is durable; the message becomes visible
    /// (ring, `msg` to subscribers) at the same moment.
    Ack(AcceptedSend),
    /// A `join` whose replay starts before the ring: the store's part is being read.
    Join {
        origin: Origin,
        room: Arc<str>,
        user: String,
        after_seq: u64,
        subscribe: bool,
    },
    /// A `history` reaching below the ring.
    History { origin: Origin, room: Arc<str> },
    /// A `delete` of a message the ring no longer holds: its author is read first.
    Delete {
        origin: Origin,
        room: Arc<str>,
        user: String,
        seq: u64,
    },
}

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
}

#[derive(Serialize)]
struct SendOk<'a> {
    room: &'a str,
    seq: u64,
    msg_id: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

#[derive(Serialize)]
struct RoomOk<'a> {
    room: &'a str,
}

#[derive(Serialize)]
struct HistoryOk<'a> {
    room: &'a str,
    messages: &'a [&'a Msg],
}

#[derive(Serialize)]
struct UserInRoom<'a> {
    room: &'a str,
    user: &'a str,
}

impl Shard {
    pub(crate) fn handle_home(&mut self, origin: Origin, req: HomeReq) {
        debug_assert_eq!(
            self.shared.home_of(req.room()),
            self.id,
            "a shard only touches rooms it homes"
        );
        let result = match req {
            HomeReq::Join {
                room,
                user,
                password,
                after_seq,
                subscribe,
            } => self.home_join(
                &origin,
                &room,
                &user,
                password.as_deref(),
                after_seq,
                subscribe,
            ),
            HomeReq::Create {
                room,
                user,
                title,
                private,
                password_hash,
            } => self.home_create(&origin, room, &user, title, private, password_hash),
            HomeReq::UpdateRoom {
                room,
                user,
                title,
                private,
                password_hash,
            } => self.home_update_room(&origin, &room, &user, title, private, password_hash),
            HomeReq::Read { room, user, seq } => self.home_read(&origin, &room, &user, seq),
            HomeReq::Delete { room, user, seq } => self.home_delete(&origin, &room, &user, seq),
            HomeReq::Typing { room, user } => self.home_typing(&origin, &room, &user),
            HomeReq::Presence { room, user } => self.home_presence(&origin, &room, &user),
            HomeReq::Search {
                room,
                user,
                query,
                limit,
            } => self.home_search(&origin, &room, &user, &query, limit),
            HomeReq::Leave {
                room,
                user,
                explicit,
            } => self.home_leave(&origin, &room, &user, explicit),
            HomeReq::Send {
                room,
                user,
                name,
                body,
                client_msg_id,
                received_at,
            } => self.home_send(
                &origin,
                &room,
                &user,
                name.as_deref(),
                body,
                client_msg_id.as_deref(),
                received_at,
            ),
            HomeReq::History {
                room,
                user,
                before_seq,
                limit,
            } => self.home_history(&origin, &room, &user, before_seq, limit),
        };
        if let Err(err) = result {
            self.reply_err(&origin, &err);
        }
    }

    fn reply_err(&mut self, origin: &Origin, err: &ProtoError) {
        self.m.protocol_errors.inc();
        let frame = ws::text(&protocol::error(origin.id.as_deref(), err));
        self.emit(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                frame,
            },
        );
    }

    fn reply<T: Serialize>(&mut self, origin: &Origin, body: T) {
        let frame = ws::text(&protocol::ok(origin.id.as_deref(), body));
        self.emit(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                frame,
            },
        );
    }

    /// Sends an event's JSON once to each shard with subscribers of the room.
    fn broadcast(&mut self, room: &Arc<str>, payload: Bytes, received_at: Instant) {
        self.broadcast_except(room, payload, received_at, None);
    }

    fn broadcast_except(
        &mut self,
        room: &Arc<str>,
        payload: Bytes,
        received_at: Instant,
        except: Option<&str>,
    ) {
        let except: Option<Arc<str>> = except.map(Arc::from);
        let shards: Vec<u16> = match self.rooms.get(room) {
            Some(r) => r.subscribed_shards().map(|s| s as u16).collect(),
            None => return,
        };
        for shard in shards {
            let msg = ShardMsg::Deliver {
                room: room.clone(),
                payload: payload.clone(),
                received_at,
                except: except.clone(),
            };
            self.emit(shard, msg);
        }
    }

    fn ticket(&mut self) -> Ticket {
        self.next_token += 1;
        Ticket {
            shard: self.id,
            token: self.next_token,
        }
    }

    /// Hands a record to the write-ahead log; a full log refuses the request.
    fn log(&self, rec: Record, ticket: Option<Ticket>) -> Result<(), ProtoError> {
        self.shared
            .persist
            .append(rec, ticket)
            .map_err(|e| match e {
                AppendError::Full => ProtoError::new(
                    ErrorCode::Unavailable,
                    "the message log is full (wal_bytes_max) while storage catches up: retry later",
                ),
                AppendError::Closed => {
                    ProtoError::new(ErrorCode::Unavailable, "the server is shutting down")
                }
                AppendError::TooLarge => {
                    ProtoError::new(ErrorCode::TooLarge, "record too large for the log")
                }
                AppendError::UnknownShard(_) => {
                    ProtoError::new(ErrorCode::Internal, "persistence misconfigured")
                }
            })
    }

    fn read_store(
        &mut self,
        req: ReadRequest,
        pending: impl FnOnce() -> Pending,
    ) -> Result<(), ProtoError> {
        let ticket = self.ticket();
        self.shared.persist.read(req, ticket).map_err(|_| {
            ProtoError::new(ErrorCode::Unavailable, "storage is busy: retry shortly")
        })?;
        self.pending.insert(ticket.token, pending());
        Ok(())
    }

    fn room_key(&self, room: &str) -> Result<Arc<str>, ProtoError> {
        self.rooms
            .get_key_value(room)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| ProtoError::new(ErrorCode::NotFound, format!("no room `{room}`")))
    }

    fn new_room(
        &mut self,
        room: String,
        info: RoomInfo,
        password_hash: Option<String>,
    ) -> Result<Arc<str>, ProtoError> {
        let max = self.cfg().rooms_per_shard_max as usize;
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
        let mut r = Room::new(room, info, self.room_limits(), self.shared.shards as usize);
        r.password_hash = password_hash;
        self.rooms.insert(key.clone(), r);
        Ok(key)
    }

    pub(crate) fn room_limits(&self) -> RoomLimits {
        RoomLimits {
            history_ring_messages_max: self.cfg().history_ring_messages_max as usize,
            idempotency_keys_max: self.cfg().idempotency_keys_max as usize,
        }
    }

    fn add_member(&mut self, key: &Arc<str>, user: &str) -> Result<(), ProtoError> {
        if self.rooms[key].is_member(user) {
            return Ok(());
        }
        self.log(
            Record::Member {
                room: key.to_string(),
                user: user.to_owned(),
                joined: true,
            },
            None,
        )?;
        self.rooms
            .get_mut(key)
            .expect("room exists")
            .add_member(user);
        Ok(())
    }

    fn home_join(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        password: Option<&str>,
        after_seq: Option<u64>,
        subscribe: bool,
    ) -> Result<(), ProtoError> {
        let key = match self.room_key(room) {
            Ok(key) => key,
            Err(_) if self.cfg().auto_create_rooms => {
                let info = RoomInfo {
                    title: None,
                    private: false,
                    creator: user.to_owned(),
                    created_ms: now_ms(),
                };
                self.new_room(room.to_owned(), info, None)?
            }
            Err(e) => return Err(e),
        };
        let r = &self.rooms[&key];
        if !r.info().private || r.is_member(user) {
            return self.join_admitted(origin, &key, user, after_seq, subscribe);
        }
        let (Some(password), Some(hash)) = (password, r.password_hash.clone()) else {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("room `{room}` is private: `join` needs its password"),
            ));
        };
        // argon2 runs on the blocking pool; the join resumes here when it is checked.
        let (me, origin, user, password) = (
            self.me.clone(),
            origin.clone(),
            user.to_owned(),
            password.to_owned(),
        );
        crate::shard::spawn_task(async move {
            let matches =
                crate::password::off_shard(move || crate::password::verify(&password, &hash)).await;
            let Some(shard) = me.upgrade() else { return };
            let mut shard = shard.borrow_mut();
            let result = if matches {
                shard.join_admitted(&origin, &key, &user, after_seq, subscribe)
            } else {
                Err(ProtoError::new(ErrorCode::Forbidden, "wrong password"))
            };
            if let Err(e) = result {
                shard.reply_err(&origin, &e);
            }
        })
        .detach();
        Ok(())
    }

    fn join_admitted(
        &mut self,
        origin: &Origin,
        key: &Arc<str>,
        user: &str,
        after_seq: Option<u64>,
        subscribe: bool,
    ) -> Result<(), ProtoError> {
        let below_ring =
            after_seq.filter(|after| after.saturating_add(1) < self.rooms[key].ring_first_seq());
        self.add_member(key, user)?;
        match below_ring {
            Some(after_seq) => {
                let req = ReadRequest::After {
                    room: key.to_string(),
                    after_seq,
                    limit: REPLAY_FROM_STORE_MESSAGES_MAX,
                };
                let (origin, user, room) = (origin.clone(), user.to_owned(), key.clone());
                self.read_store(req, || Pending::Join {
                    origin,
                    room,
                    user,
                    after_seq,
                    subscribe,
                })
            }
            None => {
                self.finish_join(origin, key, user, after_seq, subscribe, Vec::new());
                Ok(())
            }
        }
    }

    /// Subscribes the connection and sends it the `ok`, then every message after
    /// `after_seq`: first those read from the store, then the ring's. Run on the home, so no
    /// live message can slip between the replay and the subscription.
    fn finish_join(
        &mut self,
        origin: &Origin,
        key: &Arc<str>,
        user: &str,
        after_seq: Option<u64>,
        subscribe: bool,
        stored: Vec<Msg>,
    ) {
        let r = self.rooms.get_mut(key).expect("room exists");
        let came_online = subscribe && r.subscribe(origin.shard as usize, user);
        let ok = protocol::ok(
            origin.id.as_deref(),
            JoinOk {
                room: key,
                last_seq: r.last_seq(),
                unread: r.unread(user),
            },
        );
        let mut frames = vec![ws::text(&ok)];
        if let Some(after) = after_seq {
            let ring_first = r.ring_first_seq();
            let mut last = after;
            for m in stored
                .iter()
                .filter(|m| m.seq > after && m.seq < ring_first)
            {
                frames.push(ws::text(&protocol::event("msg", m)));
                last = m.seq;
            }
            frames.extend(
                r.replay(last)
                    .messages
                    .iter()
                    .map(|m| ws::text(&protocol::event("msg", m))),
            );
        }
        let msg = ShardMsg::Subscribed {
            conn: origin.conn,
            room: key.clone(),
            user: Arc::from(user),
            subscribe,
            frames,
        };
        self.emit(origin.shard, msg);
        if came_online {
            let event = protocol::event("joined", UserInRoom { room: key, user });
            self.broadcast(key, Bytes::from(event), Instant::now());
        }
    }

    fn home_create(
        &mut self,
        origin: &Origin,
        room: String,
        user: &str,
        title: Option<String>,
        private: bool,
        password_hash: Option<String>,
    ) -> Result<(), ProtoError> {
        if self.rooms.contains_key(room.as_str()) {
            return Err(ProtoError::new(
                ErrorCode::RoomExists,
                format!("room `{room}` exists"),
            ));
        }
        let info = RoomInfo {
            title,
            private,
            creator: user.to_owned(),
            created_ms: now_ms(),
        };
        let key = self.new_room(room, info, password_hash)?;
        self.add_member(&key, user)?;
        self.reply(origin, RoomOk { room: &key });
        Ok(())
    }

    fn home_update_room(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        title: Option<String>,
        private: Option<bool>,
        password_hash: Option<String>,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let r = &self.rooms[&key];
        if r.info().creator != user {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "only the room's creator may change it",
            ));
        }
        let password_hash = password_hash.or_else(|| r.password_hash.clone());
        if private == Some(true) && password_hash.is_none() {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                "a private room needs a `password`",
            ));
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
        let r = self.rooms.get_mut(&key).expect("room exists");
        r.set_info(title, private);
        r.password_hash = password_hash;
        self.reply(origin, RoomOk { room });
        Ok(())
    }

    fn home_read(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        seq: u64,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let r = &self.rooms[&key];
        if !r.is_member(user) {
            return Err(not_member(room));
        }
        let seq = seq.min(r.last_seq());
        if seq > r.read_seq(user) {
            self.log(
                Record::ReadPointer {
                    room: room.to_owned(),
                    user: user.to_owned(),
                    seq,
                },
                None,
            )?;
            self.rooms
                .get_mut(&key)
                .expect("room exists")
                .mark_read(user, seq);
            let event = protocol::event("read", ReadEvent { room, user, seq });
            self.broadcast(&key, Bytes::from(event), Instant::now());
        }
        let seq = self.rooms[&key].read_seq(user);
        self.reply(origin, ReadOk { room, seq });
        Ok(())
    }

    fn home_delete(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        seq: u64,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let r = &self.rooms[&key];
        if seq == 0 || seq > r.last_seq() {
            return Err(ProtoError::new(
                ErrorCode::NotFound,
                format!("no message {seq} in `{room}`"),
            ));
        }
        match r.in_ring(seq) {
            Some(m) => {
                let author = m.from.clone();
                self.finish_delete(origin, &key, user, seq, &author)
            }
            None => {
                let req = ReadRequest::After {
                    room: room.to_owned(),
                    after_seq: seq - 1,
                    limit: 1,
                };
                let (origin, user) = (origin.clone(), user.to_owned());
                self.read_store(req, || Pending::Delete {
                    origin,
                    room: key,
                    user,
                    seq,
                })
            }
        }
    }

    /// Deletes a message once its author is known: the author and the room's creator may.
    fn finish_delete(
        &mut self,
        origin: &Origin,
        key: &Arc<str>,
        user: &str,
        seq: u64,
        author: &str,
    ) -> Result<(), ProtoError> {
        let r = &self.rooms[key];
        if author != user && r.info().creator != user {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "only the author or the room's creator may delete a message",
            ));
        }
        let ts_ms = now_ms();
        self.log(
            Record::Deleted {
                room: key.to_string(),
                seq,
                by: user.to_owned(),
                ts_ms,
            },
            None,
        )?;
        if self.rooms.get_mut(key).expect("room exists").delete(seq) {
            let event = protocol::event(
                "deleted",
                DeletedEvent {
                    room: key,
                    seq,
                    by: user,
                },
            );
            self.broadcast(key, Bytes::from(event), Instant::now());
        }
        self.reply(origin, RoomOk { room: key });
        Ok(())
    }

    fn home_typing(&mut self, origin: &Origin, room: &str, user: &str) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let event = protocol::event("typing", UserInRoom { room, user });
        self.broadcast_except(&key, Bytes::from(event), Instant::now(), Some(user));
        self.reply(origin, RoomOk { room });
        Ok(())
    }

    fn visible(&self, key: &Arc<str>, user: &str) -> Result<(), ProtoError> {
        let r = &self.rooms[key];
        if r.info().private && !r.is_member(user) {
            return Err(ProtoError::new(
                ErrorCode::NotMember,
                format!("room `{key}` is private"),
            ));
        }
        Ok(())
    }

    fn home_presence(&mut self, origin: &Origin, room: &str, user: &str) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        self.visible(&key, user)?;
        let mut users: Vec<&str> = self.rooms[&key].online_users().collect();
        users.sort_unstable();
        let ok = protocol::ok(
            origin.id.as_deref(),
            serde_json::json!({"room": room, "users": users}),
        );
        self.emit(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                frame: ws::text(&ok),
            },
        );
        Ok(())
    }

    fn home_search(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        query: &str,
        limit: u32,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        self.visible(&key, user)?;
        let r = &self.rooms[&key];
        let found: Vec<&Msg> = r
            .search(query, limit as usize)
            .into_iter()
            .filter_map(|seq| r.in_ring(seq))
            .collect();
        let ok = protocol::ok(
            origin.id.as_deref(),
            HistoryOk {
                room,
                messages: &found,
            },
        );
        self.emit(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                frame: ws::text(&ok),
            },
        );
        Ok(())
    }

    /// This shard's part of a `rooms` answer: the rooms it homes that match, sorted by id,
    /// after the cursor, at most `limit`. A scan of the homed rooms.
    pub(crate) fn rooms_part(&self, q: &RoomsQuery) -> Vec<RoomEntry> {
        let needle = q.query.as_deref().map(str::to_lowercase);
        let mut entries: Vec<RoomEntry> = self
            .rooms
            .iter()
            .filter(|(id, _)| q.cursor.as_deref().is_none_or(|c| &***id > c))
            .filter(|(_, r)| {
                let member = r.is_member(&q.user);
                if !member && (q.joined || r.info().private) {
                    return false;
                }
                needle.as_deref().is_none_or(|n| {
                    r.id().to_lowercase().contains(n)
                        || r.info()
                            .title
                            .as_deref()
                            .is_some_and(|t| t.to_lowercase().contains(n))
                })
            })
            .map(|(_, r)| RoomEntry {
                room: r.id().to_owned(),
                title: r.info().title.clone(),
                private: r.info().private,
                members: r.member_count(),
                last_seq: r.last_seq(),
                unread: r.is_member(&q.user).then(|| r.unread(&q.user)),
            })
            .collect();
        entries.sort_by(|a, b| a.room.cmp(&b.room));
        entries.truncate(q.limit as usize + 1);
        entries
    }

    fn home_leave(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        explicit: bool,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        // The connection has stopped receiving the room whatever happens below: count it
        // out first, so the home and the subscriber shard never disagree.
        let went_offline = self
            .rooms
            .get_mut(&key)
            .expect("room exists")
            .unsubscribe(origin.shard as usize, user);
        if went_offline {
            let event = protocol::event("left", UserInRoom { room, user });
            self.broadcast(&key, Bytes::from(event), Instant::now());
        }
        if explicit {
            let record = Record::Member {
                room: room.to_owned(),
                user: user.to_owned(),
                joined: false,
            };
            self.log(record, None)?;
            self.rooms
                .get_mut(&key)
                .expect("room exists")
                .remove_member(user);
            self.reply(origin, RoomOk { room });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn home_send(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        name: Option<&str>,
        body: String,
        client_msg_id: Option<&str>,
        received_at: Instant,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let r = &self.rooms[&key];
        if let Some((seq, ts)) = r.retry_of(user, client_msg_id) {
            let msg_id = Room::msg_id(room, seq);
            self.reply(
                origin,
                SendOk {
                    room,
                    seq,
                    msg_id: &msg_id,
                    ts,
                    duplicate: true,
                },
            );
            return Ok(());
        }
        let (seq, ts) = (r.next_seq(), now_ms());
        let ticket = self.shared.durable_acks.then(|| self.ticket());
        let record = Record::Message {
            room: room.to_owned(),
            seq,
            msg_id: Room::msg_id(room, seq),
            from: user.to_owned(),
            name: name.map(str::to_owned),
            body: body.clone(),
            ts_ms: ts,
            client_msg_id: client_msg_id.map(str::to_owned),
        };
        self.log(record, ticket)?;
        // The sender has read its own message. Best effort: a full log only makes this
        // pointer lag after a restart.
        let _ = self.log(
            Record::ReadPointer {
                room: room.to_owned(),
                user: user.to_owned(),
                seq,
            },
            None,
        );
        let r = self.rooms.get_mut(&key).expect("room exists");
        let reserved = r.reserve(user, client_msg_id, ts);
        debug_assert_eq!(reserved, seq, "the logged seq is the reserved seq");
        self.m.messages_in.inc();
        let send = AcceptedSend {
            origin: origin.clone(),
            room: key,
            seq,
            from: user.to_owned(),
            name: name.map(str::to_owned),
            body,
            ts,
            received_at,
        };
        match ticket {
            Some(t) => {
                self.pending.insert(t.token, Pending::Ack(send));
            }
            None => self.publish_send(send),
        }
        Ok(())
    }

    /// Makes an accepted message visible: into the room, `ok` to the sender, `msg` to every
    /// subscriber. With durable acks this runs when the record is durable, so nobody ever
    /// sees a message (or a seq) that a crash could take back.
    fn publish_send(&mut self, send: AcceptedSend) {
        let AcceptedSend {
            origin,
            room,
            seq,
            from,
            name,
            body,
            ts,
            received_at,
        } = send;
        let r = self.rooms.get_mut(&room).expect("room exists");
        let msg = r.publish(seq, &from, name.as_deref(), body, ts);
        let ok = SendOk {
            room: &room,
            seq,
            msg_id: &msg.msg_id,
            ts,
            duplicate: false,
        };
        let frame = ws::text(&protocol::ok(origin.id.as_deref(), ok));
        let payload = Bytes::from(protocol::event("msg", msg));
        self.emit(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                frame,
            },
        );
        self.broadcast(&room, payload, received_at);
    }

    fn home_history(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let r = &self.rooms[&key];
        if r.info().private && !r.is_member(user) {
            return Err(ProtoError::new(
                ErrorCode::NotMember,
                format!("room `{room}` is private"),
            ));
        }
        let from_ring = r.history(before_seq, limit as usize);
        if from_ring.len() == limit as usize || r.ring_first_seq() <= 1 {
            let ok = protocol::ok(
                origin.id.as_deref(),
                HistoryOk {
                    room,
                    messages: &from_ring,
                },
            );
            self.emit(
                origin.shard,
                ShardMsg::Reply {
                    conn: origin.conn,
                    frame: ws::text(&ok),
                },
            );
            return Ok(());
        }
        let req = ReadRequest::Before {
            room: room.to_owned(),
            before_seq,
            limit: limit as usize,
        };
        let origin = origin.clone();
        self.read_store(req, || Pending::History { origin, room: key })
    }

    /// A completion from the persistence threads.
    pub(crate) fn on_completion(&mut self, completion: Completion) {
        match completion {
            Completion::Durable(tickets) => {
                for ticket in tickets {
                    if let Some(Pending::Ack(send)) = self.pending.remove(&ticket.token) {
                        self.publish_send(send);
                    }
                }
            }
            Completion::Read { ticket, result } => {
                let Some(pending) = self.pending.remove(&ticket.token) else {
                    return;
                };
                let stored: Result<Vec<Msg>, _> =
                    result.map(|msgs| msgs.into_iter().map(to_msg).collect());
                match (pending, stored) {
                    (
                        Pending::Join {
                            origin,
                            room,
                            user,
                            after_seq,
                            subscribe,
                        },
                        Ok(msgs),
                    ) => self.finish_join(&origin, &room, &user, Some(after_seq), subscribe, msgs),
                    (Pending::History { origin, room }, Ok(msgs)) => {
                        let refs: Vec<&Msg> = msgs.iter().collect();
                        let ok = protocol::ok(
                            origin.id.as_deref(),
                            HistoryOk {
                                room: &room,
                                messages: &refs,
                            },
                        );
                        self.emit(
                            origin.shard,
                            ShardMsg::Reply {
                                conn: origin.conn,
                                frame: ws::text(&ok),
                            },
                        );
                    }
                    (
                        Pending::Delete {
                            origin,
                            room,
                            user,
                            seq,
                        },
                        Ok(msgs),
                    ) => {
                        let result = match msgs.iter().find(|m| m.seq == seq) {
                            Some(m) => {
                                let author = m.from.clone();
                                self.finish_delete(&origin, &room, &user, seq, &author)
                            }
                            None => Err(ProtoError::new(
                                ErrorCode::NotFound,
                                format!("no message {seq} in `{room}`"),
                            )),
                        };
                        if let Err(e) = result {
                            self.reply_err(&origin, &e);
                        }
                    }
                    (
                        Pending::Join { origin, .. }
                        | Pending::History { origin, .. }
                        | Pending::Delete { origin, .. },
                        Err(e),
                    ) => {
                        tracing::warn!(error = %e, "store read failed");
                        self.reply_err(
                            &origin,
                            &ProtoError::new(ErrorCode::Unavailable, "storage read failed: retry"),
                        );
                    }
                    (Pending::Ack(_), _) => debug_assert!(false, "a read completed an ack"),
                }
            }
        }
    }
}
