//! Every message that crosses from one shard to another, in one file.
//!
//! ## Who sends what, and what it may cause (Seastar's rule: the graph must be a DAG)
//!
//! ```text
//!  connection's shard                          room's home shard
//!  ──────────────────                          ─────────────────
//!  Home(origin, req) ────────────────────────▶ Homes::handle
//!                     ◀──────────────────────── Reply · Subscribed      (to the origin only)
//!  Deliver ◀─────────────────────────────────── (to each shard with subscribers)
//!  Subscribed ─▶ may send Home(Leave Unsubscribe) back (a subscription it cannot take)
//!  ReplayPage ─▶ sends Home(ReplayMore) back once the page is taken (or the connection went)
//!
//!  asking shard                                every shard
//!  RoomsQuery ───────────────────────────────▶ RoomsPart ─▶ the asking shard only
//!
//!  connection's shard                          the admission desk (shard 0)
//!  AdmissionAsk ─────────────────────────────▶ Admit · AdmissionPositions  (to the asker)
//!  AdmissionLeft · PlaceFreed ───────────────▶ Admit                       (to the head's shard)
//!  Admit ─▶ PlaceFreed back when its connection has gone (the place is passed on)
//! ```
//!
//! - A home never sends `Home`: handling a request causes only `Reply`, `Subscribed` and
//!   `Deliver`, which touch connection-side state alone. That is why a shard may apply the
//!   messages a home returns right after the call, in order, with the same result as
//!   applying each at once (`shard::Shard::apply_outgoing`).
//! - `Subscribed` may cause one `Home(Leave)`, whose handling causes only `Deliver`
//!   (a `left` event): every chain ends after at most three hops.
//! - `ReplayPage` causes one `Home(ReplayMore)` (at once or at a later tick), whose handling
//!   causes only a store read: the next page comes with the read's completion, not within
//!   the chain.
//! - `Deliver`, `Reply`, `RoomsPart`, `AdmissionPositions` and `Fault` cause nothing on the
//!   mesh.
//! - Admission: `Admit` for a connection that went meanwhile causes one `PlaceFreed`, which
//!   may cause the next `Admit`. The chain is bounded by the queue: each `Admit` takes its
//!   connection out of the desk's queue for good (`shard::admission`).
//!
//! ## Heap objects freed on another core
//! A message is built on one shard and dropped on another. Its `String`s, `Box<RawValue>`
//! ids and `Vec`s are freed by the receiver; `Bytes` and `Arc<str>` payloads shared by
//! several shards are freed by whichever drops the last reference. mimalloc handles frees
//! from a foreign thread (a delayed free list per page), so this costs no lock.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::ConnRef;
use crate::mesh::ShardId;
use crate::wire::protocol::{ProtoError, RequestId};

/// Where a request came from, so the home can answer it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub shard: ShardId,
    pub conn: ConnRef,
    /// The client's `id` of the request, echoed in the reply.
    pub request: RequestId,
    /// The request's turn on its connection (`conn::order`), carried back with the answer
    /// so that answers are applied in the order sent; 0 for requests no client sent.
    pub turn: u32,
}

/// A request executed on the home shard of its room.
#[derive(Debug)]
pub struct HomeReq {
    pub room: String,
    pub user: String,
    pub op: HomeOp,
}

/// Whether a `join` starts the connection receiving the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    /// The connection does not receive the room yet: the home counts it in.
    New,
    /// A repeated `join` on a connection that already receives the room.
    Already,
}

/// Why a connection stops receiving a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// `leave`: the user stops being a member.
    Membership,
    /// The connection went away or could not take the subscription: it stays a member.
    Connection,
}

/// What a request asks of its room.
#[derive(Debug)]
pub enum HomeOp {
    Join {
        password: Option<String>,
        /// The client's address (room password failures count against it).
        peer: Option<std::net::IpAddr>,
        after_seq: Option<u64>,
        subscribe: Subscribe,
    },
    Create {
        title: Option<String>,
        private: bool,
        password_hash: Option<String>,
    },
    UpdateRoom {
        title: Option<String>,
        private: Option<bool>,
        password_hash: Option<String>,
    },
    Read {
        seq: u64,
    },
    Delete {
        seq: u64,
    },
    Typing,
    Presence,
    Search {
        query: String,
        limit: u32,
    },
    Leave(Leaving),
    Send {
        name: Option<String>,
        body: String,
        client_msg_id: Option<String>,
        received_at: Instant,
    },
    History {
        before_seq: Option<u64>,
        limit: u32,
    },
    /// The connection took the replay page sent under `token` (`ShardMsg::ReplayPage`):
    /// send the next, or, with `cancel`, forget the replay (the connection went away).
    ReplayMore {
        token: u64,
        cancel: bool,
    },
}

