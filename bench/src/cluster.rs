//! Target `sokdo-cluster`: N sokdo instances forming one cluster on loopback ports
//! (`--node-id`, `--cluster-listen`, `--peers`, docs/OPERATIONS.md "Cluster"), a real HAProxy
//! in front (configured by the engine tests' own generator, `haproxy.rs`), and what the
//! bench reads of them: the bytes the instances send each other (their
//! `sokdo_cluster_link_bytes_total{direction="out"}`) and the connections each holds.
//!
//! Here live the pure parts — the ports' layout, the instances' flags, the balancer's file
//! budget, the metrics' parsing — and the waits on a running cluster; `compare.rs` starts
//! the processes (in the target's cgroup and CPUs, like every target's), `scenario.rs` reads
//! the figures around a scenario's window.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::haproxy;
use crate::metrics;
use crate::report::ClusterFigures;

/// HAProxy holds two open files per proxied connection: the client's socket and the
/// server's.
pub const HAPROXY_FILES_PER_CONNECTION: u64 = 2;
/// Files HAProxy opens besides its connections: listeners, health-check sockets (one per
/// server at a time), the admin socket, pollers, logs — a handful; 200 leaves a margin.
pub const HAPROXY_FILES_RESERVE: u64 = 200;
/// How often HAProxy checks each instance's `/readyz`: the shipped configuration's
/// interval (docs/haproxy.cfg), so the bench pays what production pays.
pub const HAPROXY_CHECK_INTER_MS: u64 = 1000;
/// How long the instances may take to see each other alive and HAProxy to mark them UP:
/// membership converges within a few probe periods (1 s by default), HAProxy needs `rise 2`
/// checks.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// The ports of one cluster run, from a base port: HAProxy's frontend on the base, then
/// each instance's HTTP port, then each instance's cluster port (UDP membership and TCP
/// peer links on the same number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub balancer: SocketAddr,
    pub http: Vec<SocketAddr>,
    pub cluster: Vec<SocketAddr>,
}

impl Layout {
    /// Ports a cluster of `instances` uses from its base port.
    pub fn ports(instances: u64) -> u64 {
        1 + 2 * instances
    }

    pub fn new(base_port: u16, instances: u64) -> anyhow::Result<Layout> {
        let last = u64::from(base_port) + Layout::ports(instances) - 1;
        anyhow::ensure!(
            last <= u64::from(u16::MAX),
            "--port {base_port}: a cluster of {instances} instances needs ports up to {last}, \
             beyond 65535"
        );
        let at = |offset: u64| SocketAddr::from(([127, 0, 0, 1], base_port + offset as u16));
        Ok(Layout {
            balancer: at(0),
            http: (0..instances).map(|i| at(1 + i)).collect(),
            cluster: (0..instances).map(|i| at(1 + instances + i)).collect(),
        })
    }

    /// Fails naming the first port of the layout another process holds (TCP for every
    /// port, UDP too for the cluster ports).
    pub fn check_free(&self) -> anyhow::Result<()> {
        let tcp = std::iter::once(&self.balancer)
            .chain(&self.http)
            .chain(&self.cluster);
        for addr in tcp {
            TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("port {} is already in use: {e}", addr.port()))?;
        }
        for addr in &self.cluster {
            UdpSocket::bind(addr)
                .map_err(|e| anyhow::anyhow!("UDP port {} is already in use: {e}", addr.port()))?;
        }
        Ok(())
    }

    /// Instance `i`'s node id (also its `--instance-id`, shown in `hello`, and its name in
    /// HAProxy's backend).
    pub fn node_id(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Instance `i`'s cluster flags: its identity, its cluster address and the others'.
    pub fn instance_args(&self, i: usize) -> Vec<String> {
        let peers: Vec<String> = (self.cluster.iter().enumerate())
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.to_string())
            .collect();
        vec![
            "--node-id".into(),
            Layout::node_id(i),
            "--instance-id".into(),
            Layout::node_id(i),
            "--cluster-listen".into(),
            self.cluster[i].to_string(),
            "--peers".into(),
            peers.join(","),
        ]
    }

    /// HAProxy's configuration for this layout (the shipped one's shape, `haproxy.rs`),
    /// with an admin socket at `stats_socket`.
    pub fn haproxy_cfg(&self, maxconn: u32, stats_socket: &str) -> String {
        let servers: Vec<(String, String)> = (self.http.iter().enumerate())
            .map(|(i, a)| (Layout::node_id(i), a.to_string()))
            .collect();
        haproxy::haproxy_cfg(&haproxy::HaproxyParams {
            bind: &self.balancer.to_string(),
            servers: &servers,
            check_inter_ms: HAPROXY_CHECK_INTER_MS,
            maxconn,
            stats_socket: Some(stats_socket),
        })
    }
}

