//! The log's frame: how one [`Record`] becomes bytes on disk and back.
//!
//! ```text
//! u32 LE  payload_bytes
//! u32 LE  crc32 (crc32fast) of lsn ‖ payload
//! u64 LE  lsn: log sequence number, +1 per record, never reused
//! payload: the rkyv archive of the Record
//! ```
//!
//! Decoding is strict: a short header, a length past [`RECORD_BYTES_MAX`], a short payload, a
//! checksum mismatch, an unexpected lsn or a payload rkyv's validator rejects all end the
//! readable log at that frame. This module does no I/O.

#![forbid(unsafe_code)]

use crate::contract::{Error, Record};

pub const FRAME_HEADER_BYTES: usize = 16;
/// The largest payload a frame may carry; a longer length field means corruption.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;

// The bound lives beside the frame layout it bounds: `contract` knows records, not the log.
impl Record {
    /// An upper bound of the encoded frame's size, computed without encoding, so that
    /// [`Handle::append`](crate::Handle::append) can reserve log space on the caller's thread.
    /// rkyv stores each string inline or out of line with at most 8 bytes of header and 7 of
    /// padding; the fixed part of every variant is below 96 bytes.
    pub fn frame_bytes_upper_bound(&self) -> u64 {
        const FIXED_BYTES: u64 = 96;
        const PER_STRING_BYTES: u64 = 16;
        let s = |v: &str| v.len() as u64 + PER_STRING_BYTES;
        let o = |v: &Option<String>| v.as_deref().map_or(PER_STRING_BYTES, s);
        let strings = match self {
            Record::Message {
                room,
                msg_id,
                from,
                name,
                body,
                client_msg_id,
                ..
            } => s(room) + s(msg_id) + s(from) + o(name) + s(body) + o(client_msg_id),
            Record::Deleted { room, by, .. } => s(room) + s(by),
            Record::Room {
                room,
                title,
                password_hash,
                creator,
                ..
            } => s(room) + o(title) + o(password_hash) + s(creator),
            Record::Member { room, user, .. } | Record::ReadPointer { room, user, .. } => {
                s(room) + s(user)
            }
        };
        FRAME_HEADER_BYTES as u64 + FIXED_BYTES + strings
    }
}

/// Appends one frame for `rec` with log sequence number `lsn` to `out`; returns its size.
pub fn encode_frame(rec: &Record, lsn: u64, out: &mut Vec<u8>) -> Result<usize, Error> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(rec).map_err(Error::Codec)?;
    if payload.len() > RECORD_BYTES_MAX {
        return Err(Error::RecordTooLarge {
            bytes: payload.len(),
        });
    }
    let lsn_bytes = lsn.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn_bytes);
    crc.update(&payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(&payload);
    Ok(FRAME_HEADER_BYTES + payload.len())
}

/// Why decoding stopped before the end of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    TornHeader,
    LengthTooLarge,
    TornPayload,
    ChecksumMismatch,
    UnexpectedLsn,
    Undecodable,
}

/// One frame decoded from the front of `buf`: its record, lsn and size in bytes.
pub fn decode_frame(buf: &[u8], expected_lsn: Option<u64>) -> Result<(Record, u64, usize), Damage> {
    let header = buf.get(..FRAME_HEADER_BYTES).ok_or(Damage::TornHeader)?;
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let payload_bytes = word(0) as usize;
    let crc_stored = word(4);
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&header[8..16]);
    let lsn = u64::from_le_bytes(lsn_bytes);
    if payload_bytes > RECORD_BYTES_MAX {
        return Err(Damage::LengthTooLarge);
    }
    let payload = buf
        .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_bytes)
        .ok_or(Damage::TornPayload)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn_bytes);
    crc.update(payload);
    if crc.finalize() != crc_stored {
        return Err(Damage::ChecksumMismatch);
    }
    if expected_lsn.is_some_and(|e| e != lsn) {
        return Err(Damage::UnexpectedLsn);
    }
    // rkyv validates against an aligned copy: file offsets carry no alignment guarantee.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let rec = rkyv::from_bytes::<Record, rkyv::rancor::Error>(&aligned)
        .map_err(|_| Damage::Undecodable)?;
    Ok((rec, lsn, FRAME_HEADER_BYTES + payload_bytes))
}

