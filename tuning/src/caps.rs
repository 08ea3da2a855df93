//! From a `host::Host` to the caps on sockets (concurrent WebSocket connections of one
//! sokdo process), each with how many sockets it allows and the exact command that lifts
//! it, ordered lowest first. Pure: no I/O, so a test can drive it with any `Host`.
//!
//! sokdo is known here only as text (its flags, its listen backlog, glommio's needs): the
//! tuning crate never links engine code.

use crate::host::{Host, Limit};
use serde::Serialize;

/// User-space bytes of one idle connection (upgraded, joined to a room of 50): 2,598 B,
/// docs/BENCHMARKS.md (issue 11's idle run, 5,000 connections). A chatting user costs more
/// (its rooms' history rings grow with messages): that is the capacity model's job (`fit`).
pub const USER_BYTES_PER_CONNECTION: u64 = 2_598;
/// sokdo's RSS before its first connection: 11.7 MB with `--shards 1`, 12.6 MB with
/// `--shards 2` since issue 14's cut (docs/BENCHMARKS.md "Issue 14: memory by budget", from 57–62 MB:
/// the mesh and append queues allocate by use, glommio's I/O memory is its floor, mimalloc
/// without transparent huge pages). Rounded up to 13 MB.
pub const SOKDO_BASELINE_BYTES: u64 = 13_000_000;
/// File descriptors a sokdo process holds besides its sockets: stdio, one listener and three
/// io_uring rings plus an eventfd per shard, the write-ahead log's segments, the store.
pub const FDS_RESERVED: u64 = 100;
/// glommio 0.9 refuses to start a shard when RLIMIT_MEMLOCK is below 512 KiB
/// (`sys/uring.rs`, `MIN_MEMLOCK_LIMIT`).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// glommio registers a shard's I/O memory with each of its three rings; without
/// CAP_IPC_LOCK the kernel counts each registration against RLIMIT_MEMLOCK, and below it
/// glommio logs a warning and uses unregistered buffers. sokdo sets the I/O memory to
/// glommio's 64 KiB floor (`SHARD_IO_MEMORY_BYTES` in engine/src/server.rs, issue 14; it was
/// glommio's 10 MiB `DEFAULT_IO_MEMORY` before): 3 × 64 KiB.
pub const GLOMMIO_MEMLOCK_PER_SHARD_BYTES: u64 = 3 * (64 << 10);
/// Open files `fs.file-max` leaves to the rest of the host besides sokdo's. A constant, not
/// the files open now, so that `apply`'s text does not change from run to run.
pub const FILES_OTHERS: u64 = 65_536;
/// sokdo listens with a backlog of 4,096 per shard (the kernel takes min(this, somaxconn)).
pub const SOKDO_LISTEN_BACKLOG: u64 = 4_096;

/// One cap, as printed and as serialized by `probe --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Cap {
    pub name: String,
    pub value: String,
    /// Concurrent sockets this cap allows; `None` when it does not cap their number (it caps
    /// a burst, a rate, or nothing).
    pub sockets_allowed: Option<u64>,
    pub liftable: bool,
    /// The exact command that lifts it, or why it cannot be lifted here.
    pub fix: String,
    /// `process`, `host`, `outbound per destination`, `burst`, `start-up`, `cpu`.
    pub scope: String,
    pub note: String,
}

