//! Entry points for the fuzz targets (`fuzz/`, docs/SECURITY.md "Fuzzing"); only with the
//! cargo feature `fuzzing` (and in unit tests), never in a default or release build.
//! [`targets`] holds one function per target, taking the fuzzer's bytes: the libFuzzer
//! targets call it, and so does the test suite's short run (`sokdo-fuzz-smoke`).
//!
//! Each function runs one network parser of `wire` on bytes alone, with the limits the server
//! runs it with (the defaults of `config`), and panics when a property that must hold for
//! every input does not: the fuzzer reports a panic as a crash. The parsers themselves stay
//! private; this module adds no behaviour to them.

#![forbid(unsafe_code)]

use bytes::Bytes;
use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::wire::auth::{is_valid_user_id, Auth, NAME_BYTES_MAX};
use crate::wire::http::{self, Outcome};
use crate::wire::protocol::{self, ParseLimits, Request};
use crate::wire::ws::{self, Decoder, Inbound};

/// `--http-request-bytes-max`'s default: the router never sees more of a head.
pub const HTTP_REQUEST_BYTES_MAX: usize = 8192;
/// `--frame-bytes-max`'s default.
pub const FRAME_BYTES_MAX: usize = 16384;
/// `--body-bytes-max` and `--room-id-bytes-max`'s defaults.
pub const PARSE_LIMITS: ParseLimits = ParseLimits {
    body_bytes_max: 4096,
    room_id_bytes_max: 128,
};
/// The `--jwt-secret` the JWT target signs its tokens with.
pub const JWT_SECRET: &str = "sokdo-fuzz-secret";

/// Routes one request head as a shard does (cut at `HTTP_REQUEST_BYTES_MAX`), with a JWT
/// secret, the API key and accounts on. Checks: an answer has a status line that matches its
/// status; an upgrade consumes no more bytes than it was given.
pub fn http_head(head: &[u8]) {
    let head = &head[..head.len().min(HTTP_REQUEST_BYTES_MAX)];
    let auth = Auth::new(Some(JWT_SECRET));
    let metrics = || String::from("# EOF\n");
    let health = || -> Result<(), String> { Ok(()) };
    let ctx = http::Context {
        auth: &auth,
        draining: false,
        at_capacity: false,
        log_failure: None,
        queue_full: false,
        no_quorum: None,
        cluster: &|| String::from("{}"),
        metrics: &metrics,
        health: &health,
        faults: false,
        api_key: Some("fuzz-api-key"),
        accounts: true,
        debug_endpoints: true,
        body_bytes_max: PARSE_LIMITS.body_bytes_max,
        request_bytes_max: HTTP_REQUEST_BYTES_MAX,
    };
    match http::route(head, &ctx) {
        Outcome::Respond { status, response } => check_status_line(status, &response),
        Outcome::Upgrade {
            identity,
            response,
            request_bytes,
        } => {
            assert!(
                request_bytes <= head.len(),
                "upgrade consumed past its input"
            );
            assert!(
                is_valid_user_id(&identity.user),
                "upgrade with a bad user id"
            );
            check_status_line(101, &response);
        }
        Outcome::Incomplete | Outcome::Api(_) | Outcome::Fault(_) | Outcome::Profile(_) => {}
        #[cfg(feature = "autobahn")]
        Outcome::Echo { .. } => {}
    }
}

fn check_status_line(status: u16, response: &Bytes) {
    assert!((100..600).contains(&status), "status {status}");
    let line = format!("HTTP/1.1 {status} ");
    assert!(
        response.starts_with(line.as_bytes()),
        "status line differs from {status}"
    );
}

