//! HTTP beside the WebSocket: the server API and the optional accounts.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{Client, Server};

fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn a_back_end_publishes_with_its_api_key_and_reads_history() {
    let server = Server::start(&["--api-key", "k3y"]);
    let mut c = Client::connect(&server, "alice").await;
    c.ok(json!({"op": "join", "room": "news"})).await;
    let post = |headers: &[(&str, &str)], path: &str| {
        server.http(
            "POST",
            path,
            headers,
            r#"{"body":"서버 공지","from":"bot"}"#,
        )
    };
    assert_eq!(post(&[], "/api/rooms/news/messages").0, 401);
    assert_eq!(
        post(&[("X-Api-Key", "wrong")], "/api/rooms/news/messages").0,
        401
    );
    assert_eq!(
        post(&[("X-Api-Key", "k3y")], "/api/rooms/nowhere/messages").0,
        404
    );
    let (status, text) = post(&[("X-Api-Key", "k3y")], "/api/rooms/news/messages");
    assert_eq!(status, 201, "{text}");
    let reply = body(&text);
    assert_eq!(
        (reply["op"].as_str(), reply["seq"].as_u64()),
        (Some("ok"), Some(1))
    );
    let msg = c.event_of("msg").await;
    assert_eq!(
        (msg["from"].as_str(), msg["body"].as_str()),
        (Some("bot"), Some("서버 공지"))
    );
    let (status, text) = server.http(
        "POST",
        "/api/rooms/news/messages",
        &[("X-Api-Key", "k3y")],
        "not json",
    );
    assert_eq!(status, 400, "{text}");

    let (status, text) = server.get("/api/rooms/news/messages?user=alice&limit=10");
    assert_eq!(status, 200, "{text}");
    assert_eq!(body(&text)["messages"][0]["body"], "서버 공지");
    assert_eq!(
        server.get("/api/rooms/news/messages?limit=10").0,
        401,
        "history needs an identity"
    );
}

#[tokio::test]
async fn publishing_is_disabled_without_an_api_key() {
    let server = Server::start(&[]);
    let (status, text) = server.http(
        "POST",
        "/api/rooms/r/messages",
        &[("X-Api-Key", "x")],
        r#"{"body":"b"}"#,
    );
    assert_eq!(status, 403);
    assert!(text.contains("--api-key"), "{text}");
    assert_eq!(
        server
            .http(
                "POST",
                "/api/auth/login",
                &[],
                r#"{"user":"u","password":"p"}"#
            )
            .0,
        404
    );
}

#[tokio::test]
async fn accounts_register_login_rate_limit_and_change_password() {
    let server = Server::start(&["--accounts", "--jwt-secret", "s3cret"]);
    let creds = r#"{"user":"mina","password":"first-pass","name":"Mina"}"#;
    assert_eq!(server.http("POST", "/api/auth/register", &[], creds).0, 201);
    assert_eq!(server.http("POST", "/api/auth/register", &[], creds).0, 409);
    assert_eq!(
        server
            .http("POST", "/api/auth/register", &[], r#"{"user":"x"}"#)
            .0,
        400
    );

    let (status, text) = server.http(
        "POST",
        "/api/auth/login",
        &[],
        r#"{"user":"mina","password":"first-pass"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let token = body(&text)["token"].as_str().unwrap().to_owned();
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(&format!("token={token}")))
        .await
        .unwrap();
    assert_eq!(Client::from_ws(ws).await.hello["user"], "mina");

    let change = r#"{"user":"mina","old_password":"first-pass","new_password":"second-pass"}"#;
    assert_eq!(
        server.http("POST", "/api/auth/password", &[], change).0,
        200
    );
    let old = r#"{"user":"mina","password":"first-pass"}"#;
    assert_eq!(server.http("POST", "/api/auth/login", &[], old).0, 401);
    assert_eq!(
        server
            .http(
                "POST",
                "/api/auth/login",
                &[],
                r#"{"user":"mina","password":"second-pass"}"#
            )
            .0,
        200
    );

    // Failed logins are rate-limited (per shard: keep failing until every shard refuses).
    let mut refused = 0;
    for _ in 0..40 {
        if server.http("POST", "/api/auth/login", &[], old).0 == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0, "repeated failures end in 429");
    match tokio_tungstenite::connect_async(server.ws_url("user=mina")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401, "no dev mode with a secret")
        }
        other => panic!("expected 401, got {other:?}"),
    }
}
