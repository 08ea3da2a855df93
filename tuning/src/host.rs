//! Reads the host: /proc, /sys, the cgroup hierarchy and this process's rlimits. Every
//! reading is an `Option` (or an `Unknown` variant): a file that is absent or does not parse
//! is reported as unknown, never a panic. The parsing of /proc and /sys text is in pure
//! functions (`parse_*`) with unit tests on sample text; `read` does the I/O.
//!
//! This module only reads (the one exception: `nofile_hard_raisable` raises the open-file
//! hard limit by one and lowers it back, which is how to know whether it can be raised).

use serde::Serialize;
use std::path::{Path, PathBuf};

/// A cgroup v1 `memory.limit_in_bytes` at or above this means "no limit" (the kernel writes
/// `LONG_MAX` rounded down to a page, 9223372036854771712).
const CGROUP_UNLIMITED_BYTES_MIN: u64 = 1 << 62;
/// Kernel bytes of one idle TCP socket when /proc/slabinfo cannot be read: the objects
/// `TCP` (2,368) + `sock_inode_cache` (832) + `filp` (192) + `dentry` (192), as measured from
/// /proc/slabinfo on the project's machine (Linux 6.18, 2026-12-01). Buffers are extra and
/// only exist while data is queued.
pub const KERNEL_SOCKET_BYTES_DEFAULT: u64 = 3_584;
/// The slab caches one idle TCP (IPv4) socket takes an object from.
const SOCKET_SLABS: [&str; 4] = ["TCP", "sock_inode_cache", "filp", "dentry"];
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_RESOURCE: u32 = 24;

/// A limit that may be absent (unlimited) or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit<T> {
    Unknown,
    Unlimited,
    Value(T),
}

/// What was read, raw. Serialized as the `readings` of `probe --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub cpus_in_affinity_mask: Option<u32>,
    /// CPUs the cgroup quota allows (quota / period), the tightest along the hierarchy.
    pub cgroup_cpu_quota_cpus: Limit<f64>,
    pub cgroup_cpu_path: Option<String>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    /// The tightest memory limit along this process's cgroup hierarchy (v1 or v2).
    pub cgroup_memory_limit_bytes: Limit<u64>,
    pub cgroup_memory_path: Option<String>,
    pub nofile_soft: Limit<u64>,
    pub nofile_hard: Limit<u64>,
    /// Whether this process could raise its open-file hard limit (tried, then undone).
    pub nofile_hard_raisable: Option<bool>,
    pub fs_nr_open: Option<u64>,
    pub fs_file_max: Option<u64>,
    pub fs_file_nr_allocated: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub ip_local_port_range: Option<(u64, u64)>,
    pub tcp_rmem_bytes: Option<[u64; 3]>,
    pub tcp_wmem_bytes: Option<[u64; 3]>,
    pub tcp_mem_pages: Option<[u64; 3]>,
    /// Absent when connection tracking is not loaded (then it caps nothing).
    pub nf_conntrack_max: Option<u64>,
    pub nf_conntrack_count: Option<u64>,
    pub page_bytes: u64,
    pub memlock_soft: Limit<u64>,
    pub memlock_hard: Limit<u64>,
    pub cap_ipc_lock: Option<bool>,
    pub cap_sys_resource: Option<bool>,
    /// `None` when an `io_uring_setup` of a one-entry ring succeeded, else its error.
    pub io_uring_error: Option<String>,
    pub io_uring_disabled: Option<u64>,
    pub transparent_hugepage: Option<String>,
    pub kernel_socket_bytes: u64,
    /// `"/proc/slabinfo"` or `"constant"` (slabinfo unreadable).
    pub kernel_socket_bytes_source: String,
    pub is_root: bool,
    /// Whether /proc/sys can be written (a container often mounts it read-only).
    pub sysctl_writable: bool,
}

