//! A shard: one glommio executor pinned to one core, owning its listener, its connections,
//! the rooms it homes and its table of local subscribers. Nothing in here is shared with
//! another shard; shards talk only through [`ShardMsg`]s on the [`Mesh`].
//!
//! Three tasks run on every shard besides the connections: `accept_loop` (its own
//! `SO_REUSEPORT` listener), `inbox_loop` (messages from other shards) and `ticker`
//! (heartbeats, timeouts, gauges, draining). The connection side of a request is here; the
//! room side, run on the room's home shard, is in `home.rs`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::{TcpListener, TcpStream};
use slab::Slab;

use crate::auth::Auth;
use crate::config::Config;
use crate::conn::{ConnDriver, ConnEntry, ConnRef, Phase};
use crate::home::Pending;
use crate::mesh::{Mesh, ShardId};
use crate::metrics::{Metrics, ShardMetrics};
use crate::persist::Completions;
use crate::protocol::{self, ErrorCode, ProtoError, Request, RequestId};
use crate::room::Room;
use crate::ws::{self, close, Inbound};
use sokdo_persistence::RoomSnapshot;

/// Messages one shard's inbox task handles per batch before yielding.
const INBOX_BATCH_MAX: usize = 256;
/// Bad requests one connection may make before it is closed 1008.
const PROTOCOL_ERRORS_PER_CONNECTION_MAX: u32 = 64;

/// What every shard reads and no shard writes.
pub struct Shared {
    pub cfg: Config,
    pub shards: u16,
    pub instance: String,
    pub auth: Auth,
    pub metrics: Metrics,
    pub mesh: Arc<Mesh<ShardMsg>>,
    pub completions: Arc<Completions>,
    pub persist: sokdo_persistence::Handle,
    /// `--accounts`.
    pub accounts: Option<Arc<crate::accounts::Accounts>>,
    /// `--durability sync`: a `send` is answered once its record is durable.
    pub durable_acks: bool,
    /// When each shard last ran, for `/healthz`.
    pub liveness: crate::liveness::Liveness,
}

impl Shared {
    pub fn home_of(&self, room: &str) -> ShardId {
        home_of(room, self.shards)
    }
}

/// The home shard of a room: a hash of its id, the same on every shard.
pub fn home_of(room: &str, shards: u16) -> ShardId {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() % u64::from(shards)) as ShardId
}

/// Where a request came from, so the home can answer it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub shard: ShardId,
    pub conn: ConnRef,
    pub id: RequestId,
}

/// A request executed on the home shard of its room.
#[derive(Debug)]
pub enum HomeReq {
    Join {
        room: String,
        user: String,
        password: Option<String>,
        after_seq: Option<u64>,
        /// False when the connection already receives the room (a repeated `join`).
        subscribe: bool,
    },
    Create {
        room: String,
        user: String,
        title: Option<String>,
        private: bool,
        password_hash: Option<String>,
    },
    UpdateRoom {
        room: String,
        user: String,
        title: Option<String>,
        private: Option<bool>,
        password_hash: Option<String>,
    },
    Read {
        room: String,
        user: String,
        seq: u64,
    },
    Delete {
        room: String,
        user: String,
        seq: u64,
    },
    Typing {
        room: String,
        user: String,
    },
    Presence {
        room: String,
        user: String,
    },
    Search {
        room: String,
        user: String,
        query: String,
        limit: u32,
    },
    /// `explicit: false` is a connection going away: it stops receiving, stays a member.
    Leave {
        room: String,
        user: String,
        explicit: bool,
    },
    Send {
        room: String,
        user: String,
        name: Option<String>,
        body: String,
        client_msg_id: Option<String>,
        received_at: Instant,
    },
    History {
        room: String,
        user: String,
        before_seq: Option<u64>,
        limit: u32,
    },
}

/// Every message that crosses from one shard to another.
#[derive(Debug)]
pub enum ShardMsg {
    /// To a room's home.
    Home(Origin, HomeReq),
    /// From a room's home to a shard with subscribers: the event's JSON, framed once there.
    Deliver {
        room: Arc<str>,
        payload: Bytes,
        received_at: Instant,
        /// Not to this user's connections (`typing` goes to the others).
        except: Option<Arc<str>>,
    },
    /// From a shard answering `rooms` to every shard (itself included).
    RoomsQuery {
        from: ShardId,
        token: u64,
        query: Arc<RoomsQuery>,
    },
    /// The rooms a shard homes that match, back to the asking shard.
    RoomsPart { token: u64, entries: Vec<RoomEntry> },
    /// From a home to one connection: an encoded frame.
    Reply { conn: ConnRef, frame: Bytes },
    /// From a home to one connection after `join`: the reply, then the replay; and the
    /// connection starts receiving the room (unless it already did).
    Subscribed {
        conn: ConnRef,
        room: Arc<str>,
        user: Arc<str>,
        subscribe: bool,
        frames: Vec<Bytes>,
    },
    /// Test only (`--fault-injection`): inject this fault here.
    Fault(crate::http::Fault),
}

struct DrainState {
    started: Instant,
    closes_per_tick: usize,
}

pub struct Shard {
    pub id: ShardId,
    pub shared: Arc<Shared>,
    pub m: ShardMetrics,
    pub conns: Slab<ConnEntry>,
    next_conn_id: u64,
    /// Local subscribers of each room: slab keys.
    subs: HashMap<Arc<str>, Vec<u32>>,
    /// Rooms this shard homes.
    pub(crate) rooms: HashMap<Arc<str>, Room>,
    /// Messages for each other shard that its full queue could not take yet, in order.
    outbox: Vec<VecDeque<ShardMsg>>,
    draining: Option<DrainState>,
    tick: Duration,
    /// Requests of rooms homed here that wait for the persistence thread, by ticket token.
    pub(crate) pending: HashMap<u64, Pending>,
    pub(crate) next_token: u64,
    gathers: HashMap<u64, Gather>,
    login_limiter: LoginLimiter,
    /// Connections counted against `connections_per_shard_max`.
    admitted: usize,
    /// Upgraded connections waiting for a place, in arrival order.
    admission: VecDeque<ConnRef>,
    /// This shard itself, for tasks that come back to it after an await.
    pub(crate) me: std::rc::Weak<RefCell<Shard>>,
}

