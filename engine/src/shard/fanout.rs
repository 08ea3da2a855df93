//! Frames out: the local subscribers of each room, one frame per delivery shared by all of
//! them, replies to one connection, and the closing handshake. Every queue to a connection
//! is bounded by `outbound_queue_bytes_max` (a hard memory cap, sized for bursts); a
//! connection that would overflow it is closed 1013. A connection that stops reading is
//! closed earlier by the stall rule (`timers`, `--write-stall-timeout-ms`).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use super::coalesce::Coalesce;
use super::Shard;
use crate::conn::{ConnEntry, ConnRef, Phase};
use crate::mesh::msg::{Reply, Subscribe};
use crate::wire::protocol::{self, ErrorCode, ProtoError, RequestId};
use crate::wire::ws::{self, close};

/// Bad requests one connection may make before it is closed 1008: enough for a client with
/// a bug to see its errors in a log, few enough that a hostile one cannot keep the shard
/// parsing garbage.
const MALFORMED_REQUESTS_PER_CONNECTION_MAX: u32 = 64;

/// A `join` the home admitted, arriving at the connection's shard.
pub(super) struct Joined {
    pub(super) conn: ConnRef,
    pub(super) request: RequestId,
    pub(super) room: Arc<str>,
    pub(super) user: Arc<str>,
    pub(super) subscribe: Subscribe,
}

impl Shard {
    /// A home's answer to one of this shard's connections.
    pub(super) fn on_reply(&mut self, conn: ConnRef, reply: Reply) {
        let Some(key) = self.live(conn) else { return };
        if self.conns[key].phase == Phase::Api {
            return self.api_reply(key, reply);
        }
        match reply {
            Reply::Ok(json) => self.push_frame(key, ws::text(&json)),
            Reply::Error { request, error } => self.reply_error(key, request.as_deref(), &error),
        }
    }

    /// Answers one request with an error; malformed requests count towards closing.
    pub(super) fn reply_error(
        &mut self,
        key: usize,
        id: Option<&serde_json::value::RawValue>,
        err: &ProtoError,
    ) {
        self.metrics.protocol_errors.inc();
        self.push_frame(key, ws::text(&protocol::error(id, err)));
        // Only malformed requests count as abuse; refusals (`not_member`, `rate_limited`…)
        // are normal traffic.
        if !matches!(err.code, ErrorCode::BadRequest | ErrorCode::TooLarge) {
            return;
        }
        let entry = &mut self.conns[key];
        entry.malformed_requests += 1;
        if entry.malformed_requests > MALFORMED_REQUESTS_PER_CONNECTION_MAX {
            self.close_conn(key, close::POLICY, "too many bad requests", Unsent::Send);
        }
    }

    /// The home admitted a `join`: the connection starts receiving the room and gets the
    /// `ok` and the replay, in that order.
    pub(super) fn on_subscribed(&mut self, joined: Joined, ok: Bytes, replay: Vec<Bytes>) {
        let Joined {
            conn,
            request,
            room,
            user,
            subscribe,
        } = joined;
        let new = subscribe == Subscribe::New;
        let key = self
            .live(conn)
            .filter(|k| self.conns[*k].phase == Phase::Open);
        let already = key.is_some_and(|k| self.conns[k].room_index(&room).is_some());
        if new && (key.is_none() || already) {
            // The home counted a subscription this connection cannot take: give it back.
            self.release_subscription(&room, &user, conn);
        }
        let Some(key) = key else { return };
        if new && !already {
            if let Err(err) = self.check_rooms_per_connection(key) {
                // Joins sent back to back all passed the check at the connection; this one
                // is over.
                self.release_subscription(&room, &user, conn);
                return self.reply_error(key, request.as_deref(), &err);
            }
            let list = self.subs.entry(room.clone()).or_default();
            list.push(key as u32);
            let idx = (list.len() - 1) as u32;
            let rooms = &mut self.conns[key].rooms;
            // Most connections are in a room or two: grow one at a time up to 4, not to 4
            // at once (Vec's first growth), which is 72 bytes an idle connection never uses.
            if rooms.len() < 4 {
                rooms.reserve_exact(1);
            }
            rooms.push((room, idx));
        }
        // The replay's last page (at most `replay_page_messages`, a quarter of the bound in
        // messages of `body_bytes_max`; earlier pages came as `ReplayPage`, each asked for
        // once the queue was at most half the bound) fits beside what is queued; past the
        // bound, the connection is a slow consumer like for any frame.
        let max = self.cfg().outbound_queue_bytes_max as usize;
        let ok = ws::text(&ok);
        let bytes = ok.len() + replay.iter().map(Bytes::len).sum::<usize>();
        let entry = &mut self.conns[key];
        if !entry.out.is_empty() && entry.out.bytes() + bytes > max {
            return self.close_slow(key, Slow::Cap);
        }
        entry.out.push(ok);
        for frame in replay {
            entry.out.push(frame);
        }
        entry.wake();
    }

