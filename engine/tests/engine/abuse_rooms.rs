//! Abuse limits on rooms and passwords (issue 15): `rooms` scans, room password guessing,
//! login lockouts. Every attack runs while another client keeps chatting, and that client
//! must stay served: each send acknowledged and delivered within `HANG`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{home_of, Client, Server};

/// A bound on a hang, not a speed target: normal answers take milliseconds.
const HANG: Duration = Duration::from_secs(2);

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A client chatting in a room of its own while an attack runs; a second client must
/// receive each message.
struct Chatter {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Chatter {
    async fn start(server: &Server) -> Chatter {
        let tx = Client::connect(server, "chat-tx").await;
        let rx = Client::connect(server, "chat-rx").await;
        Chatter::with(tx, rx).await
    }

    async fn with(mut tx: Client, mut rx: Client) -> Chatter {
        tx.ok(json!({"op": "join", "room": "chat"})).await;
        rx.ok(json!({"op": "join", "room": "chat"})).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut sent = 0;
            while !stopped.load(Ordering::Relaxed) {
                let body = format!("m{sent}");
                let send = json!({"op": "send", "room": "chat", "body": body});
                let ack = tokio::time::timeout(HANG, tx.request(send))
                    .await
                    .unwrap_or_else(|_| panic!("send {sent} not acked within {HANG:?}"));
                assert_eq!(ack["op"], "ok", "send {sent}: {ack}");
                loop {
                    let msg = tokio::time::timeout(HANG, rx.event_of("msg"))
                        .await
                        .unwrap_or_else(|_| panic!("send {sent} not delivered within {HANG:?}"));
                    if msg["body"] == body {
                        break;
                    }
                }
                sent += 1;
            }
            sent
        });
        Chatter { stop, task }
    }

    /// Stops chatting; how many messages went through (each acked and delivered in time).
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.task.await.expect("the chatting client was served");
        assert!(sent > 0, "the chatting client sent nothing");
        sent
    }
}