impl Shard {
    /// A shard that homes the given rooms, as persisted.
    pub fn new(id: ShardId, shared: Arc<Shared>, rooms: Vec<RoomSnapshot>) -> Shard {
        let tick = Duration::from_millis(shared.cfg.tick_ms());
        let mut shard = Shard {
            id,
            m: shared.metrics.for_shard(id),
            conns: Slab::new(),
            next_conn_id: 0,
            subs: HashMap::new(),
            rooms: HashMap::new(),
            outbox: (0..shared.shards).map(|_| VecDeque::new()).collect(),
            draining: None,
            tick,
            pending: HashMap::new(),
            next_token: 0,
            gathers: HashMap::new(),
            login_limiter: LoginLimiter::default(),
            admitted: 0,
            admission: VecDeque::new(),
            me: std::rc::Weak::new(),
            shared,
        };
        let (limits, shards) = (shard.room_limits(), shard.shared.shards as usize);
        for snapshot in rooms {
            debug_assert_eq!(shard.shared.home_of(&snapshot.room), id);
            let key: Arc<str> = Arc::from(snapshot.room.as_str());
            shard
                .rooms
                .insert(key, Room::restore(snapshot, limits, shards));
        }
        shard
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            key: key as u32,
            id: self.conns[key].id,
        }
    }

    fn add_conn(&mut self, now: Instant) -> usize {
        self.next_conn_id += 1;
        self.m.connections.inc();
        self.m.connections_accepted.inc();
        self.conns.insert(ConnEntry::new(self.next_conn_id, now))
    }

    /// Forgets a connection whose task ended; the homes of its rooms hear of it.
    pub fn remove_conn(&mut self, key: usize) {
        let rooms = std::mem::take(&mut self.conns[key].rooms);
        let user = self.conns[key].user.to_string();
        let conn = self.conn_ref(key);
        for (room, idx) in rooms {
            self.unsubscribe_local(&room, idx);
            self.release_subscription(&room, &user, conn);
        }
        let entry = self.conns.remove(key);
        self.m.connections.dec();
        if entry.admitted {
            self.admitted -= 1;
            self.admit_waiting();
        }
    }

    pub fn note_written(&mut self, bytes: usize) {
        self.m.bytes_out.inc_by(bytes as u64);
    }

    // ---- bytes in -------------------------------------------------------------------

    /// Bytes read from connection `key`: the HTTP head until upgraded, frames after.
    pub fn on_bytes(
        &mut self,
        key: usize,
        head: &mut Vec<u8>,
        decoder: &mut ws::Decoder,
        bytes: &mut [u8],
    ) {
        let entry = &mut self.conns[key];
        entry.last_recv = Instant::now();
        match entry.phase {
            Phase::Http => self.on_http(key, head, bytes),
            Phase::Api => {}
            Phase::Queued | Phase::Open | Phase::Closing => {
                let max = self.cfg().frame_bytes_max as usize;
                let result = decoder.feed(bytes, max, &mut |frame| self.on_frame(key, frame));
                if let Err(e) = result {
                    self.close_conn(key, e.close_code(), &e.to_string(), true);
                }
            }
        }
    }

    fn on_http(&mut self, key: usize, head: &mut Vec<u8>, bytes: &[u8]) {
        head.extend_from_slice(bytes);
        let outcome = if head.len() > self.cfg().http_request_bytes_max as usize {
            crate::http::Outcome::plain(431, "request head exceeds http_request_bytes_max\n")
        } else {
            let metrics = || self.shared.metrics.encode();
            let ctx = crate::http::Context {
                auth: &self.shared.auth,
                draining: self.draining.is_some() || self.shared.mesh.drain_requested(),
                at_capacity: self.admitted >= self.cfg().connections_per_shard_max as usize,
                shard_full: self.admitted >= self.cfg().connections_per_shard_max as usize
                    && self.admission.len() >= self.cfg().admission_queue_per_shard_max as usize,
                metrics: &metrics,
                health: &|| self.shared.liveness.check(),
                faults: self.cfg().fault_injection,
                api_key: self.cfg().api_key.as_deref(),
                accounts: self.shared.accounts.is_some(),
                body_bytes_max: self.cfg().body_bytes_max as usize,
            };
            crate::http::route(head, &ctx)
        };
        match outcome {
            crate::http::Outcome::Incomplete => {}
            crate::http::Outcome::Respond { status, response } => {
                *head = Vec::new();
                if status == 503 {
                    self.m.connections_refused.inc();
                }
                self.respond_http(key, response);
            }
            crate::http::Outcome::Api(call) => {
                *head = Vec::new();
                self.on_api(key, call);
            }
            crate::http::Outcome::Upgrade { identity, response } => {
                *head = Vec::new();
                self.upgraded(key, identity, response);
            }
            crate::http::Outcome::Fault(fault) => {
                *head = Vec::new();
                tracing::warn!(?fault, "injecting a fault (--fault-injection)");
                let to = match fault {
                    crate::http::Fault::PanicShard(n) | crate::http::Fault::StallShard(n, _) => n,
                    crate::http::Fault::PanicLog => self.id,
                };
                if to >= self.shared.shards {
                    let none = crate::wire::response::plain(400, "no such shard\n");
                    return self.respond_http(key, none);
                }
                let accepted = crate::wire::response::plain(202, "injecting\n");
                self.respond_http(key, accepted);
                self.emit(to, ShardMsg::Fault(fault));
            }
        }
    }

    /// Injects a fault (test only), after this turn so that the 202 goes out first.
    fn inject(&mut self, fault: crate::http::Fault) {
        let persist = self.shared.persist.clone();
        spawn_task(async move {
            glommio::executor().yield_now().await;
            match fault {
                crate::http::Fault::PanicShard(n) => panic!("injected fault: shard {n} panics"),
                crate::http::Fault::StallShard(_, ms) => {
                    // Blocks the shard's thread on purpose: a shard stuck in a call.
                    std::thread::sleep(Duration::from_millis(ms))
                }
                crate::http::Fault::PanicLog => persist.inject_panic(),
            }
        })
        .detach();
    }

    /// Sends a complete HTTP response and closes once it is written.
    fn respond_http(&mut self, key: usize, response: Bytes) {
        let close_timeout = Duration::from_millis(self.cfg().close_timeout_ms);
        let entry = &mut self.conns[key];
        entry.phase = Phase::Closing;
        entry.end_when_flushed = true;
        entry.close_deadline = Some(Instant::now() + close_timeout);
        entry.out.push(response);
        entry.wake();
    }

    /// Runs an HTTP API call: room calls go to the room's home like WebSocket requests
    /// (the reply comes back through `api_reply`); account calls run on the blocking pool.
    fn on_api(&mut self, key: usize, call: crate::api::ApiCall) {
        use crate::api::ApiCall;
        let deadline = Instant::now() + Duration::from_millis(self.cfg().handshake_timeout_ms);
        let entry = &mut self.conns[key];
        entry.phase = Phase::Api;
        entry.api_ok_status = call.ok_status();
        entry.close_deadline = Some(deadline);
        let origin = Origin {
            shard: self.id,
            conn: self.conn_ref(key),
            id: None,
        };
        let req = match call {
            ApiCall::Publish {
                room,
                from,
                body,
                client_msg_id,
            } => HomeReq::Send {
                room,
                user: from,
                name: None,
                body,
                client_msg_id,
                received_at: Instant::now(),
            },
            ApiCall::History {
                room,
                identity,
                before_seq,
                limit,
            } => HomeReq::History {
                room,
                user: identity.user,
                before_seq,
                limit,
            },
            account_call => return self.on_account_call(key, account_call),
        };
        if let Err(e) = self.forward(origin, req) {
            let response = crate::api::error_response(&e.into());
            self.respond_http(key, response);
        }
    }

    /// A home's reply (a WebSocket frame of JSON) to an API call, as an HTTP response.
    fn api_reply(&mut self, key: usize, frame: &[u8]) {
        let json = ws::payload_of(frame);
        let status = match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(v) if v["op"] == "ok" => self.conns[key].api_ok_status,
            Ok(v) => {
                crate::api::status_of(protocol::ErrorCode::named(v["code"].as_str().unwrap_or("")))
            }
            Err(_) => 500,
        };
        self.respond_http(key, crate::api::json_response(status, json));
    }

    fn on_account_call(&mut self, key: usize, call: crate::api::ApiCall) {
        use crate::api::ApiCall;
        let Some(accounts) = self.shared.accounts.clone() else {
            return;
        };
        let now = Instant::now();
        let login_user = match &call {
            ApiCall::Login { user, .. } | ApiCall::Password { user, .. } => Some(user.clone()),
            _ => None,
        };
        if let Some(user) = &login_user {
            if self.login_limiter.is_limited(user, now) {
                let err = crate::wire::api::ApiError::new(
                    protocol::ErrorCode::RateLimited,
                    "too many failed attempts: wait a minute",
                );
                return self.respond_http(key, crate::api::error_response(&err));
            }
        }
        let (me, conn, ok_status) = (self.me.clone(), self.conn_ref(key), call.ok_status());
        spawn_task(async move {
            let result = crate::password::off_shard(move || match call {
                ApiCall::Register { user, password, name } => {
                    accounts.register(&user, &password, name.as_deref()).map(|()| serde_json::json!({"op": "ok", "user": user}))
                }
                ApiCall::Login { user, password } => accounts
                    .login(&user, &password)
                    .map(|l| serde_json::json!({"op": "ok", "token": l.token, "user": l.user, "expires_at": l.expires_at})),
                ApiCall::Password { user, old_password, new_password } => {
                    accounts.change_password(&user, &old_password, &new_password).map(|()| serde_json::json!({"op": "ok"}))
                }
                _ => unreachable!("only account calls come here"),
            })
            .await.map_err(crate::wire::api::ApiError::from);
            let Some(shard) = me.upgrade() else { return };
            let mut shard = shard.borrow_mut();
            let Some(key) = shard.live(conn) else { return };
            if let (Some(user), Err(e)) = (&login_user, &result) {
                if e.status == 401 {
                    shard.login_limiter.failed(user, Instant::now());
                }
            }
            let response = match result {
                Ok(body) => crate::api::json_response(ok_status, body.to_string().as_bytes()),
                Err(e) => crate::api::error_response(&e),
            };
            shard.respond_http(key, response);
        })
        .detach();
    }

    /// A connection upgraded and authenticated: admitted at once if a place is free and
    /// nobody waits, queued otherwise (the bound on the queue was checked before upgrading).
    fn upgraded(&mut self, key: usize, identity: crate::auth::Identity, response: Bytes) {
        let conn = self.conn_ref(key);
        let entry = &mut self.conns[key];
        entry.user = Rc::from(identity.user.as_str());
        entry.name = identity.name.as_deref().map(Rc::from);
        entry.out.push(response);
        if self.admitted < self.cfg().connections_per_shard_max as usize
            && self.admission.is_empty()
        {
            return self.admit(key);
        }
        self.conns[key].phase = Phase::Queued;
        self.admission.push_back(conn);
        self.tell_position(key, self.admission.len() as u32);
    }

    fn tell_position(&mut self, key: usize, position: u32) {
        let entry = &mut self.conns[key];
        entry.queue_position = position;
        let event = protocol::event("queued", serde_json::json!({"position": position}));
        entry.out.push(ws::text(&event));
        entry.wake();
    }

    /// Gives a connection its place and its `hello`.
    fn admit(&mut self, key: usize) {
        self.admitted += 1;
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let entry = &mut self.conns[key];
        entry.phase = Phase::Open;
        entry.admitted = true;
        let session = format!("{}.{}.{}", shared.instance, self.id, entry.id);
        let hello = protocol::event(
            "hello",
            protocol::Hello {
                user: &entry.user,
                session: &session,
                instance: &shared.instance,
                shard: self.id,
                heartbeat_ms: cfg.heartbeat_ms,
                limits: protocol::Limits {
                    body_bytes_max: cfg.body_bytes_max,
                    frame_bytes_max: cfg.frame_bytes_max,
                    outbound_queue_bytes_max: cfg.outbound_queue_bytes_max,
                    history_limit_max: protocol::HISTORY_LIMIT_MAX,
                    rooms_per_connection_max: cfg.rooms_per_connection_max,
                },
            },
        );
        entry.out.push(ws::text(&hello));
        entry.wake();
    }

    /// Admits waiting connections while places are free; tells the others their position.
    fn admit_waiting(&mut self) {
        let cap = self.cfg().connections_per_shard_max as usize;
        while self.admitted < cap {
            let Some(conn) = self.admission.pop_front() else {
                break;
            };
            if let Some(key) = self
                .live(conn)
                .filter(|k| self.conns[*k].phase == Phase::Queued)
            {
                self.admit(key);
            }
        }
        let waiting: Vec<ConnRef> = std::mem::take(&mut self.admission)
            .into_iter()
            .filter(|c| {
                self.live(*c)
                    .is_some_and(|k| self.conns[k].phase == Phase::Queued)
            })
            .collect();
        for (i, conn) in waiting.iter().enumerate() {
            let key = conn.key as usize;
            if self.conns[key].queue_position != i as u32 + 1 {
                self.tell_position(key, i as u32 + 1);
            }
        }
        self.admission = waiting.into();
    }

    /// One frame from an open connection. Returns false once the connection is closing.
    fn on_frame(&mut self, key: usize, frame: Inbound<'_>) -> bool {
        let phase = self.conns[key].phase;
        match frame {
            Inbound::Text(_) if phase == Phase::Queued => {
                let position = self.conns[key].queue_position;
                let err = ProtoError::new(
                    ErrorCode::Unavailable,
                    format!("queued at position {position}: wait for `hello`"),
                );
                self.reply_error(key, None, &err);
                true
            }
            Inbound::Text(_) | Inbound::Ping(_)
                if !matches!(phase, Phase::Open | Phase::Queued) =>
            {
                true
            }
            Inbound::Text(text) => {
                if std::str::from_utf8(text).is_err() {
                    self.close_conn(key, close::INVALID_PAYLOAD, "text frame is not UTF-8", true);
                    return false;
                }
                self.on_text(key, text);
                self.conns[key].phase == Phase::Open
            }
            Inbound::Binary => {
                self.close_conn(
                    key,
                    close::UNSUPPORTED,
                    "binary frames are not supported",
                    true,
                );
                false
            }
            Inbound::Ping(payload) => {
                self.push_frame(key, ws::pong(payload));
                true
            }
            Inbound::Pong => true,
            Inbound::Close(_) => {
                if matches!(phase, Phase::Open | Phase::Queued) {
                    self.close_conn(key, close::NORMAL, "", false);
                }
                self.conns[key].end_when_flushed = true;
                false
            }
        }
    }

    fn on_text(&mut self, key: usize, text: &[u8]) {
        let limits = protocol::ParseLimits {
            body_bytes_max: self.cfg().body_bytes_max as usize,
            room_id_bytes_max: self.cfg().room_id_bytes_max as usize,
        };
        match protocol::parse(text, limits) {
            Ok((id, req)) => {
                if let Err(err) = self.on_request(key, id.as_deref(), req) {
                    self.reply_error(key, id.as_deref(), &err);
                }
            }
            Err((id, err)) => self.reply_error(key, id.as_deref(), &err),
        }
    }

    // ---- requests, connection side ----------------------------------------------------

    fn on_request(
        &mut self,
        key: usize,
        id: Option<&serde_json::value::RawValue>,
        req: Request,
    ) -> Result<(), ProtoError> {
        let entry = &self.conns[key];
        let user = entry.user.to_string();
        let joined = req.room().and_then(|room| entry.room_index(room));
        let origin = Origin {
            shard: self.id,
            conn: self.conn_ref(key),
            id: id.map(ToOwned::to_owned),
        };
        let home_req = match req {
            Request::Ping => {
                let ok = protocol::ok(id, serde_json::json!({"pong": true, "ts": now_ms()}));
                self.push_frame(key, ws::text(&ok));
                return Ok(());
            }
            Request::Rooms {
                query,
                joined,
                limit,
                cursor,
            } => {
                self.gather_rooms(
                    origin,
                    RoomsQuery {
                        user,
                        query,
                        joined,
                        limit,
                        cursor,
                    },
                );
                return Ok(());
            }
            Request::Join {
                room,
                password,
                after_seq,
            } => {
                let max = self.cfg().rooms_per_connection_max as usize;
                if joined.is_none() && entry.rooms.len() >= max {
                    return Err(ProtoError::new(
                        ErrorCode::Forbidden,
                        format!("rooms_per_connection_max ({max}) reached: leave a room first"),
                    ));
                }
                HomeReq::Join {
                    room,
                    user,
                    password,
                    after_seq,
                    subscribe: joined.is_none(),
                }
            }
            Request::Create {
                room,
                title,
                private,
                password,
            } => {
                if private && password.is_none() {
                    return Err(ProtoError::new(
                        ErrorCode::BadRequest,
                        "a private room needs a `password`",
                    ));
                }
                let req = HomeReq::Create {
                    room,
                    user,
                    title,
                    private,
                    password_hash: None,
                };
                return self.forward_hashing(origin, req, password);
            }
            Request::UpdateRoom {
                room,
                title,
                private,
                password,
            } => {
                let req = HomeReq::UpdateRoom {
                    room,
                    user,
                    title,
                    private,
                    password_hash: None,
                };
                return self.forward_hashing(origin, req, password);
            }
            Request::Leave { room } => {
                let idx = joined.ok_or_else(|| not_member(&room))?;
                // Refuse before changing anything, so the home and this shard stay in step.
                self.check_home_ready(&room)?;
                let (arc, sub_idx) = self.conns[key].rooms.swap_remove(idx);
                self.unsubscribe_local(&arc, sub_idx);
                HomeReq::Leave {
                    room,
                    user,
                    explicit: true,
                }
            }
            Request::Send {
                room,
                body,
                client_msg_id,
            } => {
                if joined.is_none() {
                    return Err(not_member(&room));
                }
                let name = entry.name.as_deref().map(str::to_owned);
                HomeReq::Send {
                    room,
                    user,
                    name,
                    body,
                    client_msg_id,
                    received_at: Instant::now(),
                }
            }
            Request::Typing { room } => {
                if joined.is_none() {
                    return Err(not_member(&room));
                }
                let interval = Duration::from_millis(self.cfg().typing_interval_ms);
                let entry = &mut self.conns[key];
                if entry.last_typing.is_some_and(|t| t.elapsed() < interval) {
                    return Err(ProtoError::new(
                        ErrorCode::RateLimited,
                        format!("at most one `typing` per {} ms", interval.as_millis()),
                    ));
                }
                entry.last_typing = Some(Instant::now());
                HomeReq::Typing { room, user }
            }
            Request::History {
                room,
                before_seq,
                limit,
            } => HomeReq::History {
                room,
                user,
                before_seq,
                limit,
            },
            Request::Read { room, seq } => HomeReq::Read { room, user, seq },
            Request::Delete { room, seq } => HomeReq::Delete { room, user, seq },
            Request::Presence { room } => HomeReq::Presence { room, user },
            Request::Search { room, query, limit } => HomeReq::Search {
                room,
                user,
                query,
                limit,
            },
        };
        self.forward(origin, home_req)
    }

    /// Client requests are not forwarded to a shard whose queue from this one is full.
    fn check_home_ready(&self, room: &str) -> Result<(), ProtoError> {
        let home = self.shared.home_of(room);
        if home != self.id && !self.outbox[home as usize].is_empty() {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "the room's shard is busy: retry shortly",
            ));
        }
        Ok(())
    }

    /// Sends a request to its room's home, unless that shard is backed up.
    fn forward(&mut self, origin: Origin, req: HomeReq) -> Result<(), ProtoError> {
        let room = req.room().to_owned();
        let home = self.shared.home_of(&room);
        if home != self.id && !self.outbox[home as usize].is_empty() {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "the room's shard is busy: retry shortly",
            ));
        }
        self.send_home(&room, origin, req);
        Ok(())
    }

    /// Forwards a request that sets a password: the argon2 hash is computed on the blocking
    /// pool first, so the shard never stalls on it.
    fn forward_hashing(
        &mut self,
        origin: Origin,
        mut req: HomeReq,
        password: Option<String>,
    ) -> Result<(), ProtoError> {
        let Some(password) = password else {
            return self.forward(origin, req);
        };
        crate::password::check_length(&password)?;
        let me = self.me.clone();
        spawn_task(async move {
            let hashed = crate::password::off_shard(move || crate::password::hash(&password)).await;
            let Some(shard) = me.upgrade() else { return };
            let mut shard = shard.borrow_mut();
            let Some(key) = shard.live(origin.conn) else {
                return;
            };
            let id = origin.id.clone();
            let result = hashed.and_then(|hash| {
                if let HomeReq::Create { password_hash, .. }
                | HomeReq::UpdateRoom { password_hash, .. } = &mut req
                {
                    *password_hash = Some(hash);
                }
                shard.forward(origin, req)
            });
            if let Err(e) = result {
                shard.reply_error(key, id.as_deref(), &e);
            }
        })
        .detach();
        Ok(())
    }

    // ---- rooms: a query every shard answers for the rooms it homes ---------------------

    fn gather_rooms(&mut self, origin: Origin, query: RoomsQuery) {
        self.next_token += 1;
        let token = self.next_token;
        self.gathers.insert(
            token,
            Gather {
                origin,
                parts_left: self.shared.shards,
                entries: Vec::new(),
                limit: query.limit as usize,
            },
        );
        let query = Arc::new(query);
        for shard in 0..self.shared.shards {
            self.emit(
                shard,
                ShardMsg::RoomsQuery {
                    from: self.id,
                    token,
                    query: query.clone(),
                },
            );
        }
    }

    fn on_rooms_part(&mut self, token: u64, entries: Vec<RoomEntry>) {
        let Some(gather) = self.gathers.get_mut(&token) else {
            return;
        };
        gather.entries.extend(entries);
        gather.parts_left -= 1;
        if gather.parts_left > 0 {
            return;
        }
        let mut gather = self.gathers.remove(&token).expect("present");
        gather.entries.sort_by(|a, b| a.room.cmp(&b.room));
        let more = gather.entries.len() > gather.limit;
        gather.entries.truncate(gather.limit);
        let cursor = if more {
            gather.entries.last().map(|e| e.room.clone())
        } else {
            None
        };
        let ok = protocol::ok(
            gather.origin.id.as_deref(),
            serde_json::json!({"rooms": gather.entries, "cursor": cursor}),
        );
        if let Some(key) = self.live(gather.origin.conn) {
            self.push_frame(key, ws::text(&ok));
        }
    }

    /// Tells a room's home that a connection no longer receives the room (it went away, or
    /// it could not take a subscription the home had counted). It stays a member.
    fn release_subscription(&mut self, room: &str, user: &str, conn: ConnRef) {
        let req = HomeReq::Leave {
            room: room.to_owned(),
            user: user.to_owned(),
            explicit: false,
        };
        self.send_home(
            room,
            Origin {
                shard: self.id,
                conn,
                id: None,
            },
            req,
        );
    }

    fn send_home(&mut self, room: &str, origin: Origin, req: HomeReq) {
        let home = self.shared.home_of(room);
        self.emit(home, ShardMsg::Home(origin, req));
    }

    fn reply_error(
        &mut self,
        key: usize,
        id: Option<&serde_json::value::RawValue>,
        err: &ProtoError,
    ) {
        self.m.protocol_errors.inc();
        self.push_frame(key, ws::text(&protocol::error(id, err)));
        // Only malformed requests count as abuse; refusals (`not_member`, `rate_limited`…)
        // are normal traffic.
        if !matches!(err.code, ErrorCode::BadRequest | ErrorCode::TooLarge) {
            return;
        }
        let entry = &mut self.conns[key];
        entry.errors += 1;
        if entry.errors > PROTOCOL_ERRORS_PER_CONNECTION_MAX {
            self.close_conn(key, close::POLICY, "too many bad requests", false);
        }
    }

    // ---- messages between shards -------------------------------------------------------

    /// Sends a message to shard `to`; to this shard, applies it at once.
    pub(crate) fn emit(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            return self.apply(msg);
        }
        self.m.cross_shard_messages.inc();
        let backlog = &mut self.outbox[to as usize];
        if !backlog.is_empty() {
            backlog.push_back(msg);
            return;
        }
        if let Err(msg) = self.shared.mesh.try_send(self.id, to, msg) {
            backlog.push_back(msg);
            self.shared.mesh.mark_stalled(self.id, to);
        }
    }

    fn flush_outbox(&mut self) {
        for to in 0..self.outbox.len() {
            while let Some(msg) = self.outbox[to].pop_front() {
                if let Err(msg) = self.shared.mesh.try_send(self.id, to as ShardId, msg) {
                    self.outbox[to].push_front(msg);
                    self.shared.mesh.mark_stalled(self.id, to as ShardId);
                    break;
                }
            }
        }
    }

    fn apply(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Home(origin, req) => self.handle_home(origin, req),
            ShardMsg::Deliver {
                room,
                payload,
                received_at,
                except,
            } => self.deliver(&room, &payload, received_at, except.as_deref()),
            ShardMsg::RoomsQuery { from, token, query } => {
                let entries = self.rooms_part(&query);
                self.emit(from, ShardMsg::RoomsPart { token, entries });
            }
            ShardMsg::RoomsPart { token, entries } => self.on_rooms_part(token, entries),
            ShardMsg::Reply { conn, frame } => match self.live(conn) {
                Some(key) if self.conns[key].phase == Phase::Api => self.api_reply(key, &frame),
                Some(key) => self.push_frame(key, frame),
                None => {}
            },
            ShardMsg::Subscribed {
                conn,
                room,
                user,
                subscribe,
                frames,
            } => self.on_subscribed(conn, room, user, subscribe, frames),
            ShardMsg::Fault(fault) => self.inject(fault),
        }
    }

    fn live(&self, conn: ConnRef) -> Option<usize> {
        let key = conn.key as usize;
        self.conns.get(key).filter(|e| e.id == conn.id).map(|_| key)
    }

    fn on_subscribed(
        &mut self,
        conn: ConnRef,
        room: Arc<str>,
        user: Arc<str>,
        subscribe: bool,
        frames: Vec<Bytes>,
    ) {
        let key = self
            .live(conn)
            .filter(|k| self.conns[*k].phase == Phase::Open);
        let already = key.is_some_and(|k| self.conns[k].room_index(&room).is_some());
        if subscribe && (key.is_none() || already) {
            // The home counted a subscription this connection cannot take: give it back.
            self.release_subscription(&room, &user, conn);
        }
        let Some(key) = key else { return };
        let rooms_max = self.cfg().rooms_per_connection_max as usize;
        if subscribe && !already && self.conns[key].rooms.len() >= rooms_max {
            // Joins sent back to back all passed the check at the connection; this one is over.
            self.release_subscription(&room, &user, conn);
            let err = ProtoError::new(
                ErrorCode::Forbidden,
                format!("rooms_per_connection_max ({rooms_max}) reached: leave a room first"),
            );
            let id = json_id_of(
                frames
                    .first()
                    .map(|f| ws::payload_of(f))
                    .unwrap_or_default(),
            );
            return self.reply_error(key, id.as_deref(), &err);
        }
        if subscribe && !already {
            let list = self.subs.entry(room.clone()).or_default();
            list.push(key as u32);
            let idx = (list.len() - 1) as u32;
            self.conns[key].rooms.push((room, idx));
        }
        // A replay (bounded by the ring and the store read) may exceed the queue bound when it
        // arrives at an idle connection, but replays never pile up: one arriving while the
        // connection has not taken the previous one closes it as a slow consumer.
        let max = self.cfg().outbound_queue_bytes_max as usize;
        let replay_bytes: usize = frames.iter().map(Bytes::len).sum();
        let entry = &mut self.conns[key];
        if !entry.out.is_empty() && entry.out.bytes() + replay_bytes > max {
            self.m.slow_consumer_closes.inc();
            return self.close_conn(key, close::TRY_AGAIN_LATER, "slow consumer", true);
        }
        for frame in frames {
            entry.out.push(frame);
        }
        entry.wake();
    }

    fn unsubscribe_local(&mut self, room: &Arc<str>, idx: u32) {
        let Some(list) = self.subs.get_mut(room) else {
            debug_assert!(false, "unsubscribe from a room with no local list");
            return;
        };
        let idx = idx as usize;
        list.swap_remove(idx);
        if let Some(&moved) = list.get(idx) {
            let rooms = &mut self.conns[moved as usize].rooms;
            if let Some(slot) = rooms.iter_mut().find(|(r, _)| r == room) {
                slot.1 = idx as u32;
            }
        }
        if list.is_empty() {
            self.subs.remove(room);
        }
    }

    /// One message for every local subscriber of `room`: framed once, queued to each.
    fn deliver(&mut self, room: &str, payload: &[u8], received_at: Instant, except: Option<&str>) {
        let Shard {
            subs,
            conns,
            m,
            shared,
            ..
        } = self;
        let Some(keys) = subs.get(room) else { return };
        let frame = ws::text(payload);
        let max = shared.cfg.outbound_queue_bytes_max as usize;
        let mut slow = Vec::new();
        let mut delivered = 0;
        for &key in keys {
            let entry = &mut conns[key as usize];
            if entry.phase != Phase::Open || except.is_some_and(|u| *entry.user == *u) {
                continue;
            }
            if entry.out.bytes() + frame.len() > max {
                slow.push(key as usize);
                continue;
            }
            let was_idle = entry.out.is_empty();
            entry.out.push(frame.clone());
            if was_idle {
                entry.wake();
            }
            delivered += 1;
        }
        m.deliveries.inc_by(delivered);
        m.fanout_latency.observe(received_at.elapsed());
        for key in slow {
            self.m.slow_consumer_closes.inc();
            self.close_conn(key, close::TRY_AGAIN_LATER, "slow consumer", true);
        }
    }

    /// Queues a frame to one connection, within its bound.
    pub(crate) fn push_frame(&mut self, key: usize, frame: Bytes) {
        let max = self.cfg().outbound_queue_bytes_max as usize;
        let entry = &mut self.conns[key];
        if entry.phase == Phase::Closing {
            return;
        }
        // One frame always fits an empty queue: a reply larger than the bound (a `history`
        // page of long messages) is not a slow consumer.
        if !entry.out.is_empty() && entry.out.bytes() + frame.len() > max {
            self.m.slow_consumer_closes.inc();
            return self.close_conn(key, close::TRY_AGAIN_LATER, "slow consumer", true);
        }
        entry.out.push(frame);
        entry.wake();
    }

    /// Starts the closing handshake: queues a close frame (after the pending frames, or
    /// instead of them) and gives the client `close_timeout_ms` to take it.
    pub(crate) fn close_conn(&mut self, key: usize, code: u16, reason: &str, drop_pending: bool) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg().close_timeout_ms);
        let entry = &mut self.conns[key];
        if entry.phase == Phase::Closing {
            return;
        }
        entry.phase = Phase::Closing;
        if drop_pending {
            entry.out.drop_unsent();
        }
        entry.out.push(ws::close_frame(code, reason));
        entry.close_deadline = Some(deadline);
        entry.wake();
    }

    // ---- time ------------------------------------------------------------------------

    /// Heartbeats, timeouts, gauges and draining. Returns true once the shard may stop.
    fn on_tick(&mut self, now: Instant) -> bool {
        let cfg = &self.shared.cfg;
        let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let handshake = Duration::from_millis(cfg.handshake_timeout_ms);
        let mut idle_keys = Vec::new();
        let mut queued = 0;
        for (key, entry) in self.conns.iter_mut() {
            queued += entry.out.bytes();
            match entry.phase {
                Phase::Http if now - entry.opened_at > handshake => entry.kill = true,
                Phase::Closing | Phase::Api if entry.close_deadline.is_some_and(|d| now > d) => {
                    entry.kill = true
                }
                Phase::Open | Phase::Queued if now - entry.last_recv > idle => idle_keys.push(key),
                Phase::Open | Phase::Queued if now - entry.last_ping >= heartbeat => {
                    entry.last_ping = now;
                    entry.out.push(ws::ping());
                }
                _ => continue,
            }
            entry.wake();
        }
        for key in idle_keys {
            self.close_conn(key, close::GOING_AWAY, "idle timeout", false);
        }
        self.m.outbound_queue_bytes.set(queued as i64);
        self.admit_waiting();
        self.m
            .inbox_depth
            .set((self.shared.mesh.depth(self.id) + self.shared.completions.depth(self.id)) as i64);
        self.m.rooms_homed.set(self.rooms.len() as i64);
        if self.draining.is_none() && self.shared.mesh.drain_requested() {
            self.begin_drain(now);
        }
        self.drain_step(now)
    }

    fn begin_drain(&mut self, now: Instant) {
        let open = self.conns.len();
        let spread_ms = self.cfg().drain_spread_ms;
        let ticks = (spread_ms / self.tick.as_millis().max(1) as u64).max(1) as usize;
        let closes_per_tick = if spread_ms == 0 {
            usize::MAX
        } else {
            open.div_ceil(ticks).max(1)
        };
        tracing::info!(shard = self.id, open, closes_per_tick, "draining");
        self.draining = Some(DrainState {
            started: now,
            closes_per_tick,
        });
    }

    fn drain_step(&mut self, now: Instant) -> bool {
        let Some(drain) = &self.draining else {
            return false;
        };
        let elapsed = now - drain.started;
        // Stay up (answering /readyz 503) for the whole spread, so the load balancer sees
        // it, even when this shard has no connections left.
        let spread_over = elapsed >= Duration::from_millis(self.cfg().drain_spread_ms);
        if (self.conns.is_empty() && spread_over && crate::password::in_flight() == 0)
            || elapsed > Duration::from_millis(self.cfg().drain_timeout_ms)
        {
            return true;
        }
        let reconnect_max = self.cfg().reconnect_after_ms;
        let batch: Vec<(usize, u64)> = self
            .conns
            .iter()
            .filter(|(_, e)| matches!(e.phase, Phase::Open | Phase::Queued))
            .take(drain.closes_per_tick)
            .map(|(k, e)| (k, e.id))
            .collect();
        for (key, id) in batch {
            // Spread reconnects: each client waits a different share of the maximum.
            let reconnect_after_ms = id.wrapping_mul(2_654_435_761) % (reconnect_max + 1);
            let event = protocol::event(
                "closing",
                serde_json::json!({"reason": "shutdown", "reconnect_after_ms": reconnect_after_ms}),
            );
            self.push_frame(key, ws::text(&event));
            self.close_conn(key, close::GOING_AWAY, "server draining", false);
        }
        false
    }
}

