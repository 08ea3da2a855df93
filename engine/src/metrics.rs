//! Prometheus metrics, one set per shard (label `shard`).
//!
//! Every metric a shard writes is its own: counters and gauges are relaxed atomics that only
//! the owning shard writes, so the message path takes no lock and shares no cache line with
//! another shard. The registry itself is only read, by whichever shard serves `/metrics`.
//! prometheus-client's `Histogram` takes a mutex on every observation, so the latency
//! histogram here is a fixed set of atomic buckets encoded through the same registry.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// Upper bounds of the latency buckets, in seconds: 10 µs … ~5 s, doubling.
const LATENCY_BOUNDS_S: [f64; 20] = {
    let mut bounds = [0.0; 20];
    let mut i = 0;
    let mut b = 0.000_01;
    while i < 20 {
        bounds[i] = b;
        b *= 2.0;
        i += 1;
    }
    bounds
};

/// A histogram written by one shard without locks.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let idx = LATENCY_BOUNDS_S.partition_point(|b| *b < secs);
        self.0.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_S
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Declares every per-shard metric once: the family registered in [`Metrics`], the child
/// each shard keeps in [`ShardMetrics`], and the line that hands one to the other.
macro_rules! shard_metrics {
    ($( $field:ident : $kind:ty = $name:literal, $help:literal; )*) => {
        /// The families, registered once; each shard takes its own children at start-up.
        pub struct Metrics {
            registry: Registry,
            $( $field: Family<ShardLabel, $kind>, )*
        }

        /// One shard's own metric children.
        #[derive(Clone)]
        pub struct ShardMetrics {
            $( pub $field: $kind, )*
        }

        impl Metrics {
            pub fn new() -> Metrics {
                let mut registry = Registry::with_prefix("sokdo");
                $(
                    let $field = Family::<ShardLabel, $kind>::default();
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $( $field, )* }
            }

            pub fn for_shard(&self, shard: u16) -> ShardMetrics {
                let label = ShardLabel { shard: shard.to_string() };
                ShardMetrics { $( $field: self.$field.get_or_create(&label).clone(), )* }
            }
    /// Adds metrics read at scrape time (the persistence figures). Call before sharing.
    pub fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    /// The Prometheus text exposition of every shard's metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
        }
    };
}

