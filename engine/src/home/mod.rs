//! The room side of requests, run on the room's home shard: the only place a room's state
//! changes.
//!
//! [`Homes`] owns the rooms a shard homes, the requests waiting for the persistence
//! threads, and the tickets that name them. Its handlers **return** what to send, in an
//! [`Outgoing`], instead of sending it (TigerBeetle: the parent holds the state, the helpers
//! compute the change): a `Reply` or `Subscribed` to the origin connection, and each event
//! once to every shard that holds subscribers of the room (`Deliver`). The shard applies
//! the list right after the call; `mesh/msg.rs` says why that keeps the observable order.
//!
//! Nothing here touches a socket, a thread, a clock or the mesh: time comes in as a
//! [`Now`], the write-ahead log as a [`Journal`], and work that must not run on the shard
//! (an argon2 check) goes back out as an [`Offload`]. So tests drive it directly (`tests.rs`).
#![forbid(unsafe_code)]

mod cache;
mod clustered;
mod completions;
mod guard;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use sokdo_persistence::{AppendError, ReadRequest, Record, RoomSnapshot, Ticket};

use crate::mesh::msg::{HomeOp, HomeReq, Leaving, Origin, Outgoing, Reply, ShardMsg, Subscribe};
use crate::mesh::ShardId;
use crate::room::{Room, RoomLimits};
use crate::wire::protocol::{self, ErrorCode, ProtoError};
pub use guard::PasswordRules;

/// Where records go: the write-ahead log (`sokdo_persistence::Handle`), or a test's fake.
/// Both calls only queue and return at once; results come back as completions.
pub trait Journal {
    fn append(&self, record: Record, ticket: Option<Ticket>) -> Result<(), AppendError>;
    /// Queues a store read; false when the read queue is full.
    fn read(&self, request: ReadRequest, ticket: Ticket) -> bool;
    /// How many of the appends are written and readable, in order (`Handle::settled`).
    fn settled(&self) -> u64;
}

impl Journal for sokdo_persistence::Handle {
    fn append(&self, record: Record, ticket: Option<Ticket>) -> Result<(), AppendError> {
        sokdo_persistence::Handle::append(self, record, ticket)
    }

    fn read(&self, request: ReadRequest, ticket: Ticket) -> bool {
        sokdo_persistence::Handle::read(self, request, ticket).is_ok()
    }

    fn settled(&self) -> u64 {
        sokdo_persistence::Handle::settled(self)
    }
}

/// The moment a request is handled: the wall clock for `ts` fields, the monotonic clock for
/// latency. Read once by the shard per call.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub ms: u64,
    pub at: Instant,
}

/// The rules a home applies, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HomeRules {
    pub limits: RoomLimits,
    /// `--rooms-per-shard-max`.
    pub rooms_max: usize,
    /// `--auto-create-rooms`: a `join` of an unknown room creates it.
    pub auto_create_rooms: bool,
    /// `--durability sync`: a `send` is answered once its record is durable.
    pub durable_acks: bool,
    /// `--replay-messages-max`: most messages one `join` replays.
    pub replay_messages_max: u64,
    /// Messages per page of a replay read from the store ([`replay_page_messages`]).
    pub replay_page_messages: usize,
    /// Room password guessing (`guard`).
    pub passwords: PasswordRules,
    /// `--room-cache-bytes-per-shard`: the rooms' rings and search indexes (`cache.rs`).
    pub cache_bytes_max: usize,
}

/// The counters a home keeps (its shard's metrics).
#[derive(Debug, Clone, Default)]
pub struct HomeCounters {
    /// `sokdo_messages_in_total`.
    pub messages_in: Counter,
    pub room_password_failures: Counter,
    pub room_password_refusals: Counter,
    /// `sokdo_room_cache_evictions_total`, `sokdo_room_cache_evicted_messages_total`.
    pub room_cache_evictions: Counter,
    pub room_cache_evicted_messages: Counter,
}

/// Messages per page of a replay from the store: a quarter of a connection's queue cap
/// (`outbound_queue_bytes_max`) of the largest messages, so a page always fits beside the
/// half of the cap at which the connection asks for the next one; 1 to the store's most
/// per read.
pub fn replay_page_messages(outbound_queue_bytes_max: u32, body_bytes_max: u32) -> usize {
    // A `msg` event's JSON beyond its body: ids, names, the room, a timestamp.
    const MSG_OVERHEAD_BYTES: usize = 512;
    let per_message = body_bytes_max as usize + MSG_OVERHEAD_BYTES;
    (outbound_queue_bytes_max as usize / 4 / per_message)
        .clamp(1, sokdo_persistence::READ_MESSAGES_MAX)
}

/// Work a home hands back to the shard because it must not run on the shard.
#[derive(Debug)]
pub enum Offload {
    /// A `join` of a private room: check the password on the blocking pool, then call
    /// [`Homes::join_verified`].
    VerifyPassword(PasswordCheck),
}

