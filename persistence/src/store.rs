//! The embedded store: the default sink, one redb file at `{data_dir}/store.redb`.
//!
//! Why redb: pure Rust (no C toolchain, no RocksDB build on a 2-core box), ACID with
//! copy-on-write B-trees and a crash-safe commit, MVCC so the read thread never blocks the sink
//! thread's writes, one file, a stable file format since 1.0, and actively maintained. A sink
//! batch is exactly one write transaction — the group commit of the store — so its cost is
//! one fsync per batch, not per record. (fjall, an LSM tree, would be the pick for write volumes
//! far beyond one instance's; our writes are already batched and reads are range scans.)
//!
//! Tables (keys sort as tuples, so one room's messages are contiguous and ordered by seq):
//! - `messages`: `(room, seq)` → rkyv [`Row`]; a tombstone is a row with `deleted` and no body;
//! - `rooms`: `room` → rkyv [`RoomRow`], including `last_seq`;
//! - `members`: `(room, user)` → `()`;
//! - `read_pointers`: `(room, user)` → `seq`;
//! - `retry_keys`: `(room, seq)` → rkyv `KeyRow` (`from`, `client_msg_id`, `ts_ms`) of each
//!   message sent with a `client_msg_id`; a restart reads each room's newest `retry_keys_max`.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::contract::{Error, ReadRequest, Record, RetryKey, RoomSnapshot, StoredMessage};
use crate::sink::{Opened, Sink, SinkReader};

const MESSAGES: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("messages");
const ROOMS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("rooms");
const MEMBERS: TableDefinition<'static, (&str, &str), ()> = TableDefinition::new("members");
const READ_POINTERS: TableDefinition<'static, (&str, &str), u64> =
    TableDefinition::new("read_pointers");
/// `(room, seq)` → rkyv [`KeyRow`] of every message sent with a `client_msg_id`; start-up
/// reads the newest `retry_keys_max` of each room.
const RETRY_KEYS: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("retry_keys");

#[derive(Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Row {
    msg_id: String,
    from: String,
    name: Option<String>,
    body: Option<String>,
    ts_ms: u64,
    deleted: bool,
}

#[derive(Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct KeyRow {
    from: String,
    client_msg_id: String,
    ts_ms: u64,
}

#[derive(Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct RoomRow {
    title: Option<String>,
    private: bool,
    password_hash: Option<String>,
    creator: String,
    created_ms: u64,
    last_seq: u64,
}

fn encode<T>(v: &T) -> Result<rkyv::util::AlignedVec, Error>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(v).map_err(Error::StoreRow)
}

macro_rules! decode {
    ($t:ty, $bytes:expr) => {{
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice($bytes);
        rkyv::from_bytes::<$t, rkyv::rancor::Error>(&aligned).map_err(Error::StoreRow)
    }};
}

/// The sink side (writes); clone the `Arc<Database>` for readers.
pub struct Store {
    db: Arc<Database>,
}

