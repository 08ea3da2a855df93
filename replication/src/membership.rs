//! Cluster membership: a sans-io wrapper over `foca` (SWIM with suspicion and infection-style
//! dissemination), docs/REPLICATION.md "Membership".
//!
//! Nothing here reads a clock, a socket or a random source: the caller passes `now` (time since
//! an origin of its choosing: the real `cluster` thread uses a monotonic `Instant`, the
//! simulation its simulated clock), hands in the datagrams it received, fires the timers when
//! they are due, and sends the datagrams it collects. Given the same seed and the same inputs,
//! a [`Membership`] produces the same outputs.
//!
//! Identity: a node id (configured, stable across restarts), the cluster address peers reach
//! it at, and a boot (a random id plus the wall-clock start time, both chosen by the caller at
//! start). A restarted node is a new identity with the same node id, and it wins foca's
//! address conflict against the old one because it started later; a node that learns it was
//! declared down (a partition healed) renews itself with a bumped counter and rejoins.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Codec, Foca, NoCustomBroadcast, PostcardCodec};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Largest datagram produced or accepted (bytes): below a 1500-byte Ethernet MTU with room for
/// IP and UDP headers (RFC 8085).
pub const MAX_DATAGRAM_BYTES: usize = 1400;

/// Longest node id (bytes); node ids are 1–64 of `[a-z0-9-]`.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Is `id` a valid node id (1–64 of `[a-z0-9-]`)?
pub fn valid_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One incarnation of one node, as foca sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The configured, stable name (`--node-id`). Empty only in the placeholder sent to a seed
    /// whose name is not known yet: such an identity never becomes a member.
    pub node_id: String,
    /// Where its peers send datagrams (`--cluster-listen`, or the advertised address).
    pub addr: SocketAddr,
    /// Random per process start.
    pub boot: u64,
    /// Wall-clock milliseconds since the Unix epoch at process start: orders two boots of one
    /// node (the later one replaces the earlier).
    pub started_ms: u64,
    /// Renewals within one boot (each time the node learns it was declared down).
    pub bump: u16,
}

impl NodeIdentity {
    /// A node's identity at process start (bump 0).
    pub fn new(node_id: impl Into<String>, addr: SocketAddr, boot: u64, started_ms: u64) -> Self {
        Self {
            node_id: node_id.into(),
            addr,
            boot,
            started_ms,
            bump: 0,
        }
    }

    fn seed_placeholder(addr: SocketAddr) -> Self {
        Self::new(String::new(), addr, 0, 0)
    }

    fn rank(&self) -> (u64, u16, u64) {
        (self.started_ms, self.bump, self.boot)
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}#{:016x}.{}",
            self.node_id, self.addr, self.boot, self.bump
        )
    }
}

impl foca::Identity for NodeIdentity {
    /// The cluster address: what a seed is known by before its name is (foca accepts an
    /// announce addressed to any identity at its address).
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

/// Timing of the SWIM protocol (the engine's `--cluster-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a random member is probed; a member that did not answer (directly or through
    /// others) within one period becomes suspect.
    pub probe_period: Duration,
    /// How long a direct probe waits for its answer before others are asked to probe
    /// indirectly. Strictly below `probe_period`.
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute the suspicion before it is declared down.
    pub suspect_to_down: Duration,
    /// The other members' cluster addresses (`--peers`): announced to until they answer.
    pub seeds: Vec<SocketAddr>,
}

impl MembershipConfig {
    /// Rejects timings foca cannot run with, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_rtt.is_zero() || self.probe_period.is_zero() || self.suspect_to_down.is_zero()
        {
            return Err("probe period, probe rtt and suspect-to-down must be above 0".into());
        }
        if self.probe_rtt >= self.probe_period {
            return Err(format!(
                "probe rtt ({:?}) must be below the probe period ({:?})",
                self.probe_rtt, self.probe_period
            ));
        }
        Ok(())
    }

    /// An upper bound on how long after a member stops answering every other live member
    /// sees it down, with the configured size `members`: it is probed within `members - 1`
    /// probe periods (foca probes the members in a shuffled round), found unresponsive at
    /// the end of that period, suspected for `suspect_to_down`, and the verdict reaches the
    /// others within a further period of gossip.
    pub fn down_bound(&self, members: usize) -> Duration {
        let periods = u32::try_from(members.max(2))
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.probe_period.saturating_mul(periods) + self.suspect_to_down
    }

    fn foca(&self) -> foca::Config {
        let size = u32::try_from(self.seeds.len() + 1).unwrap_or(u32::MAX);
        let mut config = foca::Config::new_lan(NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN));
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_to_down;
        config.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM_BYTES).unwrap_or(NonZeroUsize::MIN);
        // A member declared down is told so (`TurnUndead`) when it speaks again, renews its
        // identity and rejoins: a healed partition recovers without an operator.
        config.notify_down_members = true;
        if let Some(gossip) = config.periodic_gossip.as_mut() {
            gossip.frequency = gossip.frequency.min(self.probe_period);
        }
        if let Some(down) = config.periodic_announce_to_down_members.as_mut() {
            down.frequency = self.probe_period.saturating_mul(4);
        }
        config
    }
}

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Not answering a probe; counts as a member until declared down.
    Suspect,
    /// Declared down (by this node or by gossip).
    Down,
}

