//! The part of a `sokdo-bench` JSON report (schema 1, `docs/BENCHMARKS.md` "JSON report")
//! that the capacity fit reads, and the figures it derives from one run.
//!
//! The tuning crate never links the bench: the field names are copied from
//! `bench/src/report.rs`, and every field a report may lack is `#[serde(default)]`, so older
//! reports and the CPU figures added later (`server_cpu_s`, `server_cpus_busy_s`) both read.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// The only schema this reader knows.
pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    pub command: String,
    #[serde(default)]
    pub started_unix_s: u64,
    #[serde(default)]
    pub host: Host,
    pub runs: Vec<Run>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Host {
    #[serde(default)]
    pub cpus: usize,
    #[serde(default)]
    pub server_cpus: Option<String>,
    #[serde(default)]
    pub server_memory_limit_bytes: Option<u64>,
    #[serde(default)]
    pub server_processes: Option<u64>,
    #[serde(default)]
    pub server_cpu_quota_percent: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Run {
    pub scenario: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub server_bin: Option<String>,
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub duration_s: f64,
    pub summary: Summary,
    #[serde(default)]
    pub timeline: Vec<Sample>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub users_held: u64,
    #[serde(default)]
    pub connect_ok: u64,
    #[serde(default)]
    pub acked: u64,
    #[serde(default)]
    pub received: u64,
    #[serde(default)]
    pub unreachable: bool,
    #[serde(default)]
    pub server_rss_before_bytes: Option<u64>,
    #[serde(default)]
    pub server_rss_after_bytes: Option<u64>,
    /// User + system CPU seconds of the server processes over the run.
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    /// Busy seconds of the server's pinned CPUs over the run (includes the kernel's
    /// loopback TCP softirq work).
    #[serde(default)]
    pub server_cpus_busy_s: Option<f64>,
    /// `/proc/net/sockstat` TCP memory at the start and at the end (connections open); on
    /// loopback both ends' sockets.
    #[serde(default)]
    pub kernel_tcp_mem_before_bytes: Option<u64>,
    #[serde(default)]
    pub kernel_tcp_mem_after_bytes: Option<u64>,
    /// Rooms with a member at users held.
    #[serde(default)]
    pub rooms: Option<u64>,
    /// `compare`: OOM kills in the target's cgroup.
    #[serde(default)]
    pub server_oom_kills: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sample {
    #[serde(default)]
    pub t_s: f64,
    #[serde(default)]
    pub users: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Step {
    /// Seconds from the run's start to the step's end.
    #[serde(default)]
    pub t_s: f64,
    #[serde(default)]
    pub users_connected: u64,
    #[serde(default)]
    pub connect_ok: u64,
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub received: u64,
    /// The server's CPU seconds during the step, and its CPUs' busy seconds.
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    #[serde(default)]
    pub server_cpus_busy_s: Option<f64>,
}

/// Reads and checks one report; every error names the file.
pub fn load(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON, so not a sokdo-bench report", path.display()))?;
    match value.get("schema").and_then(Value::as_u64) {
        Some(s) if s == u64::from(SCHEMA) => {}
        Some(s) => anyhow::bail!(
            "{}: sokdo-bench report schema {s}, this sokdo-tune reads schema {SCHEMA}",
            path.display()
        ),
        None => anyhow::bail!(
            "{}: not a sokdo-bench report (no \"schema\" field)",
            path.display()
        ),
    }
    serde_json::from_value(value)
        .with_context(|| format!("{}: not a sokdo-bench report", path.display()))
}

/// What one run says about the server, in the units the model is fitted in.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The scenario and its users, `idle 1000u`: tells a report's runs apart.
    pub scenario: String,
    pub users: u64,
    /// Rooms with at least one member, when the scenario's config tells.
    pub rooms: Option<u64>,
    /// Σ over rooms of min(messages sent in the room, ring max).
    pub ring_messages: Option<f64>,
    /// Messages stored over the run (acked sends).
    pub stored_messages: f64,
    pub rss_growth_bytes: Option<f64>,
    pub rss_before_per_process_bytes: Option<f64>,
    /// Growth of the kernel's TCP memory over the run, when the report has it.
    pub kernel_tcp_growth_bytes: Option<f64>,
    /// The run's CPU figures: one per ramp step when the steps carry their CPU, else one for
    /// the whole run; empty when the report has no server CPU.
    pub cpu: Vec<CpuPoint>,
    /// The run ended because the server could no longer keep up (how a ramp ends).
    pub unreachable: bool,
}

/// Which server CPU figure a fit uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuFigure {
    /// The pinned CPUs' busy time (it holds the kernel's loopback TCP work), unless it is more
    /// than `BUSY_TRUST_RATIO_MAX` times the server's own CPU: then other work shared those
    /// CPUs, and the server's own time is used.
    Auto,
    /// Always the pinned CPUs' busy time (`server_cpus_busy_s`).
    Busy,
    /// Always the server processes' user + system time (`server_cpu_s`).
    Process,
}

/// Busy time above this multiple of the server's own CPU time means the server's CPUs were
/// shared (a build, another test): `auto` then takes the server's own time.
pub const BUSY_TRUST_RATIO_MAX: f64 = 2.0;

impl CpuFigure {
    /// The figure to use from a (busy, process) pair, and whether `auto` fell back.
    pub fn pick(self, busy: Option<f64>, process: Option<f64>) -> Option<(f64, bool)> {
        match self {
            CpuFigure::Busy => busy.map(|b| (b, false)),
            CpuFigure::Process => process.map(|p| (p, false)),
            CpuFigure::Auto => match (busy, process) {
                (Some(b), Some(p)) if b > BUSY_TRUST_RATIO_MAX * p => Some((p, true)),
                (Some(b), _) => Some((b, false)),
                (None, p) => p.map(|p| (p, false)),
            },
        }
    }
}

/// Server CPU seconds over a span (the pinned CPUs' busy time when the report has it, else
/// the processes' own user + system time) and what the server did in it.
#[derive(Clone, Debug)]
pub struct CpuPoint {
    pub label: String,
    pub cpu_s: f64,
    /// `auto` took the server's own time: its CPUs' busy time was not the server's alone.
    pub busy_distrusted: bool,
    pub deliveries: f64,
    pub sends: f64,
    pub handshakes: f64,
    /// ∫ connected users dt over the span.
    pub connection_s: f64,
}

impl Run {
    /// The run's figures; `ring_max` is the engine's `--history-ring-messages-max`.
    pub fn observe(&self, host: &Host, ring_max: u64, figure: CpuFigure) -> Observation {
        let s = &self.summary;
        let processes = host.server_processes.unwrap_or(1).max(1);
        let rooms = self.rooms();
        let rss_growth_bytes = match (s.server_rss_before_bytes, s.server_rss_after_bytes) {
            (Some(b), Some(a)) => Some(a as f64 - b as f64),
            _ => None,
        };
        let kernel_tcp_growth_bytes =
            match (s.kernel_tcp_mem_before_bytes, s.kernel_tcp_mem_after_bytes) {
                (Some(b), Some(a)) => Some(a as f64 - b as f64),
                _ => None,
            };
        Observation {
            scenario: format!("{} {}u", self.scenario, s.users_held),
            users: s.users_held,
            rooms,
            ring_messages: rooms.map(|r| self.ring_messages(r, ring_max)),
            stored_messages: s.acked as f64,
            rss_growth_bytes,
            rss_before_per_process_bytes: s
                .server_rss_before_bytes
                .map(|b| b as f64 / processes as f64),
            kernel_tcp_growth_bytes,
            cpu: self.cpu_points(figure),
            unreachable: s.unreachable,
        }
    }

    /// Per ramp step when every step has its CPU (more points, and steps differ in how much
    /// connecting and chatting they hold), else the whole run.
    fn cpu_points(&self, figure: CpuFigure) -> Vec<CpuPoint> {
        let s = &self.summary;
        let steps_cpu: Option<Vec<(f64, bool)>> = self
            .steps
            .iter()
            .map(|st| figure.pick(st.server_cpus_busy_s, st.server_cpu_s))
            .collect();
        match steps_cpu {
            Some(cpu) if !cpu.is_empty() => {
                let mut start = 0.0;
                let mut points = Vec::new();
                for (i, (st, (cpu_s, busy_distrusted))) in self.steps.iter().zip(cpu).enumerate() {
                    points.push(CpuPoint {
                        label: format!("{} {}u step {i}", self.scenario, st.users_connected),
                        cpu_s,
                        busy_distrusted,
                        deliveries: st.received as f64,
                        sends: st.sent as f64,
                        handshakes: st.connect_ok as f64,
                        connection_s: self.connection_s_between(start, st.t_s),
                    });
                    start = st.t_s;
                }
                points
            }
            _ => figure
                .pick(s.server_cpus_busy_s, s.server_cpu_s)
                .map(|(cpu_s, busy_distrusted)| CpuPoint {
                    label: format!("{} {}u", self.scenario, s.users_held),
                    cpu_s,
                    busy_distrusted,
                    deliveries: s.received as f64,
                    sends: s.acked as f64,
                    handshakes: s.connect_ok as f64,
                    connection_s: self.connection_s_between(0.0, f64::INFINITY),
                })
                .into_iter()
                .collect(),
        }
    }

    /// Users per room in the `Blocks` layout (idle, ramp: rooms fill in arrival order).
    /// A number from the scenario's flags (`room_size`, `step_s`, …).
    pub fn config_f64(&self, key: &str) -> Option<f64> {
        self.config.get(key).and_then(Value::as_f64)
    }

    fn room_size(&self) -> Option<u64> {
        self.config.get("room_size").and_then(Value::as_u64)
    }

    /// Rooms with members: the report's own count when it has one, else from the scenario's
    /// flags (`room_size` for idle and ramp,
    /// `load.rooms` — `{"modulo": n}` or `{"blocks": size}` — for fanout and steady).
    fn rooms(&self) -> Option<u64> {
        if let Some(n) = self.summary.rooms {
            return Some(n);
        }
        let users = self.summary.users_held;
        if let Some(size) = self.room_size() {
            return Some(users.div_ceil(size.max(1)));
        }
        let rooms = self.config.get("load")?.get("rooms")?;
        if let Some(n) = rooms.get("modulo").and_then(Value::as_u64) {
            return Some(n.min(users));
        }
        let size = rooms.get("blocks").and_then(Value::as_u64)?;
        Some(users.div_ceil(size.max(1)))
    }

    /// Σ over rooms of the ring messages held at the end. A ramp's rooms are filled step by
    /// step, so each step's sends are shared by the rooms that existed then (everyone sends
    /// at the same rate); other scenarios spread their sends evenly over their rooms.
    fn ring_messages(&self, rooms: u64, ring_max: u64) -> f64 {
        let ring_max = ring_max as f64;
        if rooms == 0 {
            return 0.0;
        }
        if let (false, Some(size)) = (self.steps.is_empty(), self.room_size()) {
            let mut per_room: Vec<f64> = Vec::new();
            for step in &self.steps {
                let n = step.users_connected.div_ceil(size.max(1)) as usize;
                if n > per_room.len() {
                    per_room.resize(n, 0.0);
                }
                let share = step.sent as f64 / n.max(1) as f64;
                for r in per_room.iter_mut().take(n) {
                    *r += share;
                }
            }
            return per_room.iter().map(|m| m.min(ring_max)).sum();
        }
        let per_room = self.summary.acked as f64 / rooms as f64;
        per_room.min(ring_max) * rooms as f64
    }

    /// ∫ users dt over [from, to] (clipped to the run) from the timeline: the users count is
    /// linear between samples and the last sample's holds to the run's end; without a
    /// timeline, users held × the span.
    fn connection_s_between(&self, from: f64, to: f64) -> f64 {
        let end = self
            .duration_s
            .max(self.timeline.last().map_or(0.0, |l| l.t_s));
        let (from, to) = (from.max(0.0), to.min(end));
        let t = &self.timeline;
        if t.is_empty() {
            return self.summary.users_held as f64 * (to - from).max(0.0);
        }
        // Segments (t0, u0) → (t1, u1), then the last sample held flat to the end.
        let last = &t[t.len() - 1];
        let tail = [(last.t_s, last.users as f64, end, last.users as f64)];
        let segments = t
            .windows(2)
            .map(|w| (w[0].t_s, w[0].users as f64, w[1].t_s, w[1].users as f64))
            .chain(tail);
        let mut total = 0.0;
        for (t0, u0, t1, u1) in segments {
            let (a, b) = (t0.max(from), t1.min(to));
            if b <= a || t1 <= t0 {
                continue;
            }
            let at = |x: f64| u0 + (u1 - u0) * (x - t0) / (t1 - t0);
            total += (b - a) * (at(a) + at(b)) / 2.0;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` trusts the CPUs' busy time up to twice the server's own; past that the CPUs
    /// were shared and the server's own time is taken.
    #[test]
    fn auto_distrusts_busy_time_far_above_the_servers_own() {
        assert_eq!(
            CpuFigure::Auto.pick(Some(3.0), Some(2.0)),
            Some((3.0, false))
        );
        assert_eq!(
            CpuFigure::Auto.pick(Some(4.0), Some(2.0)),
            Some((4.0, false))
        );
        assert_eq!(
            CpuFigure::Auto.pick(Some(4.1), Some(2.0)),
            Some((2.0, true))
        );
        assert_eq!(CpuFigure::Auto.pick(Some(3.0), None), Some((3.0, false)));
        assert_eq!(CpuFigure::Auto.pick(None, Some(2.0)), Some((2.0, false)));
        assert_eq!(
            CpuFigure::Busy.pick(Some(9.0), Some(2.0)),
            Some((9.0, false))
        );
        assert_eq!(CpuFigure::Process.pick(Some(9.0), None), None);
    }

    /// Users 0 → 100 over the first second (linear), 100 for 2 s, the last sample held to
    /// the end at 5 s: [0, 1] = 50, [1, 3] = 200, [3, 5] = 200.
    #[test]
    fn connection_seconds_integrate_the_timeline() {
        let sample = |t_s: f64, users: u64| Sample { t_s, users };
        let run = Run {
            scenario: "x".into(),
            target: String::new(),
            server_bin: None,
            config: Value::Null,
            duration_s: 5.0,
            summary: Summary::default(),
            timeline: vec![sample(0.0, 0), sample(1.0, 100), sample(3.0, 100)],
            steps: vec![],
        };
        assert!((run.connection_s_between(0.0, f64::INFINITY) - 450.0).abs() < 1e-9);
        assert!((run.connection_s_between(0.0, 1.0) - 50.0).abs() < 1e-9);
        assert!((run.connection_s_between(0.5, 1.0) - 37.5).abs() < 1e-9);
        assert!((run.connection_s_between(3.0, 5.0) - 200.0).abs() < 1e-9);
    }
}
