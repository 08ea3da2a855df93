//! Abuse limits of one connection and one address (issue 15): each attack runs while a
//! client from another address keeps chatting, and that client must stay served — every
//! send acknowledged and delivered, none hanging past `SERVED_WITHIN` (a bound on a hang,
//! not a speed target).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{eventually, Client, Server, Ws, WAIT};

/// Longest a bystander's send may take to be acknowledged and delivered during an attack.
const SERVED_WITHIN: Duration = Duration::from_secs(2);

fn other_address() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// A bystander from 127.0.0.2: joins `calm`, then sends `rounds` messages one after the
/// other, each acknowledged and echoed back to it within `SERVED_WITHIN`.
async fn chat(server: &Server, rounds: usize) {
    let mut c = Client::connect_from(server, "bystander", other_address()).await;
    c.ok(json!({"op": "join", "room": "calm"})).await;
    for i in 0..rounds {
        let body = format!("still here {i}");
        let served = async {
            let ok = c
                .ok(json!({"op": "send", "room": "calm", "body": body}))
                .await;
            let msg = c.event_of("msg").await;
            (ok, msg)
        };
        let (ok, msg) = tokio::time::timeout(SERVED_WITHIN, served)
            .await
            .unwrap_or_else(|_| panic!("send {i} of the bystander hung"));
        assert_eq!(msg["body"], body);
        assert_eq!(msg["seq"], ok["seq"]);
        // Lets the attack run between rounds (a yield, not a wait for anything).
        tokio::task::yield_now().await;
    }
}

/// Connects as `hog` from 127.0.0.1 until refused: the connections held (never more than
/// `cap`) and the refusal. `after_closes`: connections of this address were just closed,
/// and a refusal while fewer than `cap` are held means the server has not yet forgotten
/// them (tried again, bounded), not a wrong count.
async fn fill_address(
    server: &Server,
    cap: usize,
    after_closes: bool,
) -> (
    Vec<Client>,
    tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) {
    let mut held = Vec::new();
    for _ in 0..1_000 {
        assert!(
            held.len() <= cap,
            "connection {} from one address was admitted",
            held.len()
        );
        match tokio_tungstenite::connect_async(server.ws_url("user=hog")).await {
            Ok((ws, _)) => held.push(Client::from_ws(ws).await),
            Err(WsError::Http(resp)) if held.len() == cap || !after_closes => return (held, *resp),
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429);
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("expected 429, got {other:?}"),
        }
    }
    panic!("closed connections of one address were never given back");
}

/// Reads JSON frames until the server's close frame: the frames and the close.
async fn frames_until_close(ws: &mut Ws) -> (Vec<Value>, (u16, String)) {
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the server closes within the wait");
        match msg {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => {
                return (frames, (u16::from(f.code), f.reason.to_string()))
            }
            Some(Ok(_)) => {}
            other => panic!("expected frames then a close, got {other:?}"),
        }
    }
}

