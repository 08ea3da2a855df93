//! The cluster's room logs and epoch promises on disk: `<data-dir>/cluster.redb`, written
//! by the cluster thread only (docs/REPLICATION.md "The log on disk").
//!
//! What a room machine keeps across a crash (`replication::room::Durable`) is written here
//! before any frame that depends on it leaves the node: a record is on disk before its
//! `Append`, `Appended`, `Published` or `Deliver` is sent, a promise before its `Handoff`.
//! The cluster thread hands each turn's changes to [`Writer`], a thread of its own
//! (`cluster-disk`), and holds the turn's frames until the writer says that turn is
//! written; meanwhile it goes on with the next events. The writer takes every turn waiting
//! into one transaction (the group commit). `--durability sync` fsyncs every commit;
//! `async` commits without fsync and fsyncs at most [`ASYNC_SYNC_INTERVAL`] later.
//!
//! Tables (keys sort as tuples, so one room's records are contiguous and ordered by seq):
//! - `records`: `(room, seq)` → the rkyv archive of the whole `frame::Record`
//!   (`frame::encode_record`), so a field added to `Record` is kept with it;
//! - `rooms`: `room` → `(promised, promised_to, held_epoch, held)`;
//! - `committed`: `room` → the prefix of its log the node knows acknowledged
//!   (`Durable::committed`); a table of its own, so a file written before it existed opens
//!   (`open` creates it; no row: 0, nothing known).
//!
//! This module never decides anything about ownership: it stores what the machines hand
//! out ([`Changes`]) and gives it back at start. A file it cannot read stops the start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sokdo_persistence::Durability;
use sokdo_replication::frame::{self, Meta, Record};
use sokdo_replication::room::log::Source;
use sokdo_replication::room::{Changes, Durable};

/// `(room, seq)` → `frame::encode_record` of the record.
const RECORDS: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("records");
/// `room` → `(promised, promised_to, held_epoch, held)`.
const ROOMS: TableDefinition<'static, &str, (u64, Option<&str>, u64, u64)> =
    TableDefinition::new("rooms");
/// `room` → `Durable::committed`.
const COMMITTED: TableDefinition<'static, &str, u64> = TableDefinition::new("committed");
/// room → its metadata `(epoch, version, bytes)` (`replication::frame::Meta`), whole.
const METAS: TableDefinition<'static, &str, (u64, u64, &[u8])> = TableDefinition::new("metas");

/// `--durability async`: the longest an acknowledged record stays written but not fsynced.
/// An instance's loss inside the window loses what it alone held; with a majority holding
/// every acknowledged record, only a loss of a majority at once inside it loses data.
pub const ASYNC_SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// Bytes of redb page cache: the file is read at start and written after.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Turns whose changes may wait for the writer; beyond, the cluster thread waits for it
/// (a disk that slow or failing stalls the node, and its peers see it unresponsive).
pub const TURNS_QUEUED_MAX: usize = 4096;

/// A failed write is tried again after this long (every turn after it waits).
const WRITE_RETRY: Duration = Duration::from_millis(100);

/// The file's name in `--data-dir`.
pub const FILE_NAME: &str = "cluster.redb";

/// Why the cluster's log could not be read or written; it names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", path.display())]
pub struct DiskError {
    pub path: PathBuf,
    pub what: String,
}

/// Reads back the acknowledged records a room keeps on disk only
/// (`replication::room::log::Source`): what the writer has committed.
pub struct Reader {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("path", &self.path).finish()
    }
}

