//! The data path on the cluster thread: one `replication::room::Room` per room touched
//! (created lazily from `cluster.redb`, fed the view on every membership change and
//! ticked), the sends the home shards hand over, the frames of the peer links, and the
//! rooms this instance has local members in (interest). docs/REPLICATION.md "Send and
//! deliver".
//!
//! **Bounded machines.** Beyond `--cluster-rooms-in-memory-max` machines, the tick's
//! commit drops quiescent ones (`Room::is_quiescent`: a follower that is not the owner in
//! its view and has no interest registered; here also nothing held, every change written,
//! no input but ticks and views for `--cluster-room-idle-ms`), least recently used first.
//! The next input for the room rebuilds its machine from the file, as a first touch after
//! a start does: a restart of that one room, which the protocol tolerates — and for a
//! quiescent machine, whose state is all on disk but its view, the same machine.
//!
//! The room machine decides everything about ownership, epochs and the ack rule, and this
//! layer, as the owner, decides requests about a room's metadata (`meta::decide`); it
//! routes: a publish to the owner of this node's view (itself: the room machine),
//! answers back to the home shard that asked, deliveries and replays to the room's home
//! shard, frames to a peer's link or, addressed to this node, back into itself.
//!
//! **Write before send.** Nothing this layer sends — a frame to a peer, an answer or a
//! record to a home shard — leaves during the turn that caused it: at the end of the turn
//! ([`Node::commit`]) what the room machines changed in their logs and promises goes to
//! the `cluster-disk` writer (`disk::Writer`), and the turn's sends wait, in turn order,
//! until the writer has written that turn and every one before (a send of a turn without
//! changes may depend on an earlier turn's). So a peer never holds an `Appended`,
//! `Handoff`, `Published` or `Deliver` whose record or promise this node could lose in a
//! crash, and the thread handles events while the disk writes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sokdo_replication::frame::{self, Frame, Meta, Record, RefusalCode};
use sokdo_replication::membership::{MemberState, MemberView};
use sokdo_replication::room::{
    Input, Output, Room, Rules, View, PENDING_SENDS_MAX, REPLAY_RECORDS_MAX,
};

use super::disk::{Reader, Writer};
use super::links::{Link, LinkStats};
use super::meta;
use super::port::{FromCluster, Note, Payload, ToCluster};
use super::Cluster;
use crate::mesh::ShardId;

/// A catch-up replay not answered within this is asked again.
const REPLAY_RETRY: Duration = Duration::from_secs(1);

/// A publish sent to the room's owner (possibly this node), waiting for its answer.
struct Forward {
    shard: ShardId,
    token: u64,
    deadline: Instant,
    /// A send (counted in `sends_forwarded` / `sends_refused`), not a metadata request.
    send: bool,
}

/// A publish or a metadata request that reached this node as the room's owner in its view
/// while it is still claiming the room: handled once it sequences.
struct Held {
    from: String,
    req: u64,
    /// `Frame::Publish` or `Frame::MetaRequest`.
    frame: Frame,
    deadline: Instant,
}

struct RoomState {
    machine: Room,
    held: VecDeque<Held>,
    /// Its records in memory as last counted in `log_records_in_memory`.
    in_memory: u64,
    /// The last turn its changes went to the writer in.
    handed: u64,
    /// Its last input other than a tick or a view (or when it was built): the least
    /// recently used quiescent machines are evicted first, and none before
    /// `--cluster-room-idle-ms`.
    used: Instant,
}

/// Something to send once the turn's changes are written.
enum Out {
    Peer { to: String, frame: Frame },
    Shard { shard: ShardId, msg: FromCluster },
}

/// A room with local members: its records come here.
struct Interest {
    /// The highest seq handed to the home (a catch-up asks for what follows).
    delivered: u64,
    /// A catch-up replay is wanted (after a view change, a gap, the first member).
    catch_up: bool,
    asked: Option<Instant>,
    /// The home shard's queue was full (`--cluster-home-queue-records`): live records are
    /// dropped until a catch-up from `delivered` has handed the home what it missed.
    lagging: bool,
    /// When Interest last went to the room's owner: renewed every
    /// `--cluster-interest-refresh-ms` (the owner's registration is a lease of three).
    registered: Instant,
    /// Queued in `Node::pending` for a registration (after a view or link change).
    pending: bool,
}

