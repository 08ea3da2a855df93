//! The capacity model: what one server process costs per connection, room, ring message and
//! stored message (memory), and per delivery, send, handshake and connection-second (CPU),
//! fitted by `fit` from bench reports and read by `plan`. JSON, so a model fitted on one
//! machine is committed and read anywhere.

use serde::{Deserialize, Serialize};

/// The model `plan` uses without `--model`: fitted on this machine kind (2 vCPUs, the server
/// pinned to 1 core in a 2 GiB cgroup: an emulated t3.small) from `tuning/models/reports/`.
pub const EMBEDDED: &str = include_str!("../models/2vcpu-1core-server.json");
pub const EMBEDDED_NAME: &str = "tuning/models/2vcpu-1core-server.json";

pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Model {
    pub schema: u32,
    /// What the reports were measured on.
    pub machine: String,
    /// The engine's `--history-ring-messages-max` the ring figures assume.
    pub history_ring_messages_max: u64,
    pub memory: Memory,
    pub cpu: Cpu,
    pub sources: Vec<Source>,
    /// What a reader must know before trusting the numbers.
    pub caveats: Vec<String>,
}

/// One fitted quantity: `value` is `None` when the reports could not identify it, and then
/// `note` says why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Coef {
    pub value: Option<f64>,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Coef {
    /// The value, 0 when not identified (the identified terms absorbed its share).
    pub fn or_zero(&self) -> f64 {
        self.value.unwrap_or(0.0)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Memory {
    pub baseline_bytes_per_process: Coef,
    pub bytes_per_connection: Coef,
    pub bytes_per_room: Coef,
    pub bytes_per_ring_message: Coef,
    pub bytes_per_stored_message: Coef,
    /// Kernel memory per TCP socket, outside the process's RSS.
    pub kernel_bytes_per_socket: Coef,
    /// Fit of the RSS growth over each run.
    pub fit: FitError,
    /// Fit of the RSS before each run ÷ processes.
    pub baseline_fit: FitError,
    /// Per-run kernel TCP memory per socket against their mean (empty when assumed).
    #[serde(default)]
    pub kernel_fit: FitError,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cpu {
    pub s_per_delivery: Coef,
    pub s_per_send: Coef,
    pub s_per_handshake: Coef,
    pub s_per_connection_s: Coef,
    pub fit: FitError,
    /// Per delivery and per send when CPU is the limit, per CPU share measured
    /// (`saturation.rs`); `plan` sizes CPU with these when there are any.
    #[serde(default)]
    pub saturation: Vec<Saturation>,
}

/// CPU at saturation for one CPU share: per delivery `a` and per send `b` (`saturation.rs`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saturation {
    /// CPUs the server had: its pinned CPUs, or its quota (0.2 = 20 % of one CPU).
    pub cpus: f64,
    pub s_per_delivery: Coef,
    pub s_per_send: Coef,
    /// Users held by each ramp: measured vs what `a`, `b` give back.
    pub fit: FitError,
}

/// Predicted vs measured for every run the fit used, and the worst and RMS relative error.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FitError {
    pub max_relative_error: Option<f64>,
    pub rms_relative_error: Option<f64>,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub file: String,
    pub scenario: String,
    pub measured: f64,
    pub predicted: f64,
    pub relative_error: f64,
}

impl FitError {
    pub fn from_rows(rows: Vec<Row>) -> FitError {
        let n = rows.len() as f64;
        let max = rows.iter().map(|r| r.relative_error.abs()).reduce(f64::max);
        let rms = (!rows.is_empty())
            .then(|| (rows.iter().map(|r| r.relative_error.powi(2)).sum::<f64>() / n).sqrt());
        FitError {
            max_relative_error: max,
            rms_relative_error: rms,
            rows,
        }
    }
}

/// A report the model came from. Reports carry no commit; `server_bin` names the binary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    pub command: String,
    pub started_unix_s: u64,
    pub scenarios: Vec<String>,
    #[serde(default)]
    pub server_bin: Option<String>,
}

impl Model {
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Model> {
        let model: Model = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{name}: not a sokdo-tune model: {e}"))?;
        anyhow::ensure!(
            model.schema == SCHEMA,
            "{name}: model schema {}, this sokdo-tune reads schema {SCHEMA}",
            model.schema
        );
        Ok(model)
    }
}
