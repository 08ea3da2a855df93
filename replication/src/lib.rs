//! Replication: the instances behind a load balancer act as one chat service
//! (docs/REPLICATION.md).
//!
//! The engine depends on this crate, never the other way: it knows rooms only by their
//! ids, and records only as bytes with their positions.
#![forbid(unsafe_code)]
pub mod frame;
pub mod membership;
pub mod placement;
pub mod room;
pub mod sim;
