//! Bytes in: the HTTP head until the upgrade, WebSocket frames after, and each text frame
//! turned into a request for its room's home.
#![forbid(unsafe_code)]

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fanout::Unsent;
use super::in_order::Answer;
use super::ip_limit::Verdict;
use super::tasks::spawn_task;
use super::Shard;
use crate::conn::Phase;
use crate::home::not_member;
use crate::mesh::msg::{HomeOp, HomeReq, Leaving, Origin, Reply, RoomsQuery, ShardMsg, Subscribe};
use crate::wire::http::{Fault, Outcome};
use crate::wire::protocol::{self, ErrorCode, ProtoError, Request, RequestId};
use crate::wire::ws::{self, close, Inbound};

impl Shard {
    /// Bytes read from connection `key`: the HTTP head until upgraded, frames after.
    pub(super) fn on_bytes_in(
        &mut self,
        key: usize,
        head: &mut Vec<u8>,
        decoder: &mut ws::Decoder,
        bytes: &mut [u8],
    ) {
        let entry = &mut self.conns[key];
        entry.last_recv = Instant::now();
        match entry.phase {
            Phase::Http => self.on_http(key, head, decoder, bytes),
            Phase::Api => {}
            Phase::Queued | Phase::Open | Phase::Closing => self.on_frames(key, decoder, bytes),
        }
    }

    fn on_frames(&mut self, key: usize, decoder: &mut ws::Decoder, bytes: &mut [u8]) {
        let max = self.cfg().frame_bytes_max as usize;
        let result = decoder.feed(bytes, max, &mut |frame| self.on_frame(key, frame));
        if let Err(e) = result {
            self.fail_conn(key, e.close_code(), &e.to_string());
        }
    }

    fn on_http(&mut self, key: usize, head: &mut Vec<u8>, decoder: &mut ws::Decoder, bytes: &[u8]) {
        head.extend_from_slice(bytes);
        let outcome = self.route(head);
        // What the client sent right behind an upgrade request is its first frames.
        let mut first_frames = match &outcome {
            Outcome::Upgrade { request_bytes, .. } => head.split_off(*request_bytes),
            _ => Vec::new(),
        };
        if !matches!(outcome, Outcome::Incomplete) {
            *head = Vec::new();
            self.handshake_done(key);
        }
        match outcome {
            Outcome::Incomplete => {}
            Outcome::Respond { status, response } => {
                if status == 503 {
                    self.metrics.connections_refused.inc();
                }
                self.respond_http(key, response);
            }
            Outcome::Api(call) => self.on_api(key, call),
            Outcome::Upgrade { .. } if self.rate_limited(key) || self.over_ip_max(key) => {}
            Outcome::Upgrade {
                identity, response, ..
            } => {
                self.upgraded(key, identity, response);
                if !first_frames.is_empty() {
                    self.on_frames(key, decoder, &mut first_frames);
                }
            }
            Outcome::Fault(fault) => self.on_fault(key, fault),
            Outcome::Profile(request) => self.on_profile(key, request),
            #[cfg(feature = "autobahn")]
            Outcome::Echo { response } => self.echo_upgraded(key, response),
        }
    }

    /// A new socket from `peer`: `Some(counted)` if it may go on (counted in
    /// `--handshakes-per-ip-max` until its request head is read), `None` if its address
    /// already holds that many unread sockets (then nothing is counted).
    pub(super) fn handshake_enter(&self, peer: Option<std::net::IpAddr>) -> Option<bool> {
        let counts = &self.instance.handshake_counts;
        let Some(ip) = peer.filter(|_| counts.on()) else {
            return Some(false);
        };
        if counts.enter(ip) {
            return Some(true);
        }
        self.metrics.handshakes_per_ip_refused.inc();
        None
    }

    /// The request head of `key` is read: it no longer counts as an unfinished handshake.
    fn handshake_done(&mut self, key: usize) {
        let entry = &mut self.conns[key];
        if let (true, Some(ip)) = (entry.handshake_counted, entry.peer) {
            entry.handshake_counted = false;
            self.instance.handshake_counts.leave(ip);
        }
    }

