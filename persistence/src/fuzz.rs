//! Entry points for the fuzz targets (`fuzz/`, docs/SECURITY.md "Fuzzing"); only with the
//! cargo feature `fuzzing` (and in unit tests), never in a default or release build.
//! [`targets`] holds one function per target, taking the fuzzer's bytes: the libFuzzer
//! targets call it, and so does the test suite's short run (`sokdo-fuzz-smoke`).
//!
//! Each function runs one decoder of bytes read from disk — the log's frames (`record`), the
//! checkpoint file (`checkpoint`) — and panics when a property that must hold for every input
//! does not: the fuzzer reports a panic as a crash. The decoders stay private.

#![forbid(unsafe_code)]

use crate::checkpoint;
use crate::contract::Record;
use crate::record::{self, FRAME_HEADER_BYTES, RECORD_BYTES_MAX};

/// Decodes a segment's bytes as replay does (`record::decode_all`), from `first_lsn`.
/// Checks: the good prefix is within the input and holds exactly the records decoded, with
/// consecutive lsns; re-encoding those records decodes to the same records.
pub fn wal_segment(bytes: &[u8], first_lsn: u64) -> Vec<(u64, Record)> {
    let decoded = record::decode_all(bytes, first_lsn);
    assert!(
        decoded.good_bytes <= bytes.len(),
        "good prefix past the input"
    );
    assert_eq!(
        decoded.damage.is_none(),
        decoded.good_bytes == bytes.len(),
        "damage reported iff bytes are left"
    );
    let mut again = Vec::new();
    for (i, (lsn, rec)) in decoded.records.iter().enumerate() {
        assert_eq!(
            *lsn,
            first_lsn.wrapping_add(i as u64),
            "lsns are consecutive"
        );
        match record::encode_frame(rec, *lsn, &mut again) {
            Ok(_) => {}
            // A payload may share one string among several fields, which the canonical
            // encoding writes out once per field: it can outgrow the bound. Not a defect.
            Err(crate::contract::Error::RecordTooLarge { .. }) => return decoded.records,
            Err(e) => panic!("a decoded record does not encode: {e}"),
        }
    }
    let redecoded = record::decode_all(&again, first_lsn);
    assert_eq!(redecoded.damage, None, "re-encoded records decode");
    assert_eq!(
        redecoded.records, decoded.records,
        "records survive a round trip"
    );
    decoded.records
}

/// `payload` framed with its true length, lsn and checksum, so that decoding reaches the
/// payload's validation (rkyv) instead of stopping at the checksum.
pub fn framed(payload: &[u8], lsn: u64) -> Vec<u8> {
    let payload = &payload[..payload.len().min(RECORD_BYTES_MAX)];
    let lsn_bytes = lsn.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn_bytes);
    crc.update(payload);
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(payload);
    out
}

/// One frame of `rec`, as the WAL thread writes it (for seed corpora).
pub fn encode_record(rec: &Record, lsn: u64) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode_frame(rec, lsn, &mut out).expect("a record encodes");
    out
}

/// Decodes a checkpoint file's bytes as start-up does (`checkpoint::decode`). Checks: a
/// checkpoint that decodes re-encodes to a file that decodes to the same checkpoint.
/// Returns whether the bytes were a checkpoint.
pub fn checkpoint_file(bytes: &[u8]) -> bool {
    let Ok(cp) = checkpoint::decode(bytes) else {
        return false;
    };
    let again = checkpoint::encode(&cp).expect("a decoded checkpoint encodes");
    assert_eq!(
        checkpoint::decode(&again),
        Ok(cp),
        "a checkpoint survives a round trip"
    );
    true
}

/// `payload` wrapped in a checkpoint file's header with its true length and checksum.
pub fn checkpoint_framed(payload: &[u8]) -> Vec<u8> {
    checkpoint::frame(payload)
}

/// A checkpoint file of these rooms at `lsn`, as the sink thread writes it (for seeds).
pub fn encode_checkpoint(lsn: u64, rooms: Vec<crate::contract::RoomSnapshot>) -> Vec<u8> {
    checkpoint::encode(&checkpoint::Checkpoint { lsn, rooms }).expect("a checkpoint encodes")
}

/// One function per target of `fuzz/fuzz_targets/`, taking the fuzzer's bytes.
pub mod targets {
    use super::{checkpoint_file, checkpoint_framed, framed, wal_segment};

    /// `wal_record`: a mode byte, then a segment's bytes (even mode) or a record payload
    /// that is framed with its true length and checksum first (odd), so that decoding
    /// reaches the payload's validation. Checks those of [`wal_segment`].
    pub fn wal_record(data: &[u8]) {
        let [mode, rest @ ..] = data else {
            return;
        };
        if mode % 2 == 0 {
            wal_segment(rest, 1);
        } else {
            wal_segment(&framed(rest, 1), 1);
        }
    }

    /// `checkpoint`: a mode byte, then a checkpoint file (even) or a payload wrapped in a
    /// checkpoint header first (odd). Checks those of [`checkpoint_file`].
    pub fn checkpoint(data: &[u8]) {
        let [mode, rest @ ..] = data else {
            return;
        };
        if mode % 2 == 0 {
            checkpoint_file(rest);
        } else {
            checkpoint_file(&checkpoint_framed(rest));
        }
    }
}

/// The test suite's short run of each target: its committed corpus, then mutations of it
/// (`sokdo-fuzz-smoke`; `scripts/fuzz` is the coverage-guided run).
#[cfg(test)]
mod smoke {
    const MUTATIONS: usize = 3_000;

    #[test]
    fn wal_record_on_its_corpus_and_mutations() {
        sokdo_fuzz_smoke::run("wal_record", MUTATIONS, super::targets::wal_record);
    }

    #[test]
    fn checkpoint_on_its_corpus_and_mutations() {
        sokdo_fuzz_smoke::run("checkpoint", MUTATIONS, super::targets::checkpoint);
    }
}
