//! The MongoDB sink, through the official `mongodb` driver (3.x).
//!
//! The driver is async; it runs on a private one-worker tokio runtime (thread `sokdo-mongo`)
//! that lives as long as the sink. The sink and read threads call into it with
//! `Handle::block_on`: they are persistence threads, so blocking them is their job.
//!
//! Collections (in `Config::mongodb_database`):
//! - `messages`: `_id = "{room}:{seq:020}"` (the 20 digits make it unambiguous even when the room
//!   id has a colon), `room`, `seq`, `msg_id`, `from`, `name`, `body`, `ts_ms`, `client_msg_id`,
//!   `deleted`; a tombstone has `deleted: true`, no `body`, `deleted_by`, `deleted_ms`.
//!   Index `{room: 1, seq: 1}` unique.
//! - `rooms`: `_id = room`, `title`, `private`, `password_hash`, `creator`, `created_ms`,
//!   `last_seq` (kept with `$max`).
//! - `members`: `_id = {room, user}`, `room`, `user`. Index `{room: 1}`.
//! - `read_pointers`: `_id = {room, user}`, `room`, `user`, `seq` (kept with `$max`).
//!   Index `{room: 1}`.
//!
//! Idempotency: messages go in with one unordered `insertMany` per batch; a duplicate `_id`
//! (E11000) means the message is already there — from a retried batch or a replay — and counts
//! as success, and it never overwrites a tombstone. Everything else is an upsert with `$set` or
//! `$max`, or a delete, each of which gives the same result applied twice.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::runtime::Runtime;

use crate::contract::{Error, ReadRequest, Record, RetryKey, RoomSnapshot, StoredMessage};
use crate::sink::{Opened, Sink, SinkReader};
use crate::snapshot::Rooms;

/// How long an operation waits for a reachable server before failing (and being retried by
/// the sink thread's backoff). Applies unless the URI sets `serverSelectionTimeoutMS`.
pub const MONGO_SERVER_SELECTION_TIMEOUT_MS: u64 = 2_000;
/// How often the driver re-checks a server; short so a recovered server is seen quickly.
/// Applies unless the URI sets `heartbeatFrequencyMS`.
pub const MONGO_HEARTBEAT_MS: u64 = 1_000;
pub const MONGO_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// The duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

pub fn message_id(room: &str, seq: u64) -> String {
    format!("{room}:{seq:020}")
}

fn opt(v: &Option<String>) -> Bson {
    v.as_ref().map_or(Bson::Null, |s| Bson::String(s.clone()))
}

fn seq_bson(seq: u64) -> Bson {
    // Sequence numbers stay far below 2^63; BSON has no unsigned 64-bit integer.
    Bson::Int64(seq as i64)
}

struct Collections {
    messages: Collection<Document>,
    rooms: Collection<Document>,
    members: Collection<Document>,
    read_pointers: Collection<Document>,
}

impl Collections {
    fn new(db: &Database) -> Collections {
        Collections {
            messages: db.collection("messages"),
            rooms: db.collection("rooms"),
            members: db.collection("members"),
            read_pointers: db.collection("read_pointers"),
        }
    }
}

pub struct MongoSink {
    rt: Arc<Runtime>,
    colls: Collections,
    /// False when the server was unreachable at start-up: the first batch creates them.
    indexed: bool,
}

pub struct MongoReader {
    rt: Arc<Runtime>,
    colls: Collections,
}

/// Connects, creates the indexes and reads every room (with its newest `retry_keys_max` retry
/// keys). A server not reachable within the selection timeout is not an error here: `rooms`
/// is then that error, and the writer creates the indexes once the server answers. A URI the
/// driver rejects is an error.
pub fn open_sink(uri: &str, database: &str, retry_keys_max: usize) -> Result<Opened, Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sokdo-mongo")
        .enable_all()
        .build()
        .map_err(Error::io("sokdo-mongo runtime"))?;
    let rt = Arc::new(rt);
    let db = rt.block_on(async {
        let mut opts = ClientOptions::parse(uri).await?;
        opts.server_selection_timeout
            .get_or_insert(Duration::from_millis(MONGO_SERVER_SELECTION_TIMEOUT_MS));
        opts.heartbeat_freq
            .get_or_insert(Duration::from_millis(MONGO_HEARTBEAT_MS));
        opts.connect_timeout
            .get_or_insert(Duration::from_millis(MONGO_CONNECT_TIMEOUT_MS));
        opts.app_name.get_or_insert_with(|| "sokdo".to_string());
        // A batch leaves the log once MongoDB acknowledges it: only a journaled write may
        // be acknowledged, or a crash of mongod (which flushes its journal every 100 ms by
        // default) would lose messages the log no longer has. The URI may say otherwise.
        opts.write_concern
            .get_or_insert_with(WriteConcern::default)
            .journal
            .get_or_insert(true);
        Ok::<_, mongodb::error::Error>(Client::with_options(opts)?.database(database))
    })?;
    let colls = Collections::new(&db);
    let rooms = rt.block_on(async {
        create_indexes(&colls).await?;
        snapshot(&colls, retry_keys_max).await
    });
    let reader = MongoReader {
        rt: rt.clone(),
        colls: Collections::new(&db),
    };
    let indexed = rooms.is_ok();
    Ok(Opened {
        sink: Box::new(MongoSink { rt, colls, indexed }),
        reader: Box::new(reader),
        rooms,
    })
}

