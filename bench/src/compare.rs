//! `compare`: the same scenarios against each target, one after another on this machine,
//! each server started fresh, pinned to the same CPUs (`taskset`) and held to the same memory
//! limit (a cgroup: v1's memory controller when mounted, else v2) and, when asked, the same
//! CPU quota (v1's cpu controller, else v2's `cpu.max`), the bench itself pinned to the other
//! CPUs. Prints and records the ratios to the first target. Target `sokdo-cluster` is
//! several instances forming one cluster behind HAProxy, started here too (`cluster.rs`
//! holds its layout, flags and waits).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{Args, Parser, ValueEnum};

use crate::cluster;
use crate::kernel::{self, CpuList};
use crate::output;
use crate::proto::Protocol;
use crate::report::{Comparison, ComparisonRow, Host, Run, Summary};
use crate::scenario::{self, FanoutArgs, IdleArgs, RampArgs};
use crate::steady::{self, SteadyArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// This project: `--sokdo-bin` (default: beside this binary).
    Sokdo,
    /// A second sokdo build (`--sokdo-base-bin`), run exactly as `sokdo` is: the same change
    /// measured before and after in one run.
    SokdoBase,
    /// socket.io 4 on Node.
    Socketio,
    /// Node's `ws` package.
    Ws,
    /// `sokdo-peer-tokio`, the conventional tokio server.
    Tokio,
    /// `--cluster-instances` sokdo instances (`--sokdo-bin`, each with `--sokdo-args` and
    /// `--sokdo-shards`) forming one cluster on loopback, behind a real HAProxy
    /// (`--haproxy-bin`, `balance leastconn`, health checks on `/readyz`): the users connect
    /// to HAProxy only and are spread by it, not by room. All of them share the target's
    /// CPUs and memory limit.
    SokdoCluster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioKind {
    Ramp,
    Fanout,
    Idle,
    /// A seed's workload: `--steady-args` names the preset (`--preset ktb`).
    Steady,
}

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// Servers to compare; the first is the baseline of the ratios.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sokdo,socketio,ws,tokio"
    )]
    targets: Vec<TargetKind>,
    /// Scenarios to run against each target.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,idle,ramp"
    )]
    scenarios: Vec<ScenarioKind>,
    /// Flags for `ramp` (e.g. "--step-s 5 --target-users 20000").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ramp_args: String,
    /// Flags for `fanout`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    fanout_args: String,
    /// Flags for `idle`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    idle_args: String,
    /// Flags for `steady`, its preset included (e.g. "--preset ktb --scale 0.5").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    steady_args: String,
    /// CPUs the server runs on (taskset list: "0", "0-3", "0,2"; each below 1024 and online).
    #[arg(long, default_value = "0")]
    server_cpus: CpuList,
    /// CPUs the bench runs on (as `--server-cpus`).
    #[arg(long, default_value = "1")]
    bench_cpus: CpuList,
    /// The server's memory limit (a t3.small has 2 GiB).
    #[arg(long, default_value_t = 2048)]
    memory_limit_mib: u64,
    /// CPU quota of each target, in percent of ONE CPU, for all its processes together
    /// (cgroup v1 `cpu.cfs_quota_us` per 100 ms `cpu.cfs_period_us`, else v2 `cpu.max`):
    /// emulates a burstable instance at its baseline — 20 is one t3 vCPU once its credits
    /// are spent, a whole t3.small (2 vCPUs at 20 % each) is 40. From 0.1 to 100 × the
    /// number of --server-cpus. Only `compare` applies it, as it starts the servers; the
    /// standalone scenarios measure a server already running (--server-pid) as it is.
    #[arg(long, value_parser = parse_quota_percent)]
    server_cpu_quota_percent: Option<f64>,
    /// Server processes per target, on consecutive ports, all in the target's one cgroup and
    /// CPU set (one instance whose processes sit behind a local load balancer); users go to
    /// the process of their room (room r → process r mod N).
    /// Does not apply to `sokdo-cluster` (`--cluster-instances`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    server_processes: u64,
    /// Instances of target `sokdo-cluster` (node ids n1, n2, …; quorum is a majority).
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(2..=CLUSTER_INSTANCES_MAX))]
    cluster_instances: u64,
    /// The HAProxy of target `sokdo-cluster` (scripts/install-deps.sh installs it).
    #[arg(long, default_value = "haproxy")]
    haproxy_bin: PathBuf,
    /// HAProxy's `maxconn` (connections it holds at once; more wait for a place). It needs
    /// two open files per connection plus 200 within this process's open-file limit, which
    /// it inherits: at most 9,900 under a limit of 20,000, the default (the largest that fits).
    #[arg(long)]
    haproxy_maxconn: Option<u32>,
    /// More flags for every sokdo process (e.g. "--durability async").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    sokdo_args: String,
    /// sokdo's shards per process (one per server CPU is the fair setting).
    #[arg(long, default_value_t = 1)]
    sokdo_shards: u32,
    /// The sokdo binary (default: beside this one).
    #[arg(long, env = "SOKDO_BIN")]
    sokdo_bin: Option<PathBuf>,
    /// The sokdo build of target `sokdo-base` (e.g. the build before a change), started with
    /// the same `--sokdo-args`, `--sokdo-shards`, CPUs and memory limit as `sokdo`.
    #[arg(long, env = "SOKDO_BASE_BIN")]
    sokdo_base_bin: Option<PathBuf>,
    /// The tokio peer's binary (default: beside this one).
    #[arg(long)]
    tokio_bin: Option<PathBuf>,
    /// Where the Node peers live (after scripts/install-bench-peers.sh).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers"))]
    peers_dir: PathBuf,
    /// Port of the first server under test; each later run uses the next one.
    #[arg(long, default_value_t = 19_100)]
    port: u16,
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[arg(long)]
    html: Option<PathBuf>,
}

