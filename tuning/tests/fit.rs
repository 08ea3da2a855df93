//! `sokdo-tune fit`, the real binary: exact synthetic reports give back their coefficients;
//! the committed reports are reproduced within the error the fit prints, and the committed
//! model is their fit; bad input is refused naming the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sokdo-tune"))
        .args(args)
        .output()
        .expect("sokdo-tune runs")
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn json_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

fn out_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sokdo-tune-{}-{name}.json", std::process::id()))
}

/// Fits `files`, returns (stdout, stderr, the model written by `--out`).
fn fit(files: &[String], name: &str) -> (String, String, Value) {
    let out = out_path(name);
    let mut args = vec!["fit".to_string(), "--out".into(), out.display().to_string()];
    args.extend_from_slice(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = tune(&args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "fit failed: {stderr}");
    let model = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    (stdout, stderr, model)
}

/// The generator (tests/fixtures/synthetic/generate.py) made every figure an exact sum:
/// RSS growth = 20000·connections + 4000·rooms + 500·ring messages + 50·stored messages,
/// CPU = 20e-6·deliveries + 50e-6·sends + 1e-3·handshakes + 1e-6·connection-seconds (per
/// ramp step), kernel TCP memory = 1500 bytes × 2 sockets per user.
#[test]
fn exact_synthetic_reports_give_back_their_coefficients() {
    let files = json_files(&crate_dir().join("tests/fixtures/synthetic"));
    let (_, stderr, m) = fit(&files, "synthetic");
    for (part, name, want) in [
        ("memory", "bytes_per_connection", 20000.0),
        ("memory", "bytes_per_room", 4000.0),
        ("memory", "bytes_per_ring_message", 500.0),
        ("memory", "bytes_per_stored_message", 50.0),
        ("memory", "baseline_bytes_per_process", 80.0 * 1048576.0),
        ("memory", "kernel_bytes_per_socket", 1500.0),
        ("cpu", "s_per_delivery", 20e-6),
        ("cpu", "s_per_send", 50e-6),
        ("cpu", "s_per_handshake", 1e-3),
        ("cpu", "s_per_connection_s", 1e-6),
    ] {
        let got = m[part][name]["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: {}", m[part][name]));
        assert!((got - want).abs() <= 1e-6 * want, "{name}: {got} ≠ {want}");
    }
    assert!(m["memory"]["fit"]["max_relative_error"].as_f64().unwrap() < 1e-6);
    assert!(m["cpu"]["fit"]["max_relative_error"].as_f64().unwrap() < 1e-9);
    assert!(
        stderr.contains("of target \"ws\""),
        "another target's run is skipped: {stderr}"
    );
    assert_eq!(m["memory"]["fit"]["rows"].as_array().unwrap().len(), 7);
    // The ramp's three steps carry their CPU: three points instead of one.
    let cpu_rows = m["cpu"]["fit"]["rows"].as_array().unwrap();
    assert_eq!(cpu_rows.len(), 9);
    assert!(
        cpu_rows.iter().any(|r| r["scenario"] == "ramp 200u step 1"),
        "{cpu_rows:?}"
    );
}

