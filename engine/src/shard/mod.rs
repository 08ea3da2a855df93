//! A shard: one glommio executor pinned to one core, owning its listener, its connections,
//! the rooms it homes and its table of local subscribers. Nothing in here is shared with
//! another shard; shards talk only through `ShardMsg`s on the mesh.
//!
//! Layout, in the order a message meets it:
//! - [`tasks`]: the shard's tasks and their glommio task queues (accept, connections,
//!   inbox, ticker) — `run` is the entry point;
//! - [`inbound`]: bytes → HTTP | frames → `Request` → `HomeReq`, sent to the room's home;
//! - [`api_calls`]: the HTTP API and account calls;
//! - `Homes` (`crate::home`): the room side, which returns what to send;
//! - [`fanout`]: the local subscribers of each room, delivery, replies, closing;
//!   [`coalesce`]: the delayed wakes of `--write-coalesce-us`;
//! - [`outbox`]: messages for other shards whose channel was full, bounded;
//! - [`rooms_query`]: `rooms`, asked of every shard;
//! - [`admission`]: the instance's places and its one waiting queue (on the desk shard);
//!   [`ip_limit`]: upgrades per client address; [`timers`]: heartbeats, timeouts,
//!   gauges, draining; [`offload`]: blocking work run off the shard;
//! - `echo` (test only, cargo feature `autobahn`): `/autobahn` connections echo every
//!   message, for the Autobahn conformance cases (docs/CONFORMANCE.md).
#![forbid(unsafe_code)]

mod admission;
mod api_calls;
mod coalesce;
#[cfg(feature = "autobahn")]
mod echo;
mod fanout;
mod in_order;
mod inbound;
mod ip_limit;
mod offload;
mod outbox;
mod profile;
mod replay;
mod rooms_query;
mod tasks;
mod timers;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Weak;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use sokdo_persistence::RoomSnapshot;

use crate::conn::{ConnEntry, ConnHost, ConnRef};
use crate::home::{HomeRules, Homes, Now};
use crate::instance::Instance;
use crate::mesh::msg::{HomeReq, Origin, Outgoing, Reply, ShardMsg};
use crate::mesh::ShardId;
use crate::metrics::ShardMetrics;
use crate::room::RoomLimits;
use crate::wire::protocol::{ErrorCode, ProtoError};
use crate::wire::ws;
use in_order::Answer;

pub use tasks::run;

pub struct Shard {
    id: ShardId,
    instance: Arc<Instance>,
    metrics: ShardMetrics,
    conns: Slab<ConnEntry>,
    /// The generation the next connection gets (`ConnRef`).
    next_generation: u64,
    /// Local subscribers of each room: slab keys.
    subs: HashMap<Arc<str>, Vec<u32>>,
    /// The rooms this shard homes.
    homes: Homes,
    /// Deliveries' delayed wakes (`--write-coalesce-us`).
    coalesce: coalesce::Coalesce,
    outbox: outbox::Outbox,
    /// The instance's admission queue, kept on shard `admission::DESK` (empty elsewhere).
    desk: admission::Desk,
    /// Upgrades per client address (`--connections-per-ip-*`).
    ip_limiter: ip_limit::IpLimiter,
    rooms_queries: rooms_query::Gathers,
    /// Answers that arrived before an earlier answer of their connection, by (connection
    /// key, turn) (`in_order`); almost always empty.
    early_answers: HashMap<(u32, u32), in_order::Answer>,
    login_limiter: api_calls::LoginLimiter,
    /// Connections whose held requests `in_order::release_held` is starting now.
    releasing: Vec<usize>,
    draining: Option<timers::DrainState>,
    /// Replays waiting for their connection to take a page (`replay`).
    replay_waits: Vec<replay::ReplayWait>,
    tick: Duration,
    /// This shard itself, for tasks that come back to it after an await.
    me: Weak<RefCell<Shard>>,
}