/// What the decoder made of a byte stream: its messages, then its error if it failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// Decodes `stream` with the real decoder and limit, fed in the given chunk sizes (the rest
/// in one piece), until the stream ends, an error, or a close frame (the server stops there).
pub fn ws_decode(stream: &[u8], chunks: &[usize]) -> (Vec<Frame>, Option<ws::DecodeError>) {
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    let mut rest = stream.to_vec();
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for &n in chunks {
        let n = n.min(rest.len());
        pieces.push(rest.drain(..n).collect());
    }
    pieces.push(rest);
    for mut piece in pieces {
        let mut closed = false;
        // Inline, so the closure takes the decoder's higher-ranked `FnMut(Inbound<'_>)`.
        let fed = decoder.feed(&mut piece, FRAME_BYTES_MAX, &mut |inbound| {
            let frame = owned(inbound);
            closed = matches!(frame, Frame::Close(_));
            frames.push(frame);
            !closed
        });
        if let Err(e) = fed {
            return (frames, Some(e));
        }
        if closed {
            break;
        }
    }
    (frames, None)
}

fn owned(inbound: Inbound<'_>) -> Frame {
    match inbound {
        Inbound::Text(t) => Frame::Text(t.to_owned()),
        Inbound::Binary(b) => Frame::Binary(b.to_vec()),
        Inbound::Ping(p) => Frame::Ping(p.to_vec()),
        Inbound::Pong => Frame::Pong,
        Inbound::Close(code) => Frame::Close(code),
    }
}

