//! The local checkpoint: the folded state of every record the log no longer holds.
//!
//! `{data_dir}/checkpoint` holds the [`RoomSnapshot`]s of all records up to an lsn. The sink
//! thread writes it before the WAL thread may delete a segment (the WAL thread trims only up
//! to the lsn of the last checkpoint written), so at any moment checkpoint ⊕ log is the whole
//! history of the rooms' state — which lets the instance start while its sink (MongoDB) is
//! unreachable without reusing a sequence number.
//!
//! Format: `b"SOKDOCP1"`, u32 LE crc32 of the rest, u64 LE payload length, the payload (an
//! rkyv 0.8 archive of [`Checkpoint`], validated on load). Written to `checkpoint.tmp`,
//! fsynced, renamed over `checkpoint`, then the directory is fsynced: a crash leaves either the
//! old file or the new one.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::contract::{Error, RoomSnapshot};

const MAGIC: &[u8; 8] = b"SOKDOCP1";
const HEADER_BYTES: usize = 8 + 4 + 8;
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// Every room's state after all records with lsn ≤ `lsn`.
#[derive(Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Checkpoint {
    pub lsn: u64,
    pub rooms: Vec<RoomSnapshot>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CHECKPOINT_FILE)
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The checkpoint, `None` if there is no file. A damaged file is an error: it was written
/// atomically, so damage means the disk lost data, and guessing could reuse seqs.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, Error> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path)(e)),
    };
    decode(&bytes).map(Some).map_err(|reason| bad(path, reason))
}

/// A checkpoint file's bytes → the checkpoint, or why they are not one. Pure (fuzzed:
/// `fuzz/fuzz_targets/checkpoint.rs`).
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not a sokdo checkpoint (bad magic or too short)".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<Checkpoint, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("payload: {e}"))
}

/// The bytes of a checkpoint file: magic, checksum, length, payload.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, Error> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(checkpoint).map_err(Error::Codec)?;
    Ok(frame(&payload))
}

/// Wraps `payload` in the file's header, with its true length and checksum.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_BYTES + payload.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[12..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Replaces the checkpoint atomically (tmp + fsync + rename + directory fsync).
pub fn store(path: &Path, checkpoint: &Checkpoint) -> Result<(), Error> {
    let buf = encode(checkpoint)?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(&buf).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::RetryKey;

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(load(&p).unwrap(), None, "no file: no checkpoint");
        let cp = Checkpoint {
            lsn: 42,
            rooms: vec![RoomSnapshot {
                room: "r".into(),
                last_seq: 7,
                members: vec!["a".into()],
                retry_keys: vec![RetryKey {
                    from: "a".into(),
                    client_msg_id: "k".into(),
                    seq: 7,
                    ts_ms: 1,
                }],
                ..RoomSnapshot::default()
            }],
        };
        store(&p, &cp).unwrap();
        assert_eq!(load(&p).unwrap(), Some(cp));
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}
