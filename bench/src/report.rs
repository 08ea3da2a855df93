//! The JSON report: every figure a run produced. Its schema is documented in
//! `docs/BENCHMARKS.md`; change both together.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `--json` writes: one or more runs (several for `steady --preset webchat` and for
/// `compare`), plus the comparison table when there is one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub command: String,
    pub started_unix_s: u64,
    pub host: Host,
    pub runs: Vec<Run>,
    pub comparison: Option<Comparison>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Host {
    pub cpus: usize,
    pub bench_cpus: Option<String>,
    pub server_cpus: Option<String>,
    pub server_memory_limit_bytes: Option<u64>,
    /// `compare`: processes per target, sharing its CPUs and memory limit.
    #[serde(default)]
    pub server_processes: Option<u64>,
    /// `compare --server-cpu-quota-percent`: the CPU quota of each target's cgroup, in % of
    /// one CPU (all of a target's processes together).
    #[serde(default)]
    pub server_cpu_quota_percent: Option<f64>,
    /// `compare` with target `sokdo-cluster`: its instances, and HAProxy's `maxconn` in front
    /// of them (bounded by the open-file limit: two files per connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_instances: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy_maxconn: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// `ramp`, `fanout`, `steady:ktb`, `idle`, …
    pub scenario: String,
    /// `sokdo`, `sokdo-base`, `socketio`, `ws`, `tokio`, or `--target-name`.
    pub target: String,
    pub protocol: String,
    pub server: String,
    /// `compare`: the binary the target's processes ran (a Node peer: its script), which
    /// tells two sokdo builds (`sokdo`, `sokdo-base`) apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_bin: Option<String>,
    /// The scenario's flags, as given.
    pub config: serde_json::Value,
    pub duration_s: f64,
    pub summary: Summary,
    pub generator: Generator,
    /// One sample per stats interval (1 s by default).
    pub timeline: Vec<Sample>,
    /// `ramp` only: one entry per step.
    pub steps: Vec<Step>,
    /// `steady` only: the seed's targets, each with the measured value and a verdict.
    pub checks: Vec<Check>,
    pub passed: Option<bool>,
    /// `soak` only: the server's resources sampled every few seconds, and the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<Soak>,
}

/// A soak's samples of the server (every `--sample-interval-s`) and its flatness verdict,
/// computed over the samples after the warm-up.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Soak {
    pub samples: Vec<SoakSample>,
    pub warmup_s: f64,
    /// Least-squares slopes over the samples after the warm-up, per hour.
    pub rss_slope_bytes_per_h: Option<f64>,
    pub fds_slope_per_h: Option<f64>,
    /// The first and last sample after the warm-up.
    pub rss_after_warmup_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub fds_after_warmup: Option<u64>,
    pub fds_end: Option<u64>,
    /// The slope over the measured window, in % of the window's mean (RSS) or in fds.
    pub rss_growth_percent: Option<f64>,
    pub fds_growth: Option<f64>,
    /// Flat: both growths within `--rss-growth-max-percent` / `--fds-growth-max`.
    pub flat: Option<bool>,
    pub verdict: String,
    /// Churn connections that joined, left as planned, failed.
    pub churn_ok: u64,
    pub churn_closed: u64,
    pub churn_fail: u64,
    /// Chatting users whose session ended in an error (a drop), by error kind; the dropped
    /// users that joined again (`--reconnect-ms`) and the attempts that failed.
    #[serde(default)]
    pub users_dropped: u64,
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    #[serde(default)]
    pub reconnects: u64,
    #[serde(default)]
    pub reconnect_fail: u64,
    /// No user dropped, every send acked and delivered (received = acked × members), the
    /// server reachable, no panic in its log; `verdict` starts with what was not so.
    #[serde(default)]
    pub clean: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SoakSample {
    pub t_s: f64,
    /// Σ VmRSS and Σ open fds (/proc/PID/fd) of the server's processes.
    pub rss_bytes: Option<u64>,
    pub fds: Option<u64>,
    /// The bench's users connected, and churn connections joined so far.
    pub users: u64,
    pub churn_ok: u64,
    /// `sokdo_*` gauges scraped from /metrics, summed over shards and processes (absent
    /// when the scrape failed or the target is not sokdo).
    pub gauges: std::collections::BTreeMap<String, f64>,
    /// The close counters and stalls of /metrics (`soak::COUNTERS`), cumulative, likewise.
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, f64>,
    /// Chatting users dropped since the previous sample, by error kind.
    #[serde(default)]
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Dropped users that joined again so far.
    #[serde(default)]
    pub reconnects: u64,
}

