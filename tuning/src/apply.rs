//! `sokdo-tune apply`: writes the settings that lift this host's liftable caps (`caps`) —
//! a sysctl.d file and a systemd drop-in for the sokdo unit — after showing a unified diff of
//! each against what is on disk (`diff`). Idempotent: the files' text depends only on the
//! flags, the host's current values and what sokdo needs, and each value is the higher of
//! the current one and the need, so a second run (also after loading them) shows no change.
//!
//! It never loads anything unless asked (`--load` runs `sysctl -p FILE`), and never restarts
//! sokdo: it prints the commands that do.

use crate::caps::{self, FDS_RESERVED, FILES_OTHERS, SOKDO_LISTEN_BACKLOG};
use crate::host::{self, Host};
use crate::out::emit;
use std::path::{Path, PathBuf};

const SYSCTL_FILE: &str = "etc/sysctl.d/60-sokdo.conf";
/// The ephemeral port range to widen to (ports below 1024 stay for privileged services).
const PORT_RANGE_WANTED: (u64, u64) = (1024, 65_535);

#[derive(clap::Args)]
pub struct Args {
    /// Show the diff of each file and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After writing, load the sysctl file into the running kernel (`sysctl -p FILE`).
    #[arg(long, conflicts_with = "dry_run")]
    pub load: bool,
    /// Write the files under this directory instead of / (tests, image builds).
    #[arg(long, default_value = "/", value_parser = existing_dir)]
    pub root: PathBuf,
    /// Concurrent connections to size the limits for. Default: what this host's memory holds
    /// (the `memory` cap of `sokdo-tune probe`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub connections: Option<u64>,
    /// The systemd unit sokdo runs as (its drop-in is
    /// /etc/systemd/system/UNIT.service.d/limits.conf).
    #[arg(long, default_value = "sokdo", value_parser = unit_name)]
    pub unit: String,
}

fn existing_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(format!("{s} is not an existing directory"))
    }
}

/// A unit name as systemd takes it, without `.service`; no `/`, so the drop-in stays under
/// /etc/systemd/system.
fn unit_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix(".service").unwrap_or(s);
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{s:?} is not a systemd unit name (letters, digits and :_.@- only)"
        ))
    }
}

/// One file `apply` writes: where (relative to the root) and its whole text.
pub struct File {
    pub path: String,
    pub text: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let host = host::read();
    let connections = match args.connections {
        Some(n) => n,
        None => caps::memory_sockets(&host).ok_or_else(|| {
            anyhow::anyhow!("--connections is needed: this host's memory could not be read")
        })?,
    };
    let sysctl_path = args.root.join(SYSCTL_FILE);
    let existing_sysctl = std::fs::read_to_string(&sysctl_path).ok();
    let files = [
        File {
            path: SYSCTL_FILE.into(),
            text: sysctl_text(&host, connections, existing_sysctl.as_deref()),
        },
        File {
            path: dropin_path(&args.unit),
            text: dropin_text(&args.unit, connections),
        },
    ];
    let changed = show_diffs(&args.root, &files)?;
    if args.dry_run {
        emit("dry run: nothing written\n")?;
    } else {
        for f in files.iter().filter(|f| changed.contains(&f.path)) {
            write_file(&args.root.join(&f.path), &f.text)?;
            emit(&format!("wrote {}\n", args.root.join(&f.path).display()))?;
        }
    }
    if changed.is_empty() {
        emit("no change: both files are up to date\n")?;
    }
    emit(&format!(
        "to load them: sysctl --system (or sysctl -p {}); \
         systemctl daemon-reload && systemctl restart {}\n",
        sysctl_path.display(),
        args.unit
    ))?;
    if args.load {
        load(&sysctl_path)?;
    }
    Ok(())
}

/// Prints each file's diff against the disk (or that it has no change); returns the paths
/// that change.
fn show_diffs(root: &Path, files: &[File]) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    for f in files {
        let full = root.join(&f.path);
        let old = match std::fs::read_to_string(&full) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("reading {}: {e}", full.display()),
        };
        match crate::diff::unified(old.as_deref(), &f.text, &full.display().to_string()) {
            Some(d) => {
                emit(&d)?;
                changed.push(f.path.clone());
            }
            None => emit(&format!("{}: no change\n", full.display()))?,
        }
    }
    Ok(changed)
}

/// Writes `text` to `path` whole or not at all: a temporary file beside it, then a rename.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let tmp = path.with_extension("sokdo-tune.tmp");
    std::fs::write(&tmp, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("renaming to {}: {e}", path.display()))
}