pub(super) struct Node {
    cluster: Arc<Cluster>,
    view: View,
    rooms: HashMap<String, RoomState>,
    links: HashMap<String, Link>,
    forwards: HashMap<u64, Forward>,
    /// Replay requests in flight: req → room, and when asked (an unanswered one is
    /// forgotten after ten `REPLAY_RETRY`s; it is asked again after one).
    replays: HashMap<u64, (String, Instant)>,
    interest: HashMap<String, Interest>,
    /// Rooms to register again with their owners (a view or link change), sent at most
    /// `Limits::registrations_per_tick` a tick, in order (`drain_registrations`).
    pending: VecDeque<String>,
    /// What this tick may still send of them.
    registrations_left: usize,
    next_req: u64,
    /// Frames for this node (from itself, or held publishes released), handled before
    /// the next event.
    local: VecDeque<(String, Frame)>,
    /// The `cluster-disk` thread, writing `cluster.redb`.
    writer: Writer,
    /// What the room machines read back from `cluster.redb`, and where a machine is built
    /// from when its room is touched (first, or again after it was evicted).
    reader: Arc<Reader>,
    /// A tick happened this turn: its commit evicts quiescent machines beyond the bound.
    evict_due: bool,
    /// Rooms whose machine had an input since the last commit.
    touched: HashSet<String>,
    /// The last turn whose changes went to the writer.
    submitted: u64,
    /// What the current turn sends.
    outbox: Vec<Out>,
    /// (turn, room) of every turn's changes: once the writer has written the turn, the
    /// room may drop acknowledged records below its tail (`Room::forget_written`).
    forgettable: VecDeque<(u64, String)>,
    /// Earlier turns' sends, each waiting for the writer to reach the turn it names.
    waiting: VecDeque<(u64, Vec<Out>)>,
    /// Every frame handed to a peer's link (the unit tests' view of the wire).
    #[cfg(test)]
    sent: Vec<(String, Frame)>,
}

impl Node {
    pub(super) fn new(cluster: Arc<Cluster>, writer: Writer, reader: Arc<Reader>) -> Node {
        let view = View {
            members: vec![cluster.node_id.clone()],
            configured: cluster.configured,
        };
        let registrations_left = cluster.limits.registrations_per_tick();
        Node {
            cluster,
            view,
            rooms: HashMap::new(),
            links: HashMap::new(),
            forwards: HashMap::new(),
            replays: HashMap::new(),
            interest: HashMap::new(),
            pending: VecDeque::new(),
            registrations_left,
            next_req: 0,
            local: VecDeque::new(),
            writer,
            reader,
            evict_due: false,
            touched: HashSet::new(),
            submitted: 0,
            outbox: Vec::new(),
            forgettable: VecDeque::new(),
            waiting: VecDeque::new(),
            #[cfg(test)]
            sent: Vec::new(),
        }
    }

    /// The end of a turn: what the room machines changed goes to the writer, the turn's
    /// sends wait for it, and the sends of every turn written by now go out.
    pub(super) fn commit(&mut self) {
        let mut changes = Vec::new();
        for room in self.touched.drain() {
            let Some(state) = self.rooms.get_mut(&room) else {
                continue;
            };
            let c = state.machine.take_changes();
            Self::count_in_memory(&self.cluster, state);
            if !c.is_empty() {
                state.handed = self.submitted + 1;
                self.forgettable
                    .push_back((self.submitted + 1, room.clone()));
                changes.push((room, c));
            }
        }
        if !changes.is_empty() {
            self.submitted += 1;
            self.writer.submit(self.submitted, changes);
        }
        if std::mem::take(&mut self.evict_due) {
            self.evict();
        }
        let outbox = std::mem::take(&mut self.outbox);
        match self.waiting.back_mut() {
            _ if outbox.is_empty() => {}
            // Waiting for the same turn as the last: one entry (at most one per turn queued).
            Some((turn, sends)) if *turn == self.submitted => sends.extend(outbox),
            _ => self.waiting.push_back((self.submitted, outbox)),
        }
        self.release();
    }

