//! Delivery promises (issue 11, findings 2–4): a burst is not a slow consumer but a stall
//! is; a send that moves its sender's read pointer tells the room, and unread counts leave
//! out exactly one's own messages; a `join` with `after_seq` replays every missed message,
//! across restarts too, or says `recovered: false`.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, small_buffer_client, temp_dir, Client, Server};

/// Feeds `n` sends to `room` without waiting for any reply (ids `first..first + n`).
async fn feed_sends(c: &mut Client, room: &str, first: u64, n: u64, body: &str) {
    for i in first..first + n {
        let req = json!({"op": "send", "id": i, "room": room, "body": body});
        c.ws.feed(Message::text(req.to_string()))
            .await
            .expect("send");
    }
    c.ws.flush().await.expect("flush");
}

/// Sends `n` messages to `room`, at most `window` unanswered at a time; returns the last
/// seq. Events read meanwhile are dropped.
async fn pipelined_sends(c: &mut Client, room: &str, n: u64, window: u64, body: &str) -> u64 {
    let (mut sent, mut answered, mut last) = (0, 0, 0);
    while answered < n {
        if sent < n && sent - answered < window {
            let batch = (window - (sent - answered)).min(n - sent);
            feed_sends(c, room, 1_000_000 + sent, batch, body).await;
            sent += batch;
        }
        let v = c.recv().await;
        if v.get("id").is_some() {
            assert_eq!(v["op"], "ok", "{v}");
            answered += 1;
            last = last.max(v["seq"].as_u64().unwrap());
        }
    }
    last
}

/// The seqs of `room`'s `msg` events until (and without) the reply `id`, then that reply.
async fn msgs_until_reply(c: &mut Client, room: &str, id: u64) -> (Vec<u64>, Value) {
    let mut seqs = Vec::new();
    loop {
        let v = c.recv().await;
        if v["id"] == json!(id) {
            return (seqs, v);
        }
        if v["op"] == "msg" && v["room"] == room {
            seqs.push(v["seq"].as_u64().unwrap());
        }
    }
}

/// A join's replay: the seqs of `room`'s `msg` events until both the reply `id` and the
/// message `last` arrived (a long replay comes in pages before the `ok`, the last page after
/// it), and the reply.
async fn replay_until(c: &mut Client, room: &str, id: u64, last: u64) -> (Vec<u64>, Value) {
    let (mut seqs, ok) = msgs_until_reply(c, room, id).await;
    while seqs.last() != Some(&last) {
        let v = c.event_of("msg").await;
        seqs.push(v["seq"].as_u64().unwrap());
    }
    (seqs, ok)
}

// === finding 2: slow consumers ===

/// Goal: a member that reads as fast as it can is not a slow consumer when another member
/// (on the other shard) hands the room a burst: 500 pipelined sends of 2 KB (≈ 1 MB) with
/// the default limits. Every message reaches the reader in order and it stays open.
#[tokio::test]
async fn a_one_megabyte_burst_reaches_a_reading_member_whole() {
    const SENDS: u64 = 500;
    let server = Server::start(&["--durability", "async"]);
    let mut sender = Client::connect(&server, "sender").await;
    sender.ok(json!({"op": "join", "room": "burst"})).await;
    // The reader on the other shard: the sends come to it as cross-shard deliveries, many
    // in one turn of its shard.
    let mut reader = loop {
        let c = Client::connect(&server, "reader").await;
        if c.shard() != sender.shard() {
            break c;
        }
    };
    reader.ok(json!({"op": "join", "room": "burst"})).await;
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < SENDS as usize {
            let v = reader.recv().await;
            if v["op"] == "msg" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        (reader, seqs)
    });
    feed_sends(&mut sender, "burst", 1, SENDS, &"b".repeat(2_000)).await;
    let mut acked = 0;
    while acked < SENDS {
        if sender.recv().await["op"] == "ok" {
            acked += 1;
        }
    }
    let (mut reader, seqs) = reading.await.expect("the reader got the whole burst");
    assert_eq!(seqs, (1..=SENDS).collect::<Vec<_>>());
    reader.ok(json!({"op": "ping"})).await;
    assert_eq!(server.metric("sokdo_slow_consumer_closes_total"), 0.0);
}

