//! A full or failing disk under the write-ahead log: refused sends are told why, readiness
//! drops, and the server recovers by itself once space is back — losing no acknowledged
//! message. The disk is a small tmpfs the test mounts (the test needs root, as CI has).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{eventually, temp_dir, Client, Server};

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(what: &str, size: &str) -> Tmpfs {
        let dir = temp_dir(what);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "could not mount a {size} tmpfs on {} (this test needs root, as in CI): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    /// Writes `path` until the filesystem is full; returns the bytes written.
    fn fill(&self, path: &Path) -> u64 {
        let mut file = std::fs::File::create(path).expect("create the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server that failed the test may still hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Sends `n` messages without waiting in between, then reads the `n` replies: `(seq, body)`
/// of each one acknowledged, and each error reply.
async fn send_burst(
    c: &mut Client,
    room: &str,
    tag: &str,
    n: u64,
) -> (Vec<(u64, String)>, Vec<Value>) {
    let body = |i: u64| format!("{tag}-{i}-{}", "x".repeat(1000));
    for i in 0..n {
        let req = json!({"op": "send", "id": format!("{tag}-{i}"), "room": room, "body": body(i)});
        c.send_raw(&req.to_string()).await;
    }
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while (acked.len() + refused.len()) < n as usize {
        let reply = c.recv().await;
        let Some(id) = reply["id"].as_str() else {
            continue; // an event (our own `msg`)
        };
        let i: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        match reply["op"].as_str() {
            Some("ok") => acked.push((reply["seq"].as_u64().unwrap(), body(i))),
            _ => refused.push(reply),
        }
    }
    (acked, refused)
}

/// Every message of `room` by seq.
async fn history(c: &mut Client, room: &str) -> BTreeMap<u64, String> {
    let all = crate::durability::full_history(c, room).await;
    all.iter()
        .map(|m| {
            let body = m["body"].as_str().unwrap_or_default().to_string();
            (m["seq"].as_u64().unwrap(), body)
        })
        .collect()
}

/// Every acknowledged message is in the room's history, and its seqs have no gap.
async fn assert_all_acked_in_history(c: &mut Client, room: &str, acked: &[(u64, String)]) {
    let stored = history(c, room).await;
    for (seq, body) in acked {
        assert_eq!(
            stored.get(seq),
            Some(body),
            "acked message {seq} is in history"
        );
    }
    let seqs: Vec<u64> = stored.keys().copied().collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "history's seqs are 1..=n without a gap");
    assert_eq!(stored.len(), acked.len(), "only acked messages are stored");
}

/// While the log fails: a send is refused at once, `/readyz` says why, `/healthz` stays 200,
/// the metrics show it, and the log has said so once.
async fn assert_failing_is_reported(server: &Server, c: &mut Client) {
    eventually("the log is failing", || {
        server.metric("sokdo_wal_write_failing") == 1.0
    })
    .await;
    let reply = c
        .request(json!({"op": "send", "room": "disk", "body": "late"}))
        .await;
    assert_eq!(
        reply["message"], FAILING,
        "a send while failing is refused at once: {reply}"
    );
    let (status, text) = server.http(
        "POST",
        "/api/rooms/disk/messages",
        &[("X-Api-Key", "k3y")],
        r#"{"body":"from a back end","from":"bot"}"#,
    );
    assert_eq!(status, 503, "the publish API is refused too: {text}");
    assert!(text.contains(FAILING), "{text}");
    let (status, body) = server.get("/readyz");
    assert_eq!(
        (status, body.trim()),
        (503, FAILING.trim_end_matches(": retry later"))
    );
    assert_eq!(
        server.get("/healthz").0,
        200,
        "the process still serves reads"
    );
    assert!(server.metric("sokdo_wal_write_errors_total") >= 1.0);
    let lines = server.log_lines("the write-ahead log cannot be written");
    assert_eq!(
        lines.len(),
        1,
        "one line on the change to failing: {lines:?}"
    );
    assert!(lines[0].contains("No space left on device"), "{}", lines[0]);
}

const FAILING: &str = "the message log cannot be written (No space left on device): retry later";

#[tokio::test]
async fn a_full_disk_refuses_sends_clearly_and_recovers_without_a_restart() {
    full_disk_story("sync").await;
}

/// Under `async` the sends in flight when the disk fills were acknowledged already: their
/// records are held and written once space is back, so they are not lost either.
#[tokio::test]
async fn a_full_disk_under_async_durability_loses_no_acknowledged_send() {
    full_disk_story("async").await;
}

async fn full_disk_story(durability: &str) {
    let fs = Tmpfs::mount("tmpfs-full", "4m");
    let data = fs.dir.join("data");
    let args = [
        "--durability",
        durability,
        "--wal-segment-bytes",
        "65536",
        "--api-key",
        "k3y",
    ];
    let env = [("SOKDO_LOG", "warn,sokdo_persistence=info")];
    let server = Server::start_with_env(&data, &args, &env);
    let mut c = Client::connect(&server, "ann").await;
    c.ok(json!({"op": "join", "room": "disk"})).await;
    let (mut acked, refused) = send_burst(&mut c, "disk", "before", 20).await;
    assert!(
        refused.is_empty(),
        "a disk with room takes every send: {refused:?}"
    );

    fs.fill(&fs.dir.join("filler"));
    let (ok, refused) = send_burst(&mut c, "disk", "full", 60).await;
    acked.extend(ok);
    if durability == "sync" {
        assert!(!refused.is_empty(), "a full disk refuses sends in flight");
    }
    for r in &refused {
        assert_eq!(r["code"], "unavailable", "{r}");
        assert_eq!(r["message"], FAILING, "{r}");
    }
    assert_failing_is_reported(&server, &mut c).await;

    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    eventually("/readyz is 200 again", || server.get("/readyz").0 == 200).await;
    assert_eq!(server.metric("sokdo_wal_write_failing"), 0.0);
    assert_eq!(
        server
            .log_lines("the write-ahead log is written again")
            .len(),
        1
    );
    let (ok, refused) = send_burst(&mut c, "disk", "after", 20).await;
    assert!(refused.is_empty(), "sends are accepted again: {refused:?}");
    acked.extend(ok);
    assert_all_acked_in_history(&mut c, "disk", &acked).await;

    // The log holds exactly what was acknowledged: a restart replays no torn or refused frame.
    drop(c);
    drop(server);
    let server = Server::start_with_env(&data, &args, &env);
    let mut c = Client::connect(&server, "ann").await;
    c.ok(json!({"op": "join", "room": "disk"})).await;
    assert_all_acked_in_history(&mut c, "disk", &acked).await;
}