/// The most instances of target `sokdo-cluster`: they share the target's CPUs, so beyond a
/// few a run measures their contention, and each takes two ports of the run's block.
const CLUSTER_INSTANCES_MAX: u64 = 16;

/// The lower bound of `--server-cpu-quota-percent`: the kernel's smallest quota, 1 ms, per
/// the longest period the bench uses, 1 s.
const QUOTA_PERCENT_MIN: f64 = 0.1;

fn parse_quota_percent(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number (percent of one CPU)"))?;
    if !p.is_finite() || p < QUOTA_PERCENT_MIN {
        return Err(format!(
            "{text} is out of range: at least {QUOTA_PERCENT_MIN} (percent of one CPU; \
             the kernel's smallest quota is 1 ms per period)"
        ));
    }
    Ok(p)
}

/// `(quota, period)` in µs for `percent` of one CPU: a 100 ms period (cgroup v1's default),
/// or 1 s when the quota would fall under the kernel's 1 ms minimum (below 1 %).
pub fn cpu_quota_us(percent: f64) -> (u64, u64) {
    let period = if percent < 1.0 { 1_000_000 } else { 100_000 };
    let quota = (percent / 100.0 * period as f64).round() as u64;
    (quota.max(1000), period)
}

impl CompareArgs {
    /// What clap's attributes cannot say: the CPU quota is bounded by the server's CPUs,
    /// `--steady-args` must parse (a preset included) when `steady` is asked for, and target
    /// `sokdo-base` needs its binary.
    pub fn check(&self) -> Result<(), clap::Error> {
        let mut cmd = CompareArgs::augment_args(clap::Command::new("sokdo-bench compare"));
        if let Some(p) = self.server_cpu_quota_percent {
            let cpus = self.server_cpus.cpus().len();
            let max = 100.0 * cpus as f64;
            if p > max {
                return Err(cmd.error(
                    ErrorKind::ValueValidation,
                    format!(
                        "invalid value '{p}' for '--server-cpu-quota-percent \
                         <SERVER_CPU_QUOTA_PERCENT>': more than the {cpus} CPU(s) of \
                         --server-cpus {} can give (at most {max})",
                        self.server_cpus
                    ),
                ));
            }
        }
        self.check_steady_args(&mut cmd)?;
        if !self.targets.contains(&TargetKind::SokdoBase) {
            return Ok(());
        }
        match &self.sokdo_base_bin {
            None => Err(cmd.error(
                ErrorKind::MissingRequiredArgument,
                "target 'sokdo-base' needs the other sokdo build: \
                 '--sokdo-base-bin <SOKDO_BASE_BIN>' (or the environment variable SOKDO_BASE_BIN)",
            )),
            Some(bin) if !bin.is_file() => Err(cmd.error(
                ErrorKind::InvalidValue,
                format!(
                    "invalid value '{}' for '--sokdo-base-bin <SOKDO_BASE_BIN>': no such file",
                    bin.display()
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}

impl CompareArgs {
    /// With scenario `steady`, `--steady-args` parsed as `steady` parses them (the server's
    /// flags are compare's own), before any server starts.
    fn check_steady_args(&self, cmd: &mut clap::Command) -> Result<(), clap::Error> {
        if !self.scenarios.contains(&ScenarioKind::Steady) {
            return Ok(());
        }
        // The server is compare's to give: a placeholder stands for it here.
        let argv = ["steady", "--server", "127.0.0.1:1"]
            .into_iter()
            .chain(self.steady_args.split_whitespace());
        let parsed = Flags::<SteadyArgs>::try_parse_from(argv).and_then(|f| f.inner.check());
        parsed.map_err(|e| {
            // clap's message up to its usage line, on one line.
            let text = e.to_string();
            let why: Vec<&str> = (text.lines())
                .take_while(|l| !l.starts_with("Usage:"))
                .map(|l| l.trim().trim_start_matches("error: "))
                .filter(|l| !l.is_empty())
                .collect();
            let why = why.join(" ");
            cmd.error(
                ErrorKind::InvalidValue,
                format!(
                    "invalid value {:?} for '--steady-args <STEADY_ARGS>': {why}",
                    self.steady_args
                ),
            )
        })
    }
}

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    check_online("--server-cpus", &args.server_cpus)?;
    check_online("--bench-cpus", &args.bench_cpus)?;
    if let Err(e) = kernel::pin_self(&args.bench_cpus) {
        eprintln!(
            "warning: could not pin the bench to CPUs {}: {e}",
            args.bench_cpus
        );
    }
    if let Some(p) = args.server_cpu_quota_percent {
        let (quota, period) = cpu_quota_us(p);
        eprintln!("server CPU quota: {p}% of one CPU ({quota} µs per {period} µs) per target");
    }
    let clustered = args.targets.contains(&TargetKind::SokdoCluster);
    let maxconn = clustered.then(|| haproxy_maxconn(args)).transpose()?;
    if let Some(m) = maxconn {
        eprintln!(
            "sokdo-cluster: {} instances behind HAProxy, maxconn {m}",
            args.cluster_instances
        );
    }
    let mut runs = Vec::new();
    let mut limit_applied = None;
    for (start, (scenario, target)) in (args.scenarios.iter())
        .flat_map(|s| args.targets.iter().map(move |t| (s, t)))
        .enumerate()
    {
        eprintln!("== {scenario:?} against {}", name(*target));
        // Fresh ports per start: a stopped server's port may linger a moment.
        let port = u64::from(args.port) + start as u64 * ports_per_start(args);
        let started = u16::try_from(port)
            .map_err(|_| anyhow::anyhow!("--port {}: run {start} needs port {port}", args.port))
            .and_then(|port| Server::start(args, *target, port));
        let new_runs = match started {
            Ok(server) => {
                limit_applied = limit_applied.or(server.memory_limit_bytes);
                run_on(args, *scenario, *target, server)?
            }
            Err(e) => vec![not_started(*scenario, *target, &e)],
        };
        output::print_runs(&new_runs);
        runs.extend(new_runs);
    }
    let host = Host {
        bench_cpus: Some(args.bench_cpus.to_string()),
        server_cpus: Some(args.server_cpus.to_string()),
        server_memory_limit_bytes: limit_applied,
        server_processes: Some(args.server_processes.max(1)),
        server_cpu_quota_percent: args.server_cpu_quota_percent,
        cluster_instances: clustered.then_some(args.cluster_instances),
        haproxy_maxconn: maxconn,
        ..Host::default()
    };
    let mut report = output::new_report("compare", runs, host);
    report.comparison = Some(comparison(&report.runs, name(args.targets[0])));
    print_comparison(report.comparison.as_ref().expect("just set"));
    output::write_reports(&report, args.json.as_deref(), args.html.as_deref())
}

/// Runs `scenario` against the started `server`, stops it, and completes the runs with what
/// is read once it stopped: its logs scanned for panics, its cgroup's peak memory and OOM
/// kills, the binary it ran.
fn run_on(
    args: &CompareArgs,
    scenario: ScenarioKind,
    target: TargetKind,
    server: Server,
) -> anyhow::Result<Vec<Run>> {
    let result = run_scenario(args, scenario, target, &server);
    let (peak, oom_kills) = server.memory_report();
    let bin = server.bin.clone();
    let logs = server.logs.clone();
    let balancer_log = server.balancer.as_ref().map(|b| path_str(&b.log));
    server.stop();
    // Read again once stopped: a panic while draining counts too.
    let panics = scenario::server_log_panics(&logs);
    let mut runs = result?;
    for run in &mut runs {
        run.server_bin = Some(bin.clone());
        run.summary.server_log_panics = panics;
        run.summary.server_logs = logs.iter().map(|p| p.display().to_string()).collect();
        run.summary.server_cgroup_memory_peak_bytes = peak;
        run.summary.server_oom_kills = oom_kills;
        if let Some(c) = &mut run.summary.cluster {
            c.balancer_log.clone_from(&balancer_log);
        }
    }
    Ok(runs)
}

/// Fails, naming `flag`, when `cpus` names a CPU this machine does not have online (taskset
/// and sched_setaffinity would refuse it later, for every run).
pub(crate) fn check_online(flag: &str, cpus: &CpuList) -> anyhow::Result<()> {
    let Some(online) = kernel::online_cpus() else {
        return Ok(());
    };
    let missing = cpus.missing_from(&online);
    anyhow::ensure!(
        missing.is_empty(),
        "{flag} {cpus}: CPU {missing:?} not online on this machine (online: {online})"
    );
    Ok(())
}

/// Ports one target's start takes from its base: one per server process, or a cluster's
/// block (HAProxy, then each instance's HTTP and cluster port).
fn ports_per_start(args: &CompareArgs) -> u64 {
    let cluster = args.targets.contains(&TargetKind::SokdoCluster);
    let block = if cluster {
        cluster::Layout::ports(args.cluster_instances)
    } else {
        1
    };
    args.server_processes.max(block)
}

/// `--haproxy-maxconn`, or the largest the open-file limit allows HAProxy.
fn haproxy_maxconn(args: &CompareArgs) -> anyhow::Result<u32> {
    let files = kernel::open_files_max()
        .context("reading this process's open-file limit (/proc/self/limits)")?;
    cluster::haproxy_maxconn(args.haproxy_maxconn, files)
}

fn name(t: TargetKind) -> &'static str {
    match t {
        TargetKind::Sokdo => "sokdo",
        TargetKind::SokdoCluster => "sokdo-cluster",
        TargetKind::SokdoBase => "sokdo-base",
        TargetKind::Socketio => "socketio",
        TargetKind::Ws => "ws",
        TargetKind::Tokio => "tokio",
    }
}

fn protocol(t: TargetKind) -> Protocol {
    match t {
        TargetKind::Socketio => Protocol::Socketio,
        _ => Protocol::Sokdo,
    }
}

/// A scenario's own flags, parsed as its subcommand would parse them.
#[derive(Parser)]
struct Flags<T: Args> {
    #[command(flatten)]
    inner: T,
}

fn parse_flags<T: Args>(
    scenario: &str,
    extra: &str,
    target: TargetKind,
    server: &Server,
) -> anyhow::Result<T> {
    let mut argv: Vec<String> = vec![
        scenario.into(),
        "--server".into(),
        scenario::servers_label(&server.addrs),
        "--protocol".into(),
        format!("{:?}", protocol(target)).to_lowercase(),
        "--target-name".into(),
        name(target).into(),
    ];
    let pids: Vec<String> = server.pids().iter().map(|p| p.to_string()).collect();
    argv.extend(["--server-pid".into(), pids.join(",")]);
    argv.extend(["--server-cpus".into(), server.cpus.to_string()]);
    let logs: Vec<String> = server.logs.iter().map(|p| path_str(p)).collect();
    argv.extend(["--server-log".into(), logs.join(",")]);
    if let Some(b) = &server.balancer {
        argv.extend([
            "--cluster-http".into(),
            scenario::servers_label(&b.instances),
        ]);
        argv.extend(["--balancer-pid".into(), b.child.id().to_string()]);
    }
    argv.extend(extra.split_whitespace().map(String::from));
    Ok(Flags::<T>::try_parse_from(argv)
        .with_context(|| format!("--{scenario}-args {extra:?}"))?
        .inner)
}

/// Runs `scenario` against `server`: one run, or a `steady` preset's runs (`webchat` has
/// two).
pub(crate) fn run_scenario(
    args: &CompareArgs,
    scenario: ScenarioKind,
    target: TargetKind,
    server: &Server,
) -> anyhow::Result<Vec<Run>> {
    let run = match scenario {
        ScenarioKind::Ramp => scenario::ramp(&parse_flags::<RampArgs>(
            "ramp",
            &args.ramp_args,
            target,
            server,
        )?)?,
        ScenarioKind::Fanout => {
            let a = parse_flags::<FanoutArgs>("fanout", &args.fanout_args, target, server)?;
            scenario::run_load(&a.common, "fanout", &a.load())?
        }
        ScenarioKind::Idle => scenario::idle(&parse_flags::<IdleArgs>(
            "idle",
            &args.idle_args,
            target,
            server,
        )?)?,
        ScenarioKind::Steady => {
            let a = parse_flags::<SteadyArgs>("steady", &args.steady_args, target, server)?;
            a.check().context("--steady-args")?;
            return steady::steady(&a);
        }
    };
    Ok(vec![run])
}

fn not_started(scenario: ScenarioKind, target: TargetKind, e: &anyhow::Error) -> Run {
    eprintln!("warning: {target:?} not started: {e:#}");
    Run {
        scenario: format!("{scenario:?}").to_lowercase(),
        target: name(target).into(),
        protocol: format!("{:?}", protocol(target)).to_lowercase(),
        summary: Summary {
            unreachable: true,
            stop_reason: format!("server not started: {e:#}"),
            ..Summary::default()
        },
        ..Run::default()
    }
}

/// A target under test: its server processes (one per port, from `port`) and the cgroup
/// holding them all — one emulated instance whose processes sit behind a load balancer.
pub(crate) struct Server {
    /// The binary (a Node peer: its script) the processes run: what tells two sokdo builds
    /// apart in the reports.
    pub(crate) bin: String,
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
    cpus: CpuList,
    /// The memory cgroup (its figures are read at the end).
    cgroup: Option<PathBuf>,
    /// Every cgroup the processes enter (memory, and CPU when quota'd: one directory on v2,
    /// two on v1), removed at the end.
    cgroups: Vec<PathBuf>,
    memory_limit_bytes: Option<u64>,
    _data_dirs: Vec<TempDir>,
    /// Each process's stderr (its log), kept beside the report (`log_path`).
    logs: Vec<PathBuf>,
    /// Target `sokdo-cluster`: HAProxy in front of the instances (`children`, `logs`).
    balancer: Option<Balancer>,
}

/// Target `sokdo-cluster`'s HAProxy: its process, the instances it balances, and the
/// directory of its configuration and admin socket.
struct Balancer {
    child: Child,
    /// The instances' HTTP addresses (their `/metrics`).
    instances: Vec<SocketAddr>,
    /// HAProxy's stderr, beside the report.
    log: PathBuf,
    _dir: TempDir,
}

impl Server {
    pub(crate) fn start(
        args: &CompareArgs,
        target: TargetKind,
        port: u16,
    ) -> anyhow::Result<Server> {
        let processes = args.server_processes.max(1);
        let limit = args.memory_limit_mib * 1024 * 1024;
        let cgroup = make_cgroup(name(target), limit)
            .map_err(|e| eprintln!("warning: no memory limit for the server: {e:#}"))
            .ok();
        let mut server = Server {
            bin: String::new(),
            children: Vec::new(),
            addrs: Vec::new(),
            cpus: args.server_cpus.clone(),
            memory_limit_bytes: cgroup.as_ref().map(|(_, l)| *l),
            cgroups: cgroup.iter().map(|(d, _)| d.clone()).collect(),
            cgroup: cgroup.map(|(d, _)| d),
            _data_dirs: Vec::new(),
            logs: Vec::new(),
            balancer: None,
        };
        // Asked for, a quota is part of what is measured: no cgroup for it, no run.
        if let Some(percent) = args.server_cpu_quota_percent {
            match make_cpu_cgroup(name(target), percent, server.cgroup.as_deref()) {
                Ok(dir) if server.cgroups.contains(&dir) => {}
                Ok(dir) => server.cgroups.push(dir),
                Err(e) => {
                    server.stop();
                    return Err(e.context("--server-cpu-quota-percent"));
                }
            }
        }
        let started = match target {
            TargetKind::SokdoCluster => server.start_cluster(args, port),
            _ => server.start_processes(args, target, port, processes),
        };
        if let Err(e) = started {
            server.stop();
            return Err(e);
        }
        Ok(server)
    }

    /// Starts `processes` server processes on consecutive ports from `port`, each entering
    /// the target's cgroups and CPUs before it runs, and waits until all answer.
    fn start_processes(
        &mut self,
        args: &CompareArgs,
        target: TargetKind,
        port: u16,
        processes: u64,
    ) -> anyhow::Result<()> {
        for i in 0..processes {
            let addr: SocketAddr = format!("127.0.0.1:{}", port + i as u16).parse()?;
            let (program, data_dir) = program(args, target, addr)?;
            let script = usize::from(program[0] == "node");
            self.bin.clone_from(&program[script]);
            anyhow::ensure!(
                !scenario::reachable(addr),
                "port {} is already in use",
                addr.port()
            );
            let log = log_path(args, name(target), addr.port());
            let child = self.spawn_entered(args, &program, &log)?;
            self.logs.push(log);
            self.children.push(child);
            self.addrs.push(addr);
            self._data_dirs.extend(data_dir);
        }
        wait_ready(&self.addrs, Duration::from_secs(30))
    }

    /// Target `sokdo-cluster`: `--cluster-instances` sokdo instances on the ports of
    /// [`cluster::Layout`] from `port`, each told the others' cluster addresses; once every
    /// one sees the others alive with quorum, HAProxy in front of them, until it has them
    /// all UP. The scenario's users connect to HAProxy only.
    fn start_cluster(&mut self, args: &CompareArgs, port: u16) -> anyhow::Result<()> {
        let layout = cluster::Layout::new(port, args.cluster_instances)?;
        layout.check_free()?;
        for (i, addr) in layout.http.iter().enumerate() {
            let (mut program, data_dir) = program(args, TargetKind::Sokdo, *addr)?;
            program.extend(layout.instance_args(i));
            self.bin.clone_from(&program[0]);
            let log = log_path(args, name(TargetKind::SokdoCluster), addr.port());
            let child = self.spawn_entered(args, &program, &log)?;
            self.logs.push(log);
            self.children.push(child);
            self._data_dirs.extend(data_dir);
        }
        wait_ready(&layout.http, Duration::from_secs(30))?;
        cluster::wait_formed(&layout.http, cluster::FORM_TIMEOUT)?;
        let dir = TempDir::new("sokdo-bench-haproxy")?;
        let stats = dir.0.join("admin.sock");
        let cfg = dir.0.join("haproxy.cfg");
        let maxconn = haproxy_maxconn(args)?;
        std::fs::write(&cfg, layout.haproxy_cfg(maxconn, &path_str(&stats)))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let program = [
            path_str(&args.haproxy_bin),
            "-db".into(),
            "-f".into(),
            path_str(&cfg),
        ];
        let log = log_path(args, "sokdo-cluster-haproxy", layout.balancer.port());
        let child = self
            .spawn_entered(args, &program, &log)
            .context("--haproxy-bin (scripts/install-deps.sh installs HAProxy)")?;
        self.balancer = Some(Balancer {
            child,
            instances: layout.http.clone(),
            log: log.clone(),
            _dir: dir,
        });
        let names: Vec<String> = (0..layout.http.len())
            .map(cluster::Layout::node_id)
            .collect();
        cluster::wait_up(&stats, &names, cluster::FORM_TIMEOUT).with_context(|| {
            format!(
                "HAProxy {} (its log: {})",
                args.haproxy_bin.display(),
                log.display()
            )
        })?;
        self.addrs.push(layout.balancer);
        Ok(())
    }

    /// Spawns `program` so that it runs in the target's cgroups and on its CPUs, its stderr
    /// to `log`.
    fn spawn_entered(
        &self,
        args: &CompareArgs,
        program: &[String],
        log: &Path,
    ) -> anyhow::Result<Child> {
        // `sh` puts itself in the cgroup, then becomes taskset, which becomes the server:
        // one pid throughout, limited and pinned from its first allocation.
        let enter: String = self
            .cgroups
            .iter()
            .map(|dir| format!("echo $$ > '{}/cgroup.procs' && ", dir.display()))
            .collect();
        let script = format!("{enter}exec taskset -c {} \"$@\"", args.server_cpus);
        let mut command = Command::new("sh");
        // sokdo reports a task that holds a shard past its slice (glommio's stall
        // detector) in bench runs too, unless the caller chose otherwise; other servers
        // ignore the variable.
        if std::env::var_os("SOKDO_DETECT_STALLS").is_none() {
            command.env("SOKDO_DETECT_STALLS", "true");
        }
        // The generator's few source addresses (127.0.0.2, .3, …) stand for thousands of
        // clients each, so sokdo's per-address connection rate limit would refuse the
        // ramp: it is off in bench runs unless the caller sets it. An environment
        // variable, not a flag, so a build from before the limit starts too.
        // Likewise the per-address connection and handshake caps, and the per-connection message rate
        // limit: the fan-out scenario sends thousands per second from few connections.
        // (Behind HAProxy every connection comes from 127.0.0.1.)
        for var in [
            "SOKDO_CONNECTIONS_PER_IP_PER_S",
            "SOKDO_CONNECTIONS_PER_IP_MAX",
            "SOKDO_HANDSHAKES_PER_IP_MAX",
            "SOKDO_MESSAGES_PER_CONNECTION_PER_S",
        ] {
            if std::env::var_os(var).is_none() {
                command.env(var, "0");
            }
        }
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating the server's log {}", log.display()))?;
        command
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", program[0]))
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// The cgroup's peak memory and the OOM kills in it, when it has them.
    fn memory_report(&self) -> (Option<u64>, Option<u64>) {
        let Some(dir) = &self.cgroup else {
            return (None, None);
        };
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let peak = read("memory.max_usage_in_bytes")
            .or_else(|| read("memory.peak"))
            .and_then(|v| v.trim().parse().ok());
        let oom = read("memory.oom_control")
            .or_else(|| read("memory.events"))
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            });
        (peak, oom)
    }

    pub(crate) fn stop(mut self) {
        let balancer = self.balancer.take().map(|b| b.child);
        self.children.extend(balancer);
        for child in &self.children {
            // Our own child, not yet reaped: its pid cannot have been reused.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in self.children.iter_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.cgroups {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Polls every address's `/healthz` until it answers 200 (bounded).
fn wait_ready(addrs: &[SocketAddr], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for addr in addrs {
        while !healthz(*addr) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{addr} did not answer /healthz within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Where a server process's stderr goes: beside the JSON report (else the HTML one, else
/// the current directory), named after the target and the port,
/// `<report>.<target>-<port>.log`.
fn log_path(args: &CompareArgs, target: &str, port: u16) -> PathBuf {
    let report = args.json.as_ref().or(args.html.as_ref());
    let stem = report
        .and_then(|p| p.file_stem())
        .map_or("sokdo-bench".into(), |s| s.to_string_lossy().into_owned());
    let file = format!("{stem}.{target}-{port}.log");
    match report.and_then(|p| p.parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(file),
        _ => PathBuf::from(file),
    }
}

/// The command line of one server process of `target` on `addr`, and its data directory.
fn program(
    args: &CompareArgs,
    target: TargetKind,
    addr: SocketAddr,
) -> anyhow::Result<(Vec<String>, Option<TempDir>)> {
    let beside =
        |bin: &str| -> anyhow::Result<PathBuf> { Ok(std::env::current_exe()?.with_file_name(bin)) };
    let mut data_dir = None;
    let program: Vec<String> = match target {
        TargetKind::Sokdo | TargetKind::SokdoBase | TargetKind::SokdoCluster => {
            let bin = match (target, &args.sokdo_bin, &args.sokdo_base_bin) {
                (TargetKind::SokdoBase, _, Some(b)) => b.clone(),
                (TargetKind::SokdoBase, _, None) => {
                    anyhow::bail!("target sokdo-base needs --sokdo-base-bin")
                }
                (_, Some(b), _) => b.clone(),
                (_, None, _) => beside("sokdo")?,
            };
            let dir = TempDir::new("sokdo-bench-data")?;
            let mut argv = vec![
                path_str(&bin),
                "--listen".into(),
                addr.to_string(),
                "--shards".into(),
                args.sokdo_shards.to_string(),
                "--data-dir".into(),
                path_str(&dir.0),
            ];
            argv.extend(args.sokdo_args.split_whitespace().map(String::from));
            data_dir = Some(dir);
            argv
        }
        TargetKind::Tokio => {
            let bin = match &args.tokio_bin {
                Some(b) => b.clone(),
                None => beside("sokdo-peer-tokio")?,
            };
            vec![path_str(&bin), "--listen".into(), addr.to_string()]
        }
        TargetKind::Ws | TargetKind::Socketio => {
            let dir = args.peers_dir.join(if target == TargetKind::Ws {
                "ws"
            } else {
                "socketio"
            });
            anyhow::ensure!(
                dir.join("node_modules").is_dir(),
                "{} has no node_modules: run scripts/install-bench-peers.sh",
                dir.display()
            );
            vec![
                "node".into(),
                path_str(&dir.join("server.js")),
                "--listen".into(),
                addr.to_string(),
            ]
        }
    };
    anyhow::ensure!(
        program[0] == "node" || Path::new(&program[0]).is_file(),
        "{} is missing (build it: cargo build --release -p sokdo-engine -p sokdo-peer-tokio)",
        program[0]
    );
    Ok((program, data_dir))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// A memory cgroup for the server: v1 when its memory controller is mounted, else v2.
fn make_cgroup(target: &str, limit: u64) -> anyhow::Result<(PathBuf, u64)> {
    let leaf = format!("sokdo-bench-{target}-{}", std::process::id());
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let (dir, file) = if v1.join("memory.limit_in_bytes").exists() {
        (v1.join(leaf), "memory.limit_in_bytes")
    } else {
        (Path::new("/sys/fs/cgroup").join(leaf), "memory.max")
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(file), limit.to_string())
        .with_context(|| format!("writing {}/{file}", dir.display()))?;
    Ok((dir, limit))
}

/// A CPU cgroup holding the server to `percent` of one CPU: v1's cpu controller when mounted
/// (a directory of its own), else v2's `cpu.max` in `memory_dir` when that is a v2 directory
/// (one cgroup for both), or in a new v2 directory. Returns the directory.
fn make_cpu_cgroup(
    target: &str,
    percent: f64,
    memory_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let (quota, period) = cpu_quota_us(percent);
    let write = |dir: &Path, file: &str, value: String| -> anyhow::Result<()> {
        std::fs::write(dir.join(file), &value)
            .with_context(|| format!("writing {value:?} to {}/{file}", dir.display()))
    };
    let leaf = format!("sokdo-bench-{target}-{}", std::process::id());
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        let dir = v1.join(leaf);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The period first: a quota is checked against the period in force.
        write(&dir, "cpu.cfs_period_us", period.to_string())?;
        write(&dir, "cpu.cfs_quota_us", quota.to_string())?;
        return Ok(dir);
    }
    let root = Path::new("/sys/fs/cgroup");
    anyhow::ensure!(
        root.join("cgroup.controllers").exists(),
        "neither cgroup v1's cpu controller (/sys/fs/cgroup/cpu) nor cgroup v2 is mounted"
    );
    // The children of the root get a cpu.max only when the root delegates the controller.
    let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
    let dir = match memory_dir {
        Some(d) if d.parent() == Some(root) => d.to_path_buf(),
        _ => root.join(leaf),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir, "cpu.max", format!("{quota} {period}"))?;
    Ok(dir)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            crate::clock::monotonic_ns()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A headline metric: its scenario, its name, whether higher is better, and its value in a
/// run.
type Metric = (&'static str, &'static str, bool, fn(&Run) -> Option<f64>);

/// The metrics `compare` puts side by side.
fn headline_metrics() -> [Metric; 15] {
    let link_bytes = |r: &Run| r.summary.cluster.as_ref()?.link_bytes_per_delivery;
    let cpu_percent = |r: &Run| Some(r.summary.server_cpu_s? / r.duration_s.max(1e-3) * 100.0);
    [
        ("ramp", "users held", true, |r| {
            Some(r.summary.users_held as f64)
        }),
        ("ramp", "p99 ms at last healthy step", false, |r| {
            last_healthy(r)
                .filter(|st| st.latency_ms.samples > 0)
                .map(|st| st.latency_ms.p99)
        }),
        ("ramp", "server RSS MiB at users held", false, |r| {
            r.summary
                .server_rss_after_bytes
                .map(|b| b as f64 / (1024.0 * 1024.0))
        }),
        ("ramp", "RSS bytes per user held", false, |r| {
            r.summary.server_rss_per_connection_bytes
        }),
        ("ramp", "server CPU % of one CPU", false, cpu_percent),
        (
            "ramp",
            "bytes between instances per delivery",
            false,
            link_bytes,
        ),
        ("fanout", "deliveries/s", true, |r| {
            Some(r.summary.deliveries_per_s)
        }),
        ("fanout", "latency p99 ms", false, |r| {
            (r.summary.latency_ms.samples > 0).then_some(r.summary.latency_ms.p99)
        }),
        ("fanout", "latency p50 ms", false, |r| {
            (r.summary.latency_ms.samples > 0).then_some(r.summary.latency_ms.p50)
        }),
        ("idle", "RSS bytes per connection", false, |r| {
            r.summary.server_rss_per_connection_bytes
        }),
        ("steady", "deliveries/s", true, |r| {
            Some(r.summary.deliveries_per_s)
        }),
        ("steady", "latency p99 ms", false, |r| {
            (r.summary.latency_ms.samples > 0).then_some(r.summary.latency_ms.p99)
        }),
        ("steady", "latency mean ms", false, |r| {
            (r.summary.latency_ms.samples > 0).then_some(r.summary.latency_ms.mean)
        }),
        ("steady", "server CPU % of one CPU", false, cpu_percent),
        (
            "steady",
            "bytes between instances per delivery",
            false,
            link_bytes,
        ),
    ]
}

/// The headline metrics, per scenario, with ratios to `baseline`. A metric of `steady`
/// gives one row per preset run (`steady:ktb`, …).
pub fn comparison(runs: &[Run], baseline: &str) -> Comparison {
    let mut rows = Vec::new();
    for (scenario, metric, higher_is_better, value) in headline_metrics() {
        for name in scenario_names(runs, scenario) {
            let mut row = ComparisonRow {
                scenario: name.clone(),
                metric: metric.into(),
                higher_is_better,
                ..ComparisonRow::default()
            };
            for run in runs.iter().filter(|r| {
                r.scenario == name && !r.summary.stop_reason.starts_with("server not started")
            }) {
                if let Some(v) = value(run) {
                    row.values.insert(run.target.clone(), v);
                }
            }
            if row.values.is_empty() {
                continue;
            }
            if let Some(base) = row.values.get(baseline).copied().filter(|b| *b != 0.0) {
                row.ratios = row
                    .values
                    .iter()
                    .map(|(t, v)| (t.clone(), v / base))
                    .collect();
            }
            rows.push(row);
        }
    }
    Comparison {
        baseline: baseline.into(),
        rows,
    }
}

/// The runs' scenario names that `scenario` stands for: itself, or for `steady` each
/// preset's (`steady:ktb`, `steady:webchat-1000x100`, …) in order of appearance.
fn scenario_names(runs: &[Run], scenario: &str) -> Vec<String> {
    if scenario != "steady" {
        return vec![scenario.to_owned()];
    }
    let mut names: Vec<String> = Vec::new();
    for r in runs.iter().filter(|r| r.scenario.starts_with("steady:")) {
        if !names.contains(&r.scenario) {
            names.push(r.scenario.clone());
        }
    }
    names
}

/// The last step of a ramp that stayed healthy.
pub fn last_healthy(r: &Run) -> Option<&crate::report::Step> {
    r.steps.iter().rev().find(|st| st.healthy)
}

fn print_comparison(c: &Comparison) {
    println!("\n== comparison (ratio to {})", c.baseline);
    for row in &c.rows {
        let cells: Vec<String> = row
            .values
            .iter()
            .map(|(t, v)| match row.ratios.get(t) {
                Some(r) => format!("{t} {v:.1} (×{r:.2})"),
                None => format!("{t} {v:.1}"),
            })
            .collect();
        println!(
            "   {:<14} {:<37} {}",
            row.scenario,
            row.metric,
            cells.join("  ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{comparison, cpu_quota_us, parse_quota_percent, ports_per_start, CompareArgs};
    use crate::report::{ClusterFigures, Run, Summary};
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        inner: CompareArgs,
    }

    fn parse(args: &[&str]) -> Result<CompareArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("compare").chain(args.iter().copied()))
            .map(|w| w.inner)
    }

    #[test]
    fn a_cluster_target_takes_its_block_of_ports_per_start() {
        let a = parse(&["--targets", "sokdo,sokdo-cluster"]).unwrap();
        assert_eq!(a.cluster_instances, 3);
        assert_eq!(a.haproxy_bin.to_str(), Some("haproxy"));
        assert_eq!(a.haproxy_maxconn, None);
        // HAProxy, then three HTTP and three cluster ports.
        assert_eq!(ports_per_start(&a), 7);
        let a = parse(&["--targets", "sokdo-cluster", "--cluster-instances", "5"]).unwrap();
        assert_eq!(ports_per_start(&a), 11);
        // Without the cluster target, a start takes one port per process.
        let a = parse(&["--targets", "sokdo", "--server-processes", "4"]).unwrap();
        assert_eq!(ports_per_start(&a), 4);
        let a = parse(&["--steady-args", "--preset ktb", "--haproxy-maxconn", "5000"]).unwrap();
        assert_eq!(a.haproxy_maxconn, Some(5000));
    }

    #[test]
    fn steady_args_are_checked_before_any_server_starts() {
        let check = |steady: &str| {
            parse(&["--scenarios", "steady", "--steady-args", steady])
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        assert_eq!(check("--preset ktb --scale 0.1"), Ok(()));
        let err = check("").unwrap_err();
        assert!(
            err.contains("--steady-args") && err.contains("--preset"),
            "{err}"
        );
        let err = check("--preset webchat --room-size 5").unwrap_err();
        assert!(err.contains("--room-size"), "{err}");
        // Not asked for, not checked.
        let a = parse(&["--scenarios", "idle"]).unwrap();
        assert!(a.check().is_ok());
    }

    #[test]
    fn a_cluster_needs_two_instances_and_at_most_sixteen() {
        for bad in ["1", "17", "x"] {
            let err = parse(&["--cluster-instances", bad])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("--cluster-instances"), "{bad}: {err}");
        }
        assert!(parse(&["--cluster-instances", "16"]).is_ok());
    }

    fn run(scenario: &str, target: &str, deliveries_per_s: f64, link: Option<f64>) -> Run {
        Run {
            scenario: scenario.into(),
            target: target.into(),
            duration_s: 10.0,
            summary: Summary {
                deliveries_per_s,
                server_cpu_s: Some(2.0),
                cluster: link.map(|b| ClusterFigures {
                    link_bytes_per_delivery: Some(b),
                    ..ClusterFigures::default()
                }),
                ..Summary::default()
            },
            ..Run::default()
        }
    }

    #[test]
    fn steady_runs_compare_per_preset_and_a_cluster_adds_its_bytes_per_delivery() {
        let runs = [
            run("steady:ktb", "sokdo", 900.0, None),
            run("steady:ktb", "sokdo-cluster", 450.0, Some(30.0)),
        ];
        let c = comparison(&runs, "sokdo");
        let row = |metric: &str| {
            c.rows
                .iter()
                .find(|r| r.scenario == "steady:ktb" && r.metric == metric)
                .unwrap_or_else(|| panic!("no row {metric}: {:?}", c.rows))
        };
        assert_eq!(row("deliveries/s").ratios["sokdo-cluster"], 0.5);
        assert_eq!(row("server CPU % of one CPU").values["sokdo"], 20.0);
        let bytes = row("bytes between instances per delivery");
        assert_eq!(bytes.values.len(), 1, "{bytes:?}");
        assert_eq!(bytes.values["sokdo-cluster"], 30.0);
        assert!(
            c.rows.iter().all(|r| r.scenario == "steady:ktb"),
            "{:?}",
            c.rows
        );
    }

    #[test]
    fn quota_percent_is_of_one_cpu_per_period() {
        assert_eq!(cpu_quota_us(20.0), (20_000, 100_000));
        assert_eq!(cpu_quota_us(40.0), (40_000, 100_000));
        assert_eq!(cpu_quota_us(150.0), (150_000, 100_000));
        assert_eq!(cpu_quota_us(1.0), (1_000, 100_000));
        // Under 1 %, a 1 s period keeps the quota at or above the kernel's 1 ms.
        assert_eq!(cpu_quota_us(0.5), (5_000, 1_000_000));
        assert_eq!(cpu_quota_us(0.1), (1_000, 1_000_000));
    }

    #[test]
    fn quota_percent_refuses_what_the_kernel_cannot_do() {
        assert_eq!(parse_quota_percent("20"), Ok(20.0));
        assert!(parse_quota_percent("0")
            .unwrap_err()
            .contains("at least 0.1"));
        assert!(parse_quota_percent("-5")
            .unwrap_err()
            .contains("at least 0.1"));
        assert!(parse_quota_percent("NaN")
            .unwrap_err()
            .contains("at least 0.1"));
        assert!(parse_quota_percent("x")
            .unwrap_err()
            .contains("not a number"));
    }
}
