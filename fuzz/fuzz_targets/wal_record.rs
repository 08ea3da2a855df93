//! The write-ahead log's record decoder (`record::decode_all`, what replay runs on each
//! segment) from lsn 1.
//!
//! Input: a mode byte, then bytes. Mode even: the bytes are a segment as read from disk.
//! Mode odd: the bytes are one record's payload, framed with its true length, lsn and
//! checksum, so the fuzzer reaches the payload's validation (rkyv) behind the checksum.
//! Properties (in `sokdo_persistence::fuzz::wal_segment`): the good prefix lies within the
//! input, damage is reported exactly when bytes are left, lsns are consecutive, decoded
//! records survive encode → decode.
//! The function is `targets::wal_record` of the library (the test suite runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sokdo_persistence::fuzz::targets::wal_record(data));
