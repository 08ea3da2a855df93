//! A text frame as a protocol request: `wire::protocol::parse` with the default limits, and
//! the reply built for it (must be JSON).
//! The function is `targets::protocol_request` of the library (the test suite runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sokdo_engine::fuzz::targets::protocol_request(data));