/// Creates `n` public rooms `r-00000`… over `conns` connections, each pipelining its
/// creates in windows.
async fn create_rooms(server: &Server, n: usize, conns: usize) {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut client = Client::connect(server, &format!("maker{c}")).await;
        tasks.push(tokio::spawn(async move {
            let mine: Vec<usize> = (c..n).step_by(conns).collect();
            for window in mine.chunks(500) {
                for i in window {
                    let create = json!({"op": "create", "id": i, "room": format!("r-{i:05}"),
                        "title": format!("Room {i}")});
                    client.send_raw(&create.to_string()).await;
                }
                let mut answered = 0;
                while answered < window.len() {
                    let v = client.recv().await;
                    if v["id"].is_u64() {
                        assert_eq!(v["op"], "ok", "{v}");
                        answered += 1;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("rooms created");
    }
}

/// Pages through `rooms` with `query` to the end, honouring `rate_limited`'s
/// `retry_after_ms`; the ids found and how often it was told to wait.
async fn page_through(c: &mut Client, query: &str) -> (Vec<String>, usize) {
    let (mut seen, mut waits, mut cursor) = (Vec::new(), 0, Value::Null);
    loop {
        let mut req = json!({"op": "rooms", "query": query, "limit": 100});
        if !cursor.is_null() {
            req["cursor"] = cursor.clone();
        }
        let page = c.request(req).await;
        if page["code"] == "rate_limited" {
            waits += 1;
            let wait = page["retry_after_ms"].as_u64().expect("retry_after_ms");
            assert!((1..=1000).contains(&wait), "{page}");
            tokio::time::sleep(Duration::from_millis(wait)).await;
            continue;
        }
        assert_eq!(page["op"], "ok", "{page}");
        let rooms = page["rooms"].as_array().unwrap();
        seen.extend(rooms.iter().map(|r| r["room"].as_str().unwrap().to_owned()));
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            return (seen, waits);
        }
    }
}

/// Goal: `rooms` over many rooms costs a page, not a scan of every room, and one
/// connection cannot ask it faster than `--room-queries-per-connection-per-s`: four
/// connections querying in a loop get `rate_limited` (with `retry_after_ms`) while a
/// chatting client stays served; a filter that matches few rooms still pages to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_scans_are_bounded_and_rate_limited_while_chat_goes_on() {
    // A smaller scan budget than the default (2000): the debug build on a shared machine
    // is many times slower than a release build; the bound, not its size, is under test.
    let server = Server::start(&["--rooms-query-scan-rooms-max", "500"]);
    create_rooms(&server, 20_000, 4).await;
    let chatter = Chatter::start(&server).await;

    let mut scanners = Vec::new();
    for s in 0..4 {
        let mut c = Client::connect(&server, &format!("scanner{s}")).await;
        scanners.push(tokio::spawn(async move {
            let mut limited = 0;
            // Pipelined, as a loop that does not wait for answers would.
            let queries = 60;
            for i in 0..queries {
                let req = match i % 3 {
                    0 => json!({"op": "rooms", "id": i, "limit": 100}),
                    1 => json!({"op": "rooms", "id": i, "query": "no such room", "limit": 100}),
                    _ => json!({"op": "rooms", "id": i, "cursor": "r-10000", "limit": 100}),
                };
                c.send_raw(&req.to_string()).await;
            }
            for _ in 0..queries {
                let v = c.recv().await;
                if v["code"] == "rate_limited" {
                    assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");
                    limited += 1;
                } else {
                    assert_eq!(v["op"], "ok", "{v}");
                }
            }
            limited
        }));
    }
    for s in scanners {
        let limited = s.await.expect("scanner");
        assert!(
            limited > 0,
            "a connection querying in a loop is rate-limited"
        );
    }

    let mut c = Client::connect(&server, "finder").await;
    let (found, _) = page_through(&mut c, "r-1999").await;
    let expected: Vec<String> = (19_990..20_000).map(|i| format!("r-{i:05}")).collect();
    assert_eq!(
        found, expected,
        "short pages with a cursor reach every match"
    );
    let (all, _) = page_through(&mut c, "room 1234").await;
    assert_eq!(all.len(), 11, "room 1234 and room 12340..=12349: {all:?}");

    chatter.finish().await;
    assert!(server.metric("sokdo_room_queries_rate_limited_total") > 0.0);
}

/// Two private rooms with the same home shard (one blocking pool checks both passwords).
fn two_rooms_on_one_home() -> (String, String) {
    let rooms: Vec<String> = (0..)
        .map(|i| format!("vault-{i}"))
        .filter(|r| home_of(r, 2) == 0)
        .take(2)
        .collect();
    (rooms[0].clone(), rooms[1].clone())
}

/// Goal: room passwords cannot be guessed without limit, and guessing does not starve
/// other private joins: a connection pipelining wrong guesses gets `rate_limited` after
/// `--room-password-failures-max`, another user joins another private room of the same
/// home with its password within `HANG`, a chatting client stays served, and after the
/// cool-down the right password works for the guesser too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_password_guessing_is_rate_limited_and_starves_no_one() {
    let window = Duration::from_millis(3000);
    let server = Server::start(&["--auth-failure-window-ms", "3000"]);
    let (guessed, other) = two_rooms_on_one_home();
    let mut owner = Client::connect(&server, "owner").await;
    for (room, password) in [(&guessed, "right-1"), (&other, "right-2")] {
        owner
            .ok(json!({"op": "create", "room": room, "private": true, "password": password}))
            .await;
    }
    let chatter = Chatter::start(&server).await;

    let mut eve = Client::connect_from(&server, "eve", ATTACKER).await;
    let guesses = 200;
    let flood = std::time::Instant::now();
    for i in 0..guesses {
        let join = json!({"op": "join", "id": 1000 + i, "room": guessed, "password": format!("guess-{i}")});
        eve.send_raw(&join.to_string()).await;
    }
    // While the guesses are being answered, a legitimate join of the other room.
    let mut bob = Client::connect(&server, "bob").await;
    let join = json!({"op": "join", "room": other, "password": "right-2"});
    let joined = tokio::time::timeout(HANG, bob.request(join))
        .await
        .expect("a private join is not starved by another's guessing");
    assert_eq!(joined["op"], "ok", "{joined}");

    let (mut wrong, mut limited) = (0, 0);
    for _ in 0..guesses {
        let v = eve.recv().await;
        match v["code"].as_str() {
            Some("forbidden") => wrong += 1,
            Some("rate_limited") => {
                assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");
                limited += 1;
            }
            _ => panic!("a wrong guess is refused: {v}"),
        }
    }
    // Five checks per window at most (the window is short so the test can wait it out):
    // the flood spans `windows`, each starting afresh.
    let windows = flood.elapsed().as_millis() / window.as_millis() + 1;
    let most = 5 * (windows as usize + 1);
    assert!(
        wrong <= most,
        "at most --room-password-failures-max checked per window: {wrong} in {windows} windows"
    );
    assert!(
        limited > 0 && wrong + limited == guesses,
        "{wrong} + {limited}"
    );

    // The cool-down passes; the right password works.
    loop {
        let v = eve
            .request(json!({"op": "join", "room": guessed, "password": "right-1"}))
            .await;
        if v["op"] == "ok" {
            break;
        }
        assert_eq!(v["code"], "rate_limited", "{v}");
        let wait = v["retry_after_ms"].as_u64().expect("retry_after_ms");
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    chatter.finish().await;
    assert!(server.metric("sokdo_room_password_failures_total") >= 1.0);
    assert!(server.metric("sokdo_room_password_refusals_total") >= 1.0);
}

/// One HTTP request from `local` (another loopback address); the status.
async fn http_post_from(server: &Server, local: IpAddr, path: &str, body: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((local, 0).into())
        .expect("bind the local address");
    let mut s = socket.connect(server.addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(HANG * 5, s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .expect("read");
    std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap()
}

/// Goal: failing logins from one address cannot lock the account's owner out from
/// another: after the attacker (127.0.0.2) is refused 429, the owner's right password from
/// 127.0.0.1 logs in at once, the attacker's address stays throttled (even with the right
/// password), and a chatting client stays served throughout. One shard: the counts are
/// per shard, so every attempt meets the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_lockout_from_one_address_does_not_lock_out_the_owner() {
    let server = Server::start(&["--shards", "1", "--accounts", "--jwt-secret", "s3cret"]);
    let creds = r#"{"user":"mina","password":"first-pass"}"#;
    assert_eq!(server.http("POST", "/api/auth/register", &[], creds).0, 201);
    let chatter = Chatter::with(
        logged_in(&server, "chat-tx", "tx-pass").await,
        logged_in(&server, "chat-rx", "rx-pass").await,
    )
    .await;

    let wrong = r#"{"user":"mina","password":"guess"}"#;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http_post_from(&server, ATTACKER, "/api/auth/login", wrong).await);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let local = IpAddr::from([127, 0, 0, 1]);
    assert_eq!(
        http_post_from(&server, local, "/api/auth/login", creds).await,
        200,
        "the owner logs in from another address"
    );
    assert_eq!(
        http_post_from(&server, ATTACKER, "/api/auth/login", creds).await,
        429,
        "the attacker's address is still throttled"
    );
    chatter.finish().await;
    assert!(server.metric("sokdo_login_refusals_total") >= 4.0);
}

/// A client of user `user` (registered with `password`) logged in through the accounts API.
async fn logged_in(server: &Server, user: &str, password: &str) -> Client {
    let creds = json!({"user": user, "password": password}).to_string();
    assert_eq!(
        server.http("POST", "/api/auth/register", &[], &creds).0,
        201
    );
    let (status, text) = server.http("POST", "/api/auth/login", &[], &creds);
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let token = body["token"].as_str().unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(&format!("token={token}")))
        .await
        .expect("upgrade");
    Client::from_ws(ws).await
}
