//! One room's ownership on one node: a pure state machine, views and frames in, frames
//! out. No I/O, no clock: the caller (the cluster thread, or the simulation) delivers
//! [`Input`]s and sends the [`Output`]s.
//!
//! The rules (docs/REPLICATION.md "Room ownership", "Failover"):
//! - **Who owns.** In a node's view (the live members it sees) the room's owner is the
//!   first in rendezvous order (`placement`), and only if the view holds a majority of the
//!   configured members. Its *replicas* are the next `quorum − 1` members: for three
//!   configured members, exactly the successor.
//! - **Epochs.** A node that takes ownership claims `max(epoch seen) + 1` ([`Frame::Claim`]).
//!   Each member answers at most once per epoch, promising to refuse any lower one, and
//!   hands over the records it holds ([`Frame::Handoff`]). With a majority of answers the
//!   claimant merges them (per seq the record of the highest epoch), stamps them with its
//!   epoch and starts sequencing at the last seq + 1. Two claimants of one epoch cannot
//!   both gather a majority: no two nodes sequence a room in the same epoch.
//! - **Fencing.** A record ([`Frame::Append`]) below the highest epoch a node has seen is
//!   refused, and so is one from a node that is not the owner in the receiver's view, or
//!   to a node that is not a replica in it.
//! - **Ack rule.** The owner answers [`Frame::Published`] (and fans out) for a seq only
//!   when its own log holds it and every replica has answered [`Frame::Appended`] up to
//!   it. Replicas take records in order, so `Appended { upto }` covers every seq before.
//!   An acknowledged seq is therefore held by a majority; any later claimant's majority
//!   includes one of them, so it is never lost nor reused while a majority survives.
//! - **Successor change.** A new replica starts at `upto = 0`: the owner sends it the
//!   room's records, and no further seq is acknowledged before it holds them. Sends
//!   meanwhile wait, at most [`PENDING_SENDS_MAX`]; beyond, `Overloaded`.
//! - **Handoff on a join.** A joining node that outranks the owner claims; the old owner
//!   answers the claim like any member (its records, a promise), which makes it stop
//!   sequencing; the node layer forwards sends to the owner of its view.
//! - **No quorum.** Without a majority in its view a node does not sequence and refuses
//!   sends (`Unavailable`).
//! - **Exactly once.** A publish may carry a retry key. The owner keeps a window of the
//!   last `keys_max` keys of the log (`dedup`) and answers a publish whose key it holds
//!   with the original's seq (`Published { original: Some(payload) }`) — at once if it is
//!   acknowledged, with the original's ack if it is still pending — without sequencing it
//!   again. Records carry their key, so a new owner rebuilds the window from the log it
//!   takes over. A claim's merged log may hold a key twice (a stale owner sequenced the
//!   send and could not acknowledge it, another owner sequenced the retry): from the first
//!   copy that no owner would have sequenced (its key still in the window of the records
//!   before it) nothing was acknowledged, and the merged log ends before it.
//! - **Metadata.** Beside the log, one [`Meta`] per room (the engine's room metadata:
//!   creator, password hash, deleted seqs), written only by the owner ([`Input::Meta`],
//!   after the engine decided the change), held by the same replicas under the same
//!   fencing ([`Frame::MetaAppend`]) and the same ack rule: [`Frame::MetaDone`] only once
//!   every replica holds the owner's current version. A claim's answers carry it; the
//!   claimant keeps the one at the highest (epoch, version) and stamps it with its epoch.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::frame::{self, Frame, Meta, Record, RefusalCode};
use crate::placement;

pub mod dedup;
pub mod log;

/// A node's id (`--node-id`).
pub type NodeId = String;

/// Sends sequenced but not yet acknowledged, per room: beyond, `Overloaded`.
pub const PENDING_SENDS_MAX: usize = 1024;
/// Records sent to a replica per tick or per answer while it catches up.
pub const CATCH_UP_RECORDS_MAX: usize = 64;
/// Metadata requests waiting for the replicas' ack, per room: beyond, `Overloaded`.
pub const PENDING_META_MAX: usize = 256;
/// Records per replay answer, at most.
pub const REPLAY_RECORDS_MAX: u32 = 256;
/// A claim answer whose records would take more bytes than this (half a frame's limit) is
/// sent in parts: the acknowledged records the claimant lacks, a part at a time
/// (`Handoff { partial }`), then the answer itself.
pub const HANDOFF_BYTES_MAX: usize = frame::FRAME_BYTES_MAX / 2;

/// Rules the simulation may break on purpose to show its checker catches it. Production
/// code uses [`Rules::default`]; nothing else sets them.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Refuse records and claims at an epoch below (for claims: not above) the highest
    /// seen. Off, two nodes sequence one room in one epoch and seqs get reused.
    pub fencing: bool,
    /// Replicate to the successor only, whatever the configured size (the rule as first
    /// written in issue 12). With five members an acknowledged record is then held by two
    /// nodes, not a majority, and a claimant's majority can miss it: the simulation finds
    /// seqs reused. The default replicates to `quorum − 1` successors (one with three).
    pub successor_only: bool,
    /// Answer a publish whose key the owner holds with the original seq, and end a claim's
    /// merged log before a copy of a key. Off, a retry after a lost answer is stored
    /// again: the simulation finds messages at two seqs.
    pub dedup: bool,
    /// With `dedup`: end a claim's merged log before a copy of a key still in the window.
    /// Off (the window kept), a stale owner's unacknowledged copy of a send whose retry
    /// another owner sequenced survives a later claim: the simulation finds it delivered at
    /// a second seq.
    pub merge_drops_copies: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            fencing: true,
            successor_only: false,
            dedup: true,
            merge_drops_copies: true,
        }
    }
}

/// What a node sees: the live members, itself included, and the configured size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub members: Vec<NodeId>,
    pub configured: usize,
}

impl View {
    /// Members needed for a majority of the configured ones.
    pub fn quorum(&self) -> usize {
        self.configured / 2 + 1
    }

    /// Whether this view holds a majority of the configured members.
    pub fn has_quorum(&self) -> bool {
        self.members.len() >= self.quorum()
    }
}

/// An input to a room's state machine.
#[derive(Debug, Clone)]
pub enum Input {
    /// The node's view changed.
    View(View),
    /// A frame about this room from `from` (possibly this node itself).
    Frame { from: NodeId, frame: Frame },
    /// Time passed: resend what is unanswered.
    Tick,
    /// A metadata request of `from`'s `req` at this node, which the engine decided:
    /// `change` is the room's new metadata (`None`: unchanged). Answered
    /// [`Frame::MetaDone`] once every replica holds the metadata, or refused.
    Meta {
        from: NodeId,
        req: u64,
        change: Option<Vec<u8>>,
    },
    /// The link to `node` broke or was made again: frames sent to it may be lost, so its
    /// next `Interest` is answered with the metadata again.
    LinkReset { node: NodeId },
}

/// What the state machine asks its node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `frame` to `to` (possibly this node).
    Send { to: NodeId, frame: Frame },
    /// This node now sequences the room at `epoch`, from `next_seq`.
    Sequencing { epoch: u64, next_seq: u64 },
    /// This node stopped sequencing the room (epoch `epoch`).
    SteppedDown { epoch: u64 },
}

/// The node's role for the room.
#[derive(Debug, Clone)]
enum Role {
    Follower,
    Claiming {
        epoch: u64,
        /// The prefix this node holds and knows acknowledged: answers hand over what
        /// follows it.
        since: u64,
        answers: BTreeMap<NodeId, Answer>,
    },
    /// Boxed: an owner's state is far larger than the other roles'.
    Owner(Box<Owner>),
}