impl Cap {
    /// A cap on no count, with nothing to do, scoped to the process, until told otherwise.
    fn new(name: &str, value: String) -> Self {
        Cap {
            name: name.into(),
            value,
            sockets_allowed: None,
            liftable: true,
            fix: NOTHING_TO_DO.into(),
            scope: "process".into(),
            note: String::new(),
        }
    }
    fn sockets(mut self, sockets: Option<u64>) -> Self {
        self.sockets_allowed = sockets;
        self
    }
    fn fix(mut self, (liftable, fix): (bool, String)) -> Self {
        self.liftable = liftable;
        self.fix = fix;
        self
    }
    fn scope(mut self, scope: &str) -> Self {
        self.scope = scope.into();
        self
    }
    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

const NOTHING_TO_DO: &str = "nothing to do";

/// Every cap of `host`, lowest `sockets_allowed` first, then those that cap no count.
/// `shards` is how many shards sokdo will run (for memlock and the accept backlog).
pub fn caps(host: &Host, shards: u64) -> Vec<Cap> {
    let wanted = memory_sockets(host);
    let mut all = vec![
        nofile_hard(host, wanted),
        nr_open(host, wanted),
        file_max(host, wanted),
        memory(host),
        tcp_mem(host),
        buffers(host),
        port_range(host),
        conntrack(host, wanted),
        io_uring(host),
        memlock(host, shards),
        cpus(host),
        backlog("net.core.somaxconn", host.somaxconn, host, shards),
        backlog(
            "net.ipv4.tcp_max_syn_backlog",
            host.tcp_max_syn_backlog,
            host,
            shards,
        ),
        thp(host),
    ];
    all.extend(nofile_soft(host));
    // Stable: caps on the same count keep the order above.
    all.sort_by_key(|c| c.sockets_allowed.unwrap_or(u64::MAX));
    all
}

/// Bytes of one idle connection: sokdo's own plus the kernel's socket.
fn idle_connection_bytes(host: &Host) -> u64 {
    USER_BYTES_PER_CONNECTION + host.kernel_socket_bytes
}

/// How many idle connections the memory budget holds (`None` if memory is unknown): the
/// target the liftable caps are lifted to.
pub fn memory_sockets(host: &Host) -> Option<u64> {
    memory_budget(host).map(|b| b / idle_connection_bytes(host))
}

/// min(MemTotal, cgroup limit) − sokdo's baseline. MemTotal, not MemAvailable: the host is
/// sized for sokdo alone, and `apply`'s default must not move with the page cache.
fn memory_budget(host: &Host) -> Option<u64> {
    let total = host.mem_total_bytes?;
    let limit = match host.cgroup_memory_limit_bytes {
        Limit::Value(v) => total.min(v),
        _ => total,
    };
    Some(limit.saturating_sub(SOKDO_BASELINE_BYTES))
}

/// File descriptors to allow for `sockets`, rounded up to 1,024.
pub fn fds_for(sockets: u64) -> u64 {
    (sockets + FDS_RESERVED).div_ceil(1024) * 1024
}

/// Entries the connection-tracking table should hold for `sockets`, with a margin.
pub fn conntrack_for(sockets: u64) -> u64 {
    sockets * 5 / 4 + 65_536
}

/// The open-file limit to set: enough for `wanted` sockets, but no more than `fs.nr_open`
/// allows (that row says how to lift it).
pub fn nofile_target(host: &Host, wanted: Option<u64>) -> u64 {
    fds_for(wanted.unwrap_or(1 << 20)).min(host.fs_nr_open.unwrap_or(1 << 20))
}

/// min(CPUs in the affinity mask, cgroup quota).
pub fn effective_cpus(host: &Host) -> Option<f64> {
    match (host.cpus_in_affinity_mask, host.cgroup_cpu_quota_cpus) {
        (Some(a), Limit::Value(q)) => Some(q.min(f64::from(a))),
        (Some(a), _) => Some(f64::from(a)),
        (None, Limit::Value(q)) => Some(q),
        (None, _) => None,
    }
}

/// One shard per CPU sokdo may use (a fraction of a CPU still gets one shard).
pub fn default_shards(host: &Host) -> u64 {
    effective_cpus(host).map_or(1, |e| e.ceil().max(1.0) as u64)
}

pub fn show(l: Limit<u64>) -> String {
    match l {
        Limit::Unknown => "unknown".into(),
        Limit::Unlimited => "unlimited".into(),
        Limit::Value(v) => v.to_string(),
    }
}

fn show_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Bytes as KiB, for the sizes below a MiB.
pub fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes >> 10)
}