/// Bytes of redb page cache; the store is written to far more than it is read.
pub const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The read side.
pub struct StoreReader {
    db: Arc<Database>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, Error> {
        // redb's default page cache is 1 GiB: on a 2 GiB instance the cache must be bounded.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        // Creating the tables up front lets readers open them before the first write.
        txn.open_table(MESSAGES)?;
        txn.open_table(ROOMS)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(READ_POINTERS)?;
        txn.open_table(RETRY_KEYS)?;
        txn.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Opens the store as a sink: writer, reader and every room's snapshot.
    pub fn open_sink(path: &Path, retry_keys_max: usize) -> Result<Opened, Error> {
        let store = Store::open(path)?;
        let rooms = store.snapshot(retry_keys_max)?;
        let reader = Box::new(store.reader());
        Ok(Opened {
            sink: Box::new(store),
            reader,
            rooms: Ok(rooms),
        })
    }

    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
        }
    }

    /// Every room, with at most `retry_keys_max` retry keys each (the newest).
    pub fn snapshot(&self, retry_keys_max: usize) -> Result<Vec<RoomSnapshot>, Error> {
        let txn = self.db.begin_read()?;
        let mut rooms = Vec::new();
        for entry in txn.open_table(ROOMS)?.iter()? {
            let (k, v) = entry?;
            let row = decode!(RoomRow, v.value())?;
            rooms.push(RoomSnapshot {
                room: k.value().to_string(),
                title: row.title,
                private: row.private,
                password_hash: row.password_hash,
                creator: row.creator,
                created_ms: row.created_ms,
                last_seq: row.last_seq,
                members: Vec::new(),
                read_pointers: Vec::new(),
                retry_keys: Vec::new(),
            });
        }
        // Both tables and `rooms` iterate in room order, so one merge pass attaches them.
        let members = txn.open_table(MEMBERS)?;
        let pointers = txn.open_table(READ_POINTERS)?;
        let keys = txn.open_table(RETRY_KEYS)?;
        for snap in &mut rooms {
            let room = snap.room.as_str();
            for entry in members.range((room, "")..)? {
                let (k, _) = entry?;
                let (r, user) = k.value();
                if r != room {
                    break;
                }
                snap.members.push(user.to_string());
            }
            for entry in pointers.range((room, "")..)? {
                let (k, v) = entry?;
                let (r, user) = k.value();
                if r != room {
                    break;
                }
                snap.read_pointers.push((user.to_string(), v.value()));
            }
            snap.retry_keys = retry_keys(&keys, room, retry_keys_max)?;
        }
        Ok(rooms)
    }

    /// One record into the batch's transaction; each kind has its own writer.
    fn apply_one(txn: &redb::WriteTransaction, rec: &Record) -> Result<(), Error> {
        match rec {
            Record::Message { .. } => put_message(txn, rec),
            Record::Deleted { room, seq, .. } => put_tombstone(txn, room, *seq),
            Record::Room { .. } => put_room(txn, rec),
            Record::Member { room, user, joined } => put_member(txn, room, user, *joined),
            Record::ReadPointer { room, user, seq } => put_read_pointer(txn, room, user, *seq),
        }
    }
}

/// The newest `max` retry keys of `room`, ascending by seq.
fn retry_keys(
    keys: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    room: &str,
    max: usize,
) -> Result<Vec<RetryKey>, Error> {
    let mut out = Vec::new();
    for entry in keys.range((room, 0)..=(room, u64::MAX))?.rev().take(max) {
        let (k, v) = entry?;
        let row = decode!(KeyRow, v.value())?;
        out.push(RetryKey {
            from: row.from,
            client_msg_id: row.client_msg_id,
            seq: k.value().1,
            ts_ms: row.ts_ms,
        });
    }
    out.reverse();
    Ok(out)
}

/// A message is written once: present already means a replay, or a tombstone that must stay
/// a tombstone. Its retry key, if any, goes to `retry_keys`.
fn put_message(txn: &redb::WriteTransaction, rec: &Record) -> Result<(), Error> {
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
        unreachable!("put_message takes messages only");
    };
    if let Some(key) = client_msg_id {
        let row = KeyRow {
            from: from.clone(),
            client_msg_id: key.clone(),
            ts_ms: *ts_ms,
        };
        txn.open_table(RETRY_KEYS)?
            .insert((room.as_str(), *seq), encode(&row)?.as_slice())?;
    }
    let mut messages = txn.open_table(MESSAGES)?;
    if messages.get((room.as_str(), *seq))?.is_none() {
        let row = Row {
            msg_id: msg_id.clone(),
            from: from.clone(),
            name: name.clone(),
            body: Some(body.clone()),
            ts_ms: *ts_ms,
            deleted: false,
        };
        messages.insert((room.as_str(), *seq), encode(&row)?.as_slice())?;
    }
    bump_last_seq(txn, room, *seq)
}

/// A deletion keeps the row's metadata and drops its body; it may arrive before its message.
fn put_tombstone(txn: &redb::WriteTransaction, room: &str, seq: u64) -> Result<(), Error> {
    let mut messages = txn.open_table(MESSAGES)?;
    let old = match messages.get((room, seq))? {
        Some(v) => decode!(Row, v.value())?,
        None => Row::default(),
    };
    let row = Row {
        body: None,
        deleted: true,
        ..old
    };
    messages.insert((room, seq), encode(&row)?.as_slice())?;
    bump_last_seq(txn, room, seq)
}

