//! Tokens are checked before the upgrade: 401 and nothing allocated per user.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{eventually, now_secs, temp_dir, Client, Server};

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

// === Hardening (issue 15): claims, algorithms, expiry of open connections, refresh ===

/// A test-only key under `tests/engine/keys/` (keys/README.md).
fn key_path(name: &str) -> String {
    format!("{}/tests/engine/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn signed(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    encode(header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    signed(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn rs(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_der(include_bytes!("keys/rsa-private.der"));
    signed(&Header::new(Algorithm::RS256), claims, &key)
}

fn es(claims: &Value) -> String {
    let key = EncodingKey::from_ec_der(include_bytes!("keys/ec-private.der"));
    signed(&Header::new(Algorithm::ES256), claims, &key)
}

/// base64url without padding (RFC 7515 §2), for tokens no library would make.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `{"alg":"none"}` with an empty signature.
fn unsigned(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64url(claims.to_string().as_bytes()))
}

/// An HS256 token "signed" with the bytes of the server's RSA public key as the secret.
fn hs_with_public_key_bytes(claims: &Value) -> String {
    let pem = std::fs::read(key_path("rsa-public.pem")).unwrap();
    signed(&Header::default(), claims, &EncodingKey::from_secret(&pem))
}

fn claims(sub: &str, exp: u64) -> Value {
    json!({"sub": sub, "exp": exp})
}

async fn connect_with(server: &Server, token: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(&format!("token={token}")))
        .await
        .expect("upgrade");
    Client::from_ws(ws).await
}

async fn refused_token(server: &Server, token: &str) -> (u16, String) {
    let (status, body) = refused(server.ws_url(&format!("token={token}"))).await;
    (status, body.trim().to_owned())
}

