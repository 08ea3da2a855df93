//! A room's log in memory is bounded (docs/REPLICATION.md "The log in memory"): each room
//! machine keeps its last `--cluster-log-tail-records` acknowledged records and what
//! follows; the older ones are read back from `cluster.redb` when an instance catches up.

use serde_json::json;

use super::{formed_with, msgs_until, send_acked, ALL};
use crate::support::{eventually, Client};

/// `--cluster-log-tail-records` here (512 by default).
const TAIL: u64 = 64;

#[tokio::test(flavor = "multi_thread")]
async fn a_log_longer_than_the_memory_tail_is_caught_up_from_disk_and_memory_stays_bounded() {
    let c = formed_with(&["--cluster-log-tail-records", &TAIL.to_string()]).await;
    let mut a = Client::connect(c.node(0), "la").await;
    a.ok(json!({"op": "join", "room": "long"})).await;
    let mut b = Client::connect(c.node(1), "lb").await;
    b.ok(json!({"op": "join", "room": "long"})).await;
    const SENDS: usize = 200;
    let mut acked = Vec::new();
    for n in 0..SENDS {
        let body = format!("long-{n}");
        let seq = send_acked(if n % 2 == 0 { &mut a } else { &mut b }, "long", &body).await;
        acked.push((seq, body));
    }
    let metric = "sokdo_cluster_log_records_in_memory";
    eventually("every instance holds at most the tail in memory", || {
        ALL.iter().all(|&i| c.node(i).metric(metric) <= TAIL as f64)
    })
    .await;
    let held: f64 = ALL.iter().map(|&i| c.node(i).metric(metric)).sum();
    assert!(
        held >= TAIL as f64,
        "the owner holds its tail: {held} records in memory"
    );
    // The third instance never had the room: a client that read the first 50 messages
    // resumes there; its copy comes from the owner, 86 of the records from its disk.
    let after = acked[49].0;
    let mut resumed = Client::connect(c.node(2), "lc").await;
    let started = std::time::Instant::now();
    loop {
        let reply = resumed
            .request(json!({"op": "join", "room": "long", "after_seq": after}))
            .await;
        if reply["op"] == "ok" {
            assert_eq!(reply["last_seq"], acked.last().unwrap().0, "{reply}");
            assert_eq!(reply["recovered"], true, "{reply}");
            break;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(started.elapsed() < crate::support::WAIT, "{reply}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seq = send_acked(&mut a, "long", "live").await;
    acked.push((seq, "live".to_owned()));
    let got = msgs_until(&mut resumed, "live").await;
    let expected: Vec<(u64, String)> = acked.into_iter().filter(|(s, _)| *s > after).collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        got, expected,
        "exactly the missed messages, in order, then live"
    );
}