/// The largest `maxconn` HAProxy can hold within `files_max` open files (its process's
/// limit: two per connection, a reserve besides).
pub fn haproxy_maxconn_max(files_max: u64) -> u32 {
    let conns = files_max.saturating_sub(HAPROXY_FILES_RESERVE) / HAPROXY_FILES_PER_CONNECTION;
    conns.min(u64::from(u32::MAX)) as u32
}

/// `--haproxy-maxconn` checked against the open-file limit the bench (and so HAProxy, its
/// child) runs under; without the flag, the largest that fits.
pub fn haproxy_maxconn(asked: Option<u32>, files_max: u64) -> anyhow::Result<u32> {
    let max = haproxy_maxconn_max(files_max);
    anyhow::ensure!(
        max > 0,
        "the open-file limit ({files_max}) leaves HAProxy no connection \
         ({HAPROXY_FILES_PER_CONNECTION} files each, {HAPROXY_FILES_RESERVE} reserved)"
    );
    match asked {
        None => Ok(max),
        Some(0) => anyhow::bail!("--haproxy-maxconn 0: at least one connection"),
        Some(n) if n > max => anyhow::bail!(
            "--haproxy-maxconn {n}: HAProxy needs {HAPROXY_FILES_PER_CONNECTION} open files per \
             connection plus {HAPROXY_FILES_RESERVE}, and this process may open {files_max} \
             (RLIMIT_NOFILE): at most {max}"
        ),
        Some(n) => Ok(n),
    }
}

/// What one reading of every instance's `/metrics` gives: Σ link bytes and frames sent,
/// Σ membership datagrams sent, Σ links dropped, and each instance's open connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mark {
    pub link_bytes_out: u64,
    pub link_frames_out: u64,
    pub datagrams_sent: u64,
    pub link_drops: u64,
    pub connections: Vec<u64>,
}

impl Mark {
    /// Reads every instance; `None` when one does not answer (its figures would be
    /// missing from the sums).
    pub fn read(instances: &[SocketAddr]) -> Option<Mark> {
        let mut mark = Mark::default();
        for addr in instances {
            mark.add(&metrics::scrape(*addr)?);
        }
        Some(mark)
    }

    /// Adds one instance's `/metrics`.
    fn add(&mut self, text: &str) {
        let out = "direction=\"out\"";
        self.link_bytes_out += metrics::sum(text, "sokdo_cluster_link_bytes_total", out);
        self.link_frames_out += metrics::sum(text, "sokdo_cluster_link_frames_total", out);
        self.datagrams_sent += metrics::sum(text, "sokdo_cluster_datagrams_sent_total", "");
        self.link_drops += metrics::sum(text, "sokdo_cluster_link_drops_total", "");
        self.connections
            .push(metrics::sum(text, "sokdo_connections", ""));
    }

    /// The figures of the window from `before` to this mark; the per-delivery ratios are
    /// filled in once the bench's own counts are known ([`ClusterFigures::per_message`]).
    pub fn since(&self, before: &Mark) -> ClusterFigures {
        ClusterFigures {
            instances: self.connections.len() as u64,
            link_bytes_out: self.link_bytes_out.saturating_sub(before.link_bytes_out),
            link_frames_out: self.link_frames_out.saturating_sub(before.link_frames_out),
            datagrams_sent: self.datagrams_sent.saturating_sub(before.datagrams_sent),
            link_drops: self.link_drops.saturating_sub(before.link_drops),
            connections_by_instance: self.connections.clone(),
            ..ClusterFigures::default()
        }
    }
}

