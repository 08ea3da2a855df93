//! The node's bound on room machines (`--cluster-rooms-in-memory-max`): a quiescent
//! machine is evicted on the tick's commit, least recently used first; an owner, a
//! claimant, a room with sends held, interest registered or changes not yet written is
//! kept; and an evicted room touched again (an `Append`, a claim, a view change with a
//! forwarded send) goes on exactly as a kept one — checked by running two nodes side by
//! side, one evicting everything it may and one keeping everything, on the same inputs,
//! and comparing every frame they send and what they wrote.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use arc_swap::ArcSwap;
use crossbeam_queue::SegQueue;
use sokdo_persistence::Durability;
use sokdo_replication::frame::{Frame, Meta, Record, RefusalCode};
use sokdo_replication::room::Durable;

use super::*;
use crate::cluster::disk::Disk;
use crate::cluster::port::Port;
use crate::cluster::{DataStats, Limits};
use crate::mesh::Doorbell;

/// A node that keeps every machine (the reference).
const KEEP: usize = 1_000_000;

fn limits(rooms_in_memory_max: usize) -> Limits {
    Limits {
        link_queue_frames: 1024,
        link_backoff_max: Duration::from_secs(1),
        publish_timeout: Duration::from_secs(30),
        tick: Duration::from_millis(100),
        home_queue_records: 8192,
        dedup_keys_max: 16,
        // Small: a rebuilt machine reads most of its log back from the file.
        log_tail_records: 2,
        rooms_in_memory_max,
        room_idle: Duration::ZERO,
        interest_refresh: Duration::from_secs(10),
    }
}

fn data_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sokdo-cluster-node-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Node `me` of a three-member cluster, on a fresh `cluster.redb` in `dir`; its peer
/// frames are recorded (`Node::sent`), not sent.
fn node(me: &str, dir: &str, rooms_in_memory_max: usize) -> Node {
    node_with(me, dir, limits(rooms_in_memory_max))
}

fn node_with(me: &str, dir: &str, limits: Limits) -> Node {
    let (events, _) = crossbeam_channel::bounded(16);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let cluster = Arc::new(Cluster {
        node_id: me.to_owned(),
        advertised: addr,
        boot: 1,
        peers: Vec::new(),
        configured: 3,
        origin: Instant::now(),
        view: ArcSwap::from_pointee(super::super::View {
            members: Vec::new(),
            active: 1,
            quorum: false,
        }),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        shards: 1,
        limits,
        port: Port {
            events,
            notes: SegQueue::new(),
            inbox: vec![SegQueue::new()],
            queued: vec![AtomicUsize::new(0)],
            doorbells: Arc::from(vec![Doorbell::default()]),
        },
        stats: DataStats::default(),
        links: ArcSwap::from_pointee(Vec::new()),
        owned: ArcSwap::from_pointee(Vec::new()),
    });
    let disk = Disk::open(&data_dir(dir), Durability::Async).unwrap();
    let reader = Arc::new(disk.reader());
    let writer = Writer::start(disk, || {}).unwrap();
    Node::new(cluster, writer, reader)
}

impl Node {
    /// Commits until the writer has written every turn and every send went out.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.commit();
            if self.writer.written() >= self.submitted && self.waiting.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "the writer did not catch up");
            #[allow(clippy::disallowed_methods, reason = "a test waits for the writer")]
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn frame(&mut self, from: &str, frame: Frame) {
        self.on_peer_frame(from.to_owned(), frame);
        self.settle();
    }

    fn see(&mut self, members: &[&str]) {
        let members = members.iter().map(|m| m.to_string()).collect();
        self.on_view(View {
            members,
            configured: 3,
        });
        self.settle();
    }

    /// A tick and its commit (which evicts).
    fn tick_now(&mut self) {
        self.tick(Instant::now());
        self.settle();
    }

    fn take_sent(&mut self) -> Vec<(String, Frame)> {
        std::mem::take(&mut self.sent)
    }

    fn evicted(&self) -> u64 {
        self.cluster.stats.rooms_evicted.load(Ordering::Relaxed)
    }

    fn in_memory(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// The room as `cluster.redb` holds it, whole.
    fn on_disk(&self, room: &str) -> Durable {
        self.reader.load_room(room, u64::MAX).unwrap()
    }
}

