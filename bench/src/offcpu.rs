//! `profile --off-cpu`: what a flamegraph cannot show — the time a server thread was ready
//! to run and did not, and who had its CPU meanwhile.
//!
//! `perf sched record -C <server CPUs>` records every context switch and wake-up on the
//! server's CPUs for the scenario's run; `perf sched timehist` turns them into one line per
//! time a thread got a CPU: when, which thread (`name[tid/pid]`), how long it had waited
//! since it last ran, how long it waited *runnable* (woken but not on a CPU: the
//! scheduling delay) and how long it then ran. [`summarise`] folds those lines into a
//! table per thread of the server (run lengths and scheduling delays: p50, p99, max) and,
//! for every delay above [`DELAYED_MS`], the thread that had the CPU just before the
//! delayed one got it — what held the core while a shard waited.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write;

/// A scheduling delay at least this long counts as a thread kept off its CPU.
pub const DELAYED_MS: f64 = 0.5;

/// One `perf sched timehist` line: a thread got a CPU.
#[derive(Clone, Debug, PartialEq)]
struct Switch {
    cpu: u32,
    /// The thread's name with per-instance numbers folded (`iou-wrk-123` → `iou-wrk`),
    /// shard names kept whole (`sokdo-shard-0-1`).
    name: String,
    pid: Option<u32>,
    sched_delay_ms: f64,
    run_ms: f64,
}

/// Parses `time [cpu] name[tid/pid] wait sch-delay run` (the name may hold spaces);
/// `None` for headers and other lines.
fn parse_line(line: &str) -> Option<Switch> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 {
        return None;
    }
    fields[0].parse::<f64>().ok()?;
    let cpu = fields[1]
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let n = fields.len();
    let run_ms = fields[n - 1].parse().ok()?;
    let sched_delay_ms = fields[n - 2].parse().ok()?;
    fields[n - 3].parse::<f64>().ok()?;
    let task = fields[2..n - 3].join(" ");
    let (name, ids) = match task.rsplit_once('[') {
        Some((name, ids)) => (name, Some(ids.trim_end_matches(']'))),
        None => (task.as_str(), None),
    };
    // `[tid/pid]`, or `[tid]` for a process's main thread and the kernel's own.
    let pid = ids.and_then(|ids| ids.rsplit('/').next()?.parse().ok());
    Some(Switch {
        cpu,
        name: fold_name(name),
        pid,
        sched_delay_ms,
        run_ms,
    })
}

/// `iou-wrk-12293` → `iou-wrk`, `kworker/u8:21-k` → `kworker`; a sokdo thread keeps its name.
fn fold_name(name: &str) -> String {
    if name.starts_with("sokdo-") {
        return name.to_string();
    }
    let base = name.split('/').next().unwrap_or(name);
    let folded = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == ':');
    // A name of digits only (some helpers name their threads so) stays as it is.
    if folded.is_empty() { name } else { folded }.to_string()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[derive(Default)]
struct PerThread {
    runs: Vec<f64>,
    delays: Vec<f64>,
    /// Delays ≥ [`DELAYED_MS`], by the thread that had the CPU before.
    delayed_by: BTreeMap<String, (u64, f64)>,
}

