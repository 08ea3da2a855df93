//! The cluster thread: runs `sokdo_replication::membership` (SWIM over UDP on
//! `--cluster-listen`) and the data path (`node`: one room machine per room, peer links
//! over TCP on the same port number, `links`) on a thread of its own, named `cluster`,
//! never on a shard, and publishes the view for the shards without a lock
//! (docs/REPLICATION.md "Membership", "Send and deliver").
//!
//! The thread waits on one bounded channel fed by the UDP reader thread (datagrams), one
//! reader thread per accepted peer link (decoded frames) and the shards (sends to
//! sequence, and a wake for their notes), with a timeout to the next membership timer or
//! room tick. It hands every datagram to the membership with the time since the thread's
//! origin, sends what it produces, and swaps in a new [`View`] (`arc_swap`) after each
//! event. Shards read the view with one atomic load: a `send` without quorum is refused,
//! `/readyz` says why, `/cluster` and `/metrics` show it.

mod disk;
mod links;
pub mod meta;
mod node;
pub mod port;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use sokdo_replication::membership::{
    MemberState, MemberView, Membership, MembershipConfig, NodeIdentity, MAX_DATAGRAM_BYTES,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use crossbeam_queue::SegQueue;
use sokdo_replication::frame::Frame;

use crate::config::Config;
use crate::mesh::Doorbell;
use links::LinkStats;
use port::{Port, ToCluster};

/// Longest the thread blocks without a timer due: it looks at the stop flag this often.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Rooms listed in `/cluster`'s `owned` (by name; the count is complete).
const OWNED_LISTED_MAX: usize = 100;
/// Events handled in one turn at most, before its changes are written and its frames sent:
/// under load one commit (one fsync with `--durability sync`) covers this many, and the
/// first of them waits for the others at most this many events' handling.
const TURN_EVENTS_MAX: usize = 256;

/// What the cluster thread waits for, on one bounded channel.
#[derive(Debug)]
pub enum Event {
    /// A membership datagram (the UDP reader thread).
    Datagram { from: SocketAddr, bytes: Vec<u8> },
    /// A frame from a peer's link (its reader thread), after its `Hello`.
    Frame { from: String, frame: Frame },
    /// A home shard's send to sequence.
    Shard(ToCluster),
    /// A shard queued a note (`Port::note`).
    Wake,
    /// The outbound link to `node` connected (again), or the link `node` dialled to this
    /// instance closed: frames may have been lost both ways, so the interests in rooms
    /// `node` owns are registered again and caught up.
    LinkChanged { node: String },
}

/// The data path's limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--cluster-link-queue-frames`.
    pub link_queue_frames: usize,
    /// `--cluster-link-backoff-max-ms`.
    pub link_backoff_max: Duration,
    /// `--cluster-publish-timeout-ms`.
    pub publish_timeout: Duration,
    /// `--cluster-tick-ms`.
    pub tick: Duration,
    /// `--cluster-home-queue-records`.
    pub home_queue_records: usize,
    /// `--idempotency-keys-max`: the window of retry keys a room's owner keeps. The claim
    /// merge replays it, so it must be the same on every instance.
    pub dedup_keys_max: usize,
    /// `--cluster-log-tail-records`.
    pub log_tail_records: u64,
    /// `--cluster-rooms-in-memory-max`.
    pub rooms_in_memory_max: usize,
    /// `--cluster-room-idle-ms`.
    pub room_idle: Duration,
    /// `--cluster-interest-refresh-ms`.
    pub interest_refresh: Duration,
}

impl Limits {
    pub(crate) fn of(cfg: &Config) -> Limits {
        Limits {
            link_queue_frames: cfg.cluster_link_queue_frames as usize,
            link_backoff_max: Duration::from_millis(cfg.cluster_link_backoff_max_ms),
            publish_timeout: Duration::from_millis(cfg.cluster_publish_timeout_ms),
            tick: Duration::from_millis(cfg.cluster_tick_ms),
            home_queue_records: cfg.cluster_home_queue_records as usize,
            dedup_keys_max: cfg.idempotency_keys_max as usize,
            log_tail_records: cfg.cluster_log_tail_records,
            rooms_in_memory_max: usize::try_from(cfg.cluster_rooms_in_memory_max)
                .unwrap_or(usize::MAX),
            room_idle: Duration::from_millis(cfg.cluster_room_idle_ms),
            interest_refresh: Duration::from_millis(cfg.cluster_interest_refresh_ms),
        }
    }

