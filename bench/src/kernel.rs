//! Kernel limits that bound a loopback run of many connections: the ephemeral port range (per
//! source address and destination, see `worker::connect`), the listen backlog cap, and the
//! connection-tracking table. Read them, raise the last two when they are too low and we may
//! (`sysctl -w` as root), and say what was changed or what will limit the run. Also what the
//! bench reads about the host and its processes (CPUs online, a process's RSS from /proc).
//!
//! A leaf: it imports no other module of the bench, so any of them may read the host.

use std::path::Path;

/// The smallest listen backlog cap the bench wants: a step's new users arrive at once.
const SOMAXCONN_MIN: u64 = 4096;

fn read(key: &str) -> Option<String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_u64(key: &str) -> Option<u64> {
    read(key)?.split_whitespace().next()?.parse().ok()
}

/// Raises `key` to `want` when it is lower; prints what it changed (or could not).
fn raise(key: &str, want: u64) {
    let Some(have) = read_u64(key) else { return };
    if have >= want {
        return;
    }
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    match std::fs::write(&path, want.to_string()) {
        Ok(()) => eprintln!("kernel: sysctl -w {key}={want} (was {have})"),
        Err(e) => eprintln!(
            "warning: {key} is {have}, below the {want} wanted, and cannot be raised: {e}"
        ),
    }
}

/// Checks (and where needed raises) the limits for `users` connections from workers holding
/// at most `users_per_worker` each, one source address per worker.
pub fn prepare(users: u64, users_per_worker: u64) {
    if let Some(range) = read("net.ipv4.ip_local_port_range") {
        let mut it = range
            .split_whitespace()
            .filter_map(|v| v.parse::<u64>().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            let ports = hi.saturating_sub(lo) + 1;
            if users_per_worker > ports {
                eprintln!(
                    "warning: ip_local_port_range {lo}-{hi} gives {ports} ports per source \
                     address and server, fewer than the {users_per_worker} users of a worker"
                );
            }
        }
    }
    raise("net.core.somaxconn", SOMAXCONN_MIN);
    raise("net.ipv4.tcp_max_syn_backlog", SOMAXCONN_MIN);
    // Loopback connections are tracked when conntrack is loaded: room for both directions'
    // entries of every user, with a margin.
    if read_u64("net.netfilter.nf_conntrack_max").is_some() {
        raise("net.netfilter.nf_conntrack_max", users * 5 / 4 + 65_536);
    }
}

/// CPUs online on this machine (not this process's affinity mask), at least 1.
pub fn cpus_online() -> usize {
    // SAFETY: sysconf only reads a system constant.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// Σ VmRSS over a target's processes (those still alive); `None` when none can be read.
pub fn servers_rss(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .filter_map(|p| rss_bytes(*p))
        .fold(None, |acc, r| Some(acc.unwrap_or(0) + r))
}

/// VmRSS of a local process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
