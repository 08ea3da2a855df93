//! Acknowledged messages survive a crash: the write-ahead log, the store, recovery.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{temp_dir, Client, Server};

/// Every message of a room, paging `history` backwards from the newest.
pub(crate) async fn full_history(c: &mut Client, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut req = json!({"op": "history", "room": room, "limit": 100});
        if let Some(b) = before {
            req["before_seq"] = json!(b);
        }
        let page = c.ok(req).await["messages"].as_array().unwrap().clone();
        let Some(first) = page.first() else { break };
        before = Some(first["seq"].as_u64().unwrap());
        all.splice(0..0, page);
        if before == Some(1) {
            break;
        }
    }
    all
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one story read top to bottom: load, kill -9, restart, account for every ack"
)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let data = temp_dir("kill9");
    let args = ["--durability", "sync", "--history-ring-messages-max", "64"];
    let mut server = Server::start_in(&data, &args);
    // Three writers keep many sends in flight, so the kill lands mid-stream.
    let mut writers = Vec::new();
    for w in 0..3 {
        let mut c = Client::connect(&server, &format!("w{w}")).await;
        c.ok(json!({"op": "join", "room": "log"})).await;
        writers.push(c);
    }
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (w, c) in writers.into_iter().enumerate() {
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = c.ws.split();
            let sender = tokio::spawn(async move {
                for i in 0..100_000 {
                    let req =
                        json!({"op": "send", "id": i, "room": "log", "body": format!("w{w}-{i}")});
                    if tx.send(Message::text(req.to_string())).await.is_err() {
                        return;
                    }
                }
            });
            let mut bodies = BTreeMap::new();
            let mut acked = BTreeMap::new();
            while let Some(Ok(Message::Text(t))) = rx.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "msg" {
                    bodies.insert(
                        v["seq"].as_u64().unwrap(),
                        v["body"].as_str().unwrap().to_owned(),
                    );
                }
                if v["op"] == "ok" && v["seq"].is_u64() {
                    let seq = v["seq"].as_u64().unwrap();
                    let body = bodies
                        .get(&seq)
                        .cloned()
                        .unwrap_or_else(|| format!("w{w}-{}", v["id"]));
                    acked.insert(seq, body);
                    acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            sender.abort();
            acked
        }));
    }
    crate::support::eventually("300 acknowledged sends", || {
        acks.load(std::sync::atomic::Ordering::Relaxed) >= 300
    })
    .await;
    server.signal(libc::SIGKILL);
    server.wait_exit(std::time::Duration::from_secs(10));
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() >= 300);

    let server = Server::start_in(&data, &args);
    let mut reader = Client::connect(&server, "reader").await;
    let joined = reader.ok(json!({"op": "join", "room": "log"})).await;
    let history = full_history(&mut reader, "log").await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every seq once, in order, no gaps"
    );
    assert_eq!(joined["last_seq"].as_u64().unwrap(), seqs.len() as u64);
    for (seq, body) in &acked {
        let stored = &history[*seq as usize - 1];
        assert_eq!(
            stored["body"].as_str(),
            Some(body.as_str()),
            "acknowledged seq {seq}"
        );
    }
    let next = reader
        .ok(json!({"op": "send", "room": "log", "body": "after restart"}))
        .await;
    assert_eq!(
        next["seq"].as_u64().unwrap(),
        seqs.len() as u64 + 1,
        "seqs continue without reuse"
    );
}

#[tokio::test]
async fn rooms_members_and_history_survive_a_clean_restart() {
    let data = temp_dir("restart");
    let mut server = Server::start_in(&data, &[]);
    let mut a = Client::connect(&server, "a").await;
    a.ok(json!({"op": "create", "room": "kept", "title": "Kept"}))
        .await;
    a.ok(json!({"op": "join", "room": "kept"})).await;
    for i in 1..=3 {
        a.ok(json!({"op": "send", "room": "kept", "body": format!("m{i}")}))
            .await;
    }
    drop(a);
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_exit(std::time::Duration::from_secs(15))
        .success());

    let server = Server::start_in(&data, &[]);
    let mut b = Client::connect(&server, "b").await;
    let created = b.request(json!({"op": "create", "room": "kept"})).await;
    assert_eq!(created["code"], "room_exists");
    let joined = b
        .ok(json!({"op": "join", "room": "kept", "after_seq": 1}))
        .await;
    assert_eq!(joined["last_seq"], 3);
    let replay: Vec<Value> = vec![
        b.event_of("msg").await["body"].clone(),
        b.event_of("msg").await["body"].clone(),
    ];
    assert_eq!(
        replay,
        [json!("m2"), json!("m3")],
        "after_seq replay reads the store after a restart"
    );
}