/// Whether a `sysctl -w` can be run here, and the fix to print.
fn sysctl_fix(host: &Host, command: String) -> (bool, String) {
    if host.is_root && host.sysctl_writable {
        (true, command)
    } else if host.is_root {
        let why = "cannot be lifted here: /proc/sys is read-only";
        (
            false,
            format!("{why} (set it on the host or in the container's sysctls: {command})"),
        )
    } else {
        (true, format!("as root: {command}"))
    }
}

/// A sysctl to raise to `target` unless it is there already.
fn sysctl_at_least(host: &Host, key: &str, live: Option<u64>, target: u64) -> (bool, String) {
    if live.is_some_and(|v| v >= target) {
        (true, format!("{NOTHING_TO_DO} (memory caps first)"))
    } else {
        sysctl_fix(host, format!("sysctl -w {key}={target}"))
    }
}

fn nofile_hard(host: &Host, wanted: Option<u64>) -> Cap {
    let n = nofile_target(host, wanted);
    let fix = match host.nofile_hard_raisable {
        Some(false) => (
            false,
            format!(
                "cannot be lifted here: raising the hard limit needs CAP_SYS_RESOURCE, which \
                 this process lacks (setrlimit upward: EPERM); start this environment with a \
                 higher limit (docker run --ulimit nofile={n}:{n}, or LimitNOFILE={n} on the \
                 unit that starts it)"
            ),
        ),
        _ => (
            true,
            format!(
                "LimitNOFILE={n} in the sokdo unit (sokdo-tune apply), or for a running \
                 process: prlimit --pid <sokdo pid> --nofile={n}:{n}"
            ),
        ),
    };
    let sockets = match host.nofile_hard {
        Limit::Value(v) => Some(v.saturating_sub(FDS_RESERVED)),
        _ => None,
    };
    let value = format!(
        "{} (soft {})",
        show(host.nofile_hard),
        show(host.nofile_soft)
    );
    Cap::new("open files, hard limit (RLIMIT_NOFILE)", value)
        .sockets(sockets)
        .fix(fix)
        .note(format!(
            "one fd per socket; {FDS_RESERVED} kept for listeners, rings, log and store"
        ))
}

fn nofile_soft(host: &Host) -> Option<Cap> {
    let (Limit::Value(soft), hard) = (host.nofile_soft, host.nofile_hard) else {
        return None;
    };
    if matches!(hard, Limit::Value(h) if h <= soft) {
        return None;
    }
    let h = show(hard);
    let fix = format!(
        "ulimit -n {h} in the shell that starts sokdo (sokdo does not raise it itself), or \
         LimitNOFILE={h} in its unit"
    );
    let cap = Cap::new("open files, soft limit (RLIMIT_NOFILE)", soft.to_string())
        .sockets(Some(soft.saturating_sub(FDS_RESERVED)))
        .fix((true, fix));
    Some(cap)
}

fn nr_open(host: &Host, wanted: Option<u64>) -> Cap {
    let target = fds_for(wanted.unwrap_or(1 << 20));
    Cap::new(
        "fs.nr_open (per-process fd ceiling)",
        show_opt(host.fs_nr_open),
    )
    .sockets(host.fs_nr_open.map(|v| v.saturating_sub(FDS_RESERVED)))
    .fix(sysctl_at_least(host, "fs.nr_open", host.fs_nr_open, target))
    .note("no open-file hard limit can be set above it")
}

fn file_max(host: &Host, wanted: Option<u64>) -> Cap {
    let used = host.fs_file_nr_allocated.unwrap_or(0);
    let target = fds_for(wanted.unwrap_or(1 << 20)) + FILES_OTHERS;
    let value = format!("{} ({used} in use)", show_opt(host.fs_file_max));
    Cap::new("fs.file-max (open files, whole host)", value)
        .sockets(host.fs_file_max.map(|m| m.saturating_sub(used)))
        .fix(sysctl_at_least(
            host,
            "fs.file-max",
            host.fs_file_max,
            target,
        ))
        .scope("host")
}

