//! The MongoDB sink seen from a client: the real `mongodb` driver in the server, against the
//! wire-protocol test double the persistence tests own and against SecantusDB, a third-party
//! MongoDB-wire server (docs/PERSISTENCE.md says what this proves and what it does not).

use std::collections::BTreeSet;

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
    let mut c = rt.block_on(Client::connect(&server, "writer"));
    rt.block_on(c.ok(json!({"op": "join", "room": "m"})));
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