impl Reader {
    fn try_read(&self, room: &str, from: u64, max: usize) -> Result<Vec<Record>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let records = txn.open_table(RECORDS).map_err(|e| e.to_string())?;
        let end = from.saturating_add(max as u64);
        let mut out = Vec::with_capacity(max.min(1024));
        for entry in records
            .range((room, from)..(room, end))
            .map_err(|e| e.to_string())?
        {
            let (_, bytes) = entry.map_err(|e| e.to_string())?;
            out.push(frame::decode_record(bytes.value()).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

impl Reader {
    /// One room as [`Disk::load`] loads it at start (what the writer has committed): its
    /// promise, acknowledged prefix, metadata and the records from `tail` below the
    /// prefix's end on, checked the same way; `Durable::default()` for a room the file
    /// does not hold. For a room machine rebuilt after it was evicted from memory.
    pub fn load_room(&self, room: &str, tail: u64) -> Result<Durable, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        Tables::open(&txn)?.room(room, tail)
    }
}

/// The tables a room's durable state is read from, in one read transaction.
struct Tables {
    rooms: redb::ReadOnlyTable<&'static str, (u64, Option<&'static str>, u64, u64)>,
    records: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    committed: redb::ReadOnlyTable<&'static str, u64>,
    metas: redb::ReadOnlyTable<&'static str, (u64, u64, &'static [u8])>,
}

impl Tables {
    fn open(txn: &redb::ReadTransaction) -> Result<Tables, String> {
        let e = |e: redb::TableError| e.to_string();
        Ok(Tables {
            rooms: txn.open_table(ROOMS).map_err(e)?,
            records: txn.open_table(RECORDS).map_err(e)?,
            // `open` creates the table in a file from before it: no row, nothing known.
            committed: txn.open_table(COMMITTED).map_err(e)?,
            metas: txn.open_table(METAS).map_err(e)?,
        })
    }

    /// `room`'s promise, its records after its acknowledged prefix less `tail`, checked,
    /// and its metadata; `Durable::default()` (with the metadata, if any) without a
    /// promise row.
    fn room(&self, room: &str, tail: u64) -> Result<Durable, String> {
        let e = |e: redb::StorageError| e.to_string();
        let mut durable = Durable::default();
        if let Some(promise) = self.rooms.get(room).map_err(e)? {
            let (promised, promised_to, held_epoch, held) = promise.value();
            let committed = self
                .committed
                .get(room)
                .map_err(e)?
                .map_or(0, |c| c.value());
            let base = committed.saturating_sub(tail);
            durable = Durable {
                promised,
                promised_to: promised_to.map(str::to_owned),
                held_epoch,
                held,
                committed,
                base,
                log: Vec::new(),
                meta: None,
            };
            let range = self
                .records
                .range((room, base + 1)..=(room, u64::MAX))
                .map_err(e)?;
            for entry in range {
                let (key, bytes) = entry.map_err(e)?;
                let seq = key.value().1;
                let record = frame::decode_record(bytes.value())
                    .map_err(|e| format!("room {room:?} seq {seq}: {e}"))?;
                let expected = durable.len() + 1;
                if record.seq != seq || seq != expected {
                    return Err(format!(
                        "room {room:?}: record at seq {seq} holds seq {} where seq {expected} was due",
                        record.seq
                    ));
                }
                durable.log.push(record);
            }
            if durable.held > durable.len() {
                return Err(format!(
                    "room {room:?}: {} records, but {} are marked held",
                    durable.len(),
                    durable.held
                ));
            }
            if committed > durable.len() {
                return Err(format!(
                    "room {room:?}: {} records, but {committed} are marked acknowledged",
                    durable.len()
                ));
            }
        }
        if let Some(meta) = self.metas.get(room).map_err(e)? {
            let (epoch, version, bytes) = meta.value();
            durable.meta = Some(Meta {
                epoch,
                version,
                bytes: bytes.to_vec(),
            });
        }
        Ok(durable)
    }
}

impl Source for Reader {
    fn read(&self, room: &str, from: u64, max: usize) -> Vec<Record> {
        self.try_read(room, from, max).unwrap_or_else(|e| {
            // The machine sends less (or nothing) and asks again later.
            tracing::warn!(
                room,
                from,
                "cluster log not read from {}: {e}",
                self.path.display()
            );
            Vec::new()
        })
    }
}

/// The open `cluster.redb`.
pub struct Disk {
    path: PathBuf,
    db: Arc<Database>,
    durability: Durability,
    /// `async`: the first commit not yet fsynced.
    unsynced_since: Option<Instant>,
}

