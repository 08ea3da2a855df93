//! CPU at saturation: what a CPU carries when it is the limit.
//!
//! sokdo spends less CPU per delivery the busier it is: a shard that wakes for one frame
//! pays a whole turn (a wake-up, a `sendmsg`, the loopback's TCP work) for it, a shard that
//! is behind writes many frames per connection in one turn. So the CPU seconds per delivery
//! of a lightly loaded run (`fit`'s linear terms) overstate what a CPU-bound instance pays,
//! several times over (docs/CAPACITY.md). Sizing needs the cost at the limit, and the limit is
//! what a ramp measures: users are added until the server can no longer keep up, and at the
//! users it held its CPU was spent on exactly that load.
//!
//! Each ramp that ended with CPU as its limit (not memory: the cgroup below its limit, no OOM
//! kill) gives one equation, with `N` the users held, `D = room_size ÷ interval` deliveries
//! and `S = 1 ÷ interval` sends per user-second, `H = step_users ÷ step_s` handshakes per
//! second, and `c`, `d` the per-handshake and per-connection-second costs of the linear fit:
//!
//! ```text
//! cpus − c·H − d·N = N·(a·D + b·S)        a: CPU s per delivery, b: per send
//! ```
//!
//! Ramps of different shapes (rooms of 10, 25 …) solve for `a` and `b`, one pair per CPU
//! share measured (a quota: `cpus` = 0.2 for 20 % of one CPU), since a throttled server
//! batches more and pays less per delivery again. `plan` interpolates between shares.

use crate::lsq;
use crate::model::{Coef, FitError, Row, Saturation};
use crate::report::{Host, Run};

/// Server RSS at or above this share of the memory limit: the ramp ended in memory, not CPU.
/// (Not the cgroup's peak: it counts the page cache of the log and store, which fills any
/// cgroup that writes files and is reclaimed, not a limit.)
const MEMORY_BOUND_SHARE: f64 = 0.9;

/// One ramp that ended CPU-bound.
#[derive(Clone, Debug)]
pub struct Point {
    pub file: String,
    pub label: String,
    pub cpus: f64,
    pub users: f64,
    pub deliveries_per_user_s: f64,
    pub sends_per_user_s: f64,
    pub handshakes_per_s: f64,
}

/// The ramp's point, or why it cannot give one.
pub fn point(file: &str, host: &Host, run: &Run) -> Result<Point, String> {
    let s = &run.summary;
    let why = |w: &str| {
        format!(
            "not used for CPU at saturation: {file}: {} {w}",
            run.scenario
        )
    };
    if run.scenario != "ramp" {
        return Err(why("is not a ramp"));
    }
    if !s.unreachable {
        return Err(why(
            "ended before the server failed (time or user limit): its limit is not known",
        ));
    }
    if s.server_oom_kills.unwrap_or(0) > 0 {
        return Err(why("ended in an OOM kill: memory was the limit"));
    }
    if let (Some(rss), Some(limit)) = (s.server_rss_after_bytes, host.server_memory_limit_bytes) {
        if rss as f64 >= MEMORY_BOUND_SHARE * limit as f64 {
            return Err(why(&format!(
                "ended with the server's RSS at {:.0} % of its memory limit: memory, not CPU, was the limit",
                100.0 * rss as f64 / limit as f64
            )));
        }
    }
    let cpus = match (host.server_cpu_quota_percent, &host.server_cpus) {
        (Some(q), _) => q / 100.0,
        (None, Some(list)) => {
            cpu_count(list).ok_or_else(|| why("has an unreadable --server-cpus"))?
        }
        (None, None) => {
            return Err(why(
                "does not say which CPUs the server had (--server-cpus)",
            ))
        }
    };
    let get = |k: &str| {
        run.config_f64(k)
            .ok_or_else(|| why(&format!("has no {k} in its config")))
    };
    let (room, interval) = (get("room_size")?, get("message_interval_s")?);
    let (step_users, step_s) = (get("step_users")?, get("step_s")?);
    Ok(Point {
        file: file.to_string(),
        label: format!("ramp rooms of {room}, 1 msg/{interval} s"),
        cpus,
        users: s.users_held as f64,
        deliveries_per_user_s: room / interval,
        sends_per_user_s: 1.0 / interval,
        handshakes_per_s: step_users / step_s,
    })
}

