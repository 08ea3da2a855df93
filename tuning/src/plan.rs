//! `sokdo-tune plan`: how many instances of a kind carry a load, what limits each, the sokdo
//! flags and host settings per instance, and for t3 what happens to the CPU credits.
//!
//! Per instance, the users it holds are the least of four limits: memory (the instance's
//! memory less headroom and the process baseline, ÷ bytes per user), CPU (vCPUs less headroom
//! ÷ CPU seconds per user-second), sockets (open files per process) and network (the
//! instance's baseline bandwidth ÷ bytes each user's room makes it send). `compute` is pure:
//! the unit tests drive it without files or flags.

use std::path::PathBuf;

use serde::Serialize;

use crate::caps::{self, FDS_RESERVED, SOKDO_LISTEN_BACKLOG};
use crate::credits;
use crate::instances::{self, Instance};
use crate::model::{self, Model};
use crate::saturation;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Concurrent users to carry.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub users: u64,
    /// Seconds between two messages of one user.
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub message_interval_s: f64,
    /// Members per room (every message is delivered to each, sender included).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub room_size: u64,
    /// Instance kind: t3.nano, t3.micro, t3.small, t3.medium, t3.large, t3.xlarge, c6i.large,
    /// c7i.large, m6i.large.
    #[arg(long, default_value = "t3.small")]
    pub instance: String,
    /// Hours the load runs: the rings fill and, on t3 `unlimited`, surplus credits accrue.
    #[arg(long, default_value_t = 24.0, value_parser = hours, allow_negative_numbers = true)]
    pub hours: f64,
    /// Share of memory, CPU and bandwidth kept free, percent.
    #[arg(long, default_value_t = 20.0, value_parser = headroom, allow_negative_numbers = true)]
    pub headroom_percent: f64,
    /// A model from `sokdo-tune fit --out` (default: the one built in).
    #[arg(long, value_name = "MODEL.json")]
    pub model: Option<PathBuf>,
    /// New connections per second over the whole deployment (reconnects, arrivals).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub connects_per_s: f64,
    /// t3: the credit balance the burst starts from (default: the instance's maximum).
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    pub credit_balance: Option<f64>,
    /// Message body size in bytes (the seeds' 64 by default).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub body_bytes: u64,
    /// The engine's `--room-cache-bytes-per-shard`: the rooms' rings and search indexes of
    /// each shard stay within it (rooms beyond it read their history from the store), so
    /// the ring term of memory stops growing at shards × this.
    #[arg(long, default_value_t = ROOM_CACHE_BYTES_PER_SHARD_DEFAULT, value_parser = clap::value_parser!(u64).range(65_536..=(1 << 40)))]
    pub room_cache_bytes_per_shard: u64,
    /// Open files one sokdo process may hold on the instance (`LimitNOFILE`).
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1024..=1_073_741_816))]
    pub open_files_max: u64,
    /// vCPUs sokdo may use on the instance, instead of the table's: e.g. 1 for the emulated
    /// t3.small of `sokdo-bench compare` (server pinned to one core), 0.2 under a 20 % quota.
    #[arg(long, value_parser = vcpus, allow_negative_numbers = true)]
    pub vcpus: Option<f64>,
    /// Network baseline in Gbps, instead of the table's (e.g. large on loopback, where the
    /// network is not a cap).
    #[arg(long, value_parser = gbps, allow_negative_numbers = true)]
    pub network_gbps: Option<f64>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s:?} is not a finite number"))
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{v} is out of range (0, 86400] seconds"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if (0.0..=1e9).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range [0, 1e9]"))
    }
}

fn vcpus(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v > 0.0 && v <= 1024.0 {
        Ok(v)
    } else {
        Err(format!("{v} is out of range (0, 1024] vCPUs"))
    }
}

fn gbps(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v > 0.0 && v <= 100_000.0 {
        Ok(v)
    } else {
        Err(format!("{v} is out of range (0, 100000] Gbps"))
    }
}

fn hours(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v > 0.0 && v <= 8_760.0 {
        Ok(v)
    } else {
        Err(format!("{v} is out of range (0, 8760] hours"))
    }
}

fn headroom(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if (0.0..=90.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range [0, 90] percent"))
    }
}

