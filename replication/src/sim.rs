//! A deterministic simulation of a cluster: real [`Membership`] (foca) and real [`Room`]
//! state machines on N nodes, a simulated network and clock, clients and subscribers, and
//! a checker of the invariants after every event. One `u64` seed decides everything.
//!
//! The network delays every datagram and frame by 1–`delay_ms_max` ms (so it reorders),
//! loses a seed-chosen share, and may be cut per direction (symmetric and one-way
//! partitions). Nodes crash (their log — the rooms' [`Durable`] part — survives; everything
//! else is lost) and restart as a new identity. Publishers send each of their messages to
//! a random live node until one answers `ok`, retrying elsewhere on an error or a timeout;
//! subscribers follow a room through a node's live deliveries and resume with `after_seq`
//! whenever they see a gap, time out or lose their node.
//!
//! Checked on every event: no two different messages acknowledged or delivered with one
//! `(room, seq)`, and no message (its retry key) acknowledged or delivered at two seqs
//! (exactly once); no two nodes (or two boots of one node) sequencing one room in one epoch;
//! a replay answer starts right after the asked position and has no gap. Checked at the
//! end, after healing everything and restarting every node: every room has one owner,
//! whose acknowledged log holds every message ever acknowledged at its seq, and every
//! subscriber received exactly that log, each seq once, in order; every message was
//! eventually acknowledged.
//!
//! Every third message of a publisher is a metadata change instead (a tag added to the
//! room's [`Meta`], decided at the owner as the engine decides a room's metadata): its
//! acknowledgement must carry the tag, and at the end the owner's metadata holds every
//! acknowledged tag — an acknowledged change survives every failover.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::frame::{self, Frame, Meta, Record, RefusalCode};
use crate::membership::{MemberState, Membership, MembershipConfig, NodeIdentity};
use crate::room::{log, Durable, Input, Output, Room, Rules, View};

/// What one run simulates; [`Config::for_seed`] draws it from the seed.
#[derive(Debug, Clone)]
pub struct Config {
    pub nodes: usize,
    pub rooms: usize,
    pub publishers: usize,
    pub messages_per_publisher: usize,
    pub subscribers: usize,
    /// Faults happen during this long, then everything heals.
    pub chaos_ms: u64,
    /// After the chaos, everything must have converged within this long.
    pub settle_ms_max: u64,
    pub delay_ms_max: u64,
    /// Share of datagrams and frames lost, per mille.
    pub loss_per_mille: u64,
    /// Every this-many-th message of a publisher is a metadata change (0: none).
    pub meta_every: usize,
    pub rules: Rules,
    pub trace: bool,
    /// Acknowledged records a room keeps in memory (`Room::with_log_tail`, the others read
    /// back from the node's disk); `None`: all.
    pub log_tail: Option<u64>,
    /// Claim answers above this many bytes go in parts (`Room::with_handoff_bytes_max`);
    /// `None`: the production bound, which the simulation never reaches.
    pub handoff_bytes_max: Option<usize>,
    /// Room machines dropped from memory while quiescent (`Room::is_quiescent`), as the
    /// engine bounds its machines (`--cluster-rooms-in-memory-max`).
    pub evict: Evict,
}

/// What becomes of a quiescent room machine on a node's room tick (each one, with a
/// chance of one in two, drawn from a generator of its own so the run's other draws are
/// the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    /// Kept.
    Off,
    /// Rebuilt at once from the node's disk and given its view: a restart of that room
    /// only. Nothing may change: the run is the run with `Off`, event for event.
    Restart,
    /// Dropped, as the engine's node drops it: no tick, no view reaches it; the next frame,
    /// send or metadata request for the room rebuilds it from the disk and the current view
    /// first.
    Drop,
}

impl Evict {
    /// `SIM_EVICT=restart` or `SIM_EVICT=drop`; else `Off`.
    pub fn from_env() -> Self {
        match std::env::var("SIM_EVICT").as_deref() {
            Ok("restart") => Evict::Restart,
            Ok("drop") => Evict::Drop,
            _ => Evict::Off,
        }
    }
}

impl Config {
    /// A cluster of 3–5 nodes and a workload drawn from `seed`.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed);
        Self {
            nodes: 3 + rng.below(3) as usize,
            rooms: 1 + rng.below(3) as usize,
            publishers: 2 + rng.below(3) as usize,
            messages_per_publisher: 4 + rng.below(6) as usize,
            subscribers: 2 + rng.below(3) as usize,
            chaos_ms: 2_000 + rng.below(3_000),
            settle_ms_max: 60_000,
            delay_ms_max: 2 + rng.below(20),
            loss_per_mille: rng.below(80),
            meta_every: 3,
            rules: Rules::default(),
            trace: false,
            // Not drawn from `rng`: each seed keeps the scenario it had before the bound.
            // Tails of 0–2 records evict at almost every ack; a quarter of seeds keep all.
            log_tail: (seed % 4 != 3).then_some(seed % 4),
            // One seed in three answers every claim that has acknowledged records to offer
            // a record at a time.
            handoff_bytes_max: seed.is_multiple_of(3).then_some(1),
            // Off: each seed keeps its scenario; `tests/sim.rs` runs seeds with it on.
            evict: Evict::Off,
        }
    }
}

/// A node's disk: what `take_changes` handed out, applied; shared with its rooms, which
/// read back the records they no longer hold in memory.
type Disk = Arc<Mutex<BTreeMap<String, Durable>>>;

#[derive(Debug)]
struct DiskSource(Disk);

impl log::Source for DiskSource {
    fn read(&self, room: &str, from: u64, max: usize) -> Vec<Record> {
        let disk = self
            .0
            .lock()
            .expect("the simulation does not panic holding it");
        let Some(d) = disk.get(room) else {
            return Vec::new();
        };
        let from = from.saturating_sub(1) as usize;
        d.log.iter().skip(from).take(max).cloned().collect()
    }
}

/// What a run that kept every invariant did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub acked: usize,
    /// Retries the owner answered with the original's seq (`Published { original }`).
    pub deduplicated: usize,
    /// Of `acked`, the metadata changes.
    pub meta_changes: usize,
    pub failovers: usize,
    /// Room machines evicted (`Config::evict`).
    pub evictions: usize,
    pub events: u64,
    pub end_ms: u64,
    pub trace: String,
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    /// The rules the run broke on purpose, as the environment of the reproducing command.
    pub rules_env: String,
    pub at_ms: u64,
    pub what: String,
    pub trace: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at {} ms: {}\n  reproduce: {}SIM_SEED={} cargo test -p sokdo-replication --test sim one_seed -- --nocapture",
            self.seed, self.at_ms, self.what, self.rules_env, self.seed
        )
    }
}

