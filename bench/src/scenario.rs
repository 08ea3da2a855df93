//! The scenarios: `fanout`, `steady` presets (both a fixed load, [`run_load`]), `ramp`
//! (users added in steps until the target or the server gives up) and `idle` (memory per
//! connection). Each drives a [`Fleet`] one tick (one second) at a time and turns the ticks
//! into a [`Run`].
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::clock;
use crate::cluster;
use crate::fleet::{Fleet, FleetConfig, Target, View};
use crate::kernel::{self, servers_rss, CpuList};
use crate::metrics::{self, Histogram};
use crate::proto::Protocol;
use crate::report::{
    ClusterFigures, CommitFigures, Generator, Latency, Run, Sample, Step, Summary,
};
use crate::worker::{Command, Rooms};

/// Flags every scenario shares.
#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct Common {
    /// The server's address; a comma-separated list for a target of several processes,
    /// where room `r` is served by the `r mod N`-th (a room's members share a process).
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        value_delimiter = ',',
        required = true
    )]
    pub server: Vec<SocketAddr>,
    /// The protocol the server speaks.
    #[arg(long, value_enum, default_value = "sokdo")]
    pub protocol: Protocol,
    /// A label for the target in reports.
    #[arg(long, default_value = "sokdo")]
    pub target_name: String,
    /// The server's pid, to read its RSS from /proc when it runs on this machine; a
    /// comma-separated list for several processes (their RSS is summed).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The CPUs the server runs on (taskset list: "0", "0-3"), to report their busy time
    /// (`server_cpus_busy_s`: with the kernel's softirq TCP work, not always charged to the
    /// server's pids). `compare` passes its own.
    #[arg(long)]
    pub server_cpus: Option<CpuList>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write the HTML report (with SVG plots) here.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// At least this many worker processes (more when users need them: ≤ 18,000 each).
    #[arg(long, default_value_t = 1)]
    pub workers: u64,
    /// One user in this many parses its frames for latency; the others only count them.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    /// Bytes of each message body (at least the timestamp).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Time allowed for connect + upgrade + admission + join, per user.
    #[arg(long, default_value_t = 10_000)]
    pub setup_timeout_ms: u64,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 256)]
    pub handshakes_in_flight_max: usize,
    /// The server's stderr (its log), as a file written by whoever started it; a
    /// comma-separated list for several processes. Scanned for panics at the end
    /// (`server_log_panics`). `compare` passes the logs of the servers it starts.
    #[arg(long, value_delimiter = ',')]
    pub server_log: Vec<std::path::PathBuf>,
    /// With `--server` a load balancer in front of a sokdo cluster: the instances' HTTP
    /// addresses (comma-separated). Their `/metrics` are read before the first connect and
    /// at the end, the connections still open: the bytes they sent each other, per delivery
    /// (`summary.cluster`), and the connections each held. `compare` passes its own.
    #[arg(long, value_delimiter = ',')]
    pub cluster_http: Vec<SocketAddr>,
    /// The load balancer's pid, to report its CPU and RSS apart from the server's (with
    /// `--cluster-http`).
    #[arg(long)]
    pub balancer_pid: Option<u32>,
}

/// A fixed load: the shape shared by `fanout` and the `steady` presets.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Load {
    pub users: u64,
    pub rooms: Rooms,
    pub publishers: u64,
    /// Messages per second, all publishers together.
    pub rate_total: f64,
    /// Stop each publisher after this many messages (and the run when all are done).
    pub messages_max: Option<u64>,
    /// Publishing time, when `messages_max` is not set; its bound when it is.
    pub duration_s: f64,
    /// Time allowed for deliveries in flight to arrive after publishing stops.
    pub drain_s: f64,
}

