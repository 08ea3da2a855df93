//! Kernel limits that bound a loopback run of many connections: the ephemeral port range (per
//! source address and destination, see `worker::connect`), the listen backlog cap, and the
//! connection-tracking table. Read them, raise the last two when they are too low and we may
//! (`sysctl -w` as root), and say what was changed or what will limit the run. Also what the
//! bench reads about the host and its processes: CPUs online, a process's RSS, the CPU time
//! of a process tree (`/proc/PID/stat`) and of a set of CPUs (`/proc/stat`), the kernel's TCP
//! socket memory (`/proc/net/sockstat`) and a process's CPU cgroup with its quota. The text
//! of each /proc file is parsed by a pure function, tested on sample text below.
//!
//! A leaf: it imports no other module of the bench, so any of them may read the host.
#![forbid(unsafe_code)]

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

/// A set of CPUs written as `taskset -c` takes it ("1", "0-3", "1,3"), every one below the
/// kernel's `CPU_SETSIZE` (1,024): the bound of a `cpu_set_t`, checked when the text is
/// parsed so that no later use can index past it. Displayed in the same form, rebuilt from
/// the numbers (so it is safe to put in a command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList {
    /// Ascending, without repeats; never empty.
    cpus: Vec<usize>,
}

impl CpuList {
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The CPUs of this list that are not in `online`.
    pub fn missing_from(&self, online: &CpuList) -> Vec<usize> {
        self.cpus
            .iter()
            .copied()
            .filter(|c| !online.cpus.contains(c))
            .collect()
    }
}

impl std::fmt::Display for CpuList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.cpus.as_slice();
        let mut first = true;
        while let Some(&start) = rest.first() {
            let run = rest
                .iter()
                .enumerate()
                .take_while(|&(i, &c)| c == start + i)
                .count();
            let sep = if first { "" } else { "," };
            match run {
                1 => write!(f, "{sep}{start}")?,
                _ => write!(f, "{sep}{start}-{}", start + run - 1)?,
            }
            rest = &rest[run..];
            first = false;
        }
        Ok(())
    }
}

impl std::str::FromStr for CpuList {
    type Err = String;

    fn from_str(text: &str) -> Result<CpuList, String> {
        let bound = nix::sched::CpuSet::count();
        let cpu = |s: &str| -> Result<usize, String> {
            let n: usize = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a CPU number"))?;
            if n >= bound {
                return Err(format!("CPU {n} is out of range (0 to {})", bound - 1));
            }
            Ok(n)
        };
        let mut cpus = Vec::new();
        for part in text.trim().split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b) = (cpu(a)?, cpu(b)?);
            if a > b {
                return Err(format!("{part:?} is an empty range"));
            }
            cpus.extend(a..=b);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList { cpus })
    }
}

/// The CPUs online on this machine (`/sys/devices/system/cpu/online`), not this process's
/// affinity mask; `None` when that file cannot be read.
pub fn online_cpus() -> Option<CpuList> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()?
        .parse()
        .ok()
}

/// How many CPUs are online, at least 1 (the parallelism std sees when sysfs is not there).
pub fn cpus_online() -> usize {
    online_cpus().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |l| l.cpus().len().max(1),
    )
}