/// A `msg` event's JSON around its body (`{"op":"msg","room":…,"seq":…,"msg_id":…,"from":…,
/// "body":"","ts":…}` with 10-character room and user names), docs/PROTOCOL.md.
pub const ENVELOPE_BYTES: f64 = 120.0;
/// Per delivery on the wire besides the frame: WebSocket header (≤ 4 bytes below 64 KiB) and
/// one TCP/IPv4 segment's headers with timestamps (52) and Ethernet's (14): pessimistic, as
/// deliveries to one socket often share a segment.
pub const WIRE_OVERHEAD_BYTES: f64 = 4.0 + 52.0 + 14.0;

/// The engine's default `--room-cache-bytes-per-shard` (32 MiB).
pub const ROOM_CACHE_BYTES_PER_SHARD_DEFAULT: u64 = 32 << 20;

#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    pub name: &'static str,
    /// Users one instance holds under this limit alone.
    pub users_per_instance: f64,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Credits {
    pub baseline_vcpus: f64,
    pub used_vcpus: f64,
    pub above_baseline: bool,
    pub balance: f64,
    /// `None`: at or below the baseline, the burst never ends.
    pub burst_hours: Option<f64>,
    pub users_per_instance_at_baseline: u64,
    pub instances_at_baseline: u64,
    pub unlimited_surplus_credits_per_instance: f64,
    pub unlimited_cost_usd: f64,
    pub hours: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub instance: String,
    /// vCPUs sokdo uses (the table's, or `--vcpus`) and the network baseline (`--network-gbps`).
    pub vcpus: f64,
    pub network_baseline_gbps: f64,
    pub users: u64,
    pub limits: Vec<Limit>,
    pub binding: &'static str,
    /// What one instance holds: the binding limit (its `--connections-max`).
    pub users_per_instance: u64,
    pub instances: u64,
    pub sokdo_flags: Vec<String>,
    pub host_settings: Vec<String>,
    pub credits: Option<Credits>,
    pub per_user: PerUser,
    pub caveats: Vec<String>,
}

/// What one user costs an instance.
#[derive(Clone, Debug, Serialize)]
pub struct PerUser {
    /// Everything, the rings' share included (uncapped).
    pub memory_bytes: f64,
    /// The user's share of its room's ring, in `memory_bytes`: the part the per-shard room
    /// cache caps per instance (`--room-cache-bytes-per-shard`).
    pub ring_bytes: f64,
    pub cpu_s_per_s: f64,
    pub network_bytes_per_s: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let inst = instances::find(&args.instance).ok_or_else(|| {
        anyhow::anyhow!(
            "--instance {:?}: not in the instance table ({})",
            args.instance,
            instances::names()
        )
    })?;
    let model = match &args.model {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--model {}: cannot read: {e}", p.display()))?;
            Model::parse(&text, &format!("--model {}", p.display()))?
        }
        None => Model::parse(model::EMBEDDED, model::EMBEDDED_NAME)?,
    };
    if let (Some(b), Some(burst)) = (args.credit_balance, inst.burst) {
        anyhow::ensure!(
            b <= burst.credits_max,
            "--credit-balance {b}: above {}'s maximum balance of {} credits",
            inst.name,
            burst.credits_max
        );
    }
    let plan = compute(&model, inst, args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", render(&plan, inst));
    }
    Ok(())
}

/// What one user costs; CPU at `share` of each CPU (1: whole CPUs, a t3's baseline: 0.2).
fn per_user(m: &Model, a: &Args, users_total: f64, share: f64) -> PerUser {
    let mem = &m.memory;
    let cpu = &m.cpu;
    // At saturation when the model has it (what a CPU-bound instance pays), else the linear
    // fit of lightly loaded runs (which overstates it: docs/CAPACITY.md).
    let (per_delivery, per_send) = saturation::at_share(&cpu.saturation, share)
        .map(|(d, s, _)| (d, s))
        .unwrap_or((cpu.s_per_delivery.or_zero(), cpu.s_per_send.or_zero()));
    let s = a.room_size as f64;
    let i = a.message_interval_s;
    let seconds = a.hours * 3600.0;
    let ring_per_room = (s / i * seconds).min(m.history_ring_messages_max as f64);
    let ring_bytes = mem.bytes_per_ring_message.or_zero() * ring_per_room / s;
    let memory_bytes = mem.bytes_per_connection.or_zero()
        + mem.kernel_bytes_per_socket.or_zero()
        + mem.bytes_per_room.or_zero() / s
        + ring_bytes
        + mem.bytes_per_stored_message.or_zero() * seconds / i;
    let cpu_s_per_s = cpu.s_per_connection_s.or_zero()
        + per_send / i
        + per_delivery * s / i
        + cpu.s_per_handshake.or_zero() * a.connects_per_s / users_total;
    let wire = a.body_bytes as f64 + ENVELOPE_BYTES + WIRE_OVERHEAD_BYTES;
    PerUser {
        memory_bytes,
        ring_bytes,
        cpu_s_per_s,
        network_bytes_per_s: s / i * wire,
    }
}

