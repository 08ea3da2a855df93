//! Overload is admission, not collapse: past the instance's capacity clients wait in one
//! queue, in arrival order across shards, told their position; past the queue's bound they
//! get 503 with Retry-After; an address that reconnects too fast gets 429.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{eventually, Client, Server, WAIT};

async fn connect_raw(server: &Server, user: &str) -> crate::support::Ws {
    tokio_tungstenite::connect_async(server.ws_url(&format!("user={user}")))
        .await
        .expect("upgrade")
        .0
}

async fn next_json(ws: &mut crate::support::Ws) -> serde_json::Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .expect("frame")
        {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn past_capacity_clients_queue_in_order_then_get_503() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--connections-max",
        "2",
        "--admission-queue-max",
        "2",
    ]);
    let first = Client::connect(&server, "u1").await;
    let mut second = Client::connect(&server, "u2").await;
    assert_eq!(
        server.get("/readyz").0,
        503,
        "full: the load balancer should send new users elsewhere"
    );

    let mut third = connect_raw(&server, "u3").await;
    assert_eq!(
        next_json(&mut third).await,
        json!({"op": "queued", "position": 1})
    );
    let mut fourth = connect_raw(&server, "u4").await;
    assert_eq!(
        next_json(&mut fourth).await,
        json!({"op": "queued", "position": 2})
    );
    match tokio_tungstenite::connect_async(server.ws_url("user=u5")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // A queued client's requests are refused until it is admitted.
    third
        .send(Message::text(r#"{"op":"ping","id":1}"#))
        .await
        .unwrap();
    let refused = next_json(&mut third).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );

    drop(first);
    let hello = next_json(&mut third).await;
    assert_eq!(
        (hello["op"].as_str(), hello["user"].as_str()),
        (Some("hello"), Some("u3"))
    );
    assert_eq!(
        next_json(&mut fourth).await,
        json!({"op": "queued", "position": 1})
    );
    let mut third = Client::from_ws_admitted(third, hello);
    third.ok(json!({"op": "join", "room": "r"})).await;
    second.ok(json!({"op": "join", "room": "r"})).await;
}

/// A metric's samples by shard label.
fn by_shard(server: &Server, name: &str) -> HashMap<String, f64> {
    let (_, text) = server.get("/metrics");
    let prefix = format!("{name}{{shard=\"");
    let samples: HashMap<String, f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (shard, rest) = l.split_once('"')?;
            Some((shard.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    assert!(!samples.is_empty(), "/metrics has no `{name}`");
    samples
}

/// Polls `/healthz` from a thread of its own until stopped: every answer must be a 200
/// within 2 s (a bound on a hang, not a speed target).
struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl HealthWatch {
    fn start(addr: SocketAddr) -> HealthWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut polls, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                polls += 1;
                match healthz(addr, Duration::from_secs(2)) {
                    Ok(200) => {}
                    other => failures.push(format!("poll {polls}: {other:?}")),
                }
                // The interval between polls; nothing waits on it.
                std::thread::sleep(Duration::from_millis(50));
            }
            (polls, failures)
        });
        HealthWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling; fails the test if any poll failed.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (polls, failures) = self.thread.take().unwrap().join().unwrap();
        assert!(polls > 0);
        assert!(failures.is_empty(), "/healthz failed: {failures:?}");
    }
}

fn healthz(addr: SocketAddr, within: Duration) -> Result<u16, String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, within).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(within))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    out.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {out:?}"))
}