/// A room's settings, last writer wins; its `last_seq` is kept.
fn put_room(txn: &redb::WriteTransaction, rec: &Record) -> Result<(), Error> {
    let Record::Room {
        room,
        title,
        private,
        password_hash,
        creator,
        created_ms,
    } = rec
    else {
        unreachable!("put_room takes rooms only");
    };
    let last_seq = room_row(txn, room)?.map_or(0, |r| r.last_seq);
    let row = RoomRow {
        title: title.clone(),
        private: *private,
        password_hash: password_hash.clone(),
        creator: creator.clone(),
        created_ms: *created_ms,
        last_seq,
    };
    txn.open_table(ROOMS)?
        .insert(room.as_str(), encode(&row)?.as_slice())?;
    Ok(())
}

fn put_member(
    txn: &redb::WriteTransaction,
    room: &str,
    user: &str,
    joined: bool,
) -> Result<(), Error> {
    let mut members = txn.open_table(MEMBERS)?;
    ensure_room(txn, room)?;
    if joined {
        members.insert((room, user), ())?;
    } else {
        members.remove((room, user))?;
    }
    Ok(())
}

/// A read pointer only moves forward.
fn put_read_pointer(
    txn: &redb::WriteTransaction,
    room: &str,
    user: &str,
    seq: u64,
) -> Result<(), Error> {
    let mut pointers = txn.open_table(READ_POINTERS)?;
    ensure_room(txn, room)?;
    let old = pointers.get((room, user))?.map_or(0, |v| v.value());
    pointers.insert((room, user), old.max(seq))?;
    Ok(())
}

fn room_row(txn: &redb::WriteTransaction, room: &str) -> Result<Option<RoomRow>, Error> {
    let rooms = txn.open_table(ROOMS)?;
    let row = rooms.get(room)?;
    row.map(|v| decode!(RoomRow, v.value())).transpose()
}

/// A room touched before its `Room` record (e.g. created implicitly) still gets a row, so the
/// snapshot lists it.
fn ensure_room(txn: &redb::WriteTransaction, room: &str) -> Result<(), Error> {
    if room_row(txn, room)?.is_none() {
        txn.open_table(ROOMS)?
            .insert(room, encode(&RoomRow::default())?.as_slice())?;
    }
    Ok(())
}

fn bump_last_seq(txn: &redb::WriteTransaction, room: &str, seq: u64) -> Result<(), Error> {
    let mut row = room_row(txn, room)?.unwrap_or_default();
    if row.last_seq < seq || row.last_seq == 0 {
        row.last_seq = row.last_seq.max(seq);
        txn.open_table(ROOMS)?
            .insert(room, encode(&row)?.as_slice())?;
    }
    Ok(())
}

impl Sink for Store {
    fn apply(&mut self, batch: &[(u64, Arc<Record>)]) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        for (_, rec) in batch {
            Store::apply_one(&txn, rec)?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl SinkReader for StoreReader {
    fn read(&mut self, req: &ReadRequest) -> Result<Vec<StoredMessage>, Error> {
        let txn = self.db.begin_read()?;
        let messages = txn.open_table(MESSAGES)?;
        let room = req.room();
        let limit = req.limit();
        let rows: Vec<_> = match req {
            ReadRequest::Before { before_seq, .. } => {
                let hi = before_seq.unwrap_or(u64::MAX);
                let mut rows = messages
                    .range((room, 0)..(room, hi))?
                    .rev()
                    .take(limit)
                    .collect::<Result<Vec<_>, _>>()?;
                rows.reverse();
                rows
            }
            ReadRequest::After { after_seq, .. } => match after_seq.checked_add(1) {
                Some(lo) => messages
                    .range((room, lo)..=(room, u64::MAX))?
                    .take(limit)
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
        };
        rows.into_iter()
            .map(|(k, v)| {
                let row = decode!(Row, v.value())?;
                Ok(StoredMessage {
                    room: room.to_string(),
                    seq: k.value().1,
                    msg_id: row.msg_id,
                    from: row.from,
                    name: row.name,
                    body: row.body,
                    ts_ms: row.ts_ms,
                    deleted: row.deleted,
                })
            })
            .collect()
    }
}