    /// An upgrade from an address past `--connections-per-ip-*`: answered 429 and closed.
    fn rate_limited(&mut self, key: usize) -> bool {
        let Some(ip) = self.conns[key].peer else {
            return false;
        };
        let Verdict::Limited { retry_after_s } = self.ip_limiter.check(ip, Instant::now()) else {
            return false;
        };
        self.metrics.connections_rate_limited.inc();
        let response = crate::wire::response::response(
            429,
            "text/plain; charset=utf-8",
            b"too many connections from this address: retry later\n",
            &format!("Retry-After: {retry_after_s}\r\n"),
        );
        self.respond_http(key, response);
        true
    }

    /// An upgrade from an address that holds `--connections-per-ip-max` connections (on
    /// any shard): answered 429 and closed. Otherwise it counts until it is forgotten.
    fn over_ip_max(&mut self, key: usize) -> bool {
        let counts = &self.instance.ip_counts;
        let Some(ip) = self.conns[key].peer.filter(|_| counts.on()) else {
            return false;
        };
        if counts.enter(ip) {
            self.conns[key].ip_counted = true;
            return false;
        }
        self.metrics.connections_per_ip_refused.inc();
        let max = self.cfg().connections_per_ip_max;
        let body = format!("too many connections from this address (connections_per_ip_max {max}): close one or retry later\n");
        let response = crate::wire::response::response(
            429,
            "text/plain; charset=utf-8",
            body.as_bytes(),
            "Retry-After: 1\r\n",
        );
        self.respond_http(key, response);
        true
    }

    /// `POST /debug/fault/…` (`--fault-injection`): the fault is sent to its shard.
    fn on_fault(&mut self, key: usize, fault: Fault) {
        tracing::warn!(?fault, "injecting a fault (--fault-injection)");
        let to = match fault {
            Fault::PanicShard(n) | Fault::StallShard(n, _) => n,
            Fault::PanicLog => self.id,
        };
        if to >= self.instance.shards() {
            let none = crate::wire::response::plain(400, "no such shard\n");
            return self.respond_http(key, none);
        }
        let accepted = crate::wire::response::plain(202, "injecting\n");
        self.respond_http(key, accepted);
        self.emit(to, ShardMsg::Fault(fault));
    }

    /// Injects a fault (test only), after this turn so that the 202 goes out first.
    pub(super) fn inject(&mut self, fault: Fault) {
        let persist = self.instance.persist.clone();
        spawn_task(async move {
            glommio::executor().yield_now().await;
            match fault {
                Fault::PanicShard(n) => panic!("injected fault: shard {n} panics"),
                Fault::StallShard(_, ms) => {
                    // Blocks the shard's thread on purpose: a shard stuck in a call.
                    #[allow(clippy::disallowed_methods, reason = "the fault is a blocked shard")]
                    std::thread::sleep(Duration::from_millis(ms))
                }
                Fault::PanicLog => persist.inject_panic(),
            }
        })
        .detach();
    }

    /// Sends a complete HTTP response and closes once it is written.
    pub(super) fn respond_http(&mut self, key: usize, response: Bytes) {
        let close_timeout = Duration::from_millis(self.cfg().close_timeout_ms);
        let entry = &mut self.conns[key];
        entry.phase = Phase::Closing;
        entry.end_when_flushed = true;
        entry.close_deadline = Some(Instant::now() + close_timeout);
        entry.out.push(response);
        entry.wake();
    }

    /// A connection upgraded and authenticated: it takes a place or waits for one.
    fn upgraded(&mut self, key: usize, identity: crate::wire::auth::Identity, response: Bytes) {
        let entry = &mut self.conns[key];
        entry.user = Rc::from(identity.user.as_str());
        entry.name = identity.name.as_deref().map(Rc::from);
        entry.token_exp = identity.exp;
        entry.out.push(response);
        self.arrive(key);
    }

