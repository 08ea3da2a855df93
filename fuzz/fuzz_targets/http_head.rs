//! The HTTP request head of a new socket: `wire::http::route` (health, metrics, API calls,
//! the `/ws` upgrade with its JWT), cut at `--http-request-bytes-max` as a shard cuts it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sokdo_engine::fuzz::http_head(data);
});
