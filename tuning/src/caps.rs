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
/// sokdo's RSS before its first connection (docs/BENCHMARKS.md "Engine first look": 57 MB,
/// mostly glommio's I/O memory, the store's cache and allocator arenas).
pub const SOKDO_BASELINE_BYTES: u64 = 57_000_000;
/// File descriptors a sokdo process holds besides its sockets: stdio, one listener and three
/// io_uring rings plus an eventfd per shard, the write-ahead log's segments, the store.
pub const FDS_RESERVED: u64 = 100;
/// glommio 0.9 refuses to start a shard when RLIMIT_MEMLOCK is below 512 KiB
/// (`sys/uring.rs`, `MIN_MEMLOCK_LIMIT`).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// glommio registers its 10 MiB of I/O memory (`DEFAULT_IO_MEMORY`) with each of a shard's
/// three rings; without CAP_IPC_LOCK the kernel counts each registration against
/// RLIMIT_MEMLOCK, and below it glommio logs a warning and uses unregistered buffers.
pub const GLOMMIO_MEMLOCK_PER_SHARD_BYTES: u64 = 3 * (10 << 20);
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

fn cap(name: &str, value: String, sockets: Option<u64>, liftable: bool, fix: String) -> Cap {
    Cap {
        name: name.into(),
        value,
        sockets_allowed: sockets,
        liftable,
        fix,
        scope: "process".into(),
        note: String::new(),
    }
}

impl Cap {
    fn scope(mut self, scope: &str) -> Self {
        self.scope = scope.into();
        self
    }
    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

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
        buffers(host),
        thp(host),
    ];
    all.extend(nofile_soft(host));
    // A stable sort keeps the hard limit ahead of an equal soft one.
    all.sort_by_key(|c| c.sockets_allowed.unwrap_or(u64::MAX));
    all
}

/// How many idle connections the memory budget holds (`None` if memory is unknown): the
/// target the liftable caps are lifted to.
pub fn memory_sockets(host: &Host) -> Option<u64> {
    memory_budget(host).map(|b| b / (USER_BYTES_PER_CONNECTION + host.kernel_socket_bytes))
}

/// min(MemTotal, cgroup limit) − sokdo's baseline. MemTotal, not MemAvailable: the host is
/// sized for sokdo alone, and `apply`'s default must not move with the page cache.
fn memory_budget(host: &Host) -> Option<u64> {
    let avail = host.mem_total_bytes?;
    let limit = match host.cgroup_memory_limit_bytes {
        Limit::Value(v) => avail.min(v),
        _ => avail,
    };
    Some(limit.saturating_sub(SOKDO_BASELINE_BYTES))
}