/// Goal: a member that stops reading is closed 1013 `slow consumer` by the stall rule
/// (its socket takes nothing for `--write-stall-timeout-ms`) long before the hard cap,
/// while another member keeps receiving everything and the queued bytes stay bounded.
#[tokio::test]
async fn a_member_that_stops_reading_is_closed_for_stalling_and_others_keep_receiving() {
    const CAP: f64 = 64.0 * 1024.0 * 1024.0;
    let server = Server::start(&[
        "--write-stall-timeout-ms",
        "500",
        // A cap the test never reaches: only the stall rule can close.
        "--outbound-queue-bytes-max",
        "67108864",
        "--body-bytes-max",
        "16384",
        "--frame-bytes-max",
        "20000",
        "--durability",
        "async",
        // The stalled client reads its close frame only at the end.
        "--close-timeout-ms",
        "600000",
    ]);
    let mut stalled = small_buffer_client(&server, "stalled").await;
    stalled.ok(json!({"op": "join", "room": "r"})).await;
    let mut reader = Client::connect(&server, "reader").await;
    reader.ok(json!({"op": "join", "room": "r"})).await;
    let mut sender = Client::connect(&server, "sender").await;
    sender.ok(json!({"op": "join", "room": "r"})).await;

    let body = "s".repeat(16_000);
    let mut sent = 0;
    while server.metric("sokdo_slow_consumer_closes_total") < 1.0 {
        assert!(
            sent < 20_000,
            "no slow-consumer close after {sent} messages"
        );
        let seq = sender
            .ok(json!({"op": "send", "room": "r", "body": body}))
            .await["seq"]
            .as_u64()
            .unwrap();
        sent += 1;
        // The reading member keeps up, message by message.
        loop {
            let v = reader.event_of("msg").await;
            if v["seq"].as_u64() == Some(seq) {
                break;
            }
        }
        // Bounded by what the sender hands over within the stall timeout and a tick
        // (one 16 KB message per round trip here), far below the cap.
        let queued = server.metric("sokdo_outbound_queue_bytes");
        assert!(queued < CAP / 4.0, "{queued} bytes queued");
    }
    assert_eq!(server.metric("sokdo_slow_consumer_stall_closes_total"), 1.0);
    assert_eq!(server.metric("sokdo_slow_consumer_cap_closes_total"), 0.0);
    // The reader is still served after the close.
    let seq = sender
        .ok(json!({"op": "send", "room": "r", "body": "after"}))
        .await["seq"]
        .clone();
    loop {
        if reader.event_of("msg").await["seq"] == seq {
            break;
        }
    }
    // The stalled member's frames were dropped: what stays queued is the close frame and
    // what the kernel could not take.
    eventually("the stalled queue to be dropped", || {
        server.metric("sokdo_outbound_queue_bytes") < 1024.0 * 1024.0
    })
    .await;
    let (code, reason) = stalled.closed().await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
}

// === finding 3: read events and unread counts ===

/// Goal: a `send` moves no read pointer (it marks nobody's message read and tells the room
/// nothing), so a later `read` is never a no-op: the room hears of it.
/// Method: b sends 1, a sends 2, then a reads 1. The first `read` event b gets is a's, at 2
/// (the pointer moves on over a's own 2). Before the fix a's send had moved its pointer to 2
/// silently, so the `read` was a no-op and no event came.
#[tokio::test]
async fn a_read_after_ones_own_send_tells_the_room() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, "a").await;
    let mut b = Client::connect(&server, "b").await;
    a.ok(json!({"op": "join", "room": "r"})).await;
    b.ok(json!({"op": "join", "room": "r"})).await;
    b.ok(json!({"op": "send", "room": "r", "body": "1"})).await;
    a.ok(json!({"op": "send", "room": "r", "body": "2"})).await;
    let reply = a.ok(json!({"op": "read", "room": "r", "seq": 1})).await;
    assert_eq!(reply["seq"], 2, "{reply}");
    let read = b.event_of("read").await;
    assert_eq!(
        (read["user"].as_str(), &read["seq"]),
        (Some("a"), &json!(2)),
        "the first `read` event is a's explicit one: {read}"
    );
}

/// Goal: unread counts exclude exactly one's own messages with interleaved senders, and a
/// `read` after one's own send is not a no-op: the others learn of it.
#[tokio::test]
async fn unread_counts_exclude_exactly_ones_own_messages() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, "a").await;
    let mut b = Client::connect(&server, "b").await;
    let mut c = Client::connect(&server, "c").await;
    for x in [&mut a, &mut b, &mut c] {
        x.ok(json!({"op": "join", "room": "r"})).await;
    }
    // 1 b, 2 a, 3 c, 4 a, 5 b
    for (who, body) in [("b", "1"), ("a", "2"), ("c", "3"), ("a", "4"), ("b", "5")] {
        let x = match who {
            "a" => &mut a,
            "b" => &mut b,
            _ => &mut c,
        };
        x.ok(json!({"op": "send", "room": "r", "body": body})).await;
    }
    let unread = |v: &Value| {
        v["rooms"].as_array().unwrap()[0]["unread"]
            .as_u64()
            .unwrap()
    };
    let mut counts = Vec::new();
    for x in [&mut a, &mut b, &mut c] {
        counts.push(unread(&x.ok(json!({"op": "rooms", "joined": true})).await));
    }
    assert_eq!(counts, [3, 3, 4], "a: 1 3 5 · b: 2 3 4 · c: 1 2 4 5");

    // a reads up to 3: its own 4 right after is read too, and b hears of it.
    let read = a.ok(json!({"op": "read", "room": "r", "seq": 3})).await;
    assert_eq!(read["seq"], 4);
    loop {
        let event = b.event_of("read").await;
        if event["user"] == "a" {
            assert_eq!(event["seq"], 4, "{event}");
            break;
        }
    }
    let joined = a.ok(json!({"op": "join", "room": "r"})).await;
    assert_eq!(joined["unread"], 1, "only b's 5");
}

