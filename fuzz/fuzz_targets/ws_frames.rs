//! The WebSocket frame decoder (`wire::ws::Decoder`) with `--frame-bytes-max`'s default.
//!
//! Input: two bytes that choose how the stream is cut, then the client's byte stream.
//! Properties: the stream decodes the same (messages and error) whole, cut in two or three
//! pieces, and one byte at a time; the decoded messages, encoded again as masked client
//! frames, decode to the same messages; a text message the server encodes (`ws::text`)
//! carries the same payload.
//! The function is `targets::ws_frames` of the library (the test suite runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sokdo_engine::fuzz::targets::ws_frames(data));
