//! The log on disk: segment files, appends through io_uring, replay, trimming.
//!
//! A segment is `wal/{first_lsn:020}.wal`, a run of [`record`](crate::record) frames whose lsns
//! start at `first_lsn` and increase by one. Only the last segment (the *live* one) is written;
//! once a group would push it past `wal_segment_bytes` a new one is started. Trimming deletes
//! whole segments, oldest first, whose every record the sink has confirmed; the live segment is
//! never deleted, so its name always tells where lsns continue.
//!
//! A synced append goes through one io_uring: a `write` linked to an `fdatasync`
//! (`IOSQE_IO_LINK`), one `io_uring_enter` per group. If the kernel refuses io_uring (old
//! kernel, seccomp) the same calls are made with `pwrite` and `fdatasync`, and
//! [`Wal::uses_io_uring`] says so. An append without a sync (`async`) is one `pwrite`: on
//! ext4 io_uring hands a buffered write to a kernel worker thread (`iou-wrk`), one more
//! thread to schedule between the shard's send and its answer for no saving in syscalls
//! (docs/BENCHMARKS.md, "seed 002's latency: the sink in the shard's idle time").
//!
//! Replay reads every segment in order and stops at the first damaged frame (torn write, flipped
//! byte, lsn gap). That segment is truncated to its last good frame and every later segment is
//! deleted: a record after a hole was never acknowledged as durable, because groups are synced
//! in order and an acknowledgement waits for its group's sync.
//!
//! A failed write or `fdatasync` leaves the live segment's tail unknown: part of the group may
//! be on disk, and on Linux a failed writeback can leave pages marked clean that never reached
//! the disk, so a later `fdatasync` on the same descriptor may succeed without them. So a failed
//! `fdatasync` is never retried: the segment is cut back to its last *synced* frame and reopened
//! ([`Wal::repair`]), and nothing is appended until that worked. The group whose write or sync
//! failed was not acknowledged (`sync`) and is dropped; frames written but not yet synced
//! (`async`: acknowledged after the write) are kept in memory until a sync covers them, and
//! `repair` writes them again through the new descriptor and syncs them.
//! [`Wal::probe`] tells whether the disk takes writes again without writing a record.
//!
//! This module owns files only; it knows nothing of threads, tickets or sinks.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use io_uring::{opcode, squeue, types, IoUring};

use crate::contract::{Error, Record};
use crate::record::{self, Damage};

/// Entries in the ring: one write and one fdatasync per group.
const RING_ENTRIES: u32 = 8;
const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;
/// What [`Wal::probe`] writes (and cuts off again): one page.
const PROBE_BYTES: usize = 4096;

struct Segment {
    first_lsn: u64,
    path: PathBuf,
    bytes: u64,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every good record, in lsn order.
    pub records: Vec<(u64, Record)>,
    /// Bytes cut from the damaged segment's tail.
    pub truncated_bytes: u64,
    /// Whole segments deleted because they followed the damage.
    pub segments_dropped: usize,
    pub damage: Option<Damage>,
}