/// The environment that makes `one_seed` run with `cfg`'s rules and evictions (empty for
/// the defaults).
fn rules_env(cfg: &Config) -> String {
    let rules = &cfg.rules;
    let mut env = String::new();
    match cfg.evict {
        Evict::Off => {}
        Evict::Restart => env.push_str("SIM_EVICT=restart "),
        Evict::Drop => env.push_str("SIM_EVICT=drop "),
    }
    if !rules.fencing {
        env.push_str("SIM_FENCING=off ");
    }
    if rules.successor_only {
        env.push_str("SIM_SUCCESSOR_ONLY=on ");
    }
    if !rules.dedup {
        env.push_str("SIM_DEDUP=off ");
    }
    if !rules.merge_drops_copies {
        env.push_str("SIM_MERGE_DROPS_COPIES=off ");
    }
    env
}

/// The rules `one_seed` runs with: the defaults, or those `SIM_FENCING=off`,
/// `SIM_SUCCESSOR_ONLY=on`, `SIM_DEDUP=off` and `SIM_MERGE_DROPS_COPIES=off` break.
pub fn rules_from_env() -> Rules {
    let on = |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v == value);
    Rules {
        fencing: !on("SIM_FENCING", "off"),
        successor_only: on("SIM_SUCCESSOR_ONLY", "on"),
        dedup: !on("SIM_DEDUP", "off"),
        merge_drops_copies: !on("SIM_MERGE_DROPS_COPIES", "off"),
    }
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::placement::splitmix64_finalizer(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), up to a negligible bias.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Runs `seed` with `cfg`: the outcome, or the first broken invariant.
pub fn run(seed: u64, cfg: &Config) -> Result<Outcome, Violation> {
    let mut sim = Sim::new(seed, cfg.clone());
    sim.run();
    match sim.violation.take() {
        Some(what) => Err(Violation {
            seed,
            rules_env: rules_env(cfg),
            at_ms: sim.now,
            what,
            trace: sim.trace,
        }),
        None => Ok(Outcome {
            acked: sim.acked.len(),
            deduplicated: sim.deduplicated,
            meta_changes: sim.meta_acked.values().map(Vec::len).sum(),
            failovers: sim.failovers,
            evictions: sim.evictions,
            events: sim.events,
            end_ms: sim.now,
            trace: sim.trace,
        }),
    }
}

/// Room ticks (resends, claims), ms.
const TICK_MS: u64 = 20;
/// A publisher gives up on an attempt after this long and retries elsewhere, ms.
const CLIENT_TIMEOUT_MS: u64 = 400;
/// A subscriber resumes (`after_seq`) this often when it hears nothing, ms.
const SUB_POLL_MS: u64 = 150;
/// A node registers its subscribers' interest again every this many ticks (owners change).
const INTEREST_EVERY_TICKS: u64 = 10;
/// An owner drops a registration not renewed within this many of its ticks (as the engine:
/// three renewals; lost frames and cuts make some lapse, which the subscribers' resumes
/// must cover).
const INTEREST_LEASE_TICKS: u64 = 3 * INTEREST_EVERY_TICKS;
/// A node forgets a forwarded request after this long, ms.
const FORWARD_TTL_MS: u64 = 1_000;
/// A run that takes more events than this is stuck.
const EVENTS_MAX: u64 = 3_000_000;
/// The owners' window of retry keys per room: above the most messages one room gets (four
/// publishers × nine), so every retry is within it.
const KEYS_MAX: usize = 64;

fn name(i: usize) -> String {
    format!("n{i}")
}

fn index_of(node: &str) -> Option<usize> {
    node.strip_prefix('n')?.parse().ok()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, (i + 1) as u8], 7000))
}

fn membership_config(n: usize, me: usize) -> MembershipConfig {
    MembershipConfig {
        probe_period: Duration::from_millis(100),
        probe_rtt: Duration::from_millis(40),
        suspect_to_down: Duration::from_millis(300),
        seeds: (0..n).filter(|&j| j != me).map(addr).collect(),
    }
}

/// Whether a publisher's message `k` is a metadata change (every third).
fn is_meta(k: usize, every: usize) -> bool {
    every > 0 && k % every == every - 1
}

/// The tags a simulated room's metadata holds (one a line).
fn tags(meta: &Meta) -> impl Iterator<Item = &[u8]> {
    meta.bytes.split(|b| *b == b'\n').filter(|t| !t.is_empty())
}

fn room_name(r: usize) -> String {
    format!("room-{r}")
}

#[derive(Debug)]
enum ClientMsg {
    Send {
        p: usize,
        attempt: u64,
        room: String,
        payload: Vec<u8>,
    },
    Replay {
        s: usize,
        conn: u64,
        room: String,
        after: u64,
    },
}

