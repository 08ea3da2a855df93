//! What every shard of the process reads and no shard writes: the configuration, the
//! mesh, the persistence handle, the metrics registry, liveness, and the admission counts
//! (atomics every shard updates, `places`). Built once by `server`
//! before the shards start, then shared behind an `Arc`.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::config::Config;
use crate::mesh::msg::ShardMsg;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::persist::Completions;
use crate::wire::auth::Auth;

pub struct Instance {
    pub cfg: Config,
    /// This instance's name, in `hello` and session ids.
    pub name: String,
    pub auth: Auth,
    pub metrics: Metrics,
    pub mesh: Arc<Mesh<ShardMsg>>,
    pub completions: Arc<Completions>,
    pub persist: sokdo_persistence::Handle,
    /// The account store, with `--accounts`.
    pub accounts: Option<Arc<crate::accounts::Accounts>>,
    /// When each shard last ran, for `/healthz`.
    pub liveness: crate::liveness::Liveness,
    /// The instance's admission places (every shard counts in them; `shard::admission`).
    pub places: Arc<crate::places::Places>,
    /// Upgraded connections per client address (`--connections-per-ip-max`; atomics every
    /// shard updates).
    pub ip_counts: crate::ip_counts::IpCounts,
    /// Sockets per client address whose HTTP request is not read yet
    /// (`--handshakes-per-ip-max`).
    pub handshake_counts: crate::ip_counts::IpCounts,
    /// The cluster's membership, with `--peers` (its thread publishes the view).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Instance {
    /// Shards of this process (the mesh has one doorbell and one row of queues each).
    pub fn shards(&self) -> u16 {
        self.mesh.shards() as u16
    }

    /// `--durability sync`: a `send` is answered once its record is durable.
    pub fn durable_acks(&self) -> bool {
        self.cfg.durable_acks()
    }

    /// `Some(why)` while this instance is in a cluster and does not see a majority of its
    /// configured members: sends are refused and `/readyz` answers 503.
    pub fn no_quorum(&self) -> Option<String> {
        self.cluster.as_ref().and_then(|c| c.no_quorum())
    }

    /// `/cluster`'s JSON.
    pub fn cluster_json(&self) -> String {
        match &self.cluster {
            Some(c) => c.json(),
            None => crate::cluster::Cluster::off_json(),
        }
        .to_string()
    }
}
