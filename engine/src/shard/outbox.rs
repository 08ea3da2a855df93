//! Messages for other shards whose channel on the mesh was full, kept in order, bounded.
//!
//! The mesh's channel to each shard holds `shard_channel_messages_max`; past it a sender
//! keeps its messages here, per destination, and sends them first when room appears (order
//! between two shards is what lets a home send a `join` reply and then live messages).
//!
//! The bound, `shard_outbox_messages_max` per destination, is kept by refusing **new work**:
//! while a destination is at the bound, a client request that would send to it (a request
//! whose room's home is there, or a request to a room homed here that has subscribers
//! there) is answered `unavailable` and changes nothing. What was already accepted is never
//! dropped: the replies, `msg` deliveries and releases that accepted work still causes may
//! queue past the bound. They are bounded by that work — the requests in flight and the
//! records waiting for the log — and `sokdo_shard_outbox_messages` shows the total.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use crate::mesh::msg::ShardMsg;
use crate::mesh::{Mesh, ShardId};

pub struct Outbox {
    /// This shard: the sender of every queue below.
    from: ShardId,
    queues: Vec<VecDeque<ShardMsg>>,
    messages_max: usize,
    /// Messages held for every destination (the gauge).
    len: usize,
}

impl Outbox {
    pub fn new(from: ShardId, shards: u16, messages_max: usize) -> Outbox {
        assert!(messages_max > 0);
        Outbox {
            from,
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            messages_max,
            len: 0,
        }
    }

    /// Sends `msg` to `to` (another shard), or keeps it, in order, when the channel is full.
    pub fn send(&mut self, mesh: &Mesh<ShardMsg>, to: ShardId, msg: ShardMsg) {
        debug_assert_ne!(to, self.from, "a shard applies its own messages at once");
        let queue = &mut self.queues[to as usize];
        if queue.is_empty() {
            match mesh.try_send(self.from, to, msg) {
                Ok(()) => return,
                Err(msg) => {
                    mesh.mark_stalled(self.from, to);
                    queue.push_back(msg);
                }
            }
        } else {
            queue.push_back(msg);
        }
        self.len += 1;
    }

    /// Sends what the channels take now, in order; called whenever this shard's inbox runs
    /// (a receiver that made room rings the sender).
    pub fn flush(&mut self, mesh: &Mesh<ShardMsg>) {
        if self.len == 0 {
            return;
        }
        for (to, queue) in self.queues.iter_mut().enumerate() {
            while let Some(msg) = queue.pop_front() {
                if let Err(msg) = mesh.try_send(self.from, to as ShardId, msg) {
                    queue.push_front(msg);
                    mesh.mark_stalled(self.from, to as ShardId);
                    break;
                }
                self.len -= 1;
            }
        }
        debug_assert_eq!(
            self.len,
            self.queues.iter().map(VecDeque::len).sum::<usize>()
        );
    }

    /// Messages held for every destination.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether messages wait for `to`: a client request for a room homed there waits too.
    pub fn has_backlog(&self, to: ShardId) -> bool {
        to != self.from && !self.queues[to as usize].is_empty()
    }

    /// Whether `to` is at the bound: new work that would send to it is refused.
    pub fn is_full(&self, to: ShardId) -> bool {
        to != self.from && self.queues[to as usize].len() >= self.messages_max
    }

    /// Whether any destination is at the bound (the cheap test before a closer look).
    pub fn any_full(&self) -> bool {
        self.len >= self.messages_max && self.queues.iter().any(|q| q.len() >= self.messages_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::Fault;

    fn msg() -> ShardMsg {
        ShardMsg::Fault(Fault::PanicLog)
    }

    /// Goal: a full channel keeps messages in order in the outbox, the bound is reported
    /// per destination, and a flush after the receiver drained sends them in order.
    #[test]
    fn keeps_order_reports_the_bound_and_flushes() {
        let mesh = Mesh::<ShardMsg>::new(2, 2);
        let mut outbox = Outbox::new(0, 2, 3);
        for _ in 0..5 {
            outbox.send(&mesh, 1, msg());
        }
        assert_eq!(outbox.len(), 3, "two went on the channel, three wait");
        assert!(outbox.has_backlog(1) && outbox.is_full(1) && outbox.any_full());
        assert!(
            !outbox.is_full(0),
            "a shard is never backed up towards itself"
        );
        assert_eq!(mesh.drain(1, 10, |_, _| {}), 2);
        outbox.flush(&mesh);
        assert_eq!(outbox.len(), 1);
        assert!(!outbox.is_full(1) && !outbox.any_full());
        assert_eq!(mesh.drain(1, 10, |_, _| {}), 2);
        outbox.flush(&mesh);
        assert_eq!(outbox.len(), 0);
        assert!(!outbox.has_backlog(1));
        assert_eq!(mesh.drain(1, 10, |_, _| {}), 1);
    }
}
