//! `profile`: one scenario against a sokdo build started as `compare` starts it (pinned,
//! memory-limited), sampled by `perf record -e cpu-clock --call-graph fp` for the whole run,
//! then collapsed and rendered with inferno (as a library): `<label>.folded`,
//! `<label>.svg` and `<label>.layers.txt` (per-layer shares, `layers.rs`). With
//! `--base-binary` and/or `--base-args`, the same scenario first runs against the base, and
//! `diff.svg` is inferno's differential flamegraph (the new run's shape, red where it spends
//! more than the base, blue where less) with `diff-base.svg` the other way round. With
//! `--off-cpu`, `perf sched` records the server's CPUs too, and `<label>.offcpu.txt` says how
//! long each server thread waited for a CPU and who had it (`offcpu.rs`).
#![forbid(unsafe_code)]

use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser};

use crate::compare::{self, CompareArgs, ScenarioKind, Server, TargetKind};
use crate::kernel::CpuList;
use crate::layers;
use crate::offcpu;
use crate::output;

#[derive(Args, Clone, Debug)]
pub struct ProfileArgs {
    /// The scenario run while perf samples the server.
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: ScenarioKind,
    /// Its flags, as its own subcommand takes them (e.g. "--users 1000 --rate 4000
    /// --duration-s 20").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    scenario_args: String,
    /// The sokdo build profiled (default: beside this binary; build it with
    /// `cargo build --release`).
    #[arg(long, env = "SOKDO_BIN")]
    sokdo_bin: Option<PathBuf>,
    /// More flags for sokdo (e.g. "--durability async").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    sokdo_args: String,
    /// Differential: the base build (e.g. the build before a change), run first with the same
    /// scenario. Without it, `--base-args` alone compares two configurations of one build.
    #[arg(long)]
    base_binary: Option<PathBuf>,
    /// Differential: the base run's sokdo flags instead of `--sokdo-args`.
    #[arg(long, allow_hyphen_values = true)]
    base_args: Option<String>,
    /// CPUs the server runs on (taskset list).
    #[arg(long, default_value = "0")]
    server_cpus: CpuList,
    /// CPUs the bench runs on.
    #[arg(long, default_value = "1")]
    bench_cpus: CpuList,
    /// sokdo's shards per process.
    #[arg(long, default_value_t = 1)]
    sokdo_shards: u32,
    /// Server processes (consecutive ports, one cgroup); perf samples them all.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    server_processes: u64,
    /// The server's memory limit.
    #[arg(long, default_value_t = 2048)]
    memory_limit_mib: u64,
    /// perf's samples per second of CPU time (`-F`).
    #[arg(long, default_value_t = 999, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    frequency_hz: u32,
    /// Also record the scheduler on the server's CPUs (`perf sched record -C`): how long
    /// each server thread waited for its CPU, and what ran meanwhile (`<label>.offcpu.txt`).
    #[arg(long)]
    off_cpu: bool,
    /// Where the outputs go (created).
    #[arg(long, default_value = "target/profiles")]
    out_dir: PathBuf,
    /// Port of the first server.
    #[arg(long, default_value_t = 19_300)]
    port: u16,
}

/// One profiled run: its label, the folded stacks file and the SVG.
struct Profiled {
    folded: PathBuf,
}

pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    check_perf()?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating --out-dir {}", args.out_dir.display()))?;
    let differential = args.base_binary.is_some() || args.base_args.is_some();
    let base = if differential {
        let bin = args.base_binary.clone().or_else(|| args.sokdo_bin.clone());
        let flags = args.base_args.as_deref().unwrap_or(&args.sokdo_args);
        Some(profile_one(args, "base", bin, flags, args.port)?)
    } else {
        None
    };
    // Fresh ports for the second run: the first one's may linger.
    let port = args.port + 64 * u16::from(differential);
    let new = profile_one(args, "new", args.sokdo_bin.clone(), &args.sokdo_args, port)?;
    if let Some(base) = base {
        differential_svgs(args, &base, &new)?;
    }
    Ok(())
}

/// Fails with what to do when `perf` is missing or may not sample.
fn check_perf() -> anyhow::Result<()> {
    let out = Command::new("perf").arg("--version").output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        _ => anyhow::bail!(
            "perf is not installed or does not run: install it (Debian: apt-get install \
             linux-perf, which scripts/install-deps.sh does), or profile a running instance \
             in process with GET /debug/pprof/profile (docs/PROFILING.md)"
        ),
    }
}

fn compare_args(
    args: &ProfileArgs,
    bin: Option<&Path>,
    flags: &str,
    port: u16,
) -> anyhow::Result<CompareArgs> {
    let mut argv: Vec<String> = vec!["profile".into(), "--targets".into(), "sokdo".into()];
    let mut add = |k: &str, v: String| argv.extend([k.to_string(), v]);
    add("--scenarios", format!("{:?}", args.scenario).to_lowercase());
    add("--server-cpus", args.server_cpus.to_string());
    add("--bench-cpus", args.bench_cpus.to_string());
    add("--sokdo-shards", args.sokdo_shards.to_string());
    add("--server-processes", args.server_processes.to_string());
    add("--memory-limit-mib", args.memory_limit_mib.to_string());
    add("--port", port.to_string());
    if let Some(bin) = bin {
        add("--sokdo-bin", bin.to_string_lossy().into_owned());
    }
    let scenario_flag = format!("--{:?}-args", args.scenario).to_lowercase();
    argv.push(format!("--sokdo-args={flags}"));
    argv.push(format!("{scenario_flag}={}", args.scenario_args));
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        inner: CompareArgs,
    }
    Ok(Wrap::try_parse_from(argv)?.inner)
}

