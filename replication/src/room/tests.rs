//! One test per rule, on three (or four) rooms wired by a tiny in-order network.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use super::*;

const ROOM: &str = "general";
/// The window of retry keys in these tests.
const KEYS_MAX: usize = 16;

/// A node's disk: what `take_changes` handed out, applied. Shared with its room's
/// [`log::Source`] when the room is bounded ([`Net::bound`]).
#[derive(Debug, Default)]
struct Disk {
    durable: Durable,
    /// Reads fail (an I/O error, say): the source gives nothing.
    unreadable: bool,
}

/// A bounded room's reads of its node's [`Disk`].
#[derive(Debug)]
struct DiskSource(Arc<Mutex<Disk>>);

impl log::Source for DiskSource {
    fn read(&self, room: &str, from: u64, max: usize) -> Vec<Record> {
        assert_eq!(room, ROOM);
        let disk = self.0.lock().unwrap();
        if disk.unreadable {
            return Vec::new();
        }
        let from = from.saturating_sub(1) as usize;
        let log = &disk.durable.log;
        log.iter().skip(from).take(max).cloned().collect()
    }
}

/// Rooms of one name on several nodes, and the frames between them.
struct Net {
    rooms: BTreeMap<NodeId, Room>,
    /// Per node, what `take_changes` handed out, applied: its disk.
    disks: BTreeMap<NodeId, Arc<Mutex<Disk>>>,
    /// Per bounded node, the acknowledged records its room keeps in memory.
    tails: BTreeMap<NodeId, u64>,
    /// Per node whose writer lags ([`Net::lag`]), the changes handed out and not written
    /// yet, in order. The others' are written at once.
    unwritten: BTreeMap<NodeId, Vec<Changes>>,
    queue: VecDeque<(NodeId, NodeId, Frame)>,
    events: Vec<(NodeId, Output)>,
    /// Frames to the forwarding instance outside the net.
    outside: Vec<Frame>,
    configured: usize,
    rules: Rules,
}

impl Net {
    fn new(nodes: &[&str], rules: Rules) -> Self {
        let rooms = nodes
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Room::new(ROOM, n, nodes.len(), Durable::default(), KEYS_MAX, rules),
                )
            })
            .collect();
        Self {
            rooms,
            disks: nodes
                .iter()
                .map(|n| (n.to_string(), Arc::default()))
                .collect(),
            tails: BTreeMap::new(),
            unwritten: BTreeMap::new(),
            queue: VecDeque::new(),
            events: Vec::new(),
            outside: Vec::new(),
            configured: nodes.len(),
            rules,
        }
    }

    /// `node`'s room keeps only `tail` acknowledged records in memory from now on (and
    /// when it restarts), and reads the others from its disk.
    fn bound(&mut self, node: &str, tail: u64) {
        self.tails.insert(node.into(), tail);
        if let Some(room) = self.rooms.remove(node) {
            let room = self.with_source(node, room);
            self.rooms.insert(node.into(), room);
        }
    }

    fn with_source(&self, node: &str, room: Room) -> Room {
        match self.tails.get(node) {
            Some(&tail) => {
                let source = Arc::new(DiskSource(self.disks[node].clone()));
                room.with_log_tail(source, tail)
            }
            None => room,
        }
    }

    /// `node` comes back from what its disk holds (bounded if it was).
    fn restart(&mut self, node: &str) {
        let durable = self.disks[node].lock().unwrap().durable.clone();
        let (configured, rules) = (self.configured, self.rules);
        let room = Room::new(ROOM, node, configured, durable, KEYS_MAX, rules);
        let room = self.with_source(node, room);
        self.rooms.insert(node.into(), room);
    }

    /// From now on `node`'s changes wait for [`Net::write`] (a writer that lags behind
    /// its turns); its frames still leave.
    fn lag(&mut self, node: &str) {
        self.unwritten.entry(node.into()).or_default();
    }

    /// `node`'s writer catches up: every change handed out is on its disk, and its room
    /// is told so ([`Room::forget_written`]). Its writes are made at once from now on.
    fn write(&mut self, node: &str) {
        for changes in self.unwritten.remove(node).unwrap_or_default() {
            self.disks[node].lock().unwrap().durable.apply(&changes);
        }
        self.written(node);
    }

    /// Everything `node`'s room handed out is on its disk.
    fn written(&mut self, node: &str) {
        let room = self.rooms.get_mut(node).unwrap();
        room.forget_written();
        // The disk is the memory, but for what the room left on the disk alone.
        let disk = self.disks[node].lock().unwrap();
        let d = room.durable();
        let base = d.base as usize;
        assert!(
            disk.durable.log.len() >= base,
            "{node}: forgot the unwritten"
        );
        let mut whole = d.clone();
        whole.base = 0;
        whole.log = disk.durable.log[..base].to_vec();
        whole.log.extend_from_slice(&d.log);
        assert_eq!(disk.durable, whole, "{node}: take_changes missed a change");
    }

    fn input(&mut self, node: &str, input: Input) {
        let room = self.rooms.get_mut(node).unwrap();
        let out = room.handle(input);
        // Every input's changes, written before its frames leave (unless the node's writer
        // lags).
        let changes = room.take_changes();
        assert!(
            room.take_changes().is_empty(),
            "{node}: changes handed out twice"
        );
        if let Some(unwritten) = self.unwritten.get_mut(node) {
            unwritten.push(changes);
        } else {
            self.disks[node].lock().unwrap().durable.apply(&changes);
            self.written(node);
        }
        for o in out {
            match o {
                Output::Send { to, frame } => self.queue.push_back((node.into(), to, frame)),
                other => self.events.push((node.into(), other)),
            }
        }
    }

    /// `from`'s claim of `epoch` reaches `to`.
    fn claim(&mut self, to: &str, from: &str, epoch: u64) {
        let frame = Frame::Claim {
            room: ROOM.into(),
            epoch,
            since: 0,
        };
        let from = from.to_string();
        self.input(to, Input::Frame { from, frame });
    }

    fn view(&mut self, node: &str, members: &[&str]) {
        let members = members.iter().map(|m| m.to_string()).collect();
        self.input(
            node,
            Input::View(View {
                members,
                configured: self.configured,
            }),
        );
    }

    /// Deliver queued frames (and those they cause) unless `drop` says no.
    fn run(&mut self, drop: impl Fn(&str, &str, &Frame) -> bool) {
        while let Some((from, to, frame)) = self.queue.pop_front() {
            if to == "client-node" {
                self.outside.push(frame);
                continue;
            }
            if drop(&from, &to, &frame) || !self.rooms.contains_key(&to) {
                continue;
            }
            self.input(&to, Input::Frame { from, frame });
        }
    }

    fn publish(&mut self, at: &str, req: u64, body: &str) {
        self.publish_keyed(at, req, None, body);
    }

    /// A publish with a retry key (`None`: without).
    fn publish_keyed(&mut self, at: &str, req: u64, key: Option<&str>, body: &str) {
        let frame = Frame::Publish {
            req,
            room: ROOM.into(),
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: body.as_bytes().to_vec(),
        };
        self.input(
            at,
            Input::Frame {
                from: "client-node".into(),
                frame,
            },
        );
    }

    /// Frames delivered to nodes outside the net (the forwarding instance of a publish).
    fn answers(&mut self) -> Vec<Frame> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|(_, to, _)| to == "client-node");
        self.queue = keep.into();
        let mut all = std::mem::take(&mut self.outside);
        all.extend(out.into_iter().map(|(_, _, f)| f));
        all
    }
}

