//! One client connection: its small state in the shard's slab ([`ConnEntry`]) and the task
//! that moves its bytes ([`ConnDriver`]).
//!
//! Memory is the point of this file. An idle connection holds its socket, a slab entry of a
//! few hundred bytes and a parked task — no read buffer, no write buffer. A read borrows the
//! shard's one read buffer for the duration of a non-blocking `recv`; glommio's stream only
//! waits for readiness while pending, so nothing is pinned while a client is quiet. Outbound
//! frames are `Bytes` shared by every subscriber of the shard; a connection's queue holds
//! references, bounded by `outbound_queue_bytes_max`, and all of them go out in one
//! `sendmsg` (scatter-gather, non-blocking) per turn of the task.
//!
//! - [`outbound`]: the queue of frames and the one `sendmsg`, and the idle check's peek at
//!   the socket (the only `unsafe` on the data path);
//! - [`driver`]: the task, generic over a [`ConnHost`] — the shard, seen only through the
//!   four calls a connection needs, so this module does not know the shard;
//! - [`order`]: which of a connection's requests may start now, so they take effect in the
//!   order sent (pure bookkeeping);
//! - [`rate`]: the token buckets of the per-connection rate limits (requests, pings).

mod driver;
pub mod order;
mod outbound;
pub mod rate;

use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

pub use driver::ConnDriver;
pub use order::{Dest, Order};
pub use outbound::Outbound;

use crate::wire::protocol::{ProtoError, Request, RequestId};
use crate::wire::ws::Decoder;

/// A request as parsed from one text frame, or why it could not be parsed; a connection
/// holds these while earlier requests are answered ([`order`]).
pub type Parsed = Result<(RequestId, Request), (RequestId, ProtoError)>;

/// What a connection's task needs from the shard that owns it.
pub trait ConnHost {
    /// The connection's entry (it exists until `forget`).
    fn entry(&mut self, key: usize) -> &mut ConnEntry;
    /// Bytes read from the connection: the HTTP head until upgraded, frames after.
    fn on_bytes(&mut self, key: usize, head: &mut Vec<u8>, decoder: &mut Decoder, bytes: &mut [u8]);
    /// Bytes written to some connection's socket (a counter).
    fn written(&mut self, bytes: usize);
    /// The connection's task ended: forget it.
    fn forget(&mut self, key: usize);
}

/// A connection named across shards: its slab key and a generation, so a reply for a
/// connection that has gone never reaches the next one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub key: u32,
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Http,
    /// Upgraded and authenticated, waiting in the admission queue.
    Queued,
    /// Upgraded, authenticated and admitted.
    Open,
    /// An HTTP API call waiting for its reply.
    Api,
    /// A close frame or a final HTTP response is queued; no new frames are accepted.
    Closing,
}

/// A connection's state in the shard's slab.
pub struct ConnEntry {
    /// Which connection holds this slab slot, for [`ConnRef`]; never reused in a process.
    pub generation: u64,
    pub phase: Phase,
    pub user: Rc<str>,
    pub name: Option<Rc<str>>,
    /// Rooms this connection receives, each with its index in the shard's subscriber list.
    pub rooms: Vec<(Arc<str>, u32)>,
    pub out: Outbound,
    /// The socket (owned by the connection's task, open as long as this entry exists): the
    /// idle check peeks at it.
    pub fd: Option<std::os::fd::RawFd>,
    pub waker: Option<Waker>,
    pub opened_at: Instant,
    pub last_recv: Instant,
    pub last_ping: Instant,
    /// The moment a closing connection (or an API call) is dropped if it has not finished.
    pub close_deadline: Option<Instant>,
    /// The peer sent a close frame, or this is a plain HTTP response: end once flushed.
    pub end_when_flushed: bool,
    /// Drop the socket at the next poll (timeouts).
    pub kill: bool,
    /// Malformed requests so far (`bad_request`, `too_large`): past a bound, closed 1008.
    pub malformed_requests: u32,
    /// The last `typing` notice (rate limit).
    pub last_typing: Option<Instant>,
    /// `rooms` queries (`--room-queries-per-connection-per-s`), from the first.
    pub rooms_rate: Option<crate::throttle::Rate>,
    /// Requests (`--messages-per-connection-*`) and WebSocket pings
    /// (`--pings-per-connection-per-s`) taken from this connection's buckets.
    pub requests: rate::Bucket,
    pub pings: rate::Bucket,
    /// `rate_limited` replies since a request was last let through: past
    /// `--rate-limited-replies-max`, closed 1008.
    pub rate_limited_in_row: u32,
    /// Decided to close (code, reason) once the answers it is owed are sent: nothing more
    /// it sends is read as a request meanwhile.
    pub close_when_answered: Option<(u16, &'static str)>,
    /// Counts in the instance's connections of its address (`--connections-per-ip-max`).
    pub ip_counted: bool,
    /// Counted in the instance's sockets per address whose request is not read yet
    /// (`--handshakes-per-ip-max`), until its request head is read or it goes.
    pub handshake_counted: bool,
    /// HTTP status of a successful reply to this connection's API call.
    pub api_ok_status: u16,
    /// Holds one of the instance's admission places (`Places`).
    pub admitted: bool,
    /// Waits in the instance's admission queue (asked the desk, no place yet), whatever
    /// its phase now (a waiting connection may be closing).
    pub queued: bool,
    /// The `exp` of the connection's token (seconds since the epoch; `None` in development
    /// mode): the shard's tick closes the connection 4001 once it is past (with the leeway),
    /// unless a `refresh` moved it.
    pub token_exp: Option<u64>,
    /// The peer's address (the per-address connection rate limit).
    pub peer: Option<std::net::IpAddr>,
    /// The admission-queue position last told to the client.
    pub queue_position: u32,
    /// Requests out and held, so they take effect in the order sent ([`order`]).
    pub order: Order<Parsed>,
    /// Test only: an `/autobahn` connection, which echoes every message (shard/echo.rs).
    #[cfg(feature = "autobahn")]
    pub echo: bool,
}

impl ConnEntry {
    pub fn new(generation: u64, now: Instant) -> ConnEntry {
        ConnEntry {
            generation,
            phase: Phase::Http,
            user: Rc::from(""),
            name: None,
            rooms: Vec::new(),
            out: Outbound::default(),
            fd: None,
            waker: None,
            opened_at: now,
            last_recv: now,
            last_ping: now,
            close_deadline: None,
            end_when_flushed: false,
            kill: false,
            malformed_requests: 0,
            last_typing: None,
            rooms_rate: None,
            requests: rate::Bucket::default(),
            pings: rate::Bucket::default(),
            rate_limited_in_row: 0,
            close_when_answered: None,
            ip_counted: false,
            handshake_counted: false,
            api_ok_status: 200,
            admitted: false,
            queued: false,
            token_exp: None,
            peer: None,
            queue_position: 0,
            order: Order::default(),
            #[cfg(feature = "autobahn")]
            echo: false,
        }
    }

    /// The task must not read: requests it read are still held.
    pub fn reading_paused(&self) -> bool {
        self.phase == Phase::Open && self.order.is_holding()
    }

    /// The client sent bytes the shard has not read yet: it is not idle, the shard is
    /// behind (its connection tasks wait while its ticker runs first).
    pub fn has_unread_bytes(&self) -> bool {
        self.fd.is_some_and(outbound::has_unread)
    }

    pub fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    pub fn room_index(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|(r, _)| &**r == room)
    }
}
