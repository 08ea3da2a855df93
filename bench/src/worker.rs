//! A worker process: holds up to `USERS_PER_WORKER_MAX` connections from one source address,
//! follows the coordinator's commands on stdin, and writes its counters and a latency
//! histogram to stdout once per `stats_interval_ms`, one JSON line each.
//!
//! One single-threaded tokio runtime per process: the coordinator spreads load over processes
//! (open files are capped per process), so a worker never needs locks. All connections share
//! one 256 KiB read buffer; a connection owns only its frame scanner and pending writes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::clock;
use crate::proto::{body_timestamp_ns, Kind, Protocol};
use crate::wire::{self, Scanner, Upgrade};

/// Below the 20,000 open files a process may hold here, with room for the runtime's own.
pub const USERS_PER_WORKER_MAX: u64 = 18_000;
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_WAKE_MAX: usize = 8;
/// Bytes of a frame a non-sampled connection assembles across reads (enough to classify).
const ASSEMBLE_BYTES_COUNTING: usize = 256;
const ASSEMBLE_BYTES_SAMPLED: usize = 64 * 1024;
/// Histogram bounds, in microseconds.
const LATENCY_US_MAX: u64 = 120_000_000;

/// How users map to rooms; the same rule in every worker, so the coordinator can tell how
/// many recipients each message had.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rooms {
    /// User `u` is in room `u % n` (fan-out: publishers spread over all rooms).
    Modulo(u64),
    /// Users `[k·size, (k+1)·size)` share room `k` (ramp: rooms fill as users arrive).
    Blocks(u64),
}

impl Rooms {
    pub fn of(self, user: u64) -> u64 {
        match self {
            Rooms::Modulo(n) => user % n.max(1),
            Rooms::Blocks(size) => user / size.max(1),
        }
    }
}

/// Everything a worker needs to know, sent as the first line on its stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub worker: u64,
    pub workers: u64,
    /// The target's server processes; a user connects to the one of its room
    /// (room `r` → `servers[r mod len]`), so a room's members share a process.
    pub servers: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub source_ip: Ipv4Addr,
    /// CLOCK_MONOTONIC at the coordinator's start: the one clock of body timestamps.
    pub clock_origin_ns: u64,
    pub rooms: Rooms,
    pub room_prefix: String,
    pub body_bytes: usize,
    /// Every n-th user parses its frames for latency; the rest only count them.
    pub sample_every: u64,
    pub setup_timeout_ms: u64,
    pub handshakes_in_flight_max: usize,
    pub stats_interval_ms: u64,
    /// A user whose live session ends in an error comes back, as real clients do: after a
    /// jittered wait of up to this many ms, doubled after each failed attempt (≤ 30 s), under
    /// the same name, into the same room. `None`: a dropped user stays away.
    #[serde(default)]
    pub reconnect_ms: Option<u64>,
}

impl Job {
    /// The index in `servers` of the process that holds `room`: every member of a room meets
    /// on one process (sokdo processes do not share rooms with each other yet).
    pub fn server_of(&self, room: u64) -> usize {
        server_of_room(self.servers.len(), room)
    }
}

/// Room `r` lives on server process `r mod processes`.
pub fn server_of_room(processes: usize, room: u64) -> usize {
    (room % processes.max(1) as u64) as usize
}

/// The coordinator's commands, one JSON line each on a worker's stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Connect every user of this worker with a global index below `users_end`.
    Connect {
        users_end: u64,
    },
    /// Users with a global index below `publishers` send one message every `interval_us`,
    /// at most `messages_max` each.
    Publish {
        publishers: u64,
        interval_us: u64,
        messages_max: Option<u64>,
    },
    StopPublish,
    /// Besides the users, open `per_s` short connections a second (this worker's share:
    /// `per_s / workers`), each with its own user name: connect, upgrade, admission, join
    /// one of `rooms` churn rooms (nobody publishes there), stay `hold_ms`, close; a name
    /// comes back, to the same room, after `rooms × CHURN_NAMES_PER_ROOM` churns, so the
    /// server's memberships stay bounded. `per_s` 0 stops the churn.
    Churn {
        per_s: f64,
        hold_ms: u64,
        rooms: u64,
    },
    /// Send final stats and exit.
    Close,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Plan {
    active: bool,
    publishers: u64,
    interval_us: u64,
    messages_max: Option<u64>,
}

