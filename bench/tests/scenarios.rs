//! Short versions of each scenario against a real `sokdo` on a free loopback port, checking
//! that the report's figures agree with each other, and that a server killed mid-run is
//! reported as unreachable rather than hanging the bench.
//!
//! The `sokdo` binary is found in `SOKDO_BIN`, else beside this test's executable
//! (`<target>/<profile>/sokdo`): build the workspace's binaries first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Server {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
}

impl Server {
    fn start() -> Server {
        let bin = sokdo_bin();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let data_dir = unique_path("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let child = Command::new(&bin)
            .args(["--listen", &addr.to_string(), "--shards", "1", "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let server = Server {
            child,
            addr,
            data_dir,
        };
        wait_until(Duration::from_secs(20), "sokdo answers /healthz", || {
            healthz(addr)
        });
        server
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn sokdo_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOKDO_BIN") {
        return bin.into();
    }
    // <target>/<profile>/deps/scenarios-… → <target>/<profile>/sokdo
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("sokdo");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace), \
         or set SOKDO_BIN",
        bin.display()
    );
    bin
}

fn unique_path(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "sokdo-bench-test-{}-{n}-{what}",
        std::process::id()
    ))
}

fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    s.write_all(req.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// Polls `cond` until it holds; panics with `what` after `within`.
fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bench(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sokdo-bench"));
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Runs the bench to completion (bounded) and returns its JSON report.
fn run_bench(args: &[&str], within: Duration) -> Value {
    let json = unique_path("report.json");
    let mut child = bench(args)
        .arg("--json")
        .arg(&json)
        .spawn()
        .expect("starting sokdo-bench");
    let status = wait_child(&mut child, within);
    assert!(status.code().is_some(), "sokdo-bench died: {status:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("a JSON report")).expect("valid JSON");
    let _ = std::fs::remove_file(&json);
    report
}

fn wait_child(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("sokdo-bench did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn fanout_delivers_every_acked_message_to_every_member() {
    let server = Server::start();
    let addr = server.addr.to_string();
    let report = run_bench(
        &[
            "fanout",
            "--server",
            &addr,
            "--users",
            "100",
            "--rooms",
            "2",
            "--publishers",
            "4",
            "--rate",
            "200",
            "--duration-s",
            "2",
            "--drain-s",
            "10",
            "--sample-every",
            "5",
        ],
        Duration::from_secs(60),
    );
    let s = &report["runs"][0]["summary"];
    assert_eq!(s["unreachable"], false, "{s}");
    assert_eq!(u(&s["connect_ok"]), 100, "{s}");
    assert_eq!(u(&s["connect_fail"]), 0, "{s}");
    let acked = u(&s["acked"]);
    assert!(acked > 0, "{s}");
    assert_eq!(acked, u(&s["sent"]), "every send acknowledged: {s}");
    // 100 users in 2 rooms: every message has 50 recipients, the sender among them.
    assert_eq!(u(&s["expected_deliveries"]), acked * 50, "{s}");
    assert_eq!(u(&s["received"]), acked * 50, "{s}");
    assert!(u(&s["latency_ms"]["samples"]) > 0, "{s}");
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() >= s["latency_ms"]["p50"].as_f64().unwrap());
    let timeline = report["runs"][0]["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
}

#[test]
fn steady_ktb_reports_checks_against_the_seed_target() {
    let server = Server::start();
    let addr = server.addr.to_string();
    let report = run_bench(
        &[
            "steady",
            "--preset",
            "ktb",
            "--scale",
            "0.02",
            "--duration-s",
            "2",
            "--server",
            &addr,
        ],
        Duration::from_secs(60),
    );
    let run = &report["runs"][0];
    assert_eq!(run["scenario"], "steady:ktb");
    let s = &run["summary"];
    assert_eq!(u(&s["connect_ok"]), 60, "{s}");
    assert_eq!(u(&s["received"]), u(&s["expected_deliveries"]), "{s}");
    let checks = run["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{run}");
    let all_pass = checks.iter().all(|c| c["pass"] == true);
    assert_eq!(run["passed"], all_pass);
}

#[test]
fn ramp_holds_every_step_and_reports_it() {
    let server = Server::start();
    let addr = server.addr.to_string();
    let report = run_bench(
        &[
            "ramp",
            "--server",
            &addr,
            "--start-users",
            "20",
            "--step-users",
            "20",
            "--target-users",
            "60",
            "--step-s",
            "1",
            "--room-size",
            "10",
            "--message-interval-s",
            "0.5",
        ],
        Duration::from_secs(60),
    );
    let run = &report["runs"][0];
    let s = &run["summary"];
    assert_eq!(s["unreachable"], false, "{s}");
    assert_eq!(u(&s["users_held"]), 60, "{s}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{run}");
    let connected: Vec<u64> = steps.iter().map(|st| u(&st["users_connected"])).collect();
    assert_eq!(connected, vec![20, 40, 60]);
    assert!(steps.iter().all(|st| st["healthy"] == true));
    assert!(u(&s["sent"]) > 0 && u(&s["received"]) > 0, "{s}");
}

/// Σ of a counter over a sokdo process's shards, from its `/metrics`.
fn metric_sum(addr: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("metrics");
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn ramp_over_two_processes_puts_each_room_on_one_and_counts_every_delivery() {
    let a = Server::start();
    let b = Server::start();
    let servers = format!("{},{}", a.addr, b.addr);
    let pids = format!("{},{}", a.pid(), b.pid());
    // Rooms of 10 filled in arrival order; steps of 20 add whole rooms, so room r (r = 0..5)
    // is complete before its first message, and lives on process r mod 2.
    let report = run_bench(
        &[
            "ramp",
            "--server",
            &servers,
            "--server-pid",
            &pids,
            "--start-users",
            "20",
            "--step-users",
            "20",
            "--target-users",
            "60",
            "--step-s",
            "1",
            "--room-size",
            "10",
            "--message-interval-s",
            "0.3",
            "--drain-s",
            "10",
            "--workers",
            "2",
        ],
        Duration::from_secs(60),
    );
    let run = &report["runs"][0];
    let s = &run["summary"];
    assert_eq!(run["server"], servers.as_str());
    assert_eq!(s["unreachable"], false, "{s}");
    assert_eq!(u(&s["users_held"]), 60, "{s}");
    assert_eq!(u(&s["connect_fail"]), 0, "{s}");
    let by_server: Vec<u64> = s["users_by_server"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect();
    assert_eq!(
        by_server,
        vec![30, 30],
        "rooms 0, 2, 4 on one, 1, 3, 5 on the other"
    );
    let acked = u(&s["acked"]);
    assert!(acked > 0, "{s}");
    assert_eq!(acked, u(&s["sent"]), "every send acknowledged: {s}");
    // Every room has 10 members, the sender among them.
    assert_eq!(u(&s["expected_deliveries"]), acked * 10, "{s}");
    assert_eq!(u(&s["received"]), acked * 10, "{s}");
    // Both processes delivered their rooms' messages (the servers' counter also counts the
    // presence events of joins, which the bench does not count as messages).
    let (da, db) = (
        metric_sum(a.addr, "sokdo_deliveries_total"),
        metric_sum(b.addr, "sokdo_deliveries_total"),
    );
    assert!(da > 0 && db > 0, "deliveries per process: {da}, {db}");
    assert!(da + db >= u(&s["received"]), "{da} + {db}: {s}");
    assert!(
        u(&s["server_rss_after_bytes"]) > 0,
        "RSS summed over both processes: {s}"
    );
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{run}");
    assert!(steps.iter().all(|st| st["healthy"] == true));
}

#[test]
fn idle_reports_server_memory_per_connection() {
    let server = Server::start();
    let addr = server.addr.to_string();
    let pid = server.pid();
    let report = run_bench(
        &[
            "idle",
            "--server",
            &addr,
            "--users",
            "300",
            "--hold-s",
            "1",
            "--server-pid",
            &pid,
        ],
        Duration::from_secs(60),
    );
    let s = &report["runs"][0]["summary"];
    assert_eq!(u(&s["users_held"]), 300, "{s}");
    assert!(u(&s["server_rss_after_bytes"]) > 0, "{s}");
    assert!(s["server_rss_per_connection_bytes"].is_f64(), "{s}");
}

#[test]
fn a_server_killed_mid_run_is_reported_unreachable() {
    let mut server = Server::start();
    let addr = server.addr.to_string();
    let json = unique_path("killed.json");
    let mut bench = bench(&[
        "fanout",
        "--server",
        &addr,
        "--users",
        "50",
        "--publishers",
        "5",
        "--rate",
        "100",
        "--duration-s",
        "60",
        "--drain-s",
        "60",
    ])
    .arg("--json")
    .arg(&json)
    .spawn()
    .unwrap();
    // Kill the server once the bench's users are established.
    let port = server.addr.port();
    wait_until(Duration::from_secs(20), "50 users are connected", || {
        established_to(port) >= 50
    });
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // Far less than the 60 s of publishing and 60 s of draining asked for.
    wait_child(&mut bench, Duration::from_secs(30));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let s = &report["runs"][0]["summary"];
    assert_eq!(s["unreachable"], true, "{s}");
    assert!(report["runs"][0]["duration_s"].as_f64().unwrap() < 30.0);
}

/// Established TCP connections whose local port is `port` (the server's side), from
/// /proc/net/tcp.
fn established_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "01"
        })
        .count()
}