/// A running scenario: its fleet, timeline and progress bar.
pub(crate) struct Session {
    pub(crate) common: Common,
    pub(crate) fleet: Fleet,
    bar: ProgressBar,
    timeline: Vec<Sample>,
    prev: Option<View>,
    peak_users: u64,
    cpu_busiest: Vec<f64>,
    bench_rss_max: u64,
    started: Instant,
    rooms: Rooms,
    /// The server's CPU at the scenario's start (before the first connect) and at the last
    /// tick.
    cpu_start: CpuMark,
    cpu_prev: CpuMark,
    rss_before: Option<u64>,
    tcp_mem_before_bytes: Option<u64>,
    /// `--cluster-http`: the instances' counters and the balancer's CPU at the start.
    cluster_before: Option<cluster::Mark>,
    balancer_cpu_before_s: Option<f64>,
    /// sokdo's group-commit histogram at the start (`None`: a server without it).
    commits_before: Option<Histogram>,
}

/// The CPU time the server (its pids, and its CPUs when known) had used at one moment.
#[derive(Clone, Copy, Debug)]
struct CpuMark {
    at: Instant,
    server_cpu_s: Option<f64>,
    cpus_busy_s: Option<f64>,
}

impl CpuMark {
    fn now(common: &Common) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server_cpu_s: kernel::processes_cpu_s(&common.server_pid),
            cpus_busy_s: common.server_cpus.as_ref().and_then(kernel::cpus_busy_s),
        }
    }

    /// The server's CPU seconds between `earlier` and this mark, and its CPUs' busy seconds.
    fn since(&self, earlier: &CpuMark) -> (Option<f64>, Option<f64>) {
        let diff = |a: Option<f64>, b: Option<f64>| Some((a? - b?).max(0.0));
        (
            diff(self.server_cpu_s, earlier.server_cpu_s),
            diff(self.cpus_busy_s, earlier.cpus_busy_s),
        )
    }
}

/// Rooms with a member and the most members of one room, for `users` users (`0..users`).
fn room_shape(rooms: Rooms, users: u64) -> (u64, u64) {
    if users == 0 {
        return (0, 0);
    }
    match rooms {
        Rooms::Modulo(n) => {
            let n = n.max(1);
            (n.min(users), users.div_ceil(n))
        }
        Rooms::Blocks(size) => {
            let size = size.max(1);
            (users.div_ceil(size), size.min(users))
        }
    }
}

impl Session {
    pub(crate) fn start(common: &Common, users_max: u64, rooms: Rooms) -> anyhow::Result<Session> {
        Session::start_with(common, users_max, rooms, None)
    }

