//! Integration tests: the real `sokdo` binary, real WebSocket clients.
// The engine's bans on locks and sleeps (engine/clippy.toml) protect shards; this code runs
// on the test's own threads, which poll with deadlines and share a log buffer.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "test threads, never a shard"
)]

mod support;

mod abuse;
mod abuse_rooms;
mod admission;
mod api;
mod auth;
mod cluster;
mod coalescing;
mod conformance;
mod delivery;
mod durability;
mod features;
mod lifecycle;
mod limits;
mod memory;
mod messaging;
mod mongo;
mod ordering;
mod profiling;
mod resets;
mod storage;
mod stress;
