//! `Homes` driven directly: no socket, no thread, no clock, no mesh. A fake journal records
//! what would go to the write-ahead log; time is passed in; what a home sends is read from
//! the `Outgoing` it returns.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use serde_json::Value;
use sokdo_persistence::{AppendError, Completion, ReadRequest, Record, StoredMessage, Ticket};

use super::{HomeRules, Homes, Journal, Now, Offload};
use crate::conn::ConnRef;
use crate::mesh::msg::{
    HomeOp, HomeReq, Leaving, Origin, Outgoing, Reply, RoomsPart, RoomsQuery, ShardMsg, Subscribe,
};
use crate::mesh::ShardId;
use crate::room::RoomLimits;
use crate::wire::protocol::ErrorCode;

/// What the home handed to the log: appends and reads, with their tickets.
#[derive(Default)]
struct Log {
    appended: Vec<(Record, Option<Ticket>)>,
    reads: Vec<(ReadRequest, Ticket)>,
    full: bool,
    /// What `settled` answers; `None`: every append.
    settled: Option<u64>,
}

#[derive(Clone, Default)]
struct FakeJournal(Rc<RefCell<Log>>);

impl Journal for FakeJournal {
    fn append(&self, record: Record, ticket: Option<Ticket>) -> Result<(), AppendError> {
        let mut log = self.0.borrow_mut();
        if log.full {
            return Err(AppendError::Full);
        }
        log.appended.push((record, ticket));
        Ok(())
    }

    fn read(&self, request: ReadRequest, ticket: Ticket) -> bool {
        self.0.borrow_mut().reads.push((request, ticket));
        true
    }

    fn settled(&self) -> u64 {
        let log = self.0.borrow();
        log.settled.unwrap_or(log.appended.len() as u64)
    }
}

/// Home shard 0 of 2 (the rooms of these tests are homed there) and its journal.
struct Fixture {
    homes: Homes,
    log: FakeJournal,
    now: Now,
}

fn fixture(durable_acks: bool, ring: usize) -> Fixture {
    fixture_with_cache(durable_acks, ring, 1 << 30)
}

fn fixture_with_cache(durable_acks: bool, ring: usize, cache_bytes_max: usize) -> Fixture {
    let log = FakeJournal::default();
    let rules = HomeRules {
        limits: RoomLimits {
            history_ring_messages_max: ring,
            idempotency_keys_max: 100,
            own_messages_after_read_max: 64,
        },
        rooms_max: 10,
        auto_create_rooms: true,
        durable_acks,
        replay_messages_max: 1000,
        replay_page_messages: 2,
        passwords: super::PasswordRules {
            failures_max: 5,
            failures_per_ip_max: 20,
            window: std::time::Duration::from_secs(60),
            checks_in_flight_max: 4,
        },
        cache_bytes_max,
    };
    let homes = Homes::new(
        (0, 2),
        rules,
        Box::new(log.clone()),
        super::HomeCounters::default(),
        Vec::new(),
        None,
    );
    let now = Now {
        ms: 1_700_000_000_000,
        at: Instant::now(),
    };
    Fixture { homes, log, now }
}

/// A connection `n` on shard `shard`, asking with request id `n`.
fn origin(shard: ShardId, n: u32) -> Origin {
    Origin {
        shard,
        conn: ConnRef {
            key: n,
            generation: u64::from(n),
        },
        request: Some(serde_json::value::to_raw_value(&n).unwrap()),
        turn: n,
    }
}

impl Fixture {
    fn call(&mut self, origin: Origin, user: &str, room: &str, op: HomeOp) -> Outgoing {
        let mut out = Outgoing::default();
        let req = HomeReq {
            room: room.to_owned(),
            user: user.to_owned(),
            op,
        };
        let offload = self.homes.handle(origin, req, self.now, &mut out);
        assert!(offload.is_none(), "unexpected offload {offload:?}");
        out
    }