/// The "max relative error N%" the fit printed for `what`.
fn printed_max(stdout: &str, what: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{what} fit (")))
        .unwrap_or_else(|| panic!("no {what} fit line in {stdout}"));
    let after = line.split("max relative error ").nth(1).unwrap();
    after.split('%').next().unwrap().parse::<f64>().unwrap() / 100.0
}

/// Every committed report's runs, predicted by the fit, are within the error it printed,
/// and the committed model is exactly the fit of the committed reports.
#[test]
fn committed_reports_are_reproduced_within_the_printed_error() {
    let files = json_files(&crate_dir().join("models/reports"));
    assert!(
        !files.is_empty(),
        "tuning/models/reports/ holds the reports the model came from"
    );
    let (stdout, _, m) = fit(&files, "committed");
    let mut checked = 0;
    for (part, what) in [("memory", "memory"), ("memory", "cpu")] {
        let f = if what == "cpu" {
            &m["cpu"]["fit"]
        } else {
            &m[part]["fit"]
        };
        let rows = f["rows"].as_array().unwrap();
        if rows.is_empty() {
            continue;
        }
        let max = printed_max(&stdout, what);
        for r in rows {
            let (measured, predicted) = (
                r["measured"].as_f64().unwrap(),
                r["predicted"].as_f64().unwrap(),
            );
            let err = ((predicted - measured) / measured).abs();
            assert!(
                err <= max + 5e-7,
                "{what} {}: {err} > printed {max}",
                r["file"]
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no run was fitted: {stdout}");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(crate_dir().join("models/2vcpu-1core-server.json")).unwrap(),
    )
    .unwrap();
    for part in ["memory", "cpu"] {
        for (name, c) in m[part].as_object().unwrap() {
            let Some(value) = c.get("value") else {
                continue;
            };
            let was = &committed[part][name]["value"];
            let same = match (value.as_f64(), was.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
                _ => value == was,
            };
            assert!(
                same,
                "{part}.{name}: committed {was}, refit {value}: refit the model"
            );
        }
    }
}

/// Reports of real runs (a debug sokdo, 300 users, rooms of 50 in every run) read, and what
/// they cannot tell apart is said, not invented.
#[test]
fn real_reports_read_and_unidentified_terms_are_named() {
    let files = json_files(&crate_dir().join("tests/fixtures/debug"));
    let (stdout, _, m) = fit(&files, "debug");
    assert!(
        m["memory"]["bytes_per_connection"]["value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(m["memory"]["bytes_per_room"]["value"].is_null());
    let note = m["memory"]["bytes_per_room"]["note"].as_str().unwrap();
    assert!(
        note.contains("not identified") && note.contains("connections"),
        "{note}"
    );
    assert!(stdout.contains("not identified"), "{stdout}");
    assert!(
        m["cpu"]["s_per_delivery"]["value"].is_null(),
        "these reports have no CPU figures"
    );
}

/// A real `compare` run (debug sokdo, server pinned to CPU 0 while other builds ran there):
/// the CPU's busy time is 3–40 × the server's own, so `auto` takes the server's own and says
/// so; `--cpu-figure busy` takes the busy time. The kernel's TCP memory (machine-wide) shrank
/// over two of the runs: only the run where it grew counts.
#[test]
fn shared_server_cpus_fall_back_to_the_servers_own_time() {
    let file = crate_dir()
        .join("tests/fixtures/compare-shared-cpu.json")
        .display()
        .to_string();
    let (_, stderr, auto) = fit(std::slice::from_ref(&file), "auto");
    assert!(stderr.contains("the server's own is used"), "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let idle = &report["runs"][0]["summary"];
    let row = |m: &Value, at: &str| {
        m["cpu"]["fit"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scenario"] == at)
            .unwrap()["measured"]
            .clone()
    };
    assert_eq!(row(&auto, "idle 1000u"), idle["server_cpu_s"]);
    let out = out_path("busy");
    let o = tune(&[
        "fit",
        "--cpu-figure",
        "busy",
        "--out",
        &out.display().to_string(),
        &file,
    ]);
    assert!(o.status.success());
    let busy: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    assert_eq!(row(&busy, "idle 1000u"), idle["server_cpus_busy_s"]);
    // Kernel: only the idle run's TCP memory grew (409600 bytes, 1000 users, 2 sockets each).
    let k = auto["memory"]["kernel_bytes_per_socket"]["value"]
        .as_f64()
        .unwrap();
    assert!((k - 409600.0 / 2000.0).abs() < 1e-9, "{k}");
}

#[test]
fn bad_input_is_refused_naming_the_file() {
    let dir = crate_dir().join("tests/fixtures");
    for (name, says) in [
        ("not-a-report.json", "not a sokdo-bench report"),
        ("not-json.txt", "not JSON"),
        ("no-usable-runs.json", "no usable runs"),
        ("missing.json", "cannot read"),
    ] {
        let path = dir.join(name).display().to_string();
        let o = tune(&["fit", &path]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name} was accepted");
        assert!(err.contains(name) && err.contains(says), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let o = tune(&["fit"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("REPORT.json"));
}