impl Run {
    /// "server CPU: 12.30 s (41% of one CPU over 30 s); server CPUs busy 14.00 s …; cgroup
    /// cpu quota 20000 100000 …": what the server used over the run, when its pids were known.
    pub fn server_cpu_line(&self) -> Option<String> {
        let r = self;
        let s = &r.summary;
        let cpu_s = s.server_cpu_s?;
        let mut line = format!(
            "   server CPU: {cpu_s:.2} s ({:.0}% of one CPU over {:.0} s)",
            cpu_s / r.duration_s.max(1e-3) * 100.0,
            r.duration_s
        );
        if let Some(busy) = s.server_cpus_busy_s {
            line.push_str(&format!(
                "; server CPUs busy {busy:.2} s (softirq included)"
            ));
        }
        if let Some(max) = &s.server_cgroup_cpu_max {
            if !max.starts_with("max") {
                line.push_str(&format!("; cgroup cpu quota {max} (µs per period)"));
            }
        }
        Some(line)
    }

    /// A cluster's figures in words (stdout, the HTML notes): how the balancer spread the
    /// users, the bytes between instances per delivery, the balancer's own CPU and memory.
    pub fn cluster_lines(&self) -> Vec<String> {
        let Some(c) = &self.summary.cluster else {
            return Vec::new();
        };
        let per = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let mut lines = vec![
            format!(
                "cluster: {} instances, connections per instance at the end {:?}",
                c.instances, c.connections_by_instance
            ),
            format!(
                "between instances: {} bytes in {} frames ({} B per delivery, {} B per acked \
                 send), {} membership datagrams, {} links dropped",
                c.link_bytes_out,
                c.link_frames_out,
                per(c.link_bytes_per_delivery),
                per(c.link_bytes_per_ack),
                c.datagrams_sent,
                c.link_drops
            ),
        ];
        if let (Some(cpu), Some(rss)) = (c.balancer_cpu_s, c.balancer_rss_bytes) {
            lines.push(format!(
                "load balancer: {cpu:.2} s CPU ({:.0}% of one CPU), RSS {:.1} MiB (not in the \
                 server's figures)",
                cpu / self.duration_s.max(1e-3) * 100.0,
                rss as f64 / 1048576.0
            ));
        }
        lines
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub users_attempted: u64,
    pub users_peak: u64,
    /// `ramp`: the highest user count held at the end of a step that stayed healthy.
    pub users_held: u64,
    /// Users per server process (`--server` order) when `users_held` was measured.
    #[serde(default)]
    pub users_by_server: Vec<u64>,
    pub connect_ok: u64,
    pub connect_fail: u64,
    pub disconnects: u64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// Σ over rooms of acked sends × members; `None` when membership changed while sending.
    pub expected_deliveries: Option<u64>,
    /// Deliveries per second while publishing.
    pub deliveries_per_s: f64,
    pub sends_per_s: f64,
    pub latency_ms: Latency,
    pub session_length_s_mean: f64,
    pub errors: BTreeMap<String, u64>,
    /// The server stopped answering (connects failing past the threshold, or gone).
    pub unreachable: bool,
    pub stop_reason: String,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
    /// `compare`: the target's cgroup — peak memory charged to it, and OOM kills in it.
    #[serde(default)]
    pub server_cgroup_memory_peak_bytes: Option<u64>,
    #[serde(default)]
    pub server_oom_kills: Option<u64>,
    /// User + system CPU seconds of the server's processes (and their children) from the
    /// scenario's start, before the first connect, to its end (`--server-pid`).
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    /// Busy seconds (all but idle and iowait, softirq included) of `--server-cpus` over the
    /// same window: also the kernel's TCP work on those CPUs, not always charged to the pids.
    #[serde(default)]
    pub server_cpus_busy_s: Option<f64>,
    /// `/proc/net/sockstat` TCP `mem` (pages × page size) at the scenario's start and at its
    /// end with its connections still open; on loopback both ends' sockets.
    #[serde(default)]
    pub kernel_tcp_mem_before_bytes: Option<u64>,
    #[serde(default)]
    pub kernel_tcp_mem_after_bytes: Option<u64>,
    /// The CPU cgroup the (first) server process was in at the scenario's end, and the quota
    /// read there from the live files, as `cpu.max` writes it: "QUOTA PERIOD" (µs) or
    /// "max PERIOD".
    #[serde(default)]
    pub server_cgroup_cpu: Option<String>,
    #[serde(default)]
    pub server_cgroup_cpu_max: Option<String>,
    /// Rooms with a member and the most members of one room, at users held (from the
    /// scenario's room rule).
    #[serde(default)]
    pub rooms: Option<u64>,
    #[serde(default)]
    pub room_members_max: Option<u64>,
    /// The servers' logs (`--server-log`; `compare`: the files it wrote beside the report)
    /// and the lines in them that report a panic (`None`: no log, or one unreadable).
    #[serde(default)]
    pub server_logs: Vec<String>,
    #[serde(default)]
    pub server_log_panics: Option<u64>,
    /// A target of several instances behind a load balancer (`--cluster-http`; `compare`'s
    /// `sokdo-cluster`): what the instances sent each other over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterFigures>,
    /// sokdo's group commits over the run (`sokdo_wal_commit_seconds`, Σ over processes):
    /// the disk's share of a durable send's latency, to set the latencies beside. Absent
    /// for a server without the metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_wal_commits: Option<CommitFigures>,
}

/// Group commits of a run, from the server's histogram: the quantiles are the upper bounds
/// of their buckets (doubling from 25 µs), not interpolated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitFigures {
    pub commits: u64,
    pub mean_ms: f64,
    /// `None`: above the largest bound (6.5 s).
    pub p50_ms_le: Option<f64>,
    pub p99_ms_le: Option<f64>,
}