#[derive(Debug, Clone)]
struct Owner {
    epoch: u64,
    replicas: Vec<NodeId>,
    /// Per replica, the highest seq it holds contiguously at `epoch`.
    upto: BTreeMap<NodeId, u64>,
    /// Per replica, the highest seq sent to it (at most a window above `upto`).
    sent: BTreeMap<NodeId, u64>,
    /// Per replica, the acknowledged prefix its last `Append` said: a tick tells it a
    /// later one, so that a claim of its asks for little.
    told: BTreeMap<NodeId, u64>,
    /// The highest acknowledged seq at `epoch`; never decreases.
    committed: u64,
    /// seq → the publishes waiting for its ack: the one that sequenced it and the retries
    /// of its key that came meanwhile.
    pending: BTreeMap<u64, Vec<Waiter>>,
    /// Publishes in `pending`, at most [`PENDING_SENDS_MAX`].
    waiting: usize,
    /// The log's recent retry keys → their seqs.
    window: dedup::Window,
    /// Per replica, the metadata version it holds at `epoch` (0: none).
    meta_upto: BTreeMap<NodeId, u64>,
    /// Per replica, the version last sent to it (resent on a tick).
    meta_sent: BTreeMap<NodeId, u64>,
    /// Metadata requests waiting for every replica to hold their version or a later one:
    /// (that version, forwarder, its request id).
    meta_pending: Vec<(u64, NodeId, u64)>,
    /// The versions written at `epoch` that not every replica holds yet, oldest first (at
    /// most one per waiting request: `PENDING_META_MAX`).
    meta_unacked: std::collections::VecDeque<Meta>,
    /// The newest metadata every replica holds (a later version includes every earlier
    /// change): what requests are answered with and interested nodes are given.
    meta_acked: Option<Meta>,
}

/// A member's answer to a claim: its records after the claim's `since`, its metadata,
/// and the prefix it knows acknowledged.
#[derive(Debug, Clone)]
struct Answer {
    records: Vec<Record>,
    meta: Option<Meta>,
    committed: u64,
}

/// What a record weighs in a frame, about: its bytes and its fields.
fn frame_bytes(r: &Record) -> usize {
    r.payload.len() + r.key.as_ref().map_or(0, Vec::len) + 32
}

/// A publish waiting for the ack of its seq: its forwarder, the forwarder's request id,
/// and whether it is a retry of a key sequenced before.
#[derive(Debug, Clone)]
struct Waiter {
    from: NodeId,
    req: u64,
    duplicate: bool,
}

/// What survives a crash: the room's log and the epoch promise. A node writes what changed
/// ([`Room::take_changes`]) to its disk before any frame of the same turn leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    /// Highest epoch seen (promised): lower ones are refused.
    pub promised: u64,
    /// Who the promise at `promised` went to (a repeated claim gets the same answer).
    pub promised_to: Option<NodeId>,
    /// Records by seq, `log[i].seq == base + i + 1`: never a hole.
    pub log: Vec<Record>,
    /// Records up to this seq are not in `log`: acknowledged, on the node's disk only
    /// ([`log::Source`]). 0 unless the room is bounded ([`Room::with_log_tail`]).
    pub base: u64,
    /// `log[..held]` is the log of the owner of epoch `held_epoch` (what `Appended`
    /// reports): written or taken over by it, or acknowledged before it.
    pub held_epoch: u64,
    pub held: u64,
    /// `log[..committed]` are acknowledged records, as every node holding that prefix holds
    /// them (learnt as the owner, or from the owner's `Append`): never rewritten, never
    /// sent again in a take-over. At most the log's length (it may be above `held`: a new
    /// owner that knows less starts its replicas at what it knows).
    pub committed: u64,
    /// The room's metadata, the highest (epoch, version) received or written.
    pub meta: Option<Meta>,
}

/// [`Durable`] without its log: what a room's row on disk holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promise {
    pub promised: u64,
    pub promised_to: Option<NodeId>,
    pub held_epoch: u64,
    pub held: u64,
    pub committed: u64,
}

/// What changed in a room's [`Durable`] since the last [`Room::take_changes`]: what its node
/// must write (and, with `--durability sync`, fsync) before the turn's frames leave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The promise, if any part of it changed.
    pub promise: Option<Promise>,
    /// Records written or overwritten, consecutive seqs in order.
    pub records: Vec<Record>,
    /// The log got shorter: records after this seq are gone.
    pub truncated_after: Option<u64>,
    /// The room's metadata, if it changed (written whole).
    pub meta: Option<Meta>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.promise.is_none()
            && self.records.is_empty()
            && self.truncated_after.is_none()
            && self.meta.is_none()
    }
}

impl Durable {
    /// Everything but the log.
    pub fn promise(&self) -> Promise {
        Promise {
            promised: self.promised,
            promised_to: self.promised_to.clone(),
            held_epoch: self.held_epoch,
            held: self.held,
            committed: self.committed,
        }
    }

    /// The log's length: its last seq.
    pub fn len(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record at `seq`, if it is in memory.
    pub fn get(&self, seq: u64) -> Option<&Record> {
        let at = seq.checked_sub(self.base + 1)?;
        self.log.get(usize::try_from(at).ok()?)
    }

    /// `changes` applied, as a disk applies them: what a crash after the write keeps.
    pub fn apply(&mut self, changes: &Changes) {
        if let Some(after) = changes.truncated_after {
            assert!(after >= self.base, "an acknowledged prefix is never cut");
            self.log.truncate((after - self.base) as usize);
        }
        for record in &changes.records {
            assert!(
                record.seq > self.base,
                "an acknowledged prefix is never rewritten"
            );
            let at = (record.seq - self.base - 1) as usize;
            assert!(at <= self.log.len(), "changes leave no hole in a log");
            if at < self.log.len() {
                self.log[at] = record.clone();
            } else {
                self.log.push(record.clone());
            }
        }
        if let Some(p) = &changes.promise {
            self.promised = p.promised;
            self.promised_to = p.promised_to.clone();
            self.held_epoch = p.held_epoch;
            self.held = p.held;
            self.committed = p.committed;
        }
        if let Some(m) = &changes.meta {
            self.meta = Some(m.clone());
        }
    }
}

/// What [`Room::take_changes`] last handed out, to tell what changed since.
#[derive(Debug, Clone)]
struct Written {
    promise: Promise,
    meta: Option<Meta>,
    log_len: u64,
    /// The lowest seq − 1 written since (every record after it is handed out).
    dirty_from: Option<u64>,
}

impl Written {
    /// The log after seq `at` was written (pushed, overwritten or replaced).
    fn wrote_from(&mut self, at: u64) {
        self.dirty_from = Some(self.dirty_from.map_or(at, |f| f.min(at)));
    }
}

/// A node's interest in the room, as its owner keeps it.
#[derive(Debug, Clone)]
struct Registration {
    node: NodeId,
    /// The owner's tick when the node last registered.
    at: u64,
    /// The position of the metadata last sent to it (a renewal gets it only if newer, or
    /// once a lease has passed since), and the owner's tick then.
    meta: Option<(u64, u64)>,
    meta_at: u64,
}

/// One room on one node.
#[derive(Debug, Clone)]
pub struct Room {
    room: String,
    me: NodeId,
    rules: Rules,
    /// The window of retry keys an owner keeps (the same on every node: the claim merge
    /// replays it).
    keys_max: usize,
    view: View,
    role: Role,
    durable: Durable,
    written: Written,
    /// Nodes with subscribers in the room (registered with this node as owner), each with
    /// the tick of its last registration.
    interest: Vec<Registration>,
    /// Ticks this machine has had (the clock of `interest_lease`).
    ticks: u64,
    /// A registration not renewed within this many ticks is dropped (`None`: never): so
    /// a node that stopped owning the room forgets the nodes that now register elsewhere
    /// (and may be evicted), and an owner forgets a node that went away.
    interest_lease: Option<u64>,
    /// Acknowledged records kept in memory below the acknowledged prefix's end (`None`:
    /// every record); the others are read back from `source`.
    tail: Option<u64>,
    source: Arc<dyn log::Source>,
    /// [`HANDOFF_BYTES_MAX`]; smaller in the simulation.
    handoff_bytes_max: usize,
}

impl Room {
    /// A room on node `me`, from what its log held (`Durable::default()` for a new one); an
    /// owner remembers the last `keys_max` retry keys of the log.
    pub fn new(
        room: &str,
        me: &str,
        configured: usize,
        durable: Durable,
        keys_max: usize,
        rules: Rules,
    ) -> Self {
        Self {
            room: room.to_owned(),
            me: me.to_owned(),
            rules,
            keys_max,
            view: View {
                members: vec![me.to_owned()],
                configured,
            },
            role: Role::Follower,
            written: Written {
                promise: durable.promise(),
                meta: durable.meta.clone(),
                log_len: durable.len(),
                dirty_from: None,
            },
            durable,
            interest: Vec::new(),
            ticks: 0,
            interest_lease: None,
            tail: None,
            source: Arc::new(log::NoSource),
            handoff_bytes_max: HANDOFF_BYTES_MAX,
        }
    }