/// Users per instance under each limit (CPU at `vcpus` usable vCPUs; the rings capped by
/// the room caches of `shards`, the instance's whatever its CPU share).
fn limits(
    m: &Model,
    inst: &Instance,
    a: &Args,
    u: &PerUser,
    (vcpus, shards): (f64, u64),
) -> Vec<Limit> {
    let keep = 1.0 - a.headroom_percent / 100.0;
    let baseline = m.memory.baseline_bytes_per_process.or_zero();
    let mem_free = inst.memory_bytes() * keep - baseline;
    let net_gbps = a.network_gbps.unwrap_or(inst.network_baseline_gbps);
    let net = net_gbps * 1e9 / 8.0 * keep;
    let files = a.open_files_max.saturating_sub(FDS_RESERVED);
    let cap = |x: f64, per: f64| if per > 0.0 { x / per } else { f64::INFINITY };
    // The rings grow with the users until the shards' room caches are full, then no more.
    let ring_cap = shards as f64 * a.room_cache_bytes_per_shard as f64;
    let uncapped = cap(mem_free.max(0.0), u.memory_bytes);
    let (memory_users, rings) = if u.ring_bytes <= 0.0 || uncapped * u.ring_bytes <= ring_cap {
        (uncapped, format!("{:.0} bytes per user", u.memory_bytes))
    } else {
        let rest = u.memory_bytes - u.ring_bytes;
        (
            cap(mem_free - ring_cap, rest),
            format!(
                "{rest:.0} bytes per user once the rings are capped: {} shards × {} MiB room cache (--room-cache-bytes-per-shard) hold them from {:.0} users on",
                shards,
                a.room_cache_bytes_per_shard as f64 / 1048576.0,
                ring_cap / u.ring_bytes
            ),
        )
    };
    vec![
        Limit {
            name: "memory",
            users_per_instance: memory_users,
            detail: format!(
                "{:.0} MiB usable ({} GiB less {}% headroom and {:.0} MiB process baseline) ÷ {rings}",
                mem_free / 1048576.0, inst.memory_gib, a.headroom_percent, baseline / 1048576.0
            ),
        },
        Limit {
            name: "cpu",
            users_per_instance: cap(vcpus * keep, u.cpu_s_per_s),
            detail: format!(
                "{:.3} vCPU usable ÷ {:.3e} CPU seconds per user-second",
                vcpus * keep,
                u.cpu_s_per_s
            ),
        },
        Limit {
            name: "sockets",
            users_per_instance: files as f64,
            detail: format!(
                "LimitNOFILE up to {} (--open-files-max: fs.nr_open's default, as `sokdo-tune apply` may raise it) less {FDS_RESERVED} reserved files; ports do not cap a server",
                a.open_files_max
            ),
        },
        Limit {
            name: "network",
            users_per_instance: cap(net, u.network_bytes_per_s),
            detail: format!(
                "{} Gbps baseline less headroom ÷ {:.0} bytes/s sent per user ({} msg/s × {} members × {} bytes on the wire)",
                net_gbps, u.network_bytes_per_s, 1.0 / a.message_interval_s, a.room_size,
                a.body_bytes as f64 + ENVELOPE_BYTES + WIRE_OVERHEAD_BYTES
            ),
        },
    ]
}

/// The shards one process runs on `vcpus` (the plan's `--shards`).
fn shards(vcpus: f64) -> u64 {
    (vcpus.ceil() as u64).max(1)
}

fn binding(limits: &[Limit]) -> &Limit {
    limits
        .iter()
        .min_by(|a, b| a.users_per_instance.total_cmp(&b.users_per_instance))
        .expect("four limits")
}