/// The `k`-th room whose rendezvous order among n1, n2, n3 is `order`.
fn room_ordered(order: [&str; 3], k: usize) -> String {
    let members = ["n1", "n2", "n3"];
    (0..)
        .map(|i| format!("room-{i}"))
        .filter(|r| {
            let o: Vec<&str> = sokdo_replication::placement::order(r, &members)
                .into_iter()
                .copied()
                .collect();
            o == order
        })
        .nth(k)
        .unwrap()
}

fn record(epoch: u64, seq: u64) -> Record {
    Record {
        epoch,
        seq,
        key: Some(format!("key-{seq}").into_bytes()),
        payload: format!("m{seq}").into_bytes(),
    }
}

const ALL: [&str; 3] = ["n1", "n2", "n3"];

/// Two nodes n2 on their own files, fed the same: one evicts every quiescent machine on
/// each tick (`--cluster-rooms-in-memory-max 0`), the other keeps all.
fn pair(name: &str) -> [Node; 2] {
    [
        node("n2", &format!("{name}-evicting"), 0),
        node("n2", &format!("{name}-keeping"), KEEP),
    ]
}

/// Both nodes get `input`; they send the same frames.
fn both(nodes: &mut [Node; 2], input: impl Fn(&mut Node)) -> Vec<(String, Frame)> {
    input(&mut nodes[0]);
    input(&mut nodes[1]);
    let (evicting, keeping) = (nodes[0].take_sent(), nodes[1].take_sent());
    assert_eq!(evicting, keeping, "the evicting node sent other frames");
    evicting
}

/// The pair of [`pair`], n2 the replica of `room` (owner n1): n1's claim of epoch 1, five
/// `Append`s and a `MetaAppend`, the evicting node's machine evicted on the tick after
/// each.
fn a_replica_evicted_after_every_append(room: &str) -> [Node; 2] {
    let room = room.to_owned();
    let mut nodes = pair("replica");
    both(&mut nodes, |n| n.see(&ALL));
    let claim = Frame::Claim {
        room: room.clone(),
        epoch: 1,
        since: 0,
    };
    let sent = both(&mut nodes, |n| n.frame("n1", claim.clone()));
    assert!(
        matches!(&sent[..], [(to, Frame::Handoff { epoch: 1, .. })] if to == "n1"),
        "{sent:?}"
    );
    for seq in 1..=5 {
        let append = Frame::Append {
            room: room.clone(),
            epoch: 1,
            committed: seq - 1,
            record: record(1, seq),
        };
        let sent = both(&mut nodes, |n| n.frame("n1", append.clone()));
        assert!(
            matches!(&sent[..], [(_, Frame::Appended { epoch: 1, upto, .. })] if *upto == seq),
            "{sent:?}"
        );
        let evicted = nodes[0].evicted();
        both(&mut nodes, Node::tick_now);
        assert!(!nodes[0].in_memory(&room), "a quiescent replica is evicted");
        assert_eq!(nodes[0].evicted(), evicted + 1);
        assert!(nodes[1].in_memory(&room));
    }
    let meta = Frame::MetaAppend {
        room: room.clone(),
        meta: Meta {
            epoch: 1,
            version: 1,
            bytes: b"the room's metadata".to_vec(),
        },
    };
    both(&mut nodes, |n| n.frame("n1", meta.clone()));
    both(&mut nodes, Node::tick_now);
    assert!(!nodes[0].in_memory(&room));
    assert_eq!(nodes[0].on_disk(&room), nodes[1].on_disk(&room));
    nodes
}