#[derive(Debug)]
enum Ev {
    Datagram {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Frame {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    ToNode {
        node: usize,
        msg: ClientMsg,
    },
    Acked {
        p: usize,
        attempt: u64,
        result: Result<u64, RefusalCode>,
    },
    Records {
        s: usize,
        conn: u64,
        after: u64,
        records: Vec<Record>,
        more: bool,
    },
    Live {
        s: usize,
        conn: u64,
        record: Record,
    },
    MemTimer {
        node: usize,
        boot: u64,
        at: u64,
    },
    RoomTick {
        node: usize,
        boot: u64,
    },
    PubWake {
        p: usize,
        attempt: u64,
    },
    SubWake {
        s: usize,
    },
    Chaos,
    Check,
}

/// An event and when it happens; ordered by time, then by scheduling order.
struct Scheduled(u64, u64, Ev);

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

enum Forwarded {
    Publish { p: usize, attempt: u64 },
    Replay { s: usize, conn: u64, after: u64 },
}

struct Node {
    up: bool,
    boot: u64,
    membership: Option<Membership>,
    live: Vec<String>,
    rooms: BTreeMap<String, Room>,
    /// The rooms' logs and promises as written to the node's disk: every input's
    /// `take_changes`, applied before its frames leave. A crash keeps exactly this.
    disk: Disk,
    next_req: u64,
    forwarded: BTreeMap<u64, (u64, Forwarded)>,
    /// Rooms whose machine was dropped (`Evict::Drop`): rebuilt when next touched.
    evicted: BTreeSet<String>,
    /// Rooms → subscribers attached here.
    subs: BTreeMap<String, Vec<usize>>,
    mem_timer: Option<u64>,
    ticks: u64,
}

struct Publisher {
    room: String,
    next: usize,
    attempt: u64,
    /// attempt → message index.
    attempts: BTreeMap<u64, usize>,
    done: bool,
}

struct Subscriber {
    room: String,
    node: usize,
    node_boot: u64,
    conn: u64,
    got: Vec<Vec<u8>>,
}

struct Sim {
    cfg: Config,
    rng: Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    /// cut[from][to]: frames and datagrams from → to are dropped.
    cut: Vec<Vec<bool>>,
    publishers: Vec<Publisher>,
    subscribers: Vec<Subscriber>,
    /// Every (room, seq) ever acknowledged or delivered, with its message.
    positions: BTreeMap<(String, u64), Vec<u8>>,
    /// Every (room, message) ever acknowledged or delivered → its seq: one only.
    seqs: BTreeMap<(String, Vec<u8>), u64>,
    /// Retries answered with the original's seq.
    deduplicated: usize,
    /// Every acknowledged message (its seq is in `seqs`).
    acked: BTreeSet<Vec<u8>>,
    /// Per room, the metadata tags acknowledged.
    meta_acked: BTreeMap<String, Vec<Vec<u8>>>,
    /// (room, epoch) → (node, boot) that sequenced it.
    epochs: BTreeMap<(String, u64), (usize, u64)>,
    failovers: usize,
    /// Draws which quiescent machines are evicted (its own: the run's other draws stay).
    evict_rng: Rng,
    evictions: usize,
    events: u64,
    violation: Option<String>,
    trace: String,
    finished: bool,
}

impl Sim {
    fn new(seed: u64, cfg: Config) -> Self {
        let n = cfg.nodes;
        let nodes = (0..n)
            .map(|_| Node {
                up: false,
                boot: 0,
                membership: None,
                live: Vec::new(),
                rooms: BTreeMap::new(),
                disk: Disk::default(),
                next_req: 1,
                forwarded: BTreeMap::new(),
                evicted: BTreeSet::new(),
                subs: BTreeMap::new(),
                mem_timer: None,
                ticks: 0,
            })
            .collect();
        let mut rng = Rng::new(seed);
        let publishers = (0..cfg.publishers)
            .map(|p| Publisher {
                room: room_name(p % cfg.rooms),
                next: 0,
                attempt: 0,
                attempts: BTreeMap::new(),
                done: false,
            })
            .collect();
        let subscribers = (0..cfg.subscribers)
            .map(|s| Subscriber {
                room: room_name(s % cfg.rooms),
                node: rng.below(n as u64) as usize,
                node_boot: 0,
                conn: 0,
                got: Vec::new(),
            })
            .collect();
        Self {
            rng,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            nodes,
            cut: vec![vec![false; n]; n],
            publishers,
            subscribers,
            positions: BTreeMap::new(),
            seqs: BTreeMap::new(),
            deduplicated: 0,
            acked: BTreeSet::new(),
            meta_acked: BTreeMap::new(),
            epochs: BTreeMap::new(),
            failovers: 0,
            evict_rng: Rng::new(seed ^ 0x0e71_c7ed),
            evictions: 0,
            events: 0,
            violation: None,
            trace: String::new(),
            finished: false,
            cfg,
        }
    }

    fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.order += 1;
        self.queue
            .push(Reverse(Scheduled(self.now + delay_ms, self.order, ev)));
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let _ = writeln!(self.trace, "{:>6} {}", self.now, line());
        }
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.log(|| format!("VIOLATION {what}"));
            self.violation = Some(what);
        }
    }

    fn run(&mut self) {
        for i in 0..self.cfg.nodes {
            self.boot(i);
        }
        for p in 0..self.cfg.publishers {
            let start = 50 + self.rng.below(500);
            self.at(start, Ev::PubWake { p, attempt: 0 });
        }
        for s in 0..self.cfg.subscribers {
            let start = self.rng.below(300);
            self.at(start, Ev::SubWake { s });
        }
        self.at(300, Ev::Chaos);
        while let Some(Reverse(Scheduled(t, _, ev))) = self.queue.pop() {
            self.now = t;
            self.events += 1;
            self.handle(ev);
            if self.violation.is_some() || self.finished {
                return;
            }
            if self.events > EVENTS_MAX {
                self.fail(format!("stuck: more than {EVENTS_MAX} events"));
                return;
            }
        }
        self.fail("nothing left to happen".into());
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Datagram { to, from, bytes } => self.on_datagram(to, from, &bytes),
            Ev::Frame { to, from, bytes } => self.on_frame_bytes(to, from, &bytes),
            Ev::ToNode { node, msg } => self.on_client_msg(node, msg),
            Ev::Acked { p, attempt, result } => self.on_acked(p, attempt, result),
            Ev::Records {
                s,
                conn,
                after,
                records,
                more,
            } => self.on_records(s, conn, after, records, more),
            Ev::Live { s, conn, record } => self.on_live(s, conn, record),
            Ev::MemTimer { node, boot, at } => self.on_mem_timer(node, boot, at),
            Ev::RoomTick { node, boot } => self.on_room_tick(node, boot),
            Ev::PubWake { p, attempt } => self.on_pub_wake(p, attempt),
            Ev::SubWake { s } => self.on_sub_wake(s),
            Ev::Chaos => self.on_chaos(),
            Ev::Check => self.on_check(),
        }
    }

    // --- nodes: boot, crash, membership -------------------------------------------------

    fn boot(&mut self, i: usize) {
        let boot_id = self.rng.next_u64();
        let mem_seed = self.rng.next_u64();
        let node = &mut self.nodes[i];
        node.up = true;
        node.boot += 1;
        node.next_req = node.boot << 32 | 1;
        let me = NodeIdentity::new(name(i), addr(i), boot_id, self.now + 1);
        let membership = Membership::new(me, membership_config(self.cfg.nodes, i), mem_seed);
        node.membership = Some(membership.expect("the simulation's membership config is valid"));
        node.live = vec![name(i)];
        node.mem_timer = None;
        node.evicted.clear();
        for r in 0..self.cfg.rooms {
            let room = room_name(r);
            let state = Self::room_from_disk(&self.cfg, i, node, &room);
            node.rooms.insert(room, state);
        }
        let node = &self.nodes[i];
        let boot = node.boot;
        self.log(|| format!("n{i} boots (boot {boot})"));
        let view = View {
            members: vec![name(i)],
            configured: self.cfg.nodes,
        };
        self.feed_rooms(i, |_| Input::View(view.clone()));
        self.at(TICK_MS, Ev::RoomTick { node: i, boot });
        self.after_membership(i);
    }

    /// Node `i`'s machine for `room`, from what its disk holds (as at a boot).
    fn room_from_disk(cfg: &Config, i: usize, node: &Node, room: &str) -> Room {
        let durable = node.disk.lock().unwrap().get(room).cloned();
        let durable = durable.unwrap_or_default();
        let mut state = Room::new(room, &name(i), cfg.nodes, durable, KEYS_MAX, cfg.rules)
            .with_interest_lease(INTEREST_LEASE_TICKS);
        if let Some(bytes) = cfg.handoff_bytes_max {
            state = state.with_handoff_bytes_max(bytes);
        }
        if let Some(tail) = cfg.log_tail {
            let source = Arc::new(DiskSource(node.disk.clone()));
            state = state.with_log_tail(source, tail);
        }
        state
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.up = false;
        node.membership = None;
        // What was in memory and not written is lost with the process.
        node.rooms.clear();
        node.evicted.clear();
        node.forwarded.clear();
        node.subs.clear();
        self.log(|| format!("n{i} crashes"));
    }

    fn on_datagram(&mut self, to: usize, from: usize, bytes: &[u8]) {
        if !self.nodes[to].up {
            return;
        }
        let now = Duration::from_millis(self.now);
        if let Some(m) = self.nodes[to].membership.as_mut() {
            // A datagram foca refuses (an old identity's) is its business, not a violation.
            let _ = m.handle_datagram(now, addr(from), bytes);
        }
        self.after_membership(to);
    }

    fn on_mem_timer(&mut self, node: usize, boot: u64, at: u64) {
        let n = &mut self.nodes[node];
        if !n.up || n.boot != boot || n.mem_timer != Some(at) {
            return;
        }
        n.mem_timer = None;
        let now = Duration::from_millis(self.now);
        if let Some(m) = n.membership.as_mut() {
            let _ = m.handle_timers(now);
        }
        self.after_membership(node);
    }

    /// Sends foca's datagrams, arms its next timer, and hands a changed view to the rooms.
    fn after_membership(&mut self, i: usize) {
        let Some(m) = self.nodes[i].membership.as_mut() else {
            return;
        };
        let datagrams = m.take_datagrams();
        let changed = !m.take_changes().is_empty();
        let deadline = m.next_deadline().map(|d| d.as_millis() as u64 + 1);
        let mut live: Vec<String> = m
            .members()
            .into_iter()
            .filter(|v| v.state != MemberState::Down)
            .map(|v| v.identity.node_id)
            .collect();
        live.sort();
        for d in datagrams {
            let Some(to) = (0..self.cfg.nodes).find(|&j| addr(j) == d.to) else {
                continue;
            };
            self.transmit(i, to, d.bytes.to_vec(), false);
        }
        let boot = self.nodes[i].boot;
        if let Some(due) = deadline {
            let due = due.max(self.now);
            if self.nodes[i].mem_timer.is_none_or(|t| due < t) {
                self.nodes[i].mem_timer = Some(due);
                let delay = due - self.now;
                self.at(
                    delay,
                    Ev::MemTimer {
                        node: i,
                        boot,
                        at: due,
                    },
                );
            }
        }
        // Like the engine (`cluster::node::on_members`): every membership change feeds the
        // view, also one that keeps the names (a member back with a new identity): an owner
        // re-confirms its epoch with its replicas then. Fed only when the names changed, a
        // stale owner whose replica rebooted between two of its views never learnt of the
        // later epoch that replica promised (seed 1442 with `meta_every: 0`).
        if changed {
            if live != self.nodes[i].live {
                self.log(|| format!("n{i} sees {live:?}"));
            }
            self.nodes[i].live = live.clone();
            let view = View {
                members: live,
                configured: self.cfg.nodes,
            };
            self.feed_rooms(i, |_| Input::View(view.clone()));
            self.register_interest(i);
        }
    }

    /// One datagram or frame onto the simulated network.
    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>, is_frame: bool) {
        let delay = if from == to {
            0
        } else {
            if self.cut[from][to] || self.rng.chance(self.cfg.loss_per_mille) {
                return;
            }
            1 + self.rng.below(self.cfg.delay_ms_max)
        };
        let ev = if is_frame {
            Ev::Frame { to, from, bytes }
        } else {
            Ev::Datagram { to, from, bytes }
        };
        self.at(delay, ev);
    }
}

