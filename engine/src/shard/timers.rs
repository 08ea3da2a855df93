//! Time on a shard: heartbeats, timeouts, the gauges, admission of waiting connections, and
//! draining on SIGTERM (closes spread over `drain_spread_ms`). Run by the ticker.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::fanout::{Slow, Unsent};
use super::Shard;
use crate::conn::Phase;
use crate::wire::protocol;
use crate::wire::ws::{self, close};

pub(super) struct DrainState {
    started: Instant,
    closes_per_tick: usize,
}

/// Knuth's multiplicative hash constant (2^32 / φ): spreads consecutive connection
/// generations evenly over `0..=reconnect_after_ms`.
const SPREAD_MULTIPLIER: u64 = 2_654_435_761;

impl Shard {
    /// Heartbeats, timeouts, gauges and draining, `late` past the tick asked for (zero
    /// unless the shard stalled). Returns true once the shard may stop.
    pub(super) fn on_tick(&mut self, now: Instant, late: Duration) -> bool {
        self.check_connections(now, late);
        self.pace_replays();
        self.desk_tick(now);
        self.ip_limiter.expire(now);
        self.homes.tick_cache();
        self.set_gauges();
        if self.draining.is_none() && self.instance.mesh.drain_requested() {
            self.begin_drain(now);
        }
        self.drain_step(now)
    }

    /// Pings, handshake and close deadlines, idle connections, stalled writes. One pass over
    /// the connections, which the heartbeats need anyway; the stall rule adds an O(1) check
    /// to it (`Outbound::stalled_for`).
    ///
    /// `late`: how long the shard itself could not run (a stall: the core held, the thread
    /// descheduled). It read nothing and sent no ping meanwhile, so that time is not the
    /// clients' silence: each one's idle clock is moved on by it. Without this, the first
    /// tick after a stall longer than the idle timeout — the ticker's queue always runs
    /// first — closed every client 1001 `idle timeout`, those that had sent included
    /// (their bytes still unread in the socket: the close then reset them). Likewise a
    /// client whose bytes wait unread in its socket is not idle, however late the shard's
    /// connection tasks are in reading them. And a socket that took nothing while the shard
    /// was not writing is not a write stall (`Outbound::stalled_for`).
    fn check_connections(&mut self, now: Instant, late: Duration) {
        let cfg = &self.instance.cfg;
        let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let handshake = Duration::from_millis(cfg.handshake_timeout_ms);
        let write_stall = Duration::from_millis(cfg.write_stall_timeout_ms);
        let mut idle_keys = Vec::new();
        let mut stalled_keys = Vec::new();
        let mut expired_keys = Vec::new();
        let now_s = crate::wire::auth::now_unix_s();
        let auth = &self.instance.auth;
        let mut queued = 0;
        for (key, entry) in self.conns.iter_mut() {
            if !late.is_zero() {
                entry.last_recv = (entry.last_recv + late).min(now);
            }
            queued += entry.out.bytes();
            // An idle connection holds no queue memory, a busy one keeps its storage
            // (issue 14: `Outbound::trim_idle`).
            entry.out.trim_idle();
            entry.order.release_if_idle();
            let stalled = entry.out.stalled_for(now, late) >= write_stall;
            match entry.phase {
                Phase::Open | Phase::Queued if stalled => stalled_keys.push(key),
                Phase::Open | Phase::Queued
                    if entry.token_exp.is_some_and(|exp| auth.expired(exp, now_s)) =>
                {
                    expired_keys.push(key)
                }
                Phase::Http if now - entry.opened_at > handshake => entry.kill = true,
                Phase::Closing | Phase::Api if entry.close_deadline.is_some_and(|d| now > d) => {
                    entry.kill = true
                }
                Phase::Open | Phase::Queued if now - entry.last_recv > idle => {
                    if entry.has_unread_bytes() {
                        // Sent, not yet read: the shard is behind, not the client silent.
                        entry.last_recv = now;
                    } else {
                        idle_keys.push(key);
                    }
                }
                Phase::Open | Phase::Queued if now - entry.last_ping >= heartbeat => {
                    entry.last_ping = now;
                    entry.out.push(ws::ping());
                }
                _ => continue,
            }
            entry.wake();
        }
        for key in idle_keys {
            self.metrics.idle_timeout_closes.inc();
            self.close_conn(key, close::GOING_AWAY, "idle timeout", Unsent::Send);
        }
        for key in stalled_keys {
            self.close_slow(key, Slow::Stall);
        }
        for key in expired_keys {
            self.metrics.token_expired_closes.inc();
            self.close_conn(key, close::TOKEN_EXPIRED, "token expired", Unsent::Send);
        }
        self.metrics.outbound_queue_bytes.set(queued as i64);
    }

    fn set_gauges(&self) {
        let (m, instance) = (&self.metrics, &self.instance);
        let clustered = instance
            .cluster
            .as_ref()
            .map_or(0, |c| c.port.depth(self.id));
        let inbound =
            instance.mesh.depth(self.id) + instance.completions.depth(self.id) + clustered;
        m.inbox_depth.set(inbound as i64);
        m.shard_outbox_messages.set(self.outbox.len() as i64);
        m.home_requests_waiting.set(self.homes.waiting() as i64);
        m.rooms_homed.set(self.homes.len() as i64);
        m.room_cache_bytes.set(self.homes.cache_bytes() as i64);
    }

    fn begin_drain(&mut self, now: Instant) {
        let open = self.conns.len();
        let spread_ms = self.cfg().drain_spread_ms;
        let ticks = (spread_ms / self.tick.as_millis().max(1) as u64).max(1) as usize;
        let closes_per_tick = if spread_ms == 0 {
            usize::MAX
        } else {
            open.div_ceil(ticks).max(1)
        };
        tracing::info!(shard = self.id, open, closes_per_tick, "draining");
        self.draining = Some(DrainState {
            started: now,
            closes_per_tick,
        });
    }

    fn drain_step(&mut self, now: Instant) -> bool {
        let Some(drain) = &self.draining else {
            return false;
        };
        let elapsed = now - drain.started;
        // Stay up (answering /readyz 503) for the whole spread, so the load balancer sees
        // it, even when this shard has no connections left.
        let spread_over = elapsed >= Duration::from_millis(self.cfg().drain_spread_ms);
        if (self.conns.is_empty() && spread_over && super::offload::in_flight() == 0)
            || elapsed > Duration::from_millis(self.cfg().drain_timeout_ms)
        {
            return true;
        }
        let reconnect_max = self.cfg().reconnect_after_ms;
        let batch: Vec<(usize, u64)> = self
            .conns
            .iter()
            .filter(|(_, e)| matches!(e.phase, Phase::Open | Phase::Queued))
            .take(drain.closes_per_tick)
            .map(|(k, e)| (k, e.generation))
            .collect();
        for (key, generation) in batch {
            // Spread reconnects: each client waits a different share of the maximum.
            let reconnect_after_ms =
                generation.wrapping_mul(SPREAD_MULTIPLIER) % (reconnect_max + 1);
            let event = protocol::event(
                "closing",
                serde_json::json!({"reason": "shutdown", "reconnect_after_ms": reconnect_after_ms}),
            );
            self.push_frame(key, ws::text(&event));
            self.close_conn(key, close::GOING_AWAY, "server draining", Unsent::Send);
        }
        false
    }
}