/// A worker's report; counters are cumulative, `latency_us` covers the interval only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub worker: u64,
    pub t_ns: u64,
    pub attempted: u64,
    pub connected: u64,
    pub connect_ok: u64,
    pub connect_fail: u64,
    pub disconnects: u64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub errors: BTreeMap<String, u64>,
    pub session_s_closed_sum: f64,
    pub session_s_live_sum: f64,
    pub sessions_closed: u64,
    pub publishers_done: u64,
    /// Live users per server process (the index in `Job::servers`).
    #[serde(default)]
    pub connected_by_server: Vec<u64>,
    pub cpu_ns: u64,
    /// This worker's resident memory (VmRSS).
    #[serde(default)]
    pub rss_bytes: u64,
    /// hdrhistogram V2, base64: send→receive latency in µs over the interval.
    pub latency_us: String,
    /// `(room, acked sends, live members)`, present once publishing stopped.
    pub by_room: Option<Vec<(u64, u64, u64)>>,
    /// Churn connections (`Command::Churn`) that joined, that left as planned, that failed
    /// before or after joining (their error kinds are in `errors`).
    #[serde(default)]
    pub churn_ok: u64,
    #[serde(default)]
    pub churn_closed: u64,
    #[serde(default)]
    pub churn_fail: u64,
    /// Users (not churners) whose live session ended in an error, by error kind
    /// (`ws_close_1001`, `connection_reset`, …): the drops, cumulative. Their kinds are in
    /// `errors` too.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    /// Sessions of dropped users that joined again (`Job::reconnect_ms`), and attempts
    /// that failed before joining (their kinds are in `errors`, prefixed `rejoin_`).
    #[serde(default)]
    pub reconnects: u64,
    #[serde(default)]
    pub reconnect_fail: u64,
    pub last: bool,
}

#[derive(Default)]
struct Shared {
    attempted: Cell<u64>,
    connected: Cell<u64>,
    connect_ok: Cell<u64>,
    connect_fail: Cell<u64>,
    disconnects: Cell<u64>,
    sent: Cell<u64>,
    acked: Cell<u64>,
    received: Cell<u64>,
    publishers_done: Cell<u64>,
    churn_ok: Cell<u64>,
    churn_closed: Cell<u64>,
    churn_fail: Cell<u64>,
    reconnects: Cell<u64>,
    reconnect_fail: Cell<u64>,
    drops: RefCell<BTreeMap<String, u64>>,
    session_s_closed_sum: Cell<f64>,
    sessions_closed: Cell<u64>,
    /// Σ of live sessions' start times (seconds since origin), for the live session length.
    live_start_s_sum: Cell<f64>,
    errors: RefCell<BTreeMap<String, u64>>,
    latency: RefCell<Option<Histogram<u64>>>,
    /// room → (acked, members)
    rooms: RefCell<BTreeMap<u64, (u64, u64)>>,
    /// Live users per server process.
    by_server: RefCell<Vec<u64>>,
}

impl Shared {
    fn error(&self, kind: &str) {
        *self
            .errors
            .borrow_mut()
            .entry(kind.to_string())
            .or_default() += 1;
    }
    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
}

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER_BYTES]);
}

/// Entry point of `sokdo-bench worker`.
pub fn run() -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).context("reading the job")?;
    let job: Job = serde_json::from_str(&line).context("parsing the job")?;
    drop(stdin);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(cmd) => {
                    if cmd_tx.send(cmd).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("worker: bad command {line:?}: {e}"),
            }
        }
        // The coordinator went away: behave as if told to close.
        let _ = cmd_tx.send(Command::Close);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(job, cmd_rx))
}