    /// Beyond `--cluster-rooms-in-memory-max` machines, drops quiescent ones, least
    /// recently used first, down to the bound (or as many as are quiescent). Called in a
    /// commit, after every touched room's changes went to the writer: a machine whose
    /// changes are not all *written* yet is kept (a rebuild reads the file), and so is one
    /// with sends held while claiming, or one used within `--cluster-room-idle-ms`. The
    /// frames a dropped machine produced and that still wait for the writer stay queued
    /// here: they do not need it.
    fn evict(&mut self) {
        let max = self.cluster.limits.rooms_in_memory_max;
        let Some(excess) = self.rooms.len().checked_sub(max).filter(|&n| n > 0) else {
            return;
        };
        let written = self.writer.written();
        let idle = self.cluster.limits.room_idle;
        let now = Instant::now();
        let mut quiescent: Vec<(Instant, &str)> = self
            .rooms
            .iter()
            .filter(|(_, s)| {
                s.held.is_empty()
                    && s.handed <= written
                    && now.saturating_duration_since(s.used) >= idle
                    && s.machine.is_quiescent()
            })
            .map(|(name, s)| (s.used, name.as_str()))
            .collect();
        if quiescent.len() > excess {
            quiescent.select_nth_unstable(excess);
            quiescent.truncate(excess);
        }
        let gone: Vec<String> = quiescent.into_iter().map(|(_, n)| n.to_owned()).collect();
        let s = &self.cluster.stats;
        for room in gone {
            if let Some(state) = self.rooms.remove(&room) {
                s.log_records_in_memory
                    .fetch_sub(state.in_memory, Ordering::Relaxed);
                s.rooms_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
    }

    /// The gauge follows each room's count as of its last turn.
    fn count_in_memory(cluster: &Cluster, state: &mut RoomState) {
        let now = state.machine.records_in_memory() as u64;
        let was = std::mem::replace(&mut state.in_memory, now);
        let gauge = &cluster.stats.log_records_in_memory;
        gauge.fetch_add(now, Ordering::Relaxed);
        gauge.fetch_sub(was, Ordering::Relaxed);
    }

    /// Sends what waited for turns the writer has written, and lets the rooms whose changes
    /// are all written drop what their tail no longer needs (a read of `cluster.redb` then
    /// finds what memory held).
    fn release(&mut self) {
        let written = self.writer.written();
        while self
            .forgettable
            .front()
            .is_some_and(|(turn, _)| *turn <= written)
        {
            let Some((_, room)) = self.forgettable.pop_front() else {
                break;
            };
            if let Some(state) = self.rooms.get_mut(&room) {
                if state.handed <= written {
                    state.machine.forget_written();
                    Self::count_in_memory(&self.cluster, state);
                }
            }
        }
        while self
            .waiting
            .front()
            .is_some_and(|(turn, _)| *turn <= written)
        {
            let Some((_, outbox)) = self.waiting.pop_front() else {
                break;
            };
            for out in outbox {
                match out {
                    Out::Peer { to, frame } => self.transmit(&to, frame),
                    Out::Shard { shard, msg } => self.cluster.port.deliver(shard, msg),
                }
            }
        }
    }

    /// The last commit before the thread ends: the writer writes everything queued and
    /// fsyncs (with `async` too, so a clean stop keeps everything), then the rest is sent.
    pub(super) fn close(&mut self) {
        self.commit();
        self.writer.close();
        self.release();
    }

    /// A message for a home shard, sent after the turn's commit.
    fn for_shard(&mut self, shard: ShardId, msg: FromCluster) {
        self.outbox.push(Out::Shard { shard, msg });
    }

    fn me(&self) -> &str {
        &self.cluster.node_id
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn owner_of(&self, room: &str) -> Option<String> {
        if !self.view.has_quorum() {
            return None;
        }
        sokdo_replication::placement::owner(room, &self.view.members).cloned()
    }

    /// The membership changed: links follow the active members, every room machine gets
    /// the new view, every interest is registered again with the owner of the new view.
    pub(super) fn on_members(&mut self, members: &[MemberView]) {
        self.update_links(members);
        let mut active: Vec<String> = members
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| m.identity.node_id.clone())
            .collect();
        active.sort();
        let view = View {
            members: active,
            configured: self.cluster.configured,
        };
        self.on_view(view);
    }

    /// A new view (the active members): to every machine in memory (an evicted one gets
    /// it when rebuilt), and every interest registered again with its owner (queued: a
    /// bounded number a tick).
    fn on_view(&mut self, view: View) {
        self.view = view.clone();
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.feed(&name, Input::View(view.clone()));
        }
        let rooms: Vec<String> = self.interest.keys().cloned().collect();
        for room in rooms {
            self.queue_registration(&room);
        }
        self.drain_registrations();
        self.run_local();
    }

    fn update_links(&mut self, members: &[MemberView]) {
        let active: HashMap<&str, &MemberView> = members
            .iter()
            .filter(|m| !m.is_self && m.state != MemberState::Down)
            .map(|m| (m.identity.node_id.as_str(), m))
            .collect();
        self.links.retain(|node, link| {
            active
                .get(node.as_str())
                .is_some_and(|m| m.identity.boot == link.boot && m.identity.addr == link.addr)
        });
        for (node, m) in active {
            if !self.links.contains_key(node) {
                let stats = self.cluster.stats_of(node);
                let link = Link::open(&self.cluster, m.identity.addr, m.identity.boot, stats);
                self.links.insert(node.to_owned(), link);
            }
        }
    }

    /// A link to or from `peer` connected or broke: what it carried may be lost.
    pub(super) fn on_link_changed(&mut self, peer: &str) {
        // What this node's owners sent `peer` may be lost: its next Interest gets the
        // metadata again.
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            let node = peer.to_owned();
            self.feed(&name, Input::LinkReset { node });
        }
        let rooms: Vec<String> = self
            .interest
            .keys()
            .filter(|r| self.owner_of(r).as_deref() == Some(peer))
            .cloned()
            .collect();
        for room in rooms {
            self.queue_registration(&room);
        }
        self.drain_registrations();
        self.run_local();
    }