    /// `start`, with dropped users coming back after up to `reconnect_ms` (`soak`).
    pub(crate) fn start_with(
        common: &Common,
        users_max: u64,
        rooms: Rooms,
        reconnect_ms: Option<u64>,
    ) -> anyhow::Result<Session> {
        let cpu_start = CpuMark::now(common);
        let rss_before = servers_rss(&common.server_pid);
        let tcp_mem_before_bytes = kernel::tcp_mem_bytes();
        let cluster_before = cluster_mark(common);
        let balancer_cpu_before_s = balancer_cpu_s(common);
        let commits_before = commits_histogram(common);
        let cfg = FleetConfig {
            users_max,
            workers_min: common.workers,
            rooms,
            body_bytes: common.body_bytes.max(24),
            sample_every: common.sample_every,
            setup_timeout_ms: common.setup_timeout_ms,
            handshakes_in_flight_max: common.handshakes_in_flight_max,
            reconnect_ms,
        };
        let target = Target {
            servers: common.server.clone(),
            protocol: common.protocol,
        };
        crate::kernel::prepare(
            users_max,
            crate::worker::USERS_PER_WORKER_MAX.min(users_max),
        );
        let fleet = Fleet::start(&target, &cfg, clock::monotonic_ns())?;
        let bar = ProgressBar::new(users_max);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:24}] {pos}/{len} users  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Ok(Session {
            common: common.clone(),
            fleet,
            bar,
            timeline: Vec::new(),
            prev: None,
            peak_users: 0,
            cpu_busiest: Vec::new(),
            bench_rss_max: 0,
            started: Instant::now(),
            rooms,
            cpu_start,
            cpu_prev: cpu_start,
            rss_before,
            tcp_mem_before_bytes,
            cluster_before,
            commits_before,
            balancer_cpu_before_s,
        })
    }

    pub(crate) fn tick(&mut self) -> View {
        let view = self.fleet.tick(Duration::from_secs(3));
        let rss = servers_rss(&self.common.server_pid);
        let mut sample = view.sample(self.prev.as_ref(), rss);
        let cpu = CpuMark::now(&self.common);
        let tick_s = cpu.at.duration_since(self.cpu_prev.at).as_secs_f64();
        sample.server_cpu_percent = cpu
            .since(&self.cpu_prev)
            .0
            .map(|s| s / tick_s.max(1e-3) * 100.0);
        self.cpu_prev = cpu;
        self.bar.set_position(view.totals.connected);
        self.bar.set_message(format!(
            "sent {}  recv {} ({:.0}/s)  p99 {:.1} ms  fail {}  errors {}  bench cpu {:.0}%",
            view.totals.sent,
            view.totals.received,
            sample.deliveries_per_s,
            sample.latency_ms.p99,
            view.totals.connect_fail,
            view.errors_total(),
            view.cpu_percent
        ));
        self.peak_users = self.peak_users.max(view.totals.connected);
        self.cpu_busiest.push(view.busiest_cpu_percent);
        self.bench_rss_max = self.bench_rss_max.max(view.totals.rss_bytes);
        self.timeline.push(sample);
        self.prev = Some(view.clone());
        view
    }

    /// True when the server lost most of our users (or never took any) and refuses new
    /// connections.
    pub(crate) fn server_gone(&self, view: &View) -> bool {
        let t = &view.totals;
        let lost = t.connected == 0 || t.connected < self.peak_users.div_ceil(2);
        let tried = t.connect_ok + t.connect_fail > 0;
        ((lost && tried) || view.workers_alive == 0) && unreachable(&self.common.server).is_some()
    }

    /// After the publishers stop: ticks until every send is acked and every expected
    /// delivery arrived, `drain_s` passes, or the server is gone (the `bool`).
    pub(crate) fn drain(&mut self, drain_s: f64) -> (View, bool) {
        let drain_until = Instant::now() + Duration::from_secs_f64(drain_s);
        loop {
            let view = self.tick();
            let done = view.totals.acked >= view.totals.sent
                && view
                    .expected_deliveries
                    .is_some_and(|e| view.totals.received >= e);
            if done || Instant::now() >= drain_until {
                return (view, false);
            }
            if self.server_gone(&view) {
                return (view, true);
            }
        }
    }

    /// Ticks until every user asked for so far has connected or failed (bounded).
    pub(crate) fn wait_connected(&mut self, users: u64) -> (View, bool) {
        let deadline = Instant::now()
            + Duration::from_millis(self.common.setup_timeout_ms)
            + Duration::from_secs(users / 500 + 5);
        loop {
            let view = self.tick();
            if self.server_gone(&view) {
                return (view, true);
            }
            let done = view.totals.connect_ok + view.totals.connect_fail >= users;
            if done || Instant::now() >= deadline {
                return (view, false);
            }
        }
    }

    /// The server's side of the window, read while its connections are still open: CPU
    /// since the start, RSS before/after (where the scenario did not measure its own), the
    /// kernel's TCP memory, the CPU cgroup the server is in and its quota, the rooms' shape.
    fn server_figures(&self, summary: &mut Summary) {
        summary.server_logs = (self.common.server_log.iter())
            .map(|p| p.display().to_string())
            .collect();
        summary.server_log_panics = server_log_panics(&self.common.server_log);
        let (cpu_s, busy_s) = CpuMark::now(&self.common).since(&self.cpu_start);
        summary.server_cpu_s = cpu_s;
        summary.server_cpus_busy_s = busy_s;
        if summary.server_rss_before_bytes.is_none() {
            summary.server_rss_before_bytes = self.rss_before;
        }
        if summary.server_rss_after_bytes.is_none() {
            summary.server_rss_after_bytes = servers_rss(&self.common.server_pid);
        }
        summary.kernel_tcp_mem_before_bytes = self.tcp_mem_before_bytes;
        summary.kernel_tcp_mem_after_bytes = kernel::tcp_mem_bytes();
        if let Some((dir, max)) = self
            .common
            .server_pid
            .first()
            .and_then(|p| kernel::cgroup_cpu_of(*p))
        {
            summary.server_cgroup_cpu = Some(dir);
            summary.server_cgroup_cpu_max = Some(max);
        }
        let (rooms, members) = room_shape(self.rooms, summary.users_held);
        summary.rooms = Some(rooms);
        summary.room_members_max = Some(members);
        summary.cluster = self.cluster_figures();
        summary.server_wal_commits = self
            .commits_before
            .as_ref()
            .zip(commits_histogram(&self.common))
            .and_then(|(before, after)| CommitFigures::of(&after.since(before)?));
    }

    /// `--cluster-http`: the instances' figures since the start and the balancer's CPU and
    /// RSS (the ratios per message come once the totals are known, in `finish`).
    fn cluster_figures(&self) -> Option<ClusterFigures> {
        let before = self.cluster_before.as_ref()?;
        let after = cluster_mark(&self.common)?;
        let mut figures = after.since(before);
        let pid = self.common.balancer_pid;
        figures.balancer_cpu_s = balancer_cpu_s(&self.common)
            .zip(self.balancer_cpu_before_s)
            .map(|(a, b)| (a - b).max(0.0));
        figures.balancer_rss_bytes = pid.and_then(kernel::rss_bytes);
        Some(figures)
    }

    pub(crate) fn finish(
        self,
        scenario: &str,
        config: serde_json::Value,
        mut summary: Summary,
    ) -> Run {
        self.server_figures(&mut summary);
        let Session {
            common,
            fleet,
            bar,
            timeline,
            peak_users,
            cpu_busiest,
            bench_rss_max,
            started,
            ..
        } = self;
        let workers = fleet.workers;
        let total_latency = fleet.total_latency.clone();
        let last = fleet.close();
        bar.finish_and_clear();
        let duration_s = started.elapsed().as_secs_f64();
        let t = &last.totals;
        summary.users_attempted = t.attempted;
        summary.users_peak = peak_users;
        summary.connect_ok = t.connect_ok;
        summary.connect_fail = t.connect_fail;
        summary.disconnects = t.disconnects;
        summary.sent = t.sent;
        summary.acked = t.acked;
        summary.received = t.received;
        summary.errors = t.errors.clone();
        summary.latency_ms = Latency::from_us(&total_latency);
        summary.session_length_s_mean = last.session_length_s_mean();
        if let Some(c) = &mut summary.cluster {
            c.per_message(summary.received, summary.acked);
        }
        let mut generator = generator_report(workers, t.cpu_ns, duration_s, &cpu_busiest);
        generator.rss_bytes_max = bench_rss_max;
        if let Some(w) = &generator.warning {
            eprintln!("warning: {w}");
        }
        Run {
            scenario: scenario.to_string(),
            target: common.target_name.clone(),
            protocol: format!("{:?}", common.protocol).to_lowercase(),
            server: servers_label(&common.server),
            config,
            duration_s,
            summary,
            generator,
            timeline,
            ..Run::default()
        }
    }
}

