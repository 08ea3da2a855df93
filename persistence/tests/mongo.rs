//! The MongoDB sink through the real driver: against the wire-protocol double (always),
//! against SecantusDB, a third-party MongoDB-wire server (always; `support/secantus.rs`), and
//! against a real mongod when `MONGODB_URI` is set.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use sokdo_persistence::{Config, Handle, Persistence, ReadRequest, Record, Stats, Ticket};
use support::mongo_double::MongoDouble;
use support::mongo_server::MongoServer;
use support::secantus::Secantus;
use support::{config, message, seqs, sinks, wait_for, Collector};

const WAIT: Duration = Duration::from_secs(60);

fn mongo_config(dir: &std::path::Path, uri: String, database: String) -> Config {
    let mut cfg = config(dir);
    cfg.mongodb_uri = Some(uri);
    cfg.mongodb_database = database;
    cfg.wal_segment_bytes = 4096;
    cfg.wal_bytes_max = 4 * 1024 * 1024;
    cfg.batch_messages_max = 50;
    cfg.batch_age_ms = 5;
    cfg
}

/// Reads a whole collection through the driver (against the double this exercises find and
/// getMore as well).
fn fetch(uri: &str, database: &str, coll: &str) -> Vec<Document> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let c = client.database(database).collection::<Document>(coll);
        c.find(doc! {})
            .batch_size(64)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    })
}

fn seq_of(d: &Document) -> u64 {
    match d.get("seq") {
        Some(Bson::Int64(v)) => *v as u64,
        Some(Bson::Int32(v)) => *v as u64,
        other => panic!("seq missing or mistyped: {other:?}"),
    }
}

/// Appends a room, members, `n` messages, a tombstone and a read pointer; waits until the sink
/// confirmed all; checks the documents and reads back through persistence.
fn round_trip(p: &Persistence, collector: &Collector, uri: &str, database: &str, n: u64) {
    let h = p.handle();
    append_room_history(&h, n);
    wait_for("durable", WAIT, || collector.durable_count() as u64 == n);
    wait_for("sink confirmed", WAIT, || {
        h.stats().wal_records_pending_sink == 0
    });

    check_documents(uri, database, n);

    let got = collector.read(
        &h,
        0,
        1_000_001,
        ReadRequest::Before {
            room: "a".into(),
            before_seq: Some(9),
            limit: 3,
        },
    );
    assert_eq!(seqs(&got), vec![6, 7, 8]);
    assert!(got[1].deleted && got[1].body.is_none());
}

/// Room "a" with alice and bob, messages 1..=n (ticketed), message 7 deleted, bob read to 9.
fn append_room_history(h: &Handle, n: u64) {
    h.append(
        Record::Room {
            room: "a".into(),
            title: Some("A".into()),
            private: true,
            password_hash: Some("hash".into()),
            creator: "alice".into(),
            created_ms: 7,
        },
        None,
    )
    .unwrap();
    h.append(
        Record::Member {
            room: "a".into(),
            user: "alice".into(),
            joined: true,
        },
        None,
    )
    .unwrap();
    h.append(
        Record::Member {
            room: "a".into(),
            user: "bob".into(),
            joined: true,
        },
        None,
    )
    .unwrap();
    for s in 1..=n {
        h.append(message("a", s), Some(Ticket { shard: 0, token: s }))
            .unwrap();
    }
    h.append(
        Record::Deleted {
            room: "a".into(),
            seq: 7,
            by: "alice".into(),
            ts_ms: 1,
        },
        None,
    )
    .unwrap();
    h.append(
        Record::ReadPointer {
            room: "a".into(),
            user: "bob".into(),
            seq: 9,
        },
        None,
    )
    .unwrap();
}

/// What `append_room_history` must have left in the collections.
fn check_documents(uri: &str, database: &str, n: u64) {
    let msgs = fetch(uri, database, "messages");
    assert_eq!(msgs.len() as u64, n);
    let m7 = msgs
        .iter()
        .find(|d| d.get_str("_id") == Ok("a:00000000000000000007"))
        .expect("message 7");
    assert_eq!(m7.get_bool("deleted"), Ok(true));
    assert!(m7.get("body").is_none(), "a tombstone has no body: {m7}");
    let m8 = msgs.iter().find(|d| seq_of(d) == 8).expect("message 8");
    assert_eq!(m8.get_str("body"), Ok("body 8 of a"));
    assert_eq!(m8.get_str("msg_id"), Ok("m-a-8"));
    assert_eq!(m8.get_str("name"), Ok("Name"));
    let rooms = fetch(uri, database, "rooms");
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].get_str("password_hash"), Ok("hash"));
    assert_eq!(rooms[0].get_i64("last_seq"), Ok(n as i64));
    assert_eq!(fetch(uri, database, "members").len(), 2);
    let rp = fetch(uri, database, "read_pointers");
    assert_eq!(rp.len(), 1);
    assert_eq!(rp[0].get_i64("seq"), Ok(9));
}

