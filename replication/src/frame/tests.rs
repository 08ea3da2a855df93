use super::*;
use proptest::prelude::*;

fn record() -> impl Strategy<Value = Record> + Clone {
    (
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(epoch, seq, key, payload)| Record {
            epoch,
            seq,
            key,
            payload,
        })
}

fn meta() -> impl Strategy<Value = Meta> + Clone {
    (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(epoch, version, bytes)| Meta {
            epoch,
            version,
            bytes,
        })
}

fn code() -> impl Strategy<Value = RefusalCode> {
    prop_oneof![
        Just(RefusalCode::Unavailable),
        Just(RefusalCode::NotOwner),
        Just(RefusalCode::StaleEpoch),
        Just(RefusalCode::NotReplica),
        Just(RefusalCode::Overloaded),
    ]
}

fn publish() -> impl Strategy<Value = Frame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    let key = proptest::option::of(bytes.clone());
    (any::<u64>(), "\\PC{0,12}", key, bytes).prop_map(|(req, room, key, payload)| Frame::Publish {
        req,
        room,
        key,
        payload,
    })
}

fn published() -> impl Strategy<Value = Frame> {
    let original = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64));
    let fields = (
        any::<u64>(),
        "\\PC{0,12}",
        any::<u64>(),
        any::<u64>(),
        original,
    );
    fields.prop_map(|(req, room, epoch, seq, original)| Frame::Published {
        req,
        room,
        epoch,
        seq,
        original,
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![data_frame(), ownership_frame(), meta_frame()]
}

fn ownership_frame() -> impl Strategy<Value = Frame> {
    let room = "\\PC{0,12}";
    let records = proptest::collection::vec(record(), 0..4);
    prop_oneof![
        (room, any::<u64>(), any::<u64>()).prop_map(|(room, epoch, since)| Frame::Claim {
            room,
            epoch,
            since
        }),
        (
            room,
            any::<u64>(),
            any::<u64>(),
            records,
            proptest::option::of(meta()),
            any::<bool>()
        )
            .prop_map(
                |(room, epoch, committed, records, meta, partial)| Frame::Handoff {
                    room,
                    epoch,
                    committed,
                    records,
                    meta,
                    partial,
                }
            ),
    ]
}

fn meta_frame() -> impl Strategy<Value = Frame> {
    let room = "\\PC{0,12}";
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (any::<u64>(), room, bytes.clone()).prop_map(|(req, room, op)| Frame::MetaRequest {
            req,
            room,
            op
        }),
        (any::<u64>(), room, meta()).prop_map(|(req, room, meta)| Frame::MetaDone {
            req,
            room,
            meta
        }),
        (any::<u64>(), room, bytes.clone()).prop_map(|(req, room, why)| Frame::MetaRefused {
            req,
            room,
            why
        }),
        (room, meta()).prop_map(|(room, meta)| Frame::MetaAppend { room, meta }),
        (room, any::<u64>(), any::<u64>()).prop_map(|(room, epoch, version)| {
            Frame::MetaAppended {
                room,
                epoch,
                version,
            }
        }),
        (room, meta()).prop_map(|(room, meta)| Frame::MetaDeliver { room, meta }),
    ]
}

fn data_frame() -> impl Strategy<Value = Frame> {
    let room = "\\PC{0,12}";
    let records = proptest::collection::vec(record(), 0..4);
    prop_oneof![
        (any::<u32>(), "[a-z0-9-]{1,64}", any::<u64>()).prop_map(|(version, node_id, boot_id)| {
            Frame::Hello {
                version,
                node_id,
                boot_id,
            }
        }),
        publish(),
        published(),
        (any::<u64>(), room, any::<u64>(), code()).prop_map(|(req, room, epoch, code)| {
            Frame::Refused {
                req,
                room,
                epoch,
                code,
            }
        }),
        (room, any::<u64>(), any::<u64>(), record()).prop_map(
            |(room, epoch, committed, record)| Frame::Append {
                room,
                epoch,
                committed,
                record
            }
        ),
        (room, any::<u64>(), any::<u64>()).prop_map(|(room, epoch, upto)| Frame::Appended {
            room,
            epoch,
            upto
        }),
        (room, record()).prop_map(|(room, record)| Frame::Deliver { room, record }),
        room.prop_map(|room| Frame::Interest { room }),
        room.prop_map(|room| Frame::Uninterest { room }),
        (any::<u64>(), room, any::<u64>(), any::<u32>()).prop_map(|(req, room, after_seq, max)| {
            Frame::ReplayRequest {
                req,
                room,
                after_seq,
                max,
            }
        }),
        (any::<u64>(), room, records.clone(), any::<bool>()).prop_map(
            |(req, room, records, more)| Frame::ReplayRecords {
                req,
                room,
                records,
                more
            }
        ),
    ]
}