/// Starts the server, samples it with perf for the scenario's whole run, and writes
/// `<label>.perf.data`, `.folded`, `.svg` and `.layers.txt`.
fn profile_one(
    args: &ProfileArgs,
    label: &str,
    bin: Option<PathBuf>,
    flags: &str,
    port: u16,
) -> anyhow::Result<Profiled> {
    let mut cargs = compare_args(args, bin.as_deref(), flags, port)?;
    // Only names the server logs (`compare`'s are beside its report): `<label>.sokdo-<port>.log`
    // in --out-dir, with the rest of the run's outputs, not in the working directory.
    cargs.json = Some(args.out_dir.join(format!("{label}.json")));
    compare::check_online("--server-cpus", &args.server_cpus)?;
    if let Err(e) = crate::kernel::pin_self(&args.bench_cpus) {
        eprintln!(
            "warning: could not pin the bench to CPUs {}: {e}",
            args.bench_cpus
        );
    }
    eprintln!(
        "== profile {label}: {:?} {}",
        args.scenario, args.scenario_args
    );
    let server = Server::start(&cargs, TargetKind::Sokdo, port)?;
    let data = args.out_dir.join(format!("{label}.perf.data"));
    let sched_data = args.out_dir.join(format!("{label}.sched.data"));
    let pids = server.pids();
    let recorders = start_perf(args.frequency_hz, &pids, &data).and_then(|perf| {
        if !args.off_cpu {
            return Ok((perf, None));
        }
        match start_sched(&args.server_cpus, &sched_data) {
            Ok(sched) => Ok((perf, Some(sched))),
            Err(e) => {
                let _ = stop_perf(perf);
                Err(e)
            }
        }
    });
    let (perf, sched) = match recorders {
        Ok(r) => r,
        Err(e) => {
            server.stop();
            return Err(e);
        }
    };
    let result = compare::run_scenario(&cargs, args.scenario, TargetKind::Sokdo, &server);
    let stopped = stop_perf(perf).and(sched.map_or(Ok(()), stop_perf));
    let bin_used = server.bin.clone();
    server.stop();
    let mut runs = result?;
    stopped?;
    for run in &mut runs {
        run.server_bin = Some(bin_used.clone());
    }
    output::print_runs(&runs);
    let folded = args.out_dir.join(format!("{label}.folded"));
    collapse(&data, &folded)?;
    let title = format!(
        "sokdo {label}: {:?} {} — perf cpu-clock {} Hz",
        args.scenario, args.scenario_args, args.frequency_hz
    );
    let svg = args.out_dir.join(format!("{label}.svg"));
    render(&folded, &svg, &title, false)?;
    let table = layers::render(&layers::shares(&std::fs::read_to_string(&folded)?));
    let table_path = args.out_dir.join(format!("{label}.layers.txt"));
    std::fs::write(&table_path, &table)?;
    println!("{table}");
    for path in [&svg, &folded, &table_path, &data] {
        eprintln!("wrote {}", path.display());
    }
    if args.off_cpu {
        let table = offcpu::summarise(&timehist(&sched_data)?, &pids);
        let path = args.out_dir.join(format!("{label}.offcpu.txt"));
        std::fs::write(&path, &table)?;
        println!("{table}");
        eprintln!("wrote {} and {}", path.display(), sched_data.display());
    }
    Ok(Profiled { folded })
}

/// `perf record` on every server process, until SIGINT.
fn start_perf(hz: u32, pids: &[u32], data: &Path) -> anyhow::Result<Child> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let hz = hz.to_string();
    let args = ["record", "-e", "cpu-clock", "-F", &hz, "--call-graph", "fp"];
    start_recorder(&args, &["-p", &pids.join(",")], data)
}

/// `perf sched record` on the server's CPUs (every thread on them: what competes with the
/// server is the point), until SIGINT.
fn start_sched(cpus: &CpuList, data: &Path) -> anyhow::Result<Child> {
    start_recorder(&["sched", "record"], &["-C", &cpus.to_string()], data)
}