async fn create_indexes(c: &Collections) -> Result<(), Error> {
    let unique = IndexOptions::builder().unique(true).build();
    c.messages
        .create_index(
            IndexModel::builder()
                .keys(doc! {"room": 1, "seq": 1})
                .options(unique)
                .build(),
        )
        .await?;
    c.members
        .create_index(IndexModel::builder().keys(doc! {"room": 1}).build())
        .await?;
    c.read_pointers
        .create_index(IndexModel::builder().keys(doc! {"room": 1}).build())
        .await?;
    Ok(())
}

fn get_u64(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int64(v)) => *v as u64,
        Some(Bson::Int32(v)) => *v as u64,
        Some(Bson::Double(v)) => *v as u64,
        _ => 0,
    }
}

fn get_string(d: &Document, key: &str) -> Option<String> {
    d.get_str(key).ok().map(str::to_string)
}

/// The newest `max` messages of `room` sent with a `client_msg_id`, ascending by seq.
async fn retry_keys(c: &Collections, room: &str, max: usize) -> Result<Vec<RetryKey>, Error> {
    let docs: Vec<Document> = c
        .messages
        .find(doc! {"room": room, "client_msg_id": {"$ne": Bson::Null}})
        .sort(doc! {"seq": -1})
        .limit(i64::try_from(max).unwrap_or(i64::MAX))
        .await?
        .try_collect()
        .await?;
    let mut keys: Vec<RetryKey> = docs
        .iter()
        .filter_map(|d| {
            Some(RetryKey {
                from: get_string(d, "from")?,
                client_msg_id: get_string(d, "client_msg_id")?,
                seq: get_u64(d, "seq"),
                ts_ms: get_u64(d, "ts_ms"),
            })
        })
        .collect();
    keys.reverse();
    Ok(keys)
}

async fn snapshot(c: &Collections, retry_keys_max: usize) -> Result<Vec<RoomSnapshot>, Error> {
    let mut snaps = Vec::new();
    let rooms: Vec<Document> = c.rooms.find(doc! {}).await?.try_collect().await?;
    for d in rooms {
        let Some(room) = get_string(&d, "_id") else {
            continue;
        };
        let retry_keys = retry_keys(c, &room, retry_keys_max).await?;
        snaps.push(RoomSnapshot {
            retry_keys,
            room,
            title: get_string(&d, "title"),
            private: d.get_bool("private").unwrap_or(false),
            password_hash: get_string(&d, "password_hash"),
            creator: get_string(&d, "creator").unwrap_or_default(),
            created_ms: get_u64(&d, "created_ms"),
            last_seq: get_u64(&d, "last_seq"),
            ..RoomSnapshot::default()
        });
    }
    let mut rooms = Rooms::from_snapshots(snaps, retry_keys_max);
    let members: Vec<Document> = c.members.find(doc! {}).await?.try_collect().await?;
    for d in members {
        if let (Some(room), Some(user)) = (get_string(&d, "room"), get_string(&d, "user")) {
            rooms.apply(&Record::Member {
                room,
                user,
                joined: true,
            });
        }
    }
    let pointers: Vec<Document> = c.read_pointers.find(doc! {}).await?.try_collect().await?;
    for d in pointers {
        if let (Some(room), Some(user)) = (get_string(&d, "room"), get_string(&d, "user")) {
            rooms.apply(&Record::ReadPointer {
                room,
                user,
                seq: get_u64(&d, "seq"),
            });
        }
    }
    Ok(rooms.into_snapshots())
}

fn message_doc(rec: &Record) -> Option<Document> {
    let Record::Message {
        room,
        seq,
        msg_id,
        from,
        name,
        body,
        ts_ms,
        client_msg_id,
    } = rec
    else {
        return None;
    };
    Some(doc! {
        "_id": message_id(room, *seq), "room": room, "seq": seq_bson(*seq), "msg_id": msg_id,
        "from": from, "name": opt(name), "body": body, "ts_ms": seq_bson(*ts_ms),
        "client_msg_id": opt(client_msg_id), "deleted": false,
    })
}