shard_metrics! {
    connections: Gauge = "connections", "Open connections (any phase)";
    connections_accepted: Counter = "connections_accepted", "Sockets accepted";
    connections_refused: Counter = "connections_refused", "Sockets refused with HTTP 503 (instance full or draining)";
    connections_queued: Gauge = "connections_queued", "Connections on this shard waiting in the instance's admission queue";
    connections_rate_limited: Counter = "connections_rate_limited", "Upgrades refused with HTTP 429: their address passed --connections-per-ip-per-s / --connections-per-ip-burst";
    room_queries_rate_limited: Counter = "room_queries_rate_limited", "`rooms` queries refused `rate_limited` (--room-queries-per-connection-per-s)";
    room_password_failures: Counter = "room_password_failures", "Private-room `join`s with a wrong password (counted on the room's home)";
    room_password_refusals: Counter = "room_password_refusals", "Private-room `join`s with a password refused before any check: too many failures, a check of the user in flight (`rate_limited`) or --password-checks-in-flight-max reached (`unavailable`)";
    login_refusals: Counter = "login_refusals", "`/api/auth/login|password` calls refused 429: the account from that address, or the address, passed --login-failures-max / --login-failures-per-ip-max";
    handshakes_per_ip_refused: Counter = "handshakes_per_ip_refused", "Sockets closed at accept: their address held --handshakes-per-ip-max sockets whose HTTP request was not read yet";
    connections_per_ip_refused: Counter = "connections_per_ip_refused", "Upgrades refused with HTTP 429: their address held --connections-per-ip-max connections";
    rate_limited_requests: Counter = "rate_limited_requests", "Requests answered `rate_limited`: their connection passed --messages-per-connection-per-s / --messages-per-connection-burst";
    rate_limit_closes: Counter = "rate_limit_closes", "Connections closed 1008 `rate limit exceeded` (more than --rate-limited-replies-max `rate_limited` replies in a row)";
    ping_flood_closes: Counter = "ping_flood_closes", "Connections closed 1008 `ping rate exceeded` (--pings-per-connection-per-s)";
    messages_in: Counter = "messages_in", "Messages accepted and sequenced by their room's home";
    deliveries: Counter = "deliveries", "Message frames queued to subscribers";
    bytes_out: Counter = "bytes_out", "Bytes written to sockets";
    cross_shard_messages: Counter = "cross_shard_messages", "Messages sent to other shards";
    inbox_depth: Gauge = "inbox_depth", "Messages and completions waiting in this shard's inbound queues (other shards, persistence)";
    shard_outbox_messages: Gauge = "shard_outbox_messages", "Messages this shard holds for other shards whose channel was full";
    shard_outbox_refusals: Counter = "shard_outbox_refusals", "Requests refused `unavailable` because a shard they reach was backed up (shard_outbox_messages_max)";
    home_requests_waiting: Gauge = "home_requests_waiting", "Requests of rooms homed here waiting for the persistence threads (durable acks, store reads)";
    outbound_queue_bytes: Gauge = "outbound_queue_bytes", "Bytes queued to this shard's connections";
    slow_consumer_closes: Counter = "slow_consumer_closes", "Connections closed 1013 `slow consumer`, for either reason below";
    slow_consumer_cap_closes: Counter = "slow_consumer_cap_closes", "Slow-consumer closes of a connection whose queue would pass outbound_queue_bytes_max (the hard cap)";
    slow_consumer_stall_closes: Counter = "slow_consumer_stall_closes", "Slow-consumer closes of a connection whose socket accepted no byte of its queue for write_stall_timeout_ms";
    idle_timeout_closes: Counter = "idle_timeout_closes", "Connections closed 1001 `idle timeout`: nothing (not even a pong) read from them for --idle-timeout-ms, the shard's own stalls not counted";
    token_expired_closes: Counter = "token_expired_closes", "Connections closed 4001 `token expired`: their token's exp (+ --jwt-leeway-s) passed without a refresh";
    protocol_errors: Counter = "protocol_errors", "Requests answered with an error";
    rooms_homed: Gauge = "rooms_homed", "Rooms whose home is this shard";
    room_cache_bytes: Gauge = "room_cache_bytes", "Estimated bytes of the recent messages (rings) and search indexes of the rooms homed here, bounded by --room-cache-bytes-per-shard";
    room_cache_evictions: Counter = "room_cache_evictions", "Rooms whose ring and search index were dropped to keep the shard under --room-cache-bytes-per-shard (their history is read from the store)";
    room_cache_evicted_messages: Counter = "room_cache_evicted_messages", "Messages dropped from rooms' rings by those evictions";
    stalls: Counter = "stalls", "Ticks of this shard's timer that fired over 50 ms late: a task held the core (see --detect-stalls for its backtrace)";
    debug_profiles: Counter = "debug_profiles", "CPU profiles started by GET /debug/pprof/profile (counted on the shard that took the request)";
    debug_profile_running: Gauge = "debug_profile_running", "1 on the shard whose /debug/pprof/profile is sampling or rendering (one per process at a time)";
    fanout_latency: LatencyHistogram = "fanout_latency_seconds", "From a send arriving at a shard to its frame being queued to the subscribers of another (or the same) shard";
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_shard_labels_and_histogram() {
        let metrics = Metrics::new();
        let s1 = metrics.for_shard(1);
        s1.deliveries.inc_by(3);
        s1.fanout_latency.observe(Duration::from_micros(30));
        let text = metrics.encode();
        assert!(
            text.contains(r#"sokdo_deliveries_total{shard="1"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sokdo_fanout_latency_seconds_count{shard="1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sokdo_fanout_latency_seconds_bucket{le="0.00004",shard="1"} 1"#)
                || text.contains("le=\"4e-5\""),
            "{text}"
        );
    }
}
