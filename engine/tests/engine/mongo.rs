//! The MongoDB sink seen from a client: the real `mongodb` driver in the server, against the
//! wire-protocol test double the persistence tests own and against SecantusDB, a third-party
//! MongoDB-wire server (docs/PERSISTENCE.md says what this proves and what it does not).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::support::{temp_dir, Client, Server};

#[path = "../../../persistence/tests/support/mongo_double.rs"]
#[allow(dead_code)]
mod mongo_double;
#[path = "../../../persistence/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "../../../persistence/tests/support/secantus.rs"]
mod secantus;

use futures_util::TryStreamExt;
use mongo_double::MongoDouble;
use mongo_server::MongoServer;
use mongodb::bson::{doc, Document};
use secantus::Secantus;

/// The seqs of the `messages` collection, read through the driver, ascending. On a thread of
/// its own: callers poll it from inside a runtime.
fn stored_seqs(uri: &str) -> Vec<i64> {
    let uri = uri.to_string();
    let read = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
            let c = client.database("sokdo").collection::<Document>("messages");
            c.find(doc! {})
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        })
    });
    let docs = read.join().expect("the read thread");
    let mut seqs: Vec<i64> = docs
        .iter()
        .filter_map(|d| {
            d.get("seq")
                .and_then(|s| s.as_i64().or_else(|| s.as_i32().map(i64::from)))
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(crate::support::eventually(what, &mut cond));
}

#[test]
fn chat_goes_on_while_mongodb_is_down_and_the_backlog_drains_once_back() {
    let double = MongoDouble::start_new();
    chat_through_an_outage(&mut &double);
}

#[test]
fn chat_goes_on_while_secantusdb_is_down_and_the_backlog_drains_once_back() {
    let mut server = Secantus::start_new();
    chat_through_an_outage(&mut server);
}

fn chat_through_an_outage(mongo: &mut dyn MongoServer) {
    let uri = mongo.uri();
    let data = temp_dir("mongo");
    let server = Server::start_in(
        &data,
        &[
            "--mongodb-uri",
            &uri,
            "--wal-bytes-max",
            "131072",
            "--wal-segment-bytes",
            "16384",
            "--batch-age-ms",
            "10",
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = writer(&rt, &server);
    for i in 0..20 {
        rt.block_on(c.ok(json!({"op": "send", "room": "m", "body": format!("up {i}")})));
    }
    wait("the first 20 messages in MongoDB", || {
        stored_seqs(&uri).len() == 20
    });

    mongo.stop();
    // MongoDB is down: sends are still acknowledged (durable in the log) until the log is
    // full, then refused with `unavailable` — never dropped in silence.
    let body = "x".repeat(2000);
    let mut acked = BTreeSet::new();
    let mut refused = false;
    for _ in 0..500 {
        let reply = rt.block_on(c.request(json!({"op": "send", "room": "m", "body": body})));
        match reply["op"].as_str() {
            Some("ok") => {
                acked.insert(reply["seq"].as_i64().unwrap());
            }
            _ => {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "a log at wal_bytes_max refuses sends");
    assert!(!acked.is_empty(), "chat went on while MongoDB was down");
    wait("/metrics to show the sink down and lagging", || {
        server.metric("sokdo_sink_up") == 0.0 && server.metric("sokdo_sink_lag_records") > 0.0
    });

    mongo.start();
    let expected: Vec<i64> = (1..=20).chain(acked.iter().copied()).collect();
    wait("the backlog to drain into MongoDB", || {
        stored_seqs(&uri) == expected
    });
    wait("/metrics to show the sink caught up", || {
        server.metric("sokdo_sink_up") == 1.0 && server.metric("sokdo_sink_lag_records") == 0.0
    });
    let after = rt.block_on(c.ok(json!({"op": "send", "room": "m", "body": "back"})));
    assert_eq!(after["seq"].as_i64().unwrap(), *acked.last().unwrap() + 1);
}

const SMALL_LOG: [&str; 6] = [
    "--wal-segment-bytes",
    "4096",
    "--wal-bytes-max",
    "1048576",
    "--batch-age-ms",
    "1",
];

fn sokdo_args(uri: &str) -> Vec<&str> {
    let mut args = vec!["--mongodb-uri", uri];
    args.extend(SMALL_LOG);
    args
}

fn send_all(rt: &tokio::runtime::Runtime, c: &mut Client, n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| {
            let req = json!({"op": "send", "room": "m", "body": format!("{i:0>200}")});
            rt.block_on(c.ok(req))["seq"].as_i64().unwrap()
        })
        .collect()
}

/// A client `writer`, joined to room `m`.
fn writer(rt: &tokio::runtime::Runtime, server: &Server) -> Client {
    let mut c = rt.block_on(Client::connect(server, "writer"));
    rt.block_on(c.ok(json!({"op": "join", "room": "m"})));
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sokdo_starts_with_mongodb_down_serves_from_its_log_and_drains_once_back() {
    let double = MongoDouble::start_new();
    start_while_down(&mut &double);
}

#[test]
fn sokdo_starts_with_secantusdb_down_serves_from_its_log_and_drains_once_back() {
    start_while_down(&mut Secantus::start_new());
}

fn start_while_down(mongo: &mut dyn MongoServer) {
    let uri = mongo.uri();
    let data = temp_dir("mongo-down-start");
    let rt = runtime();
    // One start with MongoDB up: the data dir gets its checkpoint (the room exists).
    let mut server = Server::start_in(&data, &sokdo_args(&uri));
    drop(writer(&rt, &server));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(15)).success());

    mongo.stop();
    let server = Server::start_in(&data, &sokdo_args(&uri));
    assert_eq!(server.metric("sokdo_sink_up"), 0.0);
    let mut c = writer(&rt, &server);
    let seqs = send_all(&rt, &mut c, 30);
    assert_eq!(
        seqs,
        (1..=30).collect::<Vec<_>>(),
        "all acknowledged, in order"
    );
    // Reads the log alone can answer are answered while MongoDB is down.
    let history = rt.block_on(c.ok(json!({"op": "history", "room": "m", "limit": 10})));
    assert_eq!(history["messages"].as_array().unwrap().len(), 10);
    mongo.start();
    wait("every message in MongoDB, exactly once", || {
        stored_seqs(&uri) == (1..=30).collect::<Vec<_>>()
    });
    wait("/metrics to show the sink up", || {
        server.metric("sokdo_sink_up") == 1.0 && server.metric("sokdo_sink_lag_records") == 0.0
    });
    assert!(
        !server.log_lines("the sink is unreachable").is_empty(),
        "the start without MongoDB is logged"
    );
}

#[test]
fn restarts_while_mongodb_is_down_continue_seqs_after_drained_and_trimmed_records() {
    let double = MongoDouble::start_new();
    restarts_while_down(&mut &double);
}

#[test]
fn restarts_while_secantusdb_is_down_continue_seqs_after_drained_and_trimmed_records() {
    restarts_while_down(&mut Secantus::start_new());
}

fn restarts_while_down(mongo: &mut dyn MongoServer) {
    let uri = mongo.uri();
    let data = temp_dir("mongo-down-restart");
    let rt = runtime();
    let mut server = Server::start_in(&data, &sokdo_args(&uri));
    let mut c = writer(&rt, &server);
    let keyed = json!({"op": "send", "room": "m", "body": "keyed", "client_msg_id": "early"});
    assert_eq!(rt.block_on(c.ok(keyed.clone()))["seq"], 1);
    let early_lsns = server.metric("sokdo_wal_records_appended_total") as u64;
    assert!(early_lsns > 0, "the metric exists");
    send_all(&rt, &mut c, 39);
    wait("40 messages in MongoDB", || {
        stored_seqs(&uri) == (1..=40).collect::<Vec<_>>()
    });
    wait("the early records trimmed from the log", || {
        crate::durability::oldest_wal_lsn(&data) > early_lsns
    });

    mongo.stop();
    crate::durability::kill_9(&mut server);
    let mut server = Server::start_in(&data, &sokdo_args(&uri));
    let mut c = writer(&rt, &server);
    assert_eq!(send_all(&rt, &mut c, 3), [41, 42, 43], "no seq reused");
    let again = rt.block_on(c.ok(keyed.clone()));
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (json!(1), json!(true))
    );
    drop(c);
    crate::durability::kill_9(&mut server);

    let server = Server::start_in(&data, &sokdo_args(&uri));
    let mut c = writer(&rt, &server);
    assert_eq!(send_all(&rt, &mut c, 2), [44, 45], "no seq reused");
    mongo.start();
    wait("every message in MongoDB, exactly once", || {
        stored_seqs(&uri) == (1..=45).collect::<Vec<_>>()
    });
}

#[test]
fn a_fresh_data_dir_with_mongodb_down_refuses_to_start() {
    let double = MongoDouble::start_new();
    let uri = double.uri();
    double.stop();
    let data = temp_dir("mongo-down-fresh");
    let out = std::process::Command::new(crate::support::sokdo_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--mongodb-uri",
            &uri,
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run sokdo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains("checkpoint"), "{stderr}");
}
