//! The embedded store end to end: records in, reads back (merged with the log and from the
//! store alone), and the snapshot after a restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sokdo_persistence::encode_frame;
use sokdo_persistence::Wal;
use sokdo_persistence::{Persistence, ReadRequest, Record, Ticket};
use support::{config, message, seqs, sinks, wait_for, Collector};

fn room_record() -> Record {
    Record::Room {
        room: "lobby".into(),
        title: Some("The Lobby".into()),
        private: true,
        password_hash: Some("$argon2id$v=19$hash".into()),
        creator: "alice".into(),
        created_ms: 42,
    }
}

fn history(c: &Collector, p: &Persistence, token: u64, req: ReadRequest) -> Vec<u64> {
    seqs(&c.read(&p.handle(), 0, token, req))
}

#[test]
fn records_read_back_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let mut cfg = config(dir.path());
    // Batches wait long enough that the first reads are served from the log's backlog.
    cfg.batch_age_ms = 200;
    let (p, rooms) = Persistence::open(cfg.clone(), sinks(&collector, 1)).unwrap();
    assert!(rooms.is_empty());
    let h = p.handle();
    let mut token = 0;
    let mut append = |rec: Record| {
        token += 1;
        h.append(rec, Some(Ticket { shard: 0, token })).unwrap();
    };
    append(room_record());
    for user in ["alice", "bob", "carol"] {
        append(Record::Member {
            room: "lobby".into(),
            user: user.into(),
            joined: true,
        });
    }
    append(Record::Member {
        room: "lobby".into(),
        user: "carol".into(),
        joined: false,
    });
    (1..=20).for_each(|s| append(message("lobby", s)));
    (1..=3).for_each(|s| append(message("other", s)));
    append(Record::Deleted {
        room: "lobby".into(),
        seq: 5,
        by: "alice".into(),
        ts_ms: 99,
    });
    append(Record::ReadPointer {
        room: "lobby".into(),
        user: "bob".into(),
        seq: 12,
    });
    append(Record::ReadPointer {
        room: "lobby".into(),
        user: "bob".into(),
        seq: 7,
    });
    let total = token as usize;
    wait_for("durable", Duration::from_secs(20), || {
        collector.durable_count() == total
    });

    check_reads(&collector, &p, 1000);
    // …and all are in the store here.
    wait_for("sink drained", Duration::from_secs(20), || {
        h_pending(&p) == 0
    });
    check_reads(&collector, &p, 2000);
    p.shutdown().unwrap();
    reopen_and_check(cfg, &collector);
}

fn check_reads(collector: &Collector, p: &Persistence, base: u64) {
    {
        let newest = ReadRequest::Before {
            room: "lobby".into(),
            before_seq: None,
            limit: 5,
        };
        assert_eq!(
            history(collector, p, base + 1, newest),
            vec![16, 17, 18, 19, 20]
        );
        let before = ReadRequest::Before {
            room: "lobby".into(),
            before_seq: Some(7),
            limit: 3,
        };
        let got = collector.read(&p.handle(), 0, base + 2, before);
        assert_eq!(seqs(&got), vec![4, 5, 6]);
        assert!(
            got[1].deleted && got[1].body.is_none(),
            "seq 5 is a tombstone: {:?}",
            got[1]
        );
        assert_eq!(got[0].body.as_deref(), Some("body 4 of lobby"));
        assert_eq!(got[0].name.as_deref(), Some("Name"));
        let after = ReadRequest::After {
            room: "lobby".into(),
            after_seq: 18,
            limit: 10,
        };
        assert_eq!(history(collector, p, base + 3, after), vec![19, 20]);
        let other = ReadRequest::After {
            room: "other".into(),
            after_seq: 0,
            limit: 10,
        };
        assert_eq!(history(collector, p, base + 4, other), vec![1, 2, 3]);
    }
}