/// CPUs in a taskset list ("0", "0-3", "0,2").
fn cpu_count(list: &str) -> Option<f64> {
    let mut n = 0u32;
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                n += b.trim().parse::<u32>().ok()? + 1 - a.trim().parse::<u32>().ok()?
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                n += 1;
            }
        }
    }
    Some(f64::from(n))
}

/// One `Saturation` per CPU share among `points` (shares within 1 % are one), each from ≥ 2
/// ramps of different shapes; `c`, `d` are the per-handshake and per-connection-second costs.
pub fn fit(points: &[Point], c: f64, d: f64, notes: &mut Vec<String>) -> Vec<Saturation> {
    let mut shares: Vec<f64> = Vec::new();
    for p in points {
        if !shares.iter().any(|s| (s - p.cpus).abs() <= 0.01 * s) {
            shares.push(p.cpus);
        }
    }
    shares.sort_by(f64::total_cmp);
    let mut out = Vec::new();
    for share in shares {
        let group: Vec<&Point> = points
            .iter()
            .filter(|p| (p.cpus - share).abs() <= 0.01 * share)
            .collect();
        match fit_share(&group, c, d) {
            Ok(s) => out.push(s),
            Err(e) => notes.push(format!("CPU at saturation, {share} CPU: {e}")),
        }
    }
    out
}

fn fit_share(group: &[&Point], c: f64, d: f64) -> Result<Saturation, String> {
    // Per ramp: (cpus − c·H − d·N) = N·D·a + N·S·b.
    let y: Vec<f64> = group
        .iter()
        .map(|p| p.cpus - c * p.handshakes_per_s - d * p.users)
        .collect();
    let xd: Vec<f64> = group
        .iter()
        .map(|p| p.users * p.deliveries_per_user_s)
        .collect();
    let xs: Vec<f64> = group.iter().map(|p| p.users * p.sends_per_user_s).collect();
    let unit = |u: &str| u.to_string();
    let (a, b) = if group.len() >= 2 && lsq::independence(&[&xd], &xs) > 0.05 {
        let (v, _) = lsq::non_negative(&[&xd, &xs], &y).ok_or("the ramps give no solution")?;
        (
            Coef {
                value: Some(v[0]),
                unit: unit("CPU s per delivery"),
                note: None,
            },
            Coef {
                value: Some(v[1]),
                unit: unit("CPU s per send"),
                note: None,
            },
        )
    } else {
        return Err(format!(
            "{} ramp(s) of one shape: ramps of at least two shapes (deliveries per send) are needed",
            group.len()
        ));
    };
    let rows = group
        .iter()
        .map(|p| {
            let predicted = users_at(
                p.cpus,
                a.or_zero(),
                b.or_zero(),
                c,
                d,
                p.deliveries_per_user_s,
                p.sends_per_user_s,
                p.handshakes_per_s,
            );
            Row {
                file: p.file.clone(),
                scenario: format!("{} ({} CPU): users held", p.label, p.cpus),
                measured: p.users,
                predicted,
                relative_error: (predicted - p.users) / p.users,
            }
        })
        .collect();
    Ok(Saturation {
        cpus: group[0].cpus,
        s_per_delivery: a,
        s_per_send: b,
        fit: FitError::from_rows(rows),
    })
}

/// Users `cpus` carry at saturation.
#[allow(clippy::too_many_arguments)]
pub fn users_at(
    cpus: f64,
    a: f64,
    b: f64,
    c: f64,
    d: f64,
    deliveries: f64,
    sends: f64,
    handshakes_per_s: f64,
) -> f64 {
    let per_user = a * deliveries + b * sends + d;
    if per_user <= 0.0 {
        return f64::INFINITY;
    }
    ((cpus - c * handshakes_per_s) / per_user).max(0.0)
}