    pub(super) fn unsubscribe_local(&mut self, room: &Arc<str>, idx: u32) {
        let Some(list) = self.subs.get_mut(room) else {
            debug_assert!(false, "unsubscribe from a room with no local list");
            return;
        };
        let idx = idx as usize;
        list.swap_remove(idx);
        if let Some(&moved) = list.get(idx) {
            let rooms = &mut self.conns[moved as usize].rooms;
            if let Some(slot) = rooms.iter_mut().find(|(r, _)| r == room) {
                slot.1 = idx as u32;
            }
        }
        if list.is_empty() {
            self.subs.remove(room);
        }
    }

    /// One message for every local subscriber of `room`: framed once, queued to each.
    pub(super) fn deliver(
        &mut self,
        room: &str,
        payload: &[u8],
        received_at: Instant,
        except: Option<&str>,
    ) {
        let Shard {
            subs,
            conns,
            metrics,
            instance,
            coalesce,
            ..
        } = self;
        let Some(keys) = subs.get(room) else { return };
        let frame = ws::text(payload);
        let fan = Fan {
            frame: &frame,
            max: instance.cfg.outbound_queue_bytes_max as usize,
            except,
            now: Instant::now(),
        };
        let mut slow = Vec::new();
        let delivered = queue_to_subscribers(conns, keys, &fan, coalesce, &mut slow);
        metrics.deliveries.inc_by(delivered);
        metrics.fanout_latency.observe(received_at.elapsed());
        for key in slow {
            self.close_slow(key, Slow::Cap);
        }
    }

    /// Queues a frame to one connection, within its bound.
    pub(super) fn push_frame(&mut self, key: usize, frame: Bytes) {
        let max = self.cfg().outbound_queue_bytes_max as usize;
        let entry = &mut self.conns[key];
        if entry.phase == Phase::Closing {
            return;
        }
        // One frame always fits an empty queue: a reply larger than the bound (a `history`
        // page of long messages) is not a slow consumer.
        if !entry.out.is_empty() && entry.out.bytes() + frame.len() > max {
            return self.close_slow(key, Slow::Cap);
        }
        entry.out.push(frame);
        entry.wake();
    }

    /// Closes a slow consumer 1013: its queue would overflow `outbound_queue_bytes_max`, or
    /// its socket took nothing for `write_stall_timeout_ms`.
    pub(super) fn close_slow(&mut self, key: usize, why: Slow) {
        if self.conns[key].phase == Phase::Closing {
            return;
        }
        self.metrics.slow_consumer_closes.inc();
        match why {
            Slow::Cap => self.metrics.slow_consumer_cap_closes.inc(),
            Slow::Stall => self.metrics.slow_consumer_stall_closes.inc(),
        };
        self.close_conn(key, close::TRY_AGAIN_LATER, "slow consumer", Unsent::Drop);
    }

    /// Fails the WebSocket connection (RFC 6455 §7.1.7): the close frame goes out after what
    /// is queued (the answers to the messages before the bad frame, which Autobahn's 3.x, 4.x
    /// and 5.15 expect), then the TCP connection is closed without waiting for the client's
    /// close (a client that broke the protocol may never send one); one that does not read
    /// is dropped at `close_timeout_ms` (`close_conn`'s deadline).
    pub(super) fn fail_conn(&mut self, key: usize, code: u16, reason: &str) {
        self.close_conn(key, code, reason, Unsent::Send);
        self.conns[key].end_when_flushed = true;
    }

    /// Starts the closing handshake: queues a close frame (after the pending frames, or
    /// instead of them) and gives the client `close_timeout_ms` to take it.
    pub(super) fn close_conn(&mut self, key: usize, code: u16, reason: &str, unsent: Unsent) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg().close_timeout_ms);
        let entry = &mut self.conns[key];
        if entry.phase == Phase::Closing {
            return;
        }
        entry.phase = Phase::Closing;
        if unsent == Unsent::Drop {
            entry.out.drop_unsent();
        }
        entry.out.push(ws::close_frame(code, reason));
        entry.close_deadline = Some(deadline);
        entry.wake();
    }
}

/// One delivery, as the fan-out loop sees it.
struct Fan<'a> {
    /// The frame, encoded once: every subscriber's queue holds the same buffer.
    frame: &'a Bytes,
    /// `outbound_queue_bytes_max`.
    max: usize,
    /// The user whose connections do not get it.
    except: Option<&'a str>,
    now: Instant,
}