/// The lsn the oldest log segment starts at (its file name).
pub fn oldest_wal_lsn(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("wal"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".wal")?.parse().ok()
        })
        .min()
        .expect("the live segment exists")
}

pub fn kill_9(server: &mut Server) {
    server.signal(libc::SIGKILL);
    server.wait_exit(std::time::Duration::from_secs(10));
}

/// A retry after the restart: the original seq, `duplicate`, and history has it once.
async fn retry_is_a_duplicate(server: &Server, seq: u64, messages: usize) {
    let mut c = Client::connect(server, "u").await;
    c.ok(json!({"op": "join", "room": "keys"})).await;
    let again = c
        .ok(json!({"op": "send", "room": "keys", "body": "first", "client_msg_id": "k1"}))
        .await;
    assert_eq!(again["seq"], seq, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    let history = full_history(&mut c, "keys").await;
    assert_eq!(history.len(), messages, "no duplicate stored");
    let firsts = history.iter().filter(|m| m["body"] == "first").count();
    assert_eq!(firsts, 1);
}

/// A client `u` in room `keys` that sent "first" with `client_msg_id` `k1`; its reply.
async fn keyed_send(server: &Server) -> (Client, Value) {
    let mut c = Client::connect(server, "u").await;
    c.ok(json!({"op": "join", "room": "keys"})).await;
    let first = c
        .ok(json!({"op": "send", "room": "keys", "body": "first", "client_msg_id": "k1"}))
        .await;
    (c, first)
}

#[tokio::test]
async fn a_retry_after_kill_9_gets_the_original_seq_from_the_log() {
    let data = temp_dir("retry-log");
    // The sink waits a minute for a batch: the key is only in the log when the server dies.
    let args = ["--batch-age-ms", "60000"];
    let mut server = Server::start_in(&data, &args);
    let (mut c, first) = keyed_send(&server).await;
    c.ok(json!({"op": "send", "room": "keys", "body": "second"}))
        .await;
    assert_eq!(
        server.metric("sokdo_sink_batches_total"),
        0.0,
        "nothing drained yet"
    );
    kill_9(&mut server);

    let server = Server::start_in(&data, &args);
    retry_is_a_duplicate(&server, first["seq"].as_u64().unwrap(), 2).await;
}

#[tokio::test]
async fn a_retry_after_kill_9_gets_the_original_seq_from_the_store_once_trimmed() {
    let data = temp_dir("retry-store");
    let args = [
        "--batch-age-ms",
        "1",
        "--wal-segment-bytes",
        "4096",
        "--wal-bytes-max",
        "1048576",
    ];
    let mut server = Server::start_in(&data, &args);
    let (mut c, first) = keyed_send(&server).await;
    let first_lsns = server.metric("sokdo_wal_records_appended_total") as u64;
    assert!(first_lsns > 0, "the metric exists");
    // Enough records to fill segments: the one with the key is drained and deleted.
    let filler = "f".repeat(300);
    for _ in 0..40 {
        c.ok(json!({"op": "send", "room": "keys", "body": filler}))
            .await;
    }
    crate::support::eventually("the key's segment to be trimmed", || {
        oldest_wal_lsn(&data) > first_lsns
    })
    .await;
    kill_9(&mut server);
    // Without the checkpoint, the key can only come from the store's snapshot.
    let _ = std::fs::remove_file(data.join("checkpoint"));

    let server = Server::start_in(&data, &args);
    retry_is_a_duplicate(&server, first["seq"].as_u64().unwrap(), 41).await;
}

/// Each group commit is timed into `sokdo_wal_commit_seconds` (write and fdatasync under
/// the default `sync`): one observation per commit, every one within the buckets' `+Inf`.
#[tokio::test]
async fn every_group_commit_is_timed_in_the_commit_histogram() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server, "u").await;
    c.ok(json!({"op": "join", "room": "timed"})).await;
    for i in 0..20 {
        c.ok(json!({"op": "send", "room": "timed", "body": format!("m{i}")}))
            .await;
    }
    // One scrape, so that every figure is of the same moment.
    let (_, text) = server.get("/metrics");
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("/metrics has no `{name}`"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let commits = value("sokdo_wal_group_commits_total");
    assert!(
        commits >= 20.0,
        "{commits} group commits for 20 acked sends"
    );
    assert_eq!(value("sokdo_wal_commit_seconds_count"), commits);
    assert_eq!(
        value("sokdo_wal_commit_seconds_bucket{le=\"+Inf\"}"),
        commits
    );
    let sum = value("sokdo_wal_commit_seconds_sum");
    assert!(
        sum > 0.0 && sum < commits * 10.0,
        "{sum} s over {commits} commits"
    );
}