/// The cluster instances' counters (`--cluster-http`), `None` without instances or when
/// one does not answer (said on stderr).
fn cluster_mark(common: &Common) -> Option<cluster::Mark> {
    if common.cluster_http.is_empty() {
        return None;
    }
    let mark = cluster::Mark::read(&common.cluster_http);
    if mark.is_none() {
        eprintln!("warning: a cluster instance's /metrics did not answer: no link bytes");
    }
    mark
}

/// `sokdo_wal_commit_seconds` summed over the server's processes; `None` when one of them
/// does not answer `/metrics` or has no such histogram (a peer).
fn commits_histogram(common: &Common) -> Option<Histogram> {
    let mut sum = Histogram::default();
    for server in &common.server {
        let text = metrics::scrape(*server)?;
        sum.add(&Histogram::read(&text, "sokdo_wal_commit_seconds")?)?;
    }
    Some(sum)
}

fn balancer_cpu_s(common: &Common) -> Option<f64> {
    kernel::processes_cpu_s(&[common.balancer_pid?])
}

fn generator_report(workers: u64, cpu_ns: u64, duration_s: f64, busiest: &[f64]) -> Generator {
    let cpu_s = cpu_ns as f64 / 1e9;
    // The busiest worker over the busier half of the ticks: publishing, not idling.
    let mut sorted = busiest.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top = &sorted[..sorted.len().div_ceil(2)];
    let busiest_avg = if top.is_empty() {
        0.0
    } else {
        top.iter().sum::<f64>() / top.len() as f64
    };
    let warning = (busiest_avg > 85.0).then(|| {
        format!(
            "the load generator may be the bottleneck: its busiest worker used {busiest_avg:.0}% \
             of a core; add --workers or bench CPUs, and read the figures as a lower bound"
        )
    });
    Generator {
        workers,
        cpu_s,
        cpu_percent: cpu_s / duration_s.max(1e-3) * 100.0,
        busiest_worker_cpu_percent: busiest_avg,
        rss_bytes_max: 0,
        warning,
    }
}

