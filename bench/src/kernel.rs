//! Kernel limits that bound a loopback run of many connections: the ephemeral port range (per
//! source address and destination, see `worker::connect`), the listen backlog cap, and the
//! connection-tracking table. Read them, raise the last two when they are too low and we may
//! (`sysctl -w` as root), and say what was changed or what will limit the run. Also what the
//! bench reads about the host and its processes (CPUs online, a process's RSS from /proc).
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

/// VmRSS of a local process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::CpuList;

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
}