/// The plan for `a.users` on `inst` with `m`.
pub fn compute(m: &Model, inst: &Instance, a: &Args) -> anyhow::Result<Plan> {
    let n = a.users as f64;
    let vcpus = a.vcpus.unwrap_or(f64::from(inst.vcpus));
    // A fraction of one CPU (`--vcpus 0.2`: an emulated instance under a 20 % quota) is a
    // share of a CPU; whole CPUs are not throttled.
    let u = per_user(m, a, n, vcpus.min(1.0));
    let limits = limits(m, inst, a, &u, (vcpus, shards(vcpus)));
    let bind = binding(&limits);
    let cap = bind.users_per_instance.floor();
    anyhow::ensure!(
        cap >= 1.0,
        "one {} cannot hold a single user: {} ({})",
        inst.name,
        bind.name,
        bind.detail
    );
    let count = (n / cap).ceil() as u64;
    let users_per_instance = cap as u64;
    let credits = inst.burst.map(|b| {
        let base = credits::baseline_vcpus(&b);
        // At the baseline every vCPU runs at its baseline share, and sokdo pays what a
        // throttled CPU pays per delivery (saturation.rs); the vCPUs it has, at that share.
        let share = b.baseline_percent_per_vcpu / 100.0;
        let at_base_user = per_user(m, a, n, share * vcpus.min(1.0));
        let throttled = (vcpus * share, shards(vcpus));
        let at_base = binding(&self::limits(m, inst, a, &at_base_user, throttled))
            .users_per_instance
            .floor();
        let used = n / count as f64 * u.cpu_s_per_s;
        let balance = a.credit_balance.unwrap_or(b.credits_max);
        let surplus = credits::surplus_credits(&b, used, balance, a.hours);
        Credits {
            baseline_vcpus: base,
            used_vcpus: used,
            above_baseline: used > base,
            balance,
            burst_hours: credits::burst_hours(&b, used, balance),
            users_per_instance_at_baseline: at_base as u64,
            instances_at_baseline: if at_base >= 1.0 {
                (n / at_base).ceil() as u64
            } else {
                0
            },
            unlimited_surplus_credits_per_instance: surplus,
            unlimited_cost_usd: credits::surplus_cost_usd(&b, used, balance, a.hours)
                * count as f64,
            hours: a.hours,
        }
    });
    Ok(Plan {
        instance: inst.name.into(),
        vcpus,
        network_baseline_gbps: a.network_gbps.unwrap_or(inst.network_baseline_gbps),
        users: a.users,
        binding: bind.name,
        users_per_instance,
        instances: count,
        sokdo_flags: sokdo_flags(users_per_instance, vcpus, a.room_cache_bytes_per_shard),
        host_settings: host_settings(users_per_instance),
        credits,
        caveats: caveats(m),
        per_user: u,
        limits,
    })
}

fn sokdo_flags(users_per_instance: u64, vcpus: f64, room_cache: u64) -> Vec<String> {
    let mut flags = vec![
        format!("--connections-max {users_per_instance}"),
        format!("--shards {}", shards(vcpus)),
        "--durability sync".into(),
    ];
    if room_cache != ROOM_CACHE_BYTES_PER_SHARD_DEFAULT {
        flags.push(format!("--room-cache-bytes-per-shard {room_cache}"));
    }
    flags
}

/// What `sokdo-tune apply --connections N` writes for an instance of N connections (the
/// same functions as `apply`: one source for both texts).
fn host_settings(connections: u64) -> Vec<String> {
    let fds = caps::fds_for(connections);
    let mut v = vec![
        format!("sokdo-tune apply --connections {connections} (writes what follows)"),
        format!("LimitNOFILE={fds} and LimitMEMLOCK=infinity (systemd drop-in for the unit)"),
        format!(
            "net.core.somaxconn and net.ipv4.tcp_max_syn_backlog at least {SOKDO_LISTEN_BACKLOG} (sysctl.d)"
        ),
    ];
    if fds > 1 << 20 {
        v.push(format!(
            "fs.nr_open = {fds} (sysctl.d: above its default 1048576)"
        ));
    }
    v
}

