//! The HTML report: summary tables and SVG plots (plotters), one self-contained file.
//! Plots: users over time, latency percentiles over time, throughput, and — for `compare` —
//! one bar chart per headline metric across targets.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::report::{Comparison, Report, Run, Sample};

const PALETTE: [RGBColor; 6] = [
    RGBColor(0xd6, 0x3a, 0x2f),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x17, 0xbe, 0xcf),
];

type Series = (String, Vec<(f64, f64)>);

pub fn render(report: &Report) -> anyhow::Result<String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>sokdo-bench: {cmd}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}}\
         table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ccc;\
         padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}td:first-child,th:first-child\
         {{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}.pass{{color:#187a18}}\
         .fail{{color:#b00;font-weight:bold}}.warn{{color:#a60}}</style></head><body>\
         <h1>sokdo-bench — {cmd}</h1><p>{cpus} CPUs; server CPUs {scpu}; bench CPUs {bcpu}; \
         server memory limit {mem}{procs}{quota}.</p>",
        cmd = report.command,
        cpus = report.host.cpus,
        scpu = report.host.server_cpus.as_deref().unwrap_or("unpinned"),
        bcpu = report.host.bench_cpus.as_deref().unwrap_or("unpinned"),
        mem = report
            .host
            .server_memory_limit_bytes
            .map_or("none".into(), |b| format!("{} MiB", b >> 20)),
        procs = match report.host.server_processes {
            Some(n) if n > 1 => format!(
                " (for all {n} processes of a target together; room r on process r mod {n})"
            ),
            _ => String::new(),
        },
        quota = report
            .host
            .server_cpu_quota_percent
            .map_or(String::new(), |p| format!(
                "; server CPU quota {p}% of one CPU per target (cgroup; the kernel's softirq \
                 work for loopback TCP is not charged to it)"
            )),
    );
    if let Some(c) = &report.comparison {
        comparison_section(&mut h, c)?;
    }
    let mut scenarios: Vec<&str> = report.runs.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for scenario in scenarios {
        let runs: Vec<&Run> = report
            .runs
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect();
        scenario_section(&mut h, scenario, &runs)?;
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

fn comparison_section(h: &mut String, c: &Comparison) -> anyhow::Result<()> {
    let _ = write!(
        h,
        "<h2>Comparison (ratios to {})</h2><table><tr><th>scenario</th><th>metric</th>",
        c.baseline
    );
    let mut targets: Vec<&String> = c.rows.iter().flat_map(|r| r.values.keys()).collect();
    targets.sort();
    targets.dedup();
    for t in &targets {
        let _ = write!(h, "<th>{t}</th>");
    }
    h.push_str("</tr>");
    for row in &c.rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}{}</td>",
            row.scenario,
            row.metric,
            if row.higher_is_better { " ↑" } else { " ↓" }
        );
        for t in &targets {
            match (row.values.get(*t), row.ratios.get(*t)) {
                (Some(v), Some(r)) => {
                    let _ = write!(h, "<td>{} <small>(×{r:.2})</small></td>", fmt_num(*v));
                }
                (Some(v), None) => {
                    let _ = write!(h, "<td>{}</td>", fmt_num(*v));
                }
                _ => h.push_str("<td>—</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><div class=plots>");
    for row in &c.rows {
        let bars: Vec<(String, f64)> = row.values.iter().map(|(t, v)| (t.clone(), *v)).collect();
        let title = format!(
            "{}: {} ({})",
            row.scenario,
            row.metric,
            if row.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            }
        );
        h.push_str(&bar_chart(&title, &bars)?);
    }
    h.push_str("</div>");
    Ok(())
}

/// One scenario: its summary table, the notes under it, then its plots.
fn scenario_section(h: &mut String, scenario: &str, runs: &[&Run]) -> anyhow::Result<()> {
    summary_table(h, scenario, runs);
    run_notes(h, runs);
    scenario_plots(h, scenario, runs)
}

/// One row per run: users, messages, latency, memory, how it stopped.
fn summary_table(h: &mut String, scenario: &str, runs: &[&Run]) {
    let _ = write!(h, "<h2>{scenario}</h2><table><tr><th>target</th><th>users held</th><th>peak</th>\
        <th>connect ok/fail</th><th>sent</th><th>received</th><th>expected</th><th>deliveries/s</th>\
        <th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>RSS/conn</th><th>errors</th>\
        <th>stop</th><th>bench CPU</th></tr>");
    for r in runs {
        let s = &r.summary;
        let l = &s.latency_ms;
        // Which build: two sokdo targets differ by their binaries.
        let bin = r.server_bin.as_deref().map_or(String::new(), |b| {
            format!("<br><small>{}</small>", html_escape(b))
        });
        let _ = write!(
            h,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td class={}>{}</td>\
             <td>{:.0}%</td></tr>",
            r.target, bin, s.users_held, s.users_peak, s.connect_ok, s.connect_fail, s.sent, s.received,
            s.expected_deliveries.map_or("—".into(), |e| e.to_string()),
            fmt_num(s.deliveries_per_s), l.p50, l.p90, l.p99, l.max,
            s.server_rss_per_connection_bytes.map_or("—".into(), |b| format!("{} B", fmt_num(b))),
            s.errors.values().sum::<u64>(),
            if s.unreachable { "fail" } else { "" },
            html_escape(&s.stop_reason),
            r.generator.cpu_percent,
        );
    }
    h.push_str("</table>");
}

/// Under the table: the generator's warnings, the seeds' checks, errors by kind.
fn run_notes(h: &mut String, runs: &[&Run]) {
    for r in runs {
        if let Some(w) = &r.generator.warning {
            let _ = write!(h, "<p class=warn>{}: {}</p>", r.target, html_escape(w));
        }
        for c in &r.checks {
            let _ = write!(
                h,
                "<p class={}>{} {} — {}: {} (target {})</p>",
                if c.pass { "pass" } else { "fail" },
                if c.pass { "PASS" } else { "FAIL" },
                r.target,
                c.name,
                c.measured,
                c.target
            );
        }
        if let Some(line) = r.server_cpu_line() {
            let _ = write!(h, "<p>{}: {}</p>", r.target, html_escape(line.trim()));
        }
        for line in r.cluster_lines() {
            let _ = write!(h, "<p>{}: {}</p>", r.target, html_escape(&line));
        }
        if !r.summary.errors.is_empty() {
            let _ = write!(
                h,
                "<p>{} errors by kind: {}</p>",
                r.target,
                html_escape(&format!("{:?}", r.summary.errors))
            );
        }
    }
}

/// Users, deliveries/s, latency, sends/s and (when measured) server RSS and CPU over time.
fn scenario_plots(h: &mut String, scenario: &str, runs: &[&Run]) -> anyhow::Result<()> {
    let series = |f: fn(&crate::report::Sample) -> f64| -> Vec<Series> {
        runs.iter()
            .map(|r| {
                (
                    r.target.clone(),
                    r.timeline.iter().map(|s| (s.t_s, f(s))).collect(),
                )
            })
            .collect()
    };
    h.push_str("<div class=plots>");
    h.push_str(&line_chart(
        &format!("{scenario}: users connected"),
        "users",
        &series(|s| s.users as f64),
    )?);
    h.push_str(&line_chart(
        &format!("{scenario}: deliveries/s"),
        "deliveries/s",
        &series(|s| s.deliveries_per_s),
    )?);
    h.push_str(&latency_chart(scenario, runs)?);
    h.push_str(&line_chart(
        &format!("{scenario}: sends/s"),
        "sends/s",
        &series(|s| s.sends_per_s),
    )?);
    let rss = |s: &Sample| Some(s.server_rss_bytes? as f64 / 1048576.0);
    if let Some(rss) = optional_series(runs, rss) {
        h.push_str(&line_chart(
            &format!("{scenario}: server RSS, all processes (MiB)"),
            "MiB",
            &rss,
        )?);
    }
    if let Some(cpu) = optional_series(runs, |s| s.server_cpu_percent) {
        h.push_str(&line_chart(
            &format!("{scenario}: server CPU, all processes (% of one CPU)"),
            "%",
            &cpu,
        )?);
    }
    h.push_str("</div>");
    soak_plots(h, runs)
}

/// `soak`: the verdict, then the server's RSS, open fds and queue gauges per sample.
fn soak_plots(h: &mut String, runs: &[&Run]) -> anyhow::Result<()> {
    let soaks: Vec<(&Run, &crate::report::Soak)> = runs
        .iter()
        .filter_map(|r| Some((*r, r.soak.as_ref()?)))
        .collect();
    if soaks.is_empty() {
        return Ok(());
    }
    for (r, k) in &soaks {
        let _ = write!(
            h,
            "<p class={}>{}: {} (churn: {} joined, {} left, {} failed)</p>",
            if k.flat == Some(false) || !k.clean {
                "fail"
            } else {
                "pass"
            },
            r.target,
            html_escape(&k.verdict),
            k.churn_ok,
            k.churn_closed,
            k.churn_fail
        );
    }
    let series = |f: &dyn Fn(&crate::report::SoakSample) -> Option<f64>| -> Vec<Series> {
        soaks
            .iter()
            .map(|(r, k)| {
                let points = k.samples.iter().filter_map(|s| Some((s.t_s, f(s)?)));
                (r.target.clone(), points.collect())
            })
            .collect()
    };
    h.push_str("<div class=plots>");
    let rss = series(&|s| Some(s.rss_bytes? as f64 / 1048576.0));
    h.push_str(&line_chart("soak: server RSS (MiB)", "MiB", &rss)?);
    let fds = series(&|s| Some(s.fds? as f64));
    h.push_str(&line_chart("soak: server open fds", "fds", &fds)?);
    let drops = series(&|s| Some(s.drops.values().sum::<u64>() as f64));
    h.push_str(&line_chart(
        "soak: chatting users dropped (per sample)",
        "users",
        &drops,
    )?);
    for counter in crate::soak::COUNTERS {
        let c = series(&|s| s.counters.get(counter).copied());
        if c.iter().any(|(_, p)| p.iter().any(|(_, v)| *v > 0.0)) {
            h.push_str(&line_chart(&format!("soak: {counter}"), counter, &c)?);
        }
    }
    for gauge in crate::soak::GAUGES {
        let g = series(&|s| s.gauges.get(gauge).copied());
        if g.iter().any(|(_, p)| !p.is_empty()) {
            h.push_str(&line_chart(&format!("soak: {gauge}"), gauge, &g)?);
        }
    }
    h.push_str("</div>");
    Ok(())
}

/// Per run, the ticks where `f` has a value; `None` when no run has one (not measured).
fn optional_series(runs: &[&Run], f: fn(&Sample) -> Option<f64>) -> Option<Vec<Series>> {
    let series: Vec<Series> = runs
        .iter()
        .map(|r| {
            let points = r.timeline.iter().filter_map(|s| Some((s.t_s, f(s)?)));
            (r.target.clone(), points.collect())
        })
        .collect();
    series.iter().any(|(_, p)| !p.is_empty()).then_some(series)
}

/// One run: its p50, p90 and p99 over time; several: each one's p99.
fn latency_chart(scenario: &str, runs: &[&Run]) -> anyhow::Result<String> {
    if runs.len() == 1 {
        let r = runs[0];
        let pick = |name: &str, f: fn(&crate::report::Latency) -> f64| -> Series {
            let points = r
                .timeline
                .iter()
                .filter(|s| s.latency_ms.samples > 0)
                .map(|s| (s.t_s, f(&s.latency_ms)))
                .collect();
            (name.to_string(), points)
        };
        let lat = vec![
            pick("p50", |l| l.p50),
            pick("p90", |l| l.p90),
            pick("p99", |l| l.p99),
        ];
        line_chart(&format!("{scenario}: latency percentiles (ms)"), "ms", &lat)
    } else {
        let lat: Vec<Series> = runs
            .iter()
            .map(|r| {
                (
                    format!("{} p99", r.target),
                    r.timeline
                        .iter()
                        .filter(|s| s.latency_ms.samples > 0)
                        .map(|s| (s.t_s, s.latency_ms.p99))
                        .collect(),
                )
            })
            .collect();
        line_chart(&format!("{scenario}: latency p99 (ms)"), "ms", &lat)
    }
}

fn line_chart(title: &str, y_desc: &str, series: &[Series]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (660, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let x_max = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
            .fold(1.0, f64::max);
        let y_max = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max);
        let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.1 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_desc)
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn bar_chart(title: &str, bars: &[(String, f64)]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (440, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let y_max = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.15 };
        let names: Vec<String> = bars.iter().map(|(n, _)| n.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..bars.len() as f64, 0.0..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let color = PALETTE[i % PALETTE.len()];
                Rectangle::new(
                    [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                    color.filled(),
                )
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                Text::new(
                    fmt_num(*v),
                    (i as f64 + 0.3, *v + y_max * 0.02),
                    ("sans-serif", 13),
                )
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// 1234567 → "1.23M", 12345 → "12.3k", 12.5 → "12.5".
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