    /// Claim answers above `bytes` go in parts (the simulation makes every one do).
    #[must_use]
    pub fn with_handoff_bytes_max(mut self, bytes: usize) -> Self {
        self.handoff_bytes_max = bytes;
        self
    }

    /// An interest registration lapses unless its node registers again within `ticks`
    /// ticks of this machine (nodes renew theirs more often: the engine every
    /// `--cluster-interest-refresh-ms`, leased for three of those).
    #[must_use]
    pub fn with_interest_lease(mut self, ticks: u64) -> Self {
        self.interest_lease = Some(ticks.max(1));
        self
    }

    /// This room keeps in memory only the last `tail` acknowledged records and those after
    /// them; the others are read from `source` (its node's disk) when needed. What the
    /// durable state given to [`Room::new`] holds must be on that disk; the node calls
    /// [`Room::forget_written`] once what `take_changes` handed out is too.
    #[must_use]
    pub fn with_log_tail(mut self, source: Arc<dyn log::Source>, tail: u64) -> Self {
        self.tail = Some(tail);
        self.source = source;
        self.forget_written();
        self
    }

    /// Records in memory (the bound's measure).
    pub fn records_in_memory(&self) -> usize {
        self.durable.log.len()
    }

    /// Whether this machine may be dropped and later rebuilt from what its node wrote
    /// (`Room::new` of the written [`Durable`], then the node's current view) with nothing
    /// lost: the same as a restart of this one room, which the protocol tolerates, and
    /// here the same as keeping it. True only for a follower (not the owner, not claiming)
    /// that is not the owner in its view either (a tick would make it claim), has no
    /// interest registered (a node registers with the owner of its view when that view or
    /// its link changes, and renews it only every few seconds: a registration dropped
    /// here would leave the node without deliveries until then, should this node own the
    /// room again; with a lease, those a former owner holds lapse by themselves), and has nothing changed
    /// that [`Room::take_changes`] has not handed out. A follower's other state — the
    /// promise, the log, `held`, `committed`, the metadata — is all in its `Durable`, and
    /// its view is given again. The node must also know that what was handed out is
    /// written (not only queued).
    pub fn is_quiescent(&self) -> bool {
        matches!(self.role, Role::Follower)
            && !self.am_owner()
            && self.interest.is_empty()
            && !self.has_unhanded_changes()
    }

    /// Something changed in the durable state since the last [`Room::take_changes`].
    fn has_unhanded_changes(&self) -> bool {
        let (w, d) = (&self.written, &self.durable);
        let p = &w.promise;
        w.dirty_from.is_some()
            || w.log_len != d.len()
            || w.meta != d.meta
            || (p.promised, p.held_epoch, p.held, p.committed)
                != (d.promised, d.held_epoch, d.held, d.committed)
            || p.promised_to != d.promised_to
    }

    /// Every change [`Room::take_changes`] handed out is on the disk `source` reads (written,
    /// not only queued): the acknowledged records below the tail leave memory. Called
    /// before that, a read could find an older record at a seq whose overwrite is still
    /// queued, and take it for the acknowledged one.
    pub fn forget_written(&mut self) {
        let Some(tail) = self.tail else {
            return;
        };
        let floor = self.durable.committed.saturating_sub(tail);
        // Never a record not yet handed out (it would not be on disk).
        let floor = self
            .written
            .dirty_from
            .map_or(floor, |d| floor.min(d))
            .min(self.durable.len());
        if floor > self.durable.base {
            let gone = (floor - self.durable.base) as usize;
            self.durable.log.drain(..gone);
            self.durable.base = floor;
        }
    }

    /// Records `from..=to`, from memory or the disk; fewer if the disk lacks some (the
    /// ones returned are consecutive from `from`).
    fn read(&self, from: u64, to: u64) -> Vec<Record> {
        let mut out = Vec::new();
        if from > to {
            return out;
        }
        let base = self.durable.base;
        if from <= base {
            let want = (to.min(base) - from + 1) as usize;
            out = self.source.read(&self.room, from, want);
            let complete = out.len() == want && out.iter().zip(from..).all(|(r, seq)| r.seq == seq);
            if !complete {
                let good = out
                    .iter()
                    .zip(from..)
                    .take_while(|(r, seq)| r.seq == *seq)
                    .count();
                out.truncate(good);
                return out;
            }
        }
        let first = from.max(base + 1);
        if first <= to {
            let (a, b) = ((first - base - 1) as usize, (to - base) as usize);
            out.extend_from_slice(
                &self.durable.log[a.min(self.durable.log.len())..b.min(self.durable.log.len())],
            );
        }
        out
    }

    /// The record at `seq`, from memory or the disk.
    fn record_at(&self, seq: u64) -> Option<Record> {
        if let Some(r) = self.durable.get(seq) {
            return Some(r.clone());
        }
        self.read(seq, seq).pop()
    }

    /// The room's log and promise as they are in memory (what a crash keeps once written).
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// What changed in [`Room::durable`] since the last call: the node writes it before
    /// sending anything its outputs since then asked for.
    pub fn take_changes(&mut self) -> Changes {
        let promise = self.durable.promise();
        let promise = (promise != self.written.promise).then(|| {
            self.written.promise = promise.clone();
            promise
        });
        let len = self.durable.len();
        let truncated_after = (len < self.written.log_len).then_some(len);
        let records = match self.written.dirty_from.take() {
            Some(from) if from < len => {
                debug_assert!(from >= self.durable.base, "forgotten before handed out");
                let at = from.saturating_sub(self.durable.base) as usize;
                self.durable.log[at..].to_vec()
            }
            _ => Vec::new(),
        };
        self.written.log_len = len;
        let meta = match &self.durable.meta {
            Some(m) if self.written.meta.as_ref() != Some(m) => {
                self.written.meta = Some(m.clone());
                Some(m.clone())
            }
            _ => None,
        };
        Changes {
            promise,
            records,
            truncated_after,
            meta,
        }
    }

    /// The epoch this node sequences the room at, if it does.
    pub fn owner_epoch(&self) -> Option<u64> {
        match &self.role {
            Role::Owner(o) => Some(o.epoch),
            _ => None,
        }
    }

    /// The acknowledged record at `seq`, if this node sequences the room and holds it
    /// (in memory or on its disk).
    pub fn committed_record(&self, seq: u64) -> Option<Record> {
        let committed = self.committed()?;
        if seq == 0 || seq > committed {
            return None;
        }
        self.record_at(seq)
    }

    /// The room's metadata as this node holds it (as the owner: its latest, which a
    /// request builds on).
    pub fn meta(&self) -> Option<&Meta> {
        self.durable.meta.as_ref()
    }