    fn join(&mut self, origin: Origin, user: &str, room: &str, after_seq: Option<u64>) -> Outgoing {
        let op = HomeOp::Join {
            password: None,
            peer: None,
            after_seq,
            subscribe: Subscribe::New,
        };
        self.call(origin, user, room, op)
    }

    fn send(&mut self, origin: Origin, user: &str, room: &str, body: &str) -> Outgoing {
        let op = HomeOp::Send {
            name: None,
            body: body.to_owned(),
            client_msg_id: None,
            received_at: self.now.at,
        };
        self.call(origin, user, room, op)
    }

    fn complete(&mut self, completion: Completion) -> Outgoing {
        let mut out = Outgoing::default();
        self.homes.on_completion(completion, self.now, &mut out);
        out
    }

    fn tickets(&self) -> Vec<Ticket> {
        let log = self.log.0.borrow();
        log.appended.iter().filter_map(|(_, t)| *t).collect()
    }
}

/// The `ok` JSON of the only reply in `out`, or the error code.
fn reply(out: &Outgoing) -> Result<Value, ErrorCode> {
    let replies: Vec<_> = out
        .msgs()
        .iter()
        .filter_map(|(_, m)| match m {
            ShardMsg::Reply { reply, .. } => Some(reply),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1, "one reply expected: {:?}", out.msgs());
    match replies[0] {
        Reply::Ok(json) => Ok(serde_json::from_slice(json).unwrap()),
        Reply::Error { error, .. } => Err(error.code),
    }
}

/// The `msg` events delivered, as (shard, seq).
fn delivered(out: &Outgoing) -> Vec<(ShardId, u64)> {
    out.msgs()
        .iter()
        .filter_map(|(to, m)| match m {
            ShardMsg::Deliver { payload, .. } => {
                let v: Value = serde_json::from_slice(payload).unwrap();
                (v["op"] == "msg").then(|| (*to, v["seq"].as_u64().unwrap()))
            }
            _ => None,
        })
        .collect()
}

/// The seqs a `Subscribed` replays, in order.
fn replayed(out: &Outgoing) -> Vec<u64> {
    let (_, ShardMsg::Subscribed { replay, .. }) = &out.msgs()[0] else {
        panic!(
            "the join's first message is its Subscribed: {:?}",
            out.msgs()
        );
    };
    replay
        .iter()
        .map(|frame| {
            let v: Value = serde_json::from_slice(crate::wire::ws::payload_of(frame)).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

fn stored(room: &str, seq: u64, from: &str) -> StoredMessage {
    StoredMessage {
        room: room.to_owned(),
        seq,
        msg_id: format!("{room}:{seq}"),
        from: from.to_owned(),
        name: None,
        body: Some(format!("m{seq}")),
        ts_ms: 1,
        deleted: false,
    }
}

/// Goal: a home gives consecutive seqs from 1, answers the sender with its seq, sends each
/// message once to every shard with subscribers, and logs every message before answering.
#[test]
fn sends_are_sequenced_logged_and_delivered_once_per_shard() {
    let mut f = fixture(false, 100);
    f.join(origin(0, 1), "ann", "room", None);
    f.join(origin(1, 2), "bob", "room", None);
    for (i, expected) in [1u64, 2, 3].into_iter().enumerate() {
        let out = f.send(origin(0, 1), "ann", "room", &format!("hello {i}"));
        let ok = reply(&out).unwrap();
        assert_eq!(ok["seq"], expected);
        assert_eq!(ok["id"], 1, "the reply carries the request's id");
        assert_eq!(delivered(&out), vec![(0, expected), (1, expected)]);
    }
    let log = f.log.0.borrow();
    let seqs: Vec<u64> = log
        .appended
        .iter()
        .filter_map(|(r, _)| match r {
            Record::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

/// Goal: with durable acks, nobody sees a message before its record is durable: no reply
/// and no delivery at `send`; both at the completion, in the order the log completes.
/// A full log refuses the send without reserving a seq.
#[test]
fn durable_acks_wait_for_the_log_and_keep_its_order() {
    let mut f = fixture(true, 100);
    f.join(origin(0, 1), "ann", "room", None);
    let first = f.send(origin(0, 1), "ann", "room", "one");
    let second = f.send(origin(0, 1), "ann", "room", "two");
    assert!(
        first.msgs().is_empty() && second.msgs().is_empty(),
        "nothing before durable"
    );
    assert_eq!(f.homes.waiting(), 2);

    let history = f.call(
        origin(0, 1),
        "ann",
        "room",
        HomeOp::History {
            before_seq: None,
            limit: 10,
        },
    );
    assert_eq!(reply(&history).unwrap()["messages"], Value::Array(vec![]));

    let tickets = f.tickets();
    assert_eq!(tickets.len(), 2);
    let out = f.complete(Completion::Durable(vec![tickets[0]]));
    assert_eq!(reply(&out).unwrap()["seq"], 1);
    assert_eq!(delivered(&out), vec![(0, 1)]);
    let out = f.complete(Completion::Durable(vec![tickets[1]]));
    assert_eq!(reply(&out).unwrap()["seq"], 2);
    assert_eq!(f.homes.waiting(), 0);

    f.log.0.borrow_mut().full = true;
    let refused = f.send(origin(0, 1), "ann", "room", "three");
    assert_eq!(reply(&refused), Err(ErrorCode::Unavailable));
    f.log.0.borrow_mut().full = false;
    let tickets_before = f.tickets().len();
    f.send(origin(0, 1), "ann", "room", "three");
    let t = f.tickets()[tickets_before];
    let out = f.complete(Completion::Durable(vec![t]));
    assert_eq!(
        reply(&out).unwrap()["seq"],
        3,
        "the refused send took no seq"
    );
}

/// The seqs of `frames` (`msg` events).
fn seqs_of(frames: &[bytes::Bytes]) -> Vec<u64> {
    frames
        .iter()
        .map(|frame| {
            let v: Value = serde_json::from_slice(crate::wire::ws::payload_of(frame)).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

/// The only message of `out`, a replay page: its token and seqs.
fn page(out: &Outgoing) -> (u64, Vec<u64>) {
    let [(_, ShardMsg::ReplayPage { token, frames, .. })] = out.msgs() else {
        panic!("a replay page expected: {:?}", out.msgs());
    };
    (*token, seqs_of(frames))
}

impl Fixture {
    /// The connection took a replay page and asks for the next.
    fn more(&mut self, origin: Origin, token: u64) -> Outgoing {
        let op = HomeOp::ReplayMore {
            token,
            cancel: false,
        };
        self.call(origin, "", "room", op)
    }

    /// The last store read asked for, and its ticket.
    fn last_read(&self) -> (ReadRequest, Ticket) {
        self.log.0.borrow().reads.last().unwrap().clone()
    }
}

/// Goal: a `join` with a position replays every later message before any live one, a page
/// at a time: store pages (each waiting for the connection to ask for the next), then the
/// ring's part with the `Subscribed` (ok + replay), in seq order without repeats; messages
/// published meanwhile are part of it, and the next live message is delivered after it.
#[test]
fn join_replays_the_store_then_the_ring_before_live_messages() {
    let mut f = fixture(false, 2);
    f.join(origin(0, 1), "ann", "room", None);
    for i in 1..=5 {
        f.send(origin(0, 1), "ann", "room", &format!("m{i}"));
    }
    // The ring holds 4 and 5: a position in the ring needs no store read.
    let out = f.join(origin(1, 2), "bob", "room", Some(3));
    assert_eq!(replayed(&out), vec![4, 5]);

    // Below the ring: the store is read first, and nothing is sent until it answers.
    let out = f.join(origin(1, 3), "cat", "room", Some(1));
    assert!(out.msgs().is_empty(), "the join waits for the store");
    let (request, ticket) = f.last_read();
    assert_eq!(
        request,
        ReadRequest::After {
            room: "room".into(),
            after_seq: 1,
            limit: 2,
        },
        "a page of replay_page_messages"
    );
    let store: Vec<StoredMessage> = (2..=3).map(|s| stored("room", s, "ann")).collect();
    let out = f.complete(Completion::Read {
        ticket,
        result: Ok(store),
    });
    let (token, seqs) = page(&out);
    assert_eq!(seqs, vec![2, 3], "the store's page goes out alone");
    // Meanwhile 6 and 7 are published: the ring now holds 6–7, so 4–5 come from the store.
    f.send(origin(0, 1), "ann", "room", "m6");
    f.send(origin(0, 1), "ann", "room", "m7");
    let out = f.more(origin(1, 3), token);
    assert!(out.msgs().is_empty(), "the next page is read");
    let (request, ticket) = f.last_read();
    assert!(matches!(request, ReadRequest::After { after_seq: 3, .. }));
    let store: Vec<StoredMessage> = (4..=5).map(|s| stored("room", s, "ann")).collect();
    let out = f.complete(Completion::Read {
        ticket,
        result: Ok(store),
    });
    let (token, seqs) = page(&out);
    assert_eq!(seqs, vec![4, 5]);
    let out = f.more(origin(1, 3), token);
    assert_eq!(
        replayed(&out),
        vec![6, 7],
        "the ring's part ends the replay"
    );
    let ShardMsg::Subscribed { ok, .. } = &out.msgs()[0].1 else {
        unreachable!()
    };
    let ok: Value = serde_json::from_slice(ok).unwrap();
    assert_eq!(
        (
            ok["id"].as_u64(),
            ok["last_seq"].as_u64(),
            ok["recovered"].as_bool()
        ),
        (Some(3), Some(7), Some(true))
    );
    assert_eq!(f.homes.waiting(), 0, "nothing left waiting");

    let live = f.send(origin(0, 1), "ann", "room", "m8");
    assert_eq!(
        delivered(&live),
        vec![(0, 8), (1, 8)],
        "shard 1 now has subscribers"
    );
}

/// Goal: a replay is bounded: the ring's part goes in pages too; past
/// `replay_messages_max` the newest that many are replayed and the `ok` says
/// `recovered: false` with the first seq; a cancelled replay leaves nothing waiting.
#[test]
fn replays_are_paged_bounded_and_cancellable() {
    let mut f = fixture(false, 10);
    f.homes.rules.replay_messages_max = 3;
    f.join(origin(0, 1), "ann", "room", None);
    for i in 1..=5 {
        f.send(origin(0, 1), "ann", "room", &format!("m{i}"));
    }
    let out = f.join(origin(1, 2), "bob", "room", Some(0));
    let (token, seqs) = page(&out);
    assert_eq!(seqs, vec![3, 4], "the newest 3, a page of 2 from the ring");
    let out = f.more(origin(1, 2), token);
    assert_eq!(replayed(&out), vec![5]);
    let ShardMsg::Subscribed { ok, .. } = &out.msgs()[0].1 else {
        unreachable!()
    };
    let ok: Value = serde_json::from_slice(ok).unwrap();
    assert_eq!(
        (ok["recovered"].as_bool(), ok["first_seq"].as_u64()),
        (Some(false), Some(3))
    );

    let out = f.join(origin(1, 3), "cat", "room", Some(1));
    let (token, _) = page(&out);
    assert_eq!(f.homes.waiting(), 1);
    let cancel = HomeOp::ReplayMore {
        token,
        cancel: true,
    };
    assert!(f.call(origin(1, 3), "", "room", cancel).msgs().is_empty());
    assert_eq!(f.homes.waiting(), 0);
}

/// Goal: a private room admits its members, refuses others without a password, and hands a
/// password to the shard to check off the shard; the check's result decides the join.
#[test]
fn a_private_room_needs_its_password_checked_off_the_shard() {
    let mut f = fixture(false, 100);
    let create = HomeOp::Create {
        title: None,
        private: true,
        password_hash: Some("HASH".into()),
    };
    assert_eq!(
        reply(&f.call(origin(0, 1), "ann", "den", create)).unwrap()["room"],
        "den"
    );
    let out = f.join(origin(0, 2), "bob", "den", None);
    assert_eq!(reply(&out), Err(ErrorCode::Forbidden), "no password given");

    let check_with = |f: &mut Fixture, n: u32| {
        let mut out = Outgoing::default();
        let op = HomeOp::Join {
            password: Some("secret".into()),
            peer: None,
            after_seq: None,
            subscribe: Subscribe::New,
        };
        let req = HomeReq {
            room: "den".into(),
            user: "bob".into(),
            op,
        };
        match f.homes.handle(origin(0, n), req, f.now, &mut out) {
            Some(Offload::VerifyPassword(check)) => {
                assert_eq!(
                    (check.password.as_str(), check.hash.as_str()),
                    ("secret", "HASH")
                );
                assert!(out.msgs().is_empty(), "nothing is sent before the check");
                check
            }
            other => panic!("expected a password check, got {other:?}"),
        }
    };
    let check = check_with(&mut f, 3);
    let mut out = Outgoing::default();
    f.homes.join_verified(check, false, f.now, &mut out);
    assert_eq!(reply(&out), Err(ErrorCode::Forbidden), "wrong password");

    let check = check_with(&mut f, 4);
    let mut out = Outgoing::default();
    f.homes.join_verified(check, true, f.now, &mut out);
    assert!(matches!(out.msgs()[0].1, ShardMsg::Subscribed { .. }));
    // Now a member: joins again without a password.
    let out = f.join(origin(0, 5), "bob", "den", None);
    assert!(matches!(out.msgs()[0].1, ShardMsg::Subscribed { .. }));
}

/// Goal: the author and the room's creator may delete a message, nobody else; a seq that
/// was never given is `not_found`; a message no longer in the ring is read from the store
/// to find its author first.
#[test]
fn delete_rules() {
    let mut f = fixture(false, 2);
    let create = HomeOp::Create {
        title: None,
        private: false,
        password_hash: None,
    };
    f.call(origin(0, 1), "owner", "room", create);
    f.join(origin(0, 2), "ann", "room", None);
    f.join(origin(0, 3), "bob", "room", None);
    for who in ["ann", "ann", "ann", "bob"] {
        f.send(origin(0, 2), who, "room", "x");
    }
    let del = |seq| HomeOp::Delete { seq };
    assert_eq!(
        reply(&f.call(origin(0, 3), "bob", "room", del(4))).unwrap()["room"],
        "room"
    );
    assert_eq!(
        reply(&f.call(origin(0, 3), "bob", "room", del(3))),
        Err(ErrorCode::Forbidden)
    );
    assert_eq!(
        reply(&f.call(origin(0, 1), "owner", "room", del(3))).unwrap()["room"],
        "room"
    );
    assert_eq!(
        reply(&f.call(origin(0, 1), "owner", "room", del(0))),
        Err(ErrorCode::NotFound)
    );
    assert_eq!(
        reply(&f.call(origin(0, 1), "owner", "room", del(9))),
        Err(ErrorCode::NotFound)
    );

    // Seq 1 left the ring (it holds 3 and 4): its author comes from the store.
    let out = f.call(origin(0, 3), "bob", "room", del(1));
    assert!(out.msgs().is_empty(), "the delete waits for the store");
    let (_, ticket) = f.log.0.borrow().reads[0].clone();
    let out = f.complete(Completion::Read {
        ticket,
        result: Ok(vec![stored("room", 1, "ann")]),
    });
    assert_eq!(reply(&out), Err(ErrorCode::Forbidden), "bob is not ann");
    let log = f.log.0.borrow();
    let deletes = log
        .appended
        .iter()
        .filter(|(r, _)| matches!(r, Record::Deleted { .. }))
        .count();
    assert_eq!(deletes, 2, "only the allowed deletes were logged");
}

/// Goal: past the cache budget the rooms with the oldest last message lose their ring — but
/// only once the log has settled every record of theirs (a store read must find them) — and
/// their history is then read from the store.
/// Four rooms of shard 0 cached past a 64 KiB budget while nothing was settled (all kept),
/// then the log settles everything: the fixture and the rooms, oldest first.
fn over_the_cache_budget_then_settled() -> (Fixture, Vec<String>) {
    const BUDGET: usize = 64 * 1024;
    let mut f = fixture_with_cache(false, 1000, BUDGET);
    let body = "x".repeat(200);
    // Four rooms homed on shard 0 of 2, as the fixture is.
    let rooms: Vec<String> = (0..)
        .map(|i| format!("r{i}"))
        .filter(|r| crate::placement::home_of(r, 2) == 0)
        .take(4)
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        f.join(origin(0, i as u32 + 1), "ann", room, None);
    }
    // Nothing settled: nothing may be dropped, whatever the budget.
    f.log.0.borrow_mut().settled = Some(0);
    for room in &rooms {
        for _ in 0..20 {
            f.send(origin(0, 1), "ann", room, &body);
        }
    }
    let unsettled = f.homes.cache_bytes();
    assert!(unsettled > BUDGET, "{unsettled} bytes cached, all kept");
    assert!(f.homes.rooms[rooms[0].as_str()].in_ring(1).is_some());
    // A tick while nothing is settled keeps them too.
    f.homes.tick_cache();
    assert_eq!(f.homes.cache_bytes(), unsettled);
    f.log.0.borrow_mut().settled = None;
    (f, rooms)
}

/// Goal: a cache left over its budget while the sink lagged comes back under it on the
/// shard's tick once the records are readable, with no further send (a lagging sink on a
/// loaded machine left it over for good).
#[test]
fn a_cache_over_its_budget_is_brought_under_it_by_the_tick_once_settled() {
    let (mut f, rooms) = over_the_cache_budget_then_settled();
    f.homes.tick_cache();
    let cached = f.homes.cache_bytes();
    assert!(cached <= 64 * 1024 / 8 * 7, "{cached} bytes cached");
    assert_eq!(
        f.homes.rooms[rooms[0].as_str()].cache_bytes(),
        0,
        "the oldest evicted"
    );
}

#[test]
fn past_the_cache_budget_the_oldest_settled_rooms_lose_their_rings() {
    const BUDGET: usize = 64 * 1024;
    let (mut f, rooms) = over_the_cache_budget_then_settled();
    let body = "x".repeat(200);
    let (oldest, newest) = (rooms[0].as_str(), rooms[3].as_str());
    // Settled: the next send brings the cache under the budget, oldest rooms first.
    f.send(origin(0, 1), "ann", newest, &body);
    let cached = f.homes.cache_bytes();
    assert!(cached <= BUDGET / 8 * 7, "{cached} bytes cached");
    assert!(
        f.homes.rooms[oldest].in_ring(20).is_none(),
        "the oldest evicted"
    );
    assert_eq!(f.homes.rooms[oldest].cache_bytes(), 0);
    assert!(
        f.homes.rooms[newest].in_ring(21).is_some(),
        "the room just sent to is kept"
    );
    let sum: usize = f.homes.rooms.values().map(|r| r.cache_bytes()).sum();
    assert_eq!(sum, cached, "the shard's count is the rooms' sum");
    // The oldest room's history now comes from the store.
    let reads = f.log.0.borrow().reads.len();
    let history = HomeOp::History {
        before_seq: None,
        limit: 5,
    };
    let out = f.call(origin(0, 1), "ann", oldest, history);
    assert!(out.msgs().is_empty(), "history waits for the store");
    assert_eq!(f.log.0.borrow().reads.len(), reads + 1);
}

/// Goal: a connection going away stops receiving the room but stays a member; `leave`
/// ends the membership and is logged.
#[test]
fn leaving_by_connection_keeps_the_membership() {
    let mut f = fixture(false, 100);
    f.join(origin(1, 1), "ann", "room", None);
    let out = f.call(
        origin(1, 1),
        "ann",
        "room",
        HomeOp::Leave(Leaving::Connection),
    );
    assert!(
        out.msgs()
            .iter()
            .all(|(_, m)| !matches!(m, ShardMsg::Reply { .. })),
        "no reply"
    );
    let out = f.send(origin(0, 2), "ann", "room", "still a member");
    assert_eq!(reply(&out).unwrap()["seq"], 1);
    assert!(
        delivered(&out).is_empty(),
        "nobody receives the room any more"
    );
    f.join(origin(1, 1), "ann", "room", None);
    assert_eq!(
        delivered(&f.send(origin(0, 2), "ann", "room", "back")),
        vec![(1, 2)]
    );
    let out = f.call(
        origin(1, 1),
        "ann",
        "room",
        HomeOp::Leave(Leaving::Membership),
    );
    assert_eq!(reply(&out).unwrap()["room"], "room");
    let out = f.call(origin(1, 1), "ann", "room", HomeOp::Read { seq: 2 });
    assert_eq!(reply(&out), Err(ErrorCode::NotMember));
}

/// Goal: a `rooms` part looks at no more than `scan_rooms_max` rooms and says where it
/// stopped; with `joined` it walks the user's own rooms only, however many others there are.
#[test]
fn rooms_parts_walk_an_index_within_their_budget() {
    let mut f = fixture(false, 100);
    let names: Vec<String> = (0..)
        .map(|i| format!("room-{i}"))
        .filter(|r| crate::placement::home_of(r, 2) == 0)
        .take(6)
        .collect();
    for (i, room) in names.iter().enumerate() {
        let creator = if i < 4 { "ann" } else { "bob" };
        let create = HomeOp::Create {
            title: None,
            private: false,
            password_hash: None,
        };
        reply(&f.call(origin(0, i as u32 + 1), creator, room, create)).unwrap();
    }
    let mut sorted = names.clone();
    sorted.sort();
    let query = |user: &str, joined: bool, text: Option<&str>, scan: u32| RoomsQuery {
        user: user.into(),
        query: text.map(str::to_owned),
        joined,
        limit: 10,
        cursor: None,
        scan_rooms_max: scan,
    };
    let ids =
        |part: &RoomsPart| -> Vec<String> { part.entries.iter().map(|e| e.room.clone()).collect() };
    let part = f.homes.rooms_part(&query("bob", false, Some("nothing"), 3));
    assert!(part.entries.is_empty());
    assert_eq!(
        part.scanned_to.as_deref(),
        Some(sorted[2].as_str()),
        "3 looked at"
    );
    let part = f.homes.rooms_part(&query("bob", false, None, 100));
    assert_eq!(ids(&part), sorted, "every room, in id order");
    assert_eq!(part.scanned_to, None);
    let mut bobs = names[4..].to_vec();
    bobs.sort();
    let part = f.homes.rooms_part(&query("bob", true, None, 2));
    assert_eq!(ids(&part), bobs, "only bob's rooms are walked");
    assert_eq!(part.scanned_to, None);
    f.join(origin(0, 8), "bob", &bobs[0], None);
    let leave = HomeOp::Leave(Leaving::Membership);
    reply(&f.call(origin(0, 9), "bob", &bobs[0], leave)).unwrap();
    let part = f.homes.rooms_part(&query("bob", true, None, 2));
    assert_eq!(ids(&part), bobs[1..], "a room left is no longer bob's");
}