// === finding 4: replay without holes ===

/// Goal: a member away for 5,000 messages (ring: 1,024) gets exactly seqs
/// after_seq+1..=last in order by `join` with `after_seq`, `recovered: true`, then the
/// live ones that were sent while it replayed — nothing twice, nothing skipped.
#[tokio::test]
async fn a_join_after_5000_missed_messages_replays_them_all_then_live_ones() {
    const MISSED: u64 = 5_000;
    let server = Server::start(&["--durability", "async"]);
    let mut sender = Client::connect(&server, "sender").await;
    sender.ok(json!({"op": "join", "room": "r"})).await;
    let mut late = Client::connect(&server, "late").await;
    late.ok(json!({"op": "join", "room": "r"})).await;
    sender
        .ok(json!({"op": "send", "room": "r", "body": "seen"}))
        .await;
    assert_eq!(late.event_of("msg").await["seq"], 1);
    drop(late);
    let body = "m".repeat(1_000);
    let last = pipelined_sends(&mut sender, "r", MISSED, 256, &body).await;
    assert_eq!(last, 1 + MISSED);

    let mut late = Client::connect(&server, "late").await;
    late.send_raw(&json!({"op": "join", "id": 7, "room": "r", "after_seq": 1}).to_string())
        .await;
    // Live messages while the replay runs.
    const LIVE: u64 = 300;
    let live =
        tokio::spawn(async move { pipelined_sends(&mut sender, "r", LIVE, 16, "live").await });
    let (mut seqs, ok) = msgs_until_reply(&mut late, "r", 7).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(ok["recovered"], true, "{ok}");
    let end = live.await.unwrap();
    assert_eq!(end, 1 + MISSED + LIVE);
    while seqs.last() != Some(&end) {
        let v = late.event_of("msg").await;
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (2..=end).collect::<Vec<_>>());
}

/// Goal: the same across a crash: 5,000 acknowledged messages (`--durability sync`), the
/// server killed with SIGKILL and restarted on its data directory (the ring starts empty,
/// so the whole replay comes from the store), then `join` with `after_seq: 0` replays
/// 1..=5000 in order.
#[tokio::test]
async fn a_replay_after_a_crash_comes_whole_from_the_store() {
    const SENT: u64 = 5_000;
    let data = temp_dir("replay-crash");
    let server = Server::start_in(&data, &[]);
    let mut sender = Client::connect(&server, "sender").await;
    sender.ok(json!({"op": "join", "room": "r"})).await;
    let last = pipelined_sends(&mut sender, "r", SENT, 256, &"k".repeat(1_000)).await;
    assert_eq!(last, SENT);
    server.signal(libc::SIGKILL);
    drop(server);

    let server = Server::start_in(&data, &[]);
    let mut late = Client::connect(&server, "late").await;
    late.send_raw(&json!({"op": "join", "id": 1, "room": "r", "after_seq": 0}).to_string())
        .await;
    let (seqs, ok) = replay_until(&mut late, "r", 1, SENT).await;
    assert_eq!(
        (
            ok["op"].as_str(),
            ok["last_seq"].as_u64(),
            ok["recovered"].as_bool()
        ),
        (Some("ok"), Some(SENT), Some(true)),
        "{ok}"
    );
    assert_eq!(seqs, (1..=SENT).collect::<Vec<_>>());
}

/// Goal: past `--replay-messages-max` the replay is the newest that many and the `ok` says
/// so: `recovered: false` with the first seq replayed; `history` before it has the rest.
#[tokio::test]
async fn a_replay_past_its_bound_says_recovered_false() {
    let server = Server::start(&["--replay-messages-max", "100", "--durability", "async"]);
    let mut sender = Client::connect(&server, "sender").await;
    sender.ok(json!({"op": "join", "room": "r"})).await;
    pipelined_sends(&mut sender, "r", 300, 64, "x").await;
    let mut late = Client::connect(&server, "late").await;
    late.send_raw(&json!({"op": "join", "id": 1, "room": "r", "after_seq": 10}).to_string())
        .await;
    let (seqs, ok) = replay_until(&mut late, "r", 1, 300).await;
    assert_eq!(
        (ok["recovered"].as_bool(), ok["first_seq"].as_u64()),
        (Some(false), Some(201)),
        "{ok}"
    );
    assert_eq!(seqs, (201..=300).collect::<Vec<_>>());
    let page = late
        .ok(json!({"op": "history", "room": "r", "before_seq": 201, "limit": 100}))
        .await;
    assert_eq!(page["messages"][99]["seq"], 200);
}