/// A replica's room evicted between every `Append` continues its log; after the owner is
/// gone, a view change and a forwarded send rebuild it, it claims, takes over and
/// sequences the send at the next seq — every frame as the node that kept the machine.
#[test]
fn an_evicted_replica_room_touched_again_goes_on_exactly_as_a_kept_one() {
    let room = room_ordered(["n1", "n2", "n3"], 0);
    let mut nodes = a_replica_evicted_after_every_append(&room);
    // n1 is gone: n2 owns the room in its view. A send forwarded by n3 in the same turn.
    let publish = Frame::Publish {
        req: 9,
        room: room.clone(),
        key: Some(b"key-6".to_vec()),
        payload: b"m6".to_vec(),
    };
    let sent = both(&mut nodes, |n| {
        n.on_view(View {
            members: vec!["n2".into(), "n3".into()],
            configured: 3,
        });
        n.on_peer_frame("n3".into(), publish.clone());
        n.settle();
    });
    assert!(
        matches!(&sent[..], [(to, Frame::Claim { epoch: 2, since: 4, .. })] if to == "n3"),
        "{sent:?}"
    );
    assert!(nodes[0].in_memory(&room), "rebuilt by the send");
    // n3 holds nothing: the take-over continues at seq 6; n3, the new replica, is sent
    // the log from seq 1 (mostly read back from the file) and the send.
    let handoff = Frame::Handoff {
        room: room.clone(),
        epoch: 2,
        committed: 0,
        records: Vec::new(),
        meta: None,
        partial: false,
    };
    let sent = both(&mut nodes, |n| n.frame("n3", handoff.clone()));
    let appended: Vec<u64> = sent
        .iter()
        .filter_map(|(_, f)| match f {
            Frame::Append {
                epoch: 2, record, ..
            } => Some(record.seq),
            _ => None,
        })
        .collect();
    assert_eq!(appended, [1, 2, 3, 4, 5, 6], "{sent:?}");
    let appended = Frame::Appended {
        room: room.clone(),
        epoch: 2,
        upto: 6,
    };
    let sent = both(&mut nodes, |n| n.frame("n3", appended.clone()));
    assert!(
        sent.iter().any(|(to, f)| to == "n3"
            && matches!(
                f,
                Frame::Published {
                    req: 9,
                    epoch: 2,
                    seq: 6,
                    original: None,
                    ..
                }
            )),
        "{sent:?}"
    );
    // The owner is never evicted.
    both(&mut nodes, Node::tick_now);
    assert!(nodes[0].in_memory(&room) && nodes[0].evicted() == 6);
    let disk = nodes[0].on_disk(&room);
    assert_eq!(disk, nodes[1].on_disk(&room));
    let payloads: Vec<&[u8]> = disk.log.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [&b"m1"[..], b"m2", b"m3", b"m4", b"m5", b"m6"]);
    // The acknowledged prefix the claimant knew (seq 4) kept as it was; what followed,
    // stamped by the new owner.
    let epochs: Vec<u64> = disk.log.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, [1, 1, 1, 1, 2, 2]);
    assert_eq!((disk.promised, disk.committed), (2, 6));
}

/// An uninvolved member's promise survives its machine's eviction: a repeated claim gets
/// the same answer, a rival claim of the promised epoch is refused.
#[test]
fn an_evicted_room_keeps_its_promise() {
    let room = room_ordered(["n1", "n3", "n2"], 0);
    let mut nodes = pair("promise");
    both(&mut nodes, |n| n.see(&ALL));
    let claim = Frame::Claim {
        room: room.clone(),
        epoch: 1,
        since: 0,
    };
    let first = both(&mut nodes, |n| n.frame("n1", claim.clone()));
    both(&mut nodes, Node::tick_now);
    assert!(!nodes[0].in_memory(&room));
    let again = both(&mut nodes, |n| n.frame("n1", claim.clone()));
    assert_eq!(again, first, "a repeated claim, the same answer");
    both(&mut nodes, Node::tick_now);
    assert!(!nodes[0].in_memory(&room));
    let rival = Frame::Claim {
        room: room.clone(),
        epoch: 1,
        since: 0,
    };
    let sent = both(&mut nodes, |n| n.frame("n3", rival.clone()));
    assert!(
        matches!(&sent[..], [(to, Frame::Refused { code: RefusalCode::StaleEpoch, epoch: 1, .. })] if to == "n3"),
        "{sent:?}"
    );
    assert_eq!(nodes[0].on_disk(&room).promised_to.as_deref(), Some("n1"));
}