pub struct Wal {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    live: File,
    next_lsn: u64,
    segment_bytes_max: u64,
    ring: Option<IoUring>,
    dirty: bool,
    /// A write or sync failed: the live segment's bytes past `synced_bytes` are suspect.
    torn: bool,
    /// Bytes of the live segment that an `fdatasync` reported durable.
    synced_bytes: u64,
    /// The frames written after `synced_bytes` (appended without a sync: `async`), kept
    /// until a sync covers them, so that a failed sync can write them again through a new
    /// descriptor instead of trusting a retried `fdatasync` (see the module's doc).
    unsynced: Vec<u8>,
    fdatasyncs: u64,
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        let lsn = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(lsn) = lsn {
            found.push((lsn, path));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying and repairing it.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> Result<(Wal, Replay), Error> {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let mut replay = Replay::default();
        let mut segments = VecDeque::new();
        let mut expected: Option<u64> = None;
        for (first_lsn, path) in list_segments(dir)? {
            let lsn_gap = expected.is_some_and(|e| e != first_lsn);
            if replay.damage.is_some() || lsn_gap {
                replay.damage.get_or_insert(Damage::UnexpectedLsn);
                fs::remove_file(&path).map_err(Error::io(&path))?;
                replay.segments_dropped += 1;
                continue;
            }
            let buf = fs::read(&path).map_err(Error::io(&path))?;
            let decoded = record::decode_all(&buf, first_lsn);
            expected = Some(first_lsn + decoded.records.len() as u64);
            replay.records.extend(decoded.records);
            if let Some(damage) = decoded.damage {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(Error::io(&path))?;
                file.set_len(decoded.good_bytes as u64)
                    .map_err(Error::io(&path))?;
                file.sync_all().map_err(Error::io(&path))?;
                replay.truncated_bytes = (buf.len() - decoded.good_bytes) as u64;
                replay.damage = Some(damage);
            }
            segments.push_back(Segment {
                first_lsn,
                path,
                bytes: decoded.good_bytes as u64,
            });
        }
        if segments.is_empty() {
            let path = segment_path(dir, 1);
            File::create(&path).map_err(Error::io(&path))?;
            sync_dir(dir)?;
            segments.push_back(Segment {
                first_lsn: 1,
                path,
                bytes: 0,
            });
        } else if replay.segments_dropped > 0 {
            sync_dir(dir)?;
        }
        let last = segments.back().expect("at least one segment");
        let next_lsn = expected.unwrap_or(last.first_lsn);
        let synced_bytes = last.bytes;
        let live = OpenOptions::new()
            .write(true)
            .open(&last.path)
            .map_err(Error::io(&last.path))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            segments,
            live,
            next_lsn,
            segment_bytes_max,
            ring: IoUring::new(RING_ENTRIES).ok(),
            dirty: false,
            torn: false,
            synced_bytes,
            unsynced: Vec::new(),
            fdatasyncs: 0,
        };
        Ok((wal, replay))
    }