fn memory(host: &Host) -> Cap {
    let cgroup = match host.cgroup_memory_limit_bytes {
        Limit::Value(v) => mib(v),
        l => show(l),
    };
    let value = format!(
        "{} (MemTotal {}, MemAvailable {}, cgroup {cgroup} at {})",
        show_opt(memory_budget(host).map(mib)),
        show_opt(host.mem_total_bytes.map(mib)),
        show_opt(host.mem_available_bytes.map(mib)),
        host.cgroup_memory_path
            .as_deref()
            .unwrap_or("no cgroup file"),
    );
    let why = "cannot be lifted by a setting: a bigger instance, or less per connection";
    Cap::new("memory", value)
        .sockets(memory_sockets(host))
        .fix((false, why.into()))
        .note(format!(
            "min(MemTotal, cgroup) less sokdo's {} baseline, over an idle connection's {} B: \
             {USER_BYTES_PER_CONNECTION} B in sokdo + {} B kernel socket ({}); chatting users \
             cost more (sokdo-tune fit/plan)",
            mib(SOKDO_BASELINE_BYTES),
            idle_connection_bytes(host),
            host.kernel_socket_bytes,
            host.kernel_socket_bytes_source,
        ))
}

fn tcp_mem(host: &Host) -> Cap {
    let max_bytes = host.tcp_mem_pages.map(|p| p[2] * host.page_bytes);
    let wdefault = host.tcp_wmem_bytes.map(|w| w[1]).filter(|&w| w > 0);
    let fix = match (host.tcp_mem_pages, host.mem_total_bytes) {
        (Some([low, pressure, max]), Some(total)) => {
            // A quarter of memory for TCP buffers; pressure at three quarters of that.
            let new_max = (total / 4 / host.page_bytes).max(max);
            let new_pressure = pressure.max(new_max / 4 * 3);
            let command = format!("sysctl -w net.ipv4.tcp_mem=\"{low} {new_pressure} {new_max}\"");
            sysctl_fix(host, command)
        }
        _ => (
            false,
            "unknown: net.ipv4.tcp_mem or MemTotal unreadable".into(),
        ),
    };
    let value = format!(
        "{} pages = {}",
        show_opt(host.tcp_mem_pages.map(|p| p[2])),
        show_opt(max_bytes.map(mib))
    );
    Cap::new("net.ipv4.tcp_mem (kernel TCP buffer memory, max)", value)
        .sockets(max_bytes.zip(wdefault).map(|(m, w)| m / w))
        .fix(fix)
        .scope("burst")
        .note(format!(
            "sockets whose send buffers all hold the default {} B at once (a fan-out burst); \
             idle sockets hold none",
            show_opt(wdefault)
        ))
}

fn buffers(host: &Host) -> Cap {
    let fmt = |b: Option<[u64; 3]>| b.map_or("unknown".into(), |[a, d, m]| format!("{a} {d} {m}"));
    let busy = host
        .tcp_rmem_bytes
        .zip(host.tcp_wmem_bytes)
        .map(|(r, w)| idle_connection_bytes(host) + r[1] + w[1]);
    let value = format!(
        "rmem {}, wmem {}",
        fmt(host.tcp_rmem_bytes),
        fmt(host.tcp_wmem_bytes)
    );
    Cap::new("net.ipv4.tcp_rmem / tcp_wmem (min default max)", value)
        .sockets(memory_budget(host).zip(busy).map(|(b, per)| b / per))
        .scope("burst")
        .note(format!(
            "kernel bytes per busy socket: memory over {} B per connection if every socket's \
             receive and send queues held their defaults at once; they are allocated only \
             while data is queued, and sokdo reads at once and sends small frames",
            show_opt(busy)
        ))
}