    /// Gives a connection its place (already taken in `Places`) and its `hello`.
    pub(super) fn admit(&mut self, key: usize) {
        let instance = self.instance.clone();
        let cfg = &instance.cfg;
        let entry = &mut self.conns[key];
        entry.phase = Phase::Open;
        let session = format!("{}.{}.{}", instance.name, self.id, entry.generation);
        let hello = protocol::event(
            "hello",
            protocol::Hello {
                user: &entry.user,
                session: &session,
                instance: &instance.name,
                shard: self.id,
                heartbeat_ms: cfg.heartbeat_ms,
                exp: entry.token_exp,
                limits: protocol::Limits {
                    body_bytes_max: cfg.body_bytes_max,
                    frame_bytes_max: cfg.frame_bytes_max,
                    outbound_queue_bytes_max: cfg.outbound_queue_bytes_max,
                    history_limit_max: protocol::HISTORY_LIMIT_MAX,
                    rooms_per_connection_max: cfg.rooms_per_connection_max,
                    requests_per_s: cfg.messages_per_connection_per_s,
                    requests_burst: cfg.messages_per_connection_burst,
                    rate_limited_replies_max: cfg.rate_limited_replies_max,
                    pings_per_s: cfg.pings_per_connection_per_s,
                },
            },
        );
        entry.out.push(ws::text(&hello));
        entry.wake();
    }

    /// What the request head asks for. It must end within `http_request_bytes_max` (431
    /// otherwise); bytes after it are left to the caller (the first frames of an upgrade).
    fn route(&self, head: &[u8]) -> Outcome {
        let max = self.cfg().http_request_bytes_max as usize;
        let metrics = || self.instance.metrics.encode();
        let health = || self.instance.liveness.check();
        let cluster = || self.instance.cluster_json();
        let ctx = crate::wire::http::Context {
            auth: &self.instance.auth,
            draining: self.draining.is_some() || self.instance.mesh.drain_requested(),
            at_capacity: self.instance.places.full(),
            log_failure: self.instance.persist.write_failure().map(|e| e.to_string()),
            queue_full: self.instance.places.queue_full(),
            no_quorum: self.instance.no_quorum(),
            cluster: &cluster,
            metrics: &metrics,
            health: &health,
            faults: self.cfg().fault_injection,
            api_key: self.cfg().api_key.as_deref(),
            accounts: self.instance.accounts.is_some(),
            debug_endpoints: self.cfg().debug_endpoints,
            body_bytes_max: self.cfg().body_bytes_max as usize,
            request_bytes_max: max,
        };
        match crate::wire::http::route(&head[..head.len().min(max)], &ctx) {
            Outcome::Incomplete if head.len() > max => {
                Outcome::plain(431, "request head exceeds http_request_bytes_max\n")
            }
            outcome => outcome,
        }
    }

    /// One frame from an open connection. Returns false once the connection is closing.
    fn on_frame(&mut self, key: usize, frame: Inbound<'_>) -> bool {
        let phase = self.conns[key].phase;
        let taking = matches!(phase, Phase::Open | Phase::Queued);
        match frame {
            Inbound::Text(text) if taking && self.over_request_rate(key, text.as_bytes()) => {
                self.conns[key].phase == phase
            }
            Inbound::Ping(_) if taking && self.over_ping_rate(key) => false,
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
            #[cfg(feature = "autobahn")]
            Inbound::Text(text) if self.conns[key].echo => {
                self.echo(key, ws::text(text.as_bytes()))
            }
            #[cfg(feature = "autobahn")]
            Inbound::Binary(payload) if self.conns[key].echo => self.echo(key, ws::binary(payload)),
            Inbound::Text(text) => {
                self.on_text(key, text.as_bytes());
                self.conns[key].phase == Phase::Open
            }
            Inbound::Binary(_) => {
                let reason = "binary frames are not supported";
                self.close_conn(key, close::UNSUPPORTED, reason, Unsent::Drop);
                false
            }
            Inbound::Ping(payload) => {
                self.push_frame(key, ws::pong(payload));
                true
            }
            Inbound::Pong => true,
            Inbound::Close(_) => {
                if matches!(phase, Phase::Open | Phase::Queued) {
                    self.close_conn(key, close::NORMAL, "", Unsent::Send);
                }
                self.conns[key].end_when_flushed = true;
                false
            }
        }
    }