    /// The lsn the next appended record must carry.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    pub fn fdatasyncs(&self) -> u64 {
        self.fdatasyncs
    }

    /// Whether synced appends (and the `async` syncs) go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Appends a group of `records` frames (encoded with lsns from [`Wal::next_lsn`]) in one
    /// write, followed by one `fdatasync` when `sync`. On `Err` nothing of the group counts:
    /// the lsns are not used and the segment is cut back to where it was (now, or by the next
    /// call, which repairs first).
    pub fn append(&mut self, group: &[u8], records: u64, sync: bool) -> Result<(), Error> {
        debug_assert!(records > 0 && !group.is_empty());
        self.repair()?;
        let live_bytes = self.segments.back().map_or(0, |s| s.bytes);
        if live_bytes > 0 && live_bytes + group.len() as u64 > self.segment_bytes_max {
            self.rotate()?;
        }
        let live = self.segments.back().expect("live segment");
        let (offset, path) = (live.bytes, live.path.clone());
        let written = write_at(self.ring.as_mut(), &self.live, group, offset, sync);
        let synced = match written {
            Ok(synced) => synced,
            Err(e) => {
                self.torn = true;
                // Best effort now; if it fails too, the next append or probe repairs first.
                let _ = self.repair();
                return Err(Error::io(&path)(e));
            }
        };
        let live = self.segments.back_mut().expect("live segment");
        live.bytes += group.len() as u64;
        self.next_lsn += records;
        self.dirty = !synced;
        if synced {
            self.fdatasyncs += 1;
            self.synced_bytes = live.bytes;
            self.unsynced.clear();
        } else {
            self.unsynced.extend_from_slice(group);
        }
        Ok(())
    }

    /// After a failed write or sync: cuts the live segment back to its last *synced* frame,
    /// syncs that, and reopens it, so that the new descriptor reports only errors that happen
    /// after it; then writes the frames appended since that sync (`async`: acknowledged
    /// already) again from memory and syncs them. A failed `fdatasync` is never retried on
    /// the descriptor it failed on: the kernel may have marked the failed pages clean, and a
    /// second `fdatasync` would report success without them (PostgreSQL's "fsyncgate").
    /// Does nothing when no write or sync failed.
    pub fn repair(&mut self) -> Result<(), Error> {
        if !self.torn {
            return Ok(());
        }
        let live = self.segments.back().expect("live segment");
        let path = live.path.clone();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(self.synced_bytes).and(f.sync_all()).map(|()| f))
            .map_err(Error::io(&path))?;
        self.live = file;
        if !self.unsynced.is_empty() {
            write_at(
                self.ring.as_mut(),
                &self.live,
                &self.unsynced,
                self.synced_bytes,
                true,
            )
            .map_err(Error::io(&path))?;
            self.fdatasyncs += 1;
            self.synced_bytes += self.unsynced.len() as u64;
            self.unsynced.clear();
        }
        debug_assert_eq!(self.synced_bytes, live.bytes);
        self.dirty = false;
        self.torn = false;
        Ok(())
    }

    /// Whether the disk takes writes again: repairs, syncs what is unsynced, writes and syncs
    /// one page past the last frame, and cuts it off again. Appends nothing.
    pub fn probe(&mut self) -> Result<(), Error> {
        self.repair()?;
        self.sync()?;
        let live = self.segments.back().expect("live segment");
        let (offset, path) = (live.bytes, live.path.clone());
        // Until it is cut off, the page sits past the last frame like a torn write.
        self.torn = true;
        write_at(
            self.ring.as_mut(),
            &self.live,
            &[0; PROBE_BYTES],
            offset,
            true,
        )
        .map_err(Error::io(&path))?;
        self.repair()
    }

    /// Makes every appended byte durable.
    pub fn sync(&mut self) -> Result<(), Error> {
        if !self.dirty {
            return Ok(());
        }
        let live = self.segments.back().expect("live segment");
        if let Err(e) = fdatasync(self.ring.as_mut(), &self.live) {
            // What the failed sync covered is suspect until `repair` wrote it again.
            self.torn = true;
            return Err(Error::io(&live.path)(e));
        }
        self.dirty = false;
        self.fdatasyncs += 1;
        self.synced_bytes = live.bytes;
        self.unsynced.clear();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), Error> {
        self.sync()?;
        let path = segment_path(&self.dir, self.next_lsn);
        // `create`, not `create_new`: a rotation that failed after creating the file left it
        // empty, and no segment we know has this name (lsns only grow).
        let created = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))
            .and_then(|file| sync_dir(&self.dir).map(|()| file));
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // Best effort: replay would drop an empty segment out of sequence anyway.
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        self.segments.push_back(Segment {
            first_lsn: self.next_lsn,
            path,
            bytes: 0,
        });
        self.live = file;
        self.synced_bytes = 0;
        Ok(())
    }

    /// The lsn trimming must be allowed up to for the oldest segment to go (0: only the live
    /// segment exists).
    pub fn trim_wanted_lsn(&self) -> u64 {
        self.segments.get(1).map_or(0, |s| s.first_lsn - 1)
    }

    /// The last lsn before the live segment: every record up to it is in a closed segment.
    pub fn closed_lsn(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.first_lsn - 1)
    }

    /// Deletes the oldest segments whose records all have lsn ≤ `confirmed_lsn`.
    /// Returns the bytes freed.
    pub fn trim(&mut self, confirmed_lsn: u64) -> Result<u64, Error> {
        let mut freed = 0;
        while self.segments.len() > 1 && self.segments[1].first_lsn <= confirmed_lsn + 1 {
            let old = self.segments.pop_front().expect("two segments");
            fs::remove_file(&old.path).map_err(Error::io(&old.path))?;
            freed += old.bytes;
        }
        if freed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(freed)
    }
}

