//! Health, readiness, metrics, heartbeats, idle timeout and draining on SIGTERM.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, Client, Server, WAIT};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(server.get("/readyz").0, 200);
    let mut c = Client::connect(&server, "a").await;
    c.ok(json!({"op": "join", "room": "r"})).await;
    c.ok(json!({"op": "send", "room": "r", "body": "hi"})).await;
    c.event_of("msg").await;
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "sokdo_connections{shard=",
        "sokdo_messages_in_total{shard=",
        "sokdo_deliveries_total{shard=",
        "sokdo_cross_shard_messages_total{shard=",
        "sokdo_inbox_depth{shard=",
        "sokdo_outbound_queue_bytes{shard=",
        "sokdo_fanout_latency_seconds_bucket{",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    // Two frames reached the one subscriber: its own `joined`, then the `msg`.
    assert_eq!(server.metric("sokdo_deliveries_total"), 2.0);
    assert_eq!(server.get("/nowhere").0, 404);
}

#[tokio::test]
async fn pings_keep_a_reading_client_alive_and_silence_is_closed() {
    let server = Server::start(&["--heartbeat-ms", "100", "--idle-timeout-ms", "500"]);
    let mut alive = Client::connect(&server, "alive").await;
    let mut silent = Client::connect(&server, "silent").await;
    // tokio-tungstenite answers pings while it reads: 10 pings span twice the idle timeout.
    let mut pings = 0;
    while pings < 10 {
        let frame = tokio::time::timeout(WAIT, alive.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match frame {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    alive.ok(json!({"op": "ping"})).await;
    // The silent client read nothing, so it answered no ping: it was closed.
    assert_eq!(silent.closed().await, (1001, "idle timeout".into()));
}

#[tokio::test]
async fn sigterm_drains_readiness_then_connections_then_exits() {
    let mut server = Server::start(&["--drain-spread-ms", "500", "--close-timeout-ms", "2000"]);
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect(&server, &format!("u{i}")).await;
        c.ok(json!({"op": "join", "room": "r"})).await;
        clients.push(c);
    }
    server.signal(libc::SIGTERM);
    eventually("/readyz to answer 503", || server.get("/readyz").0 == 503).await;
    for c in &mut clients {
        let closing = c.event_of("closing").await;
        assert_eq!(closing["reason"], "shutdown");
        assert!(closing["reconnect_after_ms"].as_u64().is_some());
        assert_eq!(c.closed().await.0, 1001);
    }
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

/// A server whose `POST /debug/fault/…` is on (test only).
fn with_faults(args: &[&str]) -> Server {
    let data = crate::support::temp_dir("faults");
    Server::start_with_env(&data, args, &[("SOKDO_FAULT_INJECTION", "1")])
}

/// Injects `fault`, then checks the process ends with status 70 and logs the panic with
/// the thread's name, the message and a backtrace.
fn dies_of(fault: &str, thread: &str, message: &str, frame: &str) {
    let mut server = with_faults(&[]);
    server.expect_panic();
    assert_eq!(server.get("/healthz").0, 200);
    let (status, _) = server.http("POST", &format!("/debug/fault/{fault}"), &[], "");
    assert_eq!(status, 202);
    let exit = server.wait_exit(WAIT);
    assert_eq!(exit.code(), Some(70), "{exit:?}");
    let panics = server.log_lines("panicked");
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert!(
        // glommio appends its executor id to a shard thread's name.
        panics[0].contains(&format!("thread '{thread}")) && panics[0].contains(message),
        "{panics:?}"
    );
    assert!(
        !server.log_lines(frame).is_empty(),
        "no backtrace frame of {frame} in the log"
    );
}

#[test]
fn a_panicking_shard_ends_the_process_with_its_backtrace() {
    dies_of(
        "panic-shard?shard=1",
        "sokdo-shard-1",
        "injected fault: shard 1 panics",
        "sokdo_engine::shard::Shard>::inject",
    );
}

#[test]
fn a_panicking_log_thread_ends_the_process() {
    dies_of(
        "panic-log",
        "sokdo-wal",
        "injected fault: the log thread panics",
        "sokdo_persistence::wal_thread::collect",
    );
}

#[test]
fn a_stalled_shard_fails_healthz_until_it_runs_again() {
    // Ticks every 25 ms; a shard is stuck after 1 s (40 ticks of margin); the stall lasts 5 s.
    let server = with_faults(&[
        "--heartbeat-ms",
        "100",
        "--idle-timeout-ms",
        "60000",
        "--stall-timeout-ms",
        "1000",
    ]);
    let (status, _) = server.http("POST", "/debug/fault/stall-shard?shard=1&ms=5000", &[], "");
    assert_eq!(status, 202);
    // Requests that land on the stalled shard get no answer; shard 0 reports it.
    let short = Duration::from_millis(500);
    let deadline = std::time::Instant::now() + WAIT;
    let reported = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never reported the stall"
        );
        if let Some((503, body)) = server.try_get("/healthz", short) {
            break body;
        }
    };
    assert!(
        reported.starts_with("shard 1 has not run for"),
        "{reported}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while server.try_get("/healthz", short) != Some((200, "ok\n".into())) {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never recovered"
        );
    }
}

