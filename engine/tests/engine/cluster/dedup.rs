//! Exactly once across instances (docs/REPLICATION.md "Exactly once"): a `send` retried
//! with the same `client_msg_id` — through another instance, after the owner died, under
//! dropped links — gets the original's seq with `"duplicate": true`, and every member on
//! every instance receives the message once.

use serde_json::{json, Value};

use super::{
    formed, formed_with, msgs_until, one_member_per_instance, owned_room, send_acked, sequenced_by,
    ALL,
};
use crate::support::cluster::{TestCluster, API_KEY};
use crate::support::{Client, WAIT};

/// The sum of `metric` over the running instances of `among`.
fn total(c: &TestCluster, among: &[usize], metric: &str) -> f64 {
    among.iter().map(|&i| c.node(i).metric(metric)).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_through_another_instance_gets_the_original_seq_and_members_get_it_once() {
    let c = formed().await;
    let mut members = one_member_per_instance(&c, "twice", "d").await;
    // One user on two instances sends each message through both at once: one attempt is
    // the original, the other a retry with the same client_msg_id.
    let join = json!({"op": "join", "room": "twice"});
    let mut left = Client::connect(c.node(1), "twin").await;
    let mut right = Client::connect(c.node(2), "twin").await;
    left.ok(join.clone()).await;
    right.ok(join.clone()).await;
    const SENDS: usize = 8;
    let mut acked = Vec::new();
    let mut first_ts = None;
    for k in 0..SENDS {
        let body = format!("twin-{k}");
        let send = json!({"op": "send", "room": "twice", "body": body, "client_msg_id": body});
        let (a, b) = tokio::join!(left.ok(send.clone()), right.ok(send));
        let original = |r: &Value| (r["seq"].clone(), r["msg_id"].clone(), r["ts"].clone());
        assert_eq!(
            original(&a),
            original(&b),
            "one seq, msg_id and ts: {a} {b}"
        );
        let retries = [&a, &b].iter().filter(|r| r["duplicate"] == true).count();
        assert_eq!(retries, 1, "one original, one retry: {a} {b}");
        acked.push((a["seq"].as_u64().unwrap(), body));
        first_ts.get_or_insert(a["ts"].clone());
    }
    // A later retry through the third instance: the original seq too.
    let mut third = Client::connect(c.node(0), "twin").await;
    third.ok(join).await;
    let send = json!({"op": "send", "room": "twice", "body": "twin-0", "client_msg_id": "twin-0"});
    let again = third.ok(send).await;
    assert_eq!(again["seq"], acked[0].0, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        Some(&again["ts"]),
        first_ts.as_ref(),
        "the original's ts: {again}"
    );
    let last = acked.last().unwrap().1.clone();
    for (i, member) in members.iter_mut().enumerate() {
        let stream = msgs_until(member, &last).await;
        assert_eq!(stream, acked, "the member on n{} got each once", i + 1);
    }
    let sequenced = total(&c, &ALL, "sokdo_cluster_records_sequenced_total");
    assert_eq!(sequenced, SENDS as f64, "each message sequenced once");
    let deduplicated = total(&c, &ALL, "sokdo_cluster_sends_deduplicated_total");
    assert!(
        deduplicated >= 1.0,
        "no retry reached the owner (every one answered by a home's own copy)"
    );
}

/// `POST /api/rooms/{room}/messages` through instance `i`: the status and the reply.
fn api_send(c: &TestCluster, i: usize, room: &str, body: &str, key: &str) -> (u16, Value) {
    let json = json!({"body": body, "from": "poster", "client_msg_id": key}).to_string();
    let path = format!("/api/rooms/{room}/messages");
    let headers = [("X-Api-Key", API_KEY), ("Content-Type", "application/json")];
    let (status, text) = c.node(i).http("POST", &path, &headers, &json);
    let reply = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, reply)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_the_owner_was_killed_gets_the_original_seq_from_the_new_owner() {
    let mut c = formed().await;
    let (mut slots, _, (owner, epoch)) = owned_room(&c, "kept", "k").await;
    let others: Vec<usize> = ALL.into_iter().filter(|&i| i != owner).collect();
    let (via, cold) = (others[0], others[1]);
    // `cold` keeps the room but loses its only member: it receives none of the room's
    // messages from now on, so a retry through it cannot be answered from its own copy.
    let mut leaving = slots[cold].take().unwrap();
    leaving.ok(json!({"op": "leave", "room": "kept"})).await;
    let mut reader = slots[via].take().unwrap();
    let (status, first) = api_send(&c, via, "kept", "posted once", "post-1");
    assert_eq!(status, 201, "{first}");
    let seq = first["seq"].as_u64().unwrap();
    assert_eq!(first["duplicate"], Value::Null, "{first}");
    c.kill(owner);
    let (new_owner, new_epoch) = sequenced_by(&c, &others, "kept").await;
    assert!(new_epoch > epoch, "epoch {epoch} → {new_epoch}");
    let deduplicated_before = total(&c, &others, "sokdo_cluster_sends_deduplicated_total");
    let started = std::time::Instant::now();
    let retry = loop {
        let (status, reply) = api_send(&c, cold, "kept", "posted once", "post-1");
        if status == 201 {
            break reply;
        }
        assert_eq!(status, 503, "only unavailable is retried: {reply}");
        assert!(
            started.elapsed() < WAIT,
            "no answer within the wait: {reply}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(retry["seq"], seq, "the original seq: {retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["ts"], first["ts"], "the original's ts: {retry}");
    let deduplicated = total(&c, &others, "sokdo_cluster_sends_deduplicated_total");
    assert_eq!(
        deduplicated - deduplicated_before,
        1.0,
        "the new owner n{} answered the retry from its window",
        new_owner + 1
    );
    let next = send_acked(&mut reader, "kept", "after the kill").await;
    let stream = msgs_until(&mut reader, "after the kill").await;
    let bodies: Vec<&str> = stream.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["first", "posted once", "after the kill"],
        "{stream:?}"
    );
    assert_eq!((stream[1].0, stream[2].0), (seq, next));
}

/// `SENDERS` senders on each instance of `on`, each sending `SENDS` messages `{tag}…` at
/// once with `send_acked` (retried with their `client_msg_id`): what they acknowledged.
async fn burst(c: &TestCluster, on: &[usize], tag: &str) -> Vec<(u64, String)> {
    const SENDERS: usize = 6;
    const SENDS: usize = 8;
    let mut tasks = Vec::new();
    for &i in on {
        for s in 0..SENDERS {
            let mut sender = Client::connect(c.node(i), &format!("{tag}{i}-{s}")).await;
            // A join is decided by the room's owner: `unavailable` while links are dropped.
            let joined = super::settled(&mut sender, json!({"op": "join", "room": "burst"})).await;
            assert_eq!(joined["op"], "ok", "{joined}");
            let tag = tag.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..SENDS {
                    let body = format!("{tag}{i}-{s}-{n}");
                    acked.push((send_acked(&mut sender, "burst", &body).await, body));
                }
                acked
            }));
        }
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert_eq!(acked.len(), on.len() * SENDERS * SENDS);
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_under_dropped_links_are_each_stored_once() {
    // Sixteen frames per link queue. A burst of concurrent sends may fill one; the room's
    // successor killed after it makes the owner send the new replica up to 64 records at
    // once: its link's queue fills, the link is dropped and dialled again, and the sends
    // waiting on it time out (200 ms) and are retried with their client_msg_id.
    let mut c = formed_with(&[
        "--cluster-link-queue-frames",
        "16",
        "--cluster-publish-timeout-ms",
        "200",
    ])
    .await;
    let mut members: Vec<Option<Client>> = one_member_per_instance(&c, "burst", "b")
        .await
        .into_iter()
        .map(Some)
        .collect();
    let mut acked = burst(&c, &ALL, "a").await;
    let (owner, _) = sequenced_by(&c, &ALL, "burst").await;
    let names: Vec<String> = ALL.iter().map(|&i| TestCluster::name(i)).collect();
    let order = sokdo_replication::placement::order("burst", &names);
    assert_eq!(
        *order[0],
        TestCluster::name(owner),
        "the owner is first in order"
    );
    let successor = ALL
        .into_iter()
        .find(|&i| *order[1] == TestCluster::name(i))
        .unwrap();
    c.kill(successor);
    members[successor] = None;
    let alive: Vec<usize> = ALL.into_iter().filter(|&i| i != successor).collect();
    acked.extend(burst(&c, &alive, "k").await);
    acked.sort();
    let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
    let count = acked.len() as u64;
    assert_eq!(seqs, (1..=count).collect::<Vec<_>>(), "one seq each");
    let last = acked.last().unwrap().1.clone();
    for (i, member) in members.iter_mut().enumerate() {
        if let Some(member) = member {
            let stream = msgs_until(member, &last).await;
            assert_eq!(stream, acked, "the member on n{} got each once", i + 1);
        }
    }
    let drops = total(&c, &alive, "sokdo_cluster_link_drops_total");
    let deduplicated = total(&c, &alive, "sokdo_cluster_sends_deduplicated_total");
    eprintln!(
        "{count} sends, owner n{}, {drops} link drops, {deduplicated} retries answered by an owner's window",
        owner + 1
    );
    assert!(drops >= 1.0, "no link's queue was ever full");
    assert!(deduplicated >= 1.0, "no send timed out and was retried");
}
