//! `soak`: a long run at a moderate load — users chatting in rooms while short connections
//! churn (connect, join, stay, leave, a name that returns after `rooms × 10` churns) — that samples the server every
//! few seconds (RSS, open fds, the queue gauges of /metrics) and says whether those stay
//! flat after the warm-up. The verdict is reported, not a pass/fail: a slope is a
//! measurement of this machine and this run.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;

use crate::fleet::View;
use crate::kernel::{servers_fds, servers_rss};
use crate::metrics;
use crate::report::{Soak, SoakSample, Summary};
use crate::scenario::{unreachable, Common, Session};
use crate::worker::{Command, Rooms, Stats};

/// The gauges a soak samples: queues and backlogs that must not grow without bound.
pub const GAUGES: [&str; 8] = [
    "sokdo_connections",
    "sokdo_outbound_queue_bytes",
    "sokdo_admission_waiting",
    "sokdo_inbox_depth",
    "sokdo_home_requests_waiting",
    "sokdo_sink_lag_records",
    "sokdo_wal_records_pending_sink",
    "sokdo_shard_outbox_messages",
];

/// The counters a soak samples beside the gauges: the server's reasons for closing a
/// connection, and its stalls — what tells why users dropped.
pub const COUNTERS: [&str; 6] = [
    "sokdo_idle_timeout_closes_total",
    "sokdo_slow_consumer_closes_total",
    "sokdo_rate_limit_closes_total",
    "sokdo_ping_flood_closes_total",
    "sokdo_token_expired_closes_total",
    "sokdo_stalls_total",
];

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users that stay connected and chat.
    #[arg(long, default_value_t = 5000)]
    pub users: u64,
    /// Users per room (rooms fill in order).
    #[arg(long, default_value_t = 50)]
    pub room_size: u64,
    /// Messages per second, all users together (each user sends every users/rate s).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Churn connections opened per second (each a new user name in a churn room).
    #[arg(long, default_value_t = 200.0)]
    pub churn_per_s: f64,
    /// How long a churn connection stays once it joined, in ms.
    #[arg(long, default_value_t = 2000)]
    pub churn_hold_ms: u64,
    /// Churn rooms (churners join `n mod rooms`; nobody publishes there).
    #[arg(long, default_value_t = 100)]
    pub churn_rooms: u64,
    /// Seconds of chatting and churning.
    #[arg(long, default_value_t = 1800.0)]
    pub duration_s: f64,
    /// Seconds between two samples of the server (RSS, fds, /metrics).
    #[arg(long, default_value_t = 5.0)]
    pub sample_interval_s: f64,
    /// The first part of the run that the verdict leaves out (0.0–0.9).
    #[arg(long, default_value_t = 0.33)]
    pub warmup_fraction: f64,
    /// Flat: RSS grows by less than this % of its mean over the window after warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub rss_growth_max_percent: f64,
    /// Flat: open fds grow by less than this many over the window after warm-up.
    #[arg(long, default_value_t = 50.0)]
    pub fds_growth_max: f64,
    /// Seconds allowed for deliveries in flight after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain_s: f64,
    /// A user dropped while chatting comes back, as real clients do: after a jittered
    /// wait of up to this many ms, doubled after each failed attempt (at most 30 s). 0: a
    /// dropped user stays away. Either way the verdict says "NOT clean".
    #[arg(long, default_value_t = 1000)]
    pub reconnect_ms: u64,
}