/// Goal: a shard that could not run for longer than the idle timeout does not take its own
/// silence for its clients': none is closed `idle timeout` when it runs again (issue 15's
/// soak lost all 2,000 users at once so, 1,358 of them reset: their sends were unread).
/// Method: one shard, a 1.5 s idle timeout; a joined client's shard stalls for 4 s
/// (`--fault-injection`), and the client's request, sent meanwhile, waits in the socket.
/// The ticker's queue runs first when the shard is back: before this rule, its check saw
/// every client silent for 4 s and closed it before its bytes were read.
#[tokio::test]
async fn a_stall_longer_than_the_idle_timeout_closes_no_client() {
    let server = with_faults(&[
        "--shards",
        "1",
        "--heartbeat-ms",
        "200",
        "--idle-timeout-ms",
        "1500",
        "--stall-timeout-ms",
        "30000",
    ]);
    let mut c = Client::connect(&server, "patient").await;
    c.ok(json!({"op": "join", "room": "r"})).await;
    let (status, _) = server.http("POST", "/debug/fault/stall-shard?shard=0&ms=4000", &[], "");
    assert_eq!(status, 202);
    // Answered once the shard runs again, on a connection still open.
    c.ok(json!({"op": "ping"})).await;
    c.ok(json!({"op": "send", "room": "r", "body": "still here"}))
        .await;
    assert!(
        server.metric("sokdo_stalls_total") >= 1.0,
        "the shard stalled"
    );
    assert_eq!(server.metric("sokdo_idle_timeout_closes_total"), 0.0);
}

#[test]
fn fault_injection_is_refused_in_production_and_off_by_default() {
    let out = std::process::Command::new(crate::support::sokdo_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            "s3cret-s3cret-s3cret",
        ])
        .env("SOKDO_FAULT_INJECTION", "1")
        .output()
        .expect("run sokdo");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--fault-injection (SOKDO_FAULT_INJECTION) is for tests"),
        "{stderr}"
    );
    let server = Server::start(&[]);
    let (status, _) = server.http("POST", "/debug/fault/panic-shard?shard=0", &[], "");
    assert_eq!(
        status, 405,
        "fault routes exist only with --fault-injection"
    );
    assert_eq!(server.get("/healthz").0, 200);
    let faulty = with_faults(&[]);
    let (status, body) = faulty.http("POST", "/debug/fault/panic-shard?shard=2", &[], "");
    assert_eq!((status, body.as_str()), (400, "no such shard\n"));
    assert_eq!(faulty.get("/healthz").0, 200);
}

/// The scheduling policy (`SCHED_*`, from `/proc/PID/task/TID/sched`) of each of the
/// server's threads named `name`.
fn policies_of(server: &Server, name: &str) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            (comm.trim() == name).then_some(())?;
            let sched = std::fs::read_to_string(dir.join("sched")).ok()?;
            let line = sched.lines().find(|l| l.starts_with("policy"))?;
            line.rsplit(':').next()?.trim().parse().ok()
        })
        .collect()
}

/// Whether a thread of this process may go `SCHED_IDLE` and back (root, or `RLIMIT_NICE`
/// ≥ 20): what `--sink-idle-lag-ms` needs.
fn may_leave_idle() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is this probe thread; `param` lives for the calls.
        unsafe {
            let normal = libc::sched_getscheduler(0);
            normal >= 0
                && libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                && libc::sched_setscheduler(0, normal, &param) == 0
        }
    })
    .join()
    .unwrap()
}