/// Writes all of `buf` at `offset`; with `sync`, then `fdatasync`s. Returns whether it synced.
fn write_at(
    ring: Option<&mut IoUring>,
    file: &File,
    buf: &[u8],
    offset: u64,
    sync: bool,
) -> io::Result<bool> {
    // Without a sync to link, io_uring saves nothing and costs a worker thread's wake-up.
    let Some(ring) = ring.filter(|_| sync) else {
        file.write_all_at(buf, offset)?;
        if sync {
            file.sync_data()?;
        }
        return Ok(sync);
    };
    let fd = types::Fd(file.as_raw_fd());
    let mut done = 0usize;
    loop {
        let rest = &buf[done..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let write = opcode::Write::new(fd, rest.as_ptr(), len)
            .offset(offset + done as u64)
            .build()
            .user_data(USER_DATA_WRITE);
        let fsync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_SYNC);
        let entries = [write.flags(squeue::Flags::IO_LINK), fsync];
        // SAFETY: `rest` borrows `buf`, which outlives the call: `submit_all` returns only once
        // the kernel has completed every entry it queued, and its one `Err` comes before it
        // queues any; when it cannot know, it ends the process rather than return or unwind.
        let cqes = unsafe { submit_all(ring, &entries)? };
        let (mut written, mut synced) = (None, false);
        let mut error = None;
        for (user_data, res) in cqes {
            match user_data {
                USER_DATA_WRITE if res < 0 => error = Some(io::Error::from_raw_os_error(-res)),
                USER_DATA_WRITE => written = Some(res as usize),
                // A short or failed write severs the link: the sync comes back cancelled.
                _ if res == -libc_ecanceled() => {}
                _ if res < 0 => error = Some(io::Error::from_raw_os_error(-res)),
                _ => synced = true,
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        let written =
            written.ok_or_else(|| io::Error::other("io_uring lost a write completion"))?;
        if written == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        done += written;
        if done == buf.len() && synced {
            return Ok(true);
        }
        if done == buf.len() {
            fdatasync(Some(ring), file)?;
            return Ok(true);
        }
    }
}

fn fdatasync(ring: Option<&mut IoUring>, file: &File) -> io::Result<()> {
    let Some(ring) = ring else {
        return file.sync_data();
    };
    let fsync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(USER_DATA_SYNC);
    // SAFETY: the entry points at no memory of ours, only at the file descriptor, which `file`
    // keeps open until `submit_all` has reaped its completion.
    for (_, res) in unsafe { submit_all(ring, &[fsync])? } {
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
    }
    Ok(())
}

/// Submits `entries` and waits for the completion of each: `(user_data, result)` pairs.
///
/// Nothing is left in flight when it returns Ok or Err: entries that do not fit are refused
/// before any is queued (the ring is empty between calls) — that is the only `Err` — and an
/// interrupted or busy wait is resumed. Once queued, an entry cannot be taken back, so if the
/// kernel keeps refusing to take or report them the process cannot know when the memory they
/// point at is free: it panics (the engine's `liveness` hook then ends the process), and
/// should the panic unwind instead, [`AbortOnUnwind`] aborts before any caller's frame, and
/// the buffers in it, is dropped.
///
/// # Safety
/// Every buffer the entries point at must stay valid until this returns.
unsafe fn submit_all(ring: &mut IoUring, entries: &[squeue::Entry]) -> io::Result<Vec<(u64, i32)>> {
    /// Consecutive refusals without progress before giving up: with the backoff below,
    /// about 8 s of a kernel that neither takes nor reports the entries.
    const RETRIES_MAX: u32 = 16;
    debug_assert!(
        ring.completion().is_empty(),
        "a completion was left unreaped"
    );
    let mut sq = ring.submission();
    if sq.capacity() - sq.len() < entries.len() {
        return Err(io::Error::other("io_uring submission queue is full"));
    }
    // From the first push until every completion is reaped, no return and no unwind.
    let in_flight = AbortOnUnwind;
    for entry in entries {
        // SAFETY: the caller keeps the buffers valid until this returns, and it returns only
        // once every completion is reaped (`in_flight` turns an unwind into an abort); there
        // is room, so the push cannot fail.
        unsafe { sq.push(entry).expect("room was checked") };
    }
    drop(sq);
    let mut cqes = Vec::with_capacity(entries.len());
    let mut retries = 0;
    while cqes.len() < entries.len() {
        let before = cqes.len();
        if let Err(e) = ring.submit_and_wait(entries.len() - cqes.len()) {
            // EINTR, EAGAIN, EBUSY (completion queue full: reaping below makes room).
            let transient = matches!(
                e.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ResourceBusy
            );
            retries += 1;
            assert!(
                transient && retries <= RETRIES_MAX,
                "io_uring_enter failed ({e}) with log entries queued or in flight: the memory \
                 they use cannot be freed safely"
            );
            if !matches!(e.kind(), io::ErrorKind::Interrupted) {
                // Backoff on the log thread (never a shard): 1 ms, 2 ms, … up to 1 s.
                std::thread::sleep(std::time::Duration::from_millis(1 << retries.min(10)));
            }
        }
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        if cqes.len() > before {
            retries = 0;
        }
    }
    drop(in_flight);
    Ok(cqes)
}

/// Held while io_uring entries point at a caller's memory: if a panic unwinds through it, the
/// process aborts instead, so that no frame holding such memory is dropped while the kernel
/// may still read it.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::process::abort();
        }
    }
}

/// `ECANCELED` on Linux; spelled out to avoid a libc dependency for one constant.
const fn libc_ecanceled() -> i32 {
    125
}