/// The fan-out loop: queues the frame to every open subscriber in `keys` but `except`'s
/// connections, and wakes those whose queue was empty (at once, or after
/// `--write-coalesce-us`: `coalesce`). A subscriber the frame would take past `max` queued
/// bytes goes to `slow` instead. Returns the deliveries. Allocates nothing per subscriber
/// (the test below: a queue keeps its storage while in use, `Outbound::trim_idle`).
fn queue_to_subscribers(
    conns: &mut Slab<ConnEntry>,
    keys: &[u32],
    fan: &Fan<'_>,
    coalesce: &mut Coalesce,
    slow: &mut Vec<usize>,
) -> u64 {
    let mut delivered = 0;
    for &key in keys {
        let entry = &mut conns[key as usize];
        if entry.phase != Phase::Open || fan.except.is_some_and(|u| *entry.user == *u) {
            continue;
        }
        if entry.out.bytes() + fan.frame.len() > fan.max {
            slow.push(key as usize);
            continue;
        }
        let was_idle = entry.out.is_empty();
        entry.out.push(fan.frame.clone());
        if was_idle {
            coalesce.wake_or_defer(entry, key, fan.now);
        }
        delivered += 1;
    }
    delivered
}

/// Why a connection is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slow {
    /// Its queue would pass the hard cap, `outbound_queue_bytes_max`.
    Cap,
    /// Its socket accepted nothing of its queue for `write_stall_timeout_ms`.
    Stall,
}

/// What a close does with the frames queued but not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unsent {
    /// They go out before the close frame (a normal close, a drain, a protocol error).
    Send,
    /// They are dropped (a slow consumer, a binary message: the client would not read them).
    Drop,
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;

    use super::*;
    use crate::alloc_count::allocations_in;

    /// Messages per round: more than a queue keeps for an idle connection, so each round's
    /// burst grows every subscriber's queue past it, as a busy room does.
    const BURST_MESSAGES: usize = 16;

    /// `subscribers` open connections, the keys of the room's subscriber list.
    fn subscribers(count: usize) -> (Slab<ConnEntry>, Vec<u32>) {
        let mut conns = Slab::new();
        let now = Instant::now();
        let keys = (0..count)
            .map(|i| {
                let mut entry = ConnEntry::new(i as u64, now);
                entry.phase = Phase::Open;
                entry.user = Rc::from(format!("user{i}").as_str());
                conns.insert(entry) as u32
            })
            .collect();
        (conns, keys)
    }

    /// One round as the shard does it: a burst fanned out, then every queue written to a
    /// socket (the peer reads it all, so nothing backs up). Returns the deliveries.
    fn round(
        conns: &mut Slab<ConnEntry>,
        keys: &[u32],
        coalesce: &mut Coalesce,
        (out, peer): (&UnixStream, &mut UnixStream),
    ) -> u64 {
        let mut delivered = 0;
        let mut slow = Vec::new();
        for i in 0..BURST_MESSAGES {
            let frame = ws::text(format!("{{\"op\":\"msg\",\"seq\":{i}}}").as_bytes());
            let fan = Fan {
                frame: &frame,
                max: 1 << 20,
                except: None,
                now: Instant::now(),
            };
            delivered += queue_to_subscribers(conns, keys, &fan, coalesce, &mut slow);
        }
        assert!(slow.is_empty());
        // The coalescer's turn, far enough ahead that every delayed wake is due.
        coalesce.wake_due(conns, Instant::now() + Duration::from_secs(1));
        let mut sink = [0u8; 64 * 1024];
        for &key in keys {
            let queue = &mut conns[key as usize].out;
            while !queue.is_empty() {
                queue
                    .write_to(out.as_raw_fd())
                    .expect("the peer reads everything");
                while let Ok(n) = peer.read(&mut sink) {
                    if n < sink.len() {
                        break;
                    }
                }
            }
        }
        delivered
    }

    /// Allocations of one round, after a first round has warmed the queues up.
    fn allocations_per_round(count: usize, coalesce_us: u64) -> u64 {
        let (mut conns, keys) = subscribers(count);
        let mut coalesce = Coalesce::new(Duration::from_micros(coalesce_us));
        let (out, mut peer) = UnixStream::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        round(&mut conns, &keys, &mut coalesce, (&out, &mut peer));
        let (delivered, allocations) =
            allocations_in(|| round(&mut conns, &keys, &mut coalesce, (&out, &mut peer)));
        assert_eq!(delivered, (count * BURST_MESSAGES) as u64);
        allocations
    }

    #[test]
    fn fan_out_allocates_the_same_for_10_and_1000_subscribers() {
        for coalesce_us in [0, 500] {
            let few = allocations_per_round(10, coalesce_us);
            let many = allocations_per_round(1_000, coalesce_us);
            assert_eq!(
                few, many,
                "{BURST_MESSAGES} messages to 10 subscribers: {few} allocations; to 1,000: \
                 {many} (--write-coalesce-us {coalesce_us})"
            );
        }
    }
}
