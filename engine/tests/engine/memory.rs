//! Memory by budget (issue 14): what a process holds before its first connection.

use crate::support::*;

/// Anonymous resident memory of `pid` (heap, stacks, queues): RSS less the binary's and the
/// libraries' file pages, which depend on the build, not on what the server allocates.
fn anon_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/PID/status has RssAnon");
    kb * 1024
}

/// A process of two shards that serves nothing yet holds little memory: the mesh's
/// queues, the persistence queues and glommio's I/O memory are allocated by use, not by
/// capacity, and the allocator does not back its arena with 2 MiB pages. Before, the same
/// process held ≈ 75 MB (each of the four 65,536-message mesh queues and the append queue
/// written through at start, 10 MiB of I/O memory per shard, huge pages).
#[tokio::test]
async fn an_idle_process_holds_little_anonymous_memory() {
    let server = Server::start(&[]);
    // Served a request: every shard and persistence thread is up.
    assert_eq!(server.get("/readyz").0, 200);
    let anon = anon_rss_bytes(server.pid());
    assert!(
        anon < 16 << 20,
        "an idle process of 2 shards holds {anon} bytes of anonymous memory (bound 16 MiB)"
    );
}
