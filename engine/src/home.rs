//! The room side of requests, run on the room's home shard: the only place a room's state
//! changes. A home answers the origin connection with a `Reply` or `Subscribed`, and sends
//! each event once to every shard that holds subscribers of the room (`Deliver`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::protocol::{self, ErrorCode, Msg, ProtoError};
use crate::room::{Published, Room, RoomInfo, RoomLimits};
use crate::shard::{now_ms, HomeReq, Origin, Shard, ShardMsg};
use crate::ws;

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
    messages: Vec<&'a Msg>,
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
                password,
            } => self.home_create(&origin, room, &user, title, private, password.as_deref()),
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
            self.m.protocol_errors.inc();
            let frame = ws::text(&protocol::error(origin.id.as_deref(), &err));
            self.emit(
                origin.shard,
                ShardMsg::Reply {
                    conn: origin.conn,
                    frame,
                },
            );
        }
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
        let shards: Vec<u16> = match self.rooms.get(room) {
            Some(r) => r.subscribed_shards().map(|s| s as u16).collect(),
            None => return,
        };
        for shard in shards {
            let msg = ShardMsg::Deliver {
                room: room.clone(),
                payload: payload.clone(),
                received_at,
            };
            self.emit(shard, msg);
        }
    }

    fn room_key(&self, room: &str) -> Result<Arc<str>, ProtoError> {
        self.rooms
            .get_key_value(room)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| ProtoError::new(ErrorCode::NotFound, format!("no room `{room}`")))
    }

    fn new_room(&mut self, room: String, info: RoomInfo) -> Result<Arc<str>, ProtoError> {
        let max = self.cfg().rooms_per_shard_max as usize;
        if self.rooms.len() >= max {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("this shard homes rooms_per_shard_max ({max}) rooms"),
            ));
        }
        let limits = RoomLimits {
            history_ring_messages_max: self.cfg().history_ring_messages_max as usize,
            idempotency_keys_max: self.cfg().idempotency_keys_max as usize,
        };
        let key: Arc<str> = Arc::from(room.as_str());
        let shards = self.shared.shards as usize;
        self.rooms
            .insert(key.clone(), Room::new(room, info, limits, shards));
        Ok(key)
    }

    fn home_join(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        _password: Option<&str>,
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
                self.new_room(room.to_owned(), info)?
            }
            Err(e) => return Err(e),
        };
        let r = self.rooms.get_mut(&key).expect("room exists");
        if r.info().private && !r.is_member(user) {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("room `{room}` is private"),
            ));
        }
        r.add_member(user);
        let came_online = subscribe && r.subscribe(origin.shard as usize, user);
        let ok = protocol::ok(
            origin.id.as_deref(),
            JoinOk {
                room,
                last_seq: r.last_seq(),
                unread: r.unread(user),
            },
        );
        let mut frames = vec![ws::text(&ok)];
        if let Some(after) = after_seq {
            let replay = r.replay(after);
            frames.extend(
                replay
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
            let event = protocol::event("joined", UserInRoom { room, user });
            self.broadcast(&key, Bytes::from(event), Instant::now());
        }
        Ok(())
    }

    fn home_create(
        &mut self,
        origin: &Origin,
        room: String,
        user: &str,
        title: Option<String>,
        private: bool,
        _password: Option<&str>,
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
        let key = self.new_room(room, info)?;
        self.rooms
            .get_mut(&key)
            .expect("just created")
            .add_member(user);
        self.reply(origin, RoomOk { room: &key });
        Ok(())
    }

    fn home_leave(
        &mut self,
        origin: &Origin,
        room: &str,
        user: &str,
        explicit: bool,
    ) -> Result<(), ProtoError> {
        let key = self.room_key(room)?;
        let r = self.rooms.get_mut(&key).expect("room exists");
        let went_offline = r.unsubscribe(origin.shard as usize, user);
        if explicit {
            r.remove_member(user);
            self.reply(origin, RoomOk { room });
        }
        if went_offline {
            let event = protocol::event("left", UserInRoom { room, user });
            self.broadcast(&key, Bytes::from(event), Instant::now());
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
        let r = self.rooms.get_mut(&key).expect("room exists");
        let (ok, payload) = match r.publish(user, name, body, client_msg_id, now_ms()) {
            Published::Duplicate { seq, msg_id, ts } => (
                protocol::ok(
                    origin.id.as_deref(),
                    SendOk {
                        room,
                        seq,
                        msg_id: &msg_id,
                        ts,
                        duplicate: true,
                    },
                ),
                None,
            ),
            Published::New(msg) => {
                let ok = SendOk {
                    room,
                    seq: msg.seq,
                    msg_id: &msg.msg_id,
                    ts: msg.ts,
                    duplicate: false,
                };
                (
                    protocol::ok(origin.id.as_deref(), ok),
                    Some(Bytes::from(protocol::event("msg", msg))),
                )
            }
        };
        self.emit(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                frame: ws::text(&ok),
            },
        );
        if let Some(payload) = payload {
            self.m.messages_in.inc();
            self.broadcast(&key, payload, received_at);
        }
        Ok(())
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
        let ok = protocol::ok(
            origin.id.as_deref(),
            HistoryOk {
                room,
                messages: r.history(before_seq, limit as usize),
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
}