/// Goal: one connection sending as fast as it can gets `burst` requests through, then
/// `rate_limited` replies (with the request's id and `retry_after_ms`), and once it keeps
/// on past `--rate-limited-replies-max` it is closed 1008 `rate limit exceeded` — after
/// the answers it is owed: every send that was stored was `ok`'d to it first (with `sync`
/// an `ok` waits for its group's fsync while the refusals behind it are decided at once);
/// the bystander is served throughout and the metrics count it.
#[tokio::test]
async fn a_request_flood_is_rate_limited_then_closed_1008_while_others_chat() {
    let server = Server::start(&[
        "--messages-per-connection-per-s",
        "20",
        "--messages-per-connection-burst",
        "50",
        "--rate-limited-replies-max",
        "100",
    ]);
    let mut flood = Client::connect(&server, "flood").await;
    flood.ok(json!({"op": "join", "room": "spam"})).await;
    let attack = async {
        let started = Instant::now();
        for i in 0..1_000 {
            let frame = json!({"op": "send", "id": i, "room": "spam", "body": "x"});
            if flood
                .ws
                .send(Message::text(frame.to_string()))
                .await
                .is_err()
            {
                break; // closed under us: the close frame is still read below
            }
        }
        let (frames, close) = frames_until_close(&mut flood.ws).await;
        (frames, close, started.elapsed())
    };
    let ((frames, close, elapsed), ()) = tokio::join!(attack, chat(&server, 20));

    let replies: Vec<&Value> = frames.iter().filter(|f| f.get("id").is_some()).collect();
    let oks = replies.iter().filter(|f| f["op"] == "ok").count();
    let limited: Vec<&&Value> = replies
        .iter()
        .filter(|f| f["code"] == "rate_limited")
        .collect();
    // The join took one token; the rest of the burst and the refill may pass.
    let allowed = 50.0 + 20.0 * elapsed.as_secs_f64() + 1.0;
    assert!(
        oks >= 40 && (oks as f64) <= allowed,
        "{oks} sends passed in {elapsed:?}"
    );
    assert!(limited.len() >= 100, "{} rate_limited", limited.len());
    let first = limited[0];
    assert!(first["id"].is_u64(), "the reply names its request: {first}");
    assert!(first["retry_after_ms"].as_u64().unwrap() >= 1, "{first}");
    assert!(first["message"]
        .as_str()
        .unwrap()
        .contains("20 requests per second"));
    assert_eq!(close, (1008, "rate limit exceeded".to_owned()));
    assert!(server.metric("sokdo_rate_limited_requests_total") >= 100.0);
    assert_eq!(server.metric("sokdo_rate_limit_closes_total"), 1.0);
    // Every message of the flood that was stored had its `ok` sent before the close.
    let mut reader = Client::connect(&server, "reader").await;
    let mut stored = 0;
    let mut before: Option<u64> = None;
    loop {
        let mut req = json!({"op": "history", "room": "spam", "limit": 100});
        if let Some(seq) = before {
            req["before_seq"] = json!(seq);
        }
        let page = reader.ok(req).await;
        let messages = page["messages"].as_array().unwrap();
        stored += messages.len();
        match messages.first() {
            Some(first) if first["seq"].as_u64() > Some(1) => before = first["seq"].as_u64(),
            _ => break,
        }
    }
    assert_eq!(stored, oks, "messages stored vs `ok`s the flooder heard");
}