impl Sim {
    // --- rooms ---------------------------------------------------------------------------

    /// Hands every room of node `i` its input (`input(room)`), routes the outputs.
    fn feed_rooms(&mut self, i: usize, input: impl Fn(&str) -> Input) {
        let rooms: Vec<String> = self.nodes[i].rooms.keys().cloned().collect();
        for room in rooms {
            self.feed_room(i, &room, input(&room));
        }
    }

    /// A frame from `from` for `room` reaches `to`'s room machine.
    fn feed_frame(&mut self, to: usize, from: usize, room: &str, frame: Frame) {
        let from = name(from);
        self.feed_room(to, room, Input::Frame { from, frame });
    }

    /// Drops (or rebuilds at once) node `i`'s quiescent room machines, each with a chance
    /// of one in two (`Config::evict`).
    fn evict_quiescent(&mut self, i: usize) {
        if self.cfg.evict == Evict::Off {
            return;
        }
        let quiescent: Vec<String> = self.nodes[i]
            .rooms
            .iter()
            .filter(|(_, r)| r.is_quiescent())
            .map(|(name, _)| name.clone())
            .collect();
        for room in quiescent {
            if !self.evict_rng.chance(500) {
                continue;
            }
            self.evictions += 1;
            self.log(|| format!("n{i} evicts its {room} machine"));
            self.nodes[i].rooms.remove(&room);
            match self.cfg.evict {
                Evict::Restart => self.rebuild(i, &room),
                Evict::Drop => {
                    self.nodes[i].evicted.insert(room);
                }
                Evict::Off => {}
            }
        }
    }

    /// Node `i`'s machine for `room` from its disk, then its current view (what the engine
    /// does when an evicted room is touched).
    fn rebuild(&mut self, i: usize, room: &str) {
        let state = Self::room_from_disk(&self.cfg, i, &self.nodes[i], room);
        self.nodes[i].rooms.insert(room.to_owned(), state);
        let view = View {
            members: self.nodes[i].live.clone(),
            configured: self.cfg.nodes,
        };
        self.feed_room(i, room, Input::View(view));
    }