async fn serve(job: Job, mut cmds: mpsc::UnboundedReceiver<Command>) -> anyhow::Result<()> {
    let job = Rc::new(job);
    let shared = Rc::new(Shared::default());
    *shared.latency.borrow_mut() = Some(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?);
    anyhow::ensure!(!job.servers.is_empty(), "a job without servers");
    *shared.by_server.borrow_mut() = vec![0; job.servers.len()];
    let (plan_tx, plan_rx) = watch::channel(Plan::default());
    let handshakes = Rc::new(Semaphore::new(job.handshakes_in_flight_max));
    let mut next_user = job.worker;
    let mut churn: Option<(tokio::time::Interval, Churn)> = None;
    let mut next_churner = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(job.stats_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd.unwrap_or(Command::Close) {
                Command::Connect { users_end } => {
                    while next_user < users_end {
                        Shared::bump(&shared.attempted);
                        tokio::task::spawn_local(user(
                            Who::User(next_user), job.clone(), shared.clone(), plan_rx.clone(),
                            handshakes.clone(),
                        ));
                        next_user += job.workers;
                    }
                }
                Command::Publish { publishers, interval_us, messages_max } => {
                    let _ = plan_tx.send(Plan {
                        active: true, publishers, interval_us: interval_us.max(1), messages_max,
                    });
                }
                Command::StopPublish => {
                    let _ = plan_tx.send(Plan::default());
                }
                Command::Churn { per_s, hold_ms, rooms } => {
                    churn = churn_timer(per_s / job.workers.max(1) as f64, hold_ms, rooms);
                }
                Command::Close => {
                    write_stats(&job, &shared, !plan_tx.borrow().active, true)?;
                    // Exit without tearing down thousands of tasks one by one.
                    std::process::exit(0);
                }
            },
            _ = tick.tick() => write_stats(&job, &shared, !plan_tx.borrow().active, false)?,
            c = next_churn(&mut churn) => {
                tokio::task::spawn_local(user(
                    Who::Churner { n: next_churner, hold_ms: c.hold_ms, rooms: c.rooms },
                    job.clone(), shared.clone(), plan_rx.clone(), handshakes.clone(),
                ));
                next_churner += 1;
            }
        }
    }
}

/// Names a worker's churners take in turn, per churn room.
const CHURN_NAMES_PER_ROOM: u64 = 10;

/// What one churn connection does (`Command::Churn`).
#[derive(Clone, Copy, Debug)]
struct Churn {
    hold_ms: u64,
    rooms: u64,
}

/// A timer firing `per_s` times a second, or none when `per_s` is 0 (or not a number).
fn churn_timer(per_s: f64, hold_ms: u64, rooms: u64) -> Option<(tokio::time::Interval, Churn)> {
    if !(per_s > 0.0 && per_s.is_finite()) {
        return None;
    }
    let period = Duration::from_secs_f64((1.0 / per_s).max(1e-5));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rooms = rooms.max(1);
    Some((interval, Churn { hold_ms, rooms }))
}

/// The next churn tick; pending forever while there is no churn.
async fn next_churn(churn: &mut Option<(tokio::time::Interval, Churn)>) -> Churn {
    match churn {
        Some((interval, c)) => {
            interval.tick().await;
            *c
        }
        None => std::future::pending().await,
    }
}

/// Who a connection is: one of the scenario's users (global index), or the `n`-th churn
/// connection of this worker.
#[derive(Clone, Copy, Debug)]
enum Who {
    User(u64),
    Churner { n: u64, hold_ms: u64, rooms: u64 },
}