fn caveats(m: &Model) -> Vec<String> {
    let mut c = m.caveats.clone();
    let coefs = [
        ("bytes per connection", &m.memory.bytes_per_connection),
        ("bytes per room", &m.memory.bytes_per_room),
        ("bytes per ring message", &m.memory.bytes_per_ring_message),
        (
            "bytes per stored message",
            &m.memory.bytes_per_stored_message,
        ),
        ("CPU per delivery", &m.cpu.s_per_delivery),
        ("CPU per send", &m.cpu.s_per_send),
        ("CPU per handshake", &m.cpu.s_per_handshake),
        ("CPU per connection-second", &m.cpu.s_per_connection_s),
    ];
    for (name, k) in coefs {
        if k.value.is_none() {
            c.push(format!(
                "{name} taken as 0: {}",
                k.note.as_deref().unwrap_or("not identified")
            ));
        }
    }
    c
}

fn render(p: &Plan, inst: &Instance) -> String {
    let mut s = format!(
        "{} users on {} ({} vCPUs, {} GiB, {} Gbps baseline / {} Gbps burst)\n",
        p.users,
        inst.name,
        inst.vcpus,
        inst.memory_gib,
        inst.network_baseline_gbps,
        inst.network_burst_gbps
    );
    if p.vcpus != f64::from(inst.vcpus) || p.network_baseline_gbps != inst.network_baseline_gbps {
        s += &format!(
            "  as given: sokdo uses {} vCPUs (--vcpus), network baseline {} Gbps (--network-gbps)\n",
            p.vcpus, p.network_baseline_gbps
        );
    }
    s += "\nusers per instance, by limit:\n";
    for l in &p.limits {
        let mark = if l.name == p.binding {
            "  <- binds"
        } else {
            ""
        };
        let users = if l.users_per_instance.is_finite() {
            format!("{:.0}", l.users_per_instance.floor())
        } else {
            "unbounded".into()
        };
        s += &format!("  {:<8} {users:>12}  {}{mark}\n", l.name, l.detail);
    }
    s += &format!(
        "\ninstances: {} (each holds up to {} users: {} binds)\n",
        p.instances, p.users_per_instance, p.binding
    );
    s += &format!("per instance, sokdo flags: {}\n", p.sokdo_flags.join(" "));
    s += "per instance, host settings:\n";
    for h in &p.host_settings {
        s += &format!("  {h}\n");
    }
    if let Some(c) = &p.credits {
        s += &render_credits(c, p);
    }
    s += "\ncaveats:\n";
    for c in &p.caveats {
        s += &format!("  - {c}\n");
    }
    s
}