impl Shard {
    /// A shard that homes the given rooms, as persisted.
    fn new(id: ShardId, instance: Arc<Instance>, rooms: Vec<RoomSnapshot>) -> Shard {
        let cfg = &instance.cfg;
        let metrics = instance.metrics.for_shard(id);
        let rules = home_rules(&instance);
        let journal = Box::new(
            instance
                .persist
                .for_shard(id)
                .expect("the persistence has a completion sink per shard"),
        );
        let shards = (id, instance.shards());
        let counters = crate::home::HomeCounters {
            messages_in: metrics.messages_in.clone(),
            room_password_failures: metrics.room_password_failures.clone(),
            room_password_refusals: metrics.room_password_refusals.clone(),
            room_cache_evictions: metrics.room_cache_evictions.clone(),
            room_cache_evicted_messages: metrics.room_cache_evicted_messages.clone(),
        };
        let homes = Homes::new(
            shards,
            rules,
            journal,
            counters,
            rooms,
            instance.cluster.clone(),
        );
        Shard {
            id,
            conns: Slab::new(),
            next_generation: 0,
            subs: HashMap::new(),
            homes,
            coalesce: coalesce::Coalesce::new(Duration::from_micros(cfg.write_coalesce_us)),
            outbox: outbox::Outbox::new(
                id,
                instance.shards(),
                cfg.shard_outbox_messages_max as usize,
            ),
            desk: admission::Desk::default(),
            ip_limiter: ip_limit::IpLimiter::for_shard(
                cfg.connections_per_ip_per_s,
                cfg.connections_per_ip_burst,
                instance.shards(),
            ),
            rooms_queries: rooms_query::Gathers::default(),
            early_answers: HashMap::new(),
            login_limiter: api_calls::LoginLimiter::new(cfg),
            releasing: Vec::new(),
            draining: None,
            replay_waits: Vec::new(),
            tick: Duration::from_millis(cfg.tick_ms()),
            me: Weak::new(),
            metrics,
            instance,
        }
    }

    fn cfg(&self) -> &crate::config::Config {
        &self.instance.cfg
    }

    fn home_of(&self, room: &str) -> ShardId {
        crate::placement::home_of(room, self.instance.shards())
    }

    fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            key: key as u32,
            generation: self.conns[key].generation,
        }
    }

    /// The slab key of `conn` while it is the same connection.
    fn live(&self, conn: ConnRef) -> Option<usize> {
        let key = conn.key as usize;
        self.conns
            .get(key)
            .filter(|e| e.generation == conn.generation)
            .map(|_| key)
    }

    fn add_conn(&mut self, now: Instant) -> usize {
        self.next_generation += 1;
        self.metrics.connections.inc();
        self.metrics.connections_accepted.inc();
        self.conns.insert(ConnEntry::new(self.next_generation, now))
    }

    /// The moment a request is handled, read once.
    fn now() -> Now {
        Now {
            ms: crate::clock::now_ms(),
            at: Instant::now(),
        }
    }

    // === messages between shards ===

    /// Sends a message to shard `to`; to this shard, applies it at once.
    fn emit(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            return self.apply(msg);
        }
        self.metrics.cross_shard_messages.inc();
        self.outbox.send(&self.instance.mesh, to, msg);
    }

    /// Applies what a home returned, in order (mesh/msg.rs: why that order is the same as
    /// sending each at once).
    fn apply_outgoing(&mut self, mut out: Outgoing) {
        for (to, msg) in out.drain() {
            self.emit(to, msg);
        }
    }

    fn apply(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Home(origin, req) => self.on_home(origin, req),
            ShardMsg::Deliver {
                room,
                payload,
                received_at,
                except,
            } => self.deliver(&room, &payload, received_at, except.as_deref()),
            ShardMsg::RoomsQuery { from, token, query } => {
                let part = self.homes.rooms_part(&query);
                self.emit(from, ShardMsg::RoomsPart { token, part });
            }
            ShardMsg::RoomsPart { token, part } => self.on_rooms_part(token, part),
            ShardMsg::Reply { conn, turn, reply } => {
                self.on_answer(conn, turn, Answer::Reply(reply));
            }
            ShardMsg::Subscribed {
                conn,
                turn,
                request,
                room,
                user,
                subscribe,
                ok,
                replay,
            } => {
                let joined = fanout::Joined {
                    conn,
                    request,
                    room,
                    user,
                    subscribe,
                };
                self.on_answer(conn, turn, Answer::Joined { joined, ok, replay });
            }
            ShardMsg::ReplayPage {
                conn,
                room,
                token,
                frames,
            } => self.on_replay_page(conn, room, token, frames),
            ShardMsg::Fault(fault) => self.inject(fault),
            ShardMsg::AdmissionAsk { .. }
            | ShardMsg::AdmissionLeft { .. }
            | ShardMsg::PlaceFreed
            | ShardMsg::Admit { .. }
            | ShardMsg::AdmissionPositions(_) => self.on_admission(msg),
        }
    }

    /// A request for a room homed here. New work that would send to a shard this one is
    /// backed up towards is refused first (`outbox`: the bound).
    fn on_home(&mut self, origin: Origin, req: HomeReq) {
        if req.op.is_new_work() && self.outbox.any_full() {
            let outbox = &self.outbox;
            let blocked = outbox.is_full(origin.shard)
                || self
                    .homes
                    .reach(&req.room)
                    .iter()
                    .any(|s| outbox.is_full(*s));
            if blocked {
                self.metrics.shard_outbox_refusals.inc();
                let error = ProtoError::new(
                    ErrorCode::Unavailable,
                    "a shard this room reaches is backed up: retry shortly",
                );
                let reply = Reply::Error {
                    request: origin.request.clone(),
                    error,
                };
                let mut out = Outgoing::default();
                out.reply(&origin, reply);
                return self.apply_outgoing(out);
            }
        }
        let mut out = Outgoing::default();
        let offload = self.homes.handle(origin, req, Self::now(), &mut out);
        self.apply_outgoing(out);
        if let Some(offload) = offload {
            self.offload(offload);
        }
    }

    /// An answer or a delivery from the cluster thread, for a room homed here.
    fn on_cluster(&mut self, msg: crate::cluster::port::FromCluster) {
        let mut out = Outgoing::default();
        let offload = self.homes.on_cluster(msg, Self::now(), &mut out);
        self.apply_outgoing(out);
        if let Some(offload) = offload {
            self.offload(offload);
        }
    }

    /// A completion from the persistence threads, for a room homed here.
    fn on_completion(&mut self, completion: sokdo_persistence::Completion) {
        let mut out = Outgoing::default();
        self.homes.on_completion(completion, Self::now(), &mut out);
        self.apply_outgoing(out);
    }

    /// Tells a room's home that a connection no longer receives the room (it went away, or
    /// it could not take a subscription the home had counted). It stays a member.
    fn release_subscription(&mut self, room: &str, user: &str, conn: ConnRef) {
        let req = HomeReq {
            room: room.to_owned(),
            user: user.to_owned(),
            op: crate::mesh::msg::HomeOp::Leave(crate::mesh::msg::Leaving::Connection),
        };
        let origin = Origin {
            shard: self.id,
            conn,
            request: None,
            turn: 0,
        };
        self.emit(self.home_of(room), ShardMsg::Home(origin, req));
    }
}