fn write_stats(job: &Job, s: &Shared, with_rooms: bool, last: bool) -> anyhow::Result<()> {
    let now_s = clock::since_origin_ns(job.clock_origin_ns) as f64 / 1e9;
    let mut bytes = Vec::new();
    {
        let mut guard = s.latency.borrow_mut();
        let hist = guard.as_mut().expect("histogram set at start");
        V2Serializer::new()
            .serialize(hist, &mut bytes)
            .map_err(|e| anyhow::anyhow!("serializing a histogram: {e:?}"))?;
        hist.reset();
    }
    use base64::Engine as _;
    let stats = Stats {
        worker: job.worker,
        t_ns: clock::since_origin_ns(job.clock_origin_ns),
        attempted: s.attempted.get(),
        connected: s.connected.get(),
        connect_ok: s.connect_ok.get(),
        connect_fail: s.connect_fail.get(),
        disconnects: s.disconnects.get(),
        sent: s.sent.get(),
        acked: s.acked.get(),
        received: s.received.get(),
        errors: s.errors.borrow().clone(),
        session_s_closed_sum: s.session_s_closed_sum.get(),
        session_s_live_sum: s.connected.get() as f64 * now_s - s.live_start_s_sum.get(),
        sessions_closed: s.sessions_closed.get(),
        publishers_done: s.publishers_done.get(),
        connected_by_server: s.by_server.borrow().clone(),
        cpu_ns: clock::process_cpu_ns(),
        rss_bytes: crate::kernel::rss_bytes(std::process::id()).unwrap_or(0),
        latency_us: base64::engine::general_purpose::STANDARD.encode(&bytes),
        by_room: with_rooms.then(|| {
            s.rooms
                .borrow()
                .iter()
                .map(|(room, (acked, members))| (*room, *acked, *members))
                .collect()
        }),
        churn_ok: s.churn_ok.get(),
        churn_closed: s.churn_closed.get(),
        churn_fail: s.churn_fail.get(),
        drops: s.drops.borrow().clone(),
        reconnects: s.reconnects.get(),
        reconnect_fail: s.reconnect_fail.get(),
        last,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &stats)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Longest wait between two reconnect attempts of a user.
const RECONNECT_WAIT_MAX: Duration = Duration::from_secs(30);

/// One user: a session (connect, upgrade, admission, join, chat until the end); a user
/// dropped while live comes back when the job says so (`Job::reconnect_ms`), retrying with
/// a doubling, jittered wait until it joins again.
async fn user(
    who: Who,
    job: Rc<Job>,
    shared: Rc<Shared>,
    plan: watch::Receiver<Plan>,
    handshakes: Rc<Semaphore>,
) {
    let mut rejoin = false;
    let mut attempt: u32 = 0;
    loop {
        let end = session(who, &job, &shared, plan.clone(), &handshakes, rejoin).await;
        let (Who::User(index), Some(base_ms)) = (who, job.reconnect_ms) else {
            return;
        };
        match end {
            End::Stopped => return,
            End::SetupFailed if !rejoin => return,
            End::Dropped => attempt = 0,
            End::SetupFailed => attempt = attempt.saturating_add(1),
        }
        if plan.has_changed().is_err() {
            return;
        }
        rejoin = true;
        let cap = Duration::from_millis(base_ms.max(1))
            .saturating_mul(1 << attempt.min(16))
            .min(RECONNECT_WAIT_MAX);
        // Jitter: the users dropped together do not all come back at the same instant.
        let spread = index
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(attempt))
            % 1000;
        let wait = cap.mul_f64((500 + spread / 2) as f64 / 1000.0);
        tokio::time::sleep(wait).await;
    }
}

/// How one session of a user ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// Told to stop, or (a churner) left as planned.
    Stopped,
    /// Failed before it joined.
    SetupFailed,
    /// Joined, then lost its connection.
    Dropped,
}

