//! What the home shards and the cluster thread tell each other.
//!
//! Shard → cluster thread: a `send` to sequence goes on the cluster thread's bounded
//! channel (`try_send`: a full channel is `overloaded` for the client); interest and replay
//! notes go on a lock-free queue the thread drains on every turn (each follows from a
//! request a shard already admitted, and a lost note would leave an instance without its
//! room's messages). Cluster thread → shard: one lock-free queue per shard and the shard's
//! doorbell, like the persistence completions (`persist.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use crossbeam_queue::SegQueue;
use sokdo_replication::frame::{Meta, Record, RefusalCode};

use super::Event;
use crate::mesh::{Doorbell, ShardId};
use crate::wire::protocol::ProtoError;

/// A home shard's request of the cluster thread.
#[derive(Debug)]
pub enum ToCluster {
    /// Sequence this message (the engine's encoding, [`Payload`]) in `room`, once per
    /// retry key ([`retry_key`]); the answer comes back to `shard` under `token`.
    Publish {
        shard: ShardId,
        token: u64,
        room: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    /// A request about the room's metadata ([`super::meta::MetaRequest`], encoded) for the
    /// room's owner to decide; the answer comes back to `shard` under `token`.
    Meta {
        shard: ShardId,
        token: u64,
        room: String,
        request: Vec<u8>,
    },
}

/// A home shard's note to the cluster thread.
#[derive(Debug)]
pub enum Note {
    /// The room got its first local member (`on`) or lost its last; `last_seq` is what the
    /// home holds.
    Interest {
        room: String,
        on: bool,
        last_seq: u64,
    },
    /// The home received a record after a gap: it wants every record after `after_seq`.
    Replay { room: String, after_seq: u64 },
}

/// The cluster thread's answer or delivery to a home shard.
#[derive(Debug)]
pub enum FromCluster {
    /// The owner acknowledged the publish `token` at `seq`; `duplicate`: a retry, `seq` is
    /// the original's, and `original_ts` its `ts` (when its payload decodes).
    Published {
        token: u64,
        seq: u64,
        duplicate: bool,
        original_ts: Option<u64>,
    },
    /// The publish `token` was not sequenced.
    Refused {
        token: u64,
        code: RefusalCode,
        why: String,
    },
    /// Acknowledged records of `room`, in seq order (a live delivery or a replay).
    Records { room: String, records: Vec<Record> },
    /// The metadata request `token` is decided: the room's metadata a majority holds.
    MetaDone { token: u64, meta: Meta },
    /// The room's owner turned the metadata request `token` down.
    MetaRefused { token: u64, error: ProtoError },
    /// The room's metadata changed (or this instance registered interest): apply it.
    Meta { room: String, meta: Meta },
    /// A catch-up of `room` is complete: the home holds every record the owner had
    /// acknowledged when it answered.
    CaughtUp { room: String },
}

/// A message as a record carries it (JSON; the records of one room are opaque bytes to the
/// replication crate).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Payload {
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub body: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a payload serialises")
    }

    /// The retry key of this message, if it has a `client_msg_id`.
    pub fn retry_key(&self) -> Option<Vec<u8>> {
        Some(retry_key(&self.from, self.client_msg_id.as_deref()?))
    }

    pub fn decode(bytes: &[u8]) -> Option<Payload> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A send's retry key as the room's owner keeps it (opaque bytes to the replication
/// crate): the author's length (`u32` little-endian), the author, the `client_msg_id` — so
/// no two (author, id) pairs share a key, whatever bytes they hold.
pub fn retry_key(from: &str, client_msg_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + from.len() + client_msg_id.len());
    // An author is a user id (far below 4 GiB).
    key.extend_from_slice(&(from.len() as u32).to_le_bytes());
    key.extend_from_slice(from.as_bytes());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// The shards' side of the cluster thread: cloned into every home.
pub struct Port {
    pub(super) events: Sender<Event>,
    pub(super) notes: SegQueue<Note>,
    pub(super) inbox: Vec<SegQueue<FromCluster>>,
    /// Per shard, the records queued in its inbox (`--cluster-home-queue-records` bounds
    /// what [`Port::deliver_records`] adds).
    pub(super) queued: Vec<AtomicUsize>,
    pub(super) doorbells: Arc<[Doorbell]>,
}

impl Port {
    /// Queues a publish or a metadata request; `false` when the cluster thread's channel is
    /// full.
    pub fn publish(&self, req: ToCluster) -> bool {
        match self.events.try_send(Event::Shard(req)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The cluster thread ended (shutting down): nothing will answer.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Queues a note and wakes the thread (a full channel: it is awake anyway).
    pub fn note(&self, note: Note) {
        self.notes.push(note);
        let _ = self.events.try_send(Event::Wake);
    }

    /// What the cluster thread sent `shard`, one at a time.
    pub fn pop(&self, shard: ShardId) -> Option<FromCluster> {
        let msg = self.inbox.get(shard as usize)?.pop()?;
        if let FromCluster::Records { records, .. } = &msg {
            self.queued[shard as usize].fetch_sub(records.len(), Ordering::Relaxed);
        }
        Some(msg)
    }

    /// Records queued for `shard`.
    pub(super) fn queued(&self, shard: ShardId) -> usize {
        self.queued
            .get(shard as usize)
            .map_or(0, |q| q.load(Ordering::Relaxed))
    }

    /// Waiting for `shard` (a gauge).
    pub fn depth(&self, shard: ShardId) -> usize {
        self.inbox.get(shard as usize).map_or(0, SegQueue::len)
    }

    /// Counts `n` records about to be queued for `shard` ([`FromCluster::Records`], sent
    /// after the turn's commit), unless that would take its queue past `max` records: then
    /// `false`, and the caller catches the room up later instead. Counted from here until the
    /// shard pops them, so records waiting for the commit count too.
    pub(super) fn reserve(&self, shard: ShardId, n: usize, max: usize) -> bool {
        let Some(queued) = self.queued.get(shard as usize) else {
            return false;
        };
        // Only the cluster thread adds: a load then an add cannot overshoot. An empty queue
        // takes any batch (a replay answer holds up to `REPLAY_RECORDS_MAX`), so a home
        // always makes progress: at most `max + REPLAY_RECORDS_MAX` records are queued.
        let now = queued.load(Ordering::Relaxed);
        if now > 0 && now + n > max {
            return false;
        }
        queued.fetch_add(n, Ordering::Relaxed);
        true
    }

    pub(super) fn deliver(&self, shard: ShardId, msg: FromCluster) {
        if let Some(queue) = self.inbox.get(shard as usize) {
            queue.push(msg);
            self.doorbells[shard as usize].ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_keys_of_two_authors_never_collide() {
        assert_ne!(retry_key("ab", "c"), retry_key("a", "bc"));
        assert_eq!(retry_key("a", "bc"), b"\x01\x00\x00\x00abc");
        let payload = |id: Option<&str>| Payload {
            from: "ann".into(),
            name: None,
            body: "hi".into(),
            ts: 1,
            client_msg_id: id.map(str::to_owned),
        };
        assert_eq!(payload(None).retry_key(), None, "no client_msg_id, no key");
        assert_eq!(
            payload(Some("k1")).retry_key(),
            Some(retry_key("ann", "k1"))
        );
    }
}