/// `perf sched timehist` of `data`: one line per time a thread got a CPU.
fn timehist(data: &Path) -> anyhow::Result<String> {
    let out = Command::new("perf")
        .args(["sched", "timehist", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("starting perf sched timehist")?;
    anyhow::ensure!(
        out.status.success(),
        "perf sched timehist failed ({})",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `perf <head> -o data <tail>`, until SIGINT. Waits until perf has attached (its data file
/// appears) so the scenario's start is recorded.
fn start_recorder(head: &[&str], tail: &[&str], data: &Path) -> anyhow::Result<Child> {
    let _ = std::fs::remove_file(data);
    let mut child = Command::new("perf")
        .args(head)
        .arg("-o")
        .arg(data)
        .args(tail)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.exists() {
        if let Some(status) = child.try_wait()? {
            let mut why = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut why);
            }
            anyhow::bail!(
                "perf {} exited at once ({status}): {}{}",
                head.join(" "),
                why.trim(),
                paranoid_hint()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "perf {} did not start within 10 s",
            head.join(" ")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// What to do when the kernel refuses perf (not root, `perf_event_paranoid` too high).
fn paranoid_hint() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid") {
        Ok(level) if level.trim().parse::<i32>().is_ok_and(|l| l > 1) => format!(
            "\nkernel.perf_event_paranoid is {}: run as root, or `sysctl kernel.perf_event_paranoid=1` \
             (-1 for --off-cpu, whose `perf sched record` reads scheduler tracepoints on whole CPUs); \
             or profile in process with GET /debug/pprof/profile (docs/PROFILING.md)",
            level.trim()
        ),
        _ => String::new(),
    }
}

fn stop_perf(mut perf: Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(perf.id() as i32);
    // Our own child, not yet reaped: the pid is still perf's.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let status = perf.wait()?;
    let mut why = String::new();
    if let Some(mut e) = perf.stderr.take() {
        let _ = e.read_to_string(&mut why);
    }
    // perf record exits with the signal's status after SIGINT; a data file is what counts.
    anyhow::ensure!(
        status.success() || why.contains("Captured and wrote"),
        "perf record failed ({status}): {}",
        why.trim()
    );
    Ok(())
}

/// `perf script` → inferno's collapse-perf (kernel frames annotated `_[k]`) → folded file.
fn collapse(data: &Path, folded: &Path) -> anyhow::Result<()> {
    use inferno::collapse::Collapse;
    let mut script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf script")?;
    let stdout = script.stdout.take().context("perf script's stdout")?;
    let mut options = inferno::collapse::perf::Options::default();
    options.annotate_kernel = true;
    let out = BufWriter::new(std::fs::File::create(folded)?);
    inferno::collapse::perf::Folder::from(options)
        .collapse(BufReader::new(stdout), out)
        .context("collapsing perf script's output")?;
    let status = script.wait()?;
    anyhow::ensure!(status.success(), "perf script failed ({status})");
    Ok(())
}

/// A flamegraph of a folded file (`differential`: of inferno's differential folding).
fn render(folded: &Path, svg: &Path, title: &str, negate: bool) -> anyhow::Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    // collapse-perf counts each sample as its period: cpu-clock's is in ns.
    options.count_name = "ns".into();
    options.negate_differentials = negate;
    let input = std::fs::File::open(folded)?;
    let out = BufWriter::new(std::fs::File::create(svg)?);
    inferno::flamegraph::from_reader(&mut options, input, out)
        .with_context(|| format!("rendering {} (no samples?)", folded.display()))
}

/// `diff.folded` (base → new, the base normalised to the new run's total) rendered as
/// `diff.svg`: the new run's shape, red where it spends more than the base, blue where less;
/// and `diff-base.folded` / `diff-base.svg` the other way round: the base's shape, with what
/// the new run no longer does visible (FlameGraph's `difffolded.pl` then `--negate`).
fn differential_svgs(args: &ProfileArgs, base: &Profiled, new: &Profiled) -> anyhow::Result<()> {
    let options = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    let pairs = [
        (
            "diff",
            &base.folded,
            &new.folded,
            false,
            "sokdo: new vs base, new's shape (red: more CPU in new, blue: less)",
        ),
        (
            "diff-base",
            &new.folded,
            &base.folded,
            true,
            "sokdo: new vs base, base's shape (blue: where new spends less)",
        ),
    ];
    for (name, before, after, negate, title) in pairs {
        let folded = args.out_dir.join(format!("{name}.folded"));
        inferno::differential::from_files(
            options,
            before,
            after,
            BufWriter::new(std::fs::File::create(&folded)?),
        )?;
        let svg = args.out_dir.join(format!("{name}.svg"));
        render(&folded, &svg, title, negate)?;
        eprintln!("wrote {} and {}", svg.display(), folded.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> ProfileArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            inner: ProfileArgs,
        }
        Wrap::try_parse_from(std::iter::once("profile").chain(argv.iter().copied()))
            .expect("profile's flags")
            .inner
    }

    #[test]
    fn a_profile_runs_its_scenario_as_compare_would() {
        let args = parse(&[
            "--scenario",
            "ramp",
            "--scenario-args",
            "--step-s 3 --target-users 2000",
            "--base-args",
            "--durability async",
            "--server-processes",
            "2",
        ]);
        // The flags, hyphens and all, reach compare's parser; a scenario flag that does not
        // exist is refused when the scenario parses them (as `compare` does).
        assert!(compare_args(&args, None, "--durability async", 19_300).is_ok());
        assert!(compare_args(&args, Some(Path::new("/bin/true")), "", 19_300).is_ok());
        assert_eq!(args.base_args.as_deref(), Some("--durability async"));
    }
}