/// One session: connect, upgrade, get admitted, join its room, then chat until the end.
async fn session(
    who: Who,
    job: &Rc<Job>,
    shared: &Rc<Shared>,
    plan: watch::Receiver<Plan>,
    handshakes: &Semaphore,
    rejoin: bool,
) -> End {
    let permit = handshakes.acquire().await;
    let deadline = Instant::now() + Duration::from_millis(job.setup_timeout_ms);
    // A churner is never a publisher (index past every user) and has a room of its own
    // kind, so the users' rooms keep their members while it comes and goes.
    let (index, room, room_name, name, hold) = match who {
        Who::User(index) => {
            let room = job.rooms.of(index);
            let room_name = format!("{}-r{room}", job.room_prefix);
            (index, room, room_name, format!("u{index}"), None)
        }
        Who::Churner { n, hold_ms, rooms } => {
            let room = n % rooms;
            let room_name = format!("{}-c{room}", job.room_prefix);
            // Churners come back under one of `CHURN_NAMES_PER_ROOM` names per room, always
            // to that room, as real users return: a disconnect keeps its memberships, so a
            // new name each time grew the server's memberships for ever (311,707 after 28
            // minutes of the first release soak) and its RSS with them.
            let name = format!("c{}x{}", job.worker, n % (rooms * CHURN_NAMES_PER_ROOM));
            (
                u64::MAX,
                room,
                room_name,
                name,
                Some(Duration::from_millis(hold_ms)),
            )
        }
    };
    let server_index = job.server_of(room);
    let server = job.servers[server_index];
    let churner = hold.is_some();
    let stream = match tokio::time::timeout_at(deadline, connect(job, server)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(shared, connect_error_kind(&e), churner, rejoin),
        Err(_) => return fail(shared, "connect_timeout", churner, rejoin),
    };
    let mut conn = Conn {
        job: job.clone(),
        shared: shared.clone(),
        scanner: None,
        handshake: Vec::new(),
        out: Vec::new(),
        phase: Phase::Upgrade,
        user: index,
        room,
        room_name,
        server_index,
        sampled: !churner && index.is_multiple_of(job.sample_every.max(1)),
        hold,
        leave_at: None,
        next_id: 1,
        sent: 0,
        rng: index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        failure: None,
        rejoin,
    };
    let path = job.protocol.path(&name);
    let request = wire::upgrade_request(&server.to_string(), &path, conn.rng);
    conn.out.extend_from_slice(request.as_bytes());
    let outcome = conn.run(stream, plan, deadline, permit).await;
    conn.finish(outcome)
}

/// A session that failed before it joined: a churner's, a user's first, or a user's
/// attempt to come back (`rejoin`, counted apart so that `connect_ok + connect_fail` stays
/// the users tried).
fn fail(shared: &Shared, kind: &str, churner: bool, rejoin: bool) -> End {
    if rejoin {
        Shared::bump(&shared.reconnect_fail);
        shared.error(&format!("rejoin_{kind}"));
        return End::SetupFailed;
    }
    Shared::bump(if churner {
        &shared.churn_fail
    } else {
        &shared.connect_fail
    });
    shared.error(kind);
    End::SetupFailed
}

/// `setsockopt(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT)` failed: without it every connection
/// of a worker would share one ephemeral range per source address, so the bench counts it
/// apart from the connect's own errors.
#[derive(Debug)]
struct BindNoPortError(std::io::Error);

impl std::fmt::Display for BindNoPortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "setsockopt(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT): {}",
            self.0
        )
    }
}

impl std::error::Error for BindNoPortError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn connect_error_kind(e: &std::io::Error) -> &'static str {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<BindNoPortError>())
    {
        return "bench_setsockopt_ip_bind_address_no_port";
    }
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect_refused",
        Some(libc::EADDRNOTAVAIL) => "bench_no_source_port",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "bench_open_files_limit",
        Some(libc::ETIMEDOUT) => "connect_timeout",
        _ => "connect_error",
    }
}