/// `--persistence-threads-idle` puts the log, sink and read threads in `SCHED_IDLE` (5),
/// and the server still stores and answers; without it they keep the policy the process
/// was started with (this test's: `SCHED_OTHER`, 0, unless it runs under `chrt`) — the
/// sink goes idle only while it writes a batch, and says it keeps up where it may
/// (`--sink-idle-lag-ms`), never with `--sink-idle-lag-ms 0`.
#[tokio::test]
async fn persistence_threads_run_idle_on_request() {
    // SAFETY: a query of this thread's own scheduling policy.
    let inherited = u32::try_from(unsafe { libc::sched_getscheduler(0) }).unwrap();
    let plain = Server::start(&["--shards", "1"]);
    let never = Server::start(&["--shards", "1", "--sink-idle-lag-ms", "0"]);
    let idle = Server::start(&["--shards", "1", "--persistence-threads-idle"]);
    for name in ["sokdo-wal", "sokdo-sink", "sokdo-read"] {
        // A thread names itself when it first runs; a starved SCHED_IDLE thread on a busy
        // machine may not have run yet, so wait for the name before reading the policy.
        for server in [&plain, &never, &idle] {
            eventually(&format!("a thread named {name}"), || {
                policies_of(server, name).len() == 1
            })
            .await;
        }
        assert_eq!(policies_of(&plain, name), [inherited], "{name} by default");
        assert_eq!(policies_of(&never, name), [inherited], "{name}, lag 0");
        assert_eq!(
            policies_of(&idle, name),
            [libc::SCHED_IDLE as u32],
            "{name} idle"
        );
    }
    let adapts = inherited != libc::SCHED_IDLE as u32 && may_leave_idle();
    let keeps_up = if adapts { 1.0 } else { 0.0 };
    eventually("the sink's state", || {
        plain.metric("sokdo_sink_idle") == keeps_up
    })
    .await;
    assert_eq!(never.metric("sokdo_sink_idle"), 0.0);
    let mut c = Client::connect(&idle, "idler").await;
    c.ok(json!({"op": "join", "room": "r"})).await;
    c.ok(json!({"op": "send", "room": "r", "body": "stored"}))
        .await;
    let history = c.ok(json!({"op": "history", "room": "r"})).await;
    assert_eq!(history["messages"][0]["body"], "stored");
}

/// Spins on one CPU until dropped: a normal-priority thread that never leaves it.
struct Hog(std::process::Child);

impl Hog {
    fn on(cpu: usize) -> Hog {
        let child = std::process::Command::new("taskset")
            .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("taskset runs");
        Hog(child)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first CPU this process may run on.
fn first_allowed_cpu() -> usize {
    // SAFETY: `cpu_set_t` is plain data; the call fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: pid 0 is this thread; `set` is valid for `size` bytes.
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
    // SAFETY: `set` was filled above and every index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .expect("some CPU is allowed")
}

/// A sink that writes in the shards' idle time, on a core something else keeps busy, gets
/// almost no CPU: once a record has waited `--sink-idle-lag-ms` it writes as a normal
/// thread (each such batch counted), catches up with everything sent, and keeps up in idle
/// time again once the core is free.
#[tokio::test]
async fn a_starved_sink_writes_as_a_normal_thread_catches_up_and_goes_idle_again() {
    if !may_leave_idle() {
        // Covered by `persistence_threads_run_idle_on_request`: the sink never goes idle.
        return;
    }
    let cpu = first_allowed_cpu();
    let mut pinned = std::process::Command::new("taskset");
    pinned
        .args(["-c", &cpu.to_string()])
        .arg(crate::support::sokdo_bin());
    let data = crate::support::temp_dir("data");
    let args = ["--shards", "1", "--sink-idle-lag-ms", "200"];
    let server = Server::start_command(pinned, &data, &args, &[]);
    eventually("the sink keeping up", || {
        server.metric("sokdo_sink_idle") == 1.0
    })
    .await;
    let mut c = Client::connect(&server, "writer").await;
    c.ok(json!({"op": "join", "room": "r"})).await;
    let hog = Hog::on(cpu);
    // Sends keep records coming until one has waited the lag (bounded by `WAIT`).
    let mut sent = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while server.metric("sokdo_sink_batches_behind_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never wrote behind"
        );
        c.ok(json!({"op": "send", "room": "r", "body": format!("m{sent}")}))
            .await;
        sent += 1;
    }
    eventually("the sink caught up under the hog", || {
        server.metric("sokdo_sink_lag_records") == 0.0
    })
    .await;
    drop(hog);
    // The next batch, young, is written idle again.
    c.ok(json!({"op": "send", "room": "r", "body": "after"}))
        .await;
    eventually("the sink keeping up again", || {
        server.metric("sokdo_sink_idle") == 1.0 && server.metric("sokdo_sink_lag_records") == 0.0
    })
    .await;
}