    /// An evicted room is rebuilt before anything reaches it.
    fn touch(&mut self, i: usize, room: &str) {
        if self.nodes[i].evicted.remove(room) {
            self.log(|| format!("n{i} rebuilds its {room} machine"));
            self.rebuild(i, room);
        }
    }

    fn feed_room(&mut self, i: usize, room: &str, input: Input) {
        self.touch(i, room);
        let Some(state) = self.nodes[i].rooms.get_mut(room) else {
            return;
        };
        let outputs = state.handle(input);
        let changes = state.take_changes();
        if !changes.is_empty() {
            let mut disk = self.nodes[i].disk.lock().unwrap();
            disk.entry(room.to_owned()).or_default().apply(&changes);
        }
        // The simulated disk is written at once: what was handed out may leave memory.
        if let Some(state) = self.nodes[i].rooms.get_mut(room) {
            state.forget_written();
        }
        for out in outputs {
            self.route(i, room, out);
        }
    }

    fn route(&mut self, i: usize, room: &str, out: Output) {
        match out {
            Output::Send { to, frame } => {
                let Some(to) = index_of(&to).filter(|&j| j < self.cfg.nodes) else {
                    return;
                };
                self.log(|| format!("n{i} → n{to} {frame:?}"));
                match frame::encode(&frame) {
                    Ok(bytes) => self.transmit(i, to, bytes, true),
                    Err(e) => self.fail(format!("n{i} cannot encode {frame:?}: {e}")),
                }
            }
            Output::Sequencing { epoch, next_seq } => {
                let boot = self.nodes[i].boot;
                self.log(|| format!("n{i} sequences {room} at epoch {epoch} from seq {next_seq}"));
                if epoch > 1 {
                    self.failovers += 1;
                }
                let highest = self
                    .positions
                    .range((room.to_owned(), 0)..=(room.to_owned(), u64::MAX))
                    .next_back()
                    .map_or(0, |((_, seq), _)| *seq);
                // A claimant whose majority answered before a later epoch was promised
                // may still take over at its lower epoch (seed 18707: n2 at epoch 3 after
                // n0 sequenced at 4): that owner is fenced — any replica set of it holds a
                // member of the later epoch's majority, which refuses its appends — so it
                // never acknowledges (a reused seq would fail `position`). Only the newest
                // epoch must start past every acknowledged seq.
                let newest = self
                    .epochs
                    .range((room.to_owned(), 0)..=(room.to_owned(), u64::MAX))
                    .next_back()
                    .is_none_or(|((_, e), _)| epoch > *e);
                if newest && next_seq <= highest {
                    self.fail(format!(
                        "n{i} sequences {room} at epoch {epoch} from seq {next_seq}, but seq {highest} was already acknowledged or delivered"
                    ));
                }
                let key = (room.to_owned(), epoch);
                if let Some((other, other_boot)) = self.epochs.insert(key, (i, boot)) {
                    self.fail(format!(
                        "{room}: epoch {epoch} sequenced by n{other} (boot {other_boot}) and n{i} (boot {boot})"
                    ));
                }
            }
            Output::SteppedDown { epoch } => {
                self.log(|| format!("n{i} stops sequencing {room} (epoch {epoch})"));
            }
        }
    }

    fn on_frame_bytes(&mut self, to: usize, from: usize, bytes: &[u8]) {
        if !self.nodes[to].up {
            return;
        }
        let frame = match frame::decode(bytes) {
            Ok(Some((frame, used))) if used == bytes.len() => frame,
            other => {
                return self.fail(format!(
                    "a frame n{from} → n{to} does not decode: {other:?}"
                ))
            }
        };
        match frame {
            Frame::Published {
                req, seq, original, ..
            } => {
                self.deduplicated += usize::from(original.is_some());
                self.answer(to, req, Ok(seq));
            }
            Frame::MetaDone { req, meta, .. } => self.meta_answer(to, req, &meta),
            Frame::MetaRequest { req, room, op } => {
                self.decide_meta(to, from, req, &room, op);
            }
            Frame::MetaDeliver { .. } => {}
            Frame::MetaRefused { req, .. } => self.answer(to, req, Err(RefusalCode::Unavailable)),
            Frame::Refused {
                req,
                ref room,
                code,
                ..
            } => {
                if req != 0 {
                    self.answer(to, req, Err(code));
                }
                let room = room.clone();
                self.feed_frame(to, from, &room, frame);
            }
            Frame::ReplayRecords {
                req, records, more, ..
            } => self.replayed(to, req, records, more),
            Frame::Deliver { room, record } => self.deliver_live(to, &room, record),
            Frame::Hello { .. } => {}
            Frame::Publish { ref room, .. }
            | Frame::Append { ref room, .. }
            | Frame::Appended { ref room, .. }
            | Frame::Interest { ref room }
            | Frame::Uninterest { ref room }
            | Frame::ReplayRequest { ref room, .. }
            | Frame::Claim { ref room, .. }
            | Frame::Handoff { ref room, .. }
            | Frame::MetaAppend { ref room, .. }
            | Frame::MetaAppended { ref room, .. } => {
                let room = room.clone();
                self.feed_frame(to, from, &room, frame);
            }
        }
    }

    /// The owner's answer to a replay this node forwarded: to its subscriber.
    fn replayed(&mut self, node: usize, req: u64, records: Vec<Record>, more: bool) {
        let Some((_, Forwarded::Replay { s, conn, after })) =
            self.nodes[node].forwarded.remove(&req)
        else {
            return;
        };
        let delay = self.client_delay();
        let ev = Ev::Records {
            s,
            conn,
            after,
            records,
            more,
        };
        self.at(delay, ev);
    }

    /// The owner's part of a metadata change, as the engine's node layer does it: the tag
    /// added to the room's tags (none if it is there), then the room machine replicates.
    fn decide_meta(&mut self, node: usize, from: usize, req: u64, room: &str, tag: Vec<u8>) {
        self.touch(node, room);
        let Some(state) = self.nodes[node].rooms.get(room) else {
            return;
        };
        let change = match (state.meta_refusal(), state.meta()) {
            (Some(_), _) => None,
            (None, Some(meta)) if tags(meta).any(|t| t == tag.as_slice()) => None,
            (None, meta) => {
                let mut bytes = meta.map(|m| m.bytes.clone()).unwrap_or_default();
                bytes.extend_from_slice(&tag);
                bytes.push(b'\n');
                Some(bytes)
            }
        };
        let from = name(from);
        self.feed_room(node, room, Input::Meta { from, req, change });
    }