    /// Queues the room for `register` (once, however often asked before it is sent).
    fn queue_registration(&mut self, room: &str) {
        if let Some(i) = self.interest.get_mut(room) {
            if !i.pending {
                i.pending = true;
                self.pending.push_back(room.to_owned());
            }
        }
    }

    /// Registers queued rooms while this tick's budget lasts, oldest queued first: a view
    /// or link change re-registers every room it touches, each an `Interest` and a
    /// `ReplayRequest`, and thousands at once would overflow the link's queue (and drop
    /// the link, which re-registers them all again).
    fn drain_registrations(&mut self) {
        while self.registrations_left > 0 {
            let Some(room) = self.pending.pop_front() else {
                return;
            };
            // Gone (its members left) or registered since: nothing to send.
            match self.interest.get_mut(&room) {
                Some(i) if i.pending => i.pending = false,
                _ => continue,
            }
            self.registrations_left -= 1;
            self.register(&room);
        }
    }

    /// Sends Interest to the room's owner and asks for a catch-up.
    fn register(&mut self, room: &str) {
        let now = Instant::now();
        self.send_interest(room, now);
        if let Some(i) = self.interest.get_mut(room) {
            i.catch_up = true;
            i.asked = None;
        }
        self.catch_up(room, now);
    }

    /// Interest to the room's owner (a registration, or the renewal of its lease).
    fn send_interest(&mut self, room: &str, now: Instant) {
        if let Some(i) = self.interest.get_mut(room) {
            i.registered = now;
        }
        if let Some(owner) = self.owner_of(room) {
            let frame = Frame::Interest {
                room: room.to_owned(),
            };
            self.send_to(&owner, frame);
        }
    }

    /// Renews the registrations older than `--cluster-interest-refresh-ms`, the oldest
    /// first, at most `Limits::renewals_per_tick` a tick (the rest at the next ones), so
    /// that a node of many rooms never puts a burst beyond its link's queue.
    fn renew_interest(&mut self, now: Instant) {
        let limits = &self.cluster.limits;
        let (every, budget) = (
            limits.interest_refresh,
            limits.renewals_per_tick(self.interest.len()),
        );
        let mut due: Vec<(Instant, &String)> = self
            .interest
            .iter()
            // A queued room renews with its registration.
            .filter(|(_, i)| !i.pending && now.saturating_duration_since(i.registered) >= every)
            .map(|(room, i)| (i.registered, room))
            .collect();
        if due.len() > budget {
            due.select_nth_unstable(budget);
            due.truncate(budget);
        }
        let due: Vec<String> = due.into_iter().map(|(_, room)| room.clone()).collect();
        for room in due {
            self.send_interest(&room, now);
        }
    }

    /// Asks the owner for the records after those delivered, unless a request is in flight.
    fn catch_up(&mut self, room: &str, now: Instant) {
        let Some(i) = self.interest.get(room) else {
            return;
        };
        if !i.catch_up || i.asked.is_some_and(|t| now < t + REPLAY_RETRY) {
            return;
        }
        // A lagging home is caught up once its queue is half empty, not before: asking
        // sooner would only have the answer dropped again.
        let shard = crate::placement::home_of(room, self.cluster.shards);
        if i.lagging && self.cluster.port.queued(shard) > self.cluster.limits.home_queue_records / 2
        {
            return;
        }
        let after_seq = i.delivered;
        let Some(owner) = self.owner_of(room) else {
            return;
        };
        let req = self.req();
        self.replays.insert(req, (room.to_owned(), now));
        if let Some(i) = self.interest.get_mut(room) {
            i.asked = Some(now);
        }
        let frame = Frame::ReplayRequest {
            req,
            room: room.to_owned(),
            after_seq,
            max: REPLAY_RECORDS_MAX,
        };
        self.cluster
            .stats
            .replays_asked
            .fetch_add(1, Ordering::Relaxed);
        self.send_to(&owner, frame);
    }

