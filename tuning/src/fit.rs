//! `sokdo-tune fit REPORT.json…`: a capacity model from `sokdo-bench` reports.
//!
//! Memory: the servers' RSS growth over a run ≈ bytes per connection · users + per room ·
//! rooms + per ring message · ring messages held + per stored message · messages stored; the
//! per-process baseline is the RSS before the run. CPU: server CPU seconds ≈ per delivery ·
//! deliveries + per send · sends + per handshake · handshakes + per connection-second ·
//! connection-seconds. Both are non-negative least squares (`lsq`); a quantity the reports
//! do not vary independently of the others is "not identified", never invented. Every run
//! used is printed with its prediction and relative error, and the model stores them.

use std::path::{Path, PathBuf};

use crate::lsq;
use crate::model::{Coef, Cpu, FitError, Memory, Model, Row, Source, SCHEMA};
use crate::report::{self, CpuFigure, Observation};
use crate::saturation;

#[derive(clap::Args)]
pub struct Args {
    /// sokdo-bench JSON reports (schema 1).
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Write the fitted model here (JSON).
    #[arg(long, value_name = "MODEL.json")]
    pub out: Option<PathBuf>,
    /// Only runs of this target are used (a `compare` report holds several).
    #[arg(long, default_value = "sokdo")]
    pub target: String,
    /// The engine's `--history-ring-messages-max` during the runs (rooms keep this many).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub history_ring_messages_max: u64,
    /// Which server CPU figure to fit: `auto` takes the server CPUs' busy time unless it is
    /// more than twice the server's own (the CPUs were shared), `busy` or `process` always.
    #[arg(long, value_enum, default_value_t = CpuFigure::Auto)]
    pub cpu_figure: CpuFigure,
    /// What the reports were measured on (default: from the first report's host).
    #[arg(long)]
    pub machine: Option<String>,
}

/// Kernel memory per TCP socket when no report measures it: the minimum receive and send
/// buffers, `tcp_rmem` and `tcp_wmem`'s first fields (4096 each by default, tcp(7)).
const KERNEL_SOCKET_BYTES_ASSUMED: f64 = 8192.0;

/// One quantity to fit: its unit and what its column counts.
struct Term {
    unit: &'static str,
    counts: &'static str,
}

const MEMORY_TERMS: [Term; 4] = [
    Term {
        unit: "bytes",
        counts: "connections",
    },
    Term {
        unit: "bytes",
        counts: "rooms",
    },
    Term {
        unit: "bytes",
        counts: "ring messages held",
    },
    Term {
        unit: "bytes",
        counts: "stored messages",
    },
];

const CPU_TERMS: [Term; 4] = [
    Term {
        unit: "CPU seconds",
        counts: "deliveries",
    },
    Term {
        unit: "CPU seconds",
        counts: "sends",
    },
    Term {
        unit: "CPU seconds",
        counts: "handshakes",
    },
    Term {
        unit: "CPU seconds",
        counts: "connection-seconds",
    },
];

/// A run's measured figure and its counts, one per term.
struct Point {
    file: String,
    scenario: String,
    y: f64,
    x: Vec<f64>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let (model, skipped) = fit_files(args)?;
    for s in &skipped {
        eprintln!("{s}");
    }
    print!("{}", render(&model));
    if let Some(out) = &args.out {
        let json = serde_json::to_string_pretty(&model)?;
        std::fs::write(out, json + "\n")
            .map_err(|e| anyhow::anyhow!("--out {}: cannot write: {e}", out.display()))?;
        println!("model written to {}", out.display());
    }
    Ok(())
}

/// What the reports hold, run by run, before any fitting.
#[derive(Default)]
struct Gathered {
    obs: Vec<(String, Observation)>,
    /// Ramps that ended CPU-bound.
    saturated: Vec<saturation::Point>,
    sources: Vec<Source>,
    /// Notes on the runs left out or used with a reservation.
    skipped: Vec<String>,
    machine: Option<String>,
}

