//! The coordinator's side of the workers: start them (this same binary, `worker`
//! subcommand), send commands, merge their stats into one view per tick.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use crate::report::{Latency, Sample};
use crate::worker::{Command, Job, Rooms, Stats, USERS_PER_WORKER_MAX};
use crate::{clock, proto::Protocol};

/// How to reach the server and shape the load; what every worker's `Job` shares.
#[derive(Clone, Debug)]
pub struct Target {
    /// The target's server processes (users go to their room's, see `worker::server_of_room`).
    pub servers: Vec<SocketAddr>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub users_max: u64,
    /// At least this many workers (more if `users_max` needs them).
    pub workers_min: u64,
    pub rooms: Rooms,
    pub body_bytes: usize,
    pub sample_every: u64,
    pub setup_timeout_ms: u64,
    pub handshakes_in_flight_max: usize,
    /// Dropped users come back (`Job::reconnect_ms`).
    pub reconnect_ms: Option<u64>,
}

/// The merged state after one tick.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub t_s: f64,
    pub totals: Stats,
    /// Latency over the tick.
    pub tick_latency: Latency,
    pub workers_alive: u64,
    /// CPU of all workers over the tick, in % of one core, and the busiest one's.
    pub cpu_percent: f64,
    pub busiest_cpu_percent: f64,
    /// Σ acked × members over rooms, once every worker reported rooms after publishing.
    pub expected_deliveries: Option<u64>,
}

pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<(usize, Option<Stats>)>,
    last: Vec<Option<Stats>>,
    prev_cpu: Vec<u64>,
    alive: Vec<bool>,
    pub clock_origin_ns: u64,
    pub total_latency: Histogram<u64>,
    pub workers: u64,
    prev_view_t: f64,
}

impl Fleet {
    pub fn start(
        target: &Target,
        cfg: &FleetConfig,
        clock_origin_ns: u64,
    ) -> anyhow::Result<Fleet> {
        let workers = cfg
            .users_max
            .div_ceil(USERS_PER_WORKER_MAX)
            .max(cfg.workers_min)
            .max(1);
        anyhow::ensure!(
            workers <= 250,
            "{workers} workers: more than source addresses"
        );
        let exe = std::env::current_exe()?;
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let room_prefix = format!("bench{}", clock::monotonic_ns() % 1_000_000);
        for w in 0..workers {
            let job = Job {
                worker: w,
                workers,
                servers: target.servers.clone(),
                protocol: target.protocol,
                source_ip: Ipv4Addr::new(127, 0, 0, 2 + w as u8),
                clock_origin_ns,
                rooms: cfg.rooms,
                room_prefix: room_prefix.clone(),
                body_bytes: cfg.body_bytes,
                sample_every: cfg.sample_every,
                setup_timeout_ms: cfg.setup_timeout_ms,
                handshakes_in_flight_max: cfg.handshakes_in_flight_max,
                stats_interval_ms: 1000,
                reconnect_ms: cfg.reconnect_ms,
            };
            let (child, stdin) = spawn_worker(&exe, &job, tx.clone())?;
            children.push(child);
            stdins.push(Some(stdin));
        }
        Ok(Fleet {
            children,
            stdins,
            rx,
            last: vec![None; workers as usize],
            prev_cpu: vec![0; workers as usize],
            alive: vec![true; workers as usize],
            clock_origin_ns,
            total_latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            workers,
            prev_view_t: 0.0,
        })
    }

    pub fn send(&mut self, cmd: &Command) {
        let line = serde_json::to_string(cmd).expect("commands serialize") + "\n";
        for stdin in self.stdins.iter_mut() {
            if let Some(s) = stdin {
                if s.write_all(line.as_bytes())
                    .and_then(|_| s.flush())
                    .is_err()
                {
                    *stdin = None;
                }
            }
        }
    }

    /// Waits until every live worker reported once more (or `timeout`), takes whatever else
    /// they already reported, then merges. Taking it all keeps the view current when the
    /// caller was slow (a soak's sample waiting for a server that does not answer): one line
    /// per tick let the lines queue up, and issue 15's debug soak showed at t ≈ 620 s users
    /// its workers had lost at ≈ 200 s.
    pub fn tick(&mut self, timeout: Duration) -> View {
        let deadline = Instant::now() + timeout;
        let mut fresh = vec![false; self.last.len()];
        let mut tick_latency =
            Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        while fresh.iter().zip(&self.alive).any(|(f, a)| *a && !f) {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(report) => self.take(report, &mut fresh, &mut tick_latency),
                Err(_) => break,
            }
        }
        while let Ok(report) = self.rx.try_recv() {
            self.take(report, &mut fresh, &mut tick_latency);
        }
        let _ = self.total_latency.add(&tick_latency);
        self.view(&tick_latency)
    }

    /// One line of a worker (`None`: its stdout closed).
    fn take(
        &mut self,
        (w, stats): (usize, Option<Stats>),
        fresh: &mut [bool],
        tick_latency: &mut Histogram<u64>,
    ) {
        match stats {
            Some(stats) => {
                merge_histogram(&stats.latency_us, tick_latency);
                fresh[w] = true;
                self.last[w] = Some(stats);
            }
            None => self.alive[w] = false,
        }
    }

    fn view(&mut self, tick_latency: &Histogram<u64>) -> View {
        let t_s = clock::since_origin_ns(self.clock_origin_ns) as f64 / 1e9;
        let dt = (t_s - self.prev_view_t).max(1e-3);
        self.prev_view_t = t_s;
        let mut totals = Stats::default();
        let mut cpu_percent = 0.0;
        let mut busiest: f64 = 0.0;
        let mut rooms: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
        let mut all_rooms = true;
        for (w, s) in self.last.iter().enumerate() {
            let Some(s) = s else {
                all_rooms = false;
                continue;
            };
            add(&mut totals, s);
            let cpu = (s.cpu_ns.saturating_sub(self.prev_cpu[w])) as f64 / 1e9 / dt * 100.0;
            self.prev_cpu[w] = s.cpu_ns;
            cpu_percent += cpu;
            busiest = busiest.max(cpu);
            match &s.by_room {
                Some(by_room) => {
                    for (room, acked, members) in by_room {
                        let e = rooms.entry(*room).or_default();
                        e.0 += acked;
                        e.1 += members;
                    }
                }
                None => all_rooms = false,
            }
        }
        View {
            t_s,
            totals,
            tick_latency: Latency::from_us(tick_latency),
            workers_alive: self.alive.iter().filter(|a| **a).count() as u64,
            cpu_percent,
            busiest_cpu_percent: busiest,
            expected_deliveries: all_rooms.then(|| rooms.values().map(|(a, m)| a * m).sum()),
        }
    }

    /// Tells the workers to close and collects their final stats (bounded wait).
    pub fn close(mut self) -> View {
        self.send(&Command::Close);
        let view = self.tick(Duration::from_secs(10));
        for child in self.children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        view
    }
}