/// Whether an insert error only reports duplicates (which we count as success).
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(im) => {
            im.write_concern_error.is_none()
                && im
                    .write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        _ => false,
    }
}

async fn apply_other(c: &Collections, rec: &Record) -> Result<(), mongodb::error::Error> {
    match rec {
        Record::Message { .. } => {}
        Record::Deleted {
            room,
            seq,
            by,
            ts_ms,
        } => {
            let update = doc! {
                "$set": {"room": room, "seq": seq_bson(*seq), "deleted": true, "deleted_by": by,
                         "deleted_ms": seq_bson(*ts_ms)},
                "$unset": {"body": ""},
            };
            c.messages
                .update_one(doc! {"_id": message_id(room, *seq)}, update)
                .upsert(true)
                .await?;
        }
        Record::Room {
            room,
            title,
            private,
            password_hash,
            creator,
            created_ms,
        } => {
            let update = doc! {"$set": {
                "title": opt(title), "private": private, "password_hash": opt(password_hash),
                "creator": creator, "created_ms": seq_bson(*created_ms),
            }};
            c.rooms
                .update_one(doc! {"_id": room}, update)
                .upsert(true)
                .await?;
        }
        Record::Member { room, user, joined } => {
            let id = doc! {"_id": {"room": room, "user": user}};
            if *joined {
                let update = doc! {"$set": {"room": room, "user": user}};
                c.members.update_one(id, update).upsert(true).await?;
            } else {
                c.members.delete_one(id).await?;
            }
        }
        Record::ReadPointer { room, user, seq } => {
            let update =
                doc! {"$set": {"room": room, "user": user}, "$max": {"seq": seq_bson(*seq)}};
            c.read_pointers
                .update_one(doc! {"_id": {"room": room, "user": user}}, update)
                .upsert(true)
                .await?;
        }
    }
    Ok(())
}

impl Sink for MongoSink {
    fn apply(&mut self, batch: &[(u64, Arc<Record>)]) -> Result<(), Error> {
        let c = &self.colls;
        if !self.indexed {
            self.rt.block_on(create_indexes(c))?;
            self.indexed = true;
        }
        self.rt.block_on(async {
            let docs: Vec<Document> = batch.iter().filter_map(|(_, r)| message_doc(r)).collect();
            if !docs.is_empty() {
                if let Err(e) = c.messages.insert_many(docs).ordered(false).await {
                    if !only_duplicates(&e) {
                        return Err(Error::from(e));
                    }
                }
            }
            // Messages first: a tombstone in this batch must find its message inserted.
            let mut last_seq: BTreeMap<&str, u64> = BTreeMap::new();
            for (_, rec) in batch {
                apply_other(c, rec).await?;
                if let Record::Message { room, seq, .. } | Record::Deleted { room, seq, .. } =
                    rec.as_ref()
                {
                    let s = last_seq.entry(room.as_str()).or_default();
                    *s = (*s).max(*seq);
                }
            }
            for (room, seq) in last_seq {
                let update = doc! {"$max": {"last_seq": seq_bson(seq)}};
                c.rooms
                    .update_one(doc! {"_id": room}, update)
                    .upsert(true)
                    .await?;
            }
            Ok(())
        })
    }
}

fn stored(d: &Document) -> StoredMessage {
    StoredMessage {
        room: get_string(d, "room").unwrap_or_default(),
        seq: get_u64(d, "seq"),
        msg_id: get_string(d, "msg_id").unwrap_or_default(),
        from: get_string(d, "from").unwrap_or_default(),
        name: get_string(d, "name"),
        body: get_string(d, "body"),
        ts_ms: get_u64(d, "ts_ms"),
        deleted: d.get_bool("deleted").unwrap_or(false),
    }
}

impl SinkReader for MongoReader {
    fn read(&mut self, req: &ReadRequest) -> Result<Vec<StoredMessage>, Error> {
        let limit = req.limit() as i64;
        let c = &self.colls;
        self.rt.block_on(async {
            let (filter, sort) = match req {
                ReadRequest::Before {
                    room,
                    before_seq: Some(b),
                    ..
                } => (doc! {"room": room, "seq": {"$lt": seq_bson(*b)}}, -1),
                ReadRequest::Before {
                    room,
                    before_seq: None,
                    ..
                } => (doc! {"room": room}, -1),
                ReadRequest::After {
                    room, after_seq, ..
                } => (doc! {"room": room, "seq": {"$gt": seq_bson(*after_seq)}}, 1),
            };
            let docs: Vec<Document> = c
                .messages
                .find(filter)
                .sort(doc! {"seq": sort})
                .limit(limit)
                .await?
                .try_collect()
                .await?;
            let mut out: Vec<StoredMessage> = docs.iter().map(stored).collect();
            out.sort_by_key(|m| m.seq);
            Ok(out)
        })
    }
}
