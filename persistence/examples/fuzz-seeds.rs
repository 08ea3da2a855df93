//! Writes the seed inputs of the `wal_record` and `checkpoint` fuzz targets (docs/SECURITY.md
//! "Fuzzing"), encoded by the real log and checkpoint code:
//!
//! ```text
//! cargo run -p sokdo-persistence --example fuzz-seeds --features fuzzing -- fuzz/corpus
//! ```
//!
//! A seed's file name is the FNV-1a hash of its bytes (idempotent; libFuzzer names what it
//! adds by SHA-1, so the two never collide).

use std::path::Path;

use sokdo_persistence::fuzz::{encode_checkpoint, encode_record};
use sokdo_persistence::{Record, RetryKey, RoomSnapshot};

fn records() -> Vec<Record> {
    vec![
        Record::Room {
            room: "lobby".into(),
            title: Some("The lobby".into()),
            private: true,
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            creator: "alice".into(),
            created_ms: 1_700_000_000_000,
        },
        Record::Member {
            room: "lobby".into(),
            user: "alice".into(),
            joined: true,
        },
        Record::Message {
            room: "lobby".into(),
            seq: 1,
            msg_id: "m-1".into(),
            from: "alice".into(),
            name: Some("Alice".into()),
            body: "안녕하세요, world".into(),
            ts_ms: 1_700_000_000_001,
            client_msg_id: Some("c-1".into()),
        },
        Record::Message {
            room: "lobby".into(),
            seq: 2,
            msg_id: "m-2".into(),
            from: "bob".into(),
            name: None,
            body: "x".repeat(300),
            ts_ms: 1_700_000_000_002,
            client_msg_id: None,
        },
        Record::Deleted {
            room: "lobby".into(),
            seq: 1,
            by: "alice".into(),
            ts_ms: 1_700_000_000_003,
        },
        Record::ReadPointer {
            room: "lobby".into(),
            user: "bob".into(),
            seq: 2,
        },
    ]
}

fn put(dir: &Path, bytes: &[u8]) {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{hash:016x}")), bytes).expect("seed written");
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .expect("usage: fuzz-seeds CORPUS_DIR");
    let root = Path::new(&root);
    let wal = root.join("wal_record");
    let frames: Vec<Vec<u8>> = records()
        .iter()
        .zip(1..)
        .map(|(r, lsn)| encode_record(r, lsn))
        .collect();
    // Mode 0: a segment as on disk — the whole log, its first record alone, a torn tail.
    let segment = frames.concat();
    put(&wal, &[&[0u8][..], &segment].concat());
    put(&wal, &[&[0u8][..], &frames[0]].concat());
    put(&wal, &[&[0u8][..], &segment[..segment.len() - 7]].concat());
    // Mode 1: one record's payload (the frame minus its 16-byte header).
    for frame in &frames {
        put(&wal, &[&[1u8][..], &frame[16..]].concat());
    }
    let cp = root.join("checkpoint");
    let room = RoomSnapshot {
        room: "lobby".into(),
        title: Some("The lobby".into()),
        private: true,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        creator: "alice".into(),
        created_ms: 1_700_000_000_000,
        last_seq: 2,
        members: vec!["alice".into(), "bob".into()],
        read_pointers: vec![("bob".into(), 2)],
        retry_keys: vec![RetryKey {
            from: "alice".into(),
            client_msg_id: "c-1".into(),
            seq: 1,
            ts_ms: 1_700_000_000_001,
        }],
    };
    let empty = encode_checkpoint(0, Vec::new());
    let full = encode_checkpoint(6, vec![room, RoomSnapshot::default()]);
    for file in [&empty, &full] {
        put(&cp, &[&[0u8][..], file].concat());
        put(&cp, &[&[1u8][..], &file[20..]].concat());
    }
}