    /// A metadata change acknowledged: the answer must hold its tag.
    fn meta_answer(&mut self, node: usize, req: u64, meta: &Meta) {
        if let Some((_, Forwarded::Publish { p, attempt })) = self.nodes[node].forwarded.get(&req) {
            if let Some(&k) = self.publishers[*p].attempts.get(attempt) {
                let tag = Self::payload(*p, k);
                if !tags(meta).any(|t| t == tag.as_slice()) {
                    let what = String::from_utf8_lossy(&tag).into_owned();
                    return self.fail(format!(
                        "the metadata change {what} acknowledged without it"
                    ));
                }
            }
        }
        self.answer(node, req, Ok(meta.version));
    }

    fn client_delay(&mut self) -> u64 {
        1 + self.rng.below(5)
    }

    /// The owner's answer to a publish this node forwarded: to its publisher.
    fn answer(&mut self, node: usize, req: u64, result: Result<u64, RefusalCode>) {
        let Some((_, Forwarded::Publish { p, attempt })) = self.nodes[node].forwarded.remove(&req)
        else {
            return;
        };
        let delay = self.client_delay();
        self.at(delay, Ev::Acked { p, attempt, result });
    }

    fn deliver_live(&mut self, node: usize, room: &str, record: Record) {
        let subs = self.nodes[node].subs.get(room).cloned().unwrap_or_default();
        for s in subs {
            let sub = &self.subscribers[s];
            if sub.node == node && sub.node_boot == self.nodes[node].boot {
                let conn = sub.conn;
                let delay = self.client_delay();
                self.at(
                    delay,
                    Ev::Live {
                        s,
                        conn,
                        record: record.clone(),
                    },
                );
            }
        }
    }

    /// The owner in node `node`'s view (an evicted room's machine would have that view).
    fn owner_of(&self, node: usize, room: &str) -> Option<usize> {
        let n = &self.nodes[node];
        if n.evicted.contains(room) {
            let view = View {
                members: n.live.clone(),
                configured: self.cfg.nodes,
            };
            if !view.has_quorum() {
                return None;
            }
            return index_of(crate::placement::owner(room, &n.live)?);
        }
        let owner = n.rooms.get(room)?.owner_in_view()?;
        index_of(owner)
    }

    /// A publisher's attempt as a frame to the owner: a send, or a metadata change.
    fn send_frame(
        &self,
        p: usize,
        attempt: u64,
        room: String,
        payload: Vec<u8>,
    ) -> Box<dyn FnOnce(u64) -> Frame> {
        let meta = self.publishers[p]
            .attempts
            .get(&attempt)
            .is_some_and(|&k| is_meta(k, self.cfg.meta_every));
        if meta {
            Box::new(move |req| Frame::MetaRequest {
                req,
                room,
                op: payload,
            })
        } else {
            // A message's retry key is its identity: every attempt carries the same.
            Box::new(move |req| Frame::Publish {
                req,
                room,
                key: Some(payload.clone()),
                payload,
            })
        }
    }

    fn on_client_msg(&mut self, node: usize, msg: ClientMsg) {
        if !self.nodes[node].up {
            return;
        }
        let (room, fwd, frame_of): (String, Forwarded, Box<dyn FnOnce(u64) -> Frame>) = match msg {
            ClientMsg::Send {
                p,
                attempt,
                room,
                payload,
            } => {
                let f = self.send_frame(p, attempt, room.clone(), payload);
                (room, Forwarded::Publish { p, attempt }, f)
            }
            ClientMsg::Replay {
                s,
                conn,
                room,
                after,
            } => {
                let subs = self.nodes[node].subs.entry(room.clone()).or_default();
                if !subs.contains(&s) {
                    subs.push(s);
                    self.register_interest(node);
                }
                let r = room.clone();
                let f = Box::new(move |req| Frame::ReplayRequest {
                    req,
                    room: r,
                    after_seq: after,
                    max: 64,
                });
                (room, Forwarded::Replay { s, conn, after }, f)
            }
        };
        let Some(owner) = self.owner_of(node, &room) else {
            if let Forwarded::Publish { p, attempt } = fwd {
                let delay = self.client_delay();
                self.at(
                    delay,
                    Ev::Acked {
                        p,
                        attempt,
                        result: Err(RefusalCode::Unavailable),
                    },
                );
            }
            return;
        };
        let n = &mut self.nodes[node];
        let req = n.next_req;
        n.next_req += 1;
        n.forwarded.insert(req, (self.now, fwd));
        let frame = frame_of(req);
        self.route(
            node,
            &room,
            Output::Send {
                to: name(owner),
                frame,
            },
        );
    }

    /// Tells the owner of every room with subscribers here (again: owners change, and
    /// a new owner has no interest registered).
    fn register_interest(&mut self, node: usize) {
        let rooms: Vec<String> = self.nodes[node]
            .subs
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(r, _)| r.clone())
            .collect();
        for room in rooms {
            if let Some(owner) = self.owner_of(node, &room) {
                let frame = Frame::Interest { room: room.clone() };
                self.route(
                    node,
                    &room,
                    Output::Send {
                        to: name(owner),
                        frame,
                    },
                );
            }
        }
    }

    fn on_room_tick(&mut self, node: usize, boot: u64) {
        let n = &mut self.nodes[node];
        if !n.up || n.boot != boot {
            return;
        }
        let now = self.now;
        n.forwarded.retain(|_, (at, _)| now - *at < FORWARD_TTL_MS);
        n.ticks += 1;
        let interest = n.ticks.is_multiple_of(INTEREST_EVERY_TICKS);
        self.feed_rooms(node, |_| Input::Tick);
        if interest {
            self.register_interest(node);
        }
        self.evict_quiescent(node);
        self.at(TICK_MS, Ev::RoomTick { node, boot });
    }
}

impl Sim {
    // --- clients -------------------------------------------------------------------------

    fn payload(p: usize, k: usize) -> Vec<u8> {
        format!("p{p}-m{k}").into_bytes()
    }