impl MemberState {
    /// The name used in `/cluster` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }

    fn of(state: foca::State) -> Self {
        match state {
            foca::State::Alive => Self::Alive,
            foca::State::Suspect => Self::Suspect,
            foca::State::Down => Self::Down,
        }
    }
}

/// One member in this node's view (one entry per node id; the newest identity seen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// The newest identity of that node id this node knows.
    pub identity: NodeIdentity,
    /// Its state.
    pub state: MemberState,
    /// Its SWIM incarnation (refutations of suspicion raise it).
    pub incarnation: u16,
    /// When (the caller's clock) this entry last changed state or identity.
    pub since: Duration,
    /// When a datagram from it last arrived; `None` if never (known by gossip only).
    pub last_heard: Option<Duration>,
    /// Is this entry this node itself?
    pub is_self: bool,
}

/// A change in the view, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    /// Which node.
    pub node_id: String,
    /// Its identity after the change.
    pub identity: NodeIdentity,
    /// Its state after the change.
    pub state: MemberState,
    /// Its incarnation after the change.
    pub incarnation: u16,
    /// When (the caller's clock).
    pub at: Duration,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The receiver's cluster address.
    pub to: SocketAddr,
    /// The payload.
    pub bytes: Bytes,
}

/// Counters of the datagrams this node handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams produced for sending.
    pub sent: u64,
    /// Datagrams handed in.
    pub received: u64,
    /// Datagrams handed in and refused (undecodable, too large, from ourselves).
    pub rejected: u64,
}

/// Why a datagram or timer was refused: the node goes on; the caller logs it (rate-limited).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MembershipError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Foca(foca::Timer<NodeIdentity>),
    /// Announce to every seed with no active member behind it.
    AnnounceSeeds,
}

type Swim = Foca<NodeIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// This node's membership state machine.
pub struct Membership {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeIdentity>,
    config: MembershipConfig,
    /// Due time, then arming order: a total, deterministic order.
    timers: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    timer_slots: Vec<Option<TimerKind>>,
    free_slots: Vec<usize>,
    armed: u64,
    view: BTreeMap<String, MemberView>,
    changes: Vec<MemberChange>,
    outbox: Vec<Datagram>,
    counters: Counters,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node that has not joined yet: the first [`Membership::handle_timers`] announces it to
    /// the seeds. `seed` drives foca's random choices (whom to probe, whom to gossip to).
    pub fn new(me: NodeIdentity, config: MembershipConfig, seed: u64) -> Result<Self, String> {
        config.validate()?;
        if !valid_node_id(&me.node_id) {
            return Err(format!("node id {:?} is not 1–64 of [a-z0-9-]", me.node_id));
        }
        let foca = Foca::new(
            me.clone(),
            config.foca(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        let mut membership = Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            config,
            timers: BinaryHeap::new(),
            timer_slots: Vec::new(),
            free_slots: Vec::new(),
            armed: 0,
            view: BTreeMap::new(),
            changes: Vec::new(),
            outbox: Vec::new(),
            counters: Counters::default(),
        };
        membership.arm(Duration::ZERO, TimerKind::AnnounceSeeds);
        Ok(membership)
    }

    /// This node's current identity (its bump grows when it rejoins after being declared down).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// A datagram from `from` arrived at `now`.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), MembershipError> {
        self.counters.received += 1;
        let sender: Option<NodeIdentity> =
            Codec::<NodeIdentity>::decode_header(&mut PostcardCodec, bytes)
                .ok()
                .map(|h| h.src);
        let result = self.foca.handle_data(bytes, &mut self.runtime);
        if let Err(e) = result {
            self.counters.rejected += 1;
            self.collect(now);
            return Err(MembershipError(format!("datagram from {from}: {e}")));
        }
        self.collect(now);
        if let Some(entry) = sender.and_then(|src| self.view.get_mut(&src.node_id)) {
            entry.last_heard = Some(now);
        }
        Ok(())
    }

    /// When the earliest armed timer is due (`None`: nothing armed).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Fires every timer due at or before `now`, in due order.
    pub fn handle_timers(&mut self, now: Duration) -> Result<(), MembershipError> {
        let mut first_error = None;
        while let Some(&Reverse((due, _, slot))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(kind) = self.timer_slots[slot].take() else {
                continue;
            };
            self.free_slots.push(slot);
            let result = match kind {
                TimerKind::Foca(timer) => self.foca.handle_timer(timer, &mut self.runtime),
                TimerKind::AnnounceSeeds => {
                    self.announce_seeds(now);
                    Ok(())
                }
            };
            if let Err(e) = result {
                first_error.get_or_insert(MembershipError(format!("timer: {e}")));
            }
            self.collect(now);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Leaves the cluster gracefully (shutdown): the others see this node down at once instead
    /// of after the suspicion timeout.
    pub fn leave(&mut self, now: Duration) -> Result<(), MembershipError> {
        let result = self.foca.leave_cluster(&mut self.runtime);
        self.collect(now);
        result.map_err(|e| MembershipError(format!("leave: {e}")))
    }

    /// The datagrams to send, oldest first.
    pub fn take_datagrams(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.outbox)
    }

    /// The view's changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<MemberChange> {
        std::mem::take(&mut self.changes)
    }