fn reopen_and_check(cfg: sokdo_persistence::Config, collector: &Arc<Collector>) {
    let (p, rooms) = Persistence::open(cfg, sinks(collector, 1)).unwrap();
    let lobby = rooms
        .iter()
        .find(|r| r.room == "lobby")
        .expect("lobby survives");
    assert_eq!(lobby.last_seq, 20);
    assert_eq!(lobby.title.as_deref(), Some("The Lobby"));
    assert!(lobby.private);
    assert_eq!(lobby.password_hash.as_deref(), Some("$argon2id$v=19$hash"));
    assert_eq!(lobby.creator, "alice");
    assert_eq!(lobby.created_ms, 42);
    assert_eq!(lobby.members, vec!["alice".to_string(), "bob".to_string()]);
    assert_eq!(lobby.read_pointers, vec![("bob".to_string(), 12)]);
    let other = rooms
        .iter()
        .find(|r| r.room == "other")
        .expect("other survives");
    assert_eq!(other.last_seq, 3);
    check_reads(collector, &p, 3000);
    p.shutdown().unwrap();
}

fn h_pending(p: &Persistence) -> u64 {
    p.handle().stats().wal_records_pending_sink
}

#[test]
fn a_log_the_sink_never_saw_is_replayed_into_the_snapshot_and_reads() {
    // What a crash between fdatasync and the sink's batch leaves: records only in the log.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(&dir.path().join("wal"), 16 * 1024).unwrap();
    let mut recs: Vec<Record> = (1..=30).map(|s| message("r", s)).collect();
    recs.push(Record::Member {
        room: "r".into(),
        user: "u".into(),
        joined: true,
    });
    let mut buf = Vec::new();
    for (i, rec) in recs.iter().enumerate() {
        encode_frame(rec, wal.next_lsn() + i as u64, &mut buf).unwrap();
    }
    wal.append(&buf, recs.len() as u64, true).unwrap();
    drop(wal);

    let collector = Arc::new(Collector::default());
    let (p, rooms) = Persistence::open(config(dir.path()), sinks(&collector, 1)).unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].last_seq, 30);
    assert_eq!(rooms[0].members, vec!["u".to_string()]);
    let got = collector.read(
        &p.handle(),
        0,
        100,
        ReadRequest::After {
            room: "r".into(),
            after_seq: 0,
            limit: 100,
        },
    );
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<_>>());
    // The replay reaches the store and the log is trimmed down to its live segment.
    wait_for("replay applied", Duration::from_secs(20), || {
        p.handle().stats().wal_records_pending_sink == 0
    });
    p.shutdown().unwrap();
}

/// `settled` counts a shard's appends once they are readable, in order, with and without
/// tickets: a shard may drop a message from its cache once `settled` covers it.
#[test]
fn settled_counts_a_shards_appends_once_a_read_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let mut cfg = config(dir.path());
    cfg.durability = sokdo_persistence::Durability::Async;
    // Batches wait long: the reads below are answered from the log's backlog.
    cfg.batch_age_ms = 60_000;
    let (p, _) = Persistence::open(cfg, sinks(&collector, 2)).unwrap();
    let shard1 = p.handle().for_shard(1).expect("shard 1 of 2");
    assert!(p.handle().for_shard(2).is_none());
    assert_eq!(shard1.settled(), 0);
    for seq in 1..=50 {
        shard1.append(message("cache", seq), None).unwrap();
    }
    // Appends through a handle without a shard are not counted.
    p.handle().append(message("other", 1), None).unwrap();
    wait_for("50 settled", Duration::from_secs(20), || {
        shard1.settled() == 50
    });
    assert_eq!(p.handle().settled(), 0);
    let read = ReadRequest::After {
        room: "cache".into(),
        after_seq: 0,
        limit: 100,
    };
    assert_eq!(
        history(&collector, &p, 1, read),
        (1..=50).collect::<Vec<_>>()
    );
    p.shutdown().unwrap();
}
