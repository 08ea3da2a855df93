//! # sokdo — a thread-per-core WebSocket chat engine
//!
//! One process runs one **shard** per core ([`shard`]): a glommio executor pinned to its
//! CPU, with its own `SO_REUSEPORT` listener, so the kernel spreads new sockets over the
//! shards. A shard owns everything it touches; shards share no locks and talk only by
//! messages on the lock-free [`mesh`].
//!
//! The story of a message, from socket to fan-out:
//!
//! 1. A socket is accepted by some shard ([`shard::run`]); its task ([`conn::ConnDriver`])
//!    reads the HTTP head into a buffer lent by the shard. [`http`] routes it: health,
//!    metrics, the page, or `/ws`, where [`auth`] checks the JWT *before* the upgrade.
//! 2. After the upgrade, bytes go through [`ws::Decoder`] into frames, and each text frame
//!    through [`protocol::parse`] into a typed request.
//! 3. The request goes to the **home shard** of its room (a hash of the room id) as a
//!    [`shard::ShardMsg::Home`] — or is run at once when this shard is the home.
//! 4. The home ([`home`]) reserves the room's next `seq` ([`room::Room`]) and hands the
//!    record to the write-ahead log ([`persist`], the `sokdo-persistence` crate). Once the
//!    record is durable (`--durability sync`; at once with `async`) the message enters the
//!    room's ring, the sender gets its `ok`, and the `msg` event's JSON goes **once to each
//!    shard with subscribers** ([`shard::ShardMsg::Deliver`]).
//! 5. Each of those shards frames it **once** ([`ws::text`]) and queues the same `Bytes` to
//!    every local subscriber, within `outbound_queue_bytes_max` (overflow closes 1013).
//! 6. Each subscriber's task writes everything queued in one `sendmsg` ([`conn`]).
//!
//! Around that path: [`config`] (every limit a flag with its unit), [`metrics`]
//! (Prometheus, per shard, lock-free), admission past capacity and draining on SIGTERM
//! ([`shard`]), room features ([`home`], [`search`], [`password`]), and HTTP beside the
//! WebSocket ([`api`], [`accounts`]).
//! `docs/ARCHITECTURE.md` has the picture and the reasons.

pub mod accounts;
pub mod clock;
pub mod config;
pub mod conn;
mod home;
pub mod liveness;
pub mod mesh;
pub mod metrics;
pub mod password;
pub mod persist;
pub mod room;
pub mod search;
pub mod server;
pub mod shard;
pub mod wire;

// The codecs moved under `wire/`; these keep `crate::ws::…`, `crate::protocol::…` and the
// other old paths resolving for the modules that still use them.
pub(crate) use wire::{api, auth, http, protocol, ws};
