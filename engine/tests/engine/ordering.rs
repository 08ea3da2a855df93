//! A connection's requests take effect, and are answered, in the order it sent them,
//! whichever shards their rooms live on; and nothing it sends is lost, not even frames
//! written right behind the upgrade request.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{home_of, Client, Server, WAIT};

/// Rooms named `{prefix}-{n}`, `per_shard` homed on each of two shards, alternating.
fn rooms_on_both_shards(prefix: &str, per_shard: usize) -> Vec<String> {
    let mut on = [Vec::new(), Vec::new()];
    for n in 0.. {
        let room = format!("{prefix}-{n}");
        let home = &mut on[home_of(&room, 2) as usize];
        if home.len() < per_shard {
            home.push(room);
        }
        if on.iter().all(|rooms| rooms.len() == per_shard) {
            break;
        }
    }
    let [zero, one] = on;
    zero.into_iter()
        .zip(one)
        .flat_map(|(a, b)| [a, b])
        .collect()
}

/// Goal: requests pipelined behind a `join` (`send`, `typing`, `read`, `leave`) take effect
/// after it and are answered in the order sent, for rooms homed on either shard.
/// Method: one connection writes, without waiting for any answer, `join`, `send`, `typing`,
/// `read`, `leave` for each of 1,000 rooms (500 homed on each shard) while a reader takes
/// every frame; every reply must be `ok` and the reply ids must arrive in the order sent.
/// Before the fix a `send` right behind its `join` was refused `not_member` whenever the
/// `join` had not been answered yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_take_effect_in_order_on_either_shard() {
    let server = Server::start(&["--typing-interval-ms", "0"]);
    let client = Client::connect(&server, "orderly").await;
    let rooms = rooms_on_both_shards("order", 500);
    let requests: Vec<Value> = rooms
        .iter()
        .flat_map(|room| {
            [
                json!({"op": "join", "room": room}),
                json!({"op": "send", "room": room, "body": "first words"}),
                json!({"op": "typing", "room": room}),
                json!({"op": "read", "room": room, "seq": 1}),
                json!({"op": "leave", "room": room}),
            ]
        })
        .enumerate()
        .map(|(id, mut req)| {
            req["id"] = json!(id);
            req
        })
        .collect();
    let total = requests.len();
    let (mut tx, mut rx) = client.ws.split();
    let writer = tokio::spawn(async move {
        for req in requests {
            tx.send(Message::text(req.to_string())).await.expect("send");
        }
        tx
    });
    let mut answered = 0;
    while answered < total {
        let frame = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("a frame within the wait")
            .expect("open")
            .expect("frame");
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).expect("JSON");
        if v.get("id").is_none() {
            continue; // an event (`joined`, `msg`, `read`, `left`…)
        }
        assert_eq!(v["id"], json!(answered), "answered out of order: {v}");
        assert_eq!(v["op"], "ok", "request {answered} refused: {v}");
        answered += 1;
    }
    let _tx = writer.await.expect("writer");
}

/// A client frame, masked as RFC 6455 requires of clients (payload under 126 bytes).
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Goal: frames a client writes right behind its upgrade request, in the same packet, are
/// its first requests, not lost.
/// Method: one `write` carries the upgrade request, a `join` and a `send`; after the 101 the
/// client must get `hello`, then both answers, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_with_the_upgrade_request_are_kept() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut packet = format!(
        "GET /ws?user=eager HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    packet.extend(masked_text(r#"{"op":"join","room":"eager","id":1}"#));
    packet.extend(masked_text(
        r#"{"op":"send","room":"eager","body":"hi","id":2}"#,
    ));
    stream.write_all(&packet).await.expect("write");
    // The response head, byte by byte, so that nothing after it is consumed here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("the response within the wait")
            .expect("a byte of the response");
        head.push(byte);
    }
    let head = String::from_utf8(head).expect("ASCII head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let ws =
        WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(stream), Role::Client, None).await;
    let mut client = Client::from_ws(ws).await;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let v = client.recv().await;
        if v.get("id").is_some() {
            replies.push(v);
        }
    }
    assert_eq!(replies[0]["id"], 1, "{replies:?}");
    assert_eq!(replies[0]["op"], "ok", "{replies:?}");
    assert_eq!(replies[1]["id"], 2, "{replies:?}");
    assert_eq!(replies[1]["op"], "ok", "{replies:?}");
    assert_eq!(replies[1]["seq"], 1, "{replies:?}");
}