impl CommitFigures {
    /// From the histogram of the run's window; `None` when nothing was committed.
    pub fn of(h: &crate::metrics::Histogram) -> Option<CommitFigures> {
        let count = h.count();
        let ms = |q| {
            Some(h.quantile_le(q)?)
                .filter(|s| s.is_finite())
                .map(|s| s * 1e3)
        };
        h.quantile_le(0.5)?;
        Some(CommitFigures {
            commits: count as u64,
            mean_ms: h.sum / count * 1e3,
            p50_ms_le: ms(0.5),
            p99_ms_le: ms(0.99),
        })
    }

    /// "server group commits: …" (stdout).
    pub fn line(&self) -> String {
        let le = |v: Option<f64>| v.map_or("> 6553.6 ms".to_owned(), |v| format!("≤ {v:.3} ms"));
        format!(
            "   server group commits: {} (write + fdatasync under sync), mean {:.3} ms, p50 {}, p99 {}",
            self.commits,
            self.mean_ms,
            le(self.p50_ms_le),
            le(self.p99_ms_le)
        )
    }
}

/// What the instances of a cluster sent each other over a scenario's window — from before
/// the first connect to the end, the connections still open —, summed over the instances'
/// `/metrics`, and how the load balancer spread the users.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterFigures {
    pub instances: u64,
    /// Σ `sokdo_cluster_link_bytes_total{direction="out"}`: peer-link bytes written (frames
    /// with their length prefixes; TCP/IP headers and the membership datagrams not
    /// included). What one instance writes another reads, so this is the traffic between
    /// instances, counted once.
    pub link_bytes_out: u64,
    /// Σ `sokdo_cluster_link_frames_total{direction="out"}`.
    pub link_frames_out: u64,
    /// Σ `sokdo_cluster_datagrams_sent_total`: membership (SWIM) datagrams, at most 1,400
    /// bytes each; counted, their bytes are not.
    pub datagrams_sent: u64,
    /// Σ `sokdo_cluster_link_drops_total`: links dropped because their queue was full.
    pub link_drops: u64,
    /// `link_bytes_out` ÷ the deliveries the bench counted (`received`).
    pub link_bytes_per_delivery: Option<f64>,
    /// `link_bytes_out` ÷ the sends acknowledged (`acked`).
    pub link_bytes_per_ack: Option<f64>,
    /// `sokdo_connections` of each instance at the window's end (the users through the
    /// load balancer, and its health checks).
    pub connections_by_instance: Vec<u64>,
    /// The load balancer's CPU seconds over the window and its RSS at the end
    /// (`--balancer-pid`); the server's CPU and RSS figures are the instances' only.
    pub balancer_cpu_s: Option<f64>,
    pub balancer_rss_bytes: Option<u64>,
    /// `compare`: the load balancer's stderr, kept beside the report like the servers' logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer_log: Option<String>,
}

