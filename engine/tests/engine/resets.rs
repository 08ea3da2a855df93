//! Peers that reset their connection (RST: `SO_LINGER` 0, then close) at the worst moments —
//! half-way through the upgrade request, half-way through a frame, and while the server
//! writes a large burst to them — many at once while another client chats: the chatter stays
//! served, the server logs no panic (the harness fails a test whose server panicked), and its
//! open file descriptors return to what they were.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, Client, Server};

fn open_fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("the server's /proc/PID/fd")
        .count()
}

/// Resets `s`: the kernel sends RST instead of FIN, and drops what was unsent.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

fn upgrade_request(server: &Server, user: &str) -> String {
    format!(
        "GET /ws?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
}

/// A masked (all-zero mask: the payload goes as is) client text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A raw connection past the upgrade (its 101 read), with `hello` on its way.
fn upgraded(server: &Server, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request(server, user).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("the upgrade's answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test]
async fn peers_that_reset_mid_handshake_mid_frame_and_mid_burst_leave_the_server_whole() {
    let server = Server::start(&[]);
    let mut chatter = Client::connect(&server, "chatter").await;
    chatter.ok(json!({"op": "join", "room": "calm"})).await;
    let mut talker = Client::connect(&server, "talker").await;
    talker.ok(json!({"op": "join", "room": "burst"})).await;
    let baseline = open_fds(&server);

    for round in 0..3 {
        // Half an upgrade request, then RST.
        for i in 0..30 {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            let req = upgrade_request(&server, &format!("h{round}x{i}"));
            s.write_all(&req.as_bytes()[..req.len() / 2]).unwrap();
            reset(s);
        }
        // Upgraded, then half a frame (header, mask and part of the payload), then RST.
        for i in 0..30 {
            let mut s = upgraded(&server, &format!("f{round}x{i}"));
            let frame = text_frame(&[b'{'; 400]);
            s.write_all(&frame[..200]).unwrap();
            reset(s);
        }
        // Readers that joined the burst room and never read: the talker's large messages
        // fill their sockets, and they reset while the server is writing to them.
        let mut readers = Vec::new();
        for i in 0..30 {
            let mut s = upgraded(&server, &format!("b{round}x{i}"));
            let join = json!({"op": "join", "id": 1, "room": "burst"}).to_string();
            s.write_all(&text_frame(join.as_bytes())).unwrap();
            readers.push(s);
        }
        eventually("the readers joined", || {
            server.metric("sokdo_connections") >= (baseline_conns() + 30) as f64
        })
        .await;
        let body = "z".repeat(4_000);
        for _ in 0..100 {
            talker
                .ok(json!({"op": "send", "room": "burst", "body": body}))
                .await;
        }
        readers.into_iter().for_each(reset);
        // The chatter is served throughout.
        let reply = chatter
            .ok(json!({"op": "send", "room": "calm", "body": format!("still here {round}")}))
            .await;
        assert!(reply["seq"].as_u64().is_some(), "{reply}");
    }
    eventually("the server's fds are back to their baseline", || {
        open_fds(&server) <= baseline
    })
    .await;
    let reply = chatter
        .ok(json!({"op": "send", "room": "calm", "body": "the end"}))
        .await;
    assert_eq!(reply["seq"], 4, "{reply}");
    assert!(server.log_lines("panicked").is_empty());
}

/// The chatter and the talker.
fn baseline_conns() -> usize {
    2
}
