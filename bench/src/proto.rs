//! The two chat protocols the bench speaks, as bytes: sokdo's JSON ops (also spoken by the
//! tokio and `ws` peers) and Socket.IO v5 over Engine.IO v4 (the socket.io peer).
//!
//! Classifying a frame looks at a few bytes of its payload, never parses JSON: the hot path
//! of a subscriber that must count a million frames per second.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// sokdo's protocol (`/ws?user=…`, `{"op":…}` frames).
    Sokdo,
    /// Socket.IO over Engine.IO v4, WebSocket transport only.
    Socketio,
}

/// What a server frame is, as far as the bench cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// sokdo `hello`, or Socket.IO's namespace connect (`40…`): the session is admitted.
    Admitted,
    /// sokdo `queued`: waiting for admission.
    Queued,
    /// Engine.IO open packet (`0{…}`): answer with a namespace connect.
    EngineOpen,
    /// A reply to a request (sokdo `ok`, Socket.IO ack `43…`).
    Ok,
    /// A `msg` event: one delivery.
    Msg,
    /// An error reply or event.
    Error,
    /// Engine.IO ping (`2`): answer with pong (`3`).
    EnginePing,
    Other,
}

impl Protocol {
    pub fn path(self, user: &str) -> String {
        match self {
            Protocol::Sokdo => format!("/ws?user={user}"),
            Protocol::Socketio => format!("/socket.io/?EIO=4&transport=websocket&user={user}"),
        }
    }

    /// The payload to send after the Engine.IO open packet.
    pub const SOCKETIO_CONNECT: &'static [u8] = b"40";
    pub const SOCKETIO_PONG: &'static [u8] = b"3";

    pub fn join(self, id: u64, room: &str) -> String {
        match self {
            Protocol::Sokdo => format!(r#"{{"op":"join","id":{id},"room":"{room}"}}"#),
            Protocol::Socketio => format!(r#"42{id}["join","{room}"]"#),
        }
    }

    /// `body` must need no JSON escaping (the bench's bodies are ASCII digits and letters).
    pub fn send(self, id: u64, room: &str, body: &str) -> String {
        match self {
            Protocol::Sokdo => {
                format!(r#"{{"op":"send","id":{id},"room":"{room}","body":"{body}"}}"#)
            }
            Protocol::Socketio => {
                format!(r#"42{id}["send",{{"room":"{room}","body":"{body}"}}]"#)
            }
        }
    }

    pub fn classify(self, p: &[u8]) -> Kind {
        match self {
            Protocol::Sokdo => classify_sokdo(p),
            Protocol::Socketio => classify_socketio(p),
        }
    }

    /// The error code of an error frame, for the report's errors-by-kind.
    pub fn error_code(self, p: &[u8]) -> String {
        let v: serde_json::Value = match self {
            Protocol::Sokdo => serde_json::from_slice(p).unwrap_or_default(),
            Protocol::Socketio => {
                let start = p.iter().position(|&b| b == b'[').unwrap_or(p.len());
                serde_json::from_slice::<serde_json::Value>(&p[start..])
                    .map(|v| v[0].clone())
                    .unwrap_or_default()
            }
        };
        let code = v.get("code").or_else(|| v.get("error"));
        match code.and_then(|c| c.as_str()) {
            Some(c) => format!("server_error:{c}"),
            None => "server_error".to_string(),
        }
    }
}

fn classify_sokdo(p: &[u8]) -> Kind {
    const OP: &[u8] = b"\"op\":\"";
    // sokdo and the peers put `op` first; a server that orders its keys differently costs a
    // search (within the bytes a counting connection assembles).
    let start = if p.starts_with(b"{\"op\":\"") {
        7
    } else {
        match p.windows(OP.len()).position(|w| w == OP) {
            Some(i) => i + OP.len(),
            None => return Kind::Other,
        }
    };
    let op = &p[start..];
    if op.starts_with(b"msg\"") {
        Kind::Msg
    } else if op.starts_with(b"ok\"") {
        Kind::Ok
    } else if op.starts_with(b"error\"") {
        Kind::Error
    } else if op.starts_with(b"hello\"") {
        Kind::Admitted
    } else if op.starts_with(b"queued\"") {
        Kind::Queued
    } else {
        Kind::Other
    }
}

fn classify_socketio(p: &[u8]) -> Kind {
    match p {
        [b'2'] => Kind::EnginePing,
        [b'0', b'{', ..] => Kind::EngineOpen,
        [b'4', b'0', ..] => Kind::Admitted,
        [b'4', b'4', ..] => Kind::Error,
        [b'4', b'2', b'[', b'"', b'm', b's', b'g', b'"', ..] => Kind::Msg,
        [b'4', b'3', rest @ ..] => {
            let start = rest.iter().position(|&b| b == b'[').unwrap_or(0);
            if rest[start..].starts_with(b"[{\"error\"") {
                Kind::Error
            } else {
                Kind::Ok
            }
        }
        _ => Kind::Other,
    }
}

/// The send timestamp the bench put in a body (`"t:<ns>|…`), if `payload` carries one.
pub fn body_timestamp_ns(payload: &[u8]) -> Option<u64> {
    let i = payload.windows(3).position(|w| w == b"\"t:")?;
    let digits = &payload[i + 3..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sokdo_frames() {
        let p = Protocol::Sokdo;
        assert_eq!(p.classify(br#"{"op":"msg","room":"r"}"#), Kind::Msg);
        assert_eq!(p.classify(br#"{"op":"ok","id":1}"#), Kind::Ok);
        assert_eq!(
            p.classify(br#"{"id":1,"op":"error","code":"x"}"#),
            Kind::Error
        );
        assert_eq!(p.classify(br#"{"op":"hello"}"#), Kind::Admitted);
        assert_eq!(p.classify(br#"{"op":"queued","position":3}"#), Kind::Queued);
        assert_eq!(p.classify(b"[]"), Kind::Other);
        assert_eq!(
            p.error_code(br#"{"op":"error","code":"not_member"}"#),
            "server_error:not_member"
        );
    }

    #[test]
    fn classifies_socketio_frames() {
        let p = Protocol::Socketio;
        assert_eq!(p.classify(b"2"), Kind::EnginePing);
        assert_eq!(p.classify(br#"0{"sid":"a"}"#), Kind::EngineOpen);
        assert_eq!(p.classify(br#"40{"sid":"b"}"#), Kind::Admitted);
        assert_eq!(p.classify(br#"42["msg",{"body":"t:1|"}]"#), Kind::Msg);
        assert_eq!(p.classify(br#"431[{"room":"r","seq":1}]"#), Kind::Ok);
        assert_eq!(p.classify(br#"431[{"error":"not_member"}]"#), Kind::Error);
        assert_eq!(
            p.error_code(br#"431[{"error":"not_member"}]"#),
            "server_error:not_member"
        );
    }

    #[test]
    fn finds_body_timestamps() {
        assert_eq!(
            body_timestamp_ns(br#"{"op":"msg","body":"t:12345|xx"}"#),
            Some(12345)
        );
        assert_eq!(body_timestamp_ns(br#"{"op":"msg","body":"hi"}"#), None);
    }
}