/// Starts one worker process on `job`; a thread forwards each stats line it prints to `tx`
/// (tagged with its index), then `None` when its stdout closes.
fn spawn_worker(
    exe: &std::path::Path,
    job: &Job,
    tx: mpsc::Sender<(usize, Option<Stats>)>,
) -> anyhow::Result<(Child, ChildStdin)> {
    let mut child = Process::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a worker")?;
    let mut stdin = child.stdin.take().expect("piped");
    serde_json::to_writer(&mut stdin, job)?;
    stdin.write_all(b"\n")?;
    let stdout = child.stdout.take().expect("piped");
    let index = job.worker as usize;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Stats>(&line) {
                Ok(s) => {
                    if tx.send((index, Some(s))).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("worker {index}: bad stats line: {e}"),
            }
        }
        let _ = tx.send((index, None));
    });
    Ok((child, stdin))
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn add(t: &mut Stats, s: &Stats) {
    t.attempted += s.attempted;
    t.connected += s.connected;
    t.connect_ok += s.connect_ok;
    t.connect_fail += s.connect_fail;
    t.disconnects += s.disconnects;
    t.sent += s.sent;
    t.acked += s.acked;
    t.received += s.received;
    t.session_s_closed_sum += s.session_s_closed_sum;
    t.session_s_live_sum += s.session_s_live_sum;
    t.sessions_closed += s.sessions_closed;
    t.publishers_done += s.publishers_done;
    t.churn_ok += s.churn_ok;
    t.churn_closed += s.churn_closed;
    t.churn_fail += s.churn_fail;
    t.reconnects += s.reconnects;
    t.reconnect_fail += s.reconnect_fail;
    for (k, v) in &s.drops {
        *t.drops.entry(k.clone()).or_default() += v;
    }
    if t.connected_by_server.len() < s.connected_by_server.len() {
        t.connected_by_server.resize(s.connected_by_server.len(), 0);
    }
    for (t, s) in t.connected_by_server.iter_mut().zip(&s.connected_by_server) {
        *t += s;
    }
    t.cpu_ns += s.cpu_ns;
    t.rss_bytes += s.rss_bytes;
    for (k, v) in &s.errors {
        *t.errors.entry(k.clone()).or_default() += v;
    }
}

fn merge_histogram(encoded: &str, into: &mut Histogram<u64>) {
    use base64::Engine as _;
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return;
    };
    let h: Result<Histogram<u64>, _> = Deserializer::new().deserialize(&mut &bytes[..]);
    if let Ok(h) = h {
        let _ = into.add(&h);
    }
}

impl View {
    pub fn session_length_s_mean(&self) -> f64 {
        let t = &self.totals;
        let n = t.sessions_closed + t.connected;
        if n == 0 {
            0.0
        } else {
            (t.session_s_closed_sum + t.session_s_live_sum) / n as f64
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.totals.errors.values().sum()
    }

    /// A timeline sample, with rates from the previous view.
    pub fn sample(&self, prev: Option<&View>, server_rss_bytes: Option<u64>) -> Sample {
        let (dt, ds, dr) = match prev {
            Some(p) => (
                (self.t_s - p.t_s).max(1e-3),
                self.totals.sent - p.totals.sent.min(self.totals.sent),
                self.totals.received - p.totals.received.min(self.totals.received),
            ),
            None => (self.t_s.max(1e-3), self.totals.sent, self.totals.received),
        };
        Sample {
            t_s: self.t_s,
            users: self.totals.connected,
            connect_ok: self.totals.connect_ok,
            connect_fail: self.totals.connect_fail,
            sent: self.totals.sent,
            received: self.totals.received,
            sends_per_s: ds as f64 / dt,
            deliveries_per_s: dr as f64 / dt,
            latency_ms: self.tick_latency.clone(),
            errors: self.errors_total(),
            bench_cpu_percent: self.cpu_percent,
            server_rss_bytes,
            server_cpu_percent: None,
        }
    }
}