    /// Time passed: room machines resend, late answers are refused, catch-ups retried.
    pub(super) fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.feed(&name, Input::Tick);
            self.expire_held(&name, now);
        }
        self.evict_due = true;
        let late: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(req, _)| *req)
            .collect();
        let ms = self.cluster.limits.publish_timeout.as_millis();
        for req in late {
            let why = format!("the room's owner did not answer within {ms} ms: retry");
            self.answer_refused(req, RefusalCode::Unavailable, why);
        }
        self.replays
            .retain(|_, (_, asked)| now < *asked + REPLAY_RETRY * 10);
        self.registrations_left = self.cluster.limits.registrations_per_tick();
        self.drain_registrations();
        let rooms: Vec<String> = self.interest.keys().cloned().collect();
        for room in rooms {
            self.catch_up(&room, now);
        }
        self.renew_interest(now);
        self.run_local();
        self.publish_stats();
    }

    fn expire_held(&mut self, name: &str, now: Instant) {
        let Some(state) = self.rooms.get_mut(name) else {
            return;
        };
        let mut late = Vec::new();
        while state.held.front().is_some_and(|h| h.deadline <= now) {
            late.extend(state.held.pop_front());
        }
        for h in late {
            self.refuse(&h.from, h.req, name, RefusalCode::Unavailable);
        }
    }

    fn publish_stats(&self) {
        let owned = self
            .rooms
            .values()
            .filter(|r| r.machine.owner_epoch().is_some())
            .count();
        let s = &self.cluster.stats;
        s.rooms_owned.store(owned as u64, Ordering::Relaxed);
        s.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
        s.forwards_waiting
            .store(self.forwards.len() as u64, Ordering::Relaxed);
    }

    /// `/cluster`'s `rooms`: what this node sequences (at most `max`, by name), with its
    /// metadata's version (0: none).
    pub(super) fn owned(&self, max: usize) -> Vec<serde_json::Value> {
        let mut owned: Vec<(&String, u64, u64, u64)> = self
            .rooms
            .iter()
            .filter_map(|(n, r)| {
                let meta_version = r.machine.meta().map_or(0, |m| m.version);
                Some((
                    n,
                    r.machine.owner_epoch()?,
                    r.machine.committed()?,
                    meta_version,
                ))
            })
            .collect();
        owned.sort();
        owned
            .into_iter()
            .take(max)
            .map(|(room, epoch, committed, meta_version)| {
                serde_json::json!({
                    "room": room, "epoch": epoch, "committed": committed,
                    "meta_version": meta_version,
                })
            })
            .collect()
    }

    pub(super) fn on_shard(&mut self, req: ToCluster) {
        let send = matches!(req, ToCluster::Publish { .. });
        let (shard, token, room, frame_of): (_, _, _, Box<dyn FnOnce(u64, String) -> Frame>) =
            match req {
                ToCluster::Publish {
                    shard,
                    token,
                    room,
                    key,
                    payload,
                } => (
                    shard,
                    token,
                    room,
                    Box::new(|req, room| Frame::Publish {
                        req,
                        room,
                        key,
                        payload,
                    }),
                ),
                ToCluster::Meta {
                    shard,
                    token,
                    room,
                    request,
                } => (
                    shard,
                    token,
                    room,
                    Box::new(|req, room| Frame::MetaRequest {
                        req,
                        room,
                        op: request,
                    }),
                ),
            };
        let req = self.req();
        let deadline = Instant::now() + self.cluster.limits.publish_timeout;
        self.forwards.insert(
            req,
            Forward {
                shard,
                token,
                deadline,
                send,
            },
        );
        let Some(owner) = self.owner_of(&room) else {
            let why = "this instance sees no owner for the room (no quorum): retry".to_owned();
            self.answer_refused(req, RefusalCode::Unavailable, why);
            return;
        };
        if owner != self.me() && send {
            self.cluster.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        self.send_to(&owner, frame_of(req, room));
        self.run_local();
    }

    pub(super) fn on_note(&mut self, note: Note) {
        match note {
            Note::Interest { room, on, last_seq } => {
                if on {
                    self.interest.insert(
                        room.clone(),
                        Interest {
                            delivered: last_seq,
                            catch_up: true,
                            asked: None,
                            lagging: false,
                            registered: Instant::now(),
                            pending: false,
                        },
                    );
                    self.register(&room);
                } else {
                    self.interest.remove(&room);
                    if let Some(owner) = self.owner_of(&room) {
                        self.send_to(&owner, Frame::Uninterest { room });
                    }
                }
            }
            Note::Replay { room, after_seq } => {
                if let Some(i) = self.interest.get_mut(&room) {
                    i.delivered = after_seq;
                    i.catch_up = true;
                    i.asked = None;
                }
                self.catch_up(&room, Instant::now());
            }
        }
        self.run_local();
    }

    /// A frame from a peer's link.
    pub(super) fn on_peer_frame(&mut self, from: String, frame: Frame) {
        self.on_frame(from, frame);
        self.run_local();
    }

    fn run_local(&mut self) {
        while let Some((from, frame)) = self.local.pop_front() {
            self.on_frame(from, frame);
        }
    }

    fn on_frame(&mut self, from: String, frame: Frame) {
        match frame {
            Frame::Hello { .. } => {}
            Frame::Published {
                req, seq, original, ..
            } => {
                if let Some(f) = self.forwards.remove(&req) {
                    let original_ts = original.as_deref().and_then(Payload::decode);
                    let msg = FromCluster::Published {
                        token: f.token,
                        seq,
                        duplicate: original.is_some(),
                        original_ts: original_ts.map(|p| p.ts),
                    };
                    self.for_shard(f.shard, msg);
                }
            }
            Frame::Refused { req, code, .. } if req != 0 => {
                if self.replays.remove(&req).is_some() {
                    return; // the catch-up is asked again on a tick
                }
                let why = refusal_text(code, &from);
                self.answer_refused(req, code, why);
            }
            Frame::Deliver { room, record } => {
                self.deliver(&room, vec![record], false);
            }
            Frame::ReplayRecords {
                req,
                room,
                records,
                more,
            } => self.on_replay_records(req, &room, records, more),
            Frame::Publish {
                req,
                room,
                key,
                payload,
            } => self.on_publish(from, req, &room, key, payload),
            Frame::MetaRequest { req, room, op } => self.on_meta_request(from, req, &room, op),
            Frame::MetaDone { req, meta, .. } => {
                if let Some(f) = self.forwards.remove(&req) {
                    let msg = FromCluster::MetaDone {
                        token: f.token,
                        meta,
                    };
                    self.for_shard(f.shard, msg);
                }
            }
            Frame::MetaRefused { req, why, .. } => {
                if let Some(f) = self.forwards.remove(&req) {
                    let error = meta::decode_refusal(&why);
                    let msg = FromCluster::MetaRefused {
                        token: f.token,
                        error,
                    };
                    self.for_shard(f.shard, msg);
                }
            }
            Frame::MetaDeliver { room, meta } => self.deliver_meta(room, meta),
            other => {
                let Some(room) = room_of(&other) else { return };
                let room = room.to_owned();
                self.feed(&room, Input::Frame { from, frame: other });
            }
        }
    }

    fn on_publish(
        &mut self,
        from: String,
        req: u64,
        room: &str,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    ) {
        let frame = Frame::Publish {
            req,
            room: room.to_owned(),
            key,
            payload,
        };
        if let Some((from, frame)) = self.hold_if_claiming(from, req, room, frame) {
            self.feed(room, Input::Frame { from, frame });
        }
    }

    /// While this node claims the room as its owner in view, `frame` waits (at most
    /// `PENDING_SENDS_MAX`, beyond: `Overloaded`); otherwise it comes back to be handled.
    fn hold_if_claiming(
        &mut self,
        from: String,
        req: u64,
        room: &str,
        frame: Frame,
    ) -> Option<(String, Frame)> {
        let me = self.me().to_owned();
        let deadline = Instant::now() + self.cluster.limits.publish_timeout;
        let Some(state) = self.room_state(room) else {
            self.refuse(&from, req, room, RefusalCode::Unavailable);
            return None;
        };
        let claiming =
            state.machine.owner_epoch().is_none() && state.machine.owner_in_view() == Some(&me);
        if !claiming {
            return Some((from, frame));
        }
        if state.held.len() >= PENDING_SENDS_MAX {
            self.refuse(&from, req, room, RefusalCode::Overloaded);
            return None;
        }
        state.held.push_back(Held {
            from,
            req,
            frame,
            deadline,
        });
        None
    }

    /// As the room's owner: decide a metadata request and hand the decision to the room
    /// machine, which replicates it and answers once a majority holds it. Still claiming:
    /// it waits with the sends. Not the owner: the machine refuses, as it refuses a send.
    fn on_meta_request(&mut self, from: String, req: u64, room: &str, request: Vec<u8>) {
        let frame = Frame::MetaRequest {
            req,
            room: room.to_owned(),
            op: request,
        };
        let Some((from, Frame::MetaRequest { op: request, .. })) =
            self.hold_if_claiming(from, req, room, frame)
        else {
            return;
        };
        let Some(state) = self.room_state(room) else {
            return; // not read from the file: `hold_if_claiming` refused it
        };
        let machine = &state.machine;
        let change = if machine.meta_refusal().is_some() {
            None
        } else {
            let author_of = |seq: u64| {
                let record = machine.committed_record(seq)?;
                Payload::decode(&record.payload).map(|p| p.from)
            };
            let held = meta::Held {
                meta: machine.meta().map(|m| m.bytes.as_slice()),
                committed: machine.committed().unwrap_or(0),
                author_of: &author_of,
            };
            match meta::decide(&held, &request) {
                Ok(change) => change.map(|m| m.encode()),
                Err(e) => {
                    let why = meta::encode_refusal(&e);
                    let room = room.to_owned();
                    self.send_to(&from, Frame::MetaRefused { req, room, why });
                    return;
                }
            }
        };
        self.feed(
            room,
            sokdo_replication::room::Input::Meta { from, req, change },
        );
    }

    /// The room's metadata, for its home, if this instance has members there.
    fn deliver_meta(&mut self, room: String, meta: Meta) {
        if !self.interest.contains_key(&room) {
            return;
        }
        let shard = crate::placement::home_of(&room, self.cluster.shards);
        self.cluster
            .port
            .deliver(shard, FromCluster::Meta { room, meta });
    }

    fn on_replay_records(&mut self, req: u64, room: &str, records: Vec<Record>, more: bool) {
        if self.replays.remove(&req).is_none() {
            return;
        }
        let last = records.last().map(|r| r.seq);
        if !self.deliver(room, records, true) {
            // The home's queue is full: asked again once it has room (`catch_up`).
            if let Some(i) = self.interest.get_mut(room) {
                i.asked = None;
            }
            return;
        }
        if let Some(i) = self.interest.get_mut(room) {
            i.asked = None;
            i.catch_up = more && last.is_some();
            i.lagging &= i.catch_up;
        }
        if more {
            self.catch_up(room, Instant::now());
        } else if self.interest.contains_key(room) {
            let shard = crate::placement::home_of(room, self.cluster.shards);
            let msg = FromCluster::CaughtUp {
                room: room.to_owned(),
            };
            self.for_shard(shard, msg);
        }
    }

    /// Acknowledged records for the room's home shard (`replay`: a catch-up's answer).
    /// `false` when they were dropped because the home lags: the room is then caught up
    /// from `delivered` once the home's queue has room again.
    fn deliver(&mut self, room: &str, records: Vec<Record>, replay: bool) -> bool {
        let Some(i) = self.interest.get_mut(room) else {
            return true;
        };
        let Some(last) = records.last().map(|r| r.seq) else {
            return true;
        };
        let s = &self.cluster.stats;
        let count = records.len() as u64;
        let shard = crate::placement::home_of(room, self.cluster.shards);
        let max = self.cluster.limits.home_queue_records;
        let queued = (replay || !i.lagging) && self.cluster.port.reserve(shard, records.len(), max);
        if !queued {
            s.records_shed.fetch_add(count, Ordering::Relaxed);
            i.lagging = true;
            i.catch_up = true;
            return false;
        }
        i.delivered = i.delivered.max(last);
        s.records_delivered.fetch_add(count, Ordering::Relaxed);
        let msg = FromCluster::Records {
            room: room.to_owned(),
            records,
        };
        self.for_shard(shard, msg);
        true
    }

    fn answer_refused(&mut self, req: u64, code: RefusalCode, why: String) {
        if let Some(f) = self.forwards.remove(&req) {
            if f.send {
                self.cluster.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            let msg = FromCluster::Refused {
                token: f.token,
                code,
                why,
            };
            self.for_shard(f.shard, msg);
        }
    }

    fn refuse(&mut self, to: &str, req: u64, room: &str, code: RefusalCode) {
        let frame = Frame::Refused {
            req,
            room: room.to_owned(),
            epoch: 0,
            code,
        };
        self.send_to(to, frame);
    }

    /// The room's machine; built from what `cluster.redb` holds for it (as at a start) if
    /// it is not in memory — never touched since the start, or evicted — then given the
    /// current view. `None` if the file could not be read: the input is dropped (as a
    /// frame lost on the way; the peers resend, a client's send is refused).
    fn room_state(&mut self, room: &str) -> Option<&mut RoomState> {
        if !self.rooms.contains_key(room) {
            let me = self.me().to_owned();
            let tail = self.cluster.limits.log_tail_records;
            let durable = match self.reader.load_room(room, tail) {
                Ok(durable) => durable,
                Err(e) => {
                    tracing::warn!(
                        room,
                        "room not read from cluster.redb, its input dropped: {e}"
                    );
                    return None;
                }
            };
            let machine = Room::new(
                room,
                &me,
                self.cluster.configured,
                durable,
                self.cluster.limits.dedup_keys_max,
                Rules::default(),
            )
            .with_log_tail(self.reader.clone(), tail)
            .with_interest_lease(self.cluster.limits.interest_lease_ticks());
            let state = RoomState {
                machine,
                held: VecDeque::new(),
                in_memory: 0,
                handed: 0,
                used: Instant::now(),
            };
            self.rooms.insert(room.to_owned(), state);
            self.feed(room, Input::View(self.view.clone()));
        }
        self.rooms.get_mut(room)
    }

    /// One input to a room's machine, and what it asks for.
    fn feed(&mut self, room: &str, input: Input) {
        // A link reset changes nothing the writer needs, nor is it a use of the room.
        let reset = matches!(input, Input::LinkReset { .. });
        let used = !reset && !matches!(input, Input::Tick | Input::View(_));
        let Some(state) = self.room_state(room) else {
            return;
        };
        if used {
            state.used = Instant::now();
        }
        let outputs = state.machine.handle(input);
        if !reset && !self.touched.contains(room) {
            self.touched.insert(room.to_owned());
        }
        for output in outputs {
            match output {
                Output::Send { to, frame } => {
                    if let Frame::Published { original, .. } = &frame {
                        let s = &self.cluster.stats;
                        let counter = match original {
                            Some(_) => &s.sends_deduplicated,
                            None => &s.records_sequenced,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    self.send_to(&to, frame);
                }
                Output::Sequencing { epoch, next_seq } => {
                    tracing::info!(room, epoch, next_seq, "sequencing the room as its owner");
                    self.release_held(room);
                }
                Output::SteppedDown { epoch } => {
                    tracing::info!(room, epoch, "no longer the room's owner");
                }
            }
        }
        let me = self.me().to_owned();
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if state.machine.owner_in_view() != Some(&me) && !state.held.is_empty() {
            let held: Vec<Held> = state.held.drain(..).collect();
            for h in held {
                self.refuse(&h.from, h.req, room, RefusalCode::NotOwner);
            }
        }
    }

    /// The room sequences now: what was held meanwhile goes in, in arrival order.
    fn release_held(&mut self, room: &str) {
        let held: Vec<Held> = match self.rooms.get_mut(room) {
            Some(state) => state.held.drain(..).collect(),
            None => Vec::new(),
        };
        for h in held {
            // Handled after this feed's outputs: `feed` is not re-entered.
            self.local.push_back((h.from, h.frame));
        }
    }

    /// Sends `frame` to `to`: this node's own frames loop back now, a peer's go out after
    /// the turn's commit.
    fn send_to(&mut self, to: &str, frame: Frame) {
        if to == self.me() {
            let me = self.me().to_owned();
            self.local.push_back((me, frame));
            return;
        }
        let to = to.to_owned();
        self.outbox.push(Out::Peer { to, frame });
    }

    /// `frame` onto `to`'s link.
    fn transmit(&mut self, to: &str, frame: Frame) {
        #[cfg(test)]
        self.sent.push((to.to_owned(), frame.clone()));
        let Some(link) = self.links.get(to) else {
            return; // not in this node's view: the protocol resends or times out
        };
        let bytes = match frame::encode(&frame) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::warn!(peer = to, "cluster frame not sent: {e}");
                return;
            }
        };
        if !link.send(bytes) {
            tracing::warn!(
                peer = to,
                "cluster link queue full: the link is dropped and dialled again"
            );
            let (addr, boot) = (link.addr, link.boot);
            let stats: Arc<LinkStats> = self.cluster.stats_of(to);
            let link = Link::open(&self.cluster, addr, boot, stats);
            self.links.insert(to.to_owned(), link);
        }
    }
}

/// The room a frame is about (every frame but `Hello`).
fn room_of(frame: &Frame) -> Option<&str> {
    match frame {
        Frame::Hello { .. } => None,
        Frame::Publish { room, .. }
        | Frame::Published { room, .. }
        | Frame::Refused { room, .. }
        | Frame::Append { room, .. }
        | Frame::Appended { room, .. }
        | Frame::Deliver { room, .. }
        | Frame::Interest { room }
        | Frame::Uninterest { room }
        | Frame::ReplayRequest { room, .. }
        | Frame::ReplayRecords { room, .. }
        | Frame::Claim { room, .. }
        | Frame::Handoff { room, .. }
        | Frame::MetaRequest { room, .. }
        | Frame::MetaDone { room, .. }
        | Frame::MetaRefused { room, .. }
        | Frame::MetaAppend { room, .. }
        | Frame::MetaAppended { room, .. }
        | Frame::MetaDeliver { room, .. } => Some(room),
    }
}

fn refusal_text(code: RefusalCode, owner: &str) -> String {
    match code {
        RefusalCode::Overloaded => {
            format!("the room's owner ({owner}) has too many sends waiting: retry later")
        }
        RefusalCode::Unavailable => format!(
            "the room's owner ({owner}) cannot sequence it now (no quorum, or a failover under way): retry"
        ),
        RefusalCode::NotOwner | RefusalCode::StaleEpoch | RefusalCode::NotReplica => {
            format!("the room's ownership is moving ({owner} does not own it now): retry")
        }
    }
}

#[cfg(test)]
mod tests;