    /// A request past `--messages-per-connection-*`: answered `rate_limited` in its turn
    /// (nothing else of it is read but its `id`), or, past `--rate-limited-replies-max` of
    /// them in a row, the connection is closed 1008. Every op counts.
    fn over_request_rate(&mut self, key: usize, text: &[u8]) -> bool {
        let cfg = self.cfg();
        let (per_s, burst) = (
            cfg.messages_per_connection_per_s,
            cfg.messages_per_connection_burst,
        );
        let in_row_max = cfg.rate_limited_replies_max;
        let entry = &mut self.conns[key];
        if entry.close_when_answered.is_some() {
            return true; // closing: read and dropped
        }
        let Err(wait) = entry.requests.take(per_s, burst, Instant::now()) else {
            entry.rate_limited_in_row = 0;
            return false;
        };
        entry.rate_limited_in_row += 1;
        if entry.rate_limited_in_row > in_row_max {
            self.metrics.rate_limit_closes.inc();
            // A close handshake, not a failed connection: what the client still sends is
            // read and dropped until its close, so its socket is not reset under the close.
            // Its requests already out or held are answered first: a stored `send` is
            // `ok`'d.
            self.close_when_answered(key, close::POLICY, "rate limit exceeded");
            return true;
        }
        self.metrics.rate_limited_requests.inc();
        let err = ProtoError::rate_limited(
            format!("more than {per_s} requests per second (burst {burst})"),
            wait,
        );
        let err = ProtoError {
            message: format!(
                "{}: retry after {} ms",
                err.message,
                err.retry_after_ms.unwrap_or(1)
            ),
            ..err
        };
        self.submit(key, Err((protocol::request_id(text), err)));
        true
    }

    /// A WebSocket ping past `--pings-per-connection-per-s` (a bucket of twice that):
    /// the connection is closed 1008, since each ping costs a write.
    fn over_ping_rate(&mut self, key: usize) -> bool {
        let per_s = self.cfg().pings_per_connection_per_s;
        let burst = per_s.saturating_mul(2);
        let now = Instant::now();
        if self.conns[key].pings.take(per_s, burst, now).is_ok() {
            return false;
        }
        self.metrics.ping_flood_closes.inc();
        self.close_conn(key, close::POLICY, "ping rate exceeded", Unsent::Send);
        true
    }

    fn on_text(&mut self, key: usize, text: &[u8]) {
        let limits = protocol::ParseLimits {
            body_bytes_max: self.cfg().body_bytes_max as usize,
            room_id_bytes_max: self.cfg().room_id_bytes_max as usize,
        };
        let mut parsed = protocol::parse(text, limits);
        // Counted as it arrives, not when its turn comes: pipelined `rooms` queries wait
        // their turn behind each other, and would otherwise never look fast.
        if let Ok((id, Request::Rooms { .. })) = &parsed {
            if let Err(e) = self.check_rooms_rate(key) {
                parsed = Err((id.clone(), e));
            }
        }
        self.submit(key, parsed);
    }

    // === requests, connection side ===