    /// Why a metadata request at this node is refused now, if it is: it is not the
    /// sequencing owner, or too many wait.
    pub fn meta_refusal(&self) -> Option<RefusalCode> {
        match &self.role {
            Role::Owner(o) if o.meta_pending.len() >= PENDING_META_MAX => {
                Some(RefusalCode::Overloaded)
            }
            _ => self.role_refusal(),
        }
    }

    fn role_refusal(&self) -> Option<RefusalCode> {
        match &self.role {
            Role::Owner(_) => None,
            Role::Claiming { .. } => Some(RefusalCode::Unavailable),
            Role::Follower if !self.view.has_quorum() => Some(RefusalCode::Unavailable),
            Role::Follower => Some(RefusalCode::NotOwner),
        }
    }

    /// The highest acknowledged seq, if this node sequences the room.
    pub fn committed(&self) -> Option<u64> {
        match &self.role {
            Role::Owner(o) => Some(o.committed),
            _ => None,
        }
    }

    /// The owner of the room in this node's view (with a majority), if any.
    pub fn owner_in_view(&self) -> Option<&NodeId> {
        if !self.view.has_quorum() {
            return None;
        }
        placement::owner(&self.room, &self.view.members)
    }

    /// The replicas of the room in this node's view: the `quorum − 1` members after the
    /// owner.
    fn replicas_in_view(&self) -> Vec<NodeId> {
        let order = placement::order(&self.room, &self.view.members);
        let replicas = if self.rules.successor_only {
            1
        } else {
            self.view.quorum() - 1
        };
        order.into_iter().skip(1).take(replicas).cloned().collect()
    }

    fn am_owner(&self) -> bool {
        self.owner_in_view() == Some(&self.me)
    }

