//! How many connections the instance admits when `--connections-max auto`: the memory
//! budget divided by the bytes one connection costs, capped by the open-file limit. Read
//! once at start from the host (`/proc/self/cgroup`, the cgroup's memory limit,
//! `/proc/meminfo`, `/proc/self/limits`).
#![forbid(unsafe_code)]

use std::path::Path;

use crate::config::{Config, ConnectionsMax};

/// What the process needs before its first connection (log, store, shard channels, code):
/// taken off the memory budget.
pub const PROCESS_BASELINE_BYTES: u64 = 64 << 20;

/// File descriptors kept for everything but connections: the listeners, the log's
/// segments, the store, accounts, stdio.
pub const FD_RESERVE: u64 = 100;

/// The derived capacity and every input, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub connections_max: u64,
    /// The cgroup's memory limit, when one is set (below the machine's memory).
    pub cgroup_memory_limit: Option<u64>,
    pub mem_total: u64,
    pub budget_bytes: u64,
    pub by_memory: u64,
    pub open_files_soft: Option<u64>,
    pub by_open_files: Option<u64>,
}

/// The host's figures the rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub cgroup_memory_limit: Option<u64>,
    pub mem_total: u64,
    pub open_files_soft: Option<u64>,
}

/// `--connections-max`: the number given, or derived from this host.
pub fn connections_max(cfg: &Config) -> u64 {
    match cfg.connections_max {
        ConnectionsMax::Fixed(n) => {
            tracing::info!(
                connections_max = n,
                "admission capacity set by --connections-max"
            );
            u64::from(n)
        }
        ConnectionsMax::Auto => {
            let d = derive(read_host(), cfg);
            tracing::info!(
                connections_max = d.connections_max,
                cgroup_memory_limit = ?d.cgroup_memory_limit,
                mem_total = d.mem_total,
                memory_budget_percent = cfg.memory_budget_percent,
                process_baseline_bytes = PROCESS_BASELINE_BYTES,
                budget_bytes = d.budget_bytes,
                connection_memory_bytes = cfg.connection_memory_bytes,
                by_memory = d.by_memory,
                open_files_soft = ?d.open_files_soft,
                fd_reserve = FD_RESERVE,
                by_open_files = ?d.by_open_files,
                "admission capacity derived (--connections-max auto): min(budget / connection_memory_bytes, open files - reserve)"
            );
            d.connections_max
        }
    }
}

/// The rule, pure: budget = (cgroup limit, or MemTotal when unlimited) × percent − the
/// baseline; capacity = min(budget ÷ bytes per connection, open-file soft limit − reserve),
/// at least 1.
pub fn derive(host: Host, cfg: &Config) -> Derived {
    let memory = host.cgroup_memory_limit.unwrap_or(host.mem_total);
    let budget_bytes = (u128::from(memory) * u128::from(cfg.memory_budget_percent) / 100) as u64;
    let budget_bytes = budget_bytes.saturating_sub(PROCESS_BASELINE_BYTES);
    let by_memory = budget_bytes / cfg.connection_memory_bytes;
    let by_open_files = host.open_files_soft.map(|n| n.saturating_sub(FD_RESERVE));
    let connections_max = by_open_files.map_or(by_memory, |f| f.min(by_memory)).max(1);
    Derived {
        connections_max,
        cgroup_memory_limit: host.cgroup_memory_limit,
        mem_total: host.mem_total,
        budget_bytes,
        by_memory,
        open_files_soft: host.open_files_soft,
        by_open_files,
    }
}