    /// A parsed request: answered here (`ping`, `rooms`), or checked against this
    /// connection's state and sent to the room's home.
    pub(super) fn on_request(
        &mut self,
        key: usize,
        id: RequestId,
        req: Request,
        turn: u32,
    ) -> Result<(), ProtoError> {
        let origin = Origin {
            shard: self.id,
            conn: self.conn_ref(key),
            request: id,
            turn,
        };
        let user = self.conns[key].user.to_string();
        let (room, op) = match req {
            Request::Ping => return self.pong(key, &origin),
            Request::Refresh { token } => return self.refresh(key, &origin, &token),
            Request::Rooms {
                query,
                joined,
                limit,
                cursor,
            } => {
                let query = RoomsQuery {
                    user,
                    query,
                    joined,
                    limit,
                    cursor,
                    scan_rooms_max: self.cfg().rooms_query_scan_rooms_max,
                };
                return self.gather_rooms(origin, query);
            }
            Request::Create {
                room,
                title,
                private,
                password,
            } => {
                if private && password.is_none() {
                    return Err(needs_password());
                }
                let op = HomeOp::Create {
                    title,
                    private,
                    password_hash: None,
                };
                return self.forward_hashing(origin, HomeReq { room, user, op }, password);
            }
            Request::UpdateRoom {
                room,
                title,
                private,
                password,
            } => {
                let op = HomeOp::UpdateRoom {
                    title,
                    private,
                    password_hash: None,
                };
                return self.forward_hashing(origin, HomeReq { room, user, op }, password);
            }
            Request::Leave { room } => (room.clone(), self.leave_here(key, &room)?),
            other => self.home_op(key, other)?,
        };
        self.forward(origin, HomeReq { room, user, op })
    }

    fn pong(&mut self, key: usize, origin: &Origin) -> Result<(), ProtoError> {
        let pong = serde_json::json!({"pong": true, "ts": crate::clock::now_ms()});
        let ok = protocol::ok(origin.request.as_deref(), pong);
        self.push_frame(key, ws::text(&ok));
        Ok(())
    }