/// Every good frame from the front of `buf`, in order, and the byte length they cover.
/// Stops at the first damaged frame, reporting it; `first_lsn` is the lsn the first frame must
/// carry (each next one +1).
pub struct Decoded {
    pub records: Vec<(u64, Record)>,
    pub good_bytes: usize,
    pub damage: Option<Damage>,
}

pub fn decode_all(buf: &[u8], first_lsn: u64) -> Decoded {
    let mut records = Vec::new();
    let mut at = 0;
    let mut expected = first_lsn;
    while at < buf.len() {
        match decode_frame(&buf[at..], Some(expected)) {
            Ok((rec, lsn, size)) => {
                records.push((lsn, rec));
                at += size;
                expected += 1;
            }
            Err(damage) => {
                return Decoded {
                    records,
                    good_bytes: at,
                    damage: Some(damage),
                };
            }
        }
    }
    Decoded {
        records,
        good_bytes: at,
        damage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        let s = "\\PC{0,40}";
        let o = proptest::option::of(s);
        prop_oneof![
            (
                s,
                any::<u64>(),
                s,
                s,
                o.clone(),
                "\\PC{0,300}",
                any::<u64>(),
                o.clone()
            )
                .prop_map(
                    |(room, seq, msg_id, from, name, body, ts_ms, client_msg_id)| Record::Message {
                        room,
                        seq,
                        msg_id,
                        from,
                        name,
                        body,
                        ts_ms,
                        client_msg_id
                    }
                ),
            (s, any::<u64>(), s, any::<u64>()).prop_map(|(room, seq, by, ts_ms)| Record::Deleted {
                room,
                seq,
                by,
                ts_ms
            }),
            (s, o.clone(), any::<bool>(), o, s, any::<u64>()).prop_map(
                |(room, title, private, password_hash, creator, created_ms)| Record::Room {
                    room,
                    title,
                    private,
                    password_hash,
                    creator,
                    created_ms
                }
            ),
            (s, s, any::<bool>()).prop_map(|(room, user, joined)| Record::Member {
                room,
                user,
                joined
            }),
            (s, s, any::<u64>()).prop_map(|(room, user, seq)| Record::ReadPointer {
                room,
                user,
                seq
            }),
        ]
    }

    proptest! {
        #[test]
        fn frame_round_trips_and_respects_the_reservation(rec in arb_record(), lsn in any::<u64>()) {
            let mut buf = Vec::new();
            let size = encode_frame(&rec, lsn, &mut buf).expect("encodes");
            prop_assert_eq!(size, buf.len());
            prop_assert!(size as u64 <= rec.frame_bytes_upper_bound(),
                "frame {} > bound {}", size, rec.frame_bytes_upper_bound());
            let (back, lsn_back, used) = decode_frame(&buf, Some(lsn)).expect("decodes");
            prop_assert_eq!(back, rec);
            prop_assert_eq!(lsn_back, lsn);
            prop_assert_eq!(used, size);
        }

        #[test]
        fn any_flipped_byte_is_detected(rec in arb_record(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_frame(&rec, 7, &mut buf).expect("encodes");
            let at = pick.index(buf.len());
            buf[at] ^= 1 << bit;
            prop_assert!(decode_frame(&buf, Some(7)).is_err());
        }
    }

    #[test]
    fn decode_all_stops_at_a_torn_frame() {
        let rec = Record::Member {
            room: "r".into(),
            user: "u".into(),
            joined: true,
        };
        let mut buf = Vec::new();
        let first = encode_frame(&rec, 1, &mut buf).expect("encodes");
        encode_frame(&rec, 2, &mut buf).expect("encodes");
        buf.truncate(buf.len() - 1);
        let d = decode_all(&buf, 1);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.good_bytes, first);
        assert_eq!(d.damage, Some(Damage::TornPayload));
    }
}
