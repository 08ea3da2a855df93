//! The frames instances exchange on a peer link, and their encoding.
//!
//! On the link every frame is a `u32` little-endian length, then that many bytes: the
//! rkyv 0.8 archive of a [`Frame`]. Decoding validates the archive (bytecheck) against an
//! aligned copy, so bytes from a peer — a bug, another release, an attacker on the cluster
//! network — give an [`Error`], never a panic or undefined behaviour. A length above
//! [`FRAME_BYTES_MAX`] is refused before anything is buffered for it.
//!
//! A link opens with [`Frame::Hello`] from the dialler (the engine's links carry frames
//! one way: each instance sends on the connection it dialled); [`check_hello`] refuses
//! another protocol version. What each frame means is in `room.rs` (ownership, records) and
//! docs/REPLICATION.md.

use rkyv::rancor;

/// The peer protocol's version, sent in [`Frame::Hello`]; a peer with another one is
/// refused (no mixed-version cluster during a rolling upgrade without a compatible range).
/// 2: records and publishes carry a retry key; `Published` carries the original's payload
/// when it answers a retry; a room's metadata travels beside its log (`Meta*` frames).
/// 3: a room's known-acknowledged prefix (`committed`) travels in `Append`, `Claim`
/// (`since`) and `Handoff`, so a take-over exchanges only what follows it.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest frame body accepted on a link, bytes: a replay batch of records (each at
/// most the engine's message limit) stays far below it.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The bytes before each frame body: its length, `u32` little-endian.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// One record of a room: its position (`epoch`, `seq`), its retry key if the send had one
/// (the engine's author + `client_msg_id`; opaque here: every replica and any later owner
/// rebuilds the owner's window of keys from the log, `room::dedup`), and the message's
/// bytes (the engine's encoding; opaque here).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Record {
    pub epoch: u64,
    pub seq: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// A room's metadata (the engine's encoding, opaque here: creator, title, password hash,
/// deleted seqs), at its position: the epoch of the owner that last wrote it and its
/// version (one more per change). A later position replaces an earlier one whole.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Meta {
    pub epoch: u64,
    pub version: u64,
    pub bytes: Vec<u8>,
}

impl Meta {
    /// The order of two metadata: the higher epoch, then the higher version.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }
}

/// Why an owner (or a replica) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RefusalCode {
    /// No quorum, no owner yet, or a catch-up in progress: retry later or elsewhere.
    Unavailable,
    /// The receiver is not the room's owner in its view: ask the owner.
    NotOwner,
    /// The frame's epoch is below the highest the receiver has seen for the room.
    StaleEpoch,
    /// The receiver is not the room's successor in its view, or the sender not its owner.
    NotReplica,
    /// The room's bounded queue of sends waiting for a catch-up is full.
    Overloaded,
}

