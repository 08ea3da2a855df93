//! The checkpoint file's decoder (`checkpoint::decode`, run at start-up).
//!
//! Input: a mode byte, then bytes. Mode even: the bytes are the file as read from disk.
//! Mode odd: the bytes are the payload, wrapped in the header with its true length and
//! checksum, so the fuzzer reaches the payload's validation (rkyv). Property: a checkpoint
//! that decodes survives encode → decode.
#![no_main]

use sokdo_persistence::fuzz::{checkpoint_file, checkpoint_framed};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        checkpoint_file(rest);
    } else {
        checkpoint_file(&checkpoint_framed(rest));
    }
});
