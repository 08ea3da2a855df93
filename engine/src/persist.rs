//! The engine's side of persistence: where completions land, and how stored records turn
//! back into protocol messages.
//!
//! The persistence threads are not glommio executors, so their completions do not travel on
//! the mesh: each shard has its own lock-free completion queue, and the persistence thread
//! rings the shard's doorbell (`mesh::Doorbell`) after pushing. The queue needs no
//! bound of its own: every completion answers an append or read that the bounded log or read
//! channel already admitted.

#![forbid(unsafe_code)]

use std::sync::Arc;

use crossbeam_queue::SegQueue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use sokdo_persistence::{
    Completion, CompletionSink, Handle, Stats, StoredMessage, COMMIT_SECONDS_BOUNDS,
};

use crate::mesh::{Doorbell, ShardId};
use crate::wire::protocol::Msg;

/// One completion queue per shard.
pub struct Completions {
    queues: Vec<SegQueue<Completion>>,
    /// The shards' doorbells (from the mesh): a completion rings its shard's.
    doorbells: Arc<[Doorbell]>,
}

impl Completions {
    pub fn new(doorbells: Arc<[Doorbell]>) -> Arc<Completions> {
        Arc::new(Completions {
            queues: (0..doorbells.len()).map(|_| SegQueue::new()).collect(),
            doorbells,
        })
    }

    /// The sinks `Persistence::open` wants, index = shard.
    pub fn sinks(self: &Arc<Self>) -> Vec<Arc<dyn CompletionSink>> {
        (0..self.queues.len())
            .map(|shard| {
                Arc::new(ShardSink {
                    completions: self.clone(),
                    shard: shard as ShardId,
                }) as Arc<dyn CompletionSink>
            })
            .collect()
    }

    pub fn pop(&self, shard: ShardId) -> Option<Completion> {
        self.queues[shard as usize].pop()
    }

    /// Completions waiting for `shard` (a gauge for metrics).
    pub fn depth(&self, shard: ShardId) -> usize {
        self.queues[shard as usize].len()
    }
}

struct ShardSink {
    completions: Arc<Completions>,
    shard: ShardId,
}

impl CompletionSink for ShardSink {
    fn complete(&self, c: Completion) {
        self.completions.queues[self.shard as usize].push(c);
        self.completions.doorbells[self.shard as usize].ring();
    }
}

/// A stored message as the protocol shows it (a tombstone has no body).
pub fn to_msg(m: StoredMessage) -> Msg {
    Msg {
        room: m.room,
        seq: m.seq,
        msg_id: m.msg_id,
        from: m.from,
        name: m.name,
        body: if m.deleted { None } else { m.body },
        ts: m.ts_ms,
        deleted: m.deleted,
    }
}

/// Exposes the log and sink figures on `/metrics`, read at scrape time (on whichever shard
/// serves the scrape: `Handle::stats` reads atomics only).
pub struct StatsCollector {
    pub persist: Handle,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.persist.stats();
        for (name, help, value) in gauges(&s) {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        for (name, help, value) in counters(&s) {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let buckets: Vec<(f64, u64)> = COMMIT_SECONDS_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(s.commit_buckets)
            .collect();
        let help = "Duration of each group commit: its log write and, with --durability sync, its fdatasync";
        let mut commits =
            encoder.encode_descriptor("wal_commit_seconds", help, None, MetricType::Histogram)?;
        commits.encode_histogram::<NoLabelSet>(
            s.commit_ns_sum as f64 / 1e9,
            s.commit_buckets.iter().sum(),
            &buckets,
            None,
        )
    }
}

fn gauges(s: &Stats) -> [(&'static str, &'static str, i64); 9] {
    [
        (
            "wal_bytes",
            "Bytes of write-ahead log on disk (and reserved)",
            s.wal_bytes as i64,
        ),
        (
            "wal_segments",
            "Write-ahead log segment files",
            s.wal_segments as i64,
        ),
        (
            "wal_records_pending_sink",
            "Records written to the log and waiting for the sink (the backlog)",
            s.wal_records_pending_sink as i64,
        ),
        (
            "sink_lag_records",
            "Records logged but not yet confirmed by the sink (persistence lag)",
            s.sink_lag_records as i64,
        ),
        (
            "wal_last_group_records",
            "Records in the last group commit",
            s.last_group_records as i64,
        ),
        (
            "sink_up",
            "1 while the sink (embedded store or MongoDB) accepts batches",
            i64::from(s.sink_up),
        ),
        (
            "sink_idle",
            "1 while the sink keeps up, writing its batches as SCHED_IDLE in the shards' idle time (--sink-idle-lag-ms)",
            i64::from(s.sink_idle),
        ),
        (
            "wal_write_failing",
            "1 while the write-ahead log cannot be written (sends refused, /readyz 503)",
            i64::from(s.wal_write_failing),
        ),
        (
            "sink_last_error_timestamp_seconds",
            "When the sink last failed a batch, Unix seconds (0: not since start-up)",
            (s.sink_last_error_unix_ms / 1000) as i64,
        ),
    ]
}

fn counters(s: &Stats) -> [(&'static str, &'static str, u64); 8] {
    [
        (
            "wal_records_appended",
            "Records appended to the log",
            s.records_appended,
        ),
        (
            "wal_group_commits",
            "Group commits (one write each)",
            s.group_commits,
        ),
        ("wal_fdatasyncs", "fdatasync calls on the log", s.fdatasyncs),
        (
            "sink_batches",
            "Batches confirmed by the sink",
            s.sink_batches,
        ),
        (
            "sink_errors",
            "Failed sink batches (retried)",
            s.sink_errors,
        ),
        (
            "sink_batches_behind",
            "Sink batches written as a normal thread because a record had waited --sink-idle-lag-ms",
            s.sink_batches_behind,
        ),
        (
            "wal_write_errors",
            "Failed log writes, syncs, rotations, trims and recovery probes",
            s.wal_write_errors,
        ),
        (
            "checkpoints_written",
            "Checkpoint files written (each lets the log be trimmed)",
            s.checkpoints_written,
        ),
    ]
}
