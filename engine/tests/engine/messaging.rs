//! Rooms across shards: ordering, replay, idempotent retries.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::support::{clients_on_both_shards, seqs_of, Client, Server};

#[tokio::test]
async fn every_subscriber_on_every_shard_gets_every_message_in_order() {
    const SENDS: u64 = 50;
    let server = Server::start(&[]);
    let mut clients = clients_on_both_shards(&server, 20).await;
    for c in &mut clients {
        c.ok(json!({"op": "join", "room": "lobby"})).await;
    }
    let total = SENDS * clients.len() as u64;
    let mut tasks = Vec::new();
    for (n, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..SENDS {
                let text =
                    json!({"op": "send", "room": "lobby", "body": format!("{n}/{i}"), "id": i})
                        .to_string();
                c.send_raw(&text).await;
            }
            let mut seqs = Vec::new();
            let mut acks = 0;
            while seqs.len() < total as usize || acks < SENDS {
                let v = c.recv().await;
                match v["op"].as_str() {
                    Some("msg") => seqs.push(v["seq"].as_u64().unwrap()),
                    Some("ok") => acks += 1,
                    Some("joined" | "left") => {} // others connect and finish at their own pace
                    _ => panic!("unexpected {v}"),
                }
            }
            (c.shard(), seqs)
        }));
    }
    let mut shards_seen = HashSet::new();
    for task in tasks {
        let (shard, seqs) = task.await.unwrap();
        shards_seen.insert(shard);
        let expected: Vec<u64> = (1..=total).collect();
        assert_eq!(
            seqs, expected,
            "shard {shard}: every seq, in order, no gaps"
        );
    }
    assert_eq!(shards_seen.len(), 2);
    assert!(server.metric("sokdo_cross_shard_messages_total") > 0.0);
    assert_eq!(server.metric("sokdo_messages_in_total"), total as f64);
}

#[tokio::test]
async fn join_after_seq_replays_missed_messages_before_live_ones() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, "a").await;
    a.ok(json!({"op": "join", "room": "r"})).await;
    for i in 1..=5 {
        a.ok(json!({"op": "send", "room": "r", "body": format!("m{i}")}))
            .await;
    }
    let mut b = Client::connect(&server, "b").await;
    let reply = b
        .ok(json!({"op": "join", "room": "r", "after_seq": 2}))
        .await;
    assert_eq!(reply["last_seq"], 5);
    a.ok(json!({"op": "send", "room": "r", "body": "live"}))
        .await;
    let mut got = Vec::new();
    while got.len() < 4 {
        let v = b.event_of("msg").await;
        got.push((
            v["seq"].as_u64().unwrap(),
            v["body"].as_str().unwrap().to_owned(),
        ));
    }
    let expected = [(3, "m3"), (4, "m4"), (5, "m5"), (6, "live")].map(|(s, b)| (s, b.to_owned()));
    assert_eq!(got, expected);

    let history = b
        .ok(json!({"op": "history", "room": "r", "before_seq": 5, "limit": 2}))
        .await;
    assert_eq!(
        seqs_of(&history),
        [3, 4],
        "history before_seq is exclusive, newest `limit`, ascending"
    );
}

#[tokio::test]
async fn a_retried_send_keeps_its_seq_and_is_delivered_once() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, "a").await;
    let mut b = Client::connect(&server, "b").await;
    a.ok(json!({"op": "join", "room": "r"})).await;
    b.ok(json!({"op": "join", "room": "r"})).await;
    let send = json!({"op": "send", "room": "r", "body": "once", "client_msg_id": "c-1"});
    let first = a.ok(send.clone()).await;
    let retry = a.ok(send).await;
    assert_eq!(first["seq"], retry["seq"]);
    assert_eq!(first["msg_id"], retry["msg_id"]);
    assert_eq!(retry["duplicate"], true);
    a.ok(json!({"op": "send", "room": "r", "body": "next"}))
        .await;
    let bodies: Vec<Value> = vec![
        b.event_of("msg").await["body"].clone(),
        b.event_of("msg").await["body"].clone(),
    ];
    assert_eq!(
        bodies,
        [json!("once"), json!("next")],
        "the retry was not delivered again"
    );
}

#[tokio::test]
async fn leave_stops_delivery_and_tells_the_room() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, "a").await;
    let mut b = Client::connect(&server, "b").await;
    a.ok(json!({"op": "join", "room": "r"})).await;
    b.ok(json!({"op": "join", "room": "r"})).await;
    assert_eq!(a.event_of("joined").await["user"], "a");
    assert_eq!(a.event_of("joined").await["user"], "b");
    b.ok(json!({"op": "leave", "room": "r"})).await;
    let left = a.event_of("left").await;
    assert_eq!(
        (left["room"].as_str(), left["user"].as_str()),
        (Some("r"), Some("b"))
    );
    let err = b
        .request(json!({"op": "send", "room": "r", "body": "x"}))
        .await;
    assert_eq!(err["code"], "not_member");
    let created = a.request(json!({"op": "create", "room": "r"})).await;
    assert_eq!(created["code"], "room_exists");
}