/// Beyond the bound, the least recently used quiescent machines go, down to the bound;
/// the gauge and the counter follow.
#[test]
fn quiescent_machines_beyond_the_bound_are_evicted_least_recently_used_first() {
    let mut n = node("n2", "lru", 2);
    n.see(&ALL);
    let rooms: Vec<String> = (0..4)
        .map(|k| room_ordered(["n1", "n2", "n3"], k))
        .collect();
    for room in &rooms {
        let claim = Frame::Claim {
            room: room.clone(),
            epoch: 1,
            since: 0,
        };
        n.frame("n1", claim);
        #[allow(clippy::disallowed_methods, reason = "distinct last uses")]
        std::thread::sleep(Duration::from_millis(2));
    }
    // The first room used again: the second and third are the least recently used.
    let append = Frame::Append {
        room: rooms[0].clone(),
        epoch: 1,
        committed: 0,
        record: record(1, 1),
    };
    n.frame("n1", append);
    assert_eq!(n.rooms.len(), 4);
    n.tick_now();
    let kept: Vec<bool> = rooms.iter().map(|r| n.in_memory(r)).collect();
    assert_eq!(kept, [true, false, false, true]);
    assert_eq!(n.evicted(), 2);
    assert_eq!(n.cluster.stats.rooms.load(Ordering::Relaxed), 2);
    // At the bound, nothing more goes.
    n.tick_now();
    assert_eq!(n.rooms.len(), 2);
    assert_eq!(n.evicted(), 2);
    // An evicted room touched again is back (and the bound applies on the next tick).
    let append = Frame::Append {
        room: rooms[1].clone(),
        epoch: 1,
        committed: 0,
        record: record(1, 1),
    };
    n.frame("n1", append);
    assert!(n.in_memory(&rooms[1]));
    assert_eq!(
        n.take_sent().last().map(|(_, f)| f.clone()),
        Some(Frame::Appended {
            room: rooms[1].clone(),
            epoch: 1,
            upto: 1,
        })
    );
    n.tick_now();
    assert_eq!(n.rooms.len(), 2);
    assert_eq!(n.evicted(), 3);
    assert!(!n.in_memory(&rooms[3]), "the least recently used went");
}

/// n2, first in its view of n2 and n3 for `room`, comes to own it: a send forwarded by n3
/// makes it claim, and n3's answer (nothing held) makes it the owner of epoch 1.
fn own_with_n3(n: &mut Node, room: &str) {
    let publish = Frame::Publish {
        req: 1,
        room: room.to_owned(),
        key: None,
        payload: b"hi".to_vec(),
    };
    n.frame("n3", publish);
    let handoff = Frame::Handoff {
        room: room.to_owned(),
        epoch: 1,
        committed: 0,
        records: Vec::new(),
        meta: None,
        partial: false,
    };
    n.frame("n3", handoff);
    assert_eq!(n.rooms[room].machine.owner_epoch(), Some(1));
}

/// Never evicted, whatever the bound: the owner, a claimant and the sends it holds, a
/// follower with interest registered, one whose changes are not written yet.
#[test]
fn an_owner_a_claimant_a_busy_or_recent_room_is_never_evicted() {
    // n2 is the first in order: with n3 it claims, and owns once n3 answers.
    let owned = room_ordered(["n2", "n3", "n1"], 0);
    let claimed = room_ordered(["n2", "n1", "n3"], 0);
    let interested = room_ordered(["n1", "n3", "n2"], 0);
    let unwritten = room_ordered(["n1", "n2", "n3"], 0);
    let mut n = node("n2", "never", 0);
    n.see(&ALL);
    // The owner: n1 is not in this view of n2 and n3, so n2 claims; n3 answers.
    n.see(&["n2", "n3"]);
    let publish = |room: &str, req| Frame::Publish {
        req,
        room: room.to_owned(),
        key: None,
        payload: b"hi".to_vec(),
    };
    own_with_n3(&mut n, &owned);
    // The claimant: its claim unanswered, a send held meanwhile.
    n.frame("n3", publish(&claimed, 2));
    assert_eq!(n.rooms[&claimed].held.len(), 1);
    assert!(n.rooms[&claimed].machine.owner_epoch().is_none());
    // Interest registered by n3 with n2, a follower here (n3's view differs).
    n.frame(
        "n3",
        Frame::Interest {
            room: interested.clone(),
        },
    );
    assert!(
        n.rooms[&interested]
            .machine
            .owner_in_view()
            .map(String::as_str)
            != Some("n2")
    );
    // A follower whose changes went to the writer in a turn not written yet (made so here:
    // the writer is too quick to catch in the act).
    n.see(&ALL);
    let claim = Frame::Claim {
        room: unwritten.clone(),
        epoch: 7,
        since: 0,
    };
    n.frame("n1", claim);
    assert!(n.rooms[&unwritten].machine.is_quiescent());
    n.rooms.get_mut(&unwritten).unwrap().handed = n.writer.written() + 1;
    n.tick_now();
    for room in [&owned, &claimed, &interested, &unwritten] {
        assert!(n.in_memory(room), "{room} evicted");
    }
    assert_eq!(n.evicted(), 0);
    // Once written (here: said so), the follower goes; the others stay.
    n.rooms.get_mut(&unwritten).unwrap().handed = 0;
    n.tick_now();
    assert!(!n.in_memory(&unwritten));
    assert_eq!(n.evicted(), 1);
}