/// The table for `timehist` (its whole text): the threads of `pids`, busiest first.
pub fn summarise(timehist: &str, pids: &[u32]) -> String {
    let mut threads: BTreeMap<String, PerThread> = BTreeMap::new();
    let mut last_on_cpu: BTreeMap<u32, String> = BTreeMap::new();
    for s in timehist.lines().filter_map(parse_line) {
        let before = last_on_cpu.insert(s.cpu, s.name.clone());
        if !s.pid.is_some_and(|p| pids.contains(&p)) {
            continue;
        }
        let t = threads.entry(s.name.clone()).or_default();
        t.runs.push(s.run_ms);
        t.delays.push(s.sched_delay_ms);
        if s.sched_delay_ms >= DELAYED_MS {
            let by = before.unwrap_or_else(|| "?".into());
            let e = t.delayed_by.entry(by).or_default();
            e.0 += 1;
            e.1 += s.sched_delay_ms;
        }
    }
    let mut rows: Vec<(String, PerThread)> = threads.into_iter().collect();
    rows.iter_mut().for_each(|(_, t)| {
        t.runs.sort_by(f64::total_cmp);
        t.delays.sort_by(f64::total_cmp);
    });
    rows.sort_by(|a, b| sum(&b.1.runs).total_cmp(&sum(&a.1.runs)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "off-CPU (perf sched, the server's CPUs): per server thread, each time it got a CPU"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>10}  {:>24}  {:>26}",
        "thread", "runs", "on-CPU s", "run ms p50 / p99 / max", "waited ms p50 / p99 / max"
    );
    for (name, t) in &rows {
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>10.3}  {:>7.3} / {:>6.3} / {:>7.3}  {:>8.3} / {:>6.3} / {:>7.3}",
            name,
            t.runs.len(),
            sum(&t.runs) / 1000.0,
            quantile(&t.runs, 0.5),
            quantile(&t.runs, 0.99),
            quantile(&t.runs, 1.0),
            quantile(&t.delays, 0.5),
            quantile(&t.delays, 0.99),
            quantile(&t.delays, 1.0),
        );
    }
    let _ = writeln!(
        out,
        "\nwaits of {DELAYED_MS} ms or more, by what had the CPU before the waiting thread got it:"
    );
    for (name, t) in &rows {
        let mut by: Vec<_> = t.delayed_by.iter().collect();
        by.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let list: Vec<String> = by
            .iter()
            .map(|(who, (n, ms))| format!("{who} {n}× ({ms:.1} ms)"))
            .collect();
        if !list.is_empty() {
            let _ = writeln!(out, "  {name}: {}", list.join(", "));
        }
    }
    out
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
   11200.758630 [0000]  <idle>                              0.000      0.000      0.756
   11200.758820 [0000]  sokdo-shard-0-1[3305/3299]          0.000      0.000      0.189
   11200.758836 [0000]  sokdo-wal[3301/3299]                0.000      0.160      0.016
   11200.758848 [0000]  iou-wrk-3301[3313/3299]             0.000      0.002      0.011
   11200.759959 [0000]  sokdo-sink[3302/3299]               0.448      0.000      3.755
   11200.761902 [0000]  sokdo-shard-0-1[3305/3299]          0.777      2.100      0.400
   11200.762000 [0001]  sokdo-bench[4000/4000]              0.000      0.900      0.400
   11200.763000 [0000]  kworker/u8:21-k[26166]              0.000      0.000      0.020
";

    #[test]
    fn a_timehist_line_is_parsed_from_both_ends() {
        let s = parse_line(
            "   11200.758848 [0000]  iou-wrk-3301[3313/3299]             0.000      0.002      0.011",
        )
        .unwrap();
        assert_eq!(
            s,
            Switch {
                cpu: 0,
                name: "iou-wrk".into(),
                pid: Some(3299),
                sched_delay_ms: 0.002,
                run_ms: 0.011,
            }
        );
        assert_eq!(fold_name("1234"), "1234");
        let k = parse_line(SAMPLE.lines().last().unwrap()).unwrap();
        assert_eq!((k.name.as_str(), k.pid), ("kworker", Some(26166)));
        assert!(
            parse_line(SAMPLE.lines().next().unwrap()).is_none(),
            "header"
        );
    }

    #[test]
    fn the_table_keeps_the_servers_threads_and_names_what_delayed_them() {
        let table = summarise(SAMPLE, &[3299]);
        assert!(!table.contains("sokdo-bench"), "not the server's\n{table}");
        assert!(!table.contains("<idle>"), "{table}");
        let sink = table
            .lines()
            .position(|l| l.starts_with("sokdo-sink"))
            .unwrap();
        let shard = table
            .lines()
            .position(|l| l.starts_with("sokdo-shard-0-1"))
            .unwrap();
        assert!(sink < shard, "busiest first\n{table}");
        let shard_row = table.lines().nth(shard).unwrap();
        assert!(shard_row.contains("     2  "), "two runs: {shard_row}");
        assert!(shard_row.contains("2.100"), "max delay: {shard_row}");
        assert!(
            table.contains("  sokdo-shard-0-1: sokdo-sink 1× (2.1 ms)"),
            "the sink held CPU 0 before the delayed shard got it\n{table}"
        );
    }
}
