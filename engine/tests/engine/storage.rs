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

/// A disk whose `fdatasync`s fail while `write`s succeed: ext4 (no journal, so that a failed
/// write-back does not turn it read-only) on a loop device whose backing file is sparse and
/// lives on a small tmpfs. Filling that tmpfs makes the loop device fail every write to a
/// block not yet allocated in the backing file ("critical space allocation error"), like a
/// thin-provisioned volume out of space: ext4 still has room, so `write` succeeds into the
/// page cache, and the write-back — what `fdatasync` waits for — fails. (device-mapper's
/// `error`/`flakey` targets would be the textbook tool; this machine's kernel has no
/// device-mapper driver, docs/PERSISTENCE.md.)
///
/// Every request to the loop device is one 4 KiB page of the backing file (4 KiB filesystem
/// blocks, `max_sectors_kb` 4): the loop driver completes a write whose backing-file write
/// came back *short* as a success (`lo_complete_rq` fails only a negative result), so a
/// request spanning an allocated page and a hole of the full tmpfs would be reported written
/// with its tail lost — a lying device, not a failing one (docs/PERSISTENCE.md, "A failing
/// `fdatasync`"). One page per request either is written whole or fails.
struct FailingDisk {
    back: Tmpfs,
    mnt: PathBuf,
    loop_dev: String,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (this test needs root, losetup and mkfs.ext4, as in CI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl FailingDisk {
    fn new() -> FailingDisk {
        let back = Tmpfs::mount("loop-back", "40m");
        let image = back.dir.join("disk.img");
        let image = image.to_str().unwrap();
        run("truncate", &["-s", "64M", image]);
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-b",
                "4096",
                "-O",
                "^has_journal",
                "-E",
                "lazy_itable_init=0",
                image,
            ],
        );
        let loop_dev = run("losetup", &["--find", "--show", image]);
        let limit = format!(
            "/sys/block/{}/queue/max_sectors_kb",
            loop_dev.trim_start_matches("/dev/")
        );
        std::fs::write(&limit, "4").expect("limit the loop device's requests to one page");
        let set = std::fs::read_to_string(&limit).unwrap();
        assert_eq!(set.trim(), "4", "{limit}: requests of one page");
        let mnt = temp_dir("loop-ext4");
        let disk = FailingDisk {
            back,
            mnt,
            loop_dev,
        };
        disk.mount();
        disk
    }

    fn mount(&self) {
        let mnt = self.mnt.to_str().unwrap();
        run("mount", &["-o", "errors=continue", &self.loop_dev, mnt]);
    }

    /// Unmounts and mounts again: what is read afterwards comes from the device, not from
    /// pages cached before.
    fn remount(&self) {
        run("umount", &[self.mnt.to_str().unwrap()]);
        self.mount();
    }

    fn fail_writebacks(&self) {
        self.back.fill(&self.back.dir.join("filler"));
    }

    fn heal(&self) {
        std::fs::remove_file(self.back.dir.join("filler")).unwrap();
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

/// `fdatasync` fails (the write-back of the log's pages fails) while the server runs: no
/// group whose sync failed is acknowledged, sends are refused `unavailable` while it lasts,
/// `/metrics` and the log say so, the server recovers by itself once the device takes
/// writes, and after a restart on a remounted disk (what is read is what reached the
/// device) every acknowledged message is there.
#[tokio::test]
async fn failing_fdatasync_refuses_sends_and_loses_no_acknowledged_one() {
    failing_fdatasync_story("sync").await;
}

/// Under `async` the sends were acknowledged after the write, before the sync that then
/// fails: the log writes them again through a new descriptor rather than retrying the sync
/// (which could report success for pages the kernel dropped), so none is lost.
#[tokio::test]
async fn failing_fdatasync_under_async_durability_loses_no_acknowledged_send() {
    failing_fdatasync_story("async").await;
}

async fn failing_fdatasync_story(durability: &str) {
    let disk = FailingDisk::new();
    let data = disk.mnt.join("data");
    let args = ["--durability", durability, "--wal-segment-bytes", "1048576"];
    let env = [("SOKDO_LOG", "warn,sokdo_persistence=info")];
    let server = Server::start_with_env(&data, &args, &env);
    let mut c = Client::connect(&server, "ann").await;
    c.ok(json!({"op": "join", "room": "disk"})).await;
    let (mut acked, refused) = send_burst(&mut c, "disk", "before", 20).await;
    assert!(
        refused.is_empty(),
        "a healthy disk takes every send: {refused:?}"
    );

    disk.fail_writebacks();
    let mut bursts = 0;
    while server.metric("sokdo_wal_write_failing") != 1.0 {
        let (ok, refused) = send_burst(&mut c, "disk", &format!("fault{bursts}"), 40).await;
        acked.extend(ok);
        for r in &refused {
            assert_eq!(r["code"], "unavailable", "{r}");
        }
        bursts += 1;
        assert!(bursts < 200, "the log never saw its writes fail");
    }
    let reply = c
        .request(json!({"op": "send", "room": "disk", "body": "late"}))
        .await;
    assert_eq!(
        reply["code"], "unavailable",
        "refused while failing: {reply}"
    );
    assert_eq!(server.get("/readyz").0, 503);
    assert!(server.metric("sokdo_wal_write_errors_total") >= 1.0);
    let lines = server.log_lines("the write-ahead log cannot be written");
    assert_eq!(
        lines.len(),
        1,
        "one line on the change to failing: {lines:?}"
    );

    disk.heal();
    eventually("/readyz is 200 again", || server.get("/readyz").0 == 200).await;
    assert_eq!(server.metric("sokdo_wal_write_failing"), 0.0);
    let (ok, refused) = send_burst(&mut c, "disk", "after", 20).await;
    assert!(refused.is_empty(), "sends are accepted again: {refused:?}");
    acked.extend(ok);
    assert_all_acked_in_history(&mut c, "disk", &acked).await;

    drop(c);
    drop(server);
    disk.remount();
    let server = Server::start_with_env(&data, &args, &env);
    let mut c = Client::connect(&server, "ann").await;
    c.ok(json!({"op": "join", "room": "disk"})).await;
    assert_all_acked_in_history(&mut c, "disk", &acked).await;
}
