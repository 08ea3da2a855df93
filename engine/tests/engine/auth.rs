//! Tokens are checked before the upgrade: 401 and nothing allocated per user.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{eventually, now_secs, Client, Server};

const SECRET: &str = "test-secret";

fn token(secret: &str, sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "name": "Alice", "exp": exp});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn refused(url: String) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(resp)) => {
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            (resp.status().as_u16(), body)
        }
        Ok(_) => panic!("upgrade should have been refused"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn bad_tokens_get_401_before_the_upgrade() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let (status, body) = refused(server.ws_url("")).await;
    assert_eq!(status, 401);
    assert!(body.contains("missing token"), "{body}");
    let (status, body) = refused(server.ws_url(&format!(
        "token={}",
        token("wrong", "alice", now_secs() + 60)
    )))
    .await;
    assert_eq!(
        (status, body.trim()),
        (401, "token signature does not verify")
    );
    let (status, body) = refused(server.ws_url(&format!(
        "token={}",
        token(SECRET, "alice", now_secs() - 3600)
    )))
    .await;
    assert_eq!((status, body.trim()), (401, "token expired"));
    let (status, _) = refused(server.ws_url("token=not.a.jwt")).await;
    assert_eq!(status, 401);
    let (status, _) = refused(server.ws_url("user=mallory")).await;
    assert_eq!(status, 401, "?user= is refused once a secret is set");
    // Refused sockets are closed: the only connection left is the /metrics request itself.
    eventually("refused sockets to close", || {
        server.metric("sokdo_connections") == 1.0
    })
    .await;
}

#[tokio::test]
async fn good_token_gets_hello_by_header_or_query() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let good = token(SECRET, "alice", now_secs() + 60);

    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(&format!("token={good}")))
        .await
        .unwrap();
    let client = Client::from_ws(ws).await;
    assert_eq!(client.hello["user"], "alice");

    let mut req = server.ws_url("").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {good}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let client = Client::from_ws(ws).await;
    let hello = &client.hello;
    assert_eq!(hello["user"], "alice");
    assert!(hello["shard"].as_u64().unwrap() < 2);
    assert!(hello["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(hello["instance"].is_string());
    assert!(hello["heartbeat_ms"].as_u64().unwrap() > 0);
    for limit in [
        "body_bytes_max",
        "frame_bytes_max",
        "outbound_queue_bytes_max",
    ] {
        assert!(
            hello["limits"][limit].as_u64().unwrap() > 0,
            "{limit} in {hello}"
        );
    }
}

#[test]
fn dev_mode_refuses_a_public_address_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sokdo"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jwt-secret"), "{err}");
}
