//! The cluster thread: runs `sokdo_replication::membership` (SWIM over UDP on
//! `--cluster-listen`) on a thread of its own, named `cluster`, never on a shard, and
//! publishes the view for the shards without a lock (docs/REPLICATION.md "Membership").
//!
//! The thread blocks in `recv_from` with a timeout to the membership's next timer, hands it
//! every datagram with the time since the thread's origin, sends what it produces, and
//! swaps in a new [`View`] (`arc_swap`) after each event. Shards read the view with
//! one atomic load: a `send` without quorum is refused, `/readyz` says why, `/cluster` and
//! `/metrics` show it.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use crate::config::Config;

/// Longest the thread blocks without a timer due: it looks at the stop flag this often.
const IDLE_WAIT: Duration = Duration::from_millis(200);

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
}

impl Cluster {
    /// The current view (one atomic load; never blocks).
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
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

/// Binds `--cluster-listen`, resolves `--peers` and starts the `cluster` thread; errors name
/// the flag. `None` without `--peers`.
pub fn start(cfg: &Config) -> anyhow::Result<Option<Running>> {
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
    let boot = random_u64();
    let started_ms = crate::clock::now_ms();
    let me = NodeIdentity::new(node_id.clone(), advertised, boot, started_ms);
    let config = MembershipConfig {
        probe_period: Duration::from_millis(cfg.cluster_probe_period_ms),
        probe_rtt: Duration::from_millis(cfg.cluster_probe_rtt_ms),
        suspect_to_down: Duration::from_millis(cfg.cluster_suspect_to_down_ms),
        seeds: peers.clone(),
    };
    let membership = Membership::new(me, config, random_u64())
        .map_err(|e| anyhow::anyhow!("cluster configuration: {e}"))?;
    let configured = peers.len() + 1;
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
    });
    tracing::info!(
        node_id = %cluster.node_id, addr = %advertised, boot = format!("{boot:016x}"),
        peers = ?cluster.peers, "cluster membership starting"
    );
    let shared = cluster.clone();
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || run(&shared, membership, &socket))
        .context("starting the cluster thread")?;
    Ok(Some(Running { cluster, thread }))
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
fn run(cluster: &Cluster, mut membership: Membership, socket: &UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    let mut log = Throttled::default();
    loop {
        let now = cluster.origin.elapsed();
        if let Err(e) = membership.handle_timers(now) {
            log.warn(now, &e.to_string());
        }
        flush(cluster, &mut membership, socket, &mut log, now);
        if cluster.stop.load(Ordering::SeqCst) {
            if let Err(e) = membership.leave(now) {
                log.warn(now, &e.to_string());
            }
            flush(cluster, &mut membership, socket, &mut log, now);
            tracing::info!("left the cluster");
            return;
        }
        let wait = membership
            .next_deadline()
            .map_or(IDLE_WAIT, |due| due.saturating_sub(now))
            .clamp(Duration::from_millis(1), IDLE_WAIT);
        // A zero timeout would mean "block forever": the clamp keeps it above.
        let _ = socket.set_read_timeout(Some(wait));
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let now = cluster.origin.elapsed();
                if let Err(e) = membership.handle_datagram(now, from, &buf[..n]) {
                    log.warn(now, &e.to_string());
                }
                flush(cluster, &mut membership, socket, &mut log, now);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => log.warn(cluster.origin.elapsed(), &format!("cluster socket: {e}")),
        }
    }
}

/// Sends what the membership produced and publishes the view.
fn flush(
    cluster: &Cluster,
    membership: &mut Membership,
    socket: &UdpSocket,
    log: &mut Throttled,
    now: Duration,
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
        Ok(())
    }
}