fn load(sysctl_path: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("sysctl")
        .arg("-p")
        .arg(sysctl_path)
        .output()
        .map_err(|e| anyhow::anyhow!("--load: running sysctl: {e}"))?;
    emit(&String::from_utf8_lossy(&out.stdout))?;
    anyhow::ensure!(
        out.status.success(),
        "--load: sysctl -p {} failed ({}): {}",
        sysctl_path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub fn dropin_path(unit: &str) -> String {
    format!("etc/systemd/system/{unit}.service.d/limits.conf")
}

/// The value of `key` in a sysctl.d file's text, if it sets it.
fn file_value<'a>(text: Option<&'a str>, key: &str) -> Option<&'a str> {
    text?.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The sysctl.d file for `connections`. The backlogs and the port range are always written
/// (the higher of the current value and sokdo's need); the fd ceilings and the conntrack
/// table only when they are too low, or when the file on disk already sets them (so that a
/// second run, after loading, keeps them).
pub fn sysctl_text(host: &Host, connections: u64, existing: Option<&str>) -> String {
    let fds = caps::fds_for(connections);
    let mut out = format!(
        "# Written by sokdo-tune apply for a sokdo instance of {connections} connections\n\
         # (--connections; default: what this host's memory holds, see sokdo-tune probe).\n\
         # Each value is the higher of this host's value when written and what sokdo needs.\n\
         # Load with `sysctl --system` (at boot, systemd-sysctl does).\n"
    );
    let mut line = |why: &str, key: &str, value: String| {
        out.push_str(&format!("\n# {why}\n{key} = {value}\n"));
    };
    let at_least = |live: Option<u64>, want: u64| live.unwrap_or(0).max(want).to_string();
    line(
        &format!(
            "sokdo listens with a backlog of {SOKDO_LISTEN_BACKLOG} per shard, capped at this."
        ),
        "net.core.somaxconn",
        at_least(host.somaxconn, SOKDO_LISTEN_BACKLOG),
    );
    line(
        "Handshakes half-open at once (a reconnect storm).",
        "net.ipv4.tcp_max_syn_backlog",
        at_least(host.tcp_max_syn_backlog, SOKDO_LISTEN_BACKLOG),
    );
    let (lo, hi) = host.ip_local_port_range.unwrap_or(PORT_RANGE_WANTED);
    line(
        "Ephemeral ports: outbound connections per (source IP, destination): a proxy or a load\n\
         # generator on this host.",
        "net.ipv4.ip_local_port_range",
        format!(
            "{} {}",
            lo.min(PORT_RANGE_WANTED.0),
            hi.max(PORT_RANGE_WANTED.1)
        ),
    );
    let mut when_low = |why: &str, key: &str, live: Option<u64>, want: u64| {
        if live.is_some_and(|l| l < want) || file_value(existing, key).is_some() {
            line(why, key, at_least(live, want));
        }
    };
    when_low(
        &format!("Per-process fd ceiling: the unit's LimitNOFILE ({fds}) may not exceed it."),
        "fs.nr_open",
        host.fs_nr_open,
        fds,
    );
    when_low(
        &format!("Open files, whole host: sokdo's, plus {FILES_OTHERS} for everything else."),
        "fs.file-max",
        host.fs_file_max,
        fds + FILES_OTHERS,
    );
    if host.nf_conntrack_max.is_some() {
        when_low(
            "Connection tracking: one entry per connection; when full, new ones are dropped.",
            "net.netfilter.nf_conntrack_max",
            host.nf_conntrack_max,
            caps::conntrack_for(connections),
        );
    }
    out
}

/// The systemd drop-in: the unit's open-file, locked-memory and nice limits.
pub fn dropin_text(unit: &str, connections: u64) -> String {
    let fds = caps::fds_for(connections);
    format!(
        "# Written by sokdo-tune apply: the limits of {unit}.service, {connections} connections.\n\
         # Load with `systemctl daemon-reload && systemctl restart {unit}`.\n\
         [Service]\n\
         # One fd per connection, plus {FDS_RESERVED} for listeners, rings, log and store\n\
         # (needs fs.nr_open at least this: the sysctl.d file sees to it).\n\
         LimitNOFILE={fds}\n\
         # glommio registers its io_uring buffers, {} per shard, as locked memory.\n\
         LimitMEMLOCK=infinity\n\
         # The write-behind sink runs as SCHED_IDLE while it keeps up and leaves it when it\n\
         # falls behind (--sink-idle-lag-ms): leaving needs RLIMIT_NICE 20, which is +0.\n\
         LimitNICE=+0\n",
        caps::kib(caps::GLOMMIO_MEMLOCK_PER_SHARD_BYTES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sample;

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("sokdo").unwrap(), "sokdo");
        assert_eq!(unit_name("sokdo@2.service").unwrap(), "sokdo@2");
        assert!(unit_name("../x").is_err());
        assert!(unit_name("").is_err());
        assert!(unit_name(".service").is_err());
    }

    fn keys(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect()
    }

    /// The host after `sysctl -p` of `text`: its values are the file's.
    fn loaded(host: &Host, text: &str) -> Host {
        let num = |k: &str| file_value(Some(text), k).map(|v| v.parse::<u64>().unwrap());
        let range = file_value(Some(text), "net.ipv4.ip_local_port_range").map(|v| {
            let (lo, hi) = v.split_once(' ').unwrap();
            (lo.parse().unwrap(), hi.parse().unwrap())
        });
        Host {
            somaxconn: num("net.core.somaxconn").or(host.somaxconn),
            tcp_max_syn_backlog: num("net.ipv4.tcp_max_syn_backlog").or(host.tcp_max_syn_backlog),
            ip_local_port_range: range.or(host.ip_local_port_range),
            fs_nr_open: num("fs.nr_open").or(host.fs_nr_open),
            fs_file_max: num("fs.file-max").or(host.fs_file_max),
            nf_conntrack_max: num("net.netfilter.nf_conntrack_max").or(host.nf_conntrack_max),
            ..host.clone()
        }
    }

    #[test]
    fn a_small_instance_writes_the_backlogs_and_ports_only() {
        let text = sysctl_text(&sample(), 100_000, None);
        assert_eq!(
            keys(&text),
            [
                "net.core.somaxconn",
                "net.ipv4.tcp_max_syn_backlog",
                "net.ipv4.ip_local_port_range"
            ]
        );
        assert!(
            text.contains("\nnet.ipv4.ip_local_port_range = 1024 65535\n"),
            "{text}"
        );
    }

    #[test]
    fn values_only_rise() {
        let host = Host {
            somaxconn: Some(65_535),
            ip_local_port_range: Some((2000, 60_999)),
            ..sample()
        };
        let text = sysctl_text(&host, 100_000, None);
        assert!(text.contains("\nnet.core.somaxconn = 65535\n"), "{text}");
        assert!(
            text.contains("\nnet.ipv4.ip_local_port_range = 1024 65535\n"),
            "{text}"
        );
    }

    #[test]
    fn too_low_ceilings_are_raised_and_stay_after_loading() {
        let host = sample();
        let text = sysctl_text(&host, 3_000_000, None);
        assert_eq!(
            keys(&text)[3..],
            [
                "fs.nr_open",
                "fs.file-max",
                "net.netfilter.nf_conntrack_max"
            ]
        );
        assert!(text.contains("\nfs.nr_open = 3000320\n"), "{text}");
        assert!(text.contains(&format!("\nfs.file-max = {}\n", 3_000_320 + FILES_OTHERS)));
        assert!(
            text.contains("\nnet.netfilter.nf_conntrack_max = 3815536\n"),
            "{text}"
        );
        // After `sysctl -p`, the host is no longer low, but the same text comes out.
        let after = loaded(&host, &text);
        assert_eq!(after.fs_nr_open, Some(3_000_320));
        assert_eq!(sysctl_text(&after, 3_000_000, Some(&text)), text);
        // Without conntrack loaded, it is not written.
        let no_conntrack = Host {
            nf_conntrack_max: None,
            ..host
        };
        assert!(!sysctl_text(&no_conntrack, 3_000_000, None).contains("nf_conntrack"));
    }

    #[test]
    fn the_dropin_sets_the_units_limits() {
        let text = dropin_text("sokdo@a", 100_000);
        assert!(text.contains("sokdo@a.service"), "{text}");
        assert!(text.contains("\n[Service]\n"), "{text}");
        assert!(text.contains("\nLimitNOFILE=100352\n"), "{text}");
        assert!(text.contains("\nLimitMEMLOCK=infinity\n"), "{text}");
        assert!(text.ends_with("\nLimitNICE=+0\n"), "{text}");
        assert_eq!(
            dropin_path("sokdo@a"),
            "etc/systemd/system/sokdo@a.service.d/limits.conf"
        );
    }

    #[test]
    fn file_values() {
        let text = "# c\nfs.nr_open = 1048576\nnet.core.somaxconn=4096\n";
        assert_eq!(file_value(Some(text), "fs.nr_open"), Some("1048576"));
        assert_eq!(file_value(Some(text), "net.core.somaxconn"), Some("4096"));
        assert_eq!(file_value(Some(text), "fs.file-max"), None);
        assert_eq!(file_value(None, "fs.nr_open"), None);
    }
}