    /// An owner's registration lapses after three renewal periods without one, in ticks
    /// (rounded up, and one more): renewals go out on ticks, so a period is at least one.
    pub fn interest_lease_ticks(&self) -> u64 {
        let tick = self.tick.as_millis().max(1);
        let lease = 3 * self.interest_refresh.as_millis().max(tick);
        u64::try_from(lease.div_ceil(tick) + 1).unwrap_or(u64::MAX)
    }

    /// The most rooms one tick registers again after a view or link change: each is an
    /// `Interest` and a `ReplayRequest` to its owner, so a quarter of a link's queue (the
    /// renewals may take another quarter).
    pub fn registrations_per_tick(&self) -> usize {
        (self.link_queue_frames / 8).max(1)
    }

    /// The most interest renewals one tick sends, for `rooms` interested rooms: twice what
    /// renews each once per refresh (so a backlog drains), at least 64, at most a quarter
    /// of a link's queue (beyond it renewals fall behind and some registrations lapse).
    pub fn renewals_per_tick(&self, rooms: usize) -> usize {
        let ticks_per_refresh =
            (self.interest_refresh.as_millis() / self.tick.as_millis().max(1)).max(1);
        let even = (rooms as u128).div_ceil(ticks_per_refresh);
        let budget = usize::try_from(2 * even).unwrap_or(usize::MAX).max(64);
        budget.min((self.link_queue_frames / 4).max(1))
    }
}

/// The data path's figures (`/cluster`'s `data`, `sokdo_cluster_*`).
#[derive(Debug, Default)]
pub struct DataStats {
    pub records_sequenced: AtomicU64,
    /// Retries this instance, as a room's owner, answered with the original's seq.
    pub sends_deduplicated: AtomicU64,
    pub records_delivered: AtomicU64,
    pub records_shed: AtomicU64,
    pub forwarded: AtomicU64,
    pub refused: AtomicU64,
    pub replays_asked: AtomicU64,
    /// Room machines in memory.
    pub rooms: AtomicU64,
    /// Quiescent room machines dropped from memory (`--cluster-rooms-in-memory-max`).
    pub rooms_evicted: AtomicU64,
    pub rooms_owned: AtomicU64,
    pub forwards_waiting: AtomicU64,
    /// Records the room machines hold in memory (each room: what follows its acknowledged
    /// prefix, and `--cluster-log-tail-records` before it).
    pub log_records_in_memory: AtomicU64,
}

/// What the shards read: one snapshot of the membership.
#[derive(Debug, Clone)]
pub struct View {
    /// Every node known, this one included, by node id.
    pub members: Vec<MemberView>,
    /// Active (alive or suspect) members, this one included.
    pub active: usize,
    /// More than half of the configured members are active.
    pub quorum: bool,
}

/// The cluster as the shards see it, shared behind an `Arc`.
pub struct Cluster {
    pub node_id: String,
    /// The address the peers reach this instance at.
    pub advertised: SocketAddr,
    pub boot: u64,
    /// The peers' cluster addresses, as resolved at start.
    pub peers: Vec<SocketAddr>,
    /// The configured size: the peers and this instance.
    pub configured: usize,
    /// The membership's clock starts here; `View` times are offsets from it.
    origin: Instant,
    view: ArcSwap<View>,
    sent: AtomicU64,
    received: AtomicU64,
    rejected: AtomicU64,
    stop: AtomicBool,
    /// Shards of this process: a room's records go to its home shard.
    pub shards: u16,
    pub limits: Limits,
    /// The shards' side of the thread.
    pub port: Port,
    pub stats: DataStats,
    /// Per peer, its link figures (replaced by the cluster thread when a peer appears).
    links: ArcSwap<Vec<Arc<LinkStats>>>,
    /// The rooms this node sequences, as `/cluster` lists them.
    owned: ArcSwap<Vec<serde_json::Value>>,
}