async fn connect(job: &Job, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Choose the source port at connect(), per destination, so each source address gives a
    // full ephemeral range towards the server (IP_BIND_ADDRESS_NO_PORT).
    let one: libc::c_int = 1;
    // SAFETY: `socket` owns a valid fd for this whole call, and the option value points to a
    // live c_int of exactly the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::other(BindNoPortError(
            std::io::Error::last_os_error(),
        )));
    }
    socket.bind(SocketAddr::new(job.source_ip.into(), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Waiting for the HTTP 101.
    Upgrade,
    /// Waiting for sokdo's `hello` or Engine.IO's open packet.
    Admission,
    /// Socket.IO: waiting for the namespace connect.
    Namespace,
    /// Waiting for the join reply.
    Join,
    /// Admitted and joined since `since_s` (seconds after the clock origin).
    Live { since_s: f64 },
}

struct Conn {
    job: Rc<Job>,
    shared: Rc<Shared>,
    /// Created when the upgrade succeeds.
    scanner: Option<Scanner>,
    handshake: Vec<u8>,
    out: Vec<u8>,
    phase: Phase,
    user: u64,
    room: u64,
    room_name: String,
    server_index: usize,
    sampled: bool,
    /// A churner's stay once joined; `leave_at` is set when it joins.
    hold: Option<Duration>,
    leave_at: Option<Instant>,
    next_id: u64,
    sent: u64,
    rng: u64,
    failure: Option<String>,
    /// A dropped user coming back: its join counts as a reconnect, not a new user.
    rejoin: bool,
}

/// How a connection ended.
enum Outcome {
    /// The worker is exiting, or the plan channel closed.
    Stopped,
    Failed(String),
}

impl Conn {
    async fn run(
        &mut self,
        stream: TcpStream,
        mut plan_rx: watch::Receiver<Plan>,
        setup_deadline: Instant,
        permit: Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError>,
    ) -> Outcome {
        let mut permit = Some(permit);
        let mut plan = *plan_rx.borrow_and_update();
        let mut next_send = Instant::now();
        let mut publishing = false;
        loop {
            if matches!(self.phase, Phase::Live { .. }) {
                permit.take();
                let want = self.is_publisher(&plan);
                if want && !publishing {
                    // Spread publishers' first sends over one interval.
                    let phase_us = self.user.wrapping_mul(7919) % plan.interval_us.max(1);
                    next_send = Instant::now() + Duration::from_micros(phase_us);
                }
                publishing = want;
            }
            if !self.out.is_empty() {
                match stream.try_write(&self.out) {
                    Ok(n) => {
                        self.out.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Outcome::Failed(io_kind(&e)),
                }
            }
            let live = matches!(self.phase, Phase::Live { .. });
            tokio::select! {
                r = stream.readable() => {
                    if let Err(e) = r {
                        return Outcome::Failed(io_kind(&e));
                    }
                    if let Some(end) = self.read_available(&stream) {
                        return end;
                    }
                }
                r = stream.writable(), if !self.out.is_empty() => {
                    if let Err(e) = r {
                        return Outcome::Failed(io_kind(&e));
                    }
                }
                _ = tokio::time::sleep_until(next_send), if publishing => {
                    self.enqueue_due_sends(&plan, &mut next_send);
                }
                changed = plan_rx.changed() => {
                    if changed.is_err() {
                        return Outcome::Stopped;
                    }
                    plan = *plan_rx.borrow_and_update();
                }
                _ = tokio::time::sleep_until(setup_deadline), if !live => {
                    return Outcome::Failed("setup_timeout".into());
                }
                _ = sleep_until_some(self.leave_at), if self.leave_at.is_some() => {
                    // A clean leave: a close frame (best effort: its buffer is tiny), then
                    // the socket closes as `stream` drops.
                    self.push_control(wire::OPCODE_CLOSE, &1000u16.to_be_bytes());
                    let _ = stream.try_write(&self.out);
                    return Outcome::Stopped;
                }
            }
            if let Some(f) = self.failure.take() {
                return Outcome::Failed(f);
            }
        }
    }

    fn is_publisher(&self, plan: &Plan) -> bool {
        self.hold.is_none()
            && plan.active
            && self.user < plan.publishers
            && plan.messages_max.is_none_or(|max| self.sent < max)
    }

    fn enqueue_due_sends(&mut self, plan: &Plan, next_send: &mut Instant) {
        let now = Instant::now();
        let interval = Duration::from_micros(plan.interval_us);
        while *next_send <= now && self.is_publisher(plan) {
            let t = clock::since_origin_ns(self.job.clock_origin_ns);
            let mut body = format!("t:{t}|");
            while body.len() < self.job.body_bytes {
                body.push('x');
            }
            let frame = self.job.protocol.send(self.next_id, &self.room_name, &body);
            self.next_id += 1;
            self.push(frame.as_bytes());
            self.sent += 1;
            Shared::bump(&self.shared.sent);
            if plan.messages_max == Some(self.sent) {
                Shared::bump(&self.shared.publishers_done);
            }
            *next_send += interval;
        }
        // Far behind (a stalled generator): skip ahead rather than burst without bound.
        if *next_send + interval * 1000 < now {
            *next_send = now + interval;
        }
    }

    /// Reads what the socket has into the shared buffer and processes it.
    fn read_available(&mut self, stream: &TcpStream) -> Option<Outcome> {
        READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            for _ in 0..READS_PER_WAKE_MAX {
                match stream.try_read(&mut buf[..]) {
                    Ok(0) => return Some(Outcome::Failed(self.eof_kind())),
                    Ok(n) => {
                        if let Err(kind) = self.process(&buf[..n]) {
                            return Some(Outcome::Failed(kind));
                        }
                        if n < buf.len() {
                            return None;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                    Err(e) => return Some(Outcome::Failed(io_kind(&e))),
                }
            }
            None
        })
    }

    fn eof_kind(&self) -> String {
        match self.phase {
            Phase::Upgrade => "handshake_eof".into(),
            Phase::Live { .. } => "closed_by_server".into(),
            _ => "closed_during_setup".into(),
        }
    }

    fn process(&mut self, mut data: &[u8]) -> Result<(), String> {
        if self.phase == Phase::Upgrade {
            self.handshake.extend_from_slice(data);
            match wire::parse_upgrade_response(&self.handshake) {
                Upgrade::Partial if self.handshake.len() > 16 * 1024 => {
                    return Err("handshake_too_long".into())
                }
                Upgrade::Partial => return Ok(()),
                Upgrade::Refused { status } => return Err(format!("http_{status}")),
                Upgrade::Switched { body_offset } => {
                    let rest_from = body_offset - (self.handshake.len() - data.len());
                    data = &data[rest_from..];
                    self.handshake = Vec::new();
                    self.phase = Phase::Admission;
                    self.scanner = Some(Scanner::new(if self.sampled {
                        ASSEMBLE_BYTES_SAMPLED
                    } else {
                        ASSEMBLE_BYTES_COUNTING
                    }));
                }
            }
        }
        let mut scanner = self.scanner.take().expect("set at upgrade");
        let result = scanner.feed(data, &mut |op, payload, _len| self.on_frame(op, payload));
        self.scanner = Some(scanner);
        result.map_err(|e| format!("protocol_error:{e}"))
    }

    fn on_frame(&mut self, opcode: u8, payload: &[u8]) {
        match opcode {
            wire::OPCODE_PING => self.push_control(wire::OPCODE_PONG, payload),
            wire::OPCODE_CLOSE => {
                let code = payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .unwrap_or(1005);
                self.failure = Some(format!("ws_close_{code}"));
            }
            wire::OPCODE_TEXT => self.on_text(payload),
            _ => {}
        }
    }

    fn on_text(&mut self, payload: &[u8]) {
        let protocol = self.job.protocol;
        let kind = protocol.classify(payload);
        match (self.phase, kind) {
            (_, Kind::EnginePing) => self.push(Protocol::SOCKETIO_PONG),
            (Phase::Live { .. }, Kind::Msg) => {
                Shared::bump(&self.shared.received);
                if self.sampled {
                    self.record_latency(payload);
                }
            }
            (Phase::Live { .. }, Kind::Ok) => {
                Shared::bump(&self.shared.acked);
                let mut rooms = self.shared.rooms.borrow_mut();
                rooms.entry(self.room).or_default().0 += 1;
            }
            (_, Kind::Error) => {
                let code = protocol.error_code(payload);
                if matches!(self.phase, Phase::Live { .. }) {
                    self.shared.error(&code);
                } else {
                    self.failure = Some(code);
                }
            }
            (Phase::Admission, Kind::EngineOpen) => {
                self.push(Protocol::SOCKETIO_CONNECT);
                self.phase = Phase::Namespace;
            }
            (Phase::Admission | Phase::Namespace, Kind::Admitted) => {
                let join = protocol.join(self.next_id, &self.room_name);
                self.next_id += 1;
                self.push(join.as_bytes());
                self.phase = Phase::Join;
            }
            (Phase::Join, Kind::Ok) => self.go_live(),
            (_, Kind::Queued) => self.shared.error("queued"),
            _ => {}
        }
    }

    fn go_live(&mut self) {
        let since_s = clock::since_origin_ns(self.job.clock_origin_ns) as f64 / 1e9;
        self.phase = Phase::Live { since_s };
        let s = &self.shared;
        if let Some(hold) = self.hold {
            self.leave_at = Some(Instant::now() + hold);
            Shared::bump(&s.churn_ok);
            return;
        }
        Shared::bump(&s.connected);
        Shared::bump(if self.rejoin {
            &s.reconnects
        } else {
            &s.connect_ok
        });
        s.live_start_s_sum.set(s.live_start_s_sum.get() + since_s);
        s.rooms.borrow_mut().entry(self.room).or_default().1 += 1;
        s.by_server.borrow_mut()[self.server_index] += 1;
    }

    fn finish(&mut self, outcome: Outcome) -> End {
        let s = &self.shared;
        let kind = match outcome {
            Outcome::Stopped => None,
            Outcome::Failed(kind) => Some(kind),
        };
        let churner = self.hold.is_some();
        match self.phase {
            Phase::Live { .. } if churner => match kind {
                None => {
                    Shared::bump(&s.churn_closed);
                    End::Stopped
                }
                Some(kind) => fail(s, &kind, true, false),
            },
            Phase::Live { since_s } => {
                let now_s = clock::since_origin_ns(self.job.clock_origin_ns) as f64 / 1e9;
                s.connected.set(s.connected.get() - 1);
                Shared::bump(&s.disconnects);
                s.live_start_s_sum.set(s.live_start_s_sum.get() - since_s);
                s.session_s_closed_sum
                    .set(s.session_s_closed_sum.get() + (now_s - since_s));
                Shared::bump(&s.sessions_closed);
                s.by_server.borrow_mut()[self.server_index] -= 1;
                if let Some(r) = s.rooms.borrow_mut().get_mut(&self.room) {
                    r.1 -= 1;
                }
                let Some(kind) = kind else {
                    return End::Stopped;
                };
                s.error(&kind);
                *s.drops.borrow_mut().entry(kind).or_default() += 1;
                End::Dropped
            }
            _ => fail(
                s,
                kind.as_deref().unwrap_or("stopped_during_setup"),
                churner,
                self.rejoin,
            ),
        }
    }

    fn record_latency(&mut self, payload: &[u8]) {
        let Some(sent_ns) = body_timestamp_ns(payload) else {
            return;
        };
        let now = clock::since_origin_ns(self.job.clock_origin_ns);
        let us = (now.saturating_sub(sent_ns) / 1000).clamp(1, LATENCY_US_MAX);
        if let Some(h) = self.shared.latency.borrow_mut().as_mut() {
            let _ = h.record(us);
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64: masks need not be secret from ourselves.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_le_bytes()
    }

    fn push(&mut self, payload: &[u8]) {
        let mask = self.mask();
        wire::push_frame(&mut self.out, wire::OPCODE_TEXT, payload, mask);
    }

    fn push_control(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.mask();
        wire::push_frame(&mut self.out, opcode, payload, mask);
    }
}

/// Sleeps until `at`; pending forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "connection_reset".into(),
        std::io::ErrorKind::BrokenPipe => "broken_pipe".into(),
        _ => format!("io_error:{:?}", e.kind()),
    }
}