/// Goal: the queue is one for the instance. With 3 places over 2 shards, waiters on both
/// shards are admitted in exactly the order they arrived as holders leave, whichever shard
/// a holder leaves from; `/healthz` answers throughout.
#[tokio::test]
async fn waiters_are_admitted_in_global_arrival_order_across_shards() {
    let server = Server::start(&["--shards", "2", "--connections-max", "3"]);
    let health = HealthWatch::start(server.addr);
    let mut holders = VecDeque::new();
    for i in 0..3 {
        holders.push_back(Client::connect(&server, &format!("h{i}")).await);
    }
    assert_eq!(server.metric("sokdo_connections_admitted"), 3.0);
    // Waiters, one at a time (each `queued` before the next connects, so the arrival order
    // is defined), until at least 4 wait and both shards have some; the shard of each is
    // the one whose queued gauge grew.
    let mut waiters = Vec::new();
    while waiters.len() < 4 || waiters.iter().all(|(_, s, _)| *s == waiters[0].1) {
        assert!(
            waiters.len() < 40,
            "the kernel never spread waiters over both shards"
        );
        let before = by_shard(&server, "sokdo_connections_queued");
        let user = format!("w{}", waiters.len());
        let mut ws = connect_raw(&server, &user).await;
        let position = waiters.len() + 1;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"op": "queued", "position": position})
        );
        let after = by_shard(&server, "sokdo_connections_queued");
        let shard = ["0", "1"]
            .into_iter()
            .find(|s| after[*s] == before[*s] + 1.0)
            .expect("one shard's queued gauge grew by one");
        waiters.push((ws, shard.to_owned(), user));
    }
    let order: Vec<_> = waiters.iter().map(|(_, s, u)| format!("{u}@{s}")).collect();
    eprintln!("arrival order: {order:?}");
    let total = waiters.len();
    for (i, (mut ws, shard, user)) in waiters.into_iter().enumerate() {
        drop(holders.pop_front().expect("a holder"));
        let hello = loop {
            let v = next_json(&mut ws).await;
            if v["op"] == "hello" {
                break v;
            }
            assert_eq!(v["op"], "queued", "{user}: {v}");
        };
        assert_eq!(hello["user"], user.as_str(), "{order:?}");
        assert_eq!(
            hello["shard"].to_string(),
            shard,
            "{user} was queued on shard {shard}"
        );
        let left = (total - i - 1) as f64;
        eventually("the instance's counts", || {
            server.metric("sokdo_connections_admitted") == 3.0
                && server.metric("sokdo_admission_waiting") == left
        })
        .await;
        holders.push_back(Client::from_ws_admitted(ws, hello));
    }
    for holder in holders.iter_mut() {
        holder.ok(json!({"op": "join", "room": "r"})).await;
    }
    health.finish();
}

/// Goal: `/readyz` speaks for the instance: once every place is taken, each shard answers
/// 503 `full`, the shard with none of the connections too (one place: the other shard has
/// no connection at all).
#[tokio::test]
async fn readyz_is_full_on_every_shard_when_the_instance_is() {
    let server = Server::start(&["--shards", "2", "--connections-max", "1"]);
    let _only = Client::connect(&server, "only").await;
    let start = by_shard(&server, "sokdo_connections_accepted_total");
    // Every socket is accepted by some shard; GET until each shard has answered at least one
    // `/readyz` (one more accepted socket on a shard may be the `/metrics` read itself).
    for round in 0.. {
        assert!(round < 50, "the kernel never spread GETs over both shards");
        for _ in 0..4 {
            assert_eq!(server.get("/readyz"), (503, "full\n".to_owned()));
        }
        let now = by_shard(&server, "sokdo_connections_accepted_total");
        // A shard that has accepted nothing yet has no sample of the counter: 0.
        let count = |m: &HashMap<String, f64>, s: &str| m.get(s).copied().unwrap_or(0.0);
        if ["0", "1"]
            .iter()
            .all(|s| count(&now, s) - count(&start, s) >= 2.0)
        {
            break;
        }
    }
    assert_eq!(server.metric("sokdo_connections_max"), 1.0);
    assert_eq!(server.get("/healthz").0, 200);
}

