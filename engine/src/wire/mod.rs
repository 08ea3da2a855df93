//! # wire — bytes ⇄ typed values
//!
//! Everything a client can send arrives here first and leaves here as a typed value or as a
//! typed error that names its protocol code or HTTP status; everything the server sends is
//! encoded here. The rest of the engine never parses client bytes itself.
//!
//! - [`ws`]: WebSocket frames (RFC 6455): the incremental `Decoder`, encoding, close codes.
//! - [`http`]: a request head → [`http::Outcome`] (answer, API call, upgrade, fault), which
//!   carries the status of every answer it decides.
//! - [`response`]: HTTP/1.1 responses and their reason phrases; the leaf both `http` and
//!   `api` build on.
//! - [`api`]: `/api/*` → [`api::ApiCall`]; [`api::ApiError`], an HTTP status with a
//!   protocol error.
//! - [`auth`]: a JWT or the development-mode `?user=` → [`auth::Identity`].
//! - [`protocol`]: a text frame → [`protocol::Request`] (one parse function per op);
//!   replies and events.
//!
//! What wire never does: touch a shard, a socket, a buffer it was not handed, or the clock
//! (jsonwebtoken's `exp` check is the one read of the time, inside [`auth`]). Nothing here
//! blocks, and nothing a client sends can make it panic, so each function can be tested,
//! property-tested or fuzzed with bytes alone. Dependencies point inwards only: `response`
//! and `protocol` are leaves, `auth` and `ws` use nothing of the engine, `api` uses
//! `protocol`, `auth` and `response`, and `http` sits on top.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod http;
pub mod protocol;
pub mod response;
pub mod ws;
