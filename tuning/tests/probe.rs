//! `sokdo-tune probe`, the real binary, on this machine: its first cap is the open-file hard
//! limit (20,000 here, and not raisable), and it reads cgroup limits set by the test.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sokdo-tune");

fn probe_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("sokdo-tune runs");
    assert!(
        out.status.success(),
        "probe failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r.rlim_max
}

#[test]
fn probe_names_the_open_file_hard_limit_as_the_first_cap() {
    let hard = nofile_hard();
    assert_ne!(
        hard,
        libc::RLIM_INFINITY,
        "this test expects a finite open-file hard limit"
    );
    let report = probe_json(Command::new(BIN).args(["probe", "--json"]));
    let first = &report["caps"][0];
    assert_eq!(
        first["name"], "open files, hard limit (RLIMIT_NOFILE)",
        "{report:#}"
    );
    assert!(
        first["value"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{hard} ")),
        "{first:#}"
    );
    assert_eq!(first["sockets_allowed"], hard - 100, "{first:#}");
    assert_eq!(report["first_cap"], *first);
    assert_eq!(report["readings"]["nofile_hard"]["value"], hard);
    // Whether a child shell can raise it decides whether probe calls it liftable (at
    // fs.nr_open no one can: that row's fix comes first).
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if hard < nr_open {
        let raisable = Command::new("sh")
            .args(["-c", &format!("ulimit -Hn {}", hard + 1)])
            .status()
            .unwrap()
            .success();
        assert_eq!(first["liftable"], raisable, "{first:#}");
        let fix = first["fix"].as_str().unwrap();
        assert_eq!(
            fix.starts_with("cannot be lifted here"),
            !raisable,
            "{first:#}"
        );
    }
    // Every cap has the schema's fields, and they are sorted by the sockets they allow.
    let caps = report["caps"].as_array().unwrap();
    let counts: Vec<u64> = caps
        .iter()
        .map(|c| {
            for k in ["name", "value", "fix", "scope", "note"] {
                assert!(c[k].is_string(), "{k} in {c:#}");
            }
            assert!(c["liftable"].is_boolean(), "{c:#}");
            c["sockets_allowed"].as_u64().unwrap_or(u64::MAX)
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
}

#[test]
fn probe_table_names_the_first_cap() {
    let hard = nofile_hard();
    let out = Command::new(BIN).arg("probe").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let first_line = text
        .lines()
        .find(|l| l.starts_with(" 1. "))
        .unwrap_or_default();
    assert!(first_line.contains("open files, hard limit"), "{text}");
    assert!(text.contains(&format!("value: {hard} ")), "{text}");
}

/// cgroup v1 directories made for one test, removed on drop (also when the test fails).
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("could not remove {}: {e}", dir.display());
            }
        }
    }
}

fn make_cgroup(controller: &str, files: &[(&str, &str)], guard: &mut Cgroups) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/sys/fs/cgroup/{controller}/sokdo-tune-test-{}",
        std::process::id()
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot create the cgroup {} ({e}): this test needs root and a cgroup v1 \
             `{controller}` hierarchy at /sys/fs/cgroup/{controller}",
            dir.display()
        )
    });
    guard.0.push(dir.clone());
    for (file, value) in files {
        std::fs::write(dir.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value} to {}/{file}: {e}", dir.display()));
    }
    dir
}

#[test]
fn probe_reads_cgroup_limits_set_by_the_test() {
    let mut guard = Cgroups(Vec::new());
    let limit: u64 = 256 << 20;
    let mem = make_cgroup(
        "memory",
        &[("memory.limit_in_bytes", &limit.to_string())],
        &mut guard,
    );
    let cpu = make_cgroup(
        "cpu",
        &[
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "50000"),
        ],
        &mut guard,
    );
    let script = format!(
        "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec {BIN} probe --json",
        mem.display(),
        cpu.display()
    );
    let report = probe_json(Command::new("sh").args(["-c", &script]));
    let r = &report["readings"];
    assert_eq!(r["cgroup_memory_limit_bytes"]["value"], limit, "{r:#}");
    let mem_file = mem.join("memory.limit_in_bytes").display().to_string();
    assert_eq!(r["cgroup_memory_path"], mem_file.as_str(), "{r:#}");
    assert_eq!(r["cgroup_cpu_quota_cpus"]["value"], 0.5, "{r:#}");
    // Half a CPU: one shard.
    assert_eq!(report["shards"], 1);
    // The memory cap is counted from the cgroup's 256 MiB, not the host's memory.
    let memory = report["caps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "memory")
        .expect("a memory cap");
    let per = 2_598 + r["kernel_socket_bytes"].as_u64().unwrap();
    assert_eq!(
        memory["sockets_allowed"],
        // `SOKDO_BASELINE_BYTES` (tuning/src/caps.rs; a binary crate, so not importable here).
        (limit - 13_000_000) / per,
        "{memory:#}"
    );
    assert!(
        memory["value"].as_str().unwrap().contains("cgroup 256 MiB"),
        "{memory:#}"
    );
}