impl Disk {
    /// Opens (or creates) `<data_dir>/cluster.redb`; a file that is not a readable redb
    /// database is an error naming it.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Disk, DiskError> {
        let path = data_dir.join(FILE_NAME);
        let fail = |what: String| DiskError {
            path: path.clone(),
            what,
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| fail(format!("cannot create the data directory: {e}")))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail(format!("cannot open the cluster's log: {e}")))?;
        let mut disk = Disk {
            path: path.clone(),
            db: Arc::new(db),
            durability,
            unsynced_since: None,
        };
        // Creating the tables up front lets `load` open them on a new file.
        disk.write(&[])?;
        Ok(disk)
    }

    /// A reader of the records the rooms no longer hold in memory, for the cluster thread
    /// (redb readers run beside the writer's transactions).
    pub fn reader(&self) -> Reader {
        Reader {
            db: self.db.clone(),
            path: self.path.clone(),
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> DiskError {
        DiskError {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }

    /// Every room's promise and the records after its acknowledged prefix less `tail`
    /// (the older ones are read back when needed, [`Reader`]), checked: those records are
    /// consecutive seqs with no hole, each decodes, and `held` and the acknowledged prefix
    /// are within the log. A room is loaded as [`Reader::load_room`] loads it later.
    pub fn load(&self, tail: u64) -> Result<HashMap<String, Durable>, DiskError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let tables = Tables::open(&txn).map_err(|e| self.fail(e))?;
        let mut names: Vec<String> = Vec::new();
        for row in tables.rooms.iter().map_err(|e| self.fail(e))? {
            let (room, _) = row.map_err(|e| self.fail(e))?;
            names.push(room.value().to_owned());
        }
        // A room with metadata and no promise row has its metadata only.
        for row in tables.metas.iter().map_err(|e| self.fail(e))? {
            let (room, _) = row.map_err(|e| self.fail(e))?;
            names.push(room.value().to_owned());
        }
        let mut out = HashMap::new();
        for room in names {
            if out.contains_key(&room) {
                continue;
            }
            let durable = tables.room(&room, tail).map_err(|e| self.fail(e))?;
            out.insert(room, durable);
        }
        Ok(out)
    }
    /// Writes every room's changes in one transaction (the group commit of a turn): with
    /// `sync`, durable when this returns.
    pub fn write(&mut self, changes: &[(String, Changes)]) -> Result<(), DiskError> {
        let mut txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        let sync = self.durability == Durability::Sync;
        let level = if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(level).map_err(|e| self.fail(e))?;
        {
            let mut rooms = txn.open_table(ROOMS).map_err(|e| self.fail(e))?;
            let mut records = txn.open_table(RECORDS).map_err(|e| self.fail(e))?;
            let mut metas = txn.open_table(METAS).map_err(|e| self.fail(e))?;
            let mut committed = txn.open_table(COMMITTED).map_err(|e| self.fail(e))?;
            for (room, c) in changes {
                if let Some(after) = c.truncated_after {
                    let gone = (room.as_str(), after + 1)..=(room.as_str(), u64::MAX);
                    records
                        .retain_in(gone, |_, _| false)
                        .map_err(|e| self.fail(e))?;
                }
                for r in &c.records {
                    let bytes = frame::encode_record(r).map_err(|e| self.fail(e))?;
                    records
                        .insert((room.as_str(), r.seq), bytes.as_slice())
                        .map_err(|e| self.fail(e))?;
                }
                if let Some(p) = &c.promise {
                    let row = (p.promised, p.promised_to.as_deref(), p.held_epoch, p.held);
                    rooms.insert(room.as_str(), row).map_err(|e| self.fail(e))?;
                    committed
                        .insert(room.as_str(), p.committed)
                        .map_err(|e| self.fail(e))?;
                }
                if let Some(m) = &c.meta {
                    let row = (m.epoch, m.version, m.bytes.as_slice());
                    metas.insert(room.as_str(), row).map_err(|e| self.fail(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        if !sync && !changes.is_empty() {
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// `async`: when the commits not yet fsynced must be (`None`: nothing waits).
    pub fn sync_due(&self) -> Option<Instant> {
        self.unsynced_since.map(|t| t + ASYNC_SYNC_INTERVAL)
    }

    /// `async`: fsyncs the commits so far (an empty durable commit makes every earlier
    /// non-durable one durable).
    pub fn sync(&mut self) -> Result<(), DiskError> {
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| self.fail(e))?;
        txn.commit().map_err(|e| self.fail(e))?;
        self.unsynced_since = None;
        Ok(())
    }
}

/// One turn's changes, numbered.
struct Turn {
    id: u64,
    changes: Vec<(String, Changes)>,
}

/// The `cluster-disk` thread: writes the turns it is handed, in order, and publishes the
/// last turn written.
pub struct Writer {
    turns: Option<Sender<Turn>>,
    written: Arc<AtomicU64>,
    /// Set by `close`: a write still failing then is given up.
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread on `disk`; `wake` is called (never blocking) after each write.
    pub fn start(disk: Disk, wake: impl Fn() + Send + 'static) -> std::io::Result<Writer> {
        let (turns, rx) = crossbeam_channel::bounded(TURNS_QUEUED_MAX);
        let written = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let (shared, stop) = (written.clone(), closing.clone());
        let thread = std::thread::Builder::new()
            .name("cluster-disk".into())
            .spawn(move || write_turns(disk, &rx, &shared, &stop, &wake))?;
        Ok(Writer {
            turns: Some(turns),
            written,
            closing,
            thread: Some(thread),
        })
    }

    /// Hands turn `id`'s changes to the thread (ids increase); waits only if
    /// [`TURNS_QUEUED_MAX`] turns are already waiting.
    pub fn submit(&self, id: u64, changes: Vec<(String, Changes)>) {
        if let Some(turns) = &self.turns {
            // Only fails once the thread is gone (after `close`).
            let _ = turns.send(Turn { id, changes });
        }
    }

    /// Every turn up to this one is written (and, with `sync`, fsynced).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Writes what is queued, fsyncs (with `async` too) and ends the thread.
    pub fn close(&mut self) {
        self.closing.store(true, Ordering::Release);
        drop(self.turns.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the cluster-disk thread ended by a panic");
            }
        }
    }
}

fn write_turns(
    mut disk: Disk,
    rx: &Receiver<Turn>,
    written: &AtomicU64,
    closing: &AtomicBool,
    wake: &dyn Fn(),
) {
    loop {
        let first = match disk.sync_due() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        let first = match first {
            Ok(turn) => turn,
            Err(RecvTimeoutError::Timeout) => {
                sync_logged(&mut disk);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut upto = first.id;
        let mut changes = first.changes;
        for turn in rx.try_iter() {
            upto = turn.id;
            changes.extend(turn.changes);
        }
        let mut failures = 0u64;
        while let Err(e) = disk.write(&changes) {
            if closing.load(Ordering::Acquire) {
                tracing::error!("cluster log not written at stop, given up: {e}");
                return;
            }
            // Once when it starts failing, then every 100 retries (10 s), not every retry.
            if failures.is_multiple_of(100) {
                tracing::error!(failures, "cluster log not written, its frames wait: {e}");
            }
            failures += 1;
            #[allow(
                clippy::disallowed_methods,
                reason = "the cluster-disk thread is not a shard: waiting is its job"
            )]
            std::thread::sleep(WRITE_RETRY);
        }
        written.store(upto, Ordering::Release);
        wake();
        if disk.sync_due().is_some_and(|due| due <= Instant::now()) {
            sync_logged(&mut disk);
        }
    }
    sync_logged(&mut disk);
}

fn sync_logged(disk: &mut Disk) {
    if let Err(e) = disk.sync() {
        tracing::error!("cluster log not fsynced: {e}");
    }
}

#[cfg(test)]
mod tests;