/// Pins this process, and the processes it starts from now on, to `cpus`.
pub fn pin_self(cpus: &CpuList) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus.cpus() {
        set.set(cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Σ VmRSS over a target's processes (those still alive); `None` when none can be read.
pub fn servers_rss(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .filter_map(|p| rss_bytes(*p))
        .fold(None, |acc, r| Some(acc.unwrap_or(0) + r))
}

/// Open file descriptors of local processes, summed (entries of /proc/PID/fd); `None` when
/// none could be read.
pub fn servers_fds(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .filter_map(|p| Some(std::fs::read_dir(format!("/proc/{p}/fd")).ok()?.count() as u64))
        .fold(None, |acc, n| Some(acc.unwrap_or(0) + n))
}

/// The hard open-file limit (RLIMIT_NOFILE) of this process, which its children inherit:
/// what a child may raise its own limit to.
pub fn open_files_max() -> Option<u64> {
    parse_open_files_hard(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The hard limit on the `Max open files` line of `/proc/PID/limits` (`unlimited`: u64::MAX).
pub fn parse_open_files_hard(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let hard = line["Max open files".len()..].split_whitespace().nth(1)?;
    match hard {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// VmRSS of a local process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl serde::Serialize for CpuList {
    /// As `taskset -c` writes it ("0-2,5"), like `Display`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the bench reads of one `/proc/PID/stat` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidStat {
    pub ppid: u32,
    /// utime + stime of the process (all its threads), in clock ticks.
    pub own_ticks: u64,
    /// cutime + cstime: of its children that exited and were waited for, in clock ticks.
    pub children_ticks: u64,
}

/// Parses `/proc/PID/stat`. The second field, `(comm)`, may itself hold spaces and `)`: the
/// fields after it start after the *last* `)` of the line.
pub fn parse_pid_stat(text: &str) -> Option<PidStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields 3 (state), 4 (ppid), …, 14 utime, 15 stime, 16 cutime, 17 cstime (1-based).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Option<u64> { f.get(i - 3)?.parse().ok() };
    Some(PidStat {
        ppid: u32::try_from(num(4)?).ok()?,
        own_ticks: num(14)?.checked_add(num(15)?)?,
        children_ticks: num(16)?.checked_add(num(17)?)?,
    })
}

/// Busy clock ticks of `cpus` in `/proc/stat` (user + nice + system + irq + softirq + steal:
/// everything but idle and iowait; guest time is already inside user); `None` when a CPU
/// of the list has no line.
pub fn parse_proc_stat_busy(text: &str, cpus: &CpuList) -> Option<u64> {
    let mut busy = 0u64;
    for cpu in cpus.cpus() {
        let name = format!("cpu{cpu}");
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        busy += at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    }
    Some(busy)
}

/// The `mem` of the `TCP:` line of `/proc/net/sockstat`: pages of memory held by all TCP
/// sockets of this network namespace.
pub fn parse_sockstat_tcp_mem_pages(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    it.find(|w| *w == "mem")?;
    it.next()?.parse().ok()
}

/// Clock ticks per second of the times in `/proc` (USER_HZ; 100 where sysconf fails).
pub fn clock_ticks_per_s() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 100,
    }
}

fn page_size_bytes() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// CPU seconds (user + system) used so far by `pids` and every live descendant of theirs
/// (a server that forks workers), plus the children each already reaped; `None` when no
/// process of the list can be read. Differences of two readings are what a window used.
pub fn processes_cpu_s(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let stats = all_pid_stats();
    let mut tree: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| stats.iter().any(|(q, _)| q == p))
        .collect();
    if tree.is_empty() {
        return None;
    }
    // Breadth-first over ppid links; bounded by the processes that exist.
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (pid, st) in &stats {
            if st.ppid == parent && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    let ticks: u64 = stats
        .iter()
        .filter(|(pid, _)| tree.contains(pid))
        .map(|(_, st)| st.own_ticks + st.children_ticks)
        .sum();
    Some(ticks as f64 / clock_ticks_per_s() as f64)
}

/// Every process's stat line that can be read now.
fn all_pid_stats() -> Vec<(u32, PidStat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some((pid, parse_pid_stat(&text)?))
    })
    .collect()
}

/// Busy seconds of `cpus` so far (see [`parse_proc_stat_busy`]).
pub fn cpus_busy_s(cpus: &CpuList) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_proc_stat_busy(&text, cpus)? as f64 / clock_ticks_per_s() as f64)
}

/// Bytes held by the TCP sockets of this network namespace (both ends of a loopback run).
pub fn tcp_mem_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    Some(parse_sockstat_tcp_mem_pages(&text)? * page_size_bytes())
}

/// Where a process's CPU controller puts it, from `/proc/PID/cgroup`: the v1 `cpu` hierarchy
/// (`N:cpu,cpuacct:/path`, `v1 == true`) when it is there, else the unified one (`0::/path`).
pub fn parse_cgroup_cpu_path(text: &str) -> Option<(bool, String)> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "cpu") {
            return Some((true, path.to_string()));
        }
        if controllers.is_empty() {
            unified = Some((false, path.to_string()));
        }
    }
    unified
}