impl Cluster {
    /// The current view (one atomic load; never blocks).
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The instance is stopping: every cluster thread ends.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Peer `node`'s link figures, if a link to it was ever opened.
    pub fn link_stats(&self, node: &str) -> Option<Arc<LinkStats>> {
        self.links
            .load()
            .iter()
            .find(|l| l.node_id == node)
            .cloned()
    }

    /// Peer `node`'s link figures, created on first use (the cluster thread only).
    fn stats_of(&self, node: &str) -> Arc<LinkStats> {
        if let Some(s) = self.link_stats(node) {
            return s;
        }
        let stats = Arc::new(LinkStats {
            node_id: node.to_owned(),
            ..LinkStats::default()
        });
        let mut all: Vec<Arc<LinkStats>> = self.links.load().as_ref().clone();
        all.push(stats.clone());
        all.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        self.links.store(Arc::new(all));
        stats
    }

    /// `Some(why)` while this instance does not see a majority of the configured members.
    pub fn no_quorum(&self) -> Option<String> {
        let view = self.view.load();
        (!view.quorum).then(|| {
            format!(
                "no quorum: this instance sees {} of {} configured cluster members (needs {})",
                view.active,
                self.configured,
                self.configured / 2 + 1
            )
        })
    }

    /// `/cluster`'s JSON.
    pub fn json(&self) -> serde_json::Value {
        let view = self.view();
        let now = self.origin.elapsed();
        let ago =
            |t: Duration| u64::try_from(now.saturating_sub(t).as_millis()).unwrap_or(u64::MAX);
        let members: Vec<serde_json::Value> = view
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "node_id": m.identity.node_id,
                    "addr": m.identity.addr.to_string(),
                    "boot": format!("{:016x}", m.identity.boot),
                    "self": m.is_self,
                    "state": m.state.as_str(),
                    "incarnation": m.incarnation,
                    "since_ms_ago": ago(m.since),
                    "last_heard_ms_ago": m.last_heard.map(ago),
                })
            })
            .collect();
        serde_json::json!({
            "enabled": true,
            "node_id": self.node_id,
            "addr": self.advertised.to_string(),
            "boot": format!("{:016x}", self.boot),
            "configured_members": self.configured,
            "peers": self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "active_members": view.active,
            "quorum": view.quorum,
            "members": members,
            "datagrams": {
                "sent": self.sent.load(Ordering::Relaxed),
                "received": self.received.load(Ordering::Relaxed),
                "rejected": self.rejected.load(Ordering::Relaxed),
            },
            "links": self.links.load().iter().map(|l| l.json()).collect::<Vec<_>>(),
            "data": self.data_json(),
        })
    }

    fn data_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "rooms": n(&s.rooms),
            "rooms_evicted": n(&s.rooms_evicted),
            "rooms_owned": n(&s.rooms_owned),
            "owned": self.owned.load().as_ref(),
            "records_sequenced": n(&s.records_sequenced),
            "sends_deduplicated": n(&s.sends_deduplicated),
            "records_delivered": n(&s.records_delivered),
            "records_shed": n(&s.records_shed),
            "sends_forwarded": n(&s.forwarded),
            "sends_refused": n(&s.refused),
            "sends_waiting": n(&s.forwards_waiting),
            "log_records_in_memory": n(&s.log_records_in_memory),
            "replays_asked": n(&s.replays_asked),
        })
    }

    /// `/cluster` without `--peers`.
    pub fn off_json() -> serde_json::Value {
        serde_json::json!({
            "enabled": false,
            "configured_members": 1,
            "quorum": true,
            "members": [],
        })
    }

    /// A new snapshot after every event: `last heard` changes with every datagram, and the
    /// membership sees a handful per second per peer, so a copy of a few entries each time
    /// costs nothing worth saving.
    fn publish(&self, membership: &Membership) {
        let view = View {
            members: membership.members(),
            active: membership.active(),
            quorum: membership.quorum(self.configured),
        };
        self.view.store(Arc::new(view));
        let counters = membership.counters();
        self.received.store(counters.received, Ordering::Relaxed);
        self.rejected.store(counters.rejected, Ordering::Relaxed);
    }
}

