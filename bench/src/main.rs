//! sokdo-bench: the seeds' load tests against sokdo and the servers people would otherwise
//! deploy, over the network only — it never links the engine, so a codec bug cannot hide
//! behind the same bug on the client side.
//!
//! How a run works, top to bottom:
//! - `main.rs` (this file) parses the command; `output.rs` prints the runs and writes the
//!   reports.
//! - `scenario.rs` / `steady.rs` drive a scenario one tick (1 s) at a time; `compare.rs` runs
//!   scenarios against each target with the server pinned, memory-limited and, when asked,
//!   held to a CPU quota; `cluster.rs` is its target `sokdo-cluster` (instances forming one
//!   cluster behind a real HAProxy, configured by `haproxy.rs`: the engine tests' own
//!   generator, included by path so that the tests, the bench and docs/haproxy.cfg share
//!   it). `profile.rs` runs one of them under `perf record` and renders flamegraphs (and
//!   differential ones) with inferno; `layers.rs` reads per-layer CPU shares out of folded
//!   stacks.
//! - `fleet.rs` starts worker processes (this binary, `worker`), sends them commands and
//!   merges their stats and hdrhistograms.
//! - `worker.rs` holds the connections: a single-threaded runtime per process, ≤ 18,000
//!   users, each worker on its own source address (127.0.0.2, .3, …).
//! - `wire.rs` is WebSocket framing with a frame *scanner* that counts frames by their
//!   headers; `proto.rs` tells sokdo's and Socket.IO's frames apart from a few bytes.
//! - `metrics.rs` reads a server's HTTP endpoints (`/metrics`, `/cluster`) from outside.
//! - `report.rs` is the JSON report, `html.rs` the HTML report with SVG plots.
//! - `kernel.rs` reads (and where it may, raises) the host's limits, its CPUs, a process's
//!   RSS, CPU time and CPU cgroup, the CPUs' busy time and the kernel's TCP memory;
//!   `clock.rs` is the one clock. Both are leaves, like `proto.rs`, `wire.rs`
//!   and `report.rs`: the modules form a DAG, from these up to `compare.rs` and this file.

mod clock;
mod cluster;
mod compare;
mod fleet;
#[path = "../../engine/tests/engine/support/haproxy.rs"]
mod haproxy;
mod html;
mod kernel;
mod layers;
mod metrics;
mod offcpu;
mod output;
mod profile;
mod proto;
mod report;
mod scenario;
mod soak;
mod steady;
mod wire;
mod worker;

use clap::{Parser, Subcommand};

use output::{new_report, print_runs, write_reports};
use report::{Host, Report};
use scenario::{FanoutArgs, IdleArgs, RampArgs};

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
    /// Users chat while connections churn, for a long time; the server's RSS, fds and queue
    /// gauges sampled every few seconds, with a flatness verdict after the warm-up.
    Soak(soak::SoakArgs),
    /// Open idle connections; report the server's RSS per connection.
    Idle(IdleArgs),
    /// Run scenarios against several servers, one after another, pinned and limited alike.
    Compare(compare::CompareArgs),
    /// Run a scenario against a release build sampled by `perf record`: flamegraph SVG,
    /// folded stacks and per-layer shares; with --base-binary/--base-args, a differential
    /// flamegraph too (docs/PROFILING.md).
    Profile(profile::ProfileArgs),
    /// Per-layer and per-thread CPU shares of folded stacks (perf's, collapsed, or
    /// `/debug/pprof/profile?format=folded`).
    Layers { folded: Vec<std::path::PathBuf> },
    /// Render the HTML report of an existing JSON report.
    Html {
        json: std::path::PathBuf,
        html: std::path::PathBuf,
    },
    /// Internal: a load-generating worker process.
    #[command(hide = true)]
    Worker,
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
        Cmd::Profile(args) => return profile::run(&args),
        Cmd::Layers { folded } => {
            for path in folded {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                println!("== {}", path.display());
                println!("{}", layers::render(&layers::shares(&text)));
            }
            return Ok(());
        }
        Cmd::Compare(args) => {
            args.check().unwrap_or_else(|e| e.exit());
            return compare::run(&args);
        }
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
        Cmd::Soak(a) => {
            a.check().unwrap_or_else(|e| e.exit());
            ("soak", vec![soak::soak(&a)?], a.common)
        }
    };
    // What the scenario knew of the server: its CPUs and how many processes it has.
    let host = Host {
        server_cpus: common.server_cpus.as_ref().map(|c| c.to_string()),
        server_processes: (!common.server_pid.is_empty()).then_some(common.server_pid.len() as u64),
        ..Host::default()
    };
    let report = new_report(command, runs, host);
    print_runs(&report.runs);
    write_reports(&report, common.json.as_deref(), common.html.as_deref())?;
    let failed = report.runs.iter().any(|r| r.passed == Some(false));
    std::process::exit(if failed { 2 } else { 0 });
}