fn render_credits(c: &Credits, p: &Plan) -> String {
    let mut s = format!(
        "\nt3 CPU credits (1 credit = 1 vCPU at 100 % for 1 minute):\n  load per instance: {:.3} vCPU, baseline {:.3} vCPU: {}\n",
        c.used_vcpus,
        c.baseline_vcpus,
        if c.above_baseline { "above the baseline" } else { "at or below the baseline" }
    );
    s += &match c.burst_hours {
        Some(h) => format!(
            "  the burst lasts {h:.1} hours from a balance of {} credits\n",
            c.balance
        ),
        None => "  the burst never ends: the balance does not drain\n".into(),
    };
    s += &format!(
        "  once credits are gone (standard mode): {} users per instance, {} instances\n",
        c.users_per_instance_at_baseline, c.instances_at_baseline
    );
    s += &format!(
        "  unlimited mode over {} h: {:.0} surplus credits per instance, ${:.2} for all {} instances (${} per vCPU-hour)\n",
        c.hours, c.unlimited_surplus_credits_per_instance, c.unlimited_cost_usd, p.instances,
        credits::SURPLUS_USD_PER_VCPU_HOUR
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Coef, Cpu, FitError, Memory};
    use clap::Parser;

    fn coef(v: f64) -> Coef {
        Coef {
            value: Some(v),
            unit: String::new(),
            note: None,
        }
    }

    /// Round figures: 100 MiB baseline, 20 KB per connection, 8 KB kernel, 4 KB per room,
    /// 500 bytes per ring message, none per stored message; 20 µs per delivery, 50 µs per
    /// send, 1 ms per handshake, 1 µs per connection-second.
    fn model() -> Model {
        Model {
            schema: model::SCHEMA,
            machine: "test".into(),
            history_ring_messages_max: 1024,
            memory: Memory {
                baseline_bytes_per_process: coef(100.0 * 1048576.0),
                bytes_per_connection: coef(20_000.0),
                bytes_per_room: coef(4_000.0),
                bytes_per_ring_message: coef(500.0),
                bytes_per_stored_message: coef(0.0),
                kernel_bytes_per_socket: coef(8_192.0),
                fit: FitError::default(),
                baseline_fit: FitError::default(),
                kernel_fit: FitError::default(),
            },
            cpu: Cpu {
                s_per_delivery: coef(20e-6),
                s_per_send: coef(50e-6),
                s_per_handshake: coef(1e-3),
                s_per_connection_s: coef(1e-6),
                fit: FitError::default(),
                saturation: vec![],
            },
            sources: vec![],
            caveats: vec![],
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec!["plan"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).map(|c| c.a)
    }

    fn plan_for(users: u64, interval: f64, instance: &str) -> Plan {
        plan_with(users, interval, instance, 0.0)
    }

    fn plan_with(users: u64, interval: f64, instance: &str, connects_per_s: f64) -> Plan {
        let a = args(&[
            "--users",
            &users.to_string(),
            "--message-interval-s",
            &interval.to_string(),
            "--room-size",
            "50",
            "--instance",
            instance,
            "--connects-per-s",
            &connects_per_s.to_string(),
        ])
        .unwrap();
        compute(&model(), instances::find(instance).unwrap(), &a).unwrap()
    }

    /// Rooms of 50, one message per 10 s, 24 h (rings full: 50/10 × 86400 ≫ 1024):
    /// memory per user = 20000 + 8192 + 4000/50 + 500 × 1024/50 = 38512 bytes, of which
    /// 10240 the ring's; t3.small: 2 GiB × 0.8 − 100 MiB = 1613129318 bytes ÷ 38512 → 41886
    /// users would hold 409 MiB of rings, beyond 2 shards × 32 MiB of room cache: so
    /// (1613129318 − 67108864) ÷ 28272 → 54683 users.
    /// CPU per user-second = 1e-6 + 50e-6/10 + 20e-6 × 50/10 = 1.06e-4;
    /// 2 vCPU × 0.8 = 1.6 → 15094 users.
    /// Network: 0.128 Gbps = 16e6 B/s × 0.8 = 12.8e6 B/s; per user 50/10 = 5 deliveries/s ×
    /// (64 + 120 + 70) = 1270 B/s → 10078 users: the network binds; 100,000 users →
    /// ceil(9.92) = 10 instances.
    /// At baseline 0.4 × 0.8 = 0.32 vCPU → 3018 users → ceil(33.13) = 34 instances.
    /// Used per instance: 100000 / 10 × 1.06e-4 = 1.06 vCPU; drain 63.6 − 24 = 39.6
    /// credits/h; 576 / 39.6 = 14.545 h.
    #[test]
    fn hand_computed_t3_small() {
        let p = plan_for(100_000, 10.0, "t3.small");
        let users = |name: &str| {
            p.limits
                .iter()
                .find(|l| l.name == name)
                .unwrap()
                .users_per_instance
        };
        assert_eq!(users("memory").floor(), 54683.0);
        assert_eq!(users("cpu").floor(), 15094.0);
        assert_eq!(users("network").floor(), 10078.0);
        assert!((p.per_user.cpu_s_per_s - 1.06e-4).abs() < 1e-12);
        assert_eq!(
            (p.binding, p.users_per_instance, p.instances),
            ("network", 10078, 10)
        );
        let c = p.credits.unwrap();
        assert_eq!(
            (c.users_per_instance_at_baseline, c.instances_at_baseline),
            (3018, 34)
        );
        assert!((c.used_vcpus - 1.06).abs() < 1e-9);
        assert!((c.burst_hours.unwrap() - 576.0 / 39.6).abs() < 1e-9);
        assert!(c.above_baseline);
        assert!(p
            .sokdo_flags
            .contains(&"--connections-max 10078".to_string()));
    }

    fn memory_users(p: &Plan) -> f64 {
        let memory = p.limits.iter().find(|l| l.name == "memory").unwrap();
        memory.users_per_instance.floor()
    }

    fn t3_small(extra: &[&str]) -> Plan {
        let mut v = vec!["--users", "100000", "--room-size", "50"];
        v.extend_from_slice(extra);
        compute(
            &model(),
            instances::find("t3.small").unwrap(),
            &args(&v).unwrap(),
        )
        .unwrap()
    }

    /// The ring term stops at shards × `--room-cache-bytes-per-shard` (the figures of
    /// `hand_computed_t3_small`): a cache too large to fill gives the linear model's
    /// 41886 users; 128 MiB per shard (1613129318 − 2 × 134217728) ÷ 28272 → 47562, and
    /// the flag goes into the plan; rings that stay below the cap (one message per 600 s
    /// for 3 minutes: 15 per room, 150 bytes per user) are not capped: ÷ 28422 → 56756.
    #[test]
    fn the_rings_stop_growing_at_the_shards_room_cache() {
        let busy = ["--message-interval-s", "10"];
        let p = t3_small(&busy);
        assert_eq!(memory_users(&p), 54683.0);
        let detail = &p.limits.iter().find(|l| l.name == "memory").unwrap().detail;
        assert!(detail.contains("--room-cache-bytes-per-shard"), "{detail}");
        assert!(!p.sokdo_flags.iter().any(|f| f.contains("room-cache")));
        let unfillable = t3_small(
            &[
                &busy[..],
                &["--room-cache-bytes-per-shard", "1099511627776"],
            ]
            .concat(),
        );
        assert_eq!(memory_users(&unfillable), 41886.0);
        let p = t3_small(&[&busy[..], &["--room-cache-bytes-per-shard", "134217728"]].concat());
        assert_eq!(memory_users(&p), 47562.0);
        assert!(p
            .sokdo_flags
            .contains(&"--room-cache-bytes-per-shard 134217728".to_string()));
        let quiet = ["--message-interval-s", "600", "--hours", "0.05"];
        assert_eq!(memory_users(&t3_small(&quiet)), 56756.0);
        let quiet_unfillable = [
            &quiet[..],
            &["--room-cache-bytes-per-shard", "1099511627776"],
        ]
        .concat();
        assert_eq!(memory_users(&t3_small(&quiet_unfillable)), 56756.0);
        // At the CPU baseline the instance still runs its 2 shards, with 2 room caches: one
        // message per 600 s for 24 h fills the rings, memory binds there too, and the same.
        let p = t3_small(&["--message-interval-s", "600"]);
        let at_base = p.credits.as_ref().unwrap().users_per_instance_at_baseline;
        assert_eq!(
            (p.binding, p.users_per_instance, at_base),
            ("memory", 54683, 54683)
        );
    }

    /// More users or more messages never need fewer instances, on every kind.
    #[test]
    fn instance_counts_are_monotonic_in_users_and_message_rate() {
        for inst in instances::TABLE.iter().map(|i| i.name) {
            for interval in [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0] {
                let (mut prev, mut prev_storm) = (0, 0);
                for users in [1_000, 5_000, 20_000, 50_000, 100_000, 400_000, 1_000_000] {
                    let n = plan_for(users, interval, inst).instances;
                    assert!(
                        n >= prev,
                        "{inst} {interval}s: {users} users need {n} < {prev}"
                    );
                    // With 500 reconnects/s their cost per user falls as users grow; the
                    // count still never does, and is never below the count without them.
                    let m = plan_with(users, interval, inst, 500.0).instances;
                    assert!(m >= prev_storm && m >= n, "{inst} {interval}s {users}: {m}");
                    (prev, prev_storm) = (n, m);
                }
            }
            for users in [10_000, 100_000] {
                let mut prev = 0;
                for interval in [60.0, 30.0, 10.0, 5.0, 2.0, 1.0, 0.5] {
                    let n = plan_for(users, interval, inst).instances;
                    assert!(
                        n >= prev,
                        "{inst} {users} users at 1/{interval}s: {n} < {prev}"
                    );
                    prev = n;
                }
            }
        }
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        for (flag, bad) in [
            ("--message-interval-s", "0"),
            ("--message-interval-s", "abc"),
            ("--headroom-percent", "95"),
            ("--hours", "-1"),
            ("--room-size", "0"),
            ("--body-bytes", "0"),
            ("--connects-per-s", "-2"),
            ("--room-cache-bytes-per-shard", "65535"),
        ] {
            let mut v = vec![];
            for (f, ok) in [
                ("--users", "10"),
                ("--message-interval-s", "10"),
                ("--room-size", "5"),
            ] {
                if f != flag {
                    v.extend([f, ok]);
                }
            }
            v.extend([flag, bad]);
            let err = args(&v).err().unwrap().to_string();
            assert!(err.contains(flag), "{flag} {bad}: {err}");
        }
    }
}