    /// Every node this node knows, itself included, by node id.
    pub fn members(&self) -> Vec<MemberView> {
        self.view.values().cloned().collect()
    }

    /// How many members are active (alive or suspect), this node included.
    pub fn active(&self) -> usize {
        self.view
            .values()
            .filter(|m| m.state != MemberState::Down)
            .count()
    }

    /// Does this node see a majority of the `configured` members active, itself included?
    pub fn quorum(&self, configured: usize) -> bool {
        2 * self.active() > configured
    }

    /// Datagram counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn announce_seeds(&mut self, now: Duration) {
        let seeds = self.config.seeds.clone();
        for seed in seeds {
            let answered = self
                .view
                .values()
                .any(|m| !m.is_self && m.identity.addr == seed && m.state != MemberState::Down);
            if !answered {
                // A send into the void is not an error worth stopping for: the next round
                // retries.
                let _ = self
                    .foca
                    .announce(NodeIdentity::seed_placeholder(seed), &mut self.runtime);
            }
        }
        self.arm(now + self.config.probe_period, TimerKind::AnnounceSeeds);
    }

    fn arm(&mut self, due: Duration, kind: TimerKind) {
        let slot = if let Some(slot) = self.free_slots.pop() {
            self.timer_slots[slot] = Some(kind);
            slot
        } else {
            self.timer_slots.push(Some(kind));
            self.timer_slots.len() - 1
        };
        self.armed += 1;
        self.timers.push(Reverse((due, self.armed, slot)));
    }

    /// Moves foca's outputs into ours and refreshes the view.
    fn collect(&mut self, now: Duration) {
        while let Some((to, bytes)) = self.runtime.to_send() {
            self.counters.sent += 1;
            self.outbox.push(Datagram { to: to.addr, bytes });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.arm(now + after, TimerKind::Foca(timer));
        }
        // Member changes are read from foca's member list (it does not notify suspicion);
        // its notifications are dropped.
        while self.runtime.to_notify().is_some() {}
        self.refresh(now);
    }

    fn refresh(&mut self, now: Duration) {
        let me = self.foca.identity().clone();
        let mut seen: Vec<(NodeIdentity, MemberState, u16)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node_id != me.node_id && !m.id().node_id.is_empty())
            .map(|m| (m.id().clone(), MemberState::of(m.state()), m.incarnation()))
            .collect();
        seen.push((me, MemberState::Alive, 0));
        // An entry foca no longer lists was replaced at its address (another node id took
        // it over) or forgotten after `remove_down_after`: down.
        let gone: Vec<NodeIdentity> = self
            .view
            .values()
            .filter(|e| e.state != MemberState::Down)
            .filter(|e| {
                !seen
                    .iter()
                    .any(|(id, _, _)| id.node_id == e.identity.node_id)
            })
            .map(|e| e.identity.clone())
            .collect();
        for identity in gone {
            let incarnation = self.view[&identity.node_id].incarnation;
            self.update(now, identity, MemberState::Down, incarnation);
        }
        for (identity, state, incarnation) in seen {
            self.update(now, identity, state, incarnation);
        }
    }

    fn update(&mut self, now: Duration, identity: NodeIdentity, state: MemberState, inc: u16) {
        let is_self = identity.node_id == self.foca.identity().node_id;
        let node_id = identity.node_id.clone();
        if let Some(entry) = self.view.get(&node_id) {
            // foca may still remember an older identity of this node as down: the newer wins.
            if entry.identity.rank() > identity.rank() {
                return;
            }
            if entry.identity == identity && entry.state == state && entry.incarnation == inc {
                return;
            }
        }
        let last_heard = self.view.get(&node_id).and_then(|e| e.last_heard);
        let changed_state = self.view.get(&node_id).is_none_or(|e| e.state != state);
        let changed_identity = self
            .view
            .get(&node_id)
            .is_none_or(|e| e.identity != identity);
        let since = match self.view.get(&node_id) {
            Some(e) if !changed_state && !changed_identity => e.since,
            _ => now,
        };
        self.view.insert(
            node_id.clone(),
            MemberView {
                identity: identity.clone(),
                state,
                incarnation: inc,
                since,
                last_heard,
                is_self,
            },
        );
        self.changes.push(MemberChange {
            node_id,
            identity,
            state,
            incarnation: inc,
            at: now,
        });
    }
}

#[cfg(test)]
mod tests;