/// The server goes away; messages 101..=400 are appended meanwhile. Returns the stats seen
/// during the outage.
fn outage(server: &mut dyn MongoServer, h: &Handle, collector: &Collector) -> Stats {
    // The server goes away. Chat goes on: appends succeed and become durable in the log.
    server.stop();
    let segments_before = h.stats().wal_segments;
    for s in 101..=400 {
        h.append(message("a", s), Some(Ticket { shard: 0, token: s }))
            .unwrap();
    }
    wait_for("durable during the outage", WAIT, || {
        collector.durable_count() == 400
    });
    wait_for("the sink noticing the outage", WAIT, || !h.stats().sink_up);
    let during = h.stats();
    assert!(
        during.wal_records_pending_sink > 0 && during.sink_lag_records > 0,
        "{during:?}"
    );
    assert!(
        during.wal_segments > segments_before + 3,
        "the log grows: {during:?}"
    );
    during
}

/// The outage story on any MongoDB-wire server, in `database`: a round trip of 100 messages
/// (then `inspect`, for what only the double can show), an outage while 300 more are appended,
/// the server back, the backlog drained with every message once, the log trimmed, reads whole,
/// and a restart resuming `last_seq`, members and pointers from the server.
fn outage_story(server: &mut dyn MongoServer, database: &str, inspect: impl FnOnce()) {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let uri = server.uri();
    let cfg = mongo_config(dir.path(), uri.clone(), database.into());
    let (p, rooms) = Persistence::open(cfg.clone(), sinks(&collector, 1)).unwrap();
    assert!(rooms.is_empty());
    round_trip(&p, &collector, &uri, database, 100);
    inspect();

    let h = p.handle();
    let during = outage(server, &h, &collector);

    // It comes back: the backlog drains, nothing missing, nothing twice, and the log shrinks.
    server.start();
    wait_for("backlog drained", WAIT, || {
        h.stats().wal_records_pending_sink == 0
    });
    assert!(h.stats().sink_up);
    let msgs = fetch(&uri, database, "messages");
    let got: Vec<u64> = msgs.iter().map(seq_of).collect();
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(got.len(), 400, "no duplicates");
    assert_eq!(unique, (1..=400).collect(), "nothing missing");
    wait_for("segments trimmed", WAIT, || h.stats().wal_segments <= 2);
    assert!(h.stats().wal_bytes < during.wal_bytes);
    let all = collector.read(
        &h,
        0,
        2_000_000,
        ReadRequest::After {
            room: "a".into(),
            after_seq: 0,
            limit: 1000,
        },
    );
    assert_eq!(seqs(&all), (1..=400).collect::<Vec<_>>());
    p.shutdown().unwrap();

    // A restart resumes from MongoDB: sequences continue, members and pointers return.
    let (p, rooms) = Persistence::open(cfg, sinks(&collector, 1)).unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].last_seq, 400);
    assert_eq!(
        rooms[0].members,
        vec!["alice".to_string(), "bob".to_string()]
    );
    assert_eq!(rooms[0].read_pointers, vec![("bob".to_string(), 9)]);
    assert_eq!(rooms[0].password_hash.as_deref(), Some("hash"));
    p.shutdown().unwrap();
}

#[test]
fn mongo_sink_against_the_wire_double_survives_an_outage_without_loss_or_duplicates() {
    let double = MongoDouble::start_new();
    let inspect = {
        let double = &double;
        move || {
            assert!(
                double.command_count("createIndexes") >= 3,
                "indexes created at start-up"
            );
            let batches = double.insert_batches();
            assert!(
                batches.iter().sum::<usize>() >= 100 && batches.len() < 100,
                "inserts were batched: {batches:?}"
            );
            assert!(
                batches.iter().all(|b| *b <= 50),
                "batch_messages_max respected: {batches:?}"
            );
        }
    };
    outage_story(&mut &double, "sokdo", inspect);
}

#[test]
fn mongo_sink_against_secantusdb_survives_an_outage_without_loss_or_duplicates() {
    let mut server = Secantus::start_new();
    outage_story(&mut server, "sokdo", || {});
}

/// A whole log replayed into a server that already has it (20 messages): still exactly 20
/// documents, on any MongoDB-wire server at `uri`.
fn replay_story(uri: &str, database: &str) {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let mut cfg = mongo_config(dir.path(), uri.to_string(), database.into());
    // Nothing is confirmed while running, so everything is replayed at the next open...
    cfg.batch_messages_max = 1_000_000;
    cfg.batch_age_ms = 3_600_000;
    let (p, _) = Persistence::open(cfg.clone(), sinks(&collector, 1)).unwrap();
    (1..=20).for_each(|s| {
        p.handle()
            .append(message("r", s), Some(Ticket { shard: 0, token: s }))
            .unwrap()
    });
    wait_for("durable", WAIT, || collector.durable_count() == 20);
    // ...but shutdown drains them once; the reopen replays the same records again.
    p.shutdown().unwrap();
    assert_eq!(fetch(uri, database, "messages").len(), 20);
    cfg.batch_messages_max = 50;
    cfg.batch_age_ms = 5;
    let (p, rooms) = Persistence::open(cfg, sinks(&collector, 1)).unwrap();
    assert_eq!(rooms[0].last_seq, 20);
    wait_for("replay confirmed", WAIT, || {
        p.handle().stats().wal_records_pending_sink == 0
    });
    assert_eq!(
        fetch(uri, database, "messages").len(),
        20,
        "the replay did not duplicate"
    );
    p.shutdown().unwrap();
}