impl HomeOp {
    /// Whether the request may be refused when a shard it reaches is backed up: everything
    /// but the release of a subscription and the pace of a replay under way, which must
    /// always go through.
    pub fn is_new_work(&self) -> bool {
        !matches!(
            self,
            HomeOp::Leave(Leaving::Connection) | HomeOp::ReplayMore { .. }
        )
    }
}

/// A home's answer to one request: a typed result, framed (WebSocket) or turned into an
/// HTTP response by the connection's own shard.
#[derive(Debug)]
pub enum Reply {
    /// The complete JSON text of the `ok` reply (its `id` included).
    Ok(Bytes),
    Error {
        request: RequestId,
        error: ProtoError,
    },
}

/// A `rooms` request, asked of every shard.
#[derive(Debug)]
pub struct RoomsQuery {
    pub user: String,
    pub query: Option<String>,
    pub joined: bool,
    pub limit: u32,
    pub cursor: Option<String>,
    /// Most rooms each shard looks at (`--rooms-query-scan-rooms-max`).
    pub scan_rooms_max: u32,
}

/// One shard's part of a `rooms` answer.
#[derive(Debug, Default)]
pub struct RoomsPart {
    /// The matching rooms after the cursor, by id, at most `limit` + 1.
    pub entries: Vec<RoomEntry>,
    /// The last room id looked at when the scan budget ran out before the shard's rooms
    /// did (`None`: every room after the cursor was looked at, or `limit` + 1 found).
    pub scanned_to: Option<String>,
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
    RoomsPart { token: u64, part: RoomsPart },
    /// From a home to one connection: the result of its request.
    Reply {
        conn: ConnRef,
        turn: u32,
        reply: Reply,
    },
    /// From a home to one connection after `join`: the `ok`, then the replay; and the
    /// connection starts receiving the room (unless it already did).
    Subscribed {
        conn: ConnRef,
        turn: u32,
        request: RequestId,
        room: Arc<str>,
        user: Arc<str>,
        subscribe: Subscribe,
        /// The JSON text of the `ok`.
        ok: Bytes,
        /// The replayed `msg` events, framed.
        replay: Vec<Bytes>,
    },
    /// From a home to one connection after `join` with `after_seq`, before its
    /// `Subscribed`: one page of the replay read from the store (`msg` events, framed). The
    /// connection answers `Home(ReplayMore { token })` once its queue has room for the next.
    ReplayPage {
        conn: ConnRef,
        room: Arc<str>,
        token: u64,
        frames: Vec<Bytes>,
    },
    /// Test only (`--fault-injection`): inject this fault here.
    Fault(crate::wire::http::Fault),
    /// To the admission desk: this upgraded connection waits for a place (already counted
    /// in `Places::waiting`). Arrival order is the order the desk receives these.
    AdmissionAsk { shard: ShardId, conn: ConnRef },
    /// To the desk: a waiting connection went away before its place came.
    AdmissionLeft { shard: ShardId, conn: ConnRef },
    /// To the desk: a place was released while connections waited.
    PlaceFreed,
    /// From the desk to a waiting connection's shard: a place was taken for it (counted in
    /// `Places::admitted`). If it has gone, its shard releases the place again.
    Admit { conn: ConnRef },
    /// From the desk to a shard: waiting connections' new positions in the queue (1 = next).
    AdmissionPositions(Vec<(ConnRef, u32)>),
}

/// What a home handler sends, in order; the shard applies it after the call.
#[derive(Debug, Default)]
pub struct Outgoing {
    msgs: Vec<(ShardId, ShardMsg)>,
}

impl Outgoing {
    pub fn push(&mut self, to: ShardId, msg: ShardMsg) {
        debug_assert!(
            !matches!(msg, ShardMsg::Home(..)),
            "a home never sends a request (mesh/msg.rs: the DAG)"
        );
        self.msgs.push((to, msg));
    }

    pub fn reply(&mut self, origin: &Origin, reply: Reply) {
        self.push(
            origin.shard,
            ShardMsg::Reply {
                conn: origin.conn,
                turn: origin.turn,
                reply,
            },
        );
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, (ShardId, ShardMsg)> {
        self.msgs.drain(..)
    }

    #[cfg(test)]
    pub fn msgs(&self) -> &[(ShardId, ShardMsg)] {
        &self.msgs
    }
}