fn port_range(host: &Host) -> Cap {
    let range = host.ip_local_port_range;
    let value = range.map_or("unknown".into(), |(lo, hi)| format!("{lo}-{hi}"));
    let command = "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".to_string();
    Cap::new("net.ipv4.ip_local_port_range (ephemeral ports)", value)
        .sockets(range.map(|(lo, hi)| hi.saturating_sub(lo) + 1))
        .fix(sysctl_fix(host, command))
        .scope("outbound per destination")
        .note(
            "caps outbound connections per (source IP, destination IP:port): a load generator \
             or a proxy in front of sokdo, not sokdo's inbound sockets; more source IPs \
             multiply it",
        )
}

fn conntrack(host: &Host, wanted: Option<u64>) -> Cap {
    let name = "net.netfilter.nf_conntrack_max";
    let Some(max) = host.nf_conntrack_max else {
        return Cap::new(name, "not loaded".into())
            .scope("host")
            .note("connection tracking is not loaded: it caps nothing");
    };
    let used = host.nf_conntrack_count.unwrap_or(0);
    let target = conntrack_for(wanted.unwrap_or(1 << 20));
    Cap::new(name, format!("{max} ({used} in use)"))
        .sockets(Some(max.saturating_sub(used)))
        .fix(sysctl_at_least(host, name, Some(max), target))
        .scope("host")
        .note(
            "one entry per tracked connection; when full the kernel drops new connections' \
             SYNs (dmesg: nf_conntrack: table full)",
        )
}

fn io_uring(host: &Host) -> Cap {
    let disabled = host
        .io_uring_disabled
        .map_or("absent".into(), |d| d.to_string());
    let value = match &host.io_uring_error {
        None => format!("available (kernel.io_uring_disabled {disabled})"),
        Some(e) => {
            format!("unavailable: io_uring_setup: {e} (kernel.io_uring_disabled {disabled})")
        }
    };
    let cap = Cap::new("io_uring (glommio's only I/O path)", value).scope("start-up");
    match (&host.io_uring_error, host.io_uring_disabled) {
        (None, _) => cap,
        (Some(_), Some(d)) if d > 0 => cap.sockets(Some(0)).fix(sysctl_fix(
            host,
            "sysctl -w kernel.io_uring_disabled=0".into(),
        )),
        (Some(_), _) => cap.sockets(Some(0)).fix((
            false,
            "cannot be lifted here: the kernel or a seccomp filter refuses io_uring (run on \
             Linux ≥ 5.8 without a filter that blocks io_uring_setup)"
                .into(),
        )),
    }
}

fn memlock(host: &Host, shards: u64) -> Cap {
    // glommio refuses to start below its minimum whatever it registers.
    let needed = (GLOMMIO_MEMLOCK_PER_SHARD_BYTES * shards).max(GLOMMIO_MEMLOCK_MIN_BYTES);
    let at_least = |l: Limit<u64>, n: u64| match l {
        Limit::Unlimited => true,
        Limit::Value(v) => v >= n,
        Limit::Unknown => false,
    };
    let enough = host.cap_ipc_lock == Some(true) || at_least(host.memlock_soft, needed);
    let raisable = host.cap_sys_resource == Some(true) || at_least(host.memlock_hard, needed);
    let fix = if enough {
        (true, NOTHING_TO_DO.to_string())
    } else if raisable {
        let how = "LimitMEMLOCK=infinity in the sokdo unit (sokdo-tune apply), or \
                   ulimit -l unlimited in the shell that starts it";
        (true, how.to_string())
    } else {
        let why = format!(
            "cannot be lifted here past the hard limit {} (needs CAP_SYS_RESOURCE); sokdo \
             still runs above 512 KiB, with unregistered I/O buffers",
            show(host.memlock_hard)
        );
        (false, why)
    };
    let ipc_lock = show_opt(host.cap_ipc_lock.map(|b| if b { "yes" } else { "no" }));
    let value = format!(
        "soft {}, hard {}, CAP_IPC_LOCK {ipc_lock}",
        show(host.memlock_soft),
        show(host.memlock_hard)
    );
    let blocked = matches!(host.memlock_soft, Limit::Value(v) if v < GLOMMIO_MEMLOCK_MIN_BYTES);
    Cap::new("RLIMIT_MEMLOCK (locked memory, glommio)", value)
        .sockets(blocked.then_some(0))
        .fix(fix)
        .scope("start-up")
        .note(format!(
            "glommio refuses to start below 512 KiB; it registers {} per shard ({} for \
             {shards} shards) as locked memory unless CAP_IPC_LOCK (then no limit applies)",
            kib(GLOMMIO_MEMLOCK_PER_SHARD_BYTES),
            kib(GLOMMIO_MEMLOCK_PER_SHARD_BYTES * shards)
        ))
}