impl SoakArgs {
    pub fn check(&self) -> Result<(), clap::Error> {
        let bad = |msg: &str| {
            let mut cmd =
                <SoakArgs as clap::Args>::augment_args(clap::Command::new("sokdo-bench soak"));
            cmd.error(clap::error::ErrorKind::ValueValidation, msg)
        };
        if !(0.0..=0.9).contains(&self.warmup_fraction) {
            return Err(bad("--warmup-fraction must be within 0.0–0.9"));
        }
        if self.sample_interval_s.is_nan() || self.sample_interval_s < 1.0 {
            return Err(bad("--sample-interval-s must be at least 1"));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.users == 0
            || !positive(self.rate)
            || !(positive(self.churn_per_s) || self.churn_per_s == 0.0)
        {
            return Err(bad(
                "--users and --rate must be positive, --churn-per-s not negative",
            ));
        }
        Ok(())
    }
}

/// Connects the users, chats and churns for `--duration-s` with a sample of the server
/// every `--sample-interval-s`, drains, and reports the samples and their verdict.
pub fn soak(args: &SoakArgs) -> anyhow::Result<crate::report::Run> {
    let config = serde_json::to_value(args)?;
    let reconnect = (args.reconnect_ms > 0).then_some(args.reconnect_ms);
    let rooms = Rooms::Blocks(args.room_size);
    let mut s = Session::start_with(&args.common, args.users, rooms, reconnect)?;
    let mut samples = vec![sample(&s.common, 0.0, &Stats::default(), None)];
    s.fleet.send(&Command::Connect {
        users_end: args.users,
    });
    let (view, gone) = s.wait_connected(args.users);
    let mut summary = Summary::default();
    if gone || view.totals.connect_ok == 0 {
        summary.unreachable = gone || unreachable(&args.common.server).is_some();
        summary.stop_reason = "no user could connect".into();
        return Ok(s.finish("soak", config, summary));
    }
    summary.users_held = view.totals.connected;
    s.fleet.send(&Command::Publish {
        publishers: args.users,
        interval_us: (args.users as f64 * 1e6 / args.rate) as u64,
        messages_max: None,
    });
    s.fleet.send(&Command::Churn {
        per_s: args.churn_per_s,
        hold_ms: args.churn_hold_ms,
        rooms: args.churn_rooms,
    });
    let start = view;
    summary.stop_reason = "duration elapsed".into();
    let v = chat(&mut s, args, &start, &mut summary, &mut samples);
    s.fleet.send(&Command::StopPublish);
    s.fleet.send(&Command::Churn {
        per_s: 0.0,
        hold_ms: 0,
        rooms: 1,
    });
    let window_s = (v.t_s - start.t_s).max(1e-3);
    summary.deliveries_per_s = (v.totals.received - start.totals.received) as f64 / window_s;
    summary.sends_per_s = (v.totals.sent - start.totals.sent) as f64 / window_s;
    let last = if summary.unreachable {
        s.tick()
    } else {
        s.drain(args.drain_s).0
    };
    summary.expected_deliveries = last.expected_deliveries;
    let t = &last.totals;
    let mut soak = verdict(args, samples);
    (soak.churn_ok, soak.churn_closed, soak.churn_fail) =
        (t.churn_ok, t.churn_closed, t.churn_fail);
    (soak.drops, soak.reconnects, soak.reconnect_fail) =
        (t.drops.clone(), t.reconnects, t.reconnect_fail);
    soak.users_dropped = t.drops.values().sum();
    let mut run = s.finish("soak", config, summary);
    judge(&mut soak, &run.summary);
    run.soak = Some(soak);
    Ok(run)
}

/// Ticks for `--duration-s`, with a sample every `--sample-interval-s` (its drops are the
/// ones since the previous sample), or until the server is gone; returns the last view.
fn chat(
    s: &mut Session,
    args: &SoakArgs,
    start: &View,
    summary: &mut Summary,
    samples: &mut Vec<SoakSample>,
) -> View {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration_s);
    let mut next_sample = started;
    let mut v = start.clone();
    let mut sampled = start.totals.clone();
    while Instant::now() < until {
        v = s.tick();
        if s.server_gone(&v) {
            summary.unreachable = true;
            summary.stop_reason = "server unreachable".into();
            break;
        }
        if Instant::now() >= next_sample {
            let t = started.elapsed().as_secs_f64();
            samples.push(sample(&s.common, t, &v.totals, Some(&sampled)));
            sampled = v.totals.clone();
            next_sample += Duration::from_secs_f64(args.sample_interval_s);
        }
    }
    v
}

/// Clean: no chatting user dropped, every send acknowledged and delivered to each member
/// of its room (received = acked × members), the server reachable throughout and no panic
/// in its log (when `--server-log` names it). The verdict line starts with the reasons it
/// is not, before the flatness of RSS and fds.
fn judge(soak: &mut Soak, summary: &Summary) {
    let mut faults = Vec::new();
    if soak.users_dropped > 0 {
        let kinds: Vec<String> = (soak.drops.iter())
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        faults.push(format!(
            "{} chatting users dropped ({}; {} came back)",
            soak.users_dropped,
            kinds.join(", "),
            soak.reconnects
        ));
    }
    if summary.unreachable {
        faults.push("the server became unreachable".into());
    }
    if summary.acked < summary.sent {
        faults.push(format!(
            "{} of {} sends not acknowledged",
            summary.sent - summary.acked,
            summary.sent
        ));
    }
    match summary.expected_deliveries {
        Some(e) if e == summary.received => {}
        Some(e) => faults.push(format!(
            "received {} ≠ acked × members {e}",
            summary.received
        )),
        None => faults.push("no received = acked × members check (rooms unknown)".into()),
    }
    if let Some(n @ 1..) = summary.server_log_panics {
        faults.push(format!("{n} panic line(s) in the server's log"));
    }
    soak.clean = faults.is_empty();
    let head = if soak.clean {
        "clean".to_string()
    } else {
        format!("NOT clean: {}", faults.join("; "))
    };
    soak.verdict = format!("{head}. Memory: {}", soak.verdict);
}