impl ConnHost for Shard {
    fn entry(&mut self, key: usize) -> &mut ConnEntry {
        &mut self.conns[key]
    }

    fn on_bytes(
        &mut self,
        key: usize,
        head: &mut Vec<u8>,
        decoder: &mut ws::Decoder,
        bytes: &mut [u8],
    ) {
        self.on_bytes_in(key, head, decoder, bytes);
    }

    fn written(&mut self, bytes: usize) {
        self.metrics.bytes_out.inc_by(bytes as u64);
    }

    /// Forgets a connection whose task ended; the homes of its rooms hear of it.
    fn forget(&mut self, key: usize) {
        let rooms = std::mem::take(&mut self.conns[key].rooms);
        let user = self.conns[key].user.to_string();
        let conn = self.conn_ref(key);
        for (room, idx) in rooms {
            self.unsubscribe_local(&room, idx);
            self.release_subscription(&room, &user, conn);
        }
        let entry = self.conns.remove(key);
        self.drop_early_answers(conn);
        self.metrics.connections.dec();
        if let (true, Some(ip)) = (entry.ip_counted, entry.peer) {
            self.instance.ip_counts.leave(ip);
        }
        if let (true, Some(ip)) = (entry.handshake_counted, entry.peer) {
            self.instance.handshake_counts.leave(ip);
        }
        if entry.admitted {
            self.release_place();
        } else if entry.queued {
            self.left_queue(conn);
        }
    }
}

/// What a shard's homes apply, from the configuration.
fn home_rules(instance: &Instance) -> HomeRules {
    let cfg = &instance.cfg;
    HomeRules {
        limits: RoomLimits {
            history_ring_messages_max: cfg.history_ring_messages_max as usize,
            idempotency_keys_max: cfg.idempotency_keys_max as usize,
            own_messages_after_read_max: cfg.own_messages_after_read_max as usize,
        },
        rooms_max: cfg.rooms_per_shard_max as usize,
        auto_create_rooms: cfg.auto_create_rooms,
        durable_acks: instance.durable_acks(),
        replay_messages_max: cfg.replay_messages_max,
        replay_page_messages: crate::home::replay_page_messages(
            cfg.outbound_queue_bytes_max,
            cfg.body_bytes_max,
        ),
        passwords: crate::home::PasswordRules {
            failures_max: cfg.room_password_failures_max,
            failures_per_ip_max: cfg.room_password_failures_per_ip_max,
            window: std::time::Duration::from_millis(cfg.auth_failure_window_ms),
            checks_in_flight_max: cfg.password_checks_in_flight_max,
        },
        cache_bytes_max: cfg.room_cache_bytes_per_shard as usize,
    }
}
