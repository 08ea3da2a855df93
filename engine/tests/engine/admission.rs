//! Overload is admission, not collapse: past capacity clients wait in order, told their
//! position; past the queue's bound they get 503 with Retry-After.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{Client, Server, WAIT};

async fn connect_raw(server: &Server, user: &str) -> crate::support::Ws {
    tokio_tungstenite::connect_async(server.ws_url(&format!("user={user}")))
        .await
        .expect("upgrade")
        .0
}

async fn next_json(ws: &mut crate::support::Ws) -> serde_json::Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .expect("frame")
        {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn past_capacity_clients_queue_in_order_then_get_503() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--connections-per-shard-max",
        "2",
        "--admission-queue-per-shard-max",
        "2",
    ]);
    let first = Client::connect(&server, "u1").await;
    let mut second = Client::connect(&server, "u2").await;
    assert_eq!(
        server.get("/readyz").0,
        503,
        "full: the load balancer should send new users elsewhere"
    );

    let mut third = connect_raw(&server, "u3").await;
    assert_eq!(
        next_json(&mut third).await,
        json!({"op": "queued", "position": 1})
    );
    let mut fourth = connect_raw(&server, "u4").await;
    assert_eq!(
        next_json(&mut fourth).await,
        json!({"op": "queued", "position": 2})
    );
    match tokio_tungstenite::connect_async(server.ws_url("user=u5")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // A queued client's requests are refused until it is admitted.
    third
        .send(Message::text(r#"{"op":"ping","id":1}"#))
        .await
        .unwrap();
    let refused = next_json(&mut third).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );

    drop(first);
    let hello = next_json(&mut third).await;
    assert_eq!(
        (hello["op"].as_str(), hello["user"].as_str()),
        (Some("hello"), Some("u3"))
    );
    assert_eq!(
        next_json(&mut fourth).await,
        json!({"op": "queued", "position": 1})
    );
    let mut third = Client::from_ws_admitted(third, hello);
    third.ok(json!({"op": "join", "room": "r"})).await;
    second.ok(json!({"op": "join", "room": "r"})).await;
}