/// The running thread; [`Running::leave`] ends it.
pub struct Running {
    pub cluster: Arc<Cluster>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Leaves the cluster (the peers see this instance down at once) and ends the thread.
    pub fn leave(self) {
        self.cluster.stop.store(true, Ordering::SeqCst);
        if self.thread.join().is_err() {
            tracing::warn!("the cluster thread ended by a panic");
        }
    }
}

/// Binds `--cluster-listen` (UDP for the membership, TCP on the same address for the
/// peer links), resolves `--peers` and starts the `cluster` thread and its helpers; errors
/// name the flag. `None` without `--peers`. `doorbells` are the shards' (records and
/// answers for a shard ring its bell).
pub fn start(cfg: &Config, doorbells: Arc<[Doorbell]>) -> anyhow::Result<Option<Running>> {
    if !cfg.clustered() {
        return Ok(None);
    }
    let (Some(node_id), Some(listen)) = (cfg.node_id.clone(), cfg.cluster_listen) else {
        anyhow::bail!("--peers needs --node-id and --cluster-listen");
    };
    let advertised = cfg.cluster_advertise.unwrap_or(listen);
    let peers = resolve_peers(&cfg.peers, advertised)?;
    let socket = UdpSocket::bind(listen)
        .with_context(|| format!("--cluster-listen {listen}: cannot bind (UDP)"))?;
    let listener = TcpListener::bind(listen).with_context(|| {
        format!("--cluster-listen {listen}: cannot bind (TCP, the peer links use the same port)")
    })?;
    let disk = open_disk(cfg)?;
    let boot = random_u64();
    let started_ms = crate::clock::now_ms();
    let me = NodeIdentity::new(node_id.clone(), advertised, boot, started_ms);
    let membership = Membership::new(me, membership_config(cfg, &peers), random_u64())
        .map_err(|e| anyhow::anyhow!("cluster configuration: {e}"))?;
    let configured = peers.len() + 1;
    let (events, rx) = crossbeam_channel::bounded(cfg.cluster_queue_events as usize);
    let shards = doorbells.len() as u16;
    let port = Port {
        events: events.clone(),
        notes: SegQueue::new(),
        inbox: (0..shards).map(|_| SegQueue::new()).collect(),
        queued: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        doorbells,
    };
    let cluster = Arc::new(Cluster {
        node_id,
        advertised,
        boot,
        peers,
        configured,
        origin: Instant::now(),
        view: ArcSwap::from_pointee(View {
            members: membership.members(),
            active: membership.active(),
            quorum: membership.quorum(configured),
        }),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        shards,
        limits: Limits::of(cfg),
        port,
        stats: DataStats::default(),
        links: ArcSwap::from_pointee(Vec::new()),
        owned: ArcSwap::from_pointee(Vec::new()),
    });
    tracing::info!(
        node_id = %cluster.node_id, addr = %advertised, boot = format!("{boot:016x}"),
        peers = ?cluster.peers, "cluster membership starting"
    );
    let socket = Arc::new(socket);
    read_datagrams(cluster.clone(), socket.clone(), events.clone())?;
    let reader = Arc::new(disk.reader());
    let writer = start_writer(disk, events.clone())?;
    links::accept(cluster.clone(), listener, events);
    let shared = cluster.clone();
    let node = node::Node::new(cluster.clone(), writer, reader);
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || run(&shared, membership, node, &socket, &rx))
        .context("starting the cluster thread")?;
    Ok(Some(Running { cluster, thread }))
}

/// The `cluster-disk` thread; each write wakes the cluster thread (which then sends what
/// the write released).
fn start_writer(disk: disk::Disk, events: Sender<Event>) -> anyhow::Result<disk::Writer> {
    let wake = move || {
        let _ = events.try_send(Event::Wake);
    };
    disk::Writer::start(disk, wake).context("starting the cluster-disk thread")
}