/// A frame on a peer link.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Frame {
    /// First frame on a link, from the dialler: its identity and protocol version.
    Hello {
        version: u32,
        node_id: String,
        boot_id: u64,
    },
    /// A send forwarded to the room's owner; `req` is the forwarder's id for the answer,
    /// `key` the send's retry key (a publish whose key the owner holds is not sequenced
    /// again).
    Publish {
        req: u64,
        room: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    /// The owner sequenced and acknowledged (own log + replicas) the publish `req`. For a
    /// retry (its key was sequenced before), `seq` is the original's and `original` the
    /// original record's payload, so the forwarder can answer exactly as for the original.
    Published {
        req: u64,
        room: String,
        epoch: u64,
        seq: u64,
        original: Option<Vec<u8>>,
    },
    /// The owner refused the publish `req` (or a replica the record at `epoch`).
    Refused {
        req: u64,
        room: String,
        epoch: u64,
        code: RefusalCode,
    },
    /// Owner → replica: hold this record of the room. `epoch` is the owner's (the record's
    /// own may be older: an acknowledged prefix is not re-stamped); `committed`, the prefix
    /// of the room the owner knows acknowledged (`room::Durable::committed`).
    Append {
        room: String,
        epoch: u64,
        committed: u64,
        record: Record,
    },
    /// Replica → owner: it holds every record of `room` up to `upto` at `epoch`.
    Appended { room: String, epoch: u64, upto: u64 },
    /// Owner → an instance with subscribers: an acknowledged record to fan out.
    Deliver { room: String, record: Record },
    /// An instance has subscribers in the room (registered again on every view change).
    Interest { room: String },
    /// It has none any more.
    Uninterest { room: String },
    /// Records of `room` after `after_seq`, at most `max`.
    ReplayRequest {
        req: u64,
        room: String,
        after_seq: u64,
        max: u32,
    },
    /// The answer: acknowledged records in order; `more` if the limit cut it.
    ReplayRecords {
        req: u64,
        room: String,
        records: Vec<Record>,
        more: bool,
    },
    /// A node taking ownership of `room` at `epoch` asks for the others' records after
    /// `since`, the prefix it holds and knows acknowledged.
    Claim {
        room: String,
        epoch: u64,
        since: u64,
    },
    /// The answer to a claim (and a planned handoff): the sender promises to refuse any
    /// lower epoch and hands over the room's records it holds after the claim's `since`,
    /// and the prefix it knows acknowledged (`committed`). `partial`: no promise, no
    /// metadata, only acknowledged records after `since` (as many as fit
    /// `room::HANDOFF_BYTES_MAX`): the claimant adopts them and claims again from further on.
    Handoff {
        room: String,
        epoch: u64,
        committed: u64,
        records: Vec<Record>,
        meta: Option<Meta>,
        partial: bool,
    },
    /// A request about the room's metadata (create, join, update, delete: the engine's
    /// encoding) forwarded to the room's owner; `req` is the forwarder's id for the answer.
    MetaRequest { req: u64, room: String, op: Vec<u8> },
    /// The owner's answer to `req`: the room's metadata once a majority holds it (changed
    /// by the request or not).
    MetaDone { req: u64, room: String, meta: Meta },
    /// The owner turned the request `req` down (the engine's encoding of the reason: the
    /// room exists, a wrong creator, no such message).
    MetaRefused {
        req: u64,
        room: String,
        why: Vec<u8>,
    },
    /// Owner → replica: hold this metadata of the room.
    MetaAppend { room: String, meta: Meta },
    /// Replica → owner: it holds the room's metadata up to `version` at `epoch`.
    MetaAppended {
        room: String,
        epoch: u64,
        version: u64,
    },
    /// Owner → an instance with members: the room's metadata, once a majority holds it.
    MetaDeliver { room: String, meta: Meta },
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("frame of {0} bytes is above the limit of {FRAME_BYTES_MAX}")]
    TooLong(usize),
    #[error("frame body is not a valid archive: {0}")]
    Invalid(rancor::Error),
    #[error("frame could not be encoded: {0}")]
    Encode(rancor::Error),
    #[error("peer speaks protocol version {0}, this instance {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("the first frame on a link must be a Hello")]
    NotHello,
}

/// `frame` with its length prefix, ready for the link.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, Error> {
    let body = rkyv::to_bytes::<rancor::Error>(frame).map_err(Error::Encode)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(Error::TooLong(body.len()));
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + body.len());
    // Below FRAME_BYTES_MAX, checked above: fits a u32.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The first frame in `buf`, if it is complete: the frame and the bytes it took.
/// `Ok(None)`: more bytes are needed. An error means the link is broken (close it).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(Error::TooLong(len));
    }
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, LENGTH_PREFIX_BYTES + len)))
}

/// One frame body (without its prefix), validated.
pub fn decode_body(body: &[u8]) -> Result<Frame, Error> {
    // rkyv validates against an aligned copy: a link's buffer has no alignment guarantee.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<Frame, rancor::Error>(&aligned).map_err(Error::Invalid)
}

/// One record as it is kept on disk (the engine's `cluster.redb`): the rkyv archive of the
/// whole [`Record`], so a field added to it is stored with it.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, Error> {
    let bytes = rkyv::to_bytes::<rancor::Error>(record).map_err(Error::Encode)?;
    Ok(bytes.to_vec())
}

/// A record from [`encode_record`]'s bytes, validated like a frame body: bytes that are
/// not a record give an error, never a panic.
pub fn decode_record(bytes: &[u8]) -> Result<Record, Error> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<Record, rancor::Error>(&aligned).map_err(Error::Invalid)
}

/// The first frame of a link must be a [`Frame::Hello`] of this protocol version.
pub fn check_hello(frame: &Frame) -> Result<(&str, u64), Error> {
    match frame {
        Frame::Hello {
            version,
            node_id,
            boot_id,
        } if *version == PROTOCOL_VERSION => Ok((node_id, *boot_id)),
        Frame::Hello { version, .. } => Err(Error::Version(*version)),
        _ => Err(Error::NotHello),
    }
}

/// The fuzz target's entry point (`fuzz/fuzz_targets/replication_frame.rs`): decodes
/// every frame in `data` until one is incomplete or invalid; a decoded frame must
/// survive encode → decode unchanged. Panics only when that property is broken.
pub fn fuzz_decode_all(mut data: &[u8]) {
    while let Ok(Some((frame, used))) = decode(data) {
        assert!(used <= data.len() && used >= LENGTH_PREFIX_BYTES);
        let again = encode(&frame).expect("a decoded frame encodes");
        let (back, _) = decode(&again).expect("valid").expect("complete");
        assert_eq!(back, frame);
        data = &data[used..];
    }
}

#[cfg(test)]
mod tests;