/// Goal: a client that backs off as told (`retry_after_ms`) is served again, and stays
/// open; join/leave churn counts like every other request.
#[tokio::test]
async fn join_leave_churn_is_rate_limited_and_retry_after_is_honoured() {
    let server = Server::start(&[
        "--messages-per-connection-per-s",
        "10",
        "--messages-per-connection-burst",
        "10",
    ]);
    let mut churn = Client::connect(&server, "churn").await;
    let attack = async {
        for i in 0..40u64 {
            let op = if i % 2 == 0 { "join" } else { "leave" };
            let frame = json!({"op": op, "id": i, "room": "door"});
            churn.send_raw(&frame.to_string()).await;
        }
        let mut replies = Vec::new();
        while replies.len() < 40 {
            replies.push(churn.recv().await);
        }
        replies
    };
    // The bystander has a bucket of its own with the same bound: its join and 8 sends stay
    // within the burst of 10 however fast they go (10 sends made 11 requests, and a fast
    // machine sent them within the burst's refill: CI saw the bystander limited).
    let (replies, ()) = tokio::join!(attack, chat(&server, 8));
    let replies: Vec<Value> = replies
        .into_iter()
        .filter(|r| r.get("id").is_some())
        .collect();
    let limited: Vec<&Value> = replies
        .iter()
        .filter(|r| r["code"] == "rate_limited")
        .collect();
    assert!(
        limited.len() >= 25,
        "40 joins and leaves at once, a bucket of 10: {replies:?}"
    );
    let wait = limited.last().unwrap()["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1_000).contains(&wait), "retry_after_ms {wait}");
    // Backing off for the time the server named is what a client is told to do.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    churn.ok(json!({"op": "join", "room": "door"})).await;
    assert!(server.metric("sokdo_rate_limited_requests_total") >= 25.0);
}

/// Goal: a connection flooding WebSocket pings is closed 1008 `ping rate exceeded`
/// (each ping costs the server a write), while the bystander is served.
#[tokio::test]
async fn a_ping_flood_is_closed_1008_while_others_chat() {
    let server = Server::start(&["--pings-per-connection-per-s", "5"]);
    let mut pinger = Client::connect(&server, "pinger").await;
    let attack = async {
        for _ in 0..500 {
            if pinger
                .ws
                .send(Message::Ping(vec![1u8; 16].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        frames_until_close(&mut pinger.ws).await.1
    };
    let (close, ()) = tokio::join!(attack, chat(&server, 10));
    assert_eq!(close, (1008, "ping rate exceeded".to_owned()));
    assert_eq!(server.metric("sokdo_ping_flood_closes_total"), 1.0);

    // A client pinging at a sane pace is not affected.
    let mut polite = Client::connect(&server, "polite").await;
    for _ in 0..5 {
        polite
            .ws
            .send(Message::Ping(vec![2u8].into()))
            .await
            .unwrap();
    }
    polite.ok(json!({"op": "ping"})).await;
}

/// Goal: one address holds at most `--connections-per-ip-max` upgraded connections over
/// the whole instance (both shards); the next gets 429 with `Retry-After`; one closing
/// lets one more in; another address connects and chats meanwhile.
#[tokio::test]
async fn an_address_past_its_connection_cap_gets_429_others_chat() {
    let server = Server::start(&["--connections-per-ip-max", "6"]);
    let attack = async {
        // The kernel spreads sockets over the shards by a hash of their ports: six land on
        // one shard one time in 32, and then the cap was not shown to be instance-wide.
        // Such a round is given back whole and tried again (bounded).
        for round in 0..10 {
            let (held, refused) = fill_address(&server, 6, round > 0).await;
            let shards: HashSet<u64> = held.iter().map(Client::shard).collect();
            if shards.len() == 2 {
                return (held, refused);
            }
            for mut c in held {
                c.ws.close(None).await.unwrap();
                let _ = frames_until_close(&mut c.ws).await;
            }
        }
        panic!("ten rounds of six connections each landed on one shard");
    };
    let ((mut held, refused), ()) = tokio::join!(attack, chat(&server, 10));
    assert_eq!(held.len(), 6);
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = String::from_utf8(refused.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("connections_per_ip_max 6"), "{body}");
    assert!(server.metric("sokdo_connections_per_ip_refused_total") >= 1.0);

    // One goes: its count is given back once the server forgot it.
    let mut gone = held.pop().unwrap();
    gone.ws.close(None).await.unwrap();
    let _ = frames_until_close(&mut gone.ws).await;
    let mut again = None;
    for _ in 0..100 {
        match tokio_tungstenite::connect_async(server.ws_url("user=hog")).await {
            Ok((ws, _)) => {
                again = Some(Client::from_ws(ws).await);
                break;
            }
            Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
            Err(other) => panic!("{other:?}"),
        }
        tokio::task::yield_now().await;
    }
    let mut again = again.expect("a place of the address freed by a close is taken again");
    again.ok(json!({"op": "ping"})).await;
}

/// Goal: one address opening sockets it never sends a request on holds at most
/// `--handshakes-per-ip-max` of them at once: the rest are closed at once (the handshake
/// timeout is 10 minutes here, so they were not closed by it), other addresses are served
/// throughout, and once the address's sockets go it upgrades again.
#[tokio::test]
async fn unfinished_handshakes_of_one_address_are_capped_at_accept() {
    let server = Server::start(&[
        "--handshakes-per-ip-max",
        "20",
        "--handshake-timeout-ms",
        "600000",
    ]);
    // From 127.0.0.3: the harness's own HTTP calls (`/metrics`) come from 127.0.0.1, the
    // bystander from 127.0.0.2.
    let hog: IpAddr = "127.0.0.3".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..60 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((hog, 0).into()).unwrap();
        let stream = socket
            .connect(server.addr)
            .await
            .unwrap()
            .into_std()
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        held.push(stream);
    }
    let closed_by_server = |held: &[TcpStream]| {
        held.iter()
            .filter(|s| match (&**s).read(&mut [0u8; 1]) {
                Ok(0) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                Ok(_) => panic!("the server wrote to a socket that sent no request"),
            })
            .count()
    };
    let chatting = chat(&server, 10);
    let capped = async {
        eventually("the 40 sockets past the cap are closed", || {
            closed_by_server(&held) == 40
        })
        .await;
    };
    tokio::join!(chatting, capped);
    assert_eq!(
        closed_by_server(&held),
        40,
        "the 20 within the cap stay open"
    );
    assert_eq!(server.metric("sokdo_handshakes_per_ip_refused_total"), 40.0);

    // The address's sockets go: its count is given back, and it upgrades again.
    drop(held);
    let mut again = None;
    for _ in 0..100 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((hog, 0).into()).unwrap();
        let stream = socket.connect(server.addr).await.unwrap();
        let plain = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        match tokio_tungstenite::client_async(server.ws_url("user=hog"), plain).await {
            Ok((ws, _)) => {
                again = Some(Client::from_ws(ws).await);
                break;
            }
            // Closed at accept while the server has not yet forgotten the dropped ones.
            Err(WsError::Io(_) | WsError::Protocol(_) | WsError::ConnectionClosed) => {
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let mut again = again.expect("the address's places are given back when its sockets go");
    again.ok(json!({"op": "ping"})).await;
}

/// Goal: a client learns its connection's request and ping limits from `hello`, as set
/// by the flags, so it can pace itself instead of discovering them by `rate_limited`.
#[tokio::test]
async fn hello_names_the_connections_rate_limits() {
    let server = Server::start(&[
        "--messages-per-connection-per-s",
        "7",
        "--messages-per-connection-burst",
        "9",
        "--rate-limited-replies-max",
        "11",
        "--pings-per-connection-per-s",
        "0",
    ]);
    let c = Client::connect(&server, "pacer").await;
    let limits = &c.hello["limits"];
    assert_eq!(limits["requests_per_s"], 7, "{limits}");
    assert_eq!(limits["requests_burst"], 9, "{limits}");
    assert_eq!(limits["rate_limited_replies_max"], 11, "{limits}");
    assert_eq!(limits["pings_per_s"], 0, "{limits}");
}

/// Goal: a small admission queue cannot be filled by one address: past its cap it gets
/// 429, and a client from another address still queues (then is admitted).
#[tokio::test]
async fn one_address_cannot_fill_the_admission_queue() {
    let server = Server::start(&[
        "--connections-max",
        "2",
        "--admission-queue-max",
        "5",
        "--connections-per-ip-max",
        "4",
    ]);
    let mut hog = Vec::new();
    for _ in 0..4 {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("user=hog"))
            .await
            .expect("within the cap");
        hog.push(ws);
    }
    match tokio_tungstenite::connect_async(server.ws_url("user=hog")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        other => panic!("the 5th from one address: {:?}", other.map(|_| ())),
    }
    // Another address is queued, not refused 503, and is admitted once a place frees.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((other_address(), 0).into()).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut waiter, _) = tokio_tungstenite::client_async(
        server.ws_url("user=patient"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("queued, not refused");
    let first = frames_or_hello(&mut waiter).await;
    assert_eq!(first["op"], "queued", "{first}");
    drop(hog);
    loop {
        let v = frames_or_hello(&mut waiter).await;
        if v["op"] == "hello" {
            break;
        }
        assert_eq!(v["op"], "queued", "{v}");
    }
}

async fn frames_or_hello(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Goal: an `id` that is a number no JSON reader can hold (`1e999`) is not echoed: the
/// request gets `bad_request` without an id and the connection stays open; ordinary ids
/// are still echoed as sent.
#[tokio::test]
async fn an_unrepresentable_numeric_id_is_refused_not_echoed() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server, "ids").await;
    c.send_raw(r#"{"op":"ping","id":1e999}"#).await;
    let reply = c.recv().await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(reply.get("id").is_none_or(Value::is_null), "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("`id`"),
        "{reply}"
    );
    c.send_raw(r#"{"op":"ping","id":-12.5e3}"#).await;
    let text = loop {
        match c.ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    assert!(text.contains(r#""id":-12.5e3"#), "echoed as sent: {text}");
    c.ok(json!({"op": "ping"})).await;
}

/// Writes `request` on a plain socket and reads the server's answer until it closes.
fn http_exchange(server: &Server, request: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Goal: a request that declares a body larger than a request may be is answered 413 at
/// once — not left to wait out the handshake timeout (60 s here, past the test's wait).
#[tokio::test]
async fn a_declared_body_past_the_request_limit_gets_413_at_once() {
    let server = Server::start(&["--handshake-timeout-ms", "60000"]);
    for head in [
        "POST /api/rooms/r/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",
        "GET /ws?user=a HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
    ] {
        let answer = http_exchange(&server, head.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 413 Payload Too Large"),
            "{head:?} -> {answer:?}"
        );
        assert!(answer.contains("http_request_bytes_max"), "{answer}");
    }
}

/// Goal (keeps holding): too many headers and an oversized head get 431; a head trickled
/// a byte at a time is cut at `--handshake-timeout-ms`; the bystander is served meanwhile.
#[tokio::test]
async fn header_abuse_gets_431_and_slowloris_is_cut_while_others_chat() {
    let server = Server::start(&["--handshake-timeout-ms", "500"]);
    let mut many = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let answer = http_exchange(&server, many.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let huge = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(9_000));
    let answer = http_exchange(&server, huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    let addr = server.addr;
    let slowloris = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let head = b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut buf = [0u8; 256];
        for (sent, byte) in head.iter().enumerate() {
            if s.write_all(&[*byte]).is_err() {
                return sent;
            }
            // The attack: one byte, then silence (the server's read is what ends it).
            if let Ok(0) = s.read(&mut buf) {
                return sent + 1;
            }
        }
        usize::MAX
    });
    let (sent, ()) = tokio::join!(slowloris, chat(&server, 10));
    let sent = sent.unwrap();
    assert!(sent < 100, "the trickled head was never cut ({sent} bytes)");
}

/// Goal (issue 15 finding; held since issue 13): freed places do not re-send `queued` to
/// every waiter. 300 waiters, 100 places freed one at a time: the `queued` frames the
/// waiters receive are O(waiters + seconds), not O(waiters × freed places) (30,000).
#[tokio::test]
async fn freeing_places_one_by_one_sends_few_queued_frames() {
    const WAITERS: usize = 300;
    let server = Server::start(&["--connections-max", "10", "--admission-queue-max", "1000"]);
    let mut admitted = Vec::new();
    for i in 0..10 {
        admitted.push(Client::connect(&server, &format!("holder{i}")).await.ws);
    }
    let queued_frames = Arc::new(AtomicUsize::new(0));
    let (hello_tx, mut hello_rx) = tokio::sync::mpsc::unbounded_channel::<Ws>();
    for i in 0..WAITERS {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(&format!("user=w{i}")))
            .await
            .expect("queued");
        let (count, tx) = (queued_frames.clone(), hello_tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["op"].as_str() {
                    Some("queued") => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("hello") => {
                        let _ = tx.send(ws);
                        return;
                    }
                    _ => {}
                }
            }
        });
    }
    let started = Instant::now();
    for freed in 0..100 {
        let mut ws = admitted.remove(0);
        ws.close(None).await.unwrap();
        let next = tokio::time::timeout(WAIT, hello_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no waiter admitted after {freed} freed places"))
            .unwrap();
        admitted.push(next);
    }
    let elapsed = started.elapsed().as_secs_f64().ceil() as usize;
    let frames = queued_frames.load(Ordering::Relaxed);
    let bound = 2 * WAITERS + WAITERS * elapsed;
    assert!(
        frames <= bound,
        "{frames} `queued` frames for {WAITERS} waiters and 100 freed places in {elapsed} s (bound {bound})"
    );
}