fn order(nodes: &[&str]) -> Vec<String> {
    placement::order(ROOM, nodes)
        .into_iter()
        .map(|s| s.to_string())
        .collect()
}

fn none(_: &str, _: &str, _: &Frame) -> bool {
    false
}

/// Three nodes that all see each other; the owner has claimed epoch 1.
fn three() -> (Net, Vec<String>) {
    let nodes = ["a", "b", "c"];
    let mut net = Net::new(&nodes, Rules::default());
    for n in nodes {
        net.view(n, &nodes);
    }
    net.run(none);
    (net, order(&nodes))
}

/// (req, seq, duplicate) of every `Published`.
fn answered(frames: &[Frame]) -> Vec<(u64, u64, bool)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Published {
                req, seq, original, ..
            } => Some((*req, *seq, original.is_some())),
            _ => None,
        })
        .collect()
}

fn payloads(room: &Room) -> Vec<String> {
    let log = &room.durable().log;
    log.iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

fn published(frames: &[Frame]) -> Vec<(u64, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Published {
                req, epoch, seq, ..
            } => Some((*req, *epoch, *seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_first_in_order_claims_epoch_one_and_sequences() {
    let (mut net, o) = three();
    let starts: Vec<_> = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Output::Sequencing { .. }))
        .collect();
    assert_eq!(
        starts,
        [&(
            o[0].clone(),
            Output::Sequencing {
                epoch: 1,
                next_seq: 1
            }
        )]
    );
    net.publish(&o[0], 7, "m1");
    net.run(none);
    assert_eq!(published(&net.answers()), [(7, 1, 1)]);
    // The successor holds it; the third member does not (replicas: quorum − 1 = 1).
    assert_eq!(net.rooms[&o[1]].durable().log.len(), 1);
    assert_eq!(net.rooms[&o[2]].durable().log.len(), 0);
}

#[test]
fn no_ack_before_the_successor_holds_the_record() {
    let (mut net, o) = three();
    net.publish(&o[0], 1, "m1");
    let succ = o[1].clone();
    net.run(|_, to, f| to == succ && matches!(f, Frame::Append { .. }));
    assert_eq!(published(&net.answers()), [], "acked without the successor");
    assert_eq!(net.rooms[&o[0]].committed(), Some(0));
    // A tick resends; now it is held and acknowledged.
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(published(&net.answers()), [(1, 1, 1)]);
}

#[test]
fn a_stale_epoch_is_refused() {
    let (net, o) = three();
    let succ = &o[1];
    let mut d = net.rooms[succ].durable().clone();
    d.promised = 5;
    let mut r = Room::new(ROOM, succ, 3, d, KEYS_MAX, Rules::default());
    let members: Vec<String> = o.clone();
    r.handle(Input::View(View {
        members,
        configured: 3,
    }));
    let record = Record {
        epoch: 3,
        seq: 1,
        key: None,
        payload: b"x".to_vec(),
    };
    let out = r.handle(Input::Frame {
        from: o[0].clone(),
        frame: Frame::Append {
            room: ROOM.into(),
            epoch: 3,
            committed: 0,
            record,
        },
    });
    assert!(
        out.iter().any(|x| matches!(
            x,
            Output::Send {
                frame: Frame::Refused {
                    code: RefusalCode::StaleEpoch,
                    epoch: 5,
                    ..
                },
                ..
            }
        )),
        "{out:?}"
    );
    assert!(r.durable().log.is_empty());
}

#[test]
fn records_from_a_non_owner_or_to_a_non_successor_are_refused() {
    let (mut net, o) = three();
    let record = Record {
        epoch: 9,
        seq: 1,
        key: None,
        payload: b"x".to_vec(),
    };
    // From the third node (not the owner) to the successor.
    let f = Frame::Append {
        room: ROOM.into(),
        epoch: 9,
        committed: 0,
        record: record.clone(),
    };
    net.input(
        &o[1].clone(),
        Input::Frame {
            from: o[2].clone(),
            frame: f.clone(),
        },
    );
    // From the owner to the third node (not a replica).
    net.input(
        &o[2].clone(),
        Input::Frame {
            from: o[0].clone(),
            frame: f,
        },
    );
    let refusals: Vec<_> = net
        .queue
        .iter()
        .filter(|(_, _, f)| {
            matches!(
                f,
                Frame::Refused {
                    code: RefusalCode::NotReplica,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{:?}", net.queue);
    assert!(net.rooms[&o[1]].durable().log.is_empty() && net.rooms[&o[2]].durable().log.is_empty());
}

#[test]
fn failover_the_successor_continues_at_the_next_epoch_and_seq() {
    let (mut net, o) = three();
    for i in 1..=3 {
        net.publish(&o[0], i, &format!("m{i}"));
    }
    net.run(none);
    assert_eq!(published(&net.answers()).len(), 3);
    // The owner dies; the others see it.
    net.rooms.remove(&o[0]);
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    net.run(none);
    assert_eq!(net.rooms[&o[1]].owner_epoch(), Some(2));
    assert!(net.events.contains(&(
        o[1].clone(),
        Output::Sequencing {
            epoch: 2,
            next_seq: 4
        }
    )));
    net.publish(&o[1], 9, "m4");
    net.run(none);
    assert_eq!(published(&net.answers()), [(9, 2, 4)]);
    // The new replica (the third node) got the whole log before the ack.
    let log: Vec<_> = net.rooms[&o[2]]
        .durable()
        .log
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    assert_eq!(
        log,
        [
            b"m1".to_vec(),
            b"m2".to_vec(),
            b"m3".to_vec(),
            b"m4".to_vec()
        ]
    );
}

#[test]
fn a_new_successor_catches_up_before_further_acks() {
    let nodes = ["a", "b", "c", "d", "e"];
    let o = order(&nodes);
    let mut net = Net::new(&nodes, Rules::default());
    // Five configured, four seen: owner + 2 replicas (o[1], o[2]).
    let seen: Vec<&str> = o
        .iter()
        .filter(|n| **n != o[3])
        .map(|s| s.as_str())
        .collect();
    for n in &seen {
        net.view(n, &seen);
    }
    net.run(none);
    net.publish(&o[0], 1, "m1");
    net.run(none);
    assert_eq!(published(&net.answers()), [(1, 1, 1)]);
    // o[2] goes: o[3] (back) is now a replica, it holds nothing yet.
    let seen: Vec<&str> = o
        .iter()
        .filter(|n| **n != o[2])
        .map(|s| s.as_str())
        .collect();
    for n in &seen {
        net.view(n, &seen);
    }
    let newbie = o[3].clone();
    net.publish(&o[0], 2, "m2");
    net.run(|_, to, f| to == newbie && matches!(f, Frame::Append { .. }));
    assert_eq!(
        published(&net.answers()),
        [],
        "acked before the new replica caught up"
    );
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(published(&net.answers()), [(2, 1, 2)]);
    assert_eq!(net.rooms[&newbie].durable().log.len(), 2);
}

#[test]
fn a_joining_node_that_outranks_the_owner_takes_over_by_handoff() {
    let all = ["a", "b", "c", "d"];
    let o = order(&all);
    let joiner = o[0].clone();
    let old: Vec<&str> = o[1..].iter().map(|s| s.as_str()).collect();
    let mut net = Net::new(&all, Rules::default());
    for n in &old {
        net.view(n, &old);
    }
    net.run(none);
    assert_eq!(net.rooms[&o[1]].owner_epoch(), Some(1));
    net.publish(&o[1], 1, "m1");
    net.run(none);
    assert_eq!(published(&net.answers()).len(), 1);
    // The joiner appears in every view.
    for n in &all {
        net.view(n, &all);
    }
    net.run(none);
    // It had seen no epoch: its claim of 1 is refused with the epoch seen (1); its next
    // tick claims 2.
    assert_eq!(net.rooms[&joiner].owner_epoch(), None);
    net.input(&joiner, Input::Tick);
    net.run(none);
    assert!(net
        .events
        .contains(&(o[1].clone(), Output::SteppedDown { epoch: 1 })));
    assert_eq!(net.rooms[&joiner].owner_epoch(), Some(2));
    assert_eq!(net.rooms[&joiner].durable().log[0].payload, b"m1");
    net.publish(&joiner, 2, "m2");
    net.run(none);
    assert_eq!(published(&net.answers()), [(2, 2, 2)]);
    // The old owner refuses sends: the node layer forwards to the new owner.
    net.publish(&o[1], 3, "m3");
    assert!(matches!(
        net.answers()[..],
        [Frame::Refused {
            code: RefusalCode::NotOwner,
            ..
        }]
    ));
}

#[test]
fn without_a_majority_nothing_is_sequenced() {
    let nodes = ["a", "b", "c"];
    let o = order(&nodes);
    let mut net = Net::new(&nodes, Rules::default());
    net.view(&o[0], &[&o[0]]);
    net.run(none);
    assert_eq!(net.rooms[&o[0]].owner_epoch(), None);
    net.publish(&o[0], 1, "m1");
    assert!(matches!(
        net.answers()[..],
        [Frame::Refused {
            code: RefusalCode::Unavailable,
            ..
        }]
    ));
    // An owner that loses its majority steps down and refuses its waiting sends.
    let (mut net, o) = three();
    net.publish(&o[0], 2, "m2");
    net.queue.clear();
    net.view(&o[0].clone(), &[&o[0]]);
    assert!(net
        .events
        .contains(&(o[0].clone(), Output::SteppedDown { epoch: 1 })));
    assert!(matches!(
        net.answers()[..],
        [Frame::Refused {
            code: RefusalCode::Unavailable,
            req: 2,
            ..
        }]
    ));
}

#[test]
fn one_epoch_is_promised_once() {
    let (mut net, o) = three();
    // o[2] promised epoch 1 to the owner: a claim of epoch 1 by o[1] is refused.
    net.view(&o[2].clone(), &[&o[1], &o[2]]);
    net.claim(&o[2].clone(), &o[1].clone(), 1);
    assert!(matches!(
        net.queue.back(),
        Some((
            _,
            _,
            Frame::Refused {
                code: RefusalCode::StaleEpoch,
                epoch: 1,
                ..
            }
        ))
    ));
}

#[test]
fn with_fencing_off_two_nodes_sequence_one_epoch() {
    // The broken rule the simulation's self-test uses, here by hand: o[2] answers a
    // second claim of epoch 1 and o[1] sequences epoch 1 too.
    let nodes = ["a", "b", "c"];
    let o = order(&nodes);
    let mut net = Net::new(
        &nodes,
        Rules {
            fencing: false,
            ..Rules::default()
        },
    );
    for n in &nodes {
        net.view(n, &nodes);
    }
    net.run(none);
    net.view(&o[2].clone(), &[&o[1], &o[2]]);
    net.claim(&o[2].clone(), &o[1].clone(), 1);
    assert!(matches!(
        net.queue.back(),
        Some((_, _, Frame::Handoff { epoch: 1, .. }))
    ));
}

#[test]
fn a_promise_of_the_last_epoch_leaves_the_room_unavailable_not_panicking() {
    // A broken peer's claim made o[0] promise u64::MAX: it cannot claim above it.
    let nodes = ["a", "b", "c"];
    let o = order(&nodes);
    let durable = Durable {
        promised: u64::MAX,
        ..Durable::default()
    };
    let mut room = Room::new(ROOM, &o[0], 3, durable, KEYS_MAX, Rules::default());
    let members = o.clone();
    let out = room.handle(Input::View(View {
        members,
        configured: 3,
    }));
    assert!(out.is_empty(), "{out:?}");
    assert!(room.handle(Input::Tick).is_empty());
    assert_eq!(room.owner_epoch(), None);
}

#[test]
fn take_changes_hands_out_each_change_once() {
    let nodes = ["a", "b", "c"];
    let mut room = Room::new(
        ROOM,
        &order(&nodes)[0],
        3,
        Durable::default(),
        KEYS_MAX,
        Rules::default(),
    );
    assert!(
        room.take_changes().is_empty(),
        "a new room has nothing to write"
    );
    // The view makes it claim: its promise to itself, no record.
    let members = nodes.iter().map(|m| m.to_string()).collect();
    room.handle(Input::View(View {
        members,
        configured: 3,
    }));
    let claimed = room.take_changes();
    let promise = claimed.promise.clone().expect("the claim is a promise");
    assert_eq!((promise.promised, claimed.records.len()), (1, 0));
    assert_eq!(claimed.truncated_after, None);
    assert!(room.take_changes().is_empty());
    // A room restarted from what was written carries on from there: nothing to write yet.
    let mut disk = Durable::default();
    disk.apply(&claimed);
    let mut restarted = Room::new(
        ROOM,
        &order(&nodes)[0],
        3,
        disk.clone(),
        KEYS_MAX,
        Rules::default(),
    );
    assert!(restarted.take_changes().is_empty());
    assert_eq!(restarted.durable(), &disk);
}

// --- exactly once: retry keys ---------------------------------------------------------

#[test]
fn a_retry_of_an_acknowledged_key_gets_the_original_seq_and_is_not_sequenced_again() {
    let (mut net, o) = three();
    net.publish_keyed(&o[0], 1, Some("alice/k1"), "m1");
    net.publish_keyed(&o[0], 2, Some("alice/k2"), "m2");
    net.run(none);
    assert_eq!(answered(&net.answers()), [(1, 1, false), (2, 2, false)]);
    net.publish_keyed(&o[0], 3, Some("alice/k1"), "m1");
    net.run(none);
    assert_eq!(answered(&net.answers()), [(3, 1, true)]);
    assert_eq!(payloads(&net.rooms[&o[0]]), ["m1", "m2"]);
    assert_eq!(
        payloads(&net.rooms[&o[1]]),
        ["m1", "m2"],
        "nothing more replicated"
    );
    // Without a key, the same body is a new message.
    net.publish_keyed(&o[0], 4, None, "m1");
    net.run(none);
    assert_eq!(answered(&net.answers()), [(4, 3, false)]);
}

#[test]
fn a_retry_while_the_original_waits_for_its_ack_gets_the_same_seq_with_it() {
    let (mut net, o) = three();
    let succ = o[1].clone();
    net.publish_keyed(&o[0], 1, Some("alice/k1"), "m1");
    net.run(|_, to, f| to == succ && matches!(f, Frame::Append { .. }));
    net.publish_keyed(&o[0], 2, Some("alice/k1"), "m1");
    net.run(none);
    assert_eq!(answered(&net.answers()), [], "nothing acknowledged yet");
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(answered(&net.answers()), [(1, 1, false), (2, 1, true)]);
    assert_eq!(payloads(&net.rooms[&o[0]]), ["m1"]);
}

#[test]
fn a_new_owner_rebuilds_the_window_from_the_log_it_takes_over() {
    let (mut net, o) = three();
    net.publish_keyed(&o[0], 1, Some("alice/k1"), "m1");
    net.run(none);
    assert_eq!(answered(&net.answers()), [(1, 1, false)]);
    net.rooms.remove(&o[0]);
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    net.run(none);
    assert_eq!(net.rooms[&o[1]].owner_epoch(), Some(2));
    net.publish_keyed(&o[1], 2, Some("alice/k1"), "m1");
    net.run(none);
    assert_eq!(answered(&net.answers()), [(2, 1, true)]);
    assert_eq!(payloads(&net.rooms[&o[1]]), ["m1"]);
}

/// A stale owner (epoch 1) sequenced k2 and k3 without acknowledging them; the next owner
/// (epoch 2, from a majority without them) sequenced the retry of k3 at seq 2. A claim
/// merging both logs gets k3 at seq 2 (epoch 2) and again at seq 3 (the stale copy): the
/// merged log ends before the copy, and the claimant continues at seq 3.
fn a_merge_with_a_stale_copy(rules: Rules) -> (Room, Vec<Output>) {
    let nodes = ["a", "b", "c"];
    let o = order(&nodes);
    let rec = |epoch, seq, key: &str, body: &str| Record {
        epoch,
        seq,
        key: Some(key.as_bytes().to_vec()),
        payload: body.as_bytes().to_vec(),
    };
    let newer = Durable {
        promised: 2,
        promised_to: Some(o[0].clone()),
        log: vec![rec(2, 1, "k1", "m1"), rec(2, 2, "k3", "m3")],
        held_epoch: 2,
        held: 2,
        committed: 0,
        base: 0,
        meta: None,
    };
    let stale = Durable {
        promised: 1,
        promised_to: Some(o[1].clone()),
        log: vec![
            rec(1, 1, "k1", "m1"),
            rec(1, 2, "k2", "m2"),
            rec(1, 3, "k3", "m3"),
        ],
        held_epoch: 1,
        held: 3,
        committed: 0,
        base: 0,
        meta: None,
    };
    let mut claimant = Room::new(ROOM, &o[0], 3, newer, KEYS_MAX, rules);
    let mut member = Room::new(ROOM, &o[1], 3, stale, KEYS_MAX, rules);
    let view = View {
        members: vec![o[0].clone(), o[1].clone()],
        configured: 3,
    };
    member.handle(Input::View(view.clone()));
    let claims = claimant.handle(Input::View(view));
    let mut events = Vec::new();
    for c in claims {
        let Output::Send { frame, .. } = c else {
            continue;
        };
        let from = o[0].clone();
        for answer in member.handle(Input::Frame { from, frame }) {
            if let Output::Send { frame, .. } = answer {
                let from = o[1].clone();
                events.extend(claimant.handle(Input::Frame { from, frame }));
            }
        }
    }
    (claimant, events)
}

#[test]
fn a_claim_merge_ends_before_a_stale_copy_of_a_key() {
    let (claimant, events) = a_merge_with_a_stale_copy(Rules::default());
    assert_eq!(claimant.owner_epoch(), Some(3));
    assert_eq!(payloads(&claimant), ["m1", "m3"]);
    let next_seq = 3;
    assert!(
        events.contains(&Output::Sequencing { epoch: 3, next_seq }),
        "{events:?}"
    );
    // With the rule off, the stale copy stays: m3 at seqs 2 and 3.
    let broken = Rules {
        merge_drops_copies: false,
        ..Rules::default()
    };
    let (claimant, _) = a_merge_with_a_stale_copy(broken);
    assert_eq!(payloads(&claimant), ["m1", "m3", "m3"]);
}

fn meta_done(frames: &[Frame]) -> Vec<(u64, Meta)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::MetaDone { req, meta, .. } => Some((*req, meta.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn metadata_is_acknowledged_once_the_successor_holds_it_and_survives_failover() {
    let (mut net, o) = three();
    let change = |bytes: &str| Input::Meta {
        from: "client-node".into(),
        req: 1,
        change: Some(bytes.as_bytes().to_vec()),
    };
    net.input(&o[0].clone(), change("private"));
    let succ = o[1].clone();
    net.run(|_, to, f| to == succ && matches!(f, Frame::MetaAppend { .. }));
    assert_eq!(meta_done(&net.answers()), [], "acked without the successor");
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    let held = Meta {
        epoch: 1,
        version: 1,
        bytes: b"private".to_vec(),
    };
    assert_eq!(meta_done(&net.answers()), [(1, held.clone())]);
    assert_eq!(net.rooms[&o[1]].meta(), Some(&held));
    // A request that changes nothing is answered with what a majority holds.
    let read = Input::Meta {
        from: "client-node".into(),
        req: 2,
        change: None,
    };
    net.input(&o[0].clone(), read);
    net.run(none);
    assert_eq!(meta_done(&net.answers()), [(2, held)]);
    // A non-owner refuses instead of deciding.
    assert_eq!(net.rooms[&o[1]].meta_refusal(), Some(RefusalCode::NotOwner));
    // The owner dies: the successor claims, keeps the metadata, stamps its epoch, and the
    // new replica holds it before the next change is acknowledged.
    net.rooms.remove(&o[0]);
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    net.run(none);
    assert_eq!(net.rooms[&o[1]].owner_epoch(), Some(2));
    let kept = net.rooms[&o[1]].meta().cloned().expect("kept");
    assert_eq!(
        (kept.epoch, kept.version, kept.bytes),
        (2, 1, b"private".to_vec())
    );
    net.input(&o[1].clone(), change("private,titled"));
    net.run(none);
    let done = meta_done(&net.answers());
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1.position(), (2, 2));
    assert_eq!(net.rooms[&o[2]].meta().map(Meta::position), Some((2, 2)));
    // A replica refuses metadata from a stale epoch.
    let stale = Frame::MetaAppend {
        room: ROOM.into(),
        meta: Meta {
            epoch: 1,
            version: 9,
            bytes: b"old".to_vec(),
        },
    };
    let from = o[1].clone();
    net.input(&o[2].clone(), Input::Frame { from, frame: stale });
    assert!(matches!(
        net.queue.back(),
        Some((
            _,
            _,
            Frame::Refused {
                code: RefusalCode::StaleEpoch,
                ..
            }
        ))
    ));
    assert_eq!(net.rooms[&o[2]].meta().map(Meta::position), Some((2, 2)));
}

#[test]
fn a_metadata_request_is_answered_with_its_version_while_a_later_one_waits() {
    let (mut net, o) = three();
    let change = |req, bytes: &str| Input::Meta {
        from: "client-node".into(),
        req,
        change: Some(bytes.as_bytes().to_vec()),
    };
    net.input(&o[0].clone(), change(1, "v1"));
    net.input(&o[0].clone(), change(2, "v2"));
    // The successor gets version 1 only.
    let succ = o[1].clone();
    let v2 = |f: &Frame| matches!(f, Frame::MetaAppend { meta, .. } if meta.version == 2);
    net.run(|_, to, f| to == succ && v2(f));
    let done = meta_done(&net.answers());
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        (done[0].0, done[0].1.bytes.as_slice()),
        (1, b"v1".as_slice())
    );
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    let done = meta_done(&net.answers());
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        (done[0].0, done[0].1.bytes.as_slice()),
        (2, b"v2".as_slice())
    );
}

#[test]
fn an_owner_learns_of_a_later_epoch_on_a_view_change_with_nothing_to_send() {
    let (mut net, o) = three();
    net.publish(&o[0], 1, "m1");
    net.run(none);
    assert_eq!(published(&net.answers()), [(1, 1, 1)]);
    // Its successor promised a later epoch elsewhere (a claim this owner never saw).
    net.rooms.get_mut(&o[1]).unwrap().durable.promised = 5;
    let all: Vec<&str> = o.iter().map(String::as_str).collect();
    net.view(&o[0].clone(), &all);
    net.run(none);
    assert_eq!(net.rooms[&o[0]].owner_epoch(), None, "stepped down");
    // The next tick claims above the promise and takes the room over with its record.
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(net.rooms[&o[0]].owner_epoch(), Some(6));
    assert_eq!(
        net.rooms[&o[0]].committed_record(1).map(|r| r.epoch),
        Some(1),
        "kept as it was: an acknowledged prefix is not re-stamped"
    );
    net.publish(&o[0], 2, "m2");
    net.run(none);
    assert_eq!(published(&net.answers()), [(2, 6, 2)]);
}

/// Runs the queued frames, none dropped; every frame delivered, (from, to, frame).
fn run_watching(net: &mut Net) -> Vec<(String, String, Frame)> {
    let seen = std::cell::RefCell::new(Vec::new());
    net.run(|from, to, f| {
        seen.borrow_mut()
            .push((from.to_owned(), to.to_owned(), f.clone()));
        false
    });
    seen.into_inner()
}

/// The first in order (gone) comes back from its disk and outranks: its first claim (epoch
/// 2, what its disk promised + 1) is refused, its tick claims 3 and takes over. Every frame
/// delivered meanwhile.
fn the_first_returns_from_its_disk_and_takes_over(
    net: &mut Net,
    o: &[String],
) -> Vec<(String, String, Frame)> {
    net.restart(&o[0]);
    let all: Vec<&str> = o.iter().map(String::as_str).collect();
    for n in o {
        net.view(n, &all);
    }
    let mut seen = run_watching(net);
    net.input(&o[0].clone(), Input::Tick);
    seen.extend(run_watching(net));
    assert_eq!(net.rooms[&o[0]].owner_epoch(), Some(3));
    seen
}

/// Goal: a take-over costs what the claimant lacks, not the room's history. The claim says
/// the prefix the claimant knows acknowledged; answers hand over only what follows it; the
/// prefix is neither re-stamped (so not rewritten on disk) nor sent again to a replica that
/// knows it.
#[test]
fn a_take_over_exchanges_and_rewrites_only_what_follows_the_acknowledged_prefix() {
    let (mut net, o) = three();
    for i in 1..=100 {
        net.publish(&o[0], i, &format!("m{i}"));
    }
    net.run(none);
    assert_eq!(published(&net.answers()).len(), 100);
    // A tick tells the successor the owner's acknowledged prefix: seq 100.
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(net.rooms[&o[1]].durable().committed, 100);
    // The owner stops; its successor takes over at epoch 2.
    assert_eq!(net.rooms.remove(&o[0]).unwrap().durable().committed, 100);
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    let seen = run_watching(&mut net);
    assert_eq!(net.rooms[&o[1]].owner_epoch(), Some(2));
    let claims: Vec<u64> = seen
        .iter()
        .filter_map(|(_, _, f)| match f {
            Frame::Claim { since, .. } => Some(*since),
            _ => None,
        })
        .collect();
    assert_eq!(claims, [100]);
    let log = &net.rooms[&o[1]].durable().log;
    assert!(log.iter().all(|r| r.epoch == 1), "prefix re-stamped");
    net.publish(&o[1], 101, "m101");
    net.run(none);
    assert_eq!(published(&net.answers()), [(101, 2, 101)]);

    // The old owner comes back from its disk and outranks: a handoff at epoch 3.
    let seen = the_first_returns_from_its_disk_and_takes_over(&mut net, &o);
    let handoffs: Vec<Vec<u64>> = seen
        .iter()
        .filter_map(|(_, _, f)| match f {
            Frame::Handoff { records, .. } => Some(records.iter().map(|r| r.seq).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(handoffs, [[101], [101]], "only what follows seq 100");
    net.publish(&o[0], 102, "m102");
    let appends: Vec<u64> = run_watching(&mut net)
        .iter()
        .filter_map(|(from, _, f)| match f {
            Frame::Append { record, .. } if *from == o[0] => Some(record.seq),
            _ => None,
        })
        .collect();
    assert_eq!(published(&net.answers()), [(102, 3, 102)]);
    assert_eq!(
        appends,
        [102],
        "the replica knew seqs 1–101: not sent again"
    );
    assert_eq!(
        payloads(&net.rooms[&o[1]]),
        (1..=102).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

/// Goal: a claimant far behind is not sent one answer too big for a frame: the members
/// send the acknowledged records it lacks in parts, without a promise, and it claims again
/// from further on each time, until the answers fit.
#[test]
fn a_claimant_far_behind_gets_the_acknowledged_records_in_parts_then_takes_over() {
    let (mut net, o) = three();
    for i in 1..=10 {
        net.publish(&o[0], i, &format!("m{i}"));
    }
    net.run(none);
    let gone = net.rooms.remove(&o[0]).unwrap();
    assert_eq!(gone.durable().committed, 10);
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    net.run(none);
    for i in 11..=60 {
        net.publish(&o[1], i, &format!("m{i}"));
    }
    net.run(none);
    net.input(&o[1].clone(), Input::Tick);
    net.run(none);
    assert_eq!(published(&net.answers()).len(), 60);
    // Answers above 200 bytes go in parts (about five of these records each).
    for n in [&o[1], &o[2]] {
        let room = net.rooms.remove(n).unwrap().with_handoff_bytes_max(200);
        net.rooms.insert(n.clone(), room);
    }
    let seen = the_first_returns_from_its_disk_and_takes_over(&mut net, &o);
    let parts: Vec<usize> = seen
        .iter()
        .filter_map(|(_, _, f)| match f {
            Frame::Handoff {
                records,
                partial: true,
                ..
            } => Some(records.len()),
            _ => None,
        })
        .collect();
    assert!(parts.len() >= 8, "50 records, about five a part: {parts:?}");
    assert!(parts.iter().all(|&n| (1..=6).contains(&n)), "{parts:?}");
    let claims: Vec<u64> = seen
        .iter()
        .filter_map(|(_, _, f)| match f {
            Frame::Claim {
                epoch: 3, since, ..
            } => Some(*since),
            _ => None,
        })
        .collect();
    assert!(claims.windows(2).all(|w| w[0] <= w[1]), "{claims:?}");
    // From seq 55 on, what follows (five records) fits one answer.
    assert_eq!(claims.last(), Some(&55), "{claims:?}");
    net.publish(&o[0], 61, "m61");
    net.run(none);
    assert_eq!(published(&net.answers()), [(61, 3, 61)]);
    assert_eq!(
        payloads(&net.rooms[&o[0]]),
        (1..=61).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

// --- a bounded room: a tail in memory, the rest on disk -------------------------------

impl Net {
    /// A replay request of `req` for the acknowledged records after `after`, at `node`.
    fn replay(&mut self, node: &str, req: u64, after: u64) {
        let frame = Frame::ReplayRequest {
            req,
            room: ROOM.into(),
            after_seq: after,
            max: REPLAY_RECORDS_MAX,
        };
        let from = "client-node".into();
        self.input(node, Input::Frame { from, frame });
    }
}

/// The payloads of every `ReplayRecords`.
fn replayed(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::ReplayRecords { records, .. } => Some(records),
            _ => None,
        })
        .flatten()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

/// (seq, acknowledged prefix said, payload) of every `Append` from `from` to `to`.
fn appends(seen: &[(String, String, Frame)], from: &str, to: &str) -> Vec<(u64, u64, String)> {
    seen.iter()
        .filter(|(f, t, _)| f == from && t == to)
        .filter_map(|(_, _, frame)| match frame {
            Frame::Append {
                committed, record, ..
            } => {
                let payload = String::from_utf8_lossy(&record.payload).into_owned();
                Some((record.seq, *committed, payload))
            }
            _ => None,
        })
        .collect()
}

/// d4d44ab: a claimant whose take-over waited for a read its disk could not serve (the
/// window of retry keys is built from records it holds on disk only) takes over on a
/// later tick, once the disk serves it: every answer is in, none would come to retry it.
#[test]
fn a_take_over_postponed_for_an_unreadable_disk_completes_on_a_tick() {
    let (mut net, o) = three();
    // The successor keeps no acknowledged record in memory.
    net.bound(&o[1], 0);
    for i in 1..=3 {
        net.publish_keyed(&o[0], i, Some(&format!("alice/k{i}")), &format!("m{i}"));
    }
    net.run(none);
    assert_eq!(published(&net.answers()).len(), 3);
    // A tick tells the successor the acknowledged prefix: seq 3, on its disk only.
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(net.rooms[&o[1]].durable().committed, 3);
    assert_eq!(net.rooms[&o[1]].records_in_memory(), 0);
    // The owner goes while the successor's disk cannot be read.
    net.rooms.remove(&o[0]);
    net.disks[&o[1]].lock().unwrap().unreadable = true;
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    net.run(none);
    assert_eq!(
        net.rooms[&o[1]].owner_epoch(),
        None,
        "took over without its keys"
    );
    let Role::Claiming { answers, .. } = &net.rooms[&o[1]].role else {
        panic!("not claiming: {:?}", net.rooms[&o[1]].role);
    };
    assert_eq!(answers.len(), 2, "every answer is in");
    net.input(&o[1].clone(), Input::Tick);
    net.run(none);
    assert_eq!(
        net.rooms[&o[1]].owner_epoch(),
        None,
        "the disk is still unreadable"
    );
    // The disk serves reads again: the next tick takes over.
    net.disks[&o[1]].lock().unwrap().unreadable = false;
    net.input(&o[1].clone(), Input::Tick);
    net.run(none);
    assert_eq!(
        net.rooms[&o[1]].owner_epoch(),
        Some(2),
        "the postponed take-over was not tried again on the tick"
    );
    let sequencing = Output::Sequencing {
        epoch: 2,
        next_seq: 4,
    };
    assert!(net.events.contains(&(o[1].clone(), sequencing)));
    // With the window of keys read from disk: a retry is answered with its original seq.
    net.publish_keyed(&o[1], 4, Some("alice/k2"), "m2");
    net.publish_keyed(&o[1], 5, Some("alice/k4"), "m4");
    net.run(none);
    assert_eq!(answered(&net.answers()), [(4, 2, true), (5, 4, false)]);
}

/// d4d44ab: an acknowledged record leaves memory only once the writer has written its
/// turn, not when `take_changes` hands it out. A returning owner's take-over overwrites
/// its own unacknowledged record at seq 1 ("old", epoch 1) with the acknowledged one
/// ("new"); until that turn is written its disk still holds "old" there, and a read of seq
/// 1 from the disk would take it for the acknowledged record.
#[test]
fn an_acknowledged_record_stays_in_memory_until_its_overwrite_is_written() {
    let (mut net, o) = three();
    // The owner (epoch 1) sequences "old" at seq 1; its successor never gets it.
    let succ = o[1].clone();
    net.publish(&o[0], 1, "old");
    net.run(|_, to, f| to == succ && matches!(f, Frame::Append { .. }));
    assert_eq!(published(&net.answers()), []);
    // It goes; the successor sequences "new" at seq 1 (epoch 2), acknowledged.
    net.rooms.remove(&o[0]);
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[2].clone(), &rest);
    net.view(&o[1].clone(), &rest);
    net.run(none);
    net.publish(&o[1], 2, "new");
    net.run(none);
    assert_eq!(published(&net.answers()), [(2, 2, 1)]);
    // The first comes back bounded (a tail of 0) with a writer that lags behind its
    // turns, and takes over at epoch 3 with "new".
    net.bound(&o[0], 0);
    net.lag(&o[0]);
    the_first_returns_from_its_disk_and_takes_over(&mut net, &o);
    assert_eq!(net.rooms[&o[0]].committed(), Some(1));
    let on_disk = net.disks[&o[0]].lock().unwrap().durable.log[0]
        .payload
        .clone();
    assert_eq!(on_disk, b"old", "the overwrite is not written yet");
    // A replay now reads seq 1: the acknowledged record, not what the disk holds.
    net.replay(&o[0], 3, 0);
    assert_eq!(
        replayed(&net.answers()),
        ["new"],
        "read the disk's older record for the acknowledged one"
    );
    assert_eq!(net.rooms[&o[0]].records_in_memory(), 1);
    // Once the writer has written the turn, the record leaves memory and is read from
    // the disk, which holds it.
    net.write(&o[0]);
    assert_eq!(net.rooms[&o[0]].records_in_memory(), 0);
    net.replay(&o[0], 4, 0);
    assert_eq!(replayed(&net.answers()), ["new"]);
}

/// An owner with a tail of 0, whose replica holds everything but was told no acknowledged
/// prefix: (seq 1 acknowledged, in no one's memory, the replica told prefix 0).
fn an_owner_with_nothing_in_memory() -> (Net, Vec<String>) {
    let (mut net, o) = three();
    net.bound(&o[0], 0);
    net.publish(&o[0], 1, "m1");
    net.run(none);
    assert_eq!(published(&net.answers()), [(1, 1, 1)]);
    assert_eq!(net.rooms[&o[0]].records_in_memory(), 0);
    assert_eq!(net.rooms[&o[1]].durable().held, 1);
    assert_eq!(net.rooms[&o[1]].durable().committed, 0, "told nothing yet");
    (net, o)
}

/// d4d44ab: a tick sends a replica that holds everything but was told an older
/// acknowledged prefix the last record again with the current one, read from the disk
/// when it is not in memory.
#[test]
fn a_tick_tells_the_replica_the_acknowledged_prefix_with_the_last_record_from_disk() {
    let (mut net, o) = an_owner_with_nothing_in_memory();
    net.input(&o[0].clone(), Input::Tick);
    let seen = run_watching(&mut net);
    assert_eq!(
        appends(&seen, &o[0], &o[1]),
        [(1, 1, "m1".to_string())],
        "the last record was not sent again"
    );
    assert_eq!(net.rooms[&o[1]].durable().committed, 1);
}

/// d4d44ab: an owner confirming its epoch on a view change sends each replica the last
/// record it holds, read from the disk when it is not in memory; a replica that promised
/// a later epoch refuses it and the owner steps down (else, with nothing new to send, it
/// would never learn).
#[test]
fn an_owner_confirms_its_epoch_on_a_view_change_with_the_last_record_from_disk() {
    let (mut net, o) = an_owner_with_nothing_in_memory();
    // Its successor promised a later epoch elsewhere (a claim this owner never saw).
    net.rooms.get_mut(&o[1]).unwrap().durable.promised = 5;
    let all: Vec<&str> = o.iter().map(String::as_str).collect();
    net.view(&o[0].clone(), &all);
    let seen = run_watching(&mut net);
    assert_eq!(
        appends(&seen, &o[0], &o[1]),
        [(1, 1, "m1".to_string())],
        "the last record was not sent"
    );
    assert_eq!(net.rooms[&o[0]].owner_epoch(), None, "did not step down");
    // The next tick claims above the promise and takes the room over.
    net.input(&o[0].clone(), Input::Tick);
    net.run(none);
    assert_eq!(net.rooms[&o[0]].owner_epoch(), Some(6));
    net.publish(&o[0], 2, "m2");
    net.run(none);
    assert_eq!(published(&net.answers()), [(2, 6, 2)]);
    assert_eq!(payloads(&net.rooms[&o[1]]), ["m1", "m2"]);
}

/// What a run of [`kept_or_rebuilt`] shows: every frame delivered, the answers to the
/// forwarding instance, and each node's disk.
type Observed = (
    Vec<(String, String, Frame)>,
    Vec<(u64, u64, u64)>,
    Vec<Durable>,
);

/// Six sends through the owner (a tick after each tells its replica the acknowledged
/// prefix), then the owner fails and its replica takes over and sequences a seventh. With
/// `rebuild`, the two followers' machines are dropped and rebuilt from their disks (with
/// their view) after every send, as the engine's node does to bound its room machines.
fn kept_or_rebuilt(rebuild: bool) -> Observed {
    let (mut net, o) = three();
    let all: Vec<&str> = o.iter().map(String::as_str).collect();
    net.bound(&o[1], 1);
    let mut seen = Vec::new();
    for i in 1..=6u64 {
        net.publish(&o[0], i, &format!("m{i}"));
        seen.extend(run_watching(&mut net));
        net.input(&o[0].clone(), Input::Tick);
        seen.extend(run_watching(&mut net));
        for n in &o[1..] {
            assert!(net.rooms[n].is_quiescent(), "{n} after m{i}");
            if rebuild {
                net.restart(n);
                net.view(n, &all);
                assert!(
                    net.queue.is_empty(),
                    "a rebuilt quiescent machine sent something"
                );
            }
        }
    }
    assert!(!net.rooms[&o[0]].is_quiescent(), "the owner");
    // The owner is gone: the replica claims epoch 2 and continues at seq 7.
    net.rooms.remove(&o[0]);
    let rest = [o[1].as_str(), o[2].as_str()];
    for n in rest {
        net.view(n, &rest);
    }
    seen.extend(run_watching(&mut net));
    net.publish(&o[1], 7, "m7");
    seen.extend(run_watching(&mut net));
    let disks = o[1..]
        .iter()
        .map(|n| net.disks[n].lock().unwrap().durable.clone())
        .collect();
    (seen, published(&net.answers()), disks)
}

/// A quiescent follower's machine dropped and rebuilt from its disk and its view goes on
/// exactly as the kept one: the same frames, the same answers, the same logs and promises.
#[test]
fn a_quiescent_follower_rebuilt_from_its_disk_goes_on_as_if_it_had_been_kept() {
    let kept = kept_or_rebuilt(false);
    let rebuilt = kept_or_rebuilt(true);
    let answers: Vec<(u64, u64, u64)> = (1..=6).map(|i| (i, 1, i)).chain([(7, 2, 7)]).collect();
    assert_eq!(kept.1, answers, "seq continues at 7 under epoch 2");
    assert_eq!(kept.2[0].log.len(), 7);
    assert_eq!(rebuilt.1, kept.1);
    assert_eq!(rebuilt.2, kept.2);
    assert_eq!(rebuilt.0, kept.0, "another frame somewhere");
}

/// What a quiescent machine is not: the owner, a claimant, a follower that ranks first in
/// its view (its tick claims), one with interest registered, one with changes not handed
/// out.
#[test]
fn the_owner_a_claimant_an_interested_or_changed_follower_is_not_quiescent() {
    let (mut net, o) = three();
    assert!(!net.rooms[&o[0]].is_quiescent(), "the owner");
    assert!(net.rooms[&o[1]].is_quiescent() && net.rooms[&o[2]].is_quiescent());
    // A claimant: the first in order after the owner left, its claim unanswered.
    let rest = [o[1].as_str(), o[2].as_str()];
    net.view(&o[1].clone(), &rest);
    assert!(net.rooms[&o[1]].owner_epoch().is_none());
    assert!(!net.rooms[&o[1]].is_quiescent(), "a claimant");
    net.queue.clear();
    // A follower first in its view that could not claim (no epoch left above its promise).
    let durable = Durable {
        promised: u64::MAX,
        ..Durable::default()
    };
    let mut room = Room::new(ROOM, &o[0], 3, durable, KEYS_MAX, Rules::default());
    let view = View {
        members: o.clone(),
        configured: 3,
    };
    let _ = room.handle(Input::View(view));
    let _ = room.take_changes();
    assert!(matches!(room.role, Role::Follower));
    assert!(!room.is_quiescent(), "a follower first in its view");
    // Interest registered with a follower (a node whose view has it as the owner).
    let (mut net, o) = three();
    let interest = Frame::Interest { room: ROOM.into() };
    net.input(
        &o[2].clone(),
        Input::Frame {
            from: o[1].clone(),
            frame: interest,
        },
    );
    assert!(!net.rooms[&o[2]].is_quiescent(), "interest registered");
    // Changes not handed out yet: a record appended, `take_changes` not called.
    let (mut net, o) = three();
    net.publish(&o[0], 1, "m1");
    let (_, to, append) = net.queue.pop_front().unwrap();
    assert_eq!(to, o[1]);
    let room = net.rooms.get_mut(&o[1]).unwrap();
    let _ = room.handle(Input::Frame {
        from: o[0].clone(),
        frame: append,
    });
    assert!(!room.is_quiescent(), "changes not handed out");
    assert!(!room.take_changes().is_empty());
    assert!(room.is_quiescent());
}

/// Interest registered by `node` with `owner`.
fn register(net: &mut Net, owner: &str, node: &str) {
    let frame = Frame::Interest { room: ROOM.into() };
    let from = node.to_owned();
    net.input(owner, Input::Frame { from, frame });
}

/// `owner` sequences `body`; whether its `Deliver` went to `node`.
fn delivers_to(net: &mut Net, owner: &str, node: &str, req: u64, body: &str) -> bool {
    net.publish(owner, req, body);
    let seen = std::cell::Cell::new(false);
    net.run(|_, to, f| {
        if to == node && matches!(f, Frame::Deliver { .. }) {
            seen.set(true);
        }
        false
    });
    assert_eq!(
        published(&net.answers()).len(),
        1,
        "{body} not acknowledged"
    );
    seen.get()
}

fn ticks(net: &mut Net, node: &str, n: usize) {
    for _ in 0..n {
        net.input(node, Input::Tick);
    }
    net.run(none);
}

/// A registration is a lease of the owner's ticks: deliveries go to the node while it
/// renews, stop once it has not for longer than the lease, and come back with its next
/// registration. Without a lease, one lasts for ever.
#[test]
fn an_interest_registration_lapses_unless_renewed() {
    let (mut net, o) = three();
    let owner = o[0].clone();
    let room = net.rooms.remove(&owner).unwrap().with_interest_lease(3);
    net.rooms.insert(owner.clone(), room);
    register(&mut net, &owner, "d");
    assert!(delivers_to(&mut net, &owner, "d", 1, "m1"));
    ticks(&mut net, &owner, 3);
    assert!(
        delivers_to(&mut net, &owner, "d", 2, "m2"),
        "within the lease"
    );
    register(&mut net, &owner, "d");
    ticks(&mut net, &owner, 3);
    assert!(delivers_to(&mut net, &owner, "d", 3, "m3"), "renewed");
    ticks(&mut net, &owner, 1);
    assert!(!delivers_to(&mut net, &owner, "d", 4, "m4"), "lapsed");
    register(&mut net, &owner, "d");
    assert!(
        delivers_to(&mut net, &owner, "d", 5, "m5"),
        "registered again"
    );
    // No lease: still registered after many ticks.
    let (mut net, o) = three();
    register(&mut net, &o[0], "d");
    ticks(&mut net, &o[0], 100);
    assert!(
        delivers_to(&mut net, &o[0], "d", 1, "m1"),
        "a lease-less room forgot"
    );
}

/// The metadata positions sent to `node` among the queued frames (dropped from the queue).
fn metas_sent_to(net: &mut Net, node: &str) -> Vec<(u64, u64)> {
    let sent = std::cell::RefCell::new(Vec::new());
    net.run(|_, to, f| {
        if let (true, Frame::MetaDeliver { meta, .. }) = (to == node, f) {
            sent.borrow_mut().push(meta.position());
        }
        false
    });
    sent.into_inner()
}

/// An `Interest` gets the acknowledged metadata the first time, after a change, and after
/// the link to its node was reset — not on every renewal; a change goes to every
/// registration.
#[test]
fn a_renewal_gets_the_metadata_only_when_it_changed_or_the_link_was_reset() {
    let (mut net, o) = three();
    let owner = o[0].clone();
    let change = |req, bytes: &str| Input::Meta {
        from: "client-node".into(),
        req,
        change: Some(bytes.as_bytes().to_vec()),
    };
    net.input(&owner, change(1, "v1"));
    net.run(none);
    net.answers();
    register(&mut net, &owner, "d");
    assert_eq!(
        metas_sent_to(&mut net, "d"),
        [(1, 1)],
        "the first registration"
    );
    register(&mut net, &owner, "d");
    assert_eq!(
        metas_sent_to(&mut net, "d"),
        [],
        "a renewal, nothing changed"
    );
    net.input(&owner, change(2, "v2"));
    assert_eq!(
        metas_sent_to(&mut net, "d"),
        [(1, 2)],
        "the change, once acknowledged"
    );
    net.answers();
    register(&mut net, &owner, "d");
    assert_eq!(metas_sent_to(&mut net, "d"), [], "already sent");
    let node = "d".to_owned();
    net.input(&owner, Input::LinkReset { node });
    register(&mut net, &owner, "d");
    assert_eq!(metas_sent_to(&mut net, "d"), [(1, 2)], "after a link reset");
}

/// With a lease, a renewal gets the unchanged metadata again once a lease has passed since
/// it was last sent (a delivery lost where no link reset was seen), not before.
#[test]
fn a_renewal_gets_the_metadata_again_once_a_lease_has_passed() {
    let (mut net, o) = three();
    let owner = o[0].clone();
    let room = net.rooms.remove(&owner).unwrap().with_interest_lease(3);
    net.rooms.insert(owner.clone(), room);
    let change = Input::Meta {
        from: "client-node".into(),
        req: 1,
        change: Some(b"v1".to_vec()),
    };
    net.input(&owner, change);
    net.run(none);
    net.answers();
    register(&mut net, &owner, "d");
    assert_eq!(metas_sent_to(&mut net, "d"), [(1, 1)]);
    ticks(&mut net, &owner, 2);
    register(&mut net, &owner, "d");
    assert_eq!(metas_sent_to(&mut net, "d"), [], "within the lease");
    ticks(&mut net, &owner, 1);
    register(&mut net, &owner, "d");
    assert_eq!(
        metas_sent_to(&mut net, "d"),
        [(1, 1)],
        "a lease since it was sent"
    );
}