/// File descriptors to allow for `sockets`, rounded up to 1,024.
pub fn fds_for(sockets: u64) -> u64 {
    (sockets + FDS_RESERVED).div_ceil(1024) * 1024
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

fn sysctl_fix(host: &Host, command: String) -> (bool, String) {
    if host.is_root && host.sysctl_writable {
        (true, command)
    } else if host.is_root {
        (false, format!("cannot be lifted here: /proc/sys is read-only (set it on the host or the container's sysctls: {command})"))
    } else {
        (true, format!("as root: {command}"))
    }
}

/// The open-file limit to set: enough for `wanted` sockets, but no more than `fs.nr_open`
/// allows (that row says how to lift it).
pub fn nofile_target(host: &Host, wanted: Option<u64>) -> u64 {
    fds_for(wanted.unwrap_or(1 << 20)).min(host.fs_nr_open.unwrap_or(1 << 20))
}

fn nofile_hard(host: &Host, wanted: Option<u64>) -> Cap {
    let target = nofile_target(host, wanted);
    let sockets = match host.nofile_hard {
        Limit::Value(v) => Some(v.saturating_sub(FDS_RESERVED)),
        _ => None,
    };
    let value = format!(
        "{} (soft {})",
        show(host.nofile_hard),
        show(host.nofile_soft)
    );
    let (liftable, fix) = match host.nofile_hard_raisable {
        Some(false) => (
            false,
            format!(
                "cannot be lifted here: raising the hard limit needs CAP_SYS_RESOURCE, which this \
             process lacks (setrlimit upward: EPERM); start this environment with a higher \
             limit (docker run --ulimit nofile={target}:{target}, or LimitNOFILE={target} on \
             the unit that starts it)"
            ),
        ),
        _ => (
            true,
            format!(
                "LimitNOFILE={target} in the sokdo unit (sokdo-tune apply), or for a running \
             process: prlimit --pid <sokdo pid> --nofile={target}:{target}"
            ),
        ),
    };
    cap(
        "open files, hard limit (RLIMIT_NOFILE)",
        value,
        sockets,
        liftable,
        fix,
    )
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
    Some(cap(
        "open files, soft limit (RLIMIT_NOFILE)",
        soft.to_string(),
        Some(soft.saturating_sub(FDS_RESERVED)),
        true,
        format!("ulimit -n {h} in the shell that starts sokdo (sokdo does not raise it itself), or LimitNOFILE={h}"),
    ))
}

fn nr_open(host: &Host, wanted: Option<u64>) -> Cap {
    let target = fds_for(wanted.unwrap_or(1 << 20));
    let (liftable, fix) = if host.fs_nr_open.is_some_and(|n| n >= target) {
        (true, "nothing to do (memory caps first)".into())
    } else {
        sysctl_fix(host, format!("sysctl -w fs.nr_open={target}"))
    };
    cap(
        "fs.nr_open (per-process fd ceiling)",
        show_opt(host.fs_nr_open),
        host.fs_nr_open.map(|v| v.saturating_sub(FDS_RESERVED)),
        liftable,
        fix,
    )
    .note("no hard limit can be set above it")
}

fn file_max(host: &Host, wanted: Option<u64>) -> Cap {
    let used = host.fs_file_nr_allocated.unwrap_or(0);
    let target = fds_for(wanted.unwrap_or(1 << 20)) + FILES_OTHERS;
    let (liftable, fix) = if host.fs_file_max.is_some_and(|m| m >= target) {
        (true, "nothing to do (memory caps first)".into())
    } else {
        sysctl_fix(host, format!("sysctl -w fs.file-max={target}"))
    };
    cap(
        "fs.file-max (open files, whole host)",
        format!("{} ({used} in use)", show_opt(host.fs_file_max)),
        host.fs_file_max.map(|m| m.saturating_sub(used)),
        liftable,
        fix,
    )
    .scope("host")
}

fn memory(host: &Host) -> Cap {
    let per = USER_BYTES_PER_CONNECTION + host.kernel_socket_bytes;
    let value = format!(
        "{} (MemAvailable {}, MemTotal {}, cgroup {} at {})",
        show_opt(memory_budget(host).map(mib)),
        show_opt(host.mem_available_bytes.map(mib)),
        show_opt(host.mem_total_bytes.map(mib)),
        match host.cgroup_memory_limit_bytes {
            Limit::Value(v) => mib(v),
            l => show(l),
        },
        host.cgroup_memory_path
            .as_deref()
            .unwrap_or("no cgroup file"),
    );
    cap("memory", value, memory_sockets(host), false, "cannot be lifted by a setting: a bigger instance, or less per connection".into())
        .note(format!(
            "idle connection: {USER_BYTES_PER_CONNECTION} B in sokdo + {} B kernel socket ({}) = {per} B, \
             after sokdo's {} baseline; chatting users cost more (sokdo-tune fit/plan)",
            host.kernel_socket_bytes, host.kernel_socket_bytes_source, mib(SOKDO_BASELINE_BYTES)
        ))
}

fn tcp_mem(host: &Host) -> Cap {
    let max_bytes = host.tcp_mem_pages.map(|p| p[2] * host.page_bytes);
    let wdefault = host.tcp_wmem_bytes.map(|w| w[1]);
    let sockets = match (max_bytes, wdefault) {
        (Some(m), Some(w)) if w > 0 => Some(m / w),
        _ => None,
    };
    let (liftable, fix) = match (host.tcp_mem_pages, host.mem_total_bytes) {
        (Some(p), Some(total)) => {
            let max = (total / 4 / host.page_bytes).max(p[2]);
            sysctl_fix(
                host,
                format!(
                    "sysctl -w net.ipv4.tcp_mem=\"{} {} {max}\"",
                    p[0],
                    p[1].max(max / 4 * 3)
                ),
            )
        }
        _ => (
            false,
            "unknown: net.ipv4.tcp_mem or MemTotal unreadable".into(),
        ),
    };
    cap("net.ipv4.tcp_mem (kernel TCP buffer memory, max)", format!("{} pages = {}", show_opt(host.tcp_mem_pages.map(|p| p[2])), show_opt(max_bytes.map(mib))), sockets, liftable, fix)
        .scope("burst")
        .note(format!("sockets whose send buffers all hold the default {} B at once (a fan-out burst); idle sockets hold none", show_opt(wdefault)))
}

fn port_range(host: &Host) -> Cap {
    let ports = host
        .ip_local_port_range
        .map(|(lo, hi)| hi.saturating_sub(lo) + 1);
    let (liftable, fix) = sysctl_fix(
        host,
        "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into(),
    );
    let value = host
        .ip_local_port_range
        .map_or("unknown".into(), |(lo, hi)| format!("{lo}-{hi}"));
    cap("net.ipv4.ip_local_port_range (ephemeral ports)", value, ports, liftable, fix)
        .scope("outbound per destination")
        .note("caps outbound connections per (source IP, destination IP:port): a load generator or a proxy in front of sokdo, not sokdo's inbound sockets; more source IPs multiply it")
}

/// Entries the connection-tracking table should hold for `sockets`, with a margin.
pub fn conntrack_for(sockets: u64) -> u64 {
    sockets * 5 / 4 + 65_536
}

fn conntrack(host: &Host, wanted: Option<u64>) -> Cap {
    let Some(max) = host.nf_conntrack_max else {
        return cap(
            "net.netfilter.nf_conntrack_max",
            "not loaded".into(),
            None,
            true,
            "nothing to do".into(),
        )
        .scope("host")
        .note("connection tracking is not loaded: it caps nothing");
    };
    let used = host.nf_conntrack_count.unwrap_or(0);
    let target = conntrack_for(wanted.unwrap_or(1 << 20));
    let (liftable, fix) = if max >= target {
        (true, "nothing to do (memory caps first)".into())
    } else {
        sysctl_fix(
            host,
            format!("sysctl -w net.netfilter.nf_conntrack_max={target}"),
        )
    };
    cap("net.netfilter.nf_conntrack_max", format!("{max} ({used} in use)"), Some(max.saturating_sub(used)), liftable, fix)
        .scope("host")
        .note("one entry per tracked connection; when full the kernel drops new connections' SYNs (dmesg: nf_conntrack: table full)")
}

fn io_uring(host: &Host) -> Cap {
    let disabled = host
        .io_uring_disabled
        .map_or("absent".into(), |d| d.to_string());
    let value = match &host.io_uring {
        Ok(()) => format!("available (kernel.io_uring_disabled {disabled})"),
        Err(e) => format!("unavailable: io_uring_setup: {e} (kernel.io_uring_disabled {disabled})"),
    };
    let (sockets, liftable, fix) = match (&host.io_uring, host.io_uring_disabled) {
        (Ok(()), _) => (None, true, "nothing to do".to_string()),
        (Err(_), Some(d)) if d > 0 => {
            let (l, f) = sysctl_fix(host, "sysctl -w kernel.io_uring_disabled=0".into());
            (Some(0), l, f)
        }
        (Err(_), _) => (Some(0), false, "cannot be lifted here: the kernel or a seccomp filter refuses io_uring (run on Linux ≥ 5.8 without a filter that blocks io_uring_setup)".into()),
    };
    cap(
        "io_uring (glommio's only I/O path)",
        value,
        sockets,
        liftable,
        fix,
    )
    .scope("start-up")
}

fn memlock(host: &Host, shards: u64) -> Cap {
    let needed = GLOMMIO_MEMLOCK_PER_SHARD_BYTES * shards;
    let ipc_lock = host.cap_ipc_lock == Some(true);
    let sockets = match host.memlock_soft {
        Limit::Value(v) if v < GLOMMIO_MEMLOCK_MIN_BYTES => Some(0),
        _ => None,
    };
    let raisable = host.cap_sys_resource == Some(true)
        || host.memlock_hard == Limit::Unlimited
        || matches!(host.memlock_hard, Limit::Value(h) if h >= needed);
    let enough = ipc_lock
        || matches!(host.memlock_soft, Limit::Unlimited)
        || matches!(host.memlock_soft, Limit::Value(v) if v >= needed);
    let fix = if enough {
        "nothing to do".to_string()
    } else if raisable {
        "LimitMEMLOCK=infinity in the sokdo unit (sokdo-tune apply), or ulimit -l unlimited in the shell that starts it".into()
    } else {
        format!("cannot be lifted here past the hard limit {} (needs CAP_SYS_RESOURCE); sokdo still runs if ≥ 512 KiB, with unregistered I/O buffers", show(host.memlock_hard))
    };
    let value = format!(
        "soft {}, hard {}, CAP_IPC_LOCK {}",
        show(host.memlock_soft),
        show(host.memlock_hard),
        show_opt(host.cap_ipc_lock.map(|b| if b { "yes" } else { "no" }))
    );
    cap("RLIMIT_MEMLOCK (locked memory, glommio)", value, sockets, enough || raisable, fix)
        .scope("start-up")
        .note(format!("glommio refuses to start below 512 KiB; it registers {} per shard ({} for {shards} shards) unless CAP_IPC_LOCK (then no limit applies)", mib(GLOMMIO_MEMLOCK_PER_SHARD_BYTES), mib(needed)))
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

fn cpus(host: &Host) -> Cap {
    let quota = host.cgroup_cpu_quota_cpus;
    let effective = effective_cpus(host);
    let q = match quota {
        Limit::Value(q) => format!(
            "{q:.2} CPUs at {}",
            host.cgroup_cpu_path.as_deref().unwrap_or("?")
        ),
        Limit::Unlimited => "unlimited".into(),
        Limit::Unknown => "unknown".into(),
    };
    let shards = default_shards(host);
    cap(
        "CPUs (affinity mask, cgroup quota)",
        format!(
            "{} in the affinity mask, cgroup quota {q} → {} CPUs",
            show_opt(host.cpus_in_affinity_mask),
            show_opt(effective.map(|e| format!("{e:.2}")))
        ),
        None,
        true,
        format!("sokdo --shards {shards} (one shard per CPU)"),
    )
    .scope("cpu")
    .note("CPU caps messages per second, not sockets: see sokdo-tune plan")
}

fn backlog(name: &str, v: Option<u64>, host: &Host, shards: u64) -> Cap {
    let short = v.is_some_and(|v| v < SOKDO_LISTEN_BACKLOG);
    let (liftable, fix) = if short {
        sysctl_fix(host, format!("sysctl -w {name}={SOKDO_LISTEN_BACKLOG}"))
    } else {
        (true, "nothing to do".into())
    };
    let pending = v.map(|v| v.min(SOKDO_LISTEN_BACKLOG) * shards);
    cap(name, show_opt(v), None, liftable, fix).scope("burst").note(format!(
        "caps connections waiting to be accepted, not open ones: {} pending across {shards} shard(s) (sokdo asks {SOKDO_LISTEN_BACKLOG} per shard); past it a reconnect storm's SYNs are dropped and clients retry after 1 s, 3 s, …",
        show_opt(pending)
    ))
}

fn buffers(host: &Host) -> Cap {
    let fmt = |b: Option<[u64; 3]>| b.map_or("unknown".into(), |[a, d, m]| format!("{a} {d} {m}"));
    cap("net.ipv4.tcp_rmem / tcp_wmem (min default max)", format!("rmem {}, wmem {}", fmt(host.tcp_rmem_bytes), fmt(host.tcp_wmem_bytes)), None, true, "nothing to do".into())
        .scope("burst")
        .note("kernel bytes per busy socket: up to the defaults, allocated only while data is queued (the tcp_mem row counts them); an idle socket costs its slab objects only")
}

fn thp(host: &Host) -> Cap {
    let mode = host.transparent_hugepage.clone();
    let always = mode.as_deref() == Some("always");
    let fix = if always {
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
    } else {
        "nothing to do"
    };
    cap("transparent huge pages", show_opt(mode), None, true, fix.into())
        .scope("memory")
        .note("`always` backs small allocations with 2 MiB pages and inflates RSS per connection: use `madvise`")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's readings (2026-12-01), by hand.
    fn sample() -> Host {
        Host {
            cpus_in_affinity_mask: Some(2),
            cgroup_cpu_quota_cpus: Limit::Unlimited,
            cgroup_cpu_path: None,
            mem_total_bytes: Some(24_683_584 * 1024),
            mem_available_bytes: Some(24_039_796 * 1024),
            cgroup_memory_limit_bytes: Limit::Unlimited,
            cgroup_memory_path: None,
            nofile_soft: Limit::Value(20_000),
            nofile_hard: Limit::Value(20_000),
            nofile_hard_raisable: Some(false),
            fs_nr_open: Some(1_048_576),
            fs_file_max: Some(2_466_126),
            fs_file_nr_allocated: Some(1_047),
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(4096),
            ip_local_port_range: Some((32_768, 60_999)),
            tcp_rmem_bytes: Some([4096, 131_072, 33_554_432]),
            tcp_wmem_bytes: Some([4096, 16_384, 4_194_304]),
            tcp_mem_pages: Some([287_892, 383_858, 575_784]),
            nf_conntrack_max: Some(262_144),
            nf_conntrack_count: Some(44),
            page_bytes: 4096,
            memlock_soft: Limit::Value(8 << 20),
            memlock_hard: Limit::Value(8 << 20),
            cap_ipc_lock: Some(true),
            cap_sys_resource: Some(false),
            io_uring: Ok(()),
            io_uring_disabled: Some(0),
            transparent_hugepage: Some("madvise".into()),
            kernel_socket_bytes: crate::host::KERNEL_SOCKET_BYTES_DEFAULT,
            kernel_socket_bytes_source: "constant".into(),
            is_root: true,
            sysctl_writable: true,
        }
    }

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
            io_uring: Err("Operation not permitted".into()),
            io_uring_disabled: Some(2),
            memlock_soft: Limit::Value(64 << 10),
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