/// The membership's timings (`--cluster-*-ms`), seeded with the peers.
fn membership_config(cfg: &Config, peers: &[SocketAddr]) -> MembershipConfig {
    MembershipConfig {
        probe_period: Duration::from_millis(cfg.cluster_probe_period_ms),
        probe_rtt: Duration::from_millis(cfg.cluster_probe_rtt_ms),
        suspect_to_down: Duration::from_millis(cfg.cluster_suspect_to_down_ms),
        seeds: peers.to_vec(),
    }
}

/// `cluster.redb`, every room in it read and checked (a file it cannot read stops the
/// start); an error names the file. What was read is not kept: a room's machine is built
/// from the file when the room is first touched (`node`), as after an eviction.
fn open_disk(cfg: &Config) -> anyhow::Result<disk::Disk> {
    let started = Instant::now();
    let disk = disk::Disk::open(&cfg.data_dir, cfg.durability)?;
    let loaded = disk.load(cfg.cluster_log_tail_records)?;
    let records: usize = loaded.values().map(|d| d.log.len()).sum();
    tracing::info!(
        rooms = loaded.len(),
        records,
        ms = started.elapsed().as_millis() as u64,
        "cluster log loaded from {}",
        cfg.data_dir.join(disk::FILE_NAME).display()
    );
    Ok(disk)
}

/// The UDP reader thread: every datagram to the cluster thread's channel.
fn read_datagrams(
    cluster: Arc<Cluster>,
    socket: Arc<UdpSocket>,
    events: Sender<Event>,
) -> anyhow::Result<()> {
    // The reader looks at the stop flag this often.
    socket
        .set_read_timeout(Some(IDLE_WAIT))
        .context("cluster socket read timeout")?;
    std::thread::Builder::new()
        .name("cluster-udp".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
            while !cluster.stopping() {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let bytes = buf[..n].to_vec();
                        if events.send(Event::Datagram { from, bytes }).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => tracing::warn!("cluster socket: {e}"),
                }
            }
        })
        .context("starting the cluster UDP reader")?;
    Ok(())
}