#[test]
fn a_replayed_batch_is_idempotent_on_the_double() {
    let double = MongoDouble::start_new();
    replay_story(&double.uri(), "sokdo");
    assert!(
        double.duplicate_errors() >= 20,
        "the replayed inserts hit existing _ids"
    );
}

#[test]
fn a_replayed_batch_is_idempotent_on_secantusdb() {
    let server = Secantus::start_new();
    replay_story(&server.uri(), "sokdo");
}

/// The round trip through a real MongoDB-wire server at `uri`, in a database of its own that
/// it drops at the end: documents, batches, reads, and a restart resuming `last_seq`.
fn real_server_round_trip(uri: &str) {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let database = format!("sokdo_test_{stamp}");
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let cfg = mongo_config(dir.path(), uri.to_string(), database.clone());
    let (p, _) = Persistence::open(cfg.clone(), sinks(&collector, 1)).unwrap();
    round_trip(&p, &collector, uri, &database, 200);
    p.shutdown().unwrap();
    let (p, rooms) = Persistence::open(cfg, sinks(&collector, 1)).unwrap();
    assert_eq!(rooms[0].last_seq, 200);
    p.shutdown().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        mongodb::Client::with_uri_str(uri)
            .await
            .unwrap()
            .database(&database)
            .drop()
            .await
            .unwrap()
    });
}

/// Against SecantusDB always; against a real mongod too when `MONGODB_URI` names one (it is
/// not set here, so that part never ran here). One test, so that none passes having run
/// nothing.
#[test]
fn mongo_sink_against_secantusdb_round_trips_and_resumes() {
    let server = Secantus::start_new();
    real_server_round_trip(&server.uri());
    if let Ok(uri) = std::env::var("MONGODB_URI") {
        real_server_round_trip(&uri);
    }
}

/// SecantusDB behind a proxy that first makes every chunk wait (a slow MongoDB), then resets
/// every connection, mid-batch included (a MongoDB that drops its clients): the log keeps
/// acknowledging appends throughout (it, not the sink, is the durability point), the sink's
/// backlog shows in the stats while slow, the sink reports itself down and counts its failed
/// batches while resetting, and once the proxy heals it drains by itself with every message
/// stored exactly once.
#[test]
fn mongo_sink_rides_out_a_slow_then_resetting_server_without_loss_or_duplicates() {
    use support::fault_proxy::FaultProxy;
    let secantus = Secantus::start_new();
    let proxy = FaultProxy::start(([127, 0, 0, 1], secantus_port(&secantus)).into());
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let cfg = mongo_config(dir.path(), proxy.uri(), "faults".into());
    let (p, _) = Persistence::open(cfg, sinks(&collector, 1)).unwrap();
    let h = p.handle();
    round_trip(&p, &collector, &secantus.uri(), "faults", 100);

    // Slow: 30 ms per chunk each way. Appends are still acknowledged; the backlog shows.
    proxy.set_delay_ms(30);
    for s in 101..=400 {
        h.append(message("a", s), Some(Ticket { shard: 0, token: s }))
            .unwrap();
    }
    wait_for("durable while the sink is slow", WAIT, || {
        collector.durable_count() == 400
    });
    let slow = h.stats();
    assert!(slow.sink_lag_records > 0, "the backlog shows: {slow:?}");

    // Resetting: every connection, in the middle of whatever batch it carried.
    proxy.start_resetting();
    for s in 401..=600 {
        h.append(message("a", s), Some(Ticket { shard: 0, token: s }))
            .unwrap();
    }
    wait_for("durable while the sink is reset", WAIT, || {
        collector.durable_count() == 600
    });
    wait_for("the sink noticing the resets", WAIT, || !h.stats().sink_up);
    let errors = h.stats().sink_errors;
    wait_for("the sink retrying", WAIT, || h.stats().sink_errors > errors);
    assert!(proxy.resets() > 0);

    proxy.heal();
    wait_for("backlog drained after the resets", WAIT, || {
        h.stats().wal_records_pending_sink == 0
    });
    assert!(h.stats().sink_up);
    let msgs = fetch(&secantus.uri(), "faults", "messages");
    let got: Vec<u64> = msgs.iter().map(seq_of).collect();
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(got.len(), 600, "no duplicates");
    assert_eq!(unique, (1..=600).collect(), "nothing missing");
    p.shutdown().unwrap();
}

fn secantus_port(s: &Secantus) -> u16 {
    let uri = s.uri();
    let rest = uri
        .strip_prefix("mongodb://127.0.0.1:")
        .expect("SecantusDB's URI");
    rest.split('/').next().unwrap().parse().expect("a port")
}