/// A `join` waiting for its password check.
#[derive(Debug)]
pub struct PasswordCheck {
    pub password: String,
    pub hash: String,
    /// The client's address: wrong passwords count against it too.
    peer: Option<std::net::IpAddr>,
    joining: Joining,
}

/// A `join` on its way: admitted, waiting for a password check or for the store's part of
/// its replay, a page at a time.
#[derive(Debug)]
struct Joining {
    origin: Origin,
    room: Arc<str>,
    user: String,
    /// Replay every message after it: the client's position, then the last seq replayed.
    after_seq: Option<u64>,
    /// The first seq replayed when the replay starts later than the client asked
    /// (`--replay-messages-max`): the `ok` says `recovered: false`.
    cut_at: Option<u64>,
    subscribe: Subscribe,
}

/// A `send` whose record is logged and whose seq is reserved.
#[derive(Debug)]
struct AcceptedSend {
    origin: Origin,
    room: Arc<str>,
    seq: u64,
    from: String,
    name: Option<String>,
    body: String,
    ts: u64,
    received_at: Instant,
    /// Forgotten again if the record cannot be written, so that a retry is tried afresh.
    client_msg_id: Option<String>,
}

/// A request waiting for the persistence thread, by ticket.
#[derive(Debug)]
enum Waiting {
    /// A `send` whose `ok` goes out once its record is durable; the message becomes visible
    /// (ring, `msg` to subscribers) at the same moment.
    Ack(AcceptedSend),
    /// A `join` whose replay starts before the ring: the store's part is being read.
    Join(Joining),
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

/// The rooms one shard homes, and what waits on them.
pub struct Homes {
    shard: ShardId,
    shards: u16,
    rules: HomeRules,
    rooms: HashMap<Arc<str>, Room>,
    /// The ids of `rooms`, in order: `rooms` pages are ranges of it, never a scan.
    ids: BTreeSet<Arc<str>>,
    /// The rooms homed here each user is a member of, sorted (`rooms` with `joined`). A
    /// sorted `Vec`, not a `BTreeSet`, whose first node is ≈ 190 bytes for a user of one
    /// room: most of an idle connection's share of this index (issue 14).
    joined: HashMap<Box<str>, Vec<Arc<str>>>,
    waiting: HashMap<u64, Waiting>,
    /// Replays whose last page went to the connection, by token, until it asks for the
    /// next (`HomeOp::ReplayMore`).
    paused: HashMap<u64, Joining>,
    next_ticket: u64,
    journal: Box<dyn Journal>,
    counters: HomeCounters,
    /// Wrong room passwords and the checks in flight.
    guard: guard::PasswordGuard,
    /// With `--peers`: sends are sequenced by the room's owner (`clustered.rs`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Sends handed to the cluster thread, by token, until the owner answers.
    publishing: HashMap<u64, clustered::Publishing>,
    /// Requests about a clustered room's metadata, by token, until the owner decides.
    deciding: HashMap<u64, clustered::Deciding>,
    /// The owner's metadata of each clustered room as last applied here (one per room
    /// homed here, each at most `cluster::meta::DELETED_MAX` deletes).
    metas: HashMap<Arc<str>, clustered::Applied>,
    /// Clustered rooms whose local copy is catching up from the owner (first member, or
    /// restored at start): a `join` with an `after_seq` beyond the copy waits for it.
    catching_up: std::collections::HashSet<Arc<str>>,
    /// Records appended to the journal (each room remembers its last: `Room::logged`).
    appended: u64,
    /// The rooms' rings and search indexes under `--room-cache-bytes-per-shard`.
    cache: cache::Cache,
}

impl Homes {
    /// The homes of shard `shard` of `shards`, with the rooms it homes as persisted.
    pub fn new(
        (shard, shards): (ShardId, u16),
        rules: HomeRules,
        journal: Box<dyn Journal>,
        counters: HomeCounters,
        snapshots: Vec<RoomSnapshot>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Homes {
        let mut homes = Homes {
            shard,
            shards,
            rules,
            rooms: HashMap::new(),
            ids: BTreeSet::new(),
            joined: HashMap::new(),
            waiting: HashMap::new(),
            paused: HashMap::new(),
            next_ticket: 0,
            journal,
            counters,
            guard: guard::PasswordGuard::new(rules.passwords),
            cluster,
            publishing: HashMap::new(),
            deciding: HashMap::new(),
            metas: HashMap::new(),
            catching_up: std::collections::HashSet::new(),
            appended: 0,
            cache: cache::Cache::new(rules.cache_bytes_max),
        };
        for snapshot in snapshots {
            debug_assert_eq!(crate::placement::home_of(&snapshot.room, shards), shard);
            let key: Arc<str> = Arc::from(snapshot.room.as_str());
            for user in &snapshot.members {
                homes.index_member(&key, user, true);
            }
            let room = Room::restore(snapshot, rules.limits, shards as usize);
            homes.ids.insert(key.clone());
            homes.rooms.insert(key, room);
        }
        homes.register_restored();
        homes
    }

    /// Keeps `joined` in step with a room's members.
    fn index_member(&mut self, key: &Arc<str>, user: &str, member: bool) {
        if member {
            if !self.joined.contains_key(user) {
                self.joined.insert(user.into(), Vec::new());
            }
            let rooms = self.joined.get_mut(user).expect("just inserted");
            if let Err(at) = rooms.binary_search_by(|r| (**r).cmp(&**key)) {
                // Grown one at a time while small: most users are in a room or two here.
                if rooms.len() < 4 {
                    rooms.reserve_exact(1);
                }
                rooms.insert(at, key.clone());
            }
        } else if let Some(rooms) = self.joined.get_mut(user) {
            if let Ok(at) = rooms.binary_search_by(|r| (**r).cmp(&**key)) {
                rooms.remove(at);
            }
            if rooms.is_empty() {
                self.joined.remove(user);
            }
        }
    }

    /// Rooms homed here (a gauge).
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Requests waiting for the persistence threads or for a connection to take a replay
    /// page (a gauge).
    pub fn waiting(&self) -> usize {
        self.waiting.len() + self.paused.len() + self.publishing.len() + self.deciding.len()
    }

    /// The shards a request to `room` may send events to: those with its subscribers.
    pub fn reach(&self, room: &str) -> Vec<ShardId> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.subscribed_shards().map(|s| s as ShardId).collect()
        })
    }

    /// Executes one request; what to send goes to `out`, work for the blocking pool comes
    /// back.
    pub fn handle(
        &mut self,
        origin: Origin,
        req: HomeReq,
        now: Now,
        out: &mut Outgoing,
    ) -> Option<Offload> {
        debug_assert_eq!(
            crate::placement::home_of(&req.room, self.shards),
            self.shard,
            "a shard only touches rooms it homes"
        );
        let HomeReq { room, user, op } = req;
        // A connection's shard telling the home it stopped receiving the room is not a
        // client's request: nothing answers it (a connection counts its answers, `in_order`).
        let answered = !matches!(op, HomeOp::Leave(Leaving::Connection));
        let mut call = Call {
            origin: &origin,
            user: &user,
            now,
            out,
        };
        let result = match op {
            HomeOp::Join {
                password,
                peer,
                after_seq,
                subscribe,
            } => self.join(&mut call, &room, (password, peer), after_seq, subscribe),
            HomeOp::Create {
                title,
                private,
                password_hash,
            } => self
                .create(&mut call, room, title, private, password_hash)
                .map(|()| None),
            HomeOp::UpdateRoom {
                title,
                private,
                password_hash,
            } => self
                .update_room(&mut call, &room, title, private, password_hash)
                .map(|()| None),
            HomeOp::Read { seq } => self.read(&mut call, &room, seq).map(|()| None),
            HomeOp::Delete { seq } => self.delete(&mut call, &room, seq).map(|()| None),
            HomeOp::Typing => self.typing(&mut call, &room).map(|()| None),
            HomeOp::Presence => self.presence(&mut call, &room).map(|()| None),
            HomeOp::Search { query, limit } => {
                self.search(&mut call, &room, &query, limit).map(|()| None)
            }
            HomeOp::Leave(leaving) => self.leave(&mut call, &room, leaving).map(|()| None),
            HomeOp::Send {
                name,
                body,
                client_msg_id,
                received_at,
            } => {
                let send = requests::Send {
                    name,
                    body,
                    client_msg_id,
                    received_at,
                };
                self.send(&mut call, &room, send).map(|()| None)
            }
            HomeOp::History { before_seq, limit } => self
                .history(&mut call, &room, before_seq, limit)
                .map(|()| None),
            HomeOp::ReplayMore { token, cancel } => {
                self.replay_more(out, token, cancel, now);
                Ok(None)
            }
        };
        result.unwrap_or_else(|err| {
            if answered {
                reply_err(out, &origin, err);
            }
            None
        })
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket {
            shard: self.shard,
            token: self.next_ticket,
        }
    }

    /// Hands a record to the write-ahead log; a full log refuses the request.
    /// A message's or a deletion's record marks its room: its cache is dropped only once
    /// the log's `settled` count covers it (`cache.rs`).
    fn log(&mut self, record: Record, ticket: Option<Ticket>) -> Result<(), ProtoError> {
        let room = match &record {
            Record::Message { room, .. } | Record::Deleted { room, .. } => self
                .rooms
                .get_key_value(room.as_str())
                .map(|(k, _)| k.clone()),
            _ => None,
        };
        self.journal.append(record, ticket).map_err(refusal)?;
        self.appended += 1;
        if let Some(r) = room.and_then(|k| self.rooms.get_mut(&k)) {
            r.logged = self.appended;
        }
        Ok(())
    }

    /// After a room's cache changed (`fresh`: a new message): its bytes are counted, and past
    /// the shard's budget the oldest rooms whose records are all readable lose theirs.
    fn cache_changed(&mut self, key: &Arc<str>, fresh: bool) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let delta = room.take_cache_delta();
        if self.cache.changed(key, delta, fresh) {
            self.shed_cache(Some(key));
        }
    }

    /// The shard's tick: a cache left over its budget because its rooms' records were not
    /// yet readable from the store (a lagging sink) is brought back under it once they are.
    /// Without it the cache stayed over until the next send (`memory::rooms_past_the_cache_
    /// budget_…` failed 4 runs of 6 under load: the gauge never came back).
    pub fn tick_cache(&mut self) {
        if self.cache.over() {
            self.shed_cache(None);
        }
    }

    /// Drops the oldest rooms' caches, `keep` excluded, whose records are all readable,
    /// until the cache is back under its mark.
    fn shed_cache(&mut self, keep: Option<&Arc<str>>) {
        let settled = self.journal.settled();
        for cold in self.cache.candidates(keep) {
            if self.cache.satisfied() {
                break;
            }
            let Some(room) = self.rooms.get_mut(&cold) else {
                self.cache.forget(&cold);
                continue;
            };
            if room.logged > settled {
                continue; // a record of it is not readable from the store yet
            }
            let dropped = room.evict_cache();
            let delta = room.take_cache_delta();
            self.cache.changed(&cold, delta, false);
            self.cache.forget(&cold);
            self.counters.room_cache_evictions.inc();
            self.counters
                .room_cache_evicted_messages
                .inc_by(dropped as u64);
        }
    }

    /// The estimated bytes of this shard's rooms' rings and search indexes.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Asks the store for a read; the request waits under a ticket for the completion.
    fn read_store(&mut self, req: ReadRequest, waiting: Waiting) -> Result<(), ProtoError> {
        let ticket = self.ticket();
        if !self.journal.read(req, ticket) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "storage is busy: retry shortly",
            ));
        }
        self.waiting.insert(ticket.token, waiting);
        Ok(())
    }

    fn room_key(&self, room: &str) -> Result<Arc<str>, ProtoError> {
        self.rooms
            .get_key_value(room)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| crate::room::refusals::no_room(room))
    }

    /// The room `key` names; only called with a key `room_key` returned in the same call.
    fn room(&self, key: &Arc<str>) -> &Room {
        &self.rooms[key]
    }

    fn room_mut(&mut self, key: &Arc<str>) -> &mut Room {
        self.rooms
            .get_mut(key)
            .expect("a key from room_key names a room")
    }

    /// Sends an event's JSON once to each shard with subscribers of the room, except to
    /// `except`'s connections.
    fn broadcast(
        &self,
        out: &mut Outgoing,
        key: &Arc<str>,
        event: Vec<u8>,
        received_at: Instant,
        except: Option<&str>,
    ) {
        let payload = Bytes::from(event);
        let except: Option<Arc<str>> = except.map(Arc::from);
        for shard in self.room(key).subscribed_shards() {
            let msg = ShardMsg::Deliver {
                room: key.clone(),
                payload: payload.clone(),
                received_at,
                except: except.clone(),
            };
            out.push(shard as ShardId, msg);
        }
    }
}