fn resolve_peers(peers: &[String], me: SocketAddr) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for peer in peers {
        let addr = peer
            .to_socket_addrs()
            .with_context(|| format!("--peers {peer}: not a host:port that resolves"))?
            .next()
            .with_context(|| format!("--peers {peer}: resolves to no address"))?;
        if addr == me {
            anyhow::bail!("--peers {peer}: that is this instance's own cluster address");
        }
        if out.contains(&addr) {
            anyhow::bail!("--peers {peer}: listed twice ({addr})");
        }
        out.push(addr);
    }
    Ok(out)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom(&mut bytes).is_err() {
        // No entropy source: the clock and the pid still tell two boots apart.
        let nanos = crate::clock::now_ms().wrapping_mul(1_000_003);
        return nanos ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(bytes)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The thread's loop, until [`Running::leave`].
fn run(
    cluster: &Arc<Cluster>,
    mut membership: Membership,
    mut node: node::Node,
    socket: &UdpSocket,
    rx: &Receiver<Event>,
) {
    let mut log = Throttled::default();
    let mut next_tick = Instant::now();
    let mut next_listing = Instant::now();
    loop {
        let now = cluster.origin.elapsed();
        if let Err(e) = membership.handle_timers(now) {
            log.warn(now, &e.to_string());
        }
        flush(cluster, &mut membership, socket, &mut log, now, &mut node);
        if cluster.stopping() {
            if let Err(e) = membership.leave(now) {
                log.warn(now, &e.to_string());
            }
            flush(cluster, &mut membership, socket, &mut log, now, &mut node);
            node.close();
            tracing::info!("left the cluster");
            return;
        }
        while let Some(note) = cluster.port.notes.pop() {
            node.on_note(note);
        }
        let at = Instant::now();
        if at >= next_tick {
            node.tick(at);
            next_tick = at + cluster.limits.tick;
        }
        if at >= next_listing {
            cluster.owned.store(Arc::new(node.owned(OWNED_LISTED_MAX)));
            next_listing = at + Duration::from_secs(1);
        }
        // The turn's changes to the writer; what earlier turns' writes released goes out.
        node.commit();
        let at = Instant::now();
        let wait = membership
            .next_deadline()
            .map_or(IDLE_WAIT, |due| due.saturating_sub(now))
            .min(next_tick.saturating_duration_since(at))
            .clamp(Duration::from_millis(1), IDLE_WAIT);
        match rx.recv_timeout(wait) {
            Ok(event) => on_event(cluster, &mut membership, &mut node, event, &mut log),
            Err(RecvTimeoutError::Timeout) => {}
            // Every sender gone: only at the end (the reader threads hold senders).
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // What else is waiting joins this turn (one commit for all of it).
        for event in rx.try_iter().take(TURN_EVENTS_MAX - 1) {
            on_event(cluster, &mut membership, &mut node, event, &mut log);
        }
    }
}

fn on_event(
    cluster: &Cluster,
    membership: &mut Membership,
    node: &mut node::Node,
    event: Event,
    log: &mut Throttled,
) {
    match event {
        Event::Datagram { from, bytes } => {
            let now = cluster.origin.elapsed();
            if let Err(e) = membership.handle_datagram(now, from, &bytes) {
                log.warn(now, &e.to_string());
            }
        }
        Event::Frame { from, frame } => node.on_peer_frame(from, frame),
        Event::Shard(req) => node.on_shard(req),
        Event::Wake => {}
        Event::LinkChanged { node: peer } => node.on_link_changed(&peer),
    }
}

/// Sends what the membership produced and publishes the view.
fn flush(
    cluster: &Cluster,
    membership: &mut Membership,
    socket: &UdpSocket,
    log: &mut Throttled,
    now: Duration,
    node: &mut node::Node,
) {
    for datagram in membership.take_datagrams() {
        cluster.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = socket.send_to(&datagram.bytes, datagram.to) {
            log.warn(now, &format!("sending to {}: {e}", datagram.to));
        }
    }
    let changes = membership.take_changes();
    for change in &changes {
        tracing::info!(
            node_id = %change.node_id, addr = %change.identity.addr,
            boot = format!("{:016x}", change.identity.boot), state = change.state.as_str(),
            incarnation = change.incarnation, "cluster member"
        );
    }
    let was = cluster.view.load().quorum;
    cluster.publish(membership);
    if !changes.is_empty() {
        node.on_members(&cluster.view.load().members);
    }
    let is = cluster.view.load().quorum;
    if was != is {
        match cluster.no_quorum() {
            None => tracing::info!("cluster quorum reached"),
            Some(why) => tracing::warn!("{why}: sends are refused, /readyz answers 503"),
        }
    }
}

/// At most one warning per second; the rest are counted in the next one.
#[derive(Default)]
struct Throttled {
    last: Option<Duration>,
    suppressed: u64,
}

impl Throttled {
    fn warn(&mut self, now: Duration, what: &str) {
        if self
            .last
            .is_some_and(|t| now.saturating_sub(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(suppressed, "cluster: {what}");
    }
}

/// `sokdo_cluster_*` on `/metrics`, read at scrape time.
pub struct ClusterCollector(pub Arc<Cluster>);

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let view = c.view();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "cluster_members",
            "Members of the cluster in this instance's view, by state (itself included)",
            None,
            gauge.metric_type(),
        )?;
        for state in [MemberState::Alive, MemberState::Suspect, MemberState::Down] {
            let n = view.members.iter().filter(|m| m.state == state).count();
            let labels = [("state", state.as_str())];
            ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
        }
        let gauges = [
            (
                "cluster_quorum",
                "1 while this instance sees a majority of the configured members (else sends are refused)",
                i64::from(view.quorum),
            ),
            (
                "cluster_configured_members",
                "Configured cluster members (--peers and this instance)",
                c.configured as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let counters = [
            ("cluster_datagrams_sent", "Membership datagrams sent", &c.sent),
            ("cluster_datagrams_received", "Membership datagrams received", &c.received),
            (
                "cluster_datagrams_rejected",
                "Membership datagrams received and refused (undecodable, too large, from ourselves)",
                &c.rejected,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value.load(Ordering::Relaxed));
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        encode_data(c, &mut encoder)?;
        encode_links(c, &mut encoder)
    }
}

/// `sokdo_cluster_records_*`, `sokdo_cluster_sends_*`, `sokdo_cluster_rooms*`.
fn encode_data(c: &Cluster, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let s = &c.stats;
    let counters = [
        ("cluster_records_sequenced", "Records this instance sequenced as a room's owner and acknowledged (owner log + replicas)", &s.records_sequenced),
        ("cluster_sends_deduplicated", "Retried sends (a retry key already sequenced) this instance, as a room's owner, answered with the original's seq instead of storing them again", &s.sends_deduplicated),
        ("cluster_records_delivered", "Acknowledged records handed to this instance's home shards (deliveries and replays)", &s.records_delivered),
        ("cluster_records_shed", "Acknowledged records not queued for a lagging home shard (--cluster-home-queue-records full): the room is caught up from its owner instead", &s.records_shed),
        ("cluster_sends_forwarded", "Sends forwarded to a room's owner on another instance", &s.forwarded),
        ("cluster_sends_refused", "Sends the cluster refused (no owner, ownership moving, owner overloaded, no answer in time)", &s.refused),
        ("cluster_replays_asked", "Replay requests sent to room owners (catch-ups and gaps)", &s.replays_asked),
        ("cluster_rooms_evicted", "Quiescent room machines dropped from memory beyond --cluster-rooms-in-memory-max (rebuilt from cluster.redb when their room is touched again)", &s.rooms_evicted),
    ];
    for (name, help, value) in counters {
        let metric = ConstCounter::new(value.load(Ordering::Relaxed));
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    let gauges = [
        (
            "cluster_rooms",
            "Room machines the cluster thread holds in memory (beyond --cluster-rooms-in-memory-max only those that are not quiescent)",
            &s.rooms,
        ),
        (
            "cluster_rooms_owned",
            "Rooms this instance sequences now",
            &s.rooms_owned,
        ),
        (
            "cluster_sends_waiting",
            "Sends waiting for their owner's answer",
            &s.forwards_waiting,
        ),
        (
            "cluster_log_records_in_memory",
            "Records of the rooms' logs held in memory (the others are read back from cluster.redb)",
            &s.log_records_in_memory,
        ),
    ];
    for (name, help, value) in gauges {
        let metric = ConstGauge::new(value.load(Ordering::Relaxed) as i64);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    Ok(())
}

/// `sokdo_cluster_link_*{peer,direction}`.
fn encode_links(c: &Cluster, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let links = c.links.load();
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut family = encoder.encode_descriptor(
        "cluster_link_up",
        "1 while the link is open (out: this instance's connection to the peer; in: the peer's to it)",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for l in links.iter() {
        let out = i64::from(l.out_up.load(Ordering::Relaxed));
        let inbound = i64::from(n(&l.in_open) > 0);
        for (direction, v) in [("out", out), ("in", inbound)] {
            let labels = [("peer", l.node_id.as_str()), ("direction", direction)];
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
    }
    type Figures = fn(&LinkStats) -> [u64; 2];
    let counters: [(&str, &str, Figures); 2] = [
        (
            "cluster_link_frames",
            "Peer frames sent (out) and received (in)",
            |l| [n2(&l.frames_out), n2(&l.frames_in)],
        ),
        (
            "cluster_link_bytes",
            "Peer link bytes sent (out) and received (in), length prefixes included",
            |l| [n2(&l.bytes_out), n2(&l.bytes_in)],
        ),
    ];
    for (name, help, values) in counters {
        let mut family =
            encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for l in links.iter() {
            let [out, inbound] = values(l);
            for (direction, v) in [("out", out), ("in", inbound)] {
                let labels = [("peer", l.node_id.as_str()), ("direction", direction)];
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "cluster_link_drops",
        "Outbound links dropped because their queue was full (the peer is resynchronised)",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for l in links.iter() {
        let labels = [("peer", l.node_id.as_str())];
        ConstCounter::new(n(&l.drops)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn n2(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}