fn cpus(host: &Host) -> Cap {
    let quota = match host.cgroup_cpu_quota_cpus {
        Limit::Value(q) => {
            let at = host.cgroup_cpu_path.as_deref().unwrap_or("?");
            format!("{q:.2} CPUs at {at}")
        }
        Limit::Unlimited => "unlimited".into(),
        Limit::Unknown => "unknown".into(),
    };
    let value = format!(
        "{} in the affinity mask, cgroup quota {quota} → {} CPUs",
        show_opt(host.cpus_in_affinity_mask),
        show_opt(effective_cpus(host).map(|e| format!("{e:.2}")))
    );
    let shards = default_shards(host);
    Cap::new("CPUs (affinity mask, cgroup quota)", value)
        .fix((true, format!("sokdo --shards {shards} (one shard per CPU)")))
        .scope("cpu")
        .note("CPU caps messages per second, not sockets: see sokdo-tune plan")
}

fn backlog(name: &str, live: Option<u64>, host: &Host, shards: u64) -> Cap {
    let fix = if live.is_some_and(|v| v < SOKDO_LISTEN_BACKLOG) {
        sysctl_fix(host, format!("sysctl -w {name}={SOKDO_LISTEN_BACKLOG}"))
    } else {
        (true, NOTHING_TO_DO.into())
    };
    let pending = live.map(|v| v.min(SOKDO_LISTEN_BACKLOG) * shards);
    Cap::new(name, show_opt(live))
        .fix(fix)
        .scope("burst")
        .note(format!(
            "caps connections waiting to be accepted, not open ones: {} pending across {shards} \
         shard(s) (sokdo asks {SOKDO_LISTEN_BACKLOG} per shard); past it a reconnect storm's \
         SYNs are dropped and clients retry after 1 s, 3 s, …",
            show_opt(pending)
        ))
}

