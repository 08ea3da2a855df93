//! A text frame as a protocol request: `wire::protocol::parse` with the default limits, and
//! the reply built for it (must be JSON).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sokdo_engine::fuzz::protocol_request(data);
});
