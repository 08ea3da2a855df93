//! The conventional tokio chat server — what a Rust developer writes first — used by
//! `sokdo-bench compare` as a peer.
//!
//! It is deliberately *not* tuned: tokio's multi-threaded runtime, tokio-tungstenite with its
//! default `WebSocketConfig`, rooms in an `Arc<Mutex<HashMap<room, broadcast::Sender>>>`, one
//! writer task per connection fed by an unbounded channel, and one forwarding task per joined
//! room. It speaks the subset of sokdo's protocol that the bench uses: `hello`, `join`, `send`,
//! `ping`, `msg` events and `ok`/`error` replies, plus `GET /healthz` on the same port.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Messages a room's broadcast channel holds for a lagging subscriber before it skips ahead.
const ROOM_BROADCAST_MESSAGES_MAX: usize = 1024;

#[derive(Parser)]
#[command(about = "Conventional tokio + tokio-tungstenite chat server (sokdo-bench peer)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    listen: String,
    /// Accepted and ignored, so the peer starts with sokdo's command line.
    #[arg(long)]
    shards: Option<u32>,
    /// Accepted and ignored, as `--shards`: the baseline keeps nothing.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

struct Room {
    tx: broadcast::Sender<Arc<str>>,
    last_seq: u64,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

#[derive(Deserialize)]
struct Request_ {
    op: String,
    id: Option<serde_json::Value>,
    room: Option<String>,
    body: Option<String>,
}

static SESSIONS: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("sokdo-peer-tokio listening on {}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = serve(stream, rooms).await;
        });
    }
}

// tungstenite's handshake callback returns its error response by value: its API, not ours.
#[allow(clippy::result_large_err)]
async fn serve(mut stream: TcpStream, rooms: Rooms) -> anyhow::Result<()> {
    let mut head = [0u8; 16];
    let n = stream.peek(&mut head).await?;
    if !head[..n].starts_with(b"GET /ws") {
        let body = "ok\n";
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(reply.as_bytes()).await?;
        return Ok(());
    }
    let mut user = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        user = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("user="))
            .unwrap_or("anonymous")
            .to_string();
        Ok(resp)
    })
    .await?;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let hello = format!(
        r#"{{"op":"hello","user":{},"session":"s{session}","instance":"tokio-baseline","shard":0,"heartbeat_ms":30000,"limits":{{"body_bytes_max":4096,"frame_bytes_max":65536,"outbound_queue_bytes_max":0}}}}"#,
        quote(&user)
    );
    let _ = out_tx.send(Message::text(hello));
    let mut forwarders = Vec::new();
    while let Some(frame) = source.next().await {
        let text = match frame? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let reply = match serde_json::from_str::<Request_>(&text) {
            Ok(req) => handle(req, &user, &rooms, &out_tx, &mut forwarders),
            Err(e) => error(&serde_json::Value::Null, "bad_request", &e.to_string()),
        };
        let _ = out_tx.send(Message::text(reply));
    }
    for f in forwarders {
        f.abort();
    }
    writer.abort();
    Ok(())
}

fn handle(
    req: Request_,
    user: &str,
    rooms: &Rooms,
    out_tx: &mpsc::UnboundedSender<Message>,
    forwarders: &mut Vec<tokio::task::JoinHandle<()>>,
) -> String {
    let id = req.id.unwrap_or(serde_json::Value::Null);
    match (req.op.as_str(), req.room) {
        ("ping", _) => format!(r#"{{"op":"ok","id":{id},"pong":true}}"#),
        ("join", Some(room)) => {
            let (rx, last_seq) = {
                let mut map = rooms.lock().unwrap();
                let r = map.entry(room.clone()).or_insert_with(|| Room {
                    tx: broadcast::channel(ROOM_BROADCAST_MESSAGES_MAX).0,
                    last_seq: 0,
                });
                (r.tx.subscribe(), r.last_seq)
            };
            forwarders.push(tokio::spawn(forward(rx, out_tx.clone())));
            format!(
                r#"{{"op":"ok","id":{id},"room":{},"last_seq":{last_seq},"unread":0}}"#,
                quote(&room)
            )
        }
        ("send", Some(room)) => {
            let body = req.body.unwrap_or_default();
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut map = rooms.lock().unwrap();
            let Some(r) = map.get_mut(&room) else {
                return error(&id, "not_member", "join the room first");
            };
            r.last_seq += 1;
            let seq = r.last_seq;
            let msg_id = format!("{room}-{seq}");
            let (room, msg_id) = (quote(&room), quote(&msg_id));
            let event = format!(
                r#"{{"op":"msg","room":{room},"seq":{seq},"msg_id":{msg_id},"from":{},"body":{},"ts":{ts}}}"#,
                quote(user),
                quote(&body)
            );
            let _ = r.tx.send(Arc::from(event));
            format!(
                r#"{{"op":"ok","id":{id},"room":{room},"seq":{seq},"msg_id":{msg_id},"ts":{ts}}}"#
            )
        }
        ("join" | "send", None) => error(&id, "bad_request", "missing room"),
        _ => error(&id, "bad_request", "unknown op"),
    }
}

/// A JSON string literal. Replies are formatted by hand so `op` comes first, as sokdo's do
/// (serde_json's `json!` sorts keys).
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn error(id: &serde_json::Value, code: &str, message: &str) -> String {
    format!(
        r#"{{"op":"error","id":{id},"code":{},"message":{}}}"#,
        quote(code),
        quote(message)
    )
}

async fn forward(mut rx: broadcast::Receiver<Arc<str>>, out: mpsc::UnboundedSender<Message>) {
    loop {
        match rx.recv().await {
            Ok(text) => {
                if out.send(Message::text(&*text)).is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