/// Goal: an address that opens connections faster than its bucket allows gets 429 with
/// `Retry-After` and is closed; another address still connects and chats.
#[tokio::test]
async fn an_address_past_its_connection_rate_gets_429_others_chat() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--connections-per-ip-per-s",
        "1",
        "--connections-per-ip-burst",
        "4",
    ]);
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() < 40, "40 upgrades from one address all passed");
        match tokio_tungstenite::connect_async(server.ws_url("user=storm")).await {
            Ok((ws, _)) => held.push(ws),
            Err(WsError::Http(resp)) => break resp,
            Err(other) => panic!("expected 429, got {other:?}"),
        }
    };
    assert_eq!(refused.status().as_u16(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After: {retry}");
    let body = String::from_utf8(refused.body().clone().unwrap_or_default()).unwrap();
    assert_eq!(
        body,
        "too many connections from this address: retry later\n"
    );
    assert!(held.len() >= 2, "a shard's share of the burst passes first");
    assert!(server.metric("sokdo_connections_rate_limited_total") >= 1.0);

    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut calm = Client::connect_from(&server, "calm", other).await;
    let mut peer = Client::connect_from(&server, "peer", other).await;
    calm.ok(json!({"op": "join", "room": "r"})).await;
    peer.ok(json!({"op": "join", "room": "r"})).await;
    calm.ok(json!({"op": "send", "room": "r", "body": "still here"}))
        .await;
    assert_eq!(peer.event_of("msg").await["body"], "still here");
    assert_eq!(server.get("/healthz").0, 200, "plain HTTP is not limited");
}

/// A memory cgroup (v1) made for one test, under the test's own, removed after.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn with_limit(bytes: u64) -> Cgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then_some(path)
            })
            .expect("this test needs the cgroup v1 memory controller");
        let dir = std::path::Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join(format!("sokdo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make a memory cgroup (needs root)");
        std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Goal: `--connections-max auto` derives the capacity from the cgroup's memory limit, as
/// documented: min((limit × 80 % − 64 MiB) ÷ 20,000 B, open files − 100).
#[tokio::test]
async fn auto_capacity_comes_from_the_cgroup_memory_limit() {
    let limit: u64 = 512 << 20;
    let cgroup = Cgroup::with_limit(limit);
    let prefix = format!("echo $$ > {}/cgroup.procs", cgroup.0.display());
    let server = Server::start_with_prefix(&prefix, &["--shards", "1"]);
    let placed = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).unwrap();
    assert!(placed.contains("sokdo-test-"), "{placed}");
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let open_files: u64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("a finite open-file limit");
    let by_memory = (limit * 80 / 100 - (64 << 20)) / 22_000;
    let expected = by_memory.min(open_files - 100);
    assert_eq!(server.metric("sokdo_connections_max"), expected as f64);
    drop(server);
}

/// Goal: a waiter that leaves loses its turn and costs no place: the next one is admitted,
/// and the instance's counts come back exact.
#[tokio::test]
async fn a_waiter_that_leaves_gives_its_turn_to_the_next() {
    let server = Server::start(&["--shards", "2", "--connections-max", "1"]);
    let holder = Client::connect(&server, "holder").await;
    let mut waiters = Vec::new();
    for i in 0..3 {
        let mut ws = connect_raw(&server, &format!("w{i}")).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"op": "queued", "position": i + 1})
        );
        waiters.push(ws);
    }
    drop(waiters.remove(0));
    eventually("the leaver is out of the queue", || {
        server.metric("sokdo_admission_waiting") == 2.0
    })
    .await;
    drop(holder);
    let hello = loop {
        let v = next_json(&mut waiters[0]).await;
        if v["op"] == "hello" {
            break v;
        }
    };
    assert_eq!(hello["user"], "w1");
    let position = loop {
        let v = next_json(&mut waiters[1]).await;
        if v["op"] == "queued" && v["position"] == 1 {
            break v;
        }
        assert_eq!(v["op"], "queued", "{v}");
    };
    assert_eq!(position, json!({"op": "queued", "position": 1}));
    eventually("one admitted, one waiting", || {
        server.metric("sokdo_connections_admitted") == 1.0
            && server.metric("sokdo_admission_waiting") == 1.0
    })
    .await;
}
