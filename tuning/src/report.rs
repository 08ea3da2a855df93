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
    #[serde(default)]
    pub users_connected: u64,
    #[serde(default)]
    pub sent: u64,
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
    pub deliveries: f64,
    pub sends: f64,
    pub handshakes: f64,
    /// ∫ connected users dt over the run.
    pub connection_s: f64,
    pub rss_growth_bytes: Option<f64>,
    pub rss_before_per_process_bytes: Option<f64>,
    /// Server CPU seconds: the pinned CPUs' busy time when the report has it, else the
    /// processes' own user + system time.
    pub cpu_s: Option<f64>,
}

impl Run {
    /// The run's figures; `ring_max` is the engine's `--history-ring-messages-max`.
    pub fn observe(&self, host: &Host, ring_max: u64) -> Observation {
        let s = &self.summary;
        let processes = host.server_processes.unwrap_or(1).max(1);
        let rooms = self.rooms();
        let rss_growth_bytes = match (s.server_rss_before_bytes, s.server_rss_after_bytes) {
            (Some(b), Some(a)) => Some(a as f64 - b as f64),
            _ => None,
        };
        Observation {
            scenario: format!("{} {}u", self.scenario, s.users_held),
            users: s.users_held,
            rooms,
            ring_messages: rooms.map(|r| self.ring_messages(r, ring_max)),
            stored_messages: s.acked as f64,
            deliveries: s.received as f64,
            sends: s.acked as f64,
            handshakes: s.connect_ok as f64,
            connection_s: self.connection_s(),
            rss_growth_bytes,
            rss_before_per_process_bytes: s
                .server_rss_before_bytes
                .map(|b| b as f64 / processes as f64),
            cpu_s: s.server_cpus_busy_s.or(s.server_cpu_s),
        }
    }

    /// Users per room in the `Blocks` layout (idle, ramp: rooms fill in arrival order).
    fn room_size(&self) -> Option<u64> {
        self.config.get("room_size").and_then(Value::as_u64)
    }

    /// Rooms with members: from the scenario's flags (`room_size` for idle and ramp,
    /// `load.rooms` — `{"modulo": n}` or `{"blocks": size}` — for fanout and steady).
    fn rooms(&self) -> Option<u64> {
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

    /// ∫ users dt from the timeline (trapezoids between samples, the last sample held to the
    /// run's end); without a timeline, users held × duration.
    fn connection_s(&self) -> f64 {
        let t = &self.timeline;
        let Some(last) = t.last() else {
            return self.summary.users_held as f64 * self.duration_s;
        };
        let mut total = 0.0;
        for w in t.windows(2) {
            total += (w[1].t_s - w[0].t_s) * (w[0].users + w[1].users) as f64 / 2.0;
        }
        total + (self.duration_s - last.t_s).max(0.0) * last.users as f64
    }
}