    /// One input; the outputs in order.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::View(view) => self.on_view(view, &mut out),
            Input::Tick => self.on_tick(&mut out),
            Input::Frame { from, frame } => self.on_frame(from, frame, &mut out),
            Input::Meta { from, req, change } => self.on_meta(from, req, change, &mut out),
            Input::LinkReset { node } => {
                for r in self.interest.iter_mut().filter(|r| r.node == node) {
                    r.meta = None;
                }
            }
        }
        out
    }

    fn send(&self, out: &mut Vec<Output>, to: &str, frame: Frame) {
        out.push(Output::Send {
            to: to.to_owned(),
            frame,
        });
    }

    fn on_view(&mut self, view: View, out: &mut Vec<Output>) {
        self.view = view;
        if !self.am_owner() {
            self.step_down(out);
            return;
        }
        match &self.role {
            Role::Follower => self.claim(out),
            Role::Claiming { .. } => {}
            Role::Owner(_) => {
                self.replicas_changed(out);
                self.confirm(out);
            }
        }
    }

    /// After a view change, an owner checks it still is one. Its view may have kept a
    /// majority while others, not seeing it, claimed a later epoch it never heard of (a
    /// one-way partition; simulation seed 12408 of 20,000): with nothing new to send it
    /// would never learn, and would answer replays without what the later owner
    /// acknowledged. Each replica is sent again the last record it holds and the metadata
    /// (a claim of its own epoch when it has neither): one that promised a later epoch
    /// refuses (`StaleEpoch`), this owner steps down and claims above it; the others answer
    /// what they hold, unchanged.
    fn confirm(&mut self, out: &mut Vec<Output>) {
        let Role::Owner(o) = &self.role else {
            return;
        };
        if self.durable.is_empty() && self.durable.meta.is_none() {
            let claim = Frame::Claim {
                room: self.room.clone(),
                epoch: o.epoch,
                since: self.durable.committed,
            };
            for r in &o.replicas {
                out.push(Output::Send {
                    to: r.clone(),
                    frame: claim.clone(),
                });
            }
            return;
        }
        for r in &o.replicas {
            // A replica behind the records in memory gets appends from the disk anyway.
            let upto = o.upto.get(r).copied().unwrap_or(0);
            if let Some(record) = self.record_at(upto) {
                let frame = Frame::Append {
                    room: self.room.clone(),
                    epoch: o.epoch,
                    committed: self.durable.committed,
                    record: record.clone(),
                };
                out.push(Output::Send {
                    to: r.clone(),
                    frame,
                });
            }
            if let Some(meta) = &self.durable.meta {
                let frame = Frame::MetaAppend {
                    room: self.room.clone(),
                    meta: meta.clone(),
                };
                out.push(Output::Send {
                    to: r.clone(),
                    frame,
                });
            }
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        self.ticks += 1;
        if let Some(lease) = self.interest_lease {
            let now = self.ticks;
            self.interest.retain(|r| now - r.at <= lease);
        }
        if !self.am_owner() {
            self.step_down(out);
            return;
        }
        match &self.role {
            Role::Follower => self.claim(out),
            Role::Claiming {
                epoch,
                since,
                answers,
            } => {
                let claim = Frame::Claim {
                    room: self.room.clone(),
                    epoch: *epoch,
                    since: *since,
                };
                for m in &self.view.members {
                    if !answers.contains_key(m) {
                        self.send(out, m, claim.clone());
                    }
                }
                // A take-over postponed for a read the disk could not serve is tried again
                // (every answer may be in: none would come to retry it).
                self.maybe_take_over(out);
            }
            Role::Owner(_) => self.resend(out),
        }
    }

    fn on_frame(&mut self, from: NodeId, frame: Frame, out: &mut Vec<Output>) {
        match frame {
            Frame::Publish {
                req, key, payload, ..
            } => self.on_publish(from, req, key, payload, out),
            Frame::Append {
                epoch,
                committed,
                record,
                ..
            } => self.on_append(from, epoch, committed, record, out),
            Frame::Appended { epoch, upto, .. } => self.on_appended(from, epoch, upto, out),
            Frame::Claim { epoch, since, .. } => self.on_claim(from, epoch, since, out),
            Frame::Handoff {
                epoch,
                committed,
                records,
                partial: true,
                ..
            } => self.on_handoff_part(epoch, records, committed, out),
            Frame::Handoff {
                epoch,
                committed,
                records,
                meta,
                partial: false,
                ..
            } => {
                let answer = Answer {
                    records,
                    meta,
                    committed,
                };
                self.on_handoff(from, epoch, answer, out);
            }
            Frame::MetaAppend { meta, .. } => self.on_meta_append(from, meta, out),
            Frame::MetaAppended { epoch, version, .. } => {
                self.on_meta_appended(from, epoch, version, out);
            }
            Frame::Refused { epoch, code, .. } => self.on_refused(epoch, code, out),
            Frame::ReplayRequest {
                req,
                after_seq,
                max,
                ..
            } => self.on_replay(from, req, after_seq, max, out),
            Frame::Interest { .. } => self.on_interest(from, out),
            Frame::Uninterest { .. } => self.interest.retain(|r| r.node != from),
            // For the node layer (answers to its forwarded requests), not the owner.
            Frame::Hello { .. }
            | Frame::Published { .. }
            | Frame::Deliver { .. }
            | Frame::ReplayRecords { .. }
            | Frame::MetaRequest { .. }
            | Frame::MetaDone { .. }
            | Frame::MetaRefused { .. }
            | Frame::MetaDeliver { .. } => {}
        }
    }

    /// Start claiming at `max(epoch seen) + 1`; this node promises to itself first.
    fn claim(&mut self, out: &mut Vec<Output>) {
        // u64::MAX epochs are 2^64 ownership changes away; only a broken peer gets there,
        // and then the room stays unavailable rather than wrapping to an old epoch.
        let Some(epoch) = self.durable.promised.checked_add(1) else {
            return;
        };
        let since = self.durable.committed;
        // What follows its own acknowledged prefix is in memory (the tail is below it).
        let Some(mine) = self.answer(since) else {
            return;
        };
        self.durable.promised = epoch;
        self.durable.promised_to = Some(self.me.clone());
        let mut answers = BTreeMap::new();
        answers.insert(self.me.clone(), mine);
        self.role = Role::Claiming {
            epoch,
            since,
            answers,
        };
        self.ask_members(epoch, since, out);
    }

    /// What this node hands a claimant that holds the acknowledged prefix up to `since`:
    /// the records after it (the prefix is the same everywhere it is held). `None` if the
    /// disk could not give them all: no answer is better than a short one.
    fn answer(&self, since: u64) -> Option<Answer> {
        let len = self.durable.len();
        let records = self.read(since + 1, len);
        if records.len() as u64 != len.saturating_sub(since) {
            return None;
        }
        Some(Answer {
            records,
            meta: self.durable.meta.clone(),
            committed: self.durable.committed,
        })
    }

    /// When what follows `since` is too big for one answer and this node knows some of it
    /// acknowledged: the first part of that, at most `handoff_bytes_max` (one record at
    /// least). `None`: the whole answer fits, or there is nothing acknowledged to offer, or
    /// the disk could not give the records now (then the whole answer is tried).
    fn part_after(&self, since: u64) -> Option<Vec<Record>> {
        let (len, committed) = (self.durable.len(), self.durable.committed);
        if committed <= since {
            return None;
        }
        let mut part = Vec::new();
        let mut bytes = 0;
        let mut next = since + 1;
        while next <= len {
            let chunk = self.read(next, (next + 255).min(len));
            if chunk.is_empty() {
                return None;
            }
            for r in chunk {
                bytes += frame_bytes(&r);
                if bytes > self.handoff_bytes_max {
                    if part.is_empty() && r.seq <= committed {
                        part.push(r);
                    }
                    return Some(part).filter(|p| !p.is_empty());
                }
                if r.seq <= committed {
                    part.push(r);
                }
                next += 1;
            }
        }
        None
    }

    /// Sends the claim of `epoch` from `since` to every other member; with enough answers
    /// already (a single-member quorum), takes over.
    fn ask_members(&mut self, epoch: u64, since: u64, out: &mut Vec<Output>) {
        let claim = Frame::Claim {
            room: self.room.clone(),
            epoch,
            since,
        };
        for m in self.view.members.iter().filter(|m| **m != self.me) {
            self.send(out, m, claim.clone());
        }
        self.maybe_take_over(out);
    }

    fn on_claim(&mut self, from: NodeId, epoch: u64, since: u64, out: &mut Vec<Output>) {
        let repeated = epoch == self.durable.promised
            && self.durable.promised_to.as_deref() == Some(from.as_str());
        let stale = epoch <= self.durable.promised && !repeated;
        if stale && self.rules.fencing {
            let promised = self.durable.promised;
            self.refuse(out, &from, 0, promised, RefusalCode::StaleEpoch);
            return;
        }
        if self.owner_in_view() != Some(&from) {
            self.refuse(out, &from, 0, epoch, RefusalCode::NotOwner);
            return;
        }
        if let Some(records) = self.part_after(since) {
            // Too much for one frame: the acknowledged records first, without a promise.
            let part = Frame::Handoff {
                room: self.room.clone(),
                epoch,
                committed: self.durable.committed,
                records,
                meta: None,
                partial: true,
            };
            return self.send(out, &from, part);
        }
        // Records the disk cannot give now: no promise, no answer; the claim comes again.
        let Some(Answer {
            records,
            meta,
            committed,
            ..
        }) = self.answer(since)
        else {
            return;
        };
        if !repeated {
            self.step_down(out);
        }
        self.durable.promised = self.durable.promised.max(epoch);
        self.durable.promised_to = Some(from.clone());
        let handoff = Frame::Handoff {
            room: self.room.clone(),
            epoch,
            committed,
            records,
            meta,
            partial: false,
        };
        self.send(out, &from, handoff);
    }

    /// A part of a claim answer: acknowledged records after this claimant's `since`, which
    /// it takes as its own (they are the same wherever they are held) before it claims
    /// again from the end of them.
    fn on_handoff_part(
        &mut self,
        epoch: u64,
        records: Vec<Record>,
        committed: u64,
        out: &mut Vec<Output>,
    ) {
        let Role::Claiming {
            epoch: mine, since, ..
        } = &self.role
        else {
            return;
        };
        let since = *since;
        let valid = !records.is_empty()
            && records.iter().zip(since + 1..).all(|(r, seq)| r.seq == seq)
            && records.last().is_some_and(|r| r.seq <= committed);
        if *mine != epoch || !valid {
            return;
        }
        let d = &mut self.durable;
        debug_assert!(since >= d.base && since <= d.len());
        for record in records {
            let at = (record.seq - d.base - 1) as usize;
            if at < d.log.len() {
                d.log[at] = record;
            } else {
                d.log.push(record);
            }
            d.committed = d.committed.max(d.base + at as u64 + 1);
        }
        // What `held` said of an older owner's log may no longer be true of what follows.
        d.held = d.held.min(since);
        self.written.wrote_from(since);
        let since = self.durable.committed;
        let Some(mine) = self.answer(since) else {
            return;
        };
        let Role::Claiming {
            since: at, answers, ..
        } = &mut self.role
        else {
            return;
        };
        *at = since;
        answers.clear();
        answers.insert(self.me.clone(), mine);
        self.ask_members(epoch, since, out);
    }

    fn on_handoff(&mut self, from: NodeId, epoch: u64, answer: Answer, out: &mut Vec<Output>) {
        if let Role::Claiming {
            epoch: mine,
            since,
            answers,
        } = &mut self.role
        {
            // Records after `since` with a hole or a seq out of place are not a log, and a
            // prefix said acknowledged beyond them is not one: ignore the answer.
            let valid = answer
                .records
                .iter()
                .enumerate()
                .all(|(i, r)| r.seq == *since + i as u64 + 1)
                && answer.committed <= *since + answer.records.len() as u64;
            if *mine == epoch && valid {
                answers.insert(from, answer);
            }
        }
        self.maybe_take_over(out);
    }

    /// The answers' records after `since` merged, and the window of retry keys after them.
    /// The prefix up to `since` is acknowledged: the same wherever it is held, kept as it
    /// is; only what follows is merged (and then stamped).
    fn merged_after(
        &self,
        since: u64,
        answers: &BTreeMap<NodeId, Answer>,
    ) -> Option<(Vec<Record>, dedup::Window)> {
        let mut merged = merge(since, answers.values().map(|a| &a.records));
        if !self.rules.dedup {
            return Some((merged, dedup::Window::new(self.keys_max)));
        }
        let mut window = self.window_through(since)?;
        if self.rules.merge_drops_copies {
            // A copy of a key still in the window was never acknowledged, nor was anything
            // after it (docs/REPLICATION.md "Exactly once"): its send's retry is the one
            // that counts, at its earlier seq.
            if let Some(at) = window.first_copy(&merged) {
                merged.truncate(at);
            }
        }
        for record in &merged {
            window.insert(record);
        }
        Some((merged, window))
    }

    /// The window of retry keys after the log's records up to `seq` (acknowledged, so the
    /// same on every node): built from the records back to the `keys_max`-th keyed one, in
    /// memory or on disk. `None` if the disk could not give them.
    fn window_through(&self, seq: u64) -> Option<dedup::Window> {
        const CHUNK: u64 = 256;
        let mut records: Vec<Record> = Vec::new();
        let mut keyed = 0;
        let mut hi = seq;
        while hi > 0 && keyed < self.keys_max {
            let lo = hi.saturating_sub(CHUNK - 1).max(1);
            let chunk = self.read(lo, hi);
            if chunk.len() as u64 != hi - lo + 1 {
                return None;
            }
            keyed += chunk.iter().filter(|r| r.key.is_some()).count();
            records.splice(0..0, chunk);
            hi = lo - 1;
        }
        // A log of the real machines holds no key twice within a window's reach, so the
        // window after these records is the window after the whole prefix.
        let skip = records
            .iter()
            .filter(|r| r.key.is_some())
            .count()
            .saturating_sub(self.keys_max);
        let from = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key.is_some())
            .nth(skip)
            .map_or(records.len(), |(i, _)| i);
        Some(dedup::Window::of_log(self.keys_max, &records[from..]))
    }

    /// With a majority of answers: merge, stamp, sequence.
    fn maybe_take_over(&mut self, out: &mut Vec<Output>) {
        let Role::Claiming {
            epoch,
            since,
            answers,
        } = &self.role
        else {
            return;
        };
        if answers.len() < self.view.quorum() {
            return;
        }
        let (epoch, since) = (*epoch, *since);
        let Some((merged, window)) = self.merged_after(since, answers) else {
            // The disk could not give the window's records: the next answer tries again.
            return;
        };
        let len = since + merged.len() as u64;
        // What any answer knows acknowledged is, after the merge, the acknowledged records
        // (their copies carry a higher epoch than any rival at their seq).
        let committed = answers
            .values()
            .map(|a| a.committed)
            .fold(since, u64::max)
            .min(len);
        let meta = answers
            .values()
            .filter_map(|a| a.meta.as_ref())
            .max_by_key(|m| m.position())
            .map(|m| Meta { epoch, ..m.clone() });
        // A replica that answered holds the acknowledged prefix it said it knows.
        let replicas = self.replicas_in_view();
        let upto: BTreeMap<NodeId, u64> = replicas
            .iter()
            .map(|r| {
                let known = answers.get(r).map_or(0, |a| a.committed);
                (r.clone(), known.min(committed))
            })
            .collect();
        debug_assert!(since >= self.durable.base, "the tail is below the prefix");
        let keep = since.saturating_sub(self.durable.base) as usize;
        self.durable.log.truncate(keep);
        self.durable
            .log
            .extend(merged.into_iter().map(|r| Record { epoch, ..r }));
        self.written.wrote_from(since);
        self.durable.held_epoch = epoch;
        self.durable.held = len;
        self.durable.committed = committed;
        self.durable.meta = meta.clone();
        self.role = Role::Owner(Box::new(Owner {
            epoch,
            replicas,
            told: upto.keys().map(|r| (r.clone(), 0)).collect(),
            sent: upto.clone(),
            meta_upto: upto.keys().map(|r| (r.clone(), 0)).collect(),
            meta_sent: upto.keys().map(|r| (r.clone(), 0)).collect(),
            upto,
            committed,
            pending: BTreeMap::new(),
            waiting: 0,
            window,
            meta_pending: Vec::new(),
            meta_unacked: meta.into_iter().collect(),
            meta_acked: None,
        }));
        out.push(Output::Sequencing {
            epoch,
            next_seq: self.durable.held + 1,
        });
        self.pump(out);
        self.advance(out);
        self.advance_meta(out);
    }

    fn replicas_changed(&mut self, out: &mut Vec<Output>) {
        let replicas = self.replicas_in_view();
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        if o.replicas == replicas {
            return;
        }
        // A new replica starts from nothing: it gets the room's records before any
        // further seq is acknowledged (`advance` takes the minimum over replicas).
        o.upto = replicas
            .iter()
            .map(|r| (r.clone(), o.upto.get(r).copied().unwrap_or(0)))
            .collect();
        o.sent = o.upto.clone();
        o.meta_upto = replicas
            .iter()
            .map(|r| (r.clone(), o.meta_upto.get(r).copied().unwrap_or(0)))
            .collect();
        o.meta_sent = o.meta_upto.clone();
        o.replicas = replicas;
        self.pump(out);
        self.advance(out);
        self.advance_meta(out);
    }

    /// Send every replica the records after those sent to it, at most
    /// [`CATCH_UP_RECORDS_MAX`] beyond what it holds.
    fn pump(&mut self, out: &mut Vec<Output>) {
        let Role::Owner(o) = &self.role else {
            return;
        };
        let len = self.durable.len();
        // Per replica, the seqs to send now: after what was sent, within the window.
        let due: Vec<(NodeId, u64, u64)> = o
            .replicas
            .iter()
            .map(|r| {
                let upto = o.upto.get(r).copied().unwrap_or(0);
                let sent = o.sent.get(r).copied().unwrap_or(0).max(upto);
                let end = (upto + CATCH_UP_RECORDS_MAX as u64).min(len);
                (r.clone(), sent, end)
            })
            .collect();
        let committed = self.durable.committed;
        for (r, sent, end) in due {
            // A lagging replica's records may come from the disk; it sends what it can.
            let records = self.read(sent + 1, end);
            let Role::Owner(o) = &mut self.role else {
                return;
            };
            o.sent.insert(r.clone(), sent + records.len() as u64);
            if !records.is_empty() {
                o.told.insert(r.clone(), committed);
            }
            for record in records {
                let frame = Frame::Append {
                    room: self.room.clone(),
                    epoch: o.epoch,
                    committed,
                    record,
                };
                out.push(Output::Send {
                    to: r.clone(),
                    frame,
                });
            }
        }
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        let Some(meta) = &self.durable.meta else {
            return;
        };
        for r in &o.replicas {
            let sent = o.meta_sent.entry(r.clone()).or_insert(0);
            if *sent < meta.version {
                *sent = meta.version;
                let frame = Frame::MetaAppend {
                    room: self.room.clone(),
                    meta: meta.clone(),
                };
                out.push(Output::Send {
                    to: r.clone(),
                    frame,
                });
            }
        }
    }

    /// A tick: what was sent and not confirmed may be lost; send it again. A replica
    /// that holds everything but was told an older acknowledged prefix gets the last
    /// record again with the current one.
    fn resend(&mut self, out: &mut Vec<Output>) {
        // The last record, which a replica holding everything is sent again (from the
        // disk when the tail is short).
        let (held, committed) = (self.durable.held, self.durable.committed);
        let behind = |o: &Owner, r: &NodeId| {
            o.upto.get(r).copied().unwrap_or(0) == held
                && o.told.get(r).copied().unwrap_or(0) < committed
        };
        let wanted =
            matches!(&self.role, Role::Owner(o) if o.replicas.iter().any(|r| behind(o, r)));
        let last = if wanted { self.record_at(held) } else { None };
        if let Role::Owner(o) = &mut self.role {
            o.sent = o.upto.clone();
            o.meta_sent = o.meta_upto.clone();
            let behind: Vec<NodeId> = o
                .replicas
                .iter()
                .filter(|r| behind(o, r))
                .cloned()
                .collect();
            for r in &behind {
                let Some(record) = &last else {
                    continue;
                };
                o.told.insert(r.clone(), committed);
                let frame = Frame::Append {
                    room: self.room.clone(),
                    epoch: o.epoch,
                    committed,
                    record: record.clone(),
                };
                out.push(Output::Send {
                    to: r.clone(),
                    frame,
                });
            }
        }
        self.pump(out);
    }

    fn step_down(&mut self, out: &mut Vec<Output>) {
        match std::mem::replace(&mut self.role, Role::Follower) {
            Role::Follower => {}
            Role::Claiming { .. } => {}
            Role::Owner(o) => {
                for w in o.pending.into_values().flatten() {
                    self.refuse(out, &w.from, w.req, o.epoch, RefusalCode::Unavailable);
                }
                for (_, to, req) in o.meta_pending {
                    self.refuse(out, &to, req, o.epoch, RefusalCode::Unavailable);
                }
                out.push(Output::SteppedDown { epoch: o.epoch });
            }
        }
    }

    fn refuse(&self, out: &mut Vec<Output>, to: &str, req: u64, epoch: u64, code: RefusalCode) {
        let frame = Frame::Refused {
            req,
            room: self.room.clone(),
            epoch,
            code,
        };
        self.send(out, to, frame);
    }

    fn on_publish(
        &mut self,
        from: NodeId,
        req: u64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        out: &mut Vec<Output>,
    ) {
        let code = match &self.role {
            Role::Owner(o) => {
                let original = key.as_deref().and_then(|k| o.window.seq_of(k));
                let full = o.waiting >= PENDING_SENDS_MAX;
                match original {
                    Some(seq) if self.rules.dedup => self.answer_retry(from, req, seq, out),
                    _ if full => {
                        let epoch = self.durable.promised;
                        self.refuse(out, &from, req, epoch, RefusalCode::Overloaded);
                    }
                    _ => self.sequence(from, req, key, payload, out),
                }
                return;
            }
            Role::Claiming { .. } => RefusalCode::Unavailable,
            Role::Follower if !self.view.has_quorum() => RefusalCode::Unavailable,
            Role::Follower => RefusalCode::NotOwner,
        };
        let epoch = self.durable.promised;
        self.refuse(out, &from, req, epoch, code);
    }

    /// A publish whose key was sequenced at `seq`: answered with that seq, now if it is
    /// acknowledged, else with its ack (the bound on waiting publishes applies).
    fn answer_retry(&mut self, from: NodeId, req: u64, seq: u64, out: &mut Vec<Output>) {
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        debug_assert!(seq <= self.durable.held, "the window holds keys of the log");
        if seq <= o.committed {
            let epoch = o.epoch;
            let Some(original) = self.record_at(seq).map(|r| r.payload) else {
                // The disk could not give it now: the client retries.
                return self.refuse(out, &from, req, epoch, RefusalCode::Unavailable);
            };
            let Role::Owner(o) = &self.role else {
                return;
            };
            let frame = Frame::Published {
                req,
                room: self.room.clone(),
                epoch: o.epoch,
                seq,
                original: Some(original),
            };
            return self.send(out, &from, frame);
        }
        if o.waiting >= PENDING_SENDS_MAX {
            let epoch = o.epoch;
            return self.refuse(out, &from, req, epoch, RefusalCode::Overloaded);
        }
        o.waiting += 1;
        let waiter = Waiter {
            from,
            req,
            duplicate: true,
        };
        o.pending.entry(seq).or_default().push(waiter);
    }

    /// The owner's own log commit, then the record to every replica.
    fn sequence(
        &mut self,
        from: NodeId,
        req: u64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        out: &mut Vec<Output>,
    ) {
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        let seq = self.durable.len() + 1;
        debug_assert_eq!(self.durable.held, seq - 1);
        debug_assert_eq!(self.durable.held_epoch, o.epoch);
        let record = Record {
            epoch: o.epoch,
            seq,
            key,
            payload,
        };
        if self.rules.dedup {
            o.window.insert(&record);
        }
        self.durable.log.push(record);
        self.durable.held = seq;
        self.written.wrote_from(seq - 1);
        o.waiting += 1;
        let waiter = Waiter {
            from,
            req,
            duplicate: false,
        };
        o.pending.entry(seq).or_default().push(waiter);
        self.pump(out);
        self.advance(out);
    }

    /// Fencing of what an owner sends its replicas (a record, the metadata) at `epoch`:
    /// refused below the promise, or from a node that is not the owner to one that is not
    /// a replica in this view; a higher epoch is promised (this node stops owning).
    fn admit_from_owner(&mut self, from: &NodeId, epoch: u64, out: &mut Vec<Output>) -> bool {
        if epoch < self.durable.promised && self.rules.fencing {
            let promised = self.durable.promised;
            self.refuse(out, from, 0, promised, RefusalCode::StaleEpoch);
            return false;
        }
        let replica = self.replicas_in_view().contains(&self.me);
        if self.owner_in_view() != Some(from) || !replica {
            self.refuse(out, from, 0, epoch, RefusalCode::NotReplica);
            return false;
        }
        if epoch > self.durable.promised {
            self.step_down(out);
            self.durable.promised = epoch;
            self.durable.promised_to = Some(from.clone());
        }
        true
    }

    fn on_append(
        &mut self,
        from: NodeId,
        epoch: u64,
        committed: u64,
        record: Record,
        out: &mut Vec<Output>,
    ) {
        if !self.admit_from_owner(&from, epoch, out) {
            return;
        }
        let d = &mut self.durable;
        if d.held_epoch != epoch {
            // The acknowledged prefix both this node and the owner know is the owner's
            // log there: held at its epoch without being sent again.
            d.held_epoch = epoch;
            d.held = d.committed.min(committed);
        }
        // A record is never from a later epoch than its owner's (a broken peer's is not
        // taken).
        if record.seq == d.held + 1 && record.epoch <= epoch {
            // At or below `base` the record is acknowledged, the one this node holds on
            // disk: held, not written again.
            if record.seq > d.base {
                let at = (record.seq - d.base - 1) as usize;
                if at < d.log.len() {
                    d.log[at] = record;
                } else {
                    d.log.push(record);
                }
                self.written.wrote_from(d.held);
            }
            d.held += 1;
        }
        // What the owner knows acknowledged, within what this node holds of its log.
        d.committed = d.committed.max(committed.min(d.held));
        // A gap or a repeat: say what is held, the owner sends the rest in order.
        let d = &self.durable;
        let upto = if d.held_epoch == epoch { d.held } else { 0 };
        self.send(
            out,
            &from,
            Frame::Appended {
                room: self.room.clone(),
                epoch,
                upto,
            },
        );
    }

    fn on_appended(&mut self, from: NodeId, epoch: u64, upto: u64, out: &mut Vec<Output>) {
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        if o.epoch != epoch {
            return;
        }
        let Some(held) = o.upto.get_mut(&from) else {
            return;
        };
        // Never above what this owner holds: a confused peer cannot ack the unsent.
        *held = (*held).max(upto.min(self.durable.held));
        self.pump(out);
        self.advance(out);
    }

    /// Acknowledge every seq held by the owner and all replicas; fan it out.
    fn advance(&mut self, out: &mut Vec<Output>) {
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        let held = o.upto.values().copied().min().unwrap_or(u64::MAX);
        let acked = held.min(self.durable.held);
        if acked <= o.committed {
            return;
        }
        let from = o.committed;
        o.committed = acked;
        self.durable.committed = self.durable.committed.max(acked);
        for seq in from + 1..=acked {
            // Above the acknowledged prefix: in memory.
            let Some(record) = self.durable.get(seq) else {
                debug_assert!(false, "seq {seq} above the prefix is not in memory");
                break;
            };
            debug_assert_eq!(record.seq, seq);
            for w in o.pending.remove(&seq).unwrap_or_default() {
                o.waiting -= 1;
                let frame = Frame::Published {
                    req: w.req,
                    room: self.room.clone(),
                    epoch: o.epoch,
                    seq,
                    original: w.duplicate.then(|| record.payload.clone()),
                };
                out.push(Output::Send { to: w.from, frame });
            }
            let frame = Frame::Deliver {
                room: self.room.clone(),
                record: record.clone(),
            };
            to_each(out, self.interest.iter().map(|r| &r.node), &frame);
        }
    }

    /// The owner writes the engine's decision (if it changed anything) and answers once
    /// every replica holds that version (or a later one).
    fn on_meta(&mut self, from: NodeId, req: u64, change: Option<Vec<u8>>, out: &mut Vec<Output>) {
        if let Some(code) = self.meta_refusal() {
            let epoch = self.durable.promised;
            self.refuse(out, &from, req, epoch, code);
            return;
        }
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        let version = self.durable.meta.as_ref().map_or(0, |m| m.version);
        let version = match change {
            Some(bytes) => {
                let meta = Meta {
                    epoch: o.epoch,
                    version: version + 1,
                    bytes,
                };
                o.meta_unacked.push_back(meta.clone());
                self.durable.meta = Some(meta);
                version + 1
            }
            None => version,
        };
        o.meta_pending.push((version, from, req));
        self.pump(out);
        self.advance_meta(out);
    }

    fn on_meta_append(&mut self, from: NodeId, meta: Meta, out: &mut Vec<Output>) {
        if !self.admit_from_owner(&from, meta.epoch, out) {
            return;
        }
        let epoch = meta.epoch;
        let d = &mut self.durable;
        if d.meta
            .as_ref()
            .is_none_or(|m| m.position() < meta.position())
        {
            d.meta = Some(meta);
        }
        let held = d.meta.as_ref().filter(|m| m.epoch == epoch);
        let version = held.map_or(0, |m| m.version);
        let frame = Frame::MetaAppended {
            room: self.room.clone(),
            epoch,
            version,
        };
        self.send(out, &from, frame);
    }

    fn on_meta_appended(&mut self, from: NodeId, epoch: u64, version: u64, out: &mut Vec<Output>) {
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        if o.epoch != epoch {
            return;
        }
        let current = self.durable.meta.as_ref().map_or(0, |m| m.version);
        let Some(held) = o.meta_upto.get_mut(&from) else {
            return;
        };
        // Never above what this owner holds: a confused peer cannot ack the unwritten.
        *held = (*held).max(version.min(current));
        self.advance_meta(out);
    }

    /// The newest version every replica holds becomes the acknowledged one: it goes to
    /// every interested node, and answers every request that waited for it or an earlier
    /// version.
    fn advance_meta(&mut self, out: &mut Vec<Output>) {
        let Role::Owner(o) = &mut self.role else {
            return;
        };
        let current = self.durable.meta.as_ref().map_or(0, |m| m.version);
        let held = o.meta_upto.values().copied().min().unwrap_or(u64::MAX);
        let held = held.min(current);
        let acked = o.meta_acked.as_ref().map_or(0, |m| m.version);
        if held > acked {
            // Every version a replica reports was sent, so it is among the unacked ones.
            if let Some(at) = o.meta_unacked.iter().position(|m| m.version == held) {
                let meta = o.meta_unacked[at].clone();
                o.meta_unacked.drain(..=at);
                o.meta_acked = Some(meta.clone());
                let frame = Frame::MetaDeliver {
                    room: self.room.clone(),
                    meta: meta.clone(),
                };
                to_each(out, self.interest.iter().map(|r| &r.node), &frame);
                let (sent, at) = (Some(meta.position()), self.ticks);
                for r in &mut self.interest {
                    (r.meta, r.meta_at) = (sent, at);
                }
            }
        }
        let Some(meta) = o.meta_acked.clone() else {
            if self.durable.meta.is_none() {
                // Nothing written: nothing to answer with. The engine always writes before
                // it reads (a request on a room without metadata creates it or fails).
                for (_, to, req) in std::mem::take(&mut o.meta_pending) {
                    self.refuse(out, &to, req, 0, RefusalCode::Unavailable);
                }
            }
            return;
        };
        let (answer, wait) = std::mem::take(&mut o.meta_pending)
            .into_iter()
            .partition(|(version, _, _)| *version <= meta.version);
        o.meta_pending = wait;
        for (_, to, req) in answer {
            let frame = Frame::MetaDone {
                req,
                room: self.room.clone(),
                meta: meta.clone(),
            };
            self.send(out, &to, frame);
        }
    }

    /// `from` registers (or renews) its interest. A new registration gets the room's
    /// acknowledged metadata; a renewal only if it changed since it was last sent there,
    /// the link was reset since, or a lease has passed since (a safety net: a delivery lost
    /// where no link change was seen, or one its home could not apply).
    fn on_interest(&mut self, from: NodeId, out: &mut Vec<Output>) {
        let at = self.ticks;
        let i = match self.interest.iter().position(|r| r.node == from) {
            Some(i) => i,
            None => {
                let node = from.clone();
                self.interest.push(Registration {
                    node,
                    at,
                    meta: None,
                    meta_at: at,
                });
                self.interest.len() - 1
            }
        };
        let (current, lease) = (self.acked_meta_position(), self.interest_lease);
        let r = &mut self.interest[i];
        r.at = at;
        let stale = lease.is_some_and(|lease| at - r.meta_at >= lease);
        if current.is_some() && (r.meta != current || stale) {
            r.meta = current;
            r.meta_at = at;
            self.deliver_meta(out, &from);
        }
    }

    /// The position of the metadata an owner delivers (`None`: not the owner, or none).
    fn acked_meta_position(&self) -> Option<(u64, u64)> {
        match &self.role {
            Role::Owner(o) => o.meta_acked.as_ref().map(Meta::position),
            _ => None,
        }
    }

    /// The acknowledged metadata to `to`, if this node owns the room and has some.
    fn deliver_meta(&self, out: &mut Vec<Output>, to: &str) {
        let Role::Owner(o) = &self.role else {
            return;
        };
        if let Some(meta) = &o.meta_acked {
            let frame = Frame::MetaDeliver {
                room: self.room.clone(),
                meta: meta.clone(),
            };
            self.send(out, to, frame);
        }
    }

    fn on_refused(&mut self, epoch: u64, code: RefusalCode, out: &mut Vec<Output>) {
        let mine = match &self.role {
            Role::Follower => return,
            Role::Claiming { epoch, .. } => *epoch,
            Role::Owner(o) => o.epoch,
        };
        // Someone promised this epoch (or a higher one) elsewhere: this claim or ownership
        // is over; the next tick claims above it if this node still ranks first.
        if code == RefusalCode::StaleEpoch && epoch >= mine {
            self.durable.promised = self.durable.promised.max(epoch);
            self.step_down(out);
        }
    }

    fn on_replay(&self, from: NodeId, req: u64, after: u64, max: u32, out: &mut Vec<Output>) {
        let Role::Owner(o) = &self.role else {
            let epoch = self.durable.promised;
            self.refuse(out, &from, req, epoch, RefusalCode::NotOwner);
            return;
        };
        let max = u64::from(max.clamp(1, REPLAY_RECORDS_MAX));
        let end = o.committed.min(after.saturating_add(max));
        let records = self.read(after + 1, end);
        if records.is_empty() && after < end {
            // The disk could not give them now: the requester asks again.
            return;
        }
        let more = after + (records.len() as u64) < o.committed;
        let frame = Frame::ReplayRecords {
            req,
            room: self.room.clone(),
            records,
            more,
        };
        self.send(out, &from, frame);
    }
}

/// The longest of `answers` (each the records after `since`), each seq taken from the
/// answer with the highest epoch there. Every answer is hole-free, so the merge is too.
fn merge<'a>(since: u64, answers: impl Iterator<Item = &'a Vec<Record>>) -> Vec<Record> {
    let mut merged: Vec<Record> = Vec::new();
    for log in answers {
        for record in log {
            let at = (record.seq - since - 1) as usize;
            match merged.get_mut(at) {
                Some(have) if have.epoch >= record.epoch => {}
                Some(have) => *have = record.clone(),
                None => {
                    debug_assert_eq!(merged.len(), at, "logs have no holes");
                    merged.push(record.clone());
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests;

/// `frame` to each of `nodes` (the interested instances: one copy per instance).
fn to_each<'a>(out: &mut Vec<Output>, nodes: impl Iterator<Item = &'a NodeId>, frame: &Frame) {
    out.extend(nodes.map(|node| Output::Send {
        to: node.clone(),
        frame: frame.clone(),
    }));
}