impl Gathered {
    /// Takes one report's runs of `args.target`; refuses a report with none.
    fn read(&mut self, path: &Path, args: &Args) -> anyhow::Result<()> {
        let r = report::load(path)?;
        let file = display_name(path);
        let mut used = Vec::new();
        for run in &r.runs {
            if run.target != args.target {
                self.skipped.push(format!(
                    "skipped: {file}: {} of target {:?}",
                    run.scenario, run.target
                ));
                continue;
            }
            if run.summary.unreachable {
                // A ramp ends so: its figures up to the end still count.
                self.skipped.push(format!(
                    "note: {file}: {} ended unreachable (used: its figures up to the end)",
                    run.scenario
                ));
            }
            match saturation::point(&file, &r.host, run) {
                Ok(p) => self.saturated.push(p),
                Err(why) if run.scenario == "ramp" => self.skipped.push(why),
                Err(_) => {}
            }
            used.push(run.scenario.clone());
            self.obs.push((
                file.clone(),
                run.observe(&r.host, args.history_ring_messages_max, args.cpu_figure),
            ));
        }
        anyhow::ensure!(
            !used.is_empty(),
            "{}: no usable runs (none of target {:?})",
            path.display(),
            args.target
        );
        self.machine.get_or_insert_with(|| describe_host(&r.host));
        self.sources.push(Source {
            file,
            command: r.command.clone(),
            started_unix_s: r.started_unix_s,
            scenarios: used,
            server_bin: r.runs.iter().find_map(|x| x.server_bin.clone()),
        });
        Ok(())
    }
}