    /// `refresh`: a new token for the same user moves the connection's expiry. A token
    /// that does not verify is refused with the reason and changes nothing (the connection
    /// keeps its old `exp`); a token of another user is `forbidden`, same.
    fn refresh(&mut self, key: usize, origin: &Origin, token: &str) -> Result<(), ProtoError> {
        let auth = &self.instance.auth;
        if auth.dev_mode() {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                "development mode has no tokens to refresh",
            ));
        }
        let identity = auth
            .verify(token)
            .map_err(|e| ProtoError::new(ErrorCode::Unauthorized, e.to_string()))?;
        let entry = &mut self.conns[key];
        if *identity.user != *entry.user {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "the token is for another user: a connection keeps the user it opened with",
            ));
        }
        entry.token_exp = identity.exp;
        let ok = protocol::ok(
            origin.request.as_deref(),
            serde_json::json!({"exp": identity.exp}),
        );
        self.push_frame(key, ws::text(&ok));
        Ok(())
    }

    /// `leave`: the connection stops receiving the room here first, then tells the home.
    fn leave_here(&mut self, key: usize, room: &str) -> Result<HomeOp, ProtoError> {
        let idx = self.conns[key]
            .room_index(room)
            .ok_or_else(|| not_member(room))?;
        // Refuse before changing anything, so the home and this shard stay in step.
        self.check_home_ready(room)?;
        let (arc, sub_idx) = self.conns[key].rooms.swap_remove(idx);
        self.unsubscribe_local(&arc, sub_idx);
        Ok(HomeOp::Leave(Leaving::Membership))
    }

    /// The requests that only need this connection's checks before going to the home.
    fn home_op(&mut self, key: usize, req: Request) -> Result<(String, HomeOp), ProtoError> {
        let entry = &self.conns[key];
        let joined = req.room().and_then(|room| entry.room_index(room)).is_some();
        let member = |room: &str| {
            if joined {
                Ok(())
            } else {
                Err(not_member(room))
            }
        };
        Ok(match req {
            Request::Join {
                room,
                password,
                after_seq,
            } => {
                if !joined {
                    self.check_rooms_per_connection(key)?;
                }
                let subscribe = if joined {
                    Subscribe::Already
                } else {
                    Subscribe::New
                };
                let op = HomeOp::Join {
                    password,
                    peer: entry.peer,
                    after_seq,
                    subscribe,
                };
                (room, op)
            }
            Request::Send {
                room,
                body,
                client_msg_id,
            } => {
                member(&room)?;
                let op = HomeOp::Send {
                    name: entry.name.as_deref().map(str::to_owned),
                    body,
                    client_msg_id,
                    received_at: Instant::now(),
                };
                (room, op)
            }
            Request::Typing { room } => {
                member(&room)?;
                self.check_typing_rate(key)?;
                (room, HomeOp::Typing)
            }
            Request::History {
                room,
                before_seq,
                limit,
            } => (room, HomeOp::History { before_seq, limit }),
            Request::Read { room, seq } => (room, HomeOp::Read { seq }),
            Request::Delete { room, seq } => (room, HomeOp::Delete { seq }),
            Request::Presence { room } => (room, HomeOp::Presence),
            Request::Search { room, query, limit } => (room, HomeOp::Search { query, limit }),
            Request::Ping
            | Request::Refresh { .. }
            | Request::Rooms { .. }
            | Request::Create { .. }
            | Request::UpdateRoom { .. }
            | Request::Leave { .. } => unreachable!("on_request handles these itself"),
        })
    }

    /// A connection receives at most `rooms_per_connection_max` rooms.
    pub(super) fn check_rooms_per_connection(&self, key: usize) -> Result<(), ProtoError> {
        let max = self.cfg().rooms_per_connection_max as usize;
        if self.conns[key].rooms.len() >= max {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("rooms_per_connection_max ({max}) reached: leave a room first"),
            ));
        }
        Ok(())
    }

    /// At most one `typing` per `typing_interval_ms` and connection.
    fn check_typing_rate(&mut self, key: usize) -> Result<(), ProtoError> {
        let interval = Duration::from_millis(self.cfg().typing_interval_ms);
        let entry = &mut self.conns[key];
        if entry.last_typing.is_some_and(|t| t.elapsed() < interval) {
            return Err(ProtoError::new(
                ErrorCode::RateLimited,
                format!("at most one `typing` per {} ms", interval.as_millis()),
            ));
        }
        entry.last_typing = Some(Instant::now());
        Ok(())
    }

    /// Client requests are not forwarded to a shard that messages from this one wait for:
    /// the client retries instead of adding to the backlog.
    fn check_home_ready(&self, room: &str) -> Result<(), ProtoError> {
        if self.outbox.has_backlog(self.home_of(room)) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "the room's shard is busy: retry shortly",
            ));
        }
        Ok(())
    }

    /// Sends a request to its room's home, unless that shard is backed up.
    pub(super) fn forward(&mut self, origin: Origin, req: HomeReq) -> Result<(), ProtoError> {
        self.check_home_ready(&req.room)?;
        if matches!(req.op, HomeOp::Send { .. }) {
            // The partition rule (docs/REPLICATION.md "Partitions and quorum"): a side without
            // a majority of the configured members sequences nothing.
            if let Some(why) = self.instance.no_quorum() {
                return Err(ProtoError::new(ErrorCode::Unavailable, why));
            }
        }
        self.emit(self.home_of(&req.room), ShardMsg::Home(origin, req));
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
            let hashed = super::offload::off_shard(move || crate::password::hash(&password)).await;
            let Some(shard) = me.upgrade() else { return };
            let mut shard = shard.borrow_mut();
            let (origin_conn, turn) = (origin.conn, origin.turn);
            if shard.live(origin_conn).is_none() {
                return;
            }
            let id = origin.request.clone();
            let result = hashed.and_then(|hash| {
                if let HomeOp::Create { password_hash, .. }
                | HomeOp::UpdateRoom { password_hash, .. } = &mut req.op
                {
                    *password_hash = Some(hash);
                }
                shard.forward(origin, req)
            });
            if let Err(error) = result {
                let reply = Reply::Error { request: id, error };
                shard.on_answer(origin_conn, turn, Answer::Reply(reply));
            }
        })
        .detach();
        Ok(())
    }
}

fn needs_password() -> ProtoError {
    ProtoError::new(ErrorCode::BadRequest, "a private room needs a `password`")
}