#[tokio::test]
async fn nbf_iat_and_crit_are_checked_with_the_leeway() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let now = now_secs();
    let early = hs(&json!({"sub": "alice", "exp": now + 600, "nbf": now + 300}));
    assert_eq!(
        refused_token(&server, &early).await,
        (401, "token not yet valid".into())
    );
    let future = hs(&json!({"sub": "alice", "exp": now + 600, "iat": now + 300}));
    assert_eq!(
        refused_token(&server, &future).await,
        (401, "token issued in the future".into())
    );
    let header = Header {
        crit: Some(vec!["exp".into()]),
        ..Header::default()
    };
    let crit = signed(
        &header,
        &claims("alice", now + 600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let (status, body) = refused_token(&server, &crit).await;
    assert_eq!(status, 401);
    assert!(body.contains("`crit`"), "{body}");
    // A clock 20 s ahead of ours, a token expired 20 s ago: outside the default 5 s
    // leeway, inside a 30 s one.
    let skewed = hs(&json!({"sub": "alice", "exp": now + 600, "nbf": now + 20, "iat": now + 20}));
    let just_expired = hs(&claims("alice", now - 20));
    assert_eq!(
        refused_token(&server, &skewed).await,
        (401, "token not yet valid".into())
    );
    assert_eq!(
        refused_token(&server, &just_expired).await,
        (401, "token expired".into())
    );
    let lenient = Server::start(&["--jwt-secret", SECRET, "--jwt-leeway-s", "30"]);
    assert_eq!(connect_with(&lenient, &skewed).await.hello["user"], "alice");
    assert_eq!(
        connect_with(&lenient, &just_expired).await.hello["user"],
        "alice"
    );
}

#[tokio::test]
async fn a_connection_is_closed_4001_when_its_token_expires() {
    let server = Server::start(&["--jwt-secret", SECRET, "--jwt-leeway-s", "1"]);
    let exp = now_secs() + 4;
    let mut short = connect_with(&server, &hs(&claims("alice", exp))).await;
    let mut long = connect_with(&server, &hs(&claims("bob", now_secs() + 3600))).await;
    long.ok(json!({"op": "join", "room": "r"})).await;
    short.ok(json!({"op": "join", "room": "r"})).await;
    assert_eq!(short.closed().await, (4001, "token expired".into()));
    assert!(
        now_secs() > exp + 1,
        "closed after exp + leeway, not before"
    );
    assert_eq!(short.hello["exp"], exp, "hello carries the token's exp");
    // The other client is still served.
    long.ok(json!({"op": "send", "room": "r", "body": "still here"}))
        .await;
    long.ok(json!({"op": "ping"})).await;
}

#[tokio::test]
async fn refresh_moves_the_deadline_and_keeps_the_user() {
    let server = Server::start(&["--jwt-secret", SECRET, "--jwt-leeway-s", "0"]);
    let start = now_secs();
    let mut client = connect_with(&server, &hs(&claims("alice", start + 4))).await;
    // Expires one second after the client's old token: once it is closed, the client's old
    // deadline has passed on every shard.
    let mut witness = connect_with(&server, &hs(&claims("carol", start + 5))).await;

    let bad = |reply: &Value, code: &str| {
        assert_eq!(reply["op"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
    };
    let r = client.request(json!({"op": "refresh"})).await;
    bad(&r, "bad_request");
    let r = client
        .request(json!({"op": "refresh", "token": "not.a.jwt"}))
        .await;
    bad(&r, "unauthorized");
    let wrong_sig = token("wrong", "alice", start + 3600);
    let r = client
        .request(json!({"op": "refresh", "token": wrong_sig}))
        .await;
    bad(&r, "unauthorized");
    assert!(r["message"].as_str().unwrap().contains("signature"), "{r}");
    let expired = hs(&claims("alice", start - 60));
    let r = client
        .request(json!({"op": "refresh", "token": expired}))
        .await;
    bad(&r, "unauthorized");
    let other_user = hs(&claims("mallory", start + 3600));
    let r = client
        .request(json!({"op": "refresh", "token": other_user}))
        .await;
    bad(&r, "forbidden");

    let fresh_exp = start + 3600;
    let reply = client
        .ok(json!({"op": "refresh", "token": hs(&claims("alice", fresh_exp))}))
        .await;
    assert_eq!(reply["exp"], fresh_exp, "{reply}");

    assert_eq!(witness.closed().await, (4001, "token expired".into()));
    let pong = client.ok(json!({"op": "ping"})).await;
    assert_eq!(pong["pong"], true, "{pong}");
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let now = now_secs();
    let c = claims("alice", now + 600);

    let rs_token = rs(&c);
    let rsa = Server::start(&["--jwt-public-key-file", &key_path("rsa-public.pem")]);
    assert_eq!(connect_with(&rsa, &rs_token).await.hello["user"], "alice");
    for (what, token) in [
        (
            "HS256 keyed with the public key",
            hs_with_public_key_bytes(&c),
        ),
        ("alg none", unsigned(&c)),
        ("ES256 with no EC key", es(&c)),
        ("HS256 with no secret", hs(&c)),
    ] {
        let (status, body) = refused_token(&rsa, &token).await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    let ec = Server::start(&["--jwt-public-key-file", &key_path("ec-public.pem")]);
    assert_eq!(connect_with(&ec, &es(&c)).await.hello["user"], "alice");
    let (status, body) = refused_token(&ec, &rs_token).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "token algorithm is not accepted by this server")
    );

    let hmac = Server::start(&["--jwt-secret", SECRET]);
    for (what, token) in [("RS256", rs_token.clone()), ("alg none", unsigned(&c))] {
        let (status, body) = refused_token(&hmac, &token).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    // Both keys: each algorithm verifies with its own key only.
    let both = Server::start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-public-key-file",
        &key_path("rsa-public.pem"),
    ]);
    assert_eq!(connect_with(&both, &hs(&c)).await.hello["user"], "alice");
    assert_eq!(connect_with(&both, &rs_token).await.hello["user"], "alice");
    let (status, _) = refused_token(&both, &hs_with_public_key_bytes(&c)).await;
    assert_eq!(status, 401);
}

#[test]
fn a_public_key_of_the_wrong_type_is_refused_at_start_naming_the_flag() {
    for (file, why) in [
        (key_path("ed25519-public.pem"), "unsupported key type"),
        (key_path("p384-public.pem"), "unsupported key type"),
        (key_path("rsa-private.der"), "not a PEM public key"),
        (key_path("no-such-file.pem"), "reading"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sokdo"))
            .args(["--listen", "127.0.0.1:0", "--jwt-public-key-file", &file])
            .arg("--data-dir")
            .arg(temp_dir("bad-key"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--jwt-public-key-file"), "{file}: {err}");
        assert!(err.contains(why), "{file}: {err}");
    }
}

#[tokio::test]
async fn user_ids_with_invisible_characters_are_refused() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let exp = now_secs() + 600;
    for sub in [
        "ali\u{200b}ce",  // zero-width space (Cf)
        "\u{202e}ecila",  // right-to-left override (Cf)
        "a\u{00ad}b",     // soft hyphen (Cf)
        "ali\u{3164}ce",  // Hangul filler (Lo, invisible)
        "ali\u{00a0}ce",  // no-break space
        "ali\u{feff}",    // byte order mark (Cf)
        "e\u{0301}lodie", // not NFC (é decomposed)
    ] {
        let (status, body) = refused_token(&server, &hs(&claims(sub, exp))).await;
        assert_eq!(status, 401, "{sub:?}");
        assert!(body.contains("user id"), "{sub:?}: {body}");
    }
    for sub in ["alice", "al ice", "앨리스", "\u{e9}lodie", "bob.o'neil+1"] {
        let client = connect_with(&server, &hs(&claims(sub, exp))).await;
        assert_eq!(client.hello["user"], sub);
    }
    // Development mode's ?user= follows the same rule.
    let dev = Server::start(&[]);
    let (status, _) = refused(dev.ws_url("user=ali%E2%80%8Bce")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let dir = temp_dir("token-log");
    let server = Server::start_with_env(&dir, &["--jwt-secret", SECRET], &[("SOKDO_LOG", "trace")]);
    let now = now_secs();
    let good = hs(&claims("alice", now + 600));
    let fresh = hs(&claims("alice", now + 1200));
    let forged = token("wrong", "alice", now + 600);
    let expired = hs(&claims("alice", now - 600));
    let short = hs(&claims("alice", now + 3));
    let mut tokens = vec![good.clone(), fresh.clone(), forged.clone(), expired.clone()];
    tokens.push(short.clone());

    refused_token(&server, &forged).await;
    refused_token(&server, &expired).await;
    let mut client = connect_with(&server, &good).await;
    client.ok(json!({"op": "refresh", "token": fresh})).await;
    client
        .request(json!({"op": "refresh", "token": forged}))
        .await;
    let mut req = server.ws_url("").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {good}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    Client::from_ws(ws).await;
    let mut expiring = connect_with(&server, &short).await;
    assert_eq!(expiring.closed().await.0, 4001);
    eventually("the server to log something", || {
        !server.log_lines("").is_empty()
    })
    .await;

    for t in &tokens {
        let signature = t.rsplit('.').next().unwrap();
        assert!(server.log_lines(t).is_empty(), "token in the log");
        assert!(
            server.log_lines(signature).is_empty(),
            "signature in the log"
        );
    }
}
