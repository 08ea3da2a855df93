//! `GET /debug/pprof/profile` (docs/PROFILING.md): an on-demand CPU profile of a running
//! instance, behind the API key, one at a time, sampled off the shards.

use std::io::{Read, Write};

use serde_json::json;

use crate::support::{clients_on_both_shards, eventually, Client, Server, WAIT};

const KEY: (&str, &str) = ("X-Api-Key", "k3y");

/// One raw HTTP/1.1 request; the status, the head and the body as bytes (a protobuf is not
/// UTF-8). The wait covers the profile's window and its rendering, which symbolises the
/// stacks against a 200 MB debug build: seconds, more on a loaded machine.
fn fetch(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(3 * WAIT)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head[9..12].parse().expect("status code");
    (status, head, out[split + 4..].to_vec())
}

#[tokio::test]
async fn the_profile_endpoint_is_behind_the_api_key_and_checks_its_parameters() {
    let server = Server::start(&["--api-key", "k3y"]);
    let (status, _, body) = fetch(&server, "/debug/pprof/profile?seconds=1", &[]);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let wrong = [("X-Api-Key", "nope")];
    assert_eq!(
        fetch(&server, "/debug/pprof/profile?seconds=1", &wrong).0,
        401
    );
    for (query, why) in [
        ("seconds=0", "1..=60"),
        ("seconds=61", "1..=60"),
        ("seconds=abc", "1..=60"),
        ("seconds=1&format=png", "svg, pb or folded"),
        ("seconds=1&hz=0", "1..=1000"),
    ] {
        let (status, _, body) = fetch(&server, &format!("/debug/pprof/profile?{query}"), &[KEY]);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(why), "{query}: {body}");
    }
    assert_eq!(fetch(&server, "/debug/pprof/heap", &[KEY]).0, 404);
    // Nothing was sampled: every refusal came before a profile started.
    assert_eq!(server.metric("sokdo_debug_profiles_total"), 0.0);
}

#[tokio::test]
async fn without_an_api_key_or_when_turned_off_there_is_no_profile_endpoint() {
    let server = Server::start(&[]);
    let (status, _, body) = fetch(&server, "/debug/pprof/profile?seconds=1", &[KEY]);
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("--api-key"));
    let server = Server::start(&["--api-key", "k3y", "--debug-endpoints", "false"]);
    let (status, _, body) = fetch(&server, "/debug/pprof/profile?seconds=1", &[KEY]);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("--debug-endpoints"));
}

#[tokio::test]
async fn one_profile_at_a_time() {
    let server = std::sync::Arc::new(Server::start(&["--api-key", "k3y"]));
    let first = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            fetch(
                &server,
                "/debug/pprof/profile?seconds=3&format=folded",
                &[KEY],
            )
        })
    };
    eventually("the first profile to run", || {
        server.metric("sokdo_debug_profile_running") == 1.0
    })
    .await;
    let (status, _, body) = fetch(&server, "/debug/pprof/profile?seconds=1", &[KEY]);
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("already running"));
    let (status, _, _) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(server.metric("sokdo_debug_profile_running"), 0.0);
    // Once it is over, the next one runs.
    let (status, _, _) = fetch(
        &server,
        "/debug/pprof/profile?seconds=1&format=folded",
        &[KEY],
    );
    assert_eq!(status, 200);
    assert_eq!(server.metric("sokdo_debug_profiles_total"), 2.0);
}

/// Clients on both shards chat while `path` is fetched; returns its answer and how many
/// messages the clients exchanged meanwhile (each one answered and delivered).
async fn chat_during(server: &std::sync::Arc<Server>, path: &str) -> ((u16, String, Vec<u8>), u64) {
    let mut clients = clients_on_both_shards(server, 2).await;
    for c in &mut clients {
        c.ok(json!({"op": "join", "room": "busy"})).await;
    }
    let profile = {
        let (server, path) = (server.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || fetch(&server, &path, &[KEY]))
    };
    let mut sent = 0u64;
    while !profile.is_finished() {
        for i in 0..clients.len() {
            let body = format!("m{sent}");
            clients[i]
                .ok(json!({"op": "send", "room": "busy", "body": body}))
                .await;
            for c in &mut clients {
                let msg = c.event_of("msg").await;
                assert_eq!(msg["body"], body);
            }
            sent += 1;
        }
    }
    (profile.await.unwrap(), sent)
}

#[tokio::test]
async fn a_profile_while_clients_chat_names_the_shards_and_their_functions() {
    let server = std::sync::Arc::new(Server::start(&["--api-key", "k3y"]));
    let ((status, head, body), sent) =
        chat_during(&server, "/debug/pprof/profile?seconds=1&format=folded").await;
    let folded = String::from_utf8(body).expect("folded stacks are text");
    assert_eq!(status, 200, "{folded}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert!(sent > 0, "the clients were served during the profile");
    // Both glommio threads took SIGPROF: each shard's thread is a root of the stacks.
    let samples = |thread: &str| -> u64 {
        folded
            .lines()
            .filter(|l| l.starts_with(thread))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    for shard in ["sokdo-shard-0", "sokdo-shard-1"] {
        assert!(
            samples(shard) > 0,
            "no stack of {shard} ({} samples in all, {sent} messages):\n{folded}",
            samples("")
        );
    }
    assert!(folded.contains("sokdo_engine::shard::"), "{folded}");

    let ((status, head, body), _) = chat_during(&server, "/debug/pprof/profile?seconds=1").await;
    let svg = String::from_utf8(body).expect("an SVG is text");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: image/svg+xml"), "{head}");
    assert!(svg.contains("<svg"), "{svg}");
    assert!(
        svg.contains("sokdo_engine::shard::"),
        "no shard frame in the SVG"
    );
    // The client is still served after the profiles.
    let mut c = Client::connect(&server, "late").await;
    c.ok(json!({"op": "join", "room": "busy"})).await;
}

#[tokio::test]
async fn a_protobuf_profile_decodes_as_pprof() {
    use pprof::protos::Message;
    let server = std::sync::Arc::new(Server::start(&["--api-key", "k3y"]));
    let ((status, head, body), _) =
        chat_during(&server, "/debug/pprof/profile?seconds=1&format=pb").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        head.contains("Content-Type: application/octet-stream"),
        "{head}"
    );
    // gzip'd like Go's own /debug/pprof/profile, which `go tool pprof` reads.
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip header");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut raw)
        .expect("gunzip");
    let profile = pprof::protos::Profile::decode(&raw[..]).expect("a pprof Profile");
    assert!(!profile.sample.is_empty(), "no sample");
    let names: Vec<&str> = profile
        .function
        .iter()
        .filter_map(|f| {
            profile
                .string_table
                .get(f.name as usize)
                .map(String::as_str)
        })
        .collect();
    assert!(
        names.iter().any(|n| n.contains("sokdo_engine::shard::")),
        "no shard function in {names:?}"
    );
    let unit = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (unit(t.ty), unit(t.unit)))
        .collect();
    assert!(types.contains(&("cpu", "nanoseconds")), "{types:?}");
}