/// A quiescent machine used within `--cluster-room-idle-ms` is kept.
#[test]
fn a_room_used_within_the_idle_time_is_not_evicted() {
    let unwritten = room_ordered(["n1", "n2", "n3"], 0);
    let idle = Limits {
        room_idle: Duration::from_secs(3600),
        ..limits(0)
    };
    let mut n = node_with("n2", "idle", idle);
    n.see(&ALL);
    let claim = Frame::Claim {
        room: unwritten.clone(),
        epoch: 1,
        since: 0,
    };
    n.frame("n1", claim);
    n.tick_now();
    assert!(n.in_memory(&unwritten), "evicted within the idle time");
}

/// Interest frames among `sent`: (to, room).
fn interest_sent(sent: &[(String, Frame)]) -> Vec<(String, String)> {
    sent.iter()
        .filter_map(|(to, f)| match f {
            Frame::Interest { room } => Some((to.clone(), room.clone())),
            _ => None,
        })
        .collect()
}

/// `count` rooms that n1 owns among all three, each given a local member on `n` (whose
/// Interest goes to n1 at once).
fn interested_in_rooms_of_n1(n: &mut Node, count: usize) -> Vec<String> {
    let order = ["n1", "n2", "n3"];
    let rooms: Vec<String> = (0..)
        .map(|i| format!("room-{i}"))
        .filter(|r| sokdo_replication::placement::owner(r, &order) == Some(&"n1"))
        .take(count)
        .collect();
    for room in &rooms {
        let room = room.clone();
        n.on_note(Note::Interest {
            room,
            on: true,
            last_seq: 0,
        });
    }
    n.settle();
    rooms
}

/// A node renews its interest in each room with local members once every
/// `--cluster-interest-refresh-ms`, with the room's owner, the oldest first and no more
/// than `Limits::renewals_per_tick` in one tick (the rest at the next ones).
#[test]
fn interest_is_renewed_every_refresh_oldest_first_a_bounded_number_a_tick() {
    let mut n = node("n2", "renew", KEEP);
    n.see(&ALL);
    let count = 150;
    let budget = n.cluster.limits.renewals_per_tick(count);
    assert_eq!(
        budget, 64,
        "the floor: 150 rooms renew in 100 ticks at 2 a tick"
    );
    let start = Instant::now();
    let rooms = interested_in_rooms_of_n1(&mut n, count);
    let registered = interest_sent(&n.take_sent());
    assert_eq!(registered.len(), count);
    assert!(registered.iter().all(|(to, _)| to == "n1"));
    let renewed_at = |n: &mut Node, ms: u64| -> Vec<String> {
        n.tick(start + Duration::from_millis(ms));
        n.settle();
        let sent = interest_sent(&n.take_sent());
        assert!(sent.iter().all(|(to, _)| to == "n1"), "{sent:?}");
        sent.into_iter().map(|(_, room)| room).collect()
    };
    assert_eq!(renewed_at(&mut n, 5_000), Vec::<String>::new(), "early");
    let first: Vec<Vec<String>> = [10_500, 10_600, 10_700, 10_800]
        .iter()
        .map(|ms| renewed_at(&mut n, *ms))
        .collect();
    let sizes: Vec<usize> = first.iter().map(Vec::len).collect();
    assert_eq!(sizes, [64, 64, 22, 0]);
    let mut all: Vec<&String> = first.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "a room renewed twice, another not at all");
    // All due again: the oldest renewals (the first tick's) go first — none starves.
    let mut again = renewed_at(&mut n, 21_000);
    let mut oldest = first[0].clone();
    again.sort();
    oldest.sort();
    assert_eq!(again, oldest);
    // A room whose members left is not renewed.
    n.on_note(Note::Interest {
        room: rooms[0].clone(),
        on: false,
        last_seq: 0,
    });
    n.settle();
    let later: Vec<String> = [40_000, 40_100, 40_200]
        .iter()
        .flat_map(|ms| renewed_at(&mut n, *ms))
        .collect();
    assert_eq!(later.len(), count - 1);
    assert!(!later.contains(&rooms[0]));
}

