//! How a report leaves the bench: a few lines per run on stdout, the JSON file and the HTML
//! file. Shared by the single-scenario commands (`main.rs`) and `compare`.
#![forbid(unsafe_code)]

use crate::report::{Host, Report, Run};

pub fn new_report(command: &str, runs: Vec<Run>, mut host: Host) -> Report {
    host.cpus = crate::kernel::cpus_online();
    Report {
        schema: 1,
        command: command.to_string(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host,
        runs,
        comparison: None,
    }
}

pub fn write_reports(
    report: &Report,
    json: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
        eprintln!("JSON report: {}", path.display());
    }
    if let Some(path) = html {
        std::fs::write(path, crate::html::render(report)?)?;
        eprintln!("HTML report: {}", path.display());
    }
    Ok(())
}

/// A few lines per run on stdout: what a person reads first.
pub fn print_runs(runs: &[Run]) {
    for r in runs {
        let s = &r.summary;
        println!("== {} against {} ({})", r.scenario, r.target, r.server);
        if let Some(bin) = &r.server_bin {
            println!("   binary: {bin}");
        }
        println!(
            "   users: held {}  peak {}  connect ok {} / fail {}  disconnects {}",
            s.users_held, s.users_peak, s.connect_ok, s.connect_fail, s.disconnects
        );
        if s.users_by_server.len() > 1 {
            println!("   users per server process: {:?}", s.users_by_server);
        }
        print_soak(r);
        println!(
            "   messages: sent {}  acked {}  received {}  expected {}  ({:.0} deliveries/s, {:.0} sends/s)",
            s.sent,
            s.acked,
            s.received,
            s.expected_deliveries.map_or("-".into(), |e| e.to_string()),
            s.deliveries_per_s,
            s.sends_per_s
        );
        let l = &s.latency_ms;
        println!(
            "   latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}  ({} samples)",
            l.p50, l.p90, l.p99, l.max, l.mean, l.samples
        );
        if let Some(per) = s.server_rss_per_connection_bytes {
            println!("   server RSS per connection: {:.0} bytes", per);
        }
        if !s.errors.is_empty() {
            println!("   errors: {:?}", s.errors);
        }
        if let Some(n) = s.server_log_panics {
            let verdict = if n == 0 { "no panic" } else { "PANICKED" };
            println!(
                "   server log: {verdict} ({n} panic lines in {})",
                s.server_logs.join(", ")
            );
        }
        print_server(r);
        println!(
            "   stop: {}{}  generator: {} workers, {:.0}% cpu (busiest {:.0}%), {:.0} MiB",
            s.stop_reason,
            if s.unreachable { " (UNREACHABLE)" } else { "" },
            r.generator.workers,
            r.generator.cpu_percent,
            r.generator.busiest_worker_cpu_percent,
            r.generator.rss_bytes_max as f64 / 1048576.0
        );
        for c in &r.checks {
            let verdict = if c.pass { "PASS" } else { "FAIL" };
            println!(
                "   {verdict} {}: {} (target {})",
                c.name, c.measured, c.target
            );
        }
    }
}

/// A soak's own lines: churn, RSS and fds after the warm-up, drops, the verdict.
fn print_soak(r: &Run) {
    if let Some(k) = &r.soak {
        let mib =
            |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        let n = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "   soak: churn joined {} / left {} / failed {} ({:.1}/s); RSS {} → {}, fds {} → {} after the warm-up",
            k.churn_ok,
            k.churn_closed,
            k.churn_fail,
            k.churn_ok as f64 / r.duration_s.max(1e-3),
            mib(k.rss_after_warmup_bytes),
            mib(k.rss_end_bytes),
            n(k.fds_after_warmup),
            n(k.fds_end)
        );
        println!(
            "   soak: chatting users dropped {} {:?}, came back {} (failed attempts {})",
            k.users_dropped, k.drops, k.reconnects, k.reconnect_fail
        );
        println!("   soak verdict: {}", k.verdict);
    }
}

/// The server's side of a run, when measured: memory, CPU, the kernel's TCP memory.
fn print_server(r: &Run) {
    let s = &r.summary;
    if let Some(rss) = s.server_rss_after_bytes {
        println!(
            "   server RSS (all processes): {:.1} MiB{}",
            rss as f64 / 1048576.0,
            s.server_cgroup_memory_peak_bytes
                .map_or(String::new(), |p| format!(
                    "  cgroup peak {:.1} MiB",
                    p as f64 / 1048576.0
                ))
        );
    }
    if let Some(line) = r.server_cpu_line() {
        println!("{line}");
    }
    if let (Some(b), Some(a)) = (s.kernel_tcp_mem_before_bytes, s.kernel_tcp_mem_after_bytes) {
        println!(
            "   kernel TCP memory: {:.1} MiB before, {:.1} MiB at the end (both ends on loopback)",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0
        );
    }
    if let Some(c) = &s.server_wal_commits {
        println!("{}", c.line());
    }
    if let Some(n) = s.server_oom_kills.filter(|n| *n > 0) {
        println!("   server processes OOM-killed: {n}");
    }
    print_cluster(r);
}

/// A cluster's lines ([`Run::cluster_lines`]).
fn print_cluster(r: &Run) {
    for line in r.cluster_lines() {
        println!("   {line}");
    }
}