    /// A (room, seq) with its message, acknowledged or delivered: it must never name
    /// another message, and the message must never be at another seq.
    fn position(&mut self, room: &str, seq: u64, payload: &[u8], how: &str) {
        let at = (room.to_owned(), payload.to_vec());
        match self.seqs.get(&at) {
            Some(&first) if first != seq => {
                let what = String::from_utf8_lossy(payload);
                return self.fail(format!(
                    "{room}: {what} is at seq {first} and seq {seq} ({how}): a retry was stored twice"
                ));
            }
            Some(_) => {}
            None => {
                self.seqs.insert(at, seq);
            }
        }
        let key = (room.to_owned(), seq);
        match self.positions.get(&key) {
            Some(have) if have != payload => {
                let (have, got) = (
                    String::from_utf8_lossy(have),
                    String::from_utf8_lossy(payload),
                );
                self.fail(format!(
                    "{room} seq {seq} is {have} and {got} ({how}): a seq was reused"
                ));
            }
            Some(_) => {}
            None => {
                self.positions.insert(key, payload.to_vec());
            }
        }
    }

    fn send_attempt(&mut self, p: usize) {
        let publisher = &mut self.publishers[p];
        publisher.attempt += 1;
        let attempt = publisher.attempt;
        publisher.attempts.insert(attempt, publisher.next);
        let (room, payload) = (publisher.room.clone(), Self::payload(p, publisher.next));
        let node = self.rng.below(self.cfg.nodes as u64) as usize;
        self.at(CLIENT_TIMEOUT_MS, Ev::PubWake { p, attempt });
        if !self.nodes[node].up {
            // Connection refused: the wake retries elsewhere.
            return;
        }
        let delay = self.client_delay();
        self.at(
            delay,
            Ev::ToNode {
                node,
                msg: ClientMsg::Send {
                    p,
                    attempt,
                    room,
                    payload,
                },
            },
        );
    }

    fn on_pub_wake(&mut self, p: usize, attempt: u64) {
        let publisher = &self.publishers[p];
        if !publisher.done && publisher.attempt == attempt {
            self.send_attempt(p);
        }
    }

    fn on_acked(&mut self, p: usize, attempt: u64, result: Result<u64, RefusalCode>) {
        let Some(&k) = self.publishers[p].attempts.get(&attempt) else {
            return;
        };
        let room = self.publishers[p].room.clone();
        match result {
            Ok(version) if is_meta(k, self.cfg.meta_every) => {
                let tag = Self::payload(p, k);
                self.log(|| format!("p{p} ok {room} meta version {version} with p{p}-m{k}"));
                let tags = self.meta_acked.entry(room).or_default();
                if !tags.contains(&tag) {
                    tags.push(tag.clone());
                }
                self.acked.insert(tag);
                self.next_message(p, k);
            }
            Ok(seq) => {
                let payload = Self::payload(p, k);
                self.log(|| format!("p{p} ok {room} seq {seq} = p{p}-m{k}"));
                self.position(&room, seq, &payload, "acknowledged");
                self.acked.insert(payload);
                self.next_message(p, k);
            }
            Err(code) => {
                self.log(|| format!("p{p} attempt {attempt} refused: {code:?}"));
                if self.publishers[p].attempt == attempt && !self.publishers[p].done {
                    // Retry soon, elsewhere: the wake of a fresh attempt.
                    self.publishers[p].attempt += 1;
                    let next = self.publishers[p].attempt;
                    let backoff = 20 + self.rng.below(60);
                    self.publishers[p].attempts.insert(next, k);
                    self.at(backoff, Ev::PubWake { p, attempt: next });
                }
            }
        }
    }

    /// Message `k` of publisher `p` is acknowledged: on to the next.
    fn next_message(&mut self, p: usize, k: usize) {
        let publisher = &mut self.publishers[p];
        if k == publisher.next && !publisher.done {
            publisher.next += 1;
            publisher.done = publisher.next == self.cfg.messages_per_publisher;
            if !publisher.done {
                self.send_attempt(p);
            }
        }
    }

    fn on_sub_wake(&mut self, s: usize) {
        let node = self.subscribers[s].node;
        let alive = self.nodes[node].up && self.nodes[node].boot == self.subscribers[s].node_boot;
        if !alive {
            // The connection is gone: reconnect through the "load balancer" to any node.
            let node = self.rng.below(self.cfg.nodes as u64) as usize;
            let sub = &mut self.subscribers[s];
            sub.node = node;
            sub.node_boot = self.nodes[node].boot;
            sub.conn += 1;
        }
        self.resume(s);
        self.at(SUB_POLL_MS, Ev::SubWake { s });
    }

    /// `join` with `after_seq`: the records after the last one received.
    fn resume(&mut self, s: usize) {
        let sub = &self.subscribers[s];
        let (node, conn, room, after) =
            (sub.node, sub.conn, sub.room.clone(), sub.got.len() as u64);
        if self.nodes[node].up && self.nodes[node].boot == sub.node_boot {
            let delay = self.client_delay();
            self.at(
                delay,
                Ev::ToNode {
                    node,
                    msg: ClientMsg::Replay {
                        s,
                        conn,
                        room,
                        after,
                    },
                },
            );
        }
    }

    /// Takes `record` if it is the next one; true if taken.
    fn take(&mut self, s: usize, record: &Record, how: &str) -> bool {
        let room = self.subscribers[s].room.clone();
        self.position(&room, record.seq, &record.payload, how);
        let sub = &mut self.subscribers[s];
        if record.seq == sub.got.len() as u64 + 1 {
            sub.got.push(record.payload.clone());
            true
        } else {
            false
        }
    }

    fn on_records(&mut self, s: usize, conn: u64, after: u64, records: Vec<Record>, more: bool) {
        let room = self.subscribers[s].room.clone();
        for (i, r) in records.iter().enumerate() {
            if r.seq != after + 1 + i as u64 {
                let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
                return self.fail(format!(
                    "{room}: replay after {after} answered seqs {seqs:?}"
                ));
            }
        }
        let mut took = false;
        for r in &records {
            took |= self.take(s, r, "replayed");
        }
        if conn == self.subscribers[s].conn && (more || took) {
            self.resume(s);
        }
    }

    fn on_live(&mut self, s: usize, conn: u64, record: Record) {
        let next = self.subscribers[s].got.len() as u64 + 1;
        if !self.take(s, &record, "delivered")
            && record.seq > next
            && conn == self.subscribers[s].conn
        {
            // A gap: resume from the last one received.
            self.resume(s);
        }
    }
}

impl Sim {
    // --- faults and the end ----------------------------------------------------------------