/// One sample of the server; `t_s` is seconds since chatting began. `totals`: the bench's
/// counters now; `prev`: at the previous sample (the drops in between are the sample's).
fn sample(common: &Common, t_s: f64, totals: &Stats, prev: Option<&Stats>) -> SoakSample {
    let mut gauges = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for server in &common.server {
        if let Some(text) = metrics::scrape(*server) {
            for (name, v) in parse_gauges(&text, &GAUGES) {
                *gauges.entry(name).or_insert(0.0) += v;
            }
            for (name, v) in parse_gauges(&text, &COUNTERS) {
                *counters.entry(name).or_insert(0.0) += v;
            }
        }
    }
    let drops = (totals.drops.iter())
        .filter_map(|(kind, n)| {
            let before = prev.and_then(|p| p.drops.get(kind)).copied().unwrap_or(0);
            (*n > before).then(|| (kind.clone(), n - before))
        })
        .collect();
    SoakSample {
        t_s,
        rss_bytes: servers_rss(&common.server_pid),
        fds: servers_fds(&common.server_pid),
        users: totals.connected,
        churn_ok: totals.churn_ok,
        gauges,
        counters,
        drops,
        reconnects: totals.reconnects,
    }
}

/// The values of the metrics named in `names` in a Prometheus text exposition, summed over
/// their label sets.
pub fn parse_gauges(text: &str, names: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, _, v) in metrics::samples(text).filter(|(n, _, _)| names.contains(n)) {
        *out.entry(name.to_string()).or_insert(0.0) += v;
    }
    out
}

/// Least-squares slope of `points` (x, y), per unit of x; `None` under two points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The samples after the warm-up: their slopes, growth over the window, and the verdict.
fn verdict(args: &SoakArgs, samples: Vec<SoakSample>) -> Soak {
    let end_t = samples.last().map_or(0.0, |s| s.t_s);
    let warmup_s = end_t * args.warmup_fraction;
    let after: Vec<&SoakSample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let window_s = after.last().map_or(0.0, |s| s.t_s) - after.first().map_or(0.0, |s| s.t_s);
    let points = |f: fn(&SoakSample) -> Option<u64>| -> Vec<(f64, f64)> {
        after
            .iter()
            .filter_map(|s| Some((s.t_s, f(s)? as f64)))
            .collect()
    };
    let rss = points(|s| s.rss_bytes);
    let fds = points(|s| s.fds);
    let rss_slope = slope(&rss);
    let fds_slope = slope(&fds);
    let rss_mean = rss.iter().map(|p| p.1).sum::<f64>() / rss.len().max(1) as f64;
    let rss_growth = rss_slope.map(|k| k * window_s / rss_mean.max(1.0) * 100.0);
    let fds_growth = fds_slope.map(|k| k * window_s);
    let flat = match (rss_growth, fds_growth) {
        (Some(r), Some(f)) => Some(r < args.rss_growth_max_percent && f < args.fds_growth_max),
        _ => None,
    };
    let verdict = match (flat, rss_growth, fds_growth) {
        (Some(flat), Some(r), Some(f)) => format!(
            "{}: over the {window_s:.0} s after a {warmup_s:.0} s warm-up, RSS {r:+.2}% \
             (bound {}%), open fds {f:+.1} (bound {})",
            if flat { "flat" } else { "NOT flat" },
            args.rss_growth_max_percent,
            args.fds_growth_max
        ),
        _ => "no verdict: the server's RSS and fds were not sampled (--server-pid) or too \
              few samples after the warm-up"
            .into(),
    };
    Soak {
        warmup_s,
        rss_slope_bytes_per_h: rss_slope.map(|k| k * 3600.0),
        fds_slope_per_h: fds_slope.map(|k| k * 3600.0),
        rss_after_warmup_bytes: after.first().and_then(|s| s.rss_bytes),
        rss_end_bytes: after.last().and_then(|s| s.rss_bytes),
        fds_after_warmup: after.first().and_then(|s| s.fds),
        fds_end: after.last().and_then(|s| s.fds),
        rss_growth_percent: rss_growth,
        fds_growth,
        flat,
        verdict,
        samples,
        ..Soak::default()
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_gauges, slope};

    #[test]
    fn gauges_are_summed_over_labels_and_others_ignored() {
        let text = "# HELP sokdo_connections open sockets\n\
                    sokdo_connections{shard=\"0\"} 3\n\
                    sokdo_connections{shard=\"1\"} 4\n\
                    sokdo_connections_max 10\n\
                    sokdo_inbox_depth{shard=\"0\"} 0.5\n";
        let g = parse_gauges(text, &["sokdo_connections", "sokdo_inbox_depth"]);
        assert_eq!(g.get("sokdo_connections"), Some(&7.0));
        assert_eq!(g.get("sokdo_inbox_depth"), Some(&0.5));
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn slope_of_a_line_and_of_too_few_points() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }
}