/// Reads every report, fits both parts; returns the model and notes on the runs left out
/// or used with a reservation.
pub fn fit_files(args: &Args) -> anyhow::Result<(Model, Vec<String>)> {
    let mut g = Gathered {
        machine: args.machine.clone(),
        ..Gathered::default()
    };
    for path in &args.reports {
        g.read(path, args)?;
    }
    let mut skipped = g.skipped;
    let memory = fit_memory(&g.obs, &mut skipped);
    let mut cpu = fit_cpu(&g.obs, &mut skipped);
    cpu.saturation = saturation::fit(
        &g.saturated,
        cpu.s_per_handshake.or_zero(),
        cpu.s_per_connection_s.or_zero(),
        &mut skipped,
    );
    anyhow::ensure!(
        !memory.fit.rows.is_empty() || !cpu.fit.rows.is_empty(),
        "no run in {} has memory (server RSS before and after) or CPU figures to fit",
        args.reports
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let model = Model {
        schema: SCHEMA,
        machine: g.machine.unwrap_or_default(),
        history_ring_messages_max: args.history_ring_messages_max,
        memory,
        cpu,
        sources: g.sources,
        caveats: caveats(),
    };
    Ok((model, skipped))
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn describe_host(h: &report::Host) -> String {
    let mut s = format!("{} CPUs", h.cpus);
    if let Some(c) = &h.server_cpus {
        s += &format!(", server on CPUs {c}");
    }
    if let Some(m) = h.server_memory_limit_bytes {
        s += &format!(", server memory limit {} MiB", m >> 20);
    }
    if let Some(q) = h.server_cpu_quota_percent {
        s += &format!(", server CPU quota {q} %");
    }
    s
}

fn caveats() -> Vec<String> {
    vec![
        "load and server share this machine's loopback: CPU per delivery includes the \
         receiving side's TCP work, pessimistic for an instance whose clients are remote"
            .into(),
        "kernel bytes per socket: the kernel's TCP buffer memory when the reports carry it \
         (a socket's slab is not in it), else assumed (tcp_rmem + tcp_wmem minimum)"
            .into(),
        "ring messages held are estimated from the reports' totals (a ramp's per step), \
         assuming every member sends at the same rate"
            .into(),
        "RSS does not shrink when connections leave: the memory figures are high-water marks"
            .into(),
    ]
}

fn fit_memory(obs: &[(String, Observation)], skipped: &mut Vec<String>) -> Memory {
    let mut points = Vec::new();
    let mut baseline = Vec::new();
    for (file, o) in obs {
        if let Some(b) = o.rss_before_per_process_bytes {
            baseline.push((file.clone(), o.scenario.clone(), b));
        }
        let (Some(y), Some(rooms), Some(ring)) = (o.rss_growth_bytes, o.rooms, o.ring_messages)
        else {
            continue;
        };
        if y <= 0.0 {
            skipped.push(format!(
                "skipped for memory: {file}: {} RSS did not grow ({y} bytes)",
                o.scenario
            ));
            continue;
        }
        let x = vec![o.users as f64, rooms as f64, ring, o.stored_messages];
        points.push(Point {
            file: file.clone(),
            scenario: o.scenario.clone(),
            y,
            x,
        });
    }
    let (c, fit) = fit_terms(&MEMORY_TERMS, &points);
    let (baseline_bytes_per_process, baseline_fit) = if baseline.is_empty() {
        let note = "not identified: no report has the server's RSS before the run";
        let c = Coef {
            value: None,
            unit: "bytes".into(),
            note: Some(note.into()),
        };
        (c, FitError::default())
    } else {
        fit_mean(
            &baseline,
            "mean RSS before the run ÷ processes (a fresh server's in `compare`)",
        )
    };
    let (kernel_bytes_per_socket, kernel_fit) = kernel_socket(obs);
    Memory {
        baseline_bytes_per_process,
        bytes_per_connection: c[0].clone(),
        bytes_per_room: c[1].clone(),
        bytes_per_ring_message: c[2].clone(),
        bytes_per_stored_message: c[3].clone(),
        kernel_bytes_per_socket,
        kernel_fit,
        fit,
        baseline_fit,
    }
}

/// A quantity taken as the mean of its per-run figures (`points` is not empty), each run's
/// figure scored against the mean.
fn fit_mean(points: &[(String, String, f64)], note: &str) -> (Coef, FitError) {
    let mean = points.iter().map(|p| p.2).sum::<f64>() / points.len() as f64;
    let rows = points
        .iter()
        .map(|(file, scenario, y)| row(file, scenario, *y, mean))
        .collect();
    let c = Coef {
        value: Some(mean),
        unit: "bytes".into(),
        note: Some(note.into()),
    };
    (c, FitError::from_rows(rows))
}

fn fit_cpu(obs: &[(String, Observation)], skipped: &mut Vec<String>) -> Cpu {
    let mut points = Vec::new();
    for (file, o) in obs {
        if o.unreachable && !o.cpu.is_empty() {
            // Its last steps ran the CPU flat out: their CPU seconds measure the CPU, not
            // the load. Such a run is what the saturation fit is for.
            skipped.push(format!(
                "not used for the linear CPU fit: {file}: {} ran until the server could not \
                 keep up (used for CPU at saturation)",
                o.scenario
            ));
            continue;
        }
        for c in &o.cpu {
            if c.busy_distrusted {
                skipped.push(format!(
                    "note: {file}: {}: the server CPUs' busy time is more than {} × the \
                     server's own CPU (the CPUs were shared?): the server's own is used",
                    c.label,
                    report::BUSY_TRUST_RATIO_MAX
                ));
            }
            if c.cpu_s <= 0.0 {
                skipped.push(format!(
                    "skipped for CPU: {file}: {} used no server CPU ({} s)",
                    c.label, c.cpu_s
                ));
                continue;
            }
            points.push(Point {
                file: file.clone(),
                scenario: c.label.clone(),
                y: c.cpu_s,
                x: vec![c.deliveries, c.sends, c.handshakes, c.connection_s],
            });
        }
    }
    let (c, fit) = fit_terms(&CPU_TERMS, &points);
    Cpu {
        s_per_delivery: c[0].clone(),
        s_per_send: c[1].clone(),
        s_per_handshake: c[2].clone(),
        s_per_connection_s: c[3].clone(),
        fit,
        saturation: Vec::new(),
    }
}

/// Kernel TCP memory per server socket: the growth of `/proc/net/sockstat`'s TCP memory over
/// a run ÷ 2 sockets per user (on loopback the clients' sockets are counted too), the mean
/// over the runs where it grew (it is machine-wide: sockets an earlier run or another
/// program closed make it shrink); else the documented minimum, as an assumption.
fn kernel_socket(obs: &[(String, Observation)]) -> (Coef, FitError) {
    let points: Vec<(String, String, f64)> = obs
        .iter()
        .filter(|(_, o)| o.users > 0)
        .filter_map(|(f, o)| {
            let g = o.kernel_tcp_growth_bytes.filter(|g| *g > 0.0)?;
            Some((f.clone(), o.scenario.clone(), g / (2.0 * o.users as f64)))
        })
        .collect();
    if points.is_empty() {
        let note = "assumed, not measured: tcp_rmem + tcp_wmem minimum (4096 + 4096, tcp(7) \
                    defaults); no report has kernel TCP memory that grew over its run";
        let c = Coef {
            value: Some(KERNEL_SOCKET_BYTES_ASSUMED),
            unit: "bytes".into(),
            note: Some(note.into()),
        };
        return (c, FitError::default());
    }
    fit_mean(
        &points,
        "mean growth of the kernel's TCP memory ÷ 2 sockets per user (loopback: both ends); \
         buffer memory only, a socket's slab (struct sock) is not in it",
    )
}

fn row(file: &str, scenario: &str, measured: f64, predicted: f64) -> Row {
    Row {
        file: file.into(),
        scenario: scenario.into(),
        measured,
        predicted,
        relative_error: (predicted - measured) / measured,
    }
}

/// Chooses the terms the points identify (in order: a term whose column is mostly a
/// combination of the ones chosen before it is left out), fits them with non-negative least
/// squares and scores every point.
fn fit_terms(terms: &[Term], points: &[Point]) -> (Vec<Coef>, FitError) {
    // Each run weighted by 1 ÷ its measured figure: the fit minimises relative errors, so a
    // 50,000-user ramp does not drown a 5,000-user idle run (exact data fit either way).
    let weight = |p: &Point| if p.y != 0.0 { 1.0 / p.y.abs() } else { 1.0 };
    let cols: Vec<Vec<f64>> = (0..terms.len())
        .map(|j| points.iter().map(|p| p.x[j] * weight(p)).collect())
        .collect();
    let y: Vec<f64> = points.iter().map(|p| p.y * weight(p)).collect();
    let mut notes: Vec<Option<String>> = vec![None; terms.len()];
    let mut chosen: Vec<usize> = Vec::new();
    for (j, t) in terms.iter().enumerate() {
        let basis: Vec<&[f64]> = chosen.iter().map(|&i| cols[i].as_slice()).collect();
        let share = lsq::independence(&basis, &cols[j]);
        notes[j] = if points.is_empty() {
            Some("not identified: no run has the figures".into())
        } else if cols[j].iter().all(|v| *v == 0.0) {
            Some(format!("not identified: no run has {}", t.counts))
        } else if chosen.len() >= points.len() {
            Some(format!(
                "not identified: {} runs cannot fit more unknowns",
                points.len()
            ))
        } else if share < lsq::INDEPENDENCE_MIN {
            let with: Vec<&str> = chosen.iter().map(|&i| terms[i].counts).collect();
            Some(format!(
                "not identified: {} vary with {} in every run ({:.1} % independent); \
                 their cost is in those terms",
                t.counts,
                with.join(" and "),
                share * 100.0
            ))
        } else {
            chosen.push(j);
            None
        };
    }
    let basis: Vec<&[f64]> = chosen.iter().map(|&i| cols[i].as_slice()).collect();
    let mut values: Vec<Option<f64>> = vec![None; terms.len()];
    if let Some((x, forced)) = lsq::non_negative(&basis, &y) {
        for (k, &j) in chosen.iter().enumerate() {
            values[j] = Some(x[k]);
            if forced[k] {
                notes[j] = Some("fitted as 0: a free fit made it negative".into());
            }
        }
    }
    let rows = points
        .iter()
        .map(|p| {
            let pred = (0..terms.len())
                .map(|j| values[j].unwrap_or(0.0) * p.x[j])
                .sum();
            row(&p.file, &p.scenario, p.y, pred)
        })
        .collect();
    let coefs = terms
        .iter()
        .zip(values)
        .zip(notes)
        .map(|((t, value), note)| Coef {
            value,
            unit: t.unit.into(),
            note,
        })
        .collect();
    (coefs, FitError::from_rows(rows))
}

fn coef_line(name: &str, c: &Coef) -> String {
    let v = c.value.map_or("-".to_string(), |v| format!("{v:.6e}"));
    let note = c
        .note
        .as_deref()
        .map_or(String::new(), |n| format!("  ({n})"));
    format!("  {name:<28} {v:>14} {}{note}\n", c.unit)
}

fn rows_table(what: &str, unit: &str, f: &FitError) -> String {
    let mut s = format!(
        "  {:<32} {:<24} {:>14} {:>14} {:>9}\n",
        "report", "run", "measured", "predicted", "error"
    );
    for r in &f.rows {
        s += &format!(
            "  {:<32} {:<24} {:>14.6e} {:>14.6e} {:>8.2}%\n",
            r.file,
            r.scenario,
            r.measured,
            r.predicted,
            r.relative_error * 100.0
        );
    }
    match (f.max_relative_error, f.rms_relative_error) {
        (Some(max), Some(rms)) => {
            s += &format!(
                "{what} fit ({unit}): max relative error {:.4}%, rms {:.4}%, over {} runs\n",
                max * 100.0,
                rms * 100.0,
                f.rows.len()
            );
        }
        _ => s += &format!("{what} fit ({unit}): no run to fit\n"),
    }
    s
}

/// The human table: coefficients, then every run's prediction, then the errors.
pub fn render(m: &Model) -> String {
    let mem = &m.memory;
    let cpu = &m.cpu;
    let mut s = format!("capacity model for: {}\n\nmemory\n", m.machine);
    s += &coef_line(
        "baseline_bytes_per_process",
        &mem.baseline_bytes_per_process,
    );
    s += &coef_line("bytes_per_connection", &mem.bytes_per_connection);
    s += &coef_line("bytes_per_room", &mem.bytes_per_room);
    s += &coef_line("bytes_per_ring_message", &mem.bytes_per_ring_message);
    s += &coef_line("bytes_per_stored_message", &mem.bytes_per_stored_message);
    s += &coef_line("kernel_bytes_per_socket", &mem.kernel_bytes_per_socket);
    s += &rows_table("memory", "RSS growth, bytes", &mem.fit);
    s += &rows_table(
        "baseline",
        "RSS before ÷ processes, bytes",
        &mem.baseline_fit,
    );
    s += "\ncpu\n";
    s += &coef_line("s_per_delivery", &cpu.s_per_delivery);
    s += &coef_line("s_per_send", &cpu.s_per_send);
    s += &coef_line("s_per_handshake", &cpu.s_per_handshake);
    s += &coef_line("s_per_connection_s", &cpu.s_per_connection_s);
    s += &rows_table("cpu", "server CPU seconds", &cpu.fit);
    s += "\ncpu at saturation (what plan sizes CPU with; saturation.rs)\n";
    if cpu.saturation.is_empty() {
        s += "  none: no ramp of two shapes per CPU share ended CPU-bound\n";
    }
    for sat in &cpu.saturation {
        s += &format!("  at {} CPU\n", sat.cpus);
        s += &coef_line("s_per_delivery", &sat.s_per_delivery);
        s += &coef_line("s_per_send", &sat.s_per_send);
        s += &rows_table(
            &format!("saturation {} CPU", sat.cpus),
            "users held",
            &sat.fit,
        );
    }
    s += "\ncaveats\n";
    for c in &m.caveats {
        s += &format!("  - {c}\n");
    }
    s
}
