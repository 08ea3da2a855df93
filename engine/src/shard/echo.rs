//! Test only (cargo feature `autobahn`, never in a default build): `GET /autobahn` upgrades
//! to a connection that echoes every message, so that the Autobahn WebSocket cases
//! (docs/CONFORMANCE.md), which expect an echo server, judge sokdo's own WebSocket layer.
//! Nothing else differs from `/ws`: the same handshake checks and authentication
//! (`wire::http`), the same `wire::ws` decoder and encoder, the same connection task,
//! queue, bounds, closes and timers. Only a whole text or binary message is echoed instead
//! of being parsed as a request; an echo connection takes no admission place and gets no
//! `hello`.
#![forbid(unsafe_code)]

use bytes::Bytes;

use super::Shard;
use crate::conn::Phase;

impl Shard {
    /// An upgraded `/autobahn` connection: open at once, echoing.
    pub(super) fn echo_upgraded(&mut self, key: usize, response: Bytes) {
        let entry = &mut self.conns[key];
        entry.phase = Phase::Open;
        entry.echo = true;
        entry.out.push(response);
        entry.wake();
    }

    /// Queues the echo of one message, within the connection's bound like any frame.
    /// Returns true: the connection reads on.
    pub(super) fn echo(&mut self, key: usize, frame: Bytes) -> bool {
        self.push_frame(key, frame);
        true
    }
}
