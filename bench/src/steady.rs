//! The seeds' own workloads as presets (shared/seeds/BRIEF.md), each judged against the
//! seed's own target.
#![forbid(unsafe_code)]

use clap::error::ErrorKind;
use clap::{Args, ValueEnum};

use crate::report::{Check, Run};
use crate::scenario::{run_load, Common, Load};
use crate::worker::Rooms;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Preset {
    /// Seed 002: 3,000 users × 1 msg/s, rooms of 30 (`--room-size`); target: 0 % errors,
    /// mean ≤ 100 ms.
    Ktb,
    /// Seed 001: 5,000 msg/s from 5,000 users, rooms of 10 (`--room-size`); target: p99 ≤
    /// 1,000 ms, the full rate sustained.
    Thiscode,
    /// Seed 003: one room, 1,000 users × 100 messages, then 2,000 users × 50; target:
    /// mean < 2,000 ms, errors < 1 %.
    Webchat,
}

#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct SteadyArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum)]
    pub preset: Preset,
    /// Scale every user count by this factor (e.g. 0.1 for a quick check).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Users per room for `ktb` (default 30) and `thiscode` (default 10). The users are dealt
    /// round-robin over ⌈users ÷ this⌉ rooms (user u in room u mod that), so a room holds at
    /// most this many, exactly this many when it divides the (scaled) user count. Refused
    /// with `webchat`, whose one room holds every user.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub room_size: Option<u64>,
    /// Publishing time for `ktb` and `thiscode`, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    /// Time allowed, after publishing stops, for the acks and deliveries in flight to arrive
    /// (the run ends as soon as they all have), in seconds. Default: 10 for `ktb` and
    /// `thiscode`, 30 for each `webchat` run.
    #[arg(long)]
    pub drain_s: Option<f64>,
    /// Messages per second of each `webchat` user.
    #[arg(long, default_value_t = 1.0)]
    pub webchat_user_rate: f64,
}

impl SteadyArgs {
    /// What clap's attributes cannot say: `--room-size` means nothing to `webchat`.
    pub fn check(&self) -> Result<(), clap::Error> {
        if self.preset == Preset::Webchat && self.room_size.is_some() {
            let mut cmd = SteadyArgs::augment_args(clap::Command::new("sokdo-bench steady"));
            return Err(cmd.error(
                ErrorKind::ArgumentConflict,
                "the argument '--room-size <ROOM_SIZE>' cannot be used with '--preset webchat': \
                 its one room holds every user",
            ));
        }
        Ok(())
    }

    /// Rooms for `users` users, `default` users per room unless `--room-size` says otherwise.
    fn rooms(&self, users: u64, default: u64) -> Rooms {
        Rooms::Modulo(users.div_ceil(self.room_size.unwrap_or(default)))
    }

    /// A preset's user count times `--scale`, at least 2.
    fn scaled(&self, users: u64) -> u64 {
        ((users as f64 * self.scale).round() as u64).max(2)
    }
}

pub fn steady(args: &SteadyArgs) -> anyhow::Result<Vec<Run>> {
    match args.preset {
        Preset::Ktb => Ok(vec![ktb(args)?]),
        Preset::Thiscode => Ok(vec![thiscode(args)?]),
        Preset::Webchat => webchat(args),
    }
}

/// Seed 002: every user sends one message a second.
fn ktb(args: &SteadyArgs) -> anyhow::Result<Run> {
    let users = args.scaled(3000);
    let load = Load {
        users,
        rooms: args.rooms(users, 30),
        publishers: users,
        rate_total: users as f64,
        messages_max: None,
        duration_s: args.duration_s,
        drain_s: args.drain_s.unwrap_or(10.0),
    };
    let mut run = run_load(&args.common, "steady:ktb", &load)?;
    let error_rate = error_rate(&run);
    let checks = vec![
        check(
            "message errors",
            "0 %",
            error_rate * 100.0,
            "%",
            error_rate == 0.0,
        ),
        mean_check(&run, 100.0),
    ];
    judge(&mut run, checks);
    Ok(run)
}

/// Seed 001: as many messages a second as users, judged on p99 and the rate sustained.
fn thiscode(args: &SteadyArgs) -> anyhow::Result<Run> {
    let users = args.scaled(5000);
    let rate = users as f64;
    let load = Load {
        users,
        rooms: args.rooms(users, 10),
        publishers: users,
        rate_total: rate,
        messages_max: None,
        duration_s: args.duration_s,
        drain_s: args.drain_s.unwrap_or(10.0),
    };
    let mut run = run_load(&args.common, "steady:thiscode", &load)?;
    let p99 = run.summary.latency_ms.p99;
    let sends = run.summary.sends_per_s;
    let checks = vec![
        check(
            "send→receive p99",
            "≤ 1000 ms",
            p99,
            "ms",
            p99 <= 1000.0 && p99 > 0.0,
        ),
        check(
            "messages/s sustained",
            &format!("≥ {:.0}", rate * 0.95),
            sends,
            "/s",
            sends >= rate * 0.95,
        ),
    ];
    judge(&mut run, checks);
    Ok(run)
}

/// Seed 003: two runs in one room of everyone, each user sending a fixed count.
fn webchat(args: &SteadyArgs) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for (users, messages) in [(1000, 100), (2000, 50)] {
        let users = args.scaled(users);
        let load = Load {
            users,
            rooms: Rooms::Modulo(1),
            publishers: users,
            rate_total: users as f64 * args.webchat_user_rate,
            messages_max: Some(messages),
            duration_s: messages as f64 / args.webchat_user_rate * 3.0 + 10.0,
            drain_s: args.drain_s.unwrap_or(30.0),
        };
        let name = format!("steady:webchat-{users}x{messages}");
        let mut run = run_load(&args.common, &name, &load)?;
        let error_rate = error_rate(&run);
        let checks = vec![
            check(
                "errors",
                "< 1 %",
                error_rate * 100.0,
                "%",
                error_rate < 0.01,
            ),
            mean_check(&run, 2000.0),
        ];
        judge(&mut run, checks);
        runs.push(run);
    }
    Ok(runs)
}

/// Failed sends, failed connects and lost deliveries, over what was attempted.
fn error_rate(run: &Run) -> f64 {
    let s = &run.summary;
    let lost = s
        .expected_deliveries
        .map(|e| e.saturating_sub(s.received))
        .unwrap_or(0);
    let failed = s.sent.saturating_sub(s.acked) + s.connect_fail + lost;
    let attempted = s.sent + s.users_attempted + s.expected_deliveries.unwrap_or(0);
    if run.summary.unreachable {
        return 1.0;
    }
    failed as f64 / attempted.max(1) as f64
}

fn mean_check(run: &Run, limit_ms: f64) -> Check {
    let mean = run.summary.latency_ms.mean;
    let ok = run.summary.latency_ms.samples > 0 && mean <= limit_ms;
    check(
        "send→receive mean",
        &format!("≤ {limit_ms} ms"),
        mean,
        "ms",
        ok,
    )
}

fn check(name: &str, target: &str, measured: f64, unit: &str, pass: bool) -> Check {
    Check {
        name: name.into(),
        target: target.into(),
        measured: format!("{measured:.2} {unit}"),
        pass,
    }
}

fn judge(run: &mut Run, checks: Vec<Check>) {
    run.passed = Some(checks.iter().all(|c| c.pass));
    run.checks = checks;
}
