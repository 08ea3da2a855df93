//! The checkpoint file's decoder (`checkpoint::decode`, run at start-up).
//!
//! Input: a mode byte, then bytes. Mode even: the bytes are the file as read from disk.
//! Mode odd: the bytes are the payload, wrapped in the header with its true length and
//! checksum, so the fuzzer reaches the payload's validation (rkyv). Property: a checkpoint
//! that decodes survives encode → decode.
//! The function is `targets::checkpoint` of the library (the test suite runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sokdo_persistence::fuzz::targets::checkpoint(data));
