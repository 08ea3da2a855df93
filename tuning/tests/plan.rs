//! `sokdo-tune plan`, the real binary: a plan with a model of round figures checked against a
//! hand computation, the built-in model, and bad flag values named in the error.

use std::process::{Command, Output};

use serde_json::Value;

fn tune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sokdo-tune"))
        .args(args)
        .output()
        .expect("sokdo-tune runs")
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn plan_json(args: &[&str]) -> Value {
    let mut v = vec!["plan", "--json"];
    v.extend_from_slice(args);
    let out = tune(&v);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan --json prints JSON")
}

fn close(v: &Value, want: f64) -> bool {
    (v.as_f64().unwrap() - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// 20,000 users, a message per 5 s, rooms of 10, 100-byte bodies, 100 connects/s, 24 h,
/// 25 % headroom, from a balance of 100 credits, with tests/fixtures/model-round.json and a
/// room cache too large to fill (1 TiB per shard: the rings grow with the users; the cap is
/// the unit test `the_rings_stop_growing_at_the_shards_room_cache`):
/// - memory per user = 20000 + 8192 + 4000/10 + 500 × min(1024, 10/5 × 86400)/10 = 79792 B;
///   2 GiB × 0.75 − 100 MiB = 1505755136 B → 18871.0 users per instance;
/// - CPU per user-second = 1e-6 + 50e-6/5 + 20e-6 × 10/5 + 1e-3 × 100/20000 = 5.6e-5;
///   2 × 0.75 = 1.5 vCPU → 26785.7 users; at baseline 0.4 × 0.75 = 0.3 → 5357.1;
/// - network: 0.128 Gbps × 0.75 = 12e6 B/s ÷ (2/s × (100 + 120 + 70) B) → 20689.7 users;
///
/// So memory binds: 18871 per instance, ceil(20000 / 18871) = 2 instances; at baseline
/// ceil(20000 / 5357) = 4. Per instance 10000 × 5.6e-5 = 0.56 vCPU: drains 33.6 − 24 =
/// 9.6 credits/h, 100 / 9.6 = 10.417 h of burst; unlimited over 24 h: 9.6 × 24 − 100 =
/// 130.4 surplus credits each = 2.1733 vCPU-h × $0.05 × 2 instances = $0.21733.
#[test]
fn plan_matches_a_hand_computation() {
    let model = fixture("model-round.json");
    let p = plan_json(&[
        "--users",
        "20000",
        "--message-interval-s",
        "5",
        "--room-size",
        "10",
        "--instance",
        "t3.small",
        "--hours",
        "24",
        "--headroom-percent",
        "25",
        "--connects-per-s",
        "100",
        "--credit-balance",
        "100",
        "--body-bytes",
        "100",
        "--room-cache-bytes-per-shard",
        "1099511627776",
        "--model",
        &model,
    ]);
    assert_eq!(p["binding"], "memory");
    assert_eq!(p["users_per_instance"], 18871);
    assert_eq!(p["instances"], 2);
    assert!(
        close(&p["per_user"]["memory_bytes"], 79792.0),
        "{}",
        p["per_user"]
    );
    assert!(
        close(&p["per_user"]["cpu_s_per_s"], 5.6e-5),
        "{}",
        p["per_user"]
    );
    let c = &p["credits"];
    assert_eq!(c["instances_at_baseline"], 4);
    assert_eq!(c["users_per_instance_at_baseline"], 5357);
    assert!(close(&c["used_vcpus"], 0.56), "{c}");
    assert!(close(&c["burst_hours"], 100.0 / 9.6), "{c}");
    assert!(
        close(&c["unlimited_surplus_credits_per_instance"], 130.4),
        "{c}"
    );
    assert!(
        close(&c["unlimited_cost_usd"], 130.4 / 60.0 * 0.05 * 2.0),
        "{c}"
    );
    let flags: Vec<&str> = p["sokdo_flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(flags.contains(&"--connections-max 18871"), "{flags:?}");
    assert!(flags.contains(&"--shards 2"), "{flags:?}");
}

/// A fixed-performance kind has no credits; the human output names the binding limit.
#[test]
fn fixed_instances_have_no_credits_and_the_table_names_the_limit() {
    let model = fixture("model-round.json");
    let args = [
        "--users",
        "50000",
        "--message-interval-s",
        "10",
        "--room-size",
        "50",
        "--instance",
        "c6i.large",
        "--model",
        &model,
    ];
    let p = plan_json(&args);
    assert!(p["credits"].is_null(), "{p}");
    let mut v = vec!["plan"];
    v.extend_from_slice(&args);
    let out = tune(&v);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binding = p["binding"].as_str().unwrap();
    assert!(text.contains(&format!("{} binds)", binding)), "{text}");
    assert!(
        text.contains("a test model"),
        "the model's caveats are printed: {text}"
    );
}

/// The bench's emulated t3.small at its baseline: sokdo held to 0.2 vCPU, loopback (no
/// network cap). Rooms of 50, a message per 10 s: CPU per user-second = 1e-6 + 50e-6/10 +
/// 20e-6 × 50/10 = 1.06e-4; 0.2 × 0.8 = 0.16 vCPU → 1509.4 users; one shard.
#[test]
fn vcpus_and_network_can_be_given_for_an_emulated_instance() {
    let model = fixture("model-round.json");
    let p = plan_json(&[
        "--users",
        "1000",
        "--message-interval-s",
        "10",
        "--room-size",
        "50",
        "--vcpus",
        "0.2",
        "--network-gbps",
        "1000",
        "--model",
        &model,
    ]);
    assert_eq!(p["binding"], "cpu", "{p}");
    assert_eq!(p["users_per_instance"], 1509, "{p}");
    assert_eq!(p["instances"], 1, "{p}");
    let flags: Vec<&str> = p["sokdo_flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        flags.contains(&"--shards 1") && flags.contains(&"--connections-max 1509"),
        "{flags:?}"
    );
}

/// Without `--model` the built-in model is used: the plan works anywhere.
#[test]
fn the_built_in_model_plans_the_seeds_load() {
    let p = plan_json(&[
        "--users",
        "100000",
        "--message-interval-s",
        "10",
        "--room-size",
        "50",
        "--instance",
        "t3.small",
    ]);
    assert!(p["instances"].as_u64().unwrap() >= 1, "{p}");
    assert!(!p["credits"].is_null(), "{p}");
}

#[test]
fn bad_values_name_their_flag() {
    let base = [
        "plan",
        "--users",
        "10",
        "--message-interval-s",
        "10",
        "--room-size",
        "5",
    ];
    for (extra, flag) in [
        (vec!["--instance", "t3.huge"], "--instance"),
        (vec!["--credit-balance", "1000"], "--credit-balance"),
        (vec!["--model", "/nonexistent/model.json"], "--model"),
        (vec!["--model", &fixture("not-a-report.json")], "--model"),
        (vec!["--headroom-percent", "-5"], "--headroom-percent"),
        (vec!["--open-files-max", "10"], "--open-files-max"),
        (vec!["--vcpus", "0"], "--vcpus"),
        (vec!["--network-gbps", "-1"], "--network-gbps"),
    ] {
        let mut v = base.to_vec();
        v.extend_from_slice(&extra);
        let out = tune(&v);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(err.contains(flag), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
    }
    let out = tune(&[&base[..], &["--instance", "t3.huge"]].concat());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("t3.small"),
        "the table is listed"
    );
}

/// The committed model, fitted from `tuning/models/reports/` (no seeds'-load ramp among
/// them), predicts the seeds' ramp measured apart in `tuning/models/checks/` within ±15 %:
/// one emulated t3.small (6 processes on 1 CPU in 2 GiB), rooms of 50, one message per user
/// per 10 s, +500 users every 3 s — at the whole CPU and under a 20 % quota.
#[test]
fn the_committed_model_predicts_the_measured_seeds_ramps_within_15_percent() {
    let dir = format!("{}/models/checks", env!("CARGO_MANIFEST_DIR"));
    for (file, vcpus) in [("seed-r50-i10.json", "1"), ("q20-seed-r50-i10.json", "0.2")] {
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{file}")).unwrap())
                .unwrap();
        let run = &report["runs"][0];
        let held = run["summary"]["users_held"].as_f64().unwrap();
        let cfg = &run["config"];
        assert_eq!(cfg["room_size"], 50, "{file}");
        assert_eq!(cfg["message_interval_s"], 10.0, "{file}");
        let connects = cfg["step_users"].as_f64().unwrap() / cfg["step_s"].as_f64().unwrap();
        let hours = run["duration_s"].as_f64().unwrap() / 3600.0;
        let quota = report["host"]["server_cpu_quota_percent"].as_f64();
        assert_eq!(quota.map(|q| q / 100.0).unwrap_or(1.0).to_string(), vcpus);
        // One instance takes all the ramp's users and connects: plan for what it held.
        let users = (held.round() as u64).to_string();
        let p = plan_json(&[
            "--users",
            &users,
            "--message-interval-s",
            "10",
            "--room-size",
            "50",
            "--instance",
            "t3.small",
            "--vcpus",
            vcpus,
            "--network-gbps",
            "1000",
            "--headroom-percent",
            "0",
            "--connects-per-s",
            &connects.to_string(),
            "--hours",
            &hours.to_string(),
        ]);
        let predicted = p["users_per_instance"].as_f64().unwrap();
        let error = (predicted - held) / held;
        assert!(
            error.abs() <= 0.15,
            "{file}: plan says {predicted} users, the ramp held {held} ({:+.1} %)",
            error * 100.0
        );
    }
}