/// Polls until every instance's `/cluster` shows `instances` members alive and quorum
/// (bounded by `within`).
pub fn wait_formed(http: &[SocketAddr], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let views: Vec<Option<String>> = http
            .iter()
            .map(|a| metrics::get(*a, "/cluster").map(|(_, body)| body))
            .collect();
        if views
            .iter()
            .all(|v| v.as_deref().is_some_and(|v| all_alive(v, http.len())))
        {
            return Ok(());
        }
        if let Some(v) = views.into_iter().flatten().next() {
            last = v;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the {} instances did not all see each other alive with quorum within {within:?}; \
             a view: {last}",
            http.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `/cluster` answer with quorum and `n` members `alive`.
pub fn all_alive(view: &str, n: usize) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(view) else {
        return false;
    };
    let alive = v["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
    v["quorum"] == true && alive == n
}

/// Polls HAProxy's admin socket until every server of `names` is `UP` (bounded).
pub fn wait_up(stats: &Path, names: &[String], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let states: HashMap<String, String> = haproxy::show_stat(stats).unwrap_or_default();
        if names
            .iter()
            .all(|n| states.get(n).is_some_and(|s| s == "UP"))
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "HAProxy did not mark every instance UP within {within:?}: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_puts_the_balancer_then_the_http_then_the_cluster_ports() {
        let l = Layout::new(19_100, 3).unwrap();
        let port = |a: &SocketAddr| a.port();
        assert_eq!(l.balancer.port(), 19_100);
        assert_eq!(
            l.http.iter().map(port).collect::<Vec<_>>(),
            [19_101, 19_102, 19_103]
        );
        assert_eq!(
            l.cluster.iter().map(port).collect::<Vec<_>>(),
            [19_104, 19_105, 19_106]
        );
        assert_eq!(Layout::ports(3), 7);
        let err = Layout::new(65_530, 3).unwrap_err().to_string();
        assert!(err.contains("65536"), "{err}");
    }

    #[test]
    fn an_instance_is_told_its_identity_and_the_others_cluster_addresses() {
        let l = Layout::new(20_000, 3).unwrap();
        assert_eq!(
            l.instance_args(1),
            [
                "--node-id",
                "n2",
                "--instance-id",
                "n2",
                "--cluster-listen",
                "127.0.0.1:20005",
                "--peers",
                "127.0.0.1:20004,127.0.0.1:20006",
            ]
        );
    }

    #[test]
    fn the_balancer_config_is_the_shipped_shape_on_the_layout() {
        let l = Layout::new(20_000, 2).unwrap();
        let cfg = l.haproxy_cfg(9_000, "/tmp/x/admin.sock");
        for line in [
            "    maxconn 9000\n",
            "    stats socket /tmp/x/admin.sock mode 600 level admin\n",
            "    bind 127.0.0.1:20000\n",
            "    balance leastconn\n",
            "    option httpchk GET /readyz\n",
            "    default-server check inter 1000ms fall 2 rise 2\n",
            "    server n1 127.0.0.1:20001\n",
            "    server n2 127.0.0.1:20002\n",
        ] {
            assert!(cfg.contains(line), "{line:?} missing from:\n{cfg}");
        }
    }

    #[test]
    fn maxconn_is_bounded_by_the_open_file_limit() {
        // This machine's cap: 20,000 open files per process.
        assert_eq!(haproxy_maxconn_max(20_000), 9_900);
        assert_eq!(haproxy_maxconn(None, 20_000).unwrap(), 9_900);
        assert_eq!(haproxy_maxconn(Some(5_000), 20_000).unwrap(), 5_000);
        let err = haproxy_maxconn(Some(9_901), 20_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 9900"), "{err}");
        assert!(haproxy_maxconn(Some(0), 20_000).is_err());
        assert!(haproxy_maxconn(None, 100).is_err());
    }

    const METRICS: &str = "\
# HELP sokdo_connections open sockets (any phase)
# TYPE sokdo_connections gauge
sokdo_connections{shard=\"0\"} 7
sokdo_connections{shard=\"1\"} 5
sokdo_connections_accepted_total{shard=\"0\"} 99
sokdo_cluster_datagrams_sent_total 40
sokdo_cluster_link_frames_total{peer=\"n2\",direction=\"out\"} 10
sokdo_cluster_link_frames_total{peer=\"n2\",direction=\"in\"} 11
sokdo_cluster_link_bytes_total{peer=\"n2\",direction=\"out\"} 1000
sokdo_cluster_link_bytes_total{peer=\"n2\",direction=\"in\"} 2000
sokdo_cluster_link_bytes_total{peer=\"n3\",direction=\"out\"} 500
sokdo_cluster_link_drops_total{peer=\"n2\"} 1
# EOF
";

    #[test]
    fn a_window_is_the_difference_of_two_marks_summed_over_instances() {
        let mut before = Mark::default();
        before.add(METRICS);
        before.add(METRICS);
        let mut after = Mark::default();
        after.add(&METRICS.replace("} 1000", "} 4000"));
        after.add(&METRICS.replace("} 500", "} 800"));
        let f = after.since(&before);
        assert_eq!(f.instances, 2);
        assert_eq!(f.link_bytes_out, 3_000 + 300);
        assert_eq!(f.link_frames_out, 0);
        assert_eq!(f.connections_by_instance, [12, 12]);
    }

    #[test]
    fn a_cluster_view_is_formed_with_quorum_and_every_member_alive() {
        let view = |states: &[&str], quorum: bool| {
            let members: Vec<serde_json::Value> = states
                .iter()
                .map(|s| serde_json::json!({ "state": s }))
                .collect();
            serde_json::json!({ "quorum": quorum, "members": members }).to_string()
        };
        assert!(all_alive(&view(&["alive", "alive", "alive"], true), 3));
        assert!(!all_alive(&view(&["alive", "suspect", "alive"], true), 3));
        assert!(!all_alive(&view(&["alive", "alive"], true), 3));
        assert!(!all_alive(&view(&["alive", "alive", "alive"], false), 3));
        assert!(!all_alive("not json", 3));
    }
}