impl ClusterFigures {
    /// The bytes between instances per delivery and per acknowledged send.
    pub fn per_message(&mut self, received: u64, acked: u64) {
        let per = |n: u64| (n > 0).then(|| self.link_bytes_out as f64 / n as f64);
        self.link_bytes_per_delivery = per(received);
        self.link_bytes_per_ack = per(acked);
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_us(h: &hdrhistogram::Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Generator {
    pub workers: u64,
    pub cpu_s: f64,
    /// Of one core, averaged over the run, all workers together.
    pub cpu_percent: f64,
    /// The busiest worker's share of one core (a worker is one thread).
    pub busiest_worker_cpu_percent: f64,
    /// Σ VmRSS of the workers, the highest seen.
    #[serde(default)]
    pub rss_bytes_max: u64,
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub users: u64,
    pub connect_ok: u64,
    pub connect_fail: u64,
    pub sent: u64,
    pub received: u64,
    pub sends_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    pub errors: u64,
    pub bench_cpu_percent: f64,
    pub server_rss_bytes: Option<u64>,
    /// The server's processes' CPU over the tick, in % of one CPU (`--server-pid`).
    #[serde(default)]
    pub server_cpu_percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Step {
    pub step: u64,
    pub t_s: f64,
    pub users_target: u64,
    pub users_connected: u64,
    pub connect_ok: u64,
    pub connect_fail: u64,
    pub sent: u64,
    pub received: u64,
    pub latency_ms: Latency,
    pub session_length_s_mean: f64,
    pub errors: BTreeMap<String, u64>,
    pub healthy: bool,
    /// Σ VmRSS of the target's processes at the end of the step (`--server-pid`).
    #[serde(default)]
    pub server_rss_bytes: Option<u64>,
    /// The server's CPU seconds during the step, and its CPUs' busy seconds (as in
    /// [`Summary`]).
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    #[serde(default)]
    pub server_cpus_busy_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

/// `compare`: per scenario, one row per target and the ratios to the first target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline: String,
    pub rows: Vec<ComparisonRow>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub scenario: String,
    pub metric: String,
    /// `true` when a larger value is better.
    pub higher_is_better: bool,
    /// target → value
    pub values: BTreeMap<String, f64>,
    /// target → value ÷ baseline's value
    pub ratios: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::{ClusterFigures, Report, Run, Sample};

    #[test]
    fn bytes_between_instances_are_per_delivery_and_per_ack() {
        let mut c = ClusterFigures {
            link_bytes_out: 9_000,
            ..ClusterFigures::default()
        };
        c.per_message(300, 10);
        assert_eq!(c.link_bytes_per_delivery, Some(30.0));
        assert_eq!(c.link_bytes_per_ack, Some(900.0));
        c.per_message(0, 0);
        assert_eq!(
            (c.link_bytes_per_delivery, c.link_bytes_per_ack),
            (None, None)
        );
    }

    /// A report of a cluster run keeps its figures; one of another target has none.
    #[test]
    fn cluster_figures_are_in_the_report_only_for_a_cluster() {
        let mut run = Run::default();
        let v = serde_json::to_value(&run).unwrap();
        assert!(v["summary"].get("cluster").is_none(), "{v}");
        run.summary.cluster = Some(ClusterFigures {
            instances: 3,
            connections_by_instance: vec![1, 2, 3],
            ..ClusterFigures::default()
        });
        let back: Run = serde_json::from_value(serde_json::to_value(&run).unwrap()).unwrap();
        let c = back.summary.cluster.expect("kept");
        assert_eq!((c.instances, c.connections_by_instance), (3, vec![1, 2, 3]));
    }

    /// A report written before the server-CPU fields existed still parses: every field added
    /// to schema 1 since is optional.
    #[test]
    fn reports_without_the_newer_fields_still_parse() {
        let report = Report {
            schema: 1,
            runs: vec![Run {
                timeline: vec![Sample::default()],
                ..Run::default()
            }],
            ..Report::default()
        };
        let mut v = serde_json::to_value(&report).unwrap();
        let newer = [
            ("host", "server_cpu_quota_percent"),
            ("summary", "server_cpu_s"),
            ("summary", "server_cpus_busy_s"),
            ("summary", "kernel_tcp_mem_before_bytes"),
            ("summary", "kernel_tcp_mem_after_bytes"),
            ("summary", "server_cgroup_cpu"),
            ("summary", "server_cgroup_cpu_max"),
            ("summary", "rooms"),
            ("summary", "room_members_max"),
        ];
        for (at, key) in newer {
            let obj = match at {
                "host" => &mut v["host"],
                _ => &mut v["runs"][0][at],
            };
            assert!(obj.as_object_mut().unwrap().remove(key).is_some(), "{key}");
        }
        let sample = v["runs"][0]["timeline"][0].as_object_mut().unwrap();
        assert!(sample.remove("server_cpu_percent").is_some());
        let old: Report = serde_json::from_value(v).unwrap();
        assert_eq!(old.host.server_cpu_quota_percent, None);
        assert_eq!(old.runs[0].summary.server_cpu_s, None);
        assert_eq!(old.runs[0].timeline[0].server_cpu_percent, None);
    }
}