/// Can a TCP connection to the server still be made?
pub fn reachable(server: SocketAddr) -> bool {
    TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_ok()
}

/// The first of a target's server processes that refuses TCP connections, if any: a target
/// whose process died has lost the rooms that process held.
pub fn unreachable(servers: &[SocketAddr]) -> Option<SocketAddr> {
    servers.iter().copied().find(|s| !reachable(*s))
}

/// `a` or `a,b,c`: the report's `server` field.
pub fn servers_label(servers: &[SocketAddr]) -> String {
    let v: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    v.join(",")
}

/// Connects `load.users`, publishes, drains, and reports deliveries and latency.
pub fn run_load(common: &Common, scenario: &str, load: &Load) -> anyhow::Result<Run> {
    let config = serde_json::json!({ "load": load, "common": common });
    let mut s = Session::start(common, load.users, load.rooms)?;
    s.fleet.send(&Command::Connect {
        users_end: load.users,
    });
    let (view, gone) = s.wait_connected(load.users);
    let mut summary = Summary::default();
    if gone || view.totals.connect_ok == 0 {
        summary.unreachable = gone || unreachable(&common.server).is_some();
        summary.stop_reason = if summary.unreachable {
            "server unreachable"
        } else {
            "no user could connect"
        }
        .into();
        return Ok(s.finish(scenario, config, summary));
    }
    let publishers = load.publishers.min(load.users).max(1);
    let interval_us = (publishers as f64 * 1e6 / load.rate_total.max(1e-3)).round() as u64;
    s.fleet.send(&Command::Publish {
        publishers,
        interval_us,
        messages_max: load.messages_max,
    });
    let start = view.clone();
    let publish_until = Instant::now() + Duration::from_secs_f64(load.duration_s);
    summary.stop_reason = "duration elapsed".into();
    let mut last = view;
    while Instant::now() < publish_until {
        last = s.tick();
        if s.server_gone(&last) {
            summary.unreachable = true;
            summary.stop_reason = "server unreachable".into();
            break;
        }
        if load.messages_max.is_some() && last.totals.publishers_done >= publishers {
            summary.stop_reason = "every publisher sent its messages".into();
            break;
        }
    }
    s.fleet.send(&Command::StopPublish);
    let publish_end_s = last.t_s;
    let publish_end = last.clone();
    if !summary.unreachable {
        let (view, gone) = s.drain(load.drain_s);
        last = view;
        if gone {
            summary.unreachable = true;
            summary.stop_reason = "server unreachable".into();
        }
    }
    summary.expected_deliveries = last.expected_deliveries;
    // Throughput while publishing: what the server delivered under load (a backlog delivered
    // after the publishers stopped does not count as throughput).
    let window_s = (publish_end_s - start.t_s).max(1e-3);
    summary.deliveries_per_s =
        (publish_end.totals.received - start.totals.received) as f64 / window_s;
    summary.sends_per_s =
        (last.totals.sent - start.totals.sent) as f64 / (publish_end_s - start.t_s).max(1e-3);
    summary.users_held = start.totals.connected;
    summary.users_by_server = start.totals.connected_by_server.clone();
    Ok(s.finish(scenario, config, summary))
}

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers (publishers are among them).
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Rooms; user u is in room u mod rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: u64,
    /// Users that also publish (the first ones, spread over the rooms).
    #[arg(long, default_value_t = 10)]
    pub publishers: u64,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Seconds allowed for deliveries in flight after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain_s: f64,
}

