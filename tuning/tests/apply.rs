//! `sokdo-tune apply`, the real binary, into a temporary root: the dry run shows the diff and
//! writes nothing, a run writes both files with their keys, a second run changes nothing,
//! and a bad flag value is refused naming the flag.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_sokdo-tune");
const SYSCTL: &str = "etc/sysctl.d/60-sokdo.conf";
const DROPIN: &str = "etc/systemd/system/sokdo.service.d/limits.conf";

/// A directory of its own for one test, removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sokdo-tune-apply-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempRoot(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn apply(root: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("apply")
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .expect("sokdo-tune runs")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "apply failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            found.extend(files_under(&p));
        } else {
            found.push(p);
        }
    }
    found
}

#[test]
fn dry_run_prints_the_diff_and_writes_nothing() {
    let root = TempRoot::new();
    let text = ok_stdout(&apply(
        root.path(),
        &["--dry-run", "--connections", "100000"],
    ));
    let sysctl = root.path().join(SYSCTL).display().to_string();
    assert!(
        text.contains(&format!("--- /dev/null\n+++ {sysctl}\n@@ -0,")),
        "{text}"
    );
    assert!(text.contains("\n+net.core.somaxconn = "), "{text}");
    assert!(text.contains("\n+LimitNOFILE=100352\n"), "{text}");
    assert!(text.contains("dry run: nothing written"), "{text}");
    assert_eq!(files_under(root.path()), Vec::<PathBuf>::new());
}

#[test]
fn apply_writes_both_files_then_a_second_run_shows_no_change() {
    let root = TempRoot::new();
    let first = ok_stdout(&apply(root.path(), &["--connections", "100000"]));
    assert!(first.contains("+++ "), "{first}");
    let sysctl = std::fs::read_to_string(root.path().join(SYSCTL)).unwrap();
    for key in [
        "net.core.somaxconn = ",
        "net.ipv4.tcp_max_syn_backlog = ",
        "net.ipv4.ip_local_port_range = ",
    ] {
        assert!(
            sysctl.lines().any(|l| l.starts_with(key)),
            "{key} in\n{sysctl}"
        );
    }
    let dropin = std::fs::read_to_string(root.path().join(DROPIN)).unwrap();
    assert!(dropin.contains("[Service]\n"), "{dropin}");
    assert!(
        dropin.lines().any(|l| l == "LimitNOFILE=100352"),
        "{dropin}"
    );
    assert!(
        dropin.lines().any(|l| l == "LimitMEMLOCK=infinity"),
        "{dropin}"
    );
    // The printed diff is exactly what was written: every `+` line is in the files.
    for added in first
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
    {
        let line = &added[1..];
        assert!(
            sysctl.lines().chain(dropin.lines()).any(|l| l == line),
            "{line}"
        );
    }
    let second = ok_stdout(&apply(root.path(), &["--connections", "100000"]));
    assert!(
        second.contains("no change: both files are up to date"),
        "{second}"
    );
    assert!(!second.contains("+++ "), "{second}");
    assert!(!second.contains("wrote "), "{second}");
}

#[test]
fn a_changed_count_shows_only_the_lines_that_change() {
    let root = TempRoot::new();
    ok_stdout(&apply(
        root.path(),
        &["--connections", "100000", "--unit", "chat"],
    ));
    let dropin = root
        .path()
        .join("etc/systemd/system/chat.service.d/limits.conf");
    assert!(dropin.exists());
    let text = ok_stdout(&apply(
        root.path(),
        &["--connections", "200000", "--unit", "chat"],
    ));
    assert!(
        text.contains("\n-LimitNOFILE=100352\n+LimitNOFILE=200704\n"),
        "{text}"
    );
    assert!(!text.contains("\n+[Service]"), "{text}");
    let now = std::fs::read_to_string(dropin).unwrap();
    assert!(now.contains("LimitNOFILE=200704\n"), "{now}");
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    let root = TempRoot::new();
    for (args, flag) in [
        (&["--connections", "0"][..], "--connections"),
        (&["--connections", "many"][..], "--connections"),
        (&["--unit", "../etc"][..], "--unit"),
    ] {
        let out = apply(root.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["apply", "--root", "/nonexistent/sokdo-tune-root"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--root"), "{err}");
    assert_eq!(files_under(root.path()), Vec::<PathBuf>::new());
}
