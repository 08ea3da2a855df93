//! The HTTP request head of a new socket: `wire::http::route` (health, metrics, API calls,
//! the `/ws` upgrade with its JWT), cut at `--http-request-bytes-max` as a shard cuts it.
//! The function is `targets::http_head` of the library (the test suite runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sokdo_engine::fuzz::targets::http_head(data));
