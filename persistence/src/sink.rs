//! What a sink is: somewhere batches of records are applied idempotently and read back.
//!
//! Two implementations: the embedded [`store`](crate::store) and [`mongo`](crate::mongo).
//! Each comes as a writer (owned by the sink thread) and a reader (owned by the read thread);
//! both sides share the underlying database handle.

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::contract::{Error, ReadRequest, Record, RoomSnapshot, StoredMessage};

pub trait Sink: Send {
    /// Applies the batch. Must be idempotent: a batch may be applied again after a crash or a
    /// failed attempt. `Ok` means every record is durable in the sink.
    fn apply(&mut self, batch: &[(u64, Arc<Record>)]) -> Result<(), Error>;
}

pub trait SinkReader: Send {
    /// Messages (and tombstones) in the requested range, ascending by seq, at most
    /// `req.limit()`.
    fn read(&mut self, req: &ReadRequest) -> Result<Vec<StoredMessage>, Error>;
}

/// A sink opened at start-up: writer, reader and the rooms it holds — or, for a sink that
/// could not be reached (MongoDB down), why not; its writer then keeps retrying.
pub struct Opened {
    pub sink: Box<dyn Sink>,
    pub reader: Box<dyn SinkReader>,
    pub rooms: Result<Vec<RoomSnapshot>, Error>,
}