fn thp(host: &Host) -> Cap {
    let mode = host.transparent_hugepage.clone();
    let fix = if mode.as_deref() == Some("always") {
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
    } else {
        NOTHING_TO_DO
    };
    Cap::new("transparent huge pages", show_opt(mode))
        .fix((true, fix.into()))
        .scope("memory")
        .note(
            "`always` backs small allocations with 2 MiB pages and inflates RSS per \
             connection: use `madvise`",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::host::sample;

    fn names(caps: &[Cap]) -> Vec<&str> {
        caps.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn the_hard_fd_limit_caps_first_here_and_cannot_be_lifted() {
        let caps = caps(&sample(), 2);
        assert_eq!(caps[0].name, "open files, hard limit (RLIMIT_NOFILE)");
        assert_eq!(caps[0].sockets_allowed, Some(19_900));
        assert!(!caps[0].liftable);
        assert!(
            caps[0].fix.contains("LimitNOFILE=1048576"),
            "{}",
            caps[0].fix
        );
        assert_eq!(caps[1].sockets_allowed, Some(28_232));
        let memory = caps.iter().find(|c| c.name == "memory").unwrap();
        let budget = 24_683_584 * 1024 - SOKDO_BASELINE_BYTES;
        assert_eq!(memory.sockets_allowed, Some(budget / (2_598 + 3_584)));
        // Caps on no count come after every counted one.
        let first_uncounted = caps
            .iter()
            .position(|c| c.sockets_allowed.is_none())
            .unwrap();
        assert!(caps[first_uncounted..]
            .iter()
            .all(|c| c.sockets_allowed.is_none()));
    }

    #[test]
    fn a_low_soft_limit_caps_before_the_hard_one_and_is_liftable() {
        let host = Host {
            nofile_soft: Limit::Value(1024),
            nofile_hard_raisable: Some(true),
            ..sample()
        };
        let caps = caps(&host, 2);
        assert_eq!(
            names(&caps)[..2],
            [
                "open files, soft limit (RLIMIT_NOFILE)",
                "open files, hard limit (RLIMIT_NOFILE)"
            ]
        );
        assert_eq!(caps[0].sockets_allowed, Some(924));
        assert!(caps[0].liftable && caps[0].fix.starts_with("ulimit -n 20000"));
        assert!(caps[1].liftable && caps[1].fix.starts_with("LimitNOFILE="));
    }

    #[test]
    fn what_stops_sokdo_starting_comes_first_at_zero() {
        let host = Host {
            io_uring_error: Some("Operation not permitted (os error 1)".into()),
            io_uring_disabled: Some(2),
            memlock_soft: Limit::Value(64 << 10),
            // Below glommio's 512 KiB minimum: the soft limit cannot be raised to it.
            memlock_hard: Limit::Value(256 << 10),
            cap_ipc_lock: Some(false),
            ..sample()
        };
        let caps = caps(&host, 2);
        let zero: Vec<&str> = caps
            .iter()
            .filter(|c| c.sockets_allowed == Some(0))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(zero.len(), 2, "{zero:?}");
        assert!(caps[0].sockets_allowed == Some(0) && caps[1].sockets_allowed == Some(0));
        let uring = caps
            .iter()
            .find(|c| c.name.starts_with("io_uring"))
            .unwrap();
        assert_eq!(uring.fix, "sysctl -w kernel.io_uring_disabled=0");
        let memlock = caps
            .iter()
            .find(|c| c.name.starts_with("RLIMIT_MEMLOCK"))
            .unwrap();
        assert!(
            memlock.fix.starts_with("cannot be lifted here"),
            "{}",
            memlock.fix
        );
    }

    #[test]
    fn a_cgroup_limit_and_quota_bound_memory_and_shards() {
        let host = Host {
            cgroup_memory_limit_bytes: Limit::Value(2 << 30),
            cgroup_cpu_quota_cpus: Limit::Value(0.2),
            ..sample()
        };
        assert_eq!(
            memory_sockets(&host),
            Some(((2 << 30) - SOKDO_BASELINE_BYTES) / 6_182)
        );
        assert_eq!(default_shards(&host), 1);
        assert_eq!(default_shards(&sample()), 2);
    }

    #[test]
    fn unknown_readings_are_reported_not_fatal() {
        let host = Host {
            mem_total_bytes: None,
            mem_available_bytes: None,
            fs_nr_open: None,
            tcp_mem_pages: None,
            ip_local_port_range: None,
            nofile_hard: Limit::Unknown,
            ..sample()
        };
        let caps = caps(&host, 1);
        let memory = caps.iter().find(|c| c.name == "memory").unwrap();
        assert_eq!(memory.sockets_allowed, None);
        assert!(memory.value.starts_with("unknown"), "{}", memory.value);
        let unknown: Vec<&str> = caps
            .iter()
            .filter(|c| c.value.starts_with("unknown"))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            unknown,
            [
                "open files, hard limit (RLIMIT_NOFILE)",
                "fs.nr_open (per-process fd ceiling)",
                "memory",
                "net.ipv4.tcp_mem (kernel TCP buffer memory, max)",
                "net.ipv4.ip_local_port_range (ephemeral ports)",
            ]
        );
    }

    #[test]
    fn fds_are_rounded_up_with_the_reserve() {
        assert_eq!(fds_for(0), 1024);
        assert_eq!(fds_for(924), 1024);
        assert_eq!(fds_for(925), 2048);
    }
}