/// Reads everything; never fails (unreadable readings are unknown).
pub fn read() -> Host {
    let cgroups = read_text("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let cgroup_root = Path::new("/sys/fs/cgroup");
    let (cgroup_memory_limit_bytes, cgroup_memory_path) = memory_limit(cgroup_root, &cgroups);
    let (cgroup_cpu_quota_cpus, cgroup_cpu_path) = cpu_quota(cgroup_root, &cgroups);
    let meminfo = read_text("/proc/meminfo").unwrap_or_default();
    let caps = read_text("/proc/self/status").and_then(|t| parse_cap_eff(&t));
    let (kernel_socket_bytes, source) =
        match read_text("/proc/slabinfo").and_then(|t| parse_slab_socket_bytes(&t)) {
            Some(b) => (b, "/proc/slabinfo"),
            None => (KERNEL_SOCKET_BYTES_DEFAULT, "constant"),
        };
    let (nofile_soft, nofile_hard) = rlimit(libc::RLIMIT_NOFILE);
    let (memlock_soft, memlock_hard) = rlimit(libc::RLIMIT_MEMLOCK);
    let fs_nr_open = sysctl_u64("fs/nr_open");
    Host {
        cpus_in_affinity_mask: affinity_cpus(),
        cgroup_cpu_quota_cpus,
        cgroup_cpu_path,
        mem_total_bytes: parse_meminfo_bytes(&meminfo, "MemTotal"),
        mem_available_bytes: parse_meminfo_bytes(&meminfo, "MemAvailable"),
        cgroup_memory_limit_bytes,
        cgroup_memory_path,
        nofile_soft,
        nofile_hard,
        nofile_hard_raisable: nofile_hard_raisable(nofile_hard, fs_nr_open),
        fs_nr_open,
        fs_file_max: sysctl_u64("fs/file-max"),
        fs_file_nr_allocated: read_text("/proc/sys/fs/file-nr")
            .and_then(|t| t.split_whitespace().next()?.parse().ok()),
        somaxconn: sysctl_u64("net/core/somaxconn"),
        tcp_max_syn_backlog: sysctl_u64("net/ipv4/tcp_max_syn_backlog"),
        ip_local_port_range: sysctl_numbers::<2>("net/ipv4/ip_local_port_range")
            .map(|[lo, hi]| (lo, hi)),
        tcp_rmem_bytes: sysctl_numbers("net/ipv4/tcp_rmem"),
        tcp_wmem_bytes: sysctl_numbers("net/ipv4/tcp_wmem"),
        tcp_mem_pages: sysctl_numbers("net/ipv4/tcp_mem"),
        nf_conntrack_max: sysctl_u64("net/netfilter/nf_conntrack_max"),
        nf_conntrack_count: sysctl_u64("net/netfilter/nf_conntrack_count"),
        page_bytes: page_bytes(),
        memlock_soft,
        memlock_hard,
        cap_ipc_lock: caps.map(|c| c & (1 << CAP_IPC_LOCK) != 0),
        cap_sys_resource: caps.map(|c| c & (1 << CAP_SYS_RESOURCE) != 0),
        io_uring_error: io_uring_probe().err(),
        io_uring_disabled: sysctl_u64("kernel/io_uring_disabled"),
        transparent_hugepage: read_text("/sys/kernel/mm/transparent_hugepage/enabled")
            .and_then(|t| parse_bracketed(&t)),
        kernel_socket_bytes,
        kernel_socket_bytes_source: source.into(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        is_root: unsafe { libc::geteuid() } == 0,
        sysctl_writable: writable("/proc/sys/net/core/somaxconn"),
    }
}

fn read_text(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn sysctl_u64(name: &str) -> Option<u64> {
    read_text(format!("/proc/sys/{name}"))?.trim().parse().ok()
}

fn sysctl_numbers<const N: usize>(name: &str) -> Option<[u64; N]> {
    parse_numbers(&read_text(format!("/proc/sys/{name}"))?)
}

fn writable(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

fn affinity_cpus() -> Option<u32> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        u32::try_from(libc::CPU_COUNT(&set)).ok()
    }
}

fn rlimit_value(v: libc::rlim_t) -> Limit<u64> {
    if v == libc::RLIM_INFINITY {
        Limit::Unlimited
    } else {
        Limit::Value(v)
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (Limit<u64>, Limit<u64>) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return (Limit::Unknown, Limit::Unknown);
    }
    (rlimit_value(r.rlim_cur), rlimit_value(r.rlim_max))
}

/// Tries to raise the open-file hard limit by one, then lowers it back (lowering is always
/// allowed). `None` when there is nothing to try (unlimited, or already at `fs.nr_open`,
/// which is then the ceiling to lift instead).
fn nofile_hard_raisable(hard: Limit<u64>, nr_open: Option<u64>) -> Option<bool> {
    let Limit::Value(hard) = hard else {
        return None;
    };
    if nr_open.is_some_and(|n| hard >= n) {
        return None;
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: r.rlim_cur,
        rlim_max: hard + 1,
    };
    // SAFETY: both rlimits are valid; the second call restores what the first changed.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            return Some(false);
        }
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    Some(true)
}

/// `io_uring_setup` of a one-entry ring, closed at once.
fn io_uring_probe() -> Result<(), String> {
    // `struct io_uring_params` is 120 bytes of u32/u64 fields; zeroed means "no flags".
    let mut params = [0u64; 15];
    // SAFETY: the syscall reads and writes at most the 120 bytes of `params`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` is the ring's descriptor, owned here and closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// One line of /proc/self/cgroup: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupLine {
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(CgroupLine {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The v1 path of `controller`, or the v2 path (the line with no controllers).
fn cgroup_path<'a>(lines: &'a [CgroupLine], controller: &str) -> Option<(&'a str, bool)> {
    if let Some(l) = lines
        .iter()
        .find(|l| l.controllers.iter().any(|c| c == controller))
    {
        return Some((&l.path, true));
    }
    lines
        .iter()
        .find(|l| l.controllers.is_empty())
        .map(|l| (l.path.as_str(), false))
}

/// The directories from the own cgroup up to the hierarchy's root, own first.
fn ancestors(mount: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut p = Path::new(path.trim_start_matches('/'));
    loop {
        dirs.push(mount.join(p));
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    dirs.dedup();
    dirs
}

fn v1_mount(root: &Path, controller: &str) -> Option<PathBuf> {
    [controller, "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .filter(|d| d.split(',').any(|c| c == controller))
        .map(|d| root.join(d))
        .find(|d| d.join("cgroup.procs").exists())
}

fn v2_mount(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("unified")]
        .into_iter()
        .find(|d| d.join("cgroup.controllers").exists())
}

/// The tightest limit over the own cgroup and its ancestors (a child's limit does not show
/// its parent's), with the file that sets it. `read(dir, v1)` reads one directory's limit
/// and names its file. `root` is where the hierarchies are mounted (/sys/fs/cgroup).
fn tightest<T: PartialOrd + Copy>(
    root: &Path,
    lines: &[CgroupLine],
    controller: &str,
    read: impl Fn(&Path, bool) -> (Limit<T>, &'static str),
) -> (Limit<T>, Option<String>) {
    let Some((path, v1)) = cgroup_path(lines, controller) else {
        return (Limit::Unknown, None);
    };
    let mount = if v1 {
        v1_mount(root, controller)
    } else {
        v2_mount(root)
    };
    let Some(mount) = mount else {
        return (Limit::Unknown, None);
    };
    let mut best = (Limit::Unknown, None);
    for dir in ancestors(&mount, path) {
        let (here, file) = read(&dir, v1);
        let tighter = match (here, best.0) {
            (Limit::Value(a), Limit::Value(b)) => a < b,
            (Limit::Value(_), _) | (Limit::Unlimited, Limit::Unknown) => true,
            _ => false,
        };
        if tighter {
            best = (here, Some(dir.join(file).display().to_string()));
        }
    }
    best
}

fn memory_limit(root: &Path, lines: &[CgroupLine]) -> (Limit<u64>, Option<String>) {
    tightest(root, lines, "memory", |dir, v1| {
        let file = if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        let limit = read_text(dir.join(file)).map_or(Limit::Unknown, |t| parse_memory_limit(&t));
        (limit, file)
    })
}

fn cpu_quota(root: &Path, lines: &[CgroupLine]) -> (Limit<f64>, Option<String>) {
    tightest(root, lines, "cpu", |dir, v1| {
        if v1 {
            let quota = read_text(dir.join("cpu.cfs_quota_us"));
            let period = read_text(dir.join("cpu.cfs_period_us"));
            let limit = match (quota, period) {
                (Some(q), Some(p)) => parse_cfs_quota(&q, &p),
                _ => Limit::Unknown,
            };
            (limit, "cpu.cfs_quota_us")
        } else {
            let limit =
                read_text(dir.join("cpu.max")).map_or(Limit::Unknown, |t| parse_cpu_max(&t));
            (limit, "cpu.max")
        }
    })
}

/// `memory.limit_in_bytes` (v1, huge = unlimited) or `memory.max` (v2, `max`).
pub fn parse_memory_limit(text: &str) -> Limit<u64> {
    let t = text.trim();
    if t == "max" {
        return Limit::Unlimited;
    }
    match t.parse::<u64>() {
        Ok(v) if v >= CGROUP_UNLIMITED_BYTES_MIN => Limit::Unlimited,
        Ok(v) => Limit::Value(v),
        Err(_) => Limit::Unknown,
    }
}

/// v1 `cpu.cfs_quota_us` (`-1` = unlimited) over `cpu.cfs_period_us`, in CPUs.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Limit<f64> {
    match (quota.trim().parse::<i64>(), period.trim().parse::<u64>()) {
        (Ok(q), _) if q < 0 => Limit::Unlimited,
        (Ok(q), Ok(p)) if p > 0 => Limit::Value(q as f64 / p as f64),
        _ => Limit::Unknown,
    }
}

/// v2 `cpu.max`: `max 100000` or `50000 100000`, in CPUs.
pub fn parse_cpu_max(text: &str) -> Limit<f64> {
    let mut it = text.split_whitespace();
    match (it.next(), it.next().map(str::parse::<u64>)) {
        (Some("max"), _) => Limit::Unlimited,
        (Some(q), Some(Ok(p))) if p > 0 => q
            .parse::<u64>()
            .map_or(Limit::Unknown, |q| Limit::Value(q as f64 / p as f64)),
        _ => Limit::Unknown,
    }
}

/// A `/proc/meminfo` field (`MemTotal:  24683584 kB`), in bytes.
pub fn parse_meminfo_bytes(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let mut it = line.split(':').nth(1)?.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// Exactly `N` whitespace-separated numbers (`tcp_rmem`, `ip_local_port_range`, …).
pub fn parse_numbers<const N: usize>(text: &str) -> Option<[u64; N]> {
    let v: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

/// The selected word of a sysfs choice (`always [madvise] never` → `madvise`).
pub fn parse_bracketed(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// `CapEff:` of /proc/self/status, as a bit set.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// The bytes of one idle TCP socket: the sum of the object sizes of `SOCKET_SLABS` in
/// /proc/slabinfo (`name active_objs num_objs objsize …`). `None` if one is missing.
pub fn parse_slab_socket_bytes(slabinfo: &str) -> Option<u64> {
    SOCKET_SLABS
        .iter()
        .map(|slab| {
            slabinfo.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == *slab).then_some(())?;
                it.nth(2)?.parse::<u64>().ok()
            })
        })
        .sum()
}

/// This machine's readings (2026-12-01), by hand: for the tests of the modules that
/// compute from a `Host`.
#[cfg(test)]
pub fn sample() -> Host {
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
        io_uring_error: None,
        io_uring_disabled: Some(0),
        transparent_hugepage: Some("madvise".into()),
        kernel_socket_bytes: KERNEL_SOCKET_BYTES_DEFAULT,
        kernel_socket_bytes_source: "constant".into(),
        is_root: true,
        sysctl_writable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_v1_and_v2_lines() {
        let text = "4:memory:/process_api/f8d1\n2:cpu,cpuacct:/\n0::/user.slice\n";
        let lines = parse_proc_cgroup(text);
        assert_eq!(
            cgroup_path(&lines, "memory"),
            Some(("/process_api/f8d1", true))
        );
        assert_eq!(cgroup_path(&lines, "cpu"), Some(("/", true)));
        let v2 = parse_proc_cgroup("0::/system.slice/sokdo.service\n");
        assert_eq!(
            cgroup_path(&v2, "memory"),
            Some(("/system.slice/sokdo.service", false))
        );
        assert_eq!(cgroup_path(&[], "memory"), None);
    }

    #[test]
    fn ancestors_walk_to_the_mount() {
        let dirs = ancestors(Path::new("/m"), "/a/b");
        assert_eq!(
            dirs,
            vec![PathBuf::from("/m/a/b"), "/m/a".into(), "/m".into()]
        );
        assert_eq!(ancestors(Path::new("/m"), "/"), vec![PathBuf::from("/m")]);
    }

    /// A directory tree of cgroup files under a fresh temporary root, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(files: &[(&str, &str)]) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let root =
                std::env::temp_dir().join(format!("sokdo-tune-cg-{}-{n}", std::process::id()));
            for (path, text) in files {
                let p = root.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            Tree(root)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn v2_limits_are_the_tightest_along_the_ancestors() {
        let tree = Tree::new(&[
            ("cgroup.controllers", "cpu memory\n"),
            ("a/memory.max", "536870912\n"),
            ("a/cpu.max", "max 100000\n"),
            ("a/b/memory.max", "max\n"),
            ("a/b/cpu.max", "20000 100000\n"),
        ]);
        let lines = parse_proc_cgroup("0::/a/b\n");
        let (mem, at) = memory_limit(&tree.0, &lines);
        assert_eq!(mem, Limit::Value(512 << 20));
        assert_eq!(at, Some(tree.0.join("a/memory.max").display().to_string()));
        let (cpu, at) = cpu_quota(&tree.0, &lines);
        assert_eq!(cpu, Limit::Value(0.2));
        assert_eq!(at, Some(tree.0.join("a/b/cpu.max").display().to_string()));
    }

    #[test]
    fn v1_limits_from_their_controllers_mounts() {
        let tree = Tree::new(&[
            ("memory/cgroup.procs", ""),
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/x/memory.limit_in_bytes", "268435456\n"),
            ("cpu,cpuacct/cgroup.procs", ""),
            ("cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        let lines = parse_proc_cgroup("4:memory:/x\n2:cpu,cpuacct:/\n0::/\n");
        assert_eq!(memory_limit(&tree.0, &lines).0, Limit::Value(256 << 20));
        assert_eq!(cpu_quota(&tree.0, &lines).0, Limit::Unlimited);
        // No hierarchy mounted at all: unknown, not a failure.
        let empty = Tree::new(&[]);
        assert_eq!(memory_limit(&empty.0, &lines), (Limit::Unknown, None));
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory_limit("268435456\n"), Limit::Value(256 << 20));
        assert_eq!(
            parse_memory_limit("9223372036854771712\n"),
            Limit::Unlimited
        );
        assert_eq!(parse_memory_limit("max\n"), Limit::Unlimited);
        assert_eq!(parse_memory_limit("garbage"), Limit::Unknown);
    }

    #[test]
    fn cpu_quotas() {
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Limit::Value(0.5));
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), Limit::Unlimited);
        assert_eq!(parse_cfs_quota("x", "100000"), Limit::Unknown);
        assert_eq!(parse_cfs_quota("1000", "0"), Limit::Unknown);
        assert_eq!(parse_cpu_max("max 100000\n"), Limit::Unlimited);
        assert_eq!(parse_cpu_max("20000 100000\n"), Limit::Value(0.2));
        assert_eq!(parse_cpu_max(""), Limit::Unknown);
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:       24683584 kB\nMemFree: 1 kB\nMemAvailable:   24039796 kB\n";
        assert_eq!(
            parse_meminfo_bytes(text, "MemTotal"),
            Some(24_683_584 * 1024)
        );
        assert_eq!(
            parse_meminfo_bytes(text, "MemAvailable"),
            Some(24_039_796 * 1024)
        );
        assert_eq!(parse_meminfo_bytes(text, "Mem"), None);
        assert_eq!(parse_meminfo_bytes("", "MemTotal"), None);
    }

    #[test]
    fn number_lists() {
        assert_eq!(
            parse_numbers::<3>("4096\t131072\t33554432\n"),
            Some([4096, 131_072, 33_554_432])
        );
        assert_eq!(parse_numbers::<2>("32768\t60999\n"), Some([32768, 60999]));
        assert_eq!(parse_numbers::<2>("32768\n"), None);
        assert_eq!(parse_numbers::<2>("a b"), None);
    }

    #[test]
    fn bracketed_and_caps() {
        assert_eq!(
            parse_bracketed("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(parse_bracketed("always madvise never"), None);
        let status = "Name:\tx\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert_ne!(caps & (1 << CAP_IPC_LOCK), 0);
        assert_eq!(caps & (1 << CAP_SYS_RESOURCE), 0);
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn slab_bytes_of_a_socket() {
        let slabinfo = "slabinfo - version: 2.1\n\
            # name <active_objs> <num_objs> <objsize> <objperslab>\n\
            TCPv6 26 26 2496 13 8 : tunables 0 0 0\n\
            TCP 112 112 2368 13 8 : tunables 0 0 0\n\
            sock_inode_cache 900 900 832 19 4 : tunables 0 0 0\n\
            filp 4000 4000 192 21 1 : tunables 0 0 0\n\
            dentry 9000 9000 192 21 1 : tunables 0 0 0\n";
        assert_eq!(
            parse_slab_socket_bytes(slabinfo),
            Some(KERNEL_SOCKET_BYTES_DEFAULT)
        );
        assert_eq!(parse_slab_socket_bytes("TCP 1 1 2368 13 8\n"), None);
    }
}
