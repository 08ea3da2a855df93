//! `--write-coalesce-us` (issue 14): a delivery waits up to the delay before its connection
//! writes, so that several go out in one `sendmsg`; a reply to the connection's own request
//! and a close never wait, and take the waiting deliveries with them.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, Server, WAIT};

/// The range's top, 1 s: far longer than a reply's round trip on loopback, so that a
/// subscriber who only waits (carol, below) is a clock — what reaches her came through the
/// delay, and what another connection got before her did not wait for it.
const DELAY_US: &str = "1000000";

async fn joined(server: &Server, user: &str) -> Client {
    let mut c = Client::connect(server, user).await;
    c.ok(json!({"op": "join", "room": "r"})).await;
    c
}

async fn send(c: &mut Client, body: &str) {
    c.ok(json!({"op": "send", "room": "r", "body": body})).await;
}

async fn msg_body(c: &mut Client) -> String {
    c.event_of("msg").await["body"].as_str().unwrap().to_owned()
}

/// The bodies of the `msg` events read until the server's close frame.
async fn bodies_until_close(c: &mut Client) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within the wait");
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["op"] == "msg" {
                    bodies.push(v["body"].as_str().unwrap().to_owned());
                }
            }
            Some(Ok(Message::Close(_))) => return bodies,
            Some(Ok(_)) => continue,
            other => panic!("expected frames, then a close; got {other:?}"),
        }
    }
}

#[tokio::test]
async fn with_a_coalescing_delay_every_message_arrives_once_and_in_order() {
    let server = Server::start(&["--write-coalesce-us", DELAY_US]);
    let mut alice = joined(&server, "alice").await;
    let mut bob = joined(&server, "bob").await;
    let sent: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    for body in &sent {
        send(&mut bob, body).await;
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(msg_body(&mut alice).await);
    }
    assert_eq!(got, sent, "every message, once, in order");
    // Her own request is answered, and the next message is the one after (no repeat).
    send(&mut alice, "from alice").await;
    assert_eq!(msg_body(&mut alice).await, "from alice");
    send(&mut bob, "last").await;
    assert_eq!(msg_body(&mut alice).await, "last");
}

#[tokio::test]
async fn a_reply_or_a_close_does_not_wait_and_takes_the_waiting_deliveries() {
    // One shard: bob's `ok` then comes after m2 is in alice's queue. With two shards m2 can
    // still be on its way to alice's shard when her close is taken (CI saw `["a1"]`).
    let server = Server::start(&["--shards", "1", "--write-coalesce-us", DELAY_US]);
    let mut carol = joined(&server, "carol").await;
    let mut alice = joined(&server, "alice").await;
    let mut bob = joined(&server, "bob").await;
    let alice_side = async {
        send(&mut bob, "m1").await;
        // m1 waits in alice's queue; her request's `ok` goes out at once, m1 before it.
        send(&mut alice, "a1").await;
        assert_eq!(msg_body(&mut alice).await, "m1");
        send(&mut bob, "m2").await;
        // Her close: what waits goes out first, then the close frame, at once.
        alice.ws.send(Message::Close(None)).await.expect("close");
        let before_close = bodies_until_close(&mut alice).await;
        assert!(
            before_close.contains(&"m2".to_owned()),
            "the waiting m2 came before the close frame: {before_close:?}"
        );
    };
    tokio::select! {
        biased;
        () = alice_side => {}
        body = msg_body(&mut carol) => panic!(
            "carol, who only waits, got {body} (after the delay) before alice's replies and \
             close: they waited too"
        ),
    }
    // And carol gets everything, in order, once the delay has passed.
    for body in ["m1", "a1", "m2"] {
        assert_eq!(msg_body(&mut carol).await, body);
    }
}