proptest! {
    #[test]
    fn frames_survive_encode_then_decode(frames in proptest::collection::vec(frame(), 1..5)) {
        // Several frames back to back on one link, read from an unaligned offset.
        let mut link = vec![0xAA];
        for f in &frames {
            link.extend_from_slice(&encode(f).unwrap());
        }
        let mut at = 1;
        for f in &frames {
            let (got, used) = decode(&link[at..]).unwrap().expect("complete");
            prop_assert_eq!(&got, f);
            at += used;
        }
        prop_assert_eq!(at, link.len());
    }

    #[test]
    fn records_survive_their_disk_encoding(r in record(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let bytes = encode_record(&r).unwrap();
        prop_assert_eq!(decode_record(&bytes).unwrap(), r);
        // A damaged record is an error or some record, never a panic.
        let mut damaged = bytes.clone();
        damaged[at.index(bytes.len())] ^= x;
        let _ = decode_record(&damaged);
        let _ = decode_record(&bytes[..at.index(bytes.len())]);
    }

    #[test]
    fn a_truncated_frame_asks_for_more_bytes(f in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&f).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        // Most garbage is invalid; whatever decodes must round-trip.
        if let Ok(Some((f, used))) = decode(&bytes) {
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decode_body(&rkyv::to_bytes::<rancor::Error>(&f).unwrap()).unwrap(), f);
        }
        fuzz_decode_all(&bytes);
    }

    #[test]
    fn flipped_bytes_in_a_valid_frame_never_panic(f in frame(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let mut bytes = encode(&f).unwrap();
        let i = LENGTH_PREFIX_BYTES + at.index(bytes.len() - LENGTH_PREFIX_BYTES);
        bytes[i] ^= x;
        let _ = decode(&bytes);
        fuzz_decode_all(&bytes);
    }
}

#[test]
fn known_garbage_gives_errors() {
    // Empty body, a body of zeros too short for the enum, a huge length.
    assert!(matches!(decode(&[0, 0, 0, 0]), Err(Error::Invalid(_))));
    assert!(matches!(
        decode(&[2, 0, 0, 0, 0xff, 0xff]),
        Err(Error::Invalid(_))
    ));
    let huge = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
    assert!(matches!(decode(&huge), Err(Error::TooLong(n)) if n == FRAME_BYTES_MAX + 1));
    // A Publish whose room string points outside the buffer: the validator refuses it.
    let mut bytes = encode(&Frame::Interest {
        room: "a-room-name-longer-than-inline".into(),
    })
    .unwrap();
    for b in &mut bytes[LENGTH_PREFIX_BYTES..] {
        *b = 0x7f;
    }
    assert!(matches!(decode(&bytes), Err(Error::Invalid(_))));
}

#[test]
fn a_link_opens_with_a_hello_of_this_version() {
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        node_id: "node-a".into(),
        boot_id: 7,
    };
    assert_eq!(check_hello(&hello).unwrap(), ("node-a", 7));
    let old = Frame::Hello {
        version: PROTOCOL_VERSION + 1,
        node_id: "x".into(),
        boot_id: 1,
    };
    assert!(matches!(check_hello(&old), Err(Error::Version(v)) if v == PROTOCOL_VERSION + 1));
    assert!(matches!(
        check_hello(&Frame::Interest { room: "r".into() }),
        Err(Error::NotHello)
    ));
}

/// The test suite's short run of the `replication_frame` fuzz target: its committed corpus,
/// then 3,000 seeded mutations (`sokdo-fuzz-smoke`; `scripts/fuzz` is the coverage-guided
/// run).
#[test]
fn replication_frame_on_its_corpus_and_mutations() {
    sokdo_fuzz_smoke::run("replication_frame", 3_000, fuzz_decode_all);
}