pub fn read_host() -> Host {
    let mem_total = read("/proc/meminfo")
        .as_deref()
        .and_then(mem_total_bytes)
        .unwrap_or(u64::MAX);
    let cgroup_memory_limit = read("/proc/self/cgroup")
        .as_deref()
        .and_then(|c| cgroup_memory_limit(c, Path::new("/sys/fs/cgroup")))
        .filter(|limit| *limit < mem_total);
    let open_files_soft = read("/proc/self/limits")
        .as_deref()
        .and_then(open_files_soft);
    Host {
        cgroup_memory_limit,
        mem_total,
        open_files_soft,
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `MemTotal:  24683584 kB` → bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// `Max open files   20000   20000   files` → the soft limit (`None` when unlimited).
fn open_files_soft(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The memory limit of this process's cgroup, from `/proc/self/cgroup` (`cgroup` is its
/// text) under the cgroup mount `root`. cgroup v1 (`N:memory:/path`, or a controller list
/// with `memory`): `memory.stat`'s `hierarchical_memory_limit` (the smallest limit on the
/// way to the root), else `memory.limit_in_bytes`. cgroup v2 (`0::/path`): the smallest
/// `memory.max` from the process's cgroup up to the root. `None` when no limit is set.
pub fn cgroup_memory_limit(cgroup: &str, root: &Path) -> Option<u64> {
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let dir = root.join("memory").join(path.trim_start_matches('/'));
            let stat = std::fs::read_to_string(dir.join("memory.stat")).ok();
            let hierarchical = stat.as_deref().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            let own = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            return hierarchical.or(own).filter(|l| *l < V1_UNLIMITED);
        }
    }
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut smallest: Option<u64> = None;
    loop {
        let max = std::fs::read_to_string(dir.join("memory.max")).ok();
        if let Some(limit) = max.as_deref().and_then(|v| v.trim().parse::<u64>().ok()) {
            smallest = Some(smallest.map_or(limit, |s| s.min(limit)));
        }
        if dir == root || !dir.pop() {
            return smallest;
        }
    }
}

/// cgroup v1 writes "no limit" as the largest page-aligned `i64` (9223372036854771712).
const V1_UNLIMITED: u64 = 1 << 62;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn cfg(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("sokdo").chain(args.iter().copied())).unwrap()
    }

    /// Goal: the formula as documented: the cgroup limit over MemTotal, the percent, the
    /// baseline, the bytes per connection, then the open-file cap.
    #[test]
    fn capacity_is_memory_budget_over_bytes_capped_by_open_files() {
        let c = cfg(&[
            "--memory-budget-percent",
            "50",
            "--connection-memory-bytes",
            "10000",
        ]);
        let host = Host {
            cgroup_memory_limit: Some(1 << 30),
            mem_total: 16 << 30,
            open_files_soft: Some(1_000_000),
        };
        let d = derive(host, &c);
        assert_eq!(d.budget_bytes, (512 << 20) - (64 << 20));
        assert_eq!(d.connections_max, ((512u64 << 20) - (64 << 20)) / 10_000);
        let few_files = Host {
            open_files_soft: Some(20_000),
            ..host
        };
        assert_eq!(derive(few_files, &c).connections_max, 19_900);
        let no_cgroup = Host {
            cgroup_memory_limit: None,
            open_files_soft: None,
            ..host
        };
        assert_eq!(
            derive(no_cgroup, &c).connections_max,
            ((8u64 << 30) - (64 << 20)) / 10_000
        );
        let tiny = Host {
            cgroup_memory_limit: Some(1 << 20),
            ..host
        };
        assert_eq!(derive(tiny, &c).connections_max, 1, "never 0");
    }

    #[test]
    fn host_files_parse() {
        assert_eq!(
            mem_total_bytes("MemTotal:       24683584 kB\nMemFree: 1 kB\n"),
            Some(24_683_584 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(open_files_soft(limits), Some(20_000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_soft(unlimited), None);
    }

    /// Goal: v1 and v2 layouts, each with a limit and without.
    #[test]
    fn cgroup_limits_v1_and_v2() {
        let root = std::env::temp_dir().join(format!("sokdo-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let v1 = root.join("memory/a/b");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        let cg = "9:name=systemd:/\n4:memory:/a/b\n0::/\n";
        assert_eq!(cgroup_memory_limit(cg, &root), Some(512 << 20));
        std::fs::write(
            v1.join("memory.stat"),
            "cache 0\nhierarchical_memory_limit 268435456\n",
        )
        .unwrap();
        assert_eq!(
            cgroup_memory_limit(cg, &root),
            Some(256 << 20),
            "a parent's smaller limit"
        );
        std::fs::write(
            v1.join("memory.stat"),
            "hierarchical_memory_limit 9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_memory_limit(cg, &root), None, "unlimited");

        let v2 = root.join("x/y");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.join("x/memory.max"), "1073741824\n").unwrap();
        assert_eq!(cgroup_memory_limit("0::/x/y\n", &root), Some(1 << 30));
        std::fs::write(root.join("x/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_limit("0::/x/y\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