/// A process's CPU cgroup (its directory) and the quota in force there, as `cpu.max` writes
/// it ("QUOTA PERIOD" in µs, "max PERIOD" without a quota), read from the live files.
pub fn cgroup_cpu_of(pid: u32) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (v1, path) = parse_cgroup_cpu_path(&text)?;
    let rel = path.trim_start_matches('/');
    if v1 {
        let dir = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
            .iter()
            .map(|m| Path::new(m).join(rel))
            .find(|d| d.join("cpu.cfs_quota_us").exists())?;
        let read = |f: &str| -> Option<String> {
            Some(
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .to_string(),
            )
        };
        let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
        let quota = if quota == "-1" {
            "max".to_string()
        } else {
            quota
        };
        return Some((dir.display().to_string(), format!("{quota} {period}")));
    }
    let dir = Path::new("/sys/fs/cgroup").join(rel);
    let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    Some((dir.display().to_string(), max.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_the_hard_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             15620                15620                processes\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(parse_open_files_hard(limits), Some(20_000));
        let unlimited = limits.replace("20000 ", "unlimited");
        assert_eq!(parse_open_files_hard(&unlimited), Some(u64::MAX));
        assert_eq!(parse_open_files_hard("Max processes 1 1 processes\n"), None);
    }

    #[test]
    fn cpu_lists_parse_as_taskset_writes_them() {
        let l: CpuList = "0-2,5".parse().unwrap();
        assert_eq!(l.cpus(), &[0, 1, 2, 5]);
        assert_eq!(l.to_string(), "0-2,5");
        assert_eq!("3, 1,0-1 ".parse::<CpuList>().unwrap().to_string(), "0-1,3");
        assert_eq!("1".parse::<CpuList>().unwrap().cpus(), &[1]);
        let online: CpuList = "0-3".parse().unwrap();
        assert_eq!(l.missing_from(&online), vec![5]);
    }

    #[test]
    fn cpu_lists_refuse_what_a_cpu_set_cannot_hold() {
        let e = "1024".parse::<CpuList>().unwrap_err();
        assert_eq!(e, "CPU 1024 is out of range (0 to 1023)");
        assert!("1023".parse::<CpuList>().is_ok());
        assert!("3-1"
            .parse::<CpuList>()
            .unwrap_err()
            .contains("empty range"));
        assert!("a"
            .parse::<CpuList>()
            .unwrap_err()
            .contains("not a CPU number"));
        assert!("".parse::<CpuList>().is_err());
        assert!("0,".parse::<CpuList>().is_err());
    }

    #[test]
    fn pid_stat_fields_are_found_after_the_last_paren_of_comm() {
        // A comm with spaces and ')' (a process may name itself so); fields from a real line.
        let line = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 30 12 20 0 3 0 987654 12345678 900 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0";
        let st = parse_pid_stat(line).unwrap();
        assert_eq!(
            st,
            PidStat {
                ppid: 17,
                own_ticks: 325,
                children_ticks: 42
            }
        );
        let plain = "1 (sokdo) R 0 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_pid_stat(plain).unwrap().own_ticks, 10);
        assert!(parse_pid_stat("1 (cut short) R 0 1").is_none());
        assert!(parse_pid_stat("no parens at all").is_none());
    }

    #[test]
    fn proc_stat_busy_counts_all_but_idle_and_iowait() {
        let text = "cpu  4440761 148522 780056 1790612 552421 0 147006 84718 0 0\n\
                    cpu0 100 10 20 5000 700 1 2 3 50 0\n\
                    cpu1 200 0 40 6000 800 0 4 0 0 0\n\
                    intr 1 2 3\n";
        let cpu0: CpuList = "0".parse().unwrap();
        // user 100 + nice 10 + system 20 + irq 1 + softirq 2 + steal 3; guest is in user.
        assert_eq!(parse_proc_stat_busy(text, &cpu0), Some(136));
        let both: CpuList = "0-1".parse().unwrap();
        assert_eq!(parse_proc_stat_busy(text, &both), Some(136 + 244));
        // "cpu1" must not match "cpu10"; a CPU without a line is an unknown, not a zero.
        let ten: CpuList = "10".parse().unwrap();
        assert_eq!(
            parse_proc_stat_busy("cpu10 1 1 1 1 1 1 1 1\n", &ten),
            Some(6)
        );
        let one: CpuList = "1".parse().unwrap();
        assert_eq!(parse_proc_stat_busy("cpu10 1 1 1 1 1 1 1 1\n", &one), None);
    }

    #[test]
    fn sockstat_tcp_mem_is_read_from_the_tcp_line() {
        let text = "sockets: used 12\n\
                    TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 68\n\
                    UDP: inuse 0 mem 3\n";
        assert_eq!(parse_sockstat_tcp_mem_pages(text), Some(68));
        assert_eq!(parse_sockstat_tcp_mem_pages("UDP: inuse 0 mem 3\n"), None);
    }

    #[test]
    fn cgroup_cpu_path_prefers_the_v1_cpu_controller() {
        let v1 = "9:name=systemd:/\n4:memory:/m\n2:cpuacct:/\n1:cpu,cpuacct:/sokdo-bench-x\n0::/\n";
        assert_eq!(
            parse_cgroup_cpu_path(v1),
            Some((true, "/sokdo-bench-x".to_string()))
        );
        // "cpuset" and "cpuacct" alone are not the cpu controller.
        let v2 = "3:cpuset:/a\n2:cpuacct:/b\n0::/sokdo-bench-y\n";
        assert_eq!(
            parse_cgroup_cpu_path(v2),
            Some((false, "/sokdo-bench-y".to_string()))
        );
        assert_eq!(parse_cgroup_cpu_path(""), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_cpus_have_busy_time() {
        let me = std::process::id();
        // Burn a little CPU so the reading cannot be zero.
        let mut x = 0u64;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        while std::time::Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(processes_cpu_s(&[me]).is_some_and(|s| s > 0.0));
        assert_eq!(processes_cpu_s(&[]), None);
        let online = online_cpus().unwrap();
        assert!(cpus_busy_s(&online).is_some_and(|s| s > 0.0));
        assert!(tcp_mem_bytes().is_some());
    }
}
