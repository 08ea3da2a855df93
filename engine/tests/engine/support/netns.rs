//! A network of its own for a test cluster: one network namespace per instance (`ip netns`),
//! each with two veth links to the test's namespace —
//! - the **cluster link**, `10.201.K.(i+1)/24`, its outer end a port of a bridge that joins
//!   the instances (the bridge holds `10.201.K.254`, so the test reaches the cluster ports);
//! - the **access link**, `10.202.K.(4i+2)/30`, a point-to-point link from the test's
//!   namespace (`10.202.K.(4i+1)`), which the test's clients and HAProxy use.
//!
//! [`Network::cut`] takes node `i`'s cluster link down: a real partition of the cluster,
//! while its clients still reach it. `K` is the first index whose bridge could be created
//! (so concurrent tests never share addresses); everything is removed on drop.

use std::net::SocketAddr;
use std::process::Command;

/// The HTTP/WebSocket port of every instance (each has its own namespace).
const HTTP_PORT: u16 = 8080;
/// The cluster port (UDP membership, TCP peer links) of every instance.
const CLUSTER_PORT: u16 = 7946;
/// Indexes tried for the bridge (and the addresses' third byte).
const INDEXES: u32 = 200;

pub struct Network {
    index: u32,
    nodes: usize,
}

/// Runs `ip ARGS`; the error names the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may create network namespaces (root with `ip netns`).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip").arg("-V").output().is_ok()
}

impl Network {
    /// Creates the bridge, the namespaces and their links for `nodes` instances.
    pub fn create(nodes: usize) -> Network {
        assert!(nodes <= 60, "the access links' /30s fit 60 nodes");
        let start = std::process::id() % INDEXES;
        let index = (0..INDEXES)
            .map(|k| (start + k) % INDEXES)
            .find(|k| ip(&["link", "add", "name", &bridge(*k), "type", "bridge"]).is_ok())
            .expect("a free bridge index for the test network");
        let net = Network { index, nodes };
        net.setup()
            .unwrap_or_else(|e| panic!("setting up the test network: {e}"));
        net
    }

    fn setup(&self) -> Result<(), String> {
        let k = self.index;
        let br = bridge(k);
        ip(&["addr", "add", &format!("10.201.{k}.254/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            // A namespace of that name left by a test that was killed: ours now.
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let cl = self.cluster_veth(i);
            let ac = format!("ska{k}n{i}");
            // Links of those names left by a test that was killed: ours now (this index's
            // bridge was free, so no running test uses them).
            let _ = ip(&["link", "del", &cl]);
            let _ = ip(&["link", "del", &ac]);
            ip(&[
                "link", "add", &cl, "type", "veth", "peer", "name", "cl", "netns", &ns,
            ])?;
            ip(&["link", "set", &cl, "master", &br, "up"])?;
            let addr = format!("10.201.{k}.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "cl"])?;
            ip(&["-n", &ns, "link", "set", "cl", "up"])?;
            ip(&[
                "link", "add", &ac, "type", "veth", "peer", "name", "ac", "netns", &ns,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("10.202.{k}.{}/30", 4 * i + 1),
                "dev",
                &ac,
            ])?;
            ip(&["link", "set", &ac, "up"])?;
            let addr = format!("10.202.{k}.{}/30", 4 * i + 2);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "ac"])?;
            ip(&["-n", &ns, "link", "set", "ac", "up"])?;
        }
        Ok(())
    }

    /// Node `i`'s namespace (`ip netns exec` it to run the instance there).
    pub fn namespace(&self, i: usize) -> String {
        format!("sk{}n{i}", self.index)
    }

    fn cluster_veth(&self, i: usize) -> String {
        format!("skc{}n{i}", self.index)
    }

    /// Node `i`'s `--listen` address (on its access link).
    pub fn http(&self, i: usize) -> SocketAddr {
        let k = self.index;
        format!("10.202.{k}.{}:{HTTP_PORT}", 4 * i + 2)
            .parse()
            .unwrap()
    }

    /// Node `i`'s `--cluster-listen` address (on the cluster bridge).
    pub fn cluster(&self, i: usize) -> SocketAddr {
        let k = self.index;
        format!("10.201.{k}.{}:{CLUSTER_PORT}", i + 1)
            .parse()
            .unwrap()
    }

    /// Cuts node `i` off the cluster network (its bridge port down): no datagram or
    /// segment passes between it and the others, in either direction. Its clients still
    /// reach it over its access link.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.cluster_veth(i), "down"]).unwrap();
    }

    /// Undoes [`Network::cut`].
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.cluster_veth(i), "up"]).unwrap();
    }
}

fn bridge(k: u32) -> String {
    format!("skb{k}")
}

impl Drop for Network {
    /// Deleting a namespace deletes the veth pairs it holds an end of.
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &bridge(self.index)]);
    }
}