/// One request being handled: who asked, when, and where the answers go.
struct Call<'a> {
    origin: &'a Origin,
    user: &'a str,
    now: Now,
    out: &'a mut Outgoing,
}

impl Call<'_> {
    fn ok<T: Serialize>(&mut self, body: T) {
        reply_ok(self.out, self.origin, body);
    }
}

fn reply_ok<T: Serialize>(out: &mut Outgoing, origin: &Origin, body: T) {
    let json = protocol::ok(origin.request.as_deref(), body);
    out.reply(origin, Reply::Ok(Bytes::from(json)));
}

fn reply_err(out: &mut Outgoing, origin: &Origin, error: ProtoError) {
    let request = origin.request.clone();
    out.reply(origin, Reply::Error { request, error });
}

/// What a client is told when the log refuses a record.
pub(super) fn refusal(e: AppendError) -> ProtoError {
    match e {
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
        AppendError::Unwritable { os_error } => ProtoError::new(
            ErrorCode::Unavailable,
            format!(
                "the message log cannot be written ({}): retry later",
                sokdo_persistence::os_error_text(os_error)
            ),
        ),
    }
}

pub fn not_member(room: &str) -> ProtoError {
    ProtoError::new(ErrorCode::NotMember, format!("join room `{room}` first"))
}