/// The owner of a room before a view change keeps the registrations made with it only for
/// their lease (three refreshes): then the room, a follower's now, is evicted.
#[test]
fn a_former_owner_lets_the_registrations_lapse_and_evicts_the_room() {
    // n1 first, n2 second: n2 owns the room while n1 is away.
    let room = room_ordered(["n1", "n2", "n3"], 0);
    let lease_of_four_ticks = Limits {
        interest_refresh: Duration::from_millis(100),
        ..limits(0)
    };
    assert_eq!(
        lease_of_four_ticks.interest_lease_ticks(),
        4,
        "3 renewals and a tick"
    );
    let mut n = node_with("n2", "lapse", lease_of_four_ticks);
    n.see(&["n2", "n3"]);
    own_with_n3(&mut n, &room);
    let interest = Frame::Interest { room: room.clone() };
    n.frame("n3", interest.clone());
    // n1 is back: n2 steps down on its next tick, a follower with a registration.
    n.see(&ALL);
    for _ in 0..4 {
        n.tick_now();
    }
    assert!(n.rooms[&room].machine.owner_epoch().is_none());
    assert!(n.in_memory(&room), "evicted within the lease");
    n.tick_now();
    assert!(!n.in_memory(&room), "the lapsed registration kept the room");
    assert_eq!(n.evicted(), 1);
}

/// A link change (or a view change) registers every room of the peer again, each an
/// `Interest` and a `ReplayRequest`: no more than `Limits::registrations_per_tick` a tick,
/// the rest at the next ticks, each room once — however many rooms, the burst stays a
/// fraction of the link's queue.
#[test]
fn a_link_change_registers_the_peers_rooms_again_a_bounded_number_a_tick() {
    let mut n = node("n2", "reregister", KEEP);
    n.see(&ALL);
    let budget = n.cluster.limits.registrations_per_tick();
    assert_eq!(budget, 128, "an eighth of the 1,024-frame link queue");
    let count = 300;
    let rooms = interested_in_rooms_of_n1(&mut n, count);
    assert_eq!(
        interest_sent(&n.take_sent()).len(),
        count,
        "a first member: at once"
    );
    let replays = |sent: &[(String, Frame)]| {
        sent.iter()
            .filter(|(_, f)| matches!(f, Frame::ReplayRequest { .. }))
            .count()
    };
    n.on_link_changed("n1");
    n.settle();
    let mut waves = Vec::new();
    let mut all = Vec::new();
    let mut sent = n.take_sent();
    for _ in 0..4 {
        let interest = interest_sent(&sent);
        assert!(interest.iter().all(|(to, _)| to == "n1"), "{interest:?}");
        assert_eq!(replays(&sent), interest.len(), "each with its catch-up");
        waves.push(interest.len());
        all.extend(interest.into_iter().map(|(_, room)| room));
        n.tick_now();
        sent = n.take_sent();
    }
    assert_eq!(waves, [128, 128, 44, 0]);
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        count,
        "a room registered twice, another not at all"
    );
    // A room whose members leave while it waits is not registered.
    n.on_link_changed("n1");
    n.settle();
    n.take_sent();
    let last = rooms
        .iter()
        .find(|r| n.interest[*r].pending)
        .expect("rooms wait beyond the first wave")
        .clone();
    n.on_note(Note::Interest {
        room: last.clone(),
        on: false,
        last_seq: 0,
    });
    n.settle();
    let mut later = Vec::new();
    for _ in 0..3 {
        n.tick_now();
        later.extend(interest_sent(&n.take_sent()).into_iter().map(|(_, r)| r));
    }
    assert_eq!(later.len(), count - budget - 1);
    assert!(!later.contains(&last));
}
