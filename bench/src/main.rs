//! sokdo-bench: the seeds' load tests against sokdo and the servers people would otherwise
//! deploy, over the network only — it never links the engine, so a codec bug cannot hide
//! behind the same bug on the client side.
//!
//! How a run works, top to bottom:
//! - `main.rs` (this file) parses the command and writes the reports.
//! - `scenario.rs` / `steady.rs` drive a scenario one tick (1 s) at a time; `compare.rs` runs
//!   scenarios against each target with the server pinned and memory-limited.
//! - `fleet.rs` starts worker processes (this binary, `worker`), sends them commands and
//!   merges their stats and hdrhistograms.
//! - `worker.rs` holds the connections: a single-threaded runtime per process, ≤ 18,000
//!   users, each worker on its own source address (127.0.0.2, .3, …).
//! - `wire.rs` is WebSocket framing with a frame *scanner* that counts frames by their
//!   headers; `proto.rs` tells sokdo's and Socket.IO's frames apart from a few bytes.
//! - `report.rs` is the JSON report, `html.rs` the HTML report with SVG plots.

mod clock;
mod compare;
mod fleet;
mod html;
mod kernel;
mod proto;
mod report;
mod scenario;
mod steady;
mod wire;
mod worker;

use clap::{Args, Parser, Subcommand};

use report::{Host, Report, Run};
use scenario::{Common, IdleArgs, Load, RampArgs};
use worker::Rooms;

#[derive(Parser)]
#[command(
    name = "sokdo-bench",
    version,
    about = "Load tests for sokdo and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add users in steps until the target or until the server fails; report users held.
    Ramp(RampArgs),
    /// N subscribers in R rooms, publishers at a fixed total rate: deliveries/s and latency.
    Fanout(FanoutArgs),
    /// A seed's workload (ktb, thiscode, webchat) with pass/fail against its target.
    Steady(steady::SteadyArgs),
    /// Open idle connections; report the server's RSS per connection.
    Idle(IdleArgs),
    /// Run scenarios against several servers, one after another, pinned and limited alike.
    Compare(compare::CompareArgs),
    /// Render the HTML report of an existing JSON report.
    Html {
        json: std::path::PathBuf,
        html: std::path::PathBuf,
    },
    /// Internal: a load-generating worker process.
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers (publishers are among them).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Rooms; user u is in room u mod rooms.
    #[arg(long, default_value_t = 1)]
    rooms: u64,
    /// Users that also publish (the first ones, spread over the rooms).
    #[arg(long, default_value_t = 10)]
    publishers: u64,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Seconds allowed for deliveries in flight after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    drain_s: f64,
}

impl FanoutArgs {
    fn load(&self) -> Load {
        Load {
            users: self.users,
            rooms: Rooms::Modulo(self.rooms),
            publishers: self.publishers,
            rate_total: self.rate,
            messages_max: None,
            duration_s: self.duration_s,
            drain_s: self.drain_s,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (command, runs, common) = match cli.command {
        Cmd::Worker => return worker::run(),
        Cmd::Html { json, html } => {
            let report: Report = serde_json::from_slice(&std::fs::read(&json)?)?;
            std::fs::write(&html, html::render(&report)?)?;
            return Ok(());
        }
        Cmd::Compare(args) => return compare::run(&args),
        Cmd::Ramp(a) => ("ramp", vec![scenario::ramp(&a)?], a.common),
        Cmd::Fanout(a) => (
            "fanout",
            vec![scenario::run_load(&a.common, "fanout", &a.load())?],
            a.common,
        ),
        Cmd::Steady(a) => {
            a.check().unwrap_or_else(|e| e.exit());
            ("steady", steady::steady(&a)?, a.common)
        }
        Cmd::Idle(a) => ("idle", vec![scenario::idle(&a)?], a.common),
    };
    let report = new_report(command, runs, Host::default());
    print_runs(&report.runs);
    write_reports(&report, common.json.as_deref(), common.html.as_deref())?;
    let failed = report.runs.iter().any(|r| r.passed == Some(false));
    std::process::exit(if failed { 2 } else { 0 });
}

pub fn new_report(command: &str, runs: Vec<Run>, mut host: Host) -> Report {
    // SAFETY: sysconf reads a constant; online CPUs, not this process's affinity mask.
    host.cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    Report {
        schema: 1,
        command: command.to_string(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host,
        runs,
        comparison: None,
    }
}

pub fn write_reports(
    report: &Report,
    json: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
        eprintln!("JSON report: {}", path.display());
    }
    if let Some(path) = html {
        std::fs::write(path, html::render(report)?)?;
        eprintln!("HTML report: {}", path.display());
    }
    Ok(())
}

/// A few lines per run on stdout: what a person reads first.
pub fn print_runs(runs: &[Run]) {
    for r in runs {
        let s = &r.summary;
        println!("== {} against {} ({})", r.scenario, r.target, r.server);
        println!(
            "   users: held {}  peak {}  connect ok {} / fail {}  disconnects {}",
            s.users_held, s.users_peak, s.connect_ok, s.connect_fail, s.disconnects
        );
        if s.users_by_server.len() > 1 {
            println!("   users per server process: {:?}", s.users_by_server);
        }
        println!(
            "   messages: sent {}  acked {}  received {}  expected {}  ({:.0} deliveries/s, {:.0} sends/s)",
            s.sent,
            s.acked,
            s.received,
            s.expected_deliveries.map_or("-".into(), |e| e.to_string()),
            s.deliveries_per_s,
            s.sends_per_s
        );
        let l = &s.latency_ms;
        println!(
            "   latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}  ({} samples)",
            l.p50, l.p90, l.p99, l.max, l.mean, l.samples
        );
        if let Some(per) = s.server_rss_per_connection_bytes {
            println!("   server RSS per connection: {:.0} bytes", per);
        }
        if !s.errors.is_empty() {
            println!("   errors: {:?}", s.errors);
        }
        if let Some(rss) = s.server_rss_after_bytes {
            println!(
                "   server RSS (all processes): {:.1} MiB{}",
                rss as f64 / 1048576.0,
                s.server_cgroup_memory_peak_bytes
                    .map_or(String::new(), |p| format!(
                        "  cgroup peak {:.1} MiB",
                        p as f64 / 1048576.0
                    ))
            );
        }
        if let Some(n) = s.server_oom_kills.filter(|n| *n > 0) {
            println!("   server processes OOM-killed: {n}");
        }
        println!(
            "   stop: {}{}  generator: {} workers, {:.0}% cpu (busiest {:.0}%), {:.0} MiB",
            s.stop_reason,
            if s.unreachable { " (UNREACHABLE)" } else { "" },
            r.generator.workers,
            r.generator.cpu_percent,
            r.generator.busiest_worker_cpu_percent,
            r.generator.rss_bytes_max as f64 / 1048576.0
        );
        for c in &r.checks {
            let verdict = if c.pass { "PASS" } else { "FAIL" };
            println!(
                "   {verdict} {}: {} (target {})",
                c.name, c.measured, c.target
            );
        }
    }
}
