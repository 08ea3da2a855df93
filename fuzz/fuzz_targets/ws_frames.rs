//! The WebSocket frame decoder (`wire::ws::Decoder`) with `--frame-bytes-max`'s default.
//!
//! Input: two bytes that choose how the stream is cut, then the client's byte stream.
//! Properties: the stream decodes the same (messages and error) whole, cut in two or three
//! pieces, and one byte at a time; the decoded messages, encoded again as masked client
//! frames, decode to the same messages; a text message the server encodes (`ws::text`)
//! carries the same payload.
#![no_main]

use sokdo_engine::fuzz::{client_frame, server_frame_payload, server_text, ws_decode, Frame};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [a, b, stream @ ..] = data else {
        return;
    };
    let whole = ws_decode(stream, &[]);
    let cut = ws_decode(stream, &[usize::from(*a), usize::from(*b)]);
    assert_eq!(whole, cut, "decoding depends on where the stream is cut");
    if stream.len() <= 4096 {
        let bytewise = ws_decode(stream, &vec![1; stream.len()]);
        assert_eq!(whole, bytewise, "decoding one byte at a time differs");
    }
    let mask = [*a, *b, 0x5a, 0xa5];
    let again: Vec<u8> = whole.0.iter().flat_map(|f| client_frame(f, mask)).collect();
    let redecoded = ws_decode(&again, &[]);
    assert_eq!(redecoded.1, None, "re-encoded messages fail to decode");
    assert_eq!(redecoded.0, whole.0, "messages do not survive a round trip");
    for frame in &whole.0 {
        if let Frame::Text(text) = frame {
            let (_, payload) = server_frame_payload(&server_text(text.as_bytes()))
                .expect("the server's text frame parses");
            assert_eq!(payload, text.as_bytes(), "the server's text frame differs");
        }
    }
});