impl HomeReq {
    /// The room a request addresses: its home shard executes it.
    pub fn room(&self) -> &str {
        match self {
            HomeReq::Join { room, .. }
            | HomeReq::Create { room, .. }
            | HomeReq::Leave { room, .. }
            | HomeReq::Send { room, .. }
            | HomeReq::History { room, .. }
            | HomeReq::UpdateRoom { room, .. }
            | HomeReq::Read { room, .. }
            | HomeReq::Delete { room, .. }
            | HomeReq::Typing { room, .. }
            | HomeReq::Presence { room, .. }
            | HomeReq::Search { room, .. } => room,
        }
    }
}

/// Failed logins per user on this shard, in a sliding minute.
#[derive(Default)]
struct LoginLimiter {
    failures: HashMap<String, (u32, Instant)>,
}

impl LoginLimiter {
    const FAILURES_PER_MINUTE_MAX: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(60);
    /// Users tracked at most; past it the oldest half is forgotten.
    const USERS_MAX: usize = 100_000;

    fn is_limited(&self, user: &str, now: Instant) -> bool {
        self.failures.get(user).is_some_and(|(n, since)| {
            *n >= Self::FAILURES_PER_MINUTE_MAX && now - *since < Self::WINDOW
        })
    }

    fn failed(&mut self, user: &str, now: Instant) {
        if self.failures.len() >= Self::USERS_MAX {
            self.failures
                .retain(|_, (_, since)| now - *since < Self::WINDOW);
        }
        let entry = self.failures.entry(user.to_owned()).or_insert((0, now));
        if now - entry.1 >= Self::WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// A `rooms` request, asked of every shard.
#[derive(Debug)]
pub struct RoomsQuery {
    pub user: String,
    pub query: Option<String>,
    pub joined: bool,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// One room in a `rooms` reply.
#[derive(Debug, serde::Serialize)]
pub struct RoomEntry {
    pub room: String,
    pub title: Option<String>,
    pub private: bool,
    pub members: usize,
    pub last_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// A `rooms` request waiting for every shard's part.
struct Gather {
    origin: Origin,
    parts_left: u16,
    entries: Vec<RoomEntry>,
    limit: usize,
}

pub(crate) fn not_member(room: &str) -> ProtoError {
    ProtoError::new(ErrorCode::NotMember, format!("join room `{room}` first"))
}

/// The `id` of a reply frame's JSON, to answer the same request with an error instead.
fn json_id_of(json: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    #[derive(serde::Deserialize)]
    struct WithId {
        id: Option<Box<serde_json::value::RawValue>>,
    }
    serde_json::from_slice::<WithId>(json).ok()?.id
}

pub use crate::clock::now_ms;

// ---- tasks ---------------------------------------------------------------------------

/// Runs shard `id` on the current glommio executor until it has drained.
pub async fn run(
    id: ShardId,
    shared: Arc<Shared>,
    listener: TcpListener,
    rooms: Vec<RoomSnapshot>,
) {
    TASKS.set(Some(glommio::executor().current_task_queue()));
    let shard = Rc::new(RefCell::new(Shard::new(id, shared, rooms)));
    shard.borrow_mut().me = Rc::downgrade(&shard);
    // When the ticker ends the drain, the accept loop (and the listener, which leaves the
    // SO_REUSEPORT group) and the inbox's handle are dropped with it.
    // The inbox is a task of its own (its waker belongs to the doorbell alone), in a task
    // queue of its own. Not `Latency::Matters`: with a latency-sensitive queue, glommio 0.9
    // on this kernel sometimes put a shard's executor to sleep with runnable tasks and let
    // it oversleep its own timers (a connection's requests unread for 20 s; see
    // docs/ARCHITECTURE.md, "The inbox task queue"). Dropping the handle cancels it.
    let inbox_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(1000),
        glommio::Latency::NotImportant,
        "sokdo-inbox",
    );
    let _inbox = glommio::spawn_local_into(inbox_loop(shard.clone()), inbox_queue)
        .expect("the task queue was just created");
    futures_lite::future::or(accept_loop(shard.clone(), listener), ticker(shard)).await;
}

thread_local! {
    /// The shard's default task queue, where connection tasks and their helpers run.
    static TASKS: std::cell::Cell<Option<glommio::TaskQueueHandle>> = const { std::cell::Cell::new(None) };
}

/// Spawns a helper task of the shard (a continuation after the blocking pool, a fault) into
/// the default task queue: `glommio::spawn_local` would put it in whichever queue is running,
/// and tasks spawned by the inbox must not run as latency-sensitive.
pub(crate) fn spawn_task<T: 'static>(
    future: impl Future<Output = T> + 'static,
) -> glommio::Task<T> {
    let queue = TASKS.get().expect("spawn_task runs on a shard");
    glommio::spawn_local_into(future, queue).expect("the shard's default queue exists")
}

async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: TcpListener) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => start_conn(&shard, stream),
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning, and say
                // so at most once a second.
                shard.borrow().m.connections_refused.inc();
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(shard = shard.borrow().id, error = %e, "accept failed");
                    last_warning = Some(Instant::now());
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn start_conn(shard: &Rc<RefCell<Shard>>, stream: TcpStream) {
    // Small messages must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let key = shard.borrow_mut().add_conn(Instant::now());
    glommio::spawn_local(ConnDriver::new(shard.clone(), stream, key)).detach();
}

/// Applies what other shards and the persistence threads sent, a bounded batch at a time,
/// as long as work keeps coming, and sleeps on the shard's doorbell once a drain finds
/// nothing (`Doorbell::serve`). Runs as a task of its own: its waker must go to the doorbell
/// only (see `mesh::Doorbell`).
async fn inbox_loop(shard: Rc<RefCell<Shard>>) {
    let (id, shared) = {
        let s = shard.borrow();
        (s.id, s.shared.clone())
    };
    let serving = shared.mesh.doorbell(id).serve(|| {
        let mut s = shard.borrow_mut();
        s.flush_outbox();
        let mut popped = 0;
        while popped < INBOX_BATCH_MAX {
            let Some(completion) = shared.completions.pop(id) else {
                break;
            };
            s.on_completion(completion);
            popped += 1;
        }
        let popped = popped
            + shared
                .mesh
                .drain(id, INBOX_BATCH_MAX, |_, msg| s.apply(msg));
        Some(popped)
    });
    serving.await;
}

async fn ticker(shard: Rc<RefCell<Shard>>) {
    let tick = shard.borrow().tick;
    loop {
        shard.borrow().shared.liveness.ran(shard.borrow().id);
        glommio::timer::sleep(tick).await;
        if shard.borrow_mut().on_tick(Instant::now()) {
            let s = shard.borrow();
            s.shared.liveness.stopped(s.id);
            tracing::info!(shard = s.id, left = s.conns.len(), "drained");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_spread_over_shards_and_stay_put() {
        let homes: Vec<ShardId> = (0..200).map(|i| home_of(&format!("room-{i}"), 4)).collect();
        for shard in 0..4 {
            let n = homes.iter().filter(|h| **h == shard).count();
            assert!(n > 20, "shard {shard} homes only {n} of 200 rooms");
        }
        assert_eq!(home_of("room-7", 4), homes[7]);
    }
}
