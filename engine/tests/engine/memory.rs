//! Memory by budget (issue 14): what a process holds before its first connection, and the
//! rooms' recent messages under their per-shard budget.

use serde_json::json;

use crate::support::*;

/// Anonymous resident memory of `pid` (heap, stacks, queues): RSS less the binary's and the
/// libraries' file pages, which depend on the build, not on what the server allocates.
fn anon_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/PID/status has RssAnon");
    kb * 1024
}

/// A process of two shards that serves nothing yet holds little memory: the mesh's
/// queues, the persistence queues and glommio's I/O memory are allocated by use, not by
/// capacity, and the allocator does not back its arena with 2 MiB pages. Before, the same
/// process held ≈ 75 MB (each of the four 65,536-message mesh queues and the append queue
/// written through at start, 10 MiB of I/O memory per shard, huge pages).
#[tokio::test]
async fn an_idle_process_holds_little_anonymous_memory() {
    let server = Server::start(&[]);
    // Served a request: every shard and persistence thread is up.
    assert_eq!(server.get("/readyz").0, 200);
    let anon = anon_rss_bytes(server.pid());
    assert!(
        anon < 16 << 20,
        "an idle process of 2 shards holds {anon} bytes of anonymous memory (bound 16 MiB)"
    );
}

/// Rooms' recent messages are held under a per-shard byte budget: past it, the rooms whose
/// last message is oldest lose their ring and search index, and their history and replays
/// come whole from the store — with `--durability async` too, where a send is answered
/// before its record is written (a room is dropped only once the log has written it).
#[tokio::test]
async fn rooms_past_the_cache_budget_are_read_back_whole_from_the_store() {
    const BUDGET: u64 = 64 * 1024;
    let budget = BUDGET.to_string();
    let server = Server::start(&[
        "--shards",
        "1",
        "--durability",
        "async",
        "--room-cache-bytes-per-shard",
        &budget,
        "--messages-per-connection-per-s",
        "0",
    ]);
    let mut c = Client::connect(&server, "writer").await;
    let rooms: Vec<String> = (0..8).map(|i| format!("cold{i}")).collect();
    for room in &rooms {
        c.ok(json!({"op": "join", "room": room})).await;
    }
    let body = |room: &str, i: u32| format!("{room}-{i}-{}", "x".repeat(300));
    for room in &rooms {
        for i in 1..=30 {
            c.ok(json!({"op": "send", "room": room, "body": body(room, i)}))
                .await;
        }
    }
    assert!(server.metric("sokdo_room_cache_evictions_total") >= 1.0);
    assert!(server.metric("sokdo_room_cache_evicted_messages_total") >= 30.0);
    eventually("the cache gauge is within the budget", || {
        server.metric("sokdo_room_cache_bytes") <= BUDGET as f64
    })
    .await;
    // The first room was evicted first: its history and a replay come from the store.
    let first = &rooms[0];
    let history = c
        .ok(json!({"op": "history", "room": first, "limit": 50}))
        .await;
    assert_eq!(seqs_of(&history), (1..=30).collect::<Vec<_>>());
    assert_eq!(history["messages"][29]["body"], body(first, 30));
    let mut late = Client::connect(&server, "late").await;
    late.ok(json!({"op": "join", "room": first, "after_seq": 0}))
        .await;
    for i in 1..=30 {
        let m = late.event_of("msg").await;
        assert_eq!(m["seq"], i, "{m}");
        assert_eq!(m["body"], body(first, i as u32));
    }
}