/// `a` and `b` at a CPU share per CPU (1 = whole CPUs, 0.2 = a 20 % quota): linear between the
/// two measured shares around it, the nearest one outside them (and `true`: extrapolated).
pub fn at_share(sets: &[Saturation], share: f64) -> Option<(f64, f64, bool)> {
    let per_cpu = |s: &Saturation| s.cpus.min(1.0);
    let ab = |s: &Saturation| (s.s_per_delivery.or_zero(), s.s_per_send.or_zero());
    let below = sets
        .iter()
        .filter(|s| per_cpu(s) <= share)
        .max_by(|x, y| per_cpu(x).total_cmp(&per_cpu(y)));
    let above = sets
        .iter()
        .filter(|s| per_cpu(s) >= share)
        .min_by(|x, y| per_cpu(x).total_cmp(&per_cpu(y)));
    match (below, above) {
        (Some(lo), Some(hi)) if per_cpu(hi) > per_cpu(lo) => {
            let t = (share - per_cpu(lo)) / (per_cpu(hi) - per_cpu(lo));
            let ((a0, b0), (a1, b1)) = (ab(lo), ab(hi));
            Some((a0 + t * (a1 - a0), b0 + t * (b1 - b0), false))
        }
        (Some(s), Some(_)) => Some((ab(s).0, ab(s).1, false)),
        (Some(s), None) | (None, Some(s)) => Some((ab(s).0, ab(s).1, true)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cpus: f64, users: f64, room: f64, interval: f64) -> Point {
        Point {
            file: "f".into(),
            label: "l".into(),
            cpus,
            users,
            deliveries_per_user_s: room / interval,
            sends_per_user_s: 1.0 / interval,
            handshakes_per_s: 0.0,
        }
    }

    #[test]
    fn two_shapes_give_back_the_costs_they_were_made_with() {
        // a = 2 µs per delivery, b = 50 µs per send, one CPU:
        // rooms of 10, 1 msg/2 s: per user 5 × 2 + 0.5 × 50 = 35 µs → 28,571.4 users;
        // rooms of 25, 1 msg/5 s: per user 5 × 2 + 0.2 × 50 = 20 µs → 50,000 users.
        let points = [p(1.0, 1.0 / 35e-6, 10.0, 2.0), p(1.0, 50_000.0, 25.0, 5.0)];
        let mut notes = Vec::new();
        let sets = fit(&points, 0.0, 0.0, &mut notes);
        assert!(notes.is_empty(), "{notes:?}");
        let s = &sets[0];
        assert!((s.s_per_delivery.or_zero() - 2e-6).abs() < 1e-12);
        assert!((s.s_per_send.or_zero() - 50e-6).abs() < 1e-12);
        assert!(s.fit.max_relative_error.unwrap() < 1e-9);
        // Rooms of 50, 1 msg/10 s: 5 × 2 + 0.1 × 50 = 15 µs → 66,666.7 users.
        let n = users_at(1.0, 2e-6, 50e-6, 0.0, 0.0, 5.0, 0.1, 0.0);
        assert!((n - 66_666.666_7).abs() < 0.01);
    }

    #[test]
    fn one_shape_cannot_separate_deliveries_from_sends() {
        let mut notes = Vec::new();
        let sets = fit(
            &[p(1.0, 30_000.0, 10.0, 2.0), p(1.0, 31_000.0, 10.0, 4.0)],
            0.0,
            0.0,
            &mut notes,
        );
        assert!(sets.is_empty());
        assert!(notes[0].contains("two shapes"), "{notes:?}");
    }

    #[test]
    fn shares_interpolate_between_the_measured_ones() {
        let set = |cpus: f64, a: f64, b: f64| Saturation {
            cpus,
            s_per_delivery: Coef {
                value: Some(a),
                unit: String::new(),
                note: None,
            },
            s_per_send: Coef {
                value: Some(b),
                unit: String::new(),
                note: None,
            },
            fit: FitError::default(),
        };
        let sets = [set(0.2, 1.0, 10.0), set(1.0, 3.0, 30.0)];
        assert_eq!(at_share(&sets, 0.6), Some((2.0, 20.0, false)));
        assert_eq!(at_share(&sets, 1.0), Some((3.0, 30.0, false)));
        assert_eq!(at_share(&sets, 0.1), Some((1.0, 10.0, true)));
        assert_eq!(at_share(&[], 0.5), None);
    }

    #[test]
    fn taskset_lists_count_their_cpus() {
        assert_eq!(cpu_count("0"), Some(1.0));
        assert_eq!(cpu_count("0-3"), Some(4.0));
        assert_eq!(cpu_count("0,2-3"), Some(3.0));
        assert_eq!(cpu_count("x"), None);
    }
}