/// A masked client frame, as a browser sends it.
pub fn client_frame(frame: &Frame, mask: [u8; 4]) -> Vec<u8> {
    use tungstenite::protocol::frame::coding::Control;
    let (opcode, payload): (OpCode, Vec<u8>) = match frame {
        Frame::Text(t) => (OpCode::Data(Data::Text), t.as_bytes().to_vec()),
        Frame::Binary(b) => (OpCode::Data(Data::Binary), b.clone()),
        Frame::Ping(p) => (OpCode::Control(Control::Ping), p.clone()),
        Frame::Pong => (OpCode::Control(Control::Pong), Vec::new()),
        Frame::Close(None) => (OpCode::Control(Control::Close), Vec::new()),
        Frame::Close(Some(code)) => (OpCode::Control(Control::Close), code.to_be_bytes().to_vec()),
    };
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    header
        .format(payload.len() as u64, &mut out)
        .expect("formatting into memory cannot fail");
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The payload of an unmasked server frame `ws` encoded, and its opcode.
pub fn server_frame_payload(frame: &[u8]) -> Option<(OpCode, Vec<u8>)> {
    let mut cursor = std::io::Cursor::new(frame);
    let (header, len) = FrameHeader::parse(&mut cursor).ok()??;
    let at = cursor.position() as usize;
    (header.mask.is_none() && header.is_final && frame.len() - at == len as usize)
        .then(|| (header.opcode, frame[at..].to_vec()))
}

/// The server's own encoding of a text message (`ws::text`), for round trips.
pub fn server_text(payload: &[u8]) -> Bytes {
    ws::text(payload)
}

/// Parses one text frame as a request with the default limits, and builds the reply the
/// server would send for an error. Checks: a request respects the limits; an echoed `id` is
/// a number or a string; the error reply is JSON.
pub fn protocol_request(frame: &[u8]) {
    match protocol::parse(frame, PARSE_LIMITS) {
        Ok((id, request)) => {
            check_id(id.as_deref());
            if let Some(room) = request.room() {
                assert!(!room.is_empty() && room.len() <= PARSE_LIMITS.room_id_bytes_max);
            }
            if let Request::Send { body, .. } = &request {
                assert!(
                    body.len() <= PARSE_LIMITS.body_bytes_max,
                    "body past its limit"
                );
            }
            let reply = protocol::ok(id.as_deref(), serde_json::json!({}));
            check_reply(&reply);
        }
        Err((id, err)) => {
            check_id(id.as_deref());
            let reply = protocol::error(id.as_deref(), &err);
            check_reply(&reply);
        }
    }
}

fn check_id(id: Option<&RawValue>) {
    if let Some(id) = id {
        let value: serde_json::Value = serde_json::from_str(id.get()).unwrap_or_default();
        assert!(
            value.is_number() || value.is_string(),
            "id {} is neither a number nor a string",
            id.get()
        );
    }
}

fn check_reply(reply: &[u8]) {
    let parsed = serde_json::from_slice::<serde_json::Value>(reply);
    assert!(parsed.is_ok(), "reply is not JSON: {parsed:?}");
}

/// Verifies `token` with the fixed [`JWT_SECRET`] as `/ws` does. Checks: an accepted token
/// yields a valid user id and a name within its bound. Returns the user and name, or the
/// one-line reason of the 401.
pub fn jwt(token: &str) -> Result<(String, Option<String>), String> {
    let auth = Auth::new(Some(JWT_SECRET));
    match auth.authenticate(Some(token), None, None) {
        Ok(identity) => {
            assert!(is_valid_user_id(&identity.user), "accepted a bad user id");
            if let Some(name) = &identity.name {
                assert!(!name.is_empty() && name.len() <= NAME_BYTES_MAX);
            }
            Ok((identity.user, identity.name))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One function per target of `fuzz/fuzz_targets/`, taking the fuzzer's bytes.
pub mod targets {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey};

    use super::{client_frame, server_frame_payload, server_text, ws_decode, Frame, JWT_SECRET};

    /// `http_head`: [`super::http_head`] on the bytes.
    pub fn http_head(data: &[u8]) {
        super::http_head(data);
    }

    /// `protocol_request`: [`super::protocol_request`] on the bytes.
    pub fn protocol_request(data: &[u8]) {
        super::protocol_request(data);
    }

    /// `ws_frames`: two bytes that choose how the stream is cut, then the client's byte
    /// stream. Properties: the stream decodes the same (messages and error) whole, cut in
    /// two or three pieces, and one byte at a time; the decoded messages, encoded again as
    /// masked client frames, decode to the same messages; a text message the server encodes
    /// (`ws::text`) carries the same payload.
    pub fn ws_frames(data: &[u8]) {
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
    }

    /// `jwt`: a mode byte, then either a whole token (even mode) or a header and claims
    /// (`header\nclaims`, or claims alone under an HS256 header) that are signed with
    /// [`JWT_SECRET`], so that verification reaches the claims' checks. Checks those of
    /// [`super::jwt`].
    pub fn jwt(data: &[u8]) {
        let [mode, rest @ ..] = data else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        if mode % 2 == 0 {
            let _ = super::jwt(&text);
            return;
        }
        let (header, claims) = match text.split_once('\n') {
            Some((h, c)) => (h, c),
            None => (r#"{"alg":"HS256","typ":"JWT"}"#, &*text),
        };
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            .expect("HS256 signs any message");
        let _ = super::jwt(&format!("{message}.{signature}"));
    }
}

/// The test suite's short run of each target: its committed corpus, then mutations of it
/// (`sokdo-fuzz-smoke`; `scripts/fuzz` is the coverage-guided run).
#[cfg(test)]
mod smoke {
    const MUTATIONS: usize = 3_000;

    #[test]
    fn http_head_on_its_corpus_and_mutations() {
        sokdo_fuzz_smoke::run("http_head", MUTATIONS, super::targets::http_head);
    }

    #[test]
    fn protocol_request_on_its_corpus_and_mutations() {
        sokdo_fuzz_smoke::run(
            "protocol_request",
            MUTATIONS,
            super::targets::protocol_request,
        );
    }

    #[test]
    fn ws_frames_on_its_corpus_and_mutations() {
        sokdo_fuzz_smoke::run("ws_frames", MUTATIONS, super::targets::ws_frames);
    }

    #[test]
    fn jwt_on_its_corpus_and_mutations() {
        sokdo_fuzz_smoke::run("jwt", MUTATIONS, super::targets::jwt);
    }
}