impl FanoutArgs {
    pub fn load(&self) -> Load {
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

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct RampArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users at the first step.
    #[arg(long, default_value_t = 500)]
    pub start_users: u64,
    /// Users added at each step.
    #[arg(long, default_value_t = 500)]
    pub step_users: u64,
    /// Seconds per step.
    #[arg(long, default_value_t = 30.0)]
    pub step_s: f64,
    /// Stop when this many users are connected.
    #[arg(long, default_value_t = 100_000)]
    pub target_users: u64,
    /// Users per room (rooms fill in order of arrival).
    #[arg(long, default_value_t = 50)]
    pub room_size: u64,
    /// Seconds between two messages of one user (0: nobody chats).
    #[arg(long, default_value_t = 10.0)]
    pub message_interval_s: f64,
    /// A step in which more than this fraction of new connects fail ends the ramp: the
    /// server is deemed unreachable.
    #[arg(long, default_value_t = 0.5)]
    pub fail_fraction_max: f64,
    /// Stop after this many seconds even if the target is not reached (0: no limit); the
    /// report says so and gives the users held until then.
    #[arg(long, default_value_t = 0.0)]
    pub time_limit_s: f64,
    /// Seconds allowed, after the last step, for messages in flight to arrive.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
}

/// The seeds' competition: add users in steps until the target or until the server fails.
pub fn ramp(args: &RampArgs) -> anyhow::Result<Run> {
    let config = serde_json::to_value(args)?;
    let rss_before = servers_rss(&args.common.server_pid);
    let mut s = Session::start(
        &args.common,
        args.target_users,
        Rooms::Blocks(args.room_size),
    )?;
    let started = Instant::now();
    let mut summary = Summary {
        stop_reason: "target reached".into(),
        ..Summary::default()
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut users_target = args.start_users.min(args.target_users);
    let mut prev_end: Option<View> = None;
    for step in 0.. {
        let (view, record) = ramp_step(&mut s, args, step, users_target, prev_end.as_ref())?;
        let failure = step_failure(args, step, &record);
        let rss = record.server_rss_bytes;
        steps.push(Step {
            healthy: failure.is_none(),
            ..record
        });
        if let Some(reason) = failure {
            summary.unreachable = true;
            summary.stop_reason = reason;
            break;
        }
        if view.totals.connected >= summary.users_held {
            summary.users_held = view.totals.connected;
            summary.users_by_server = view.totals.connected_by_server.clone();
            summary.server_rss_after_bytes = rss;
        }
        // The users of settled steps chat: a room that filled within steps is complete
        // before its first message, so every message has all its members as recipients.
        if args.message_interval_s > 0.0 {
            s.fleet.send(&Command::Publish {
                publishers: users_target,
                interval_us: (args.message_interval_s * 1e6) as u64,
                messages_max: None,
            });
        }
        if users_target >= args.target_users {
            break;
        }
        if args.time_limit_s > 0.0 && started.elapsed().as_secs_f64() >= args.time_limit_s {
            summary.stop_reason = format!(
                "time limit of {:.0} s reached at {} users (target {})",
                args.time_limit_s, users_target, args.target_users
            );
            break;
        }
        users_target = (users_target + args.step_users).min(args.target_users);
        prev_end = Some(view);
    }
    Ok(ramp_end(s, args, config, summary, steps, rss_before))
}

/// One step of a ramp: asks for `users_target` users, ticks through `--step-s`, lets the
/// step's connects settle (bounded by the setup timeout), and records the step with its
/// latency and the server's RSS (`healthy` is the caller's verdict).
fn ramp_step(
    s: &mut Session,
    args: &RampArgs,
    step: u64,
    users_target: u64,
    prev_end: Option<&View>,
) -> anyhow::Result<(View, Step)> {
    let cpu_begin = CpuMark::now(&s.common);
    s.fleet.send(&Command::Connect {
        users_end: users_target,
    });
    let step_until = Instant::now() + Duration::from_secs_f64(args.step_s);
    let mut step_latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let total_before = s.fleet.total_latency.clone();
    let mut view = s.tick();
    while Instant::now() < step_until {
        view = s.tick();
    }
    if view.totals.connect_ok + view.totals.connect_fail < users_target {
        view = s.wait_connected(users_target).0;
    }
    let _ = step_latency.add(&s.fleet.total_latency);
    let _ = step_latency.subtract(&total_before);
    let mut record = step_record(step, &view, prev_end, users_target, &step_latency);
    record.server_rss_bytes = servers_rss(&args.common.server_pid);
    (record.server_cpu_s, record.server_cpus_busy_s) = CpuMark::now(&s.common).since(&cpu_begin);
    Ok((view, record))
}

/// Why `record` ends the ramp, if it does: more of its new connects failed than
/// `--fail-fraction-max` allows, or a server process refuses connections.
fn step_failure(args: &RampArgs, step: u64, record: &Step) -> Option<String> {
    let attempted = record.connect_ok + record.connect_fail;
    let failed_fraction = record.connect_fail as f64 / attempted.max(1) as f64;
    if failed_fraction > args.fail_fraction_max {
        return Some(format!(
            "step {step}: {:.0}% of new connects failed (limit {:.0}%)",
            failed_fraction * 100.0,
            args.fail_fraction_max * 100.0
        ));
    }
    unreachable(&args.common.server).map(|addr| format!("step {step}: {addr} refuses connections"))
}

/// After the last step: stops the chat, lets the messages in flight arrive (bounded) so that
/// the totals can be checked — received = Σ rooms (acked × members) when nobody left — and
/// turns the session into the run, with the server's RSS per user held.
fn ramp_end(
    mut s: Session,
    args: &RampArgs,
    config: serde_json::Value,
    mut summary: Summary,
    steps: Vec<Step>,
    rss_before: Option<u64>,
) -> Run {
    s.fleet.send(&Command::StopPublish);
    if !summary.unreachable {
        summary.expected_deliveries = s.drain(args.drain_s).0.expected_deliveries;
    }
    summary.server_rss_before_bytes = rss_before;
    if let (Some(b), Some(a)) = (rss_before, summary.server_rss_after_bytes) {
        if summary.users_held > 0 {
            summary.server_rss_per_connection_bytes =
                Some((a as f64 - b as f64) / summary.users_held as f64);
        }
    }
    let mut run = s.finish("ramp", config, summary);
    run.steps = steps;
    run
}

fn step_record(
    step: u64,
    v: &View,
    prev: Option<&View>,
    target: u64,
    h: &hdrhistogram::Histogram<u64>,
) -> Step {
    let p = prev.map(|p| p.totals.clone()).unwrap_or_default();
    let t = &v.totals;
    let mut errors = t.errors.clone();
    for (k, n) in &p.errors {
        if let Some(e) = errors.get_mut(k) {
            *e = e.saturating_sub(*n);
        }
    }
    errors.retain(|_, n| *n > 0);
    Step {
        step,
        t_s: v.t_s,
        users_target: target,
        users_connected: t.connected,
        connect_ok: t.connect_ok - p.connect_ok,
        connect_fail: t.connect_fail - p.connect_fail,
        sent: t.sent - p.sent,
        received: t.received - p.received,
        latency_ms: Latency::from_us(h),
        session_length_s_mean: v.session_length_s_mean(),
        errors,
        healthy: true,
        server_rss_bytes: None,
        server_cpu_s: None,
        server_cpus_busy_s: None,
    }
}

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Users per room.
    #[arg(long, default_value_t = 50)]
    pub room_size: u64,
    /// Seconds to hold the connections before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    pub hold_s: f64,
}

/// Opens idle connections and reports the server's resident memory per connection.
pub fn idle(args: &IdleArgs) -> anyhow::Result<Run> {
    let config = serde_json::to_value(args)?;
    let pids = &args.common.server_pid;
    let before = servers_rss(pids);
    let mut s = Session::start(&args.common, args.users, Rooms::Blocks(args.room_size))?;
    s.fleet.send(&Command::Connect {
        users_end: args.users,
    });
    let (mut view, gone) = s.wait_connected(args.users);
    let hold_until = Instant::now() + Duration::from_secs_f64(args.hold_s);
    while !gone && Instant::now() < hold_until {
        view = s.tick();
    }
    let after = servers_rss(pids);
    let connected = view.totals.connected;
    let mut summary = Summary {
        unreachable: gone,
        stop_reason: if gone {
            "server unreachable"
        } else {
            "connections held"
        }
        .into(),
        users_held: connected,
        users_by_server: view.totals.connected_by_server.clone(),
        server_rss_before_bytes: before,
        server_rss_after_bytes: after,
        ..Summary::default()
    };
    if let (Some(b), Some(a)) = (before, after) {
        if connected > 0 {
            summary.server_rss_per_connection_bytes =
                Some((a as f64 - b as f64) / connected as f64);
        }
    }
    Ok(s.finish("idle", config, summary))
}

/// Lines of the servers' logs (their stderr, in files) that report a panic — a thread's,
/// or one glommio caught while waking a task; `None` without logs or when one cannot be
/// read.
pub fn server_log_panics(logs: &[std::path::PathBuf]) -> Option<u64> {
    if logs.is_empty() {
        return None;
    }
    let mut panics = 0;
    for log in logs {
        let bytes = std::fs::read(log).ok()?;
        panics += panic_lines(&String::from_utf8_lossy(&bytes));
    }
    Some(panics)
}

/// The lines of `log` that report a panic.
pub fn panic_lines(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains("Panic while calling waker"))
        .count() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn panic_lines_are_a_threads_and_glommios() {
        let log = "INFO sokdo_engine::server: recovered rooms=0\n\
                   thread 'sokdo-shard-0' panicked at engine/src/x.rs:1:1:\n\
                   ERROR glommio: Panic while calling waker! Any { .. }\n";
        assert_eq!(super::panic_lines(log), 2);
        assert_eq!(super::panic_lines("WARN glommio: stall\n"), 0);
        assert_eq!(super::server_log_panics(&[]), None);
    }

    use super::{room_shape, Rooms};

    #[test]
    fn room_shape_follows_the_room_rule() {
        // fanout: user u in room u mod n.
        assert_eq!(room_shape(Rooms::Modulo(2), 100), (2, 50));
        assert_eq!(room_shape(Rooms::Modulo(3), 100), (3, 34));
        assert_eq!(room_shape(Rooms::Modulo(10), 4), (4, 1));
        // ramp, idle: rooms fill in blocks of the room size.
        assert_eq!(room_shape(Rooms::Blocks(50), 120), (3, 50));
        assert_eq!(room_shape(Rooms::Blocks(50), 20), (1, 20));
        assert_eq!(room_shape(Rooms::Blocks(50), 0), (0, 0));
    }
}
