//! # sokdo — a thread-per-core WebSocket chat engine
//!
//! One process runs one **shard** per core ([`shard`]): a glommio executor pinned to its
//! CPU, with its own `SO_REUSEPORT` listener, so the kernel spreads new sockets over the
//! shards. A shard owns everything it touches; shards share no locks and talk only by
//! messages on the lock-free [`mesh`].
//!
//! The story of a message, from socket to fan-out:
//!
//! 1. A socket is accepted by some shard (`shard::tasks`); its task (`conn::ConnDriver`)
//!    reads the HTTP head into a buffer lent by the shard. `http` routes it: health,
//!    metrics, the page, or `/ws`, where `auth` checks the JWT *before* the upgrade.
//! 2. After the upgrade, bytes go through `ws::Decoder` into frames, and each text frame
//!    through `protocol::parse` into a typed request (`shard::inbound`).
//! 3. The request goes to the **home shard** of its room (`placement`: FNV-1a of the room
//!    id) as a `ShardMsg::Home` (`mesh::msg`) — or is run at once when this shard is the
//!    home.
//! 4. The home (`home::Homes`) reserves the room's next `seq` (`room::Room`) and hands the
//!    record to the write-ahead log (the `sokdo-persistence` crate; completions come back
//!    through `persist`). Once the record is durable (`--durability sync`; at once with
//!    `async`) the message enters the room's ring, the sender gets its typed `Reply`, and the
//!    `msg` event's JSON goes **once to each shard with subscribers** (`ShardMsg::Deliver`).
//!    The home returns these messages; the shard sends them.
//! 5. Each of those shards frames it **once** (`ws::text`) and queues the same `Bytes` to
//!    every local subscriber, within `outbound_queue_bytes_max` (`shard::fanout`; overflow
//!    closes 1013).
//! 6. Each subscriber's task writes everything queued in one `sendmsg` (`conn::outbound`)
//!    — woken at once, or `--write-coalesce-us` later so that more deliveries share the
//!    call (`shard::coalesce`).
//!
//! Around that path: `config` (every limit a flag with its unit), `metrics` (Prometheus,
//! per shard, lock-free), admission past capacity and draining on SIGTERM (`shard`), room
//! features (`home`, `room`, `password`), HTTP beside the WebSocket (`api`, `accounts`),
//! and `liveness` (never half-alive). `docs/ARCHITECTURE.md` has the picture, the module
//! graph and the reasons.
//!
//! Modules are listed below lowest layer first; each uses only modules above it (no import
//! cycle: `docs/ARCHITECTURE.md` shows the command that checks it). Only [`config`] and
//! [`server`] are public: the binary needs nothing else.

// Leaves: no other module of the crate.
// Test only: the unit tests' allocator, which counts allocations per thread.
#[cfg(test)]
mod alloc_count;
mod clock;
pub mod config;
mod ip_counts;
mod liveness;
mod metrics;
mod placement;
mod places;
mod throttle;
// Pure codecs: bytes ⇄ typed values (ws, http, response, api, auth, protocol).
mod wire;
// State without I/O.
mod accounts;
mod password;
// Read from the host at start.
mod capacity;
mod room;
// Between shards and threads.
mod cluster;
mod conn;
mod instance;
mod mesh;
mod persist;
// The on-demand CPU profile (`/debug/pprof/profile`), sampled off the shards.
mod profiler;
// A room's home, then the shard that hosts homes and connections.
mod home;
pub mod server;
mod shard;
// The fuzz targets' entry points (`fuzz/`), with the feature `fuzzing` (and in the unit
// tests, which run them on their corpus): it uses `wire`.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
