//! Integration tests: the real `sokdo` binary, real WebSocket clients.

mod support;

mod admission;
mod api;
mod auth;
mod durability;
mod features;
mod lifecycle;
mod limits;
mod messaging;
mod mongo;
mod stress;