    fn on_chaos(&mut self) {
        if self.now >= self.cfg.chaos_ms {
            self.log(|| "chaos ends: heal every link, restart every node".into());
            self.cut.iter_mut().for_each(|row| row.fill(false));
            for i in 0..self.cfg.nodes {
                if !self.nodes[i].up {
                    self.boot(i);
                }
            }
            self.at(200, Ev::Check);
            return;
        }
        let n = self.cfg.nodes;
        let up: Vec<usize> = (0..n).filter(|&i| self.nodes[i].up).collect();
        let down: Vec<usize> = (0..n).filter(|&i| !self.nodes[i].up).collect();
        match self.rng.below(100) {
            0..30 if up.len() > 1 => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                self.crash(i);
            }
            0..55 if !down.is_empty() => {
                let i = down[self.rng.below(down.len() as u64) as usize];
                self.boot(i);
            }
            55..70 => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
                self.log(|| format!("partition {side:?}"));
                for a in 0..n {
                    for b in 0..n {
                        self.cut[a][b] = side[a] != side[b];
                    }
                }
            }
            70..80 => {
                let (a, b) = (
                    self.rng.below(n as u64) as usize,
                    self.rng.below(n as u64) as usize,
                );
                if a != b {
                    self.log(|| format!("cut n{a} → n{b} (one way)"));
                    self.cut[a][b] = true;
                }
            }
            _ => {
                self.log(|| "heal every link".into());
                self.cut.iter_mut().for_each(|row| row.fill(false));
            }
        }
        let next = 100 + self.rng.below(500);
        self.at(next, Ev::Chaos);
    }

    /// The room's single owner with its acknowledged log, once everything settled.
    fn settled_owner(&self, room: &str) -> Option<(usize, u64)> {
        let owners: Vec<(usize, u64)> = (0..self.cfg.nodes)
            .filter_map(|i| Some((i, self.nodes[i].rooms.get(room)?.committed()?)))
            .collect();
        let [(owner, committed)] = owners[..] else {
            return None;
        };
        let log_len = self.nodes[owner].rooms[room].durable().len();
        let all_see = (0..self.cfg.nodes).all(|i| self.nodes[i].live.len() == self.cfg.nodes);
        (committed == log_len && all_see).then_some((owner, committed))
    }

    fn on_check(&mut self) {
        let publishers_done = self.publishers.iter().all(|p| p.done);
        let rooms: Vec<String> = (0..self.cfg.rooms).map(room_name).collect();
        // A room whose owner-to-be had its machine evicted is claimed when it is next used
        // (as in the engine, and as a room not touched since a start): a room no client
        // uses any more (no subscriber, every publisher done) would stay without an owner,
        // and the end's checks need one. The checker uses it: a request at the node that
        // owns it in its view reaches the machine.
        for room in &rooms {
            for i in 0..self.cfg.nodes {
                let owner_here = self.nodes[i].up && self.owner_of(i, room) == Some(i);
                if owner_here && self.nodes[i].evicted.contains(room) {
                    self.log(|| format!("the checker uses {room} at n{i}"));
                    self.touch(i, room);
                }
            }
        }
        let settled = publishers_done
            && rooms.iter().all(|room| {
                self.settled_owner(room).is_some_and(|(_, committed)| {
                    self.subscribers
                        .iter()
                        .filter(|s| s.room == *room)
                        .all(|s| s.got.len() as u64 == committed)
                })
            });
        if settled {
            self.final_checks(&rooms);
            self.finished = true;
            return;
        }
        if self.now > self.cfg.chaos_ms + self.cfg.settle_ms_max {
            let waiting: Vec<usize> = (0..self.publishers.len())
                .filter(|&p| !self.publishers[p].done)
                .collect();
            let owners: Vec<Option<(usize, u64)>> =
                rooms.iter().map(|r| self.settled_owner(r)).collect();
            let subs: Vec<usize> = self.subscribers.iter().map(|s| s.got.len()).collect();
            return self.fail(format!(
                "did not settle {} ms after the faults ended: publishers waiting {waiting:?}, owners {owners:?}, subscribers at {subs:?}",
                self.cfg.settle_ms_max
            ));
        }
        self.at(200, Ev::Check);
    }

    fn final_checks(&mut self, rooms: &[String]) {
        for room in rooms {
            let Some((owner, committed)) = self.settled_owner(room) else {
                return self.fail(format!("{room} has no single owner"));
            };
            // From its disk: a bounded room holds only its tail in memory.
            let log: Vec<Vec<u8>> = self.nodes[owner].disk.lock().unwrap()[room].log
                [..committed as usize]
                .iter()
                .map(|r| r.payload.clone())
                .collect();
            let held: Vec<((String, u64), Vec<u8>)> = self
                .positions
                .iter()
                .filter(|((r, _), _)| r == room)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for ((_, seq), payload) in held {
                if log.get(seq as usize - 1) != Some(&payload) {
                    let what = String::from_utf8_lossy(&payload).into_owned();
                    return self.fail(format!("{room} seq {seq} ({what}) was acknowledged or delivered, the owner n{owner} does not hold it"));
                }
            }
            // Every node's acknowledged prefix, on its disk, is the owner's acknowledged log
            // there: what a take-over keeps without asking for it again.
            let wrong = self.nodes.iter().enumerate().find_map(|(i, node)| {
                let disk = node.disk.lock().unwrap();
                let d = disk.get(room)?;
                let prefix = d.log.get(..d.committed as usize).map(|p| {
                    p.iter()
                        .map(|r| r.payload.clone())
                        .collect::<Vec<Vec<u8>>>()
                });
                (prefix.as_deref() != log.get(..d.committed as usize)).then_some((i, d.committed))
            });
            if let Some((i, committed)) = wrong {
                return self.fail(format!("{room}: n{i} holds {committed} records as acknowledged, they are not the owner n{owner}'s acknowledged log"));
            }
            let meta = self.nodes[owner].rooms[room].meta().cloned();
            for tag in self.meta_acked.get(room).into_iter().flatten() {
                if !meta
                    .as_ref()
                    .is_some_and(|m| tags(m).any(|t| t == tag.as_slice()))
                {
                    let what = String::from_utf8_lossy(tag).into_owned();
                    return self.fail(format!("{room}: the metadata change {what} was acknowledged, the owner n{owner}'s metadata lacks it"));
                }
            }
            for (s, sub) in self.subscribers.iter().enumerate() {
                if sub.room == *room && sub.got != log {
                    let what = format!(
                        "{room}: subscriber {s} received {} records, the owner holds {committed}",
                        sub.got.len()
                    );
                    return self.fail(what);
                }
            }
        }
        for p in 0..self.publishers.len() {
            for k in 0..self.cfg.messages_per_publisher {
                if !self.acked.contains(&Self::payload(p, k)) {
                    return self.fail(format!("p{p}-m{k} was never acknowledged"));
                }
            }
        }
    }
}
