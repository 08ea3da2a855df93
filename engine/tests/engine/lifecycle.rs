//! Health, readiness, metrics, heartbeats, idle timeout and draining on SIGTERM.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, Client, Server, WAIT};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(server.get("/readyz").0, 200);
    let mut c = Client::connect(&server, "a").await;
    c.ok(json!({"op": "join", "room": "r"})).await;
    c.ok(json!({"op": "send", "room": "r", "body": "hi"})).await;
    c.event_of("msg").await;
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "sokdo_connections{shard=",
        "sokdo_messages_in_total{shard=",
        "sokdo_deliveries_total{shard=",
        "sokdo_cross_shard_messages_total{shard=",
        "sokdo_inbox_depth{shard=",
        "sokdo_outbound_queue_bytes{shard=",
        "sokdo_fanout_latency_seconds_bucket{",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    // Two frames reached the one subscriber: its own `joined`, then the `msg`.
    assert_eq!(server.metric("sokdo_deliveries_total"), 2.0);
    assert_eq!(server.get("/nowhere").0, 404);
}

#[tokio::test]
async fn pings_keep_a_reading_client_alive_and_silence_is_closed() {
    let server = Server::start(&["--heartbeat-ms", "100", "--idle-timeout-ms", "500"]);
    let mut alive = Client::connect(&server, "alive").await;
    let mut silent = Client::connect(&server, "silent").await;
    // tokio-tungstenite answers pings while it reads: 10 pings span twice the idle timeout.
    let mut pings = 0;
    while pings < 10 {
        let frame = tokio::time::timeout(WAIT, alive.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match frame {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    alive.ok(json!({"op": "ping"})).await;
    // The silent client read nothing, so it answered no ping: it was closed.
    assert_eq!(silent.closed().await, (1001, "idle timeout".into()));
}

#[tokio::test]
async fn sigterm_drains_readiness_then_connections_then_exits() {
    let mut server = Server::start(&["--drain-spread-ms", "500", "--close-timeout-ms", "2000"]);
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect(&server, &format!("u{i}")).await;
        c.ok(json!({"op": "join", "room": "r"})).await;
        clients.push(c);
    }
    server.signal(libc::SIGTERM);
    eventually("/readyz to answer 503", || server.get("/readyz").0 == 503).await;
    for c in &mut clients {
        let closing = c.event_of("closing").await;
        assert_eq!(closing["reason"], "shutdown");
        assert!(closing["reconnect_after_ms"].as_u64().is_some());
        assert_eq!(c.closed().await.0, 1001);
    }
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}
