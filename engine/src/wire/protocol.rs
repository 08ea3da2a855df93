//! The client protocol (docs/PROTOCOL.md): parsing requests, encoding replies and events.
//!
//! Parsing is separate from execution: a text frame becomes a typed [`Request`] here, or a
//! [`ProtoError`] carrying the protocol error code, and the shard executes it. Nothing a
//! client sends can panic this module.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Declares [`ErrorCode`] from one list of `Variant => "wire name"`, so that the enum, its
/// names and [`ErrorCode::ALL`] cannot drift apart: a new code is parsed back by
/// [`ErrorCode::named`] without anyone remembering to add it there.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// Error codes of PROTOCOL.md.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code's name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)+
                }
            }
        }
    };
}

error_codes! {
    BadRequest => "bad_request",
    TooLarge => "too_large",
    RateLimited => "rate_limited",
    Unauthorized => "unauthorized",
    Forbidden => "forbidden",
    NotFound => "not_found",
    NotMember => "not_member",
    RoomExists => "room_exists",
    /// `POST /api/auth/register` of a user id that is taken (HTTP API only).
    UserExists => "user_exists",
    Unavailable => "unavailable",
    Internal => "internal",
}

impl ErrorCode {
    /// The code named `s` (`internal` for any other string).
    pub fn named(s: &str) -> ErrorCode {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Internal)
    }
}

/// The request id a client chose, echoed verbatim in the reply.
pub type RequestId = Option<Box<RawValue>>;

/// A request that failed before execution, or during it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
        }
    }
}

/// Most messages a `history` request may ask for (PROTOCOL.md).
pub const HISTORY_LIMIT_MAX: u32 = 100;
/// `history` without `limit`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
pub const SEARCH_LIMIT_MAX: u32 = 100;
pub const SEARCH_LIMIT_DEFAULT: u32 = 20;
pub const ROOMS_LIMIT_MAX: u32 = 100;
pub const ROOMS_LIMIT_DEFAULT: u32 = 50;
/// Longest search query.
pub const QUERY_BYTES_MAX: usize = 256;
/// Longest room title.
pub const TITLE_BYTES_MAX: usize = 256;
/// Longest `client_msg_id` (a room keeps the last `idempotency_keys_max` of them).
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Join {
        room: String,
        password: Option<String>,
        after_seq: Option<u64>,
    },
    Create {
        room: String,
        title: Option<String>,
        private: bool,
        password: Option<String>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        body: String,
        client_msg_id: Option<String>,
    },
    History {
        room: String,
        before_seq: Option<u64>,
        limit: u32,
    },
    Read {
        room: String,
        seq: u64,
    },
    Delete {
        room: String,
        seq: u64,
    },
    Typing {
        room: String,
    },
    Presence {
        room: String,
    },
    Search {
        room: String,
        query: String,
        limit: u32,
    },
    /// The creator changes a room: title, privacy, password (docs/PROTOCOL.md).
    UpdateRoom {
        room: String,
        title: Option<String>,
        private: Option<bool>,
        password: Option<String>,
    },
    Rooms {
        query: Option<String>,
        joined: bool,
        limit: u32,
        cursor: Option<String>,
    },
    Ping,
}

impl Request {
    /// The room a request addresses, if any: it decides the shard that executes it.
    pub fn room(&self) -> Option<&str> {
        match self {
            Request::Join { room, .. }
            | Request::Create { room, .. }
            | Request::Leave { room }
            | Request::Send { room, .. }
            | Request::History { room, .. }
            | Request::Read { room, .. }
            | Request::Delete { room, .. }
            | Request::Typing { room }
            | Request::Presence { room }
            | Request::Search { room, .. }
            | Request::UpdateRoom { room, .. } => Some(room),
            Request::Rooms { .. } | Request::Ping => None,
        }
    }
}

/// Every field any request may carry; borrowed from the frame where JSON escapes allow.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    password: Option<Cow<'a, str>>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
    private: Option<bool>,
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    seq: Option<u64>,
    limit: Option<u32>,
    #[serde(borrow)]
    query: Option<Cow<'a, str>>,
    joined: Option<bool>,
    #[serde(borrow)]
    cursor: Option<Cow<'a, str>>,
}

/// Limits that parsing enforces.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub body_bytes_max: usize,
    pub room_id_bytes_max: usize,
}

/// Parses one text frame. On failure the error still carries the request id when one
/// could be read, so the client can match the error to its request.
pub fn parse(
    frame: &[u8],
    limits: ParseLimits,
) -> Result<(RequestId, Request), (RequestId, ProtoError)> {
    let wire: Wire<'_> = serde_json::from_slice(frame).map_err(|e| {
        (
            None,
            ProtoError::new(ErrorCode::BadRequest, format!("invalid JSON: {e}")),
        )
    })?;
    let id = match wire.id {
        None => None,
        Some(raw) if is_number_or_string(raw) => Some(raw.to_owned()),
        Some(_) => {
            return Err((
                None,
                ProtoError::new(ErrorCode::BadRequest, "`id` must be a number or a string"),
            ))
        }
    };
    match build(wire, limits) {
        Ok(req) => Ok((id, req)),
        Err(e) => Err((id, e)),
    }
}

fn is_number_or_string(raw: &RawValue) -> bool {
    matches!(
        raw.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9')
    )
}

fn build(wire: Wire<'_>, limits: ParseLimits) -> Result<Request, ProtoError> {
    let op = wire
        .op
        .as_deref()
        .ok_or_else(|| ProtoError::new(ErrorCode::BadRequest, "missing field `op`"))?;
    let room = || room_field(op, wire.room.as_deref(), limits);
    Ok(match op {
        "join" => Request::Join {
            room: room()?,
            password: wire.password.map(Cow::into_owned),
            after_seq: wire.after_seq,
        },
        "create" => Request::Create {
            room: room()?,
            title: bounded("title", wire.title, TITLE_BYTES_MAX)?,
            private: wire.private.unwrap_or(false),
            password: wire.password.map(Cow::into_owned),
        },
        "leave" => Request::Leave { room: room()? },
        "send" => {
            let room = room()?;
            let body = wire.body.ok_or_else(|| missing(op, "body"))?.into_owned();
            if body.len() > limits.body_bytes_max {
                return Err(ProtoError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "body is {} bytes; body_bytes_max is {}",
                        body.len(),
                        limits.body_bytes_max
                    ),
                ));
            }
            Request::Send {
                room,
                body,
                client_msg_id: bounded(
                    "client_msg_id",
                    wire.client_msg_id,
                    CLIENT_MSG_ID_BYTES_MAX,
                )?,
            }
        }
        "history" => {
            let limit = wire.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
            if limit == 0 || limit > HISTORY_LIMIT_MAX {
                return Err(ProtoError::new(
                    ErrorCode::BadRequest,
                    format!("`limit` must be 1..={HISTORY_LIMIT_MAX}"),
                ));
            }
            Request::History {
                room: room()?,
                before_seq: wire.before_seq,
                limit,
            }
        }
        "read" => Request::Read {
            room: room()?,
            seq: wire.seq.ok_or_else(|| missing(op, "seq"))?,
        },
        "delete" => Request::Delete {
            room: room()?,
            seq: wire.seq.ok_or_else(|| missing(op, "seq"))?,
        },
        "typing" => Request::Typing { room: room()? },
        "presence" => Request::Presence { room: room()? },
        "search" => {
            let query = wire.query.ok_or_else(|| missing(op, "query"))?.into_owned();
            if query.trim().is_empty() || query.len() > QUERY_BYTES_MAX {
                return Err(ProtoError::new(
                    ErrorCode::BadRequest,
                    format!("`query` must be 1..={QUERY_BYTES_MAX} bytes, not blank"),
                ));
            }
            Request::Search {
                room: room()?,
                query,
                limit: limit_field(wire.limit, SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX)?,
            }
        }
        "update_room" => Request::UpdateRoom {
            room: room()?,
            title: bounded("title", wire.title, TITLE_BYTES_MAX)?,
            private: wire.private,
            password: wire.password.map(Cow::into_owned),
        },
        "rooms" => Request::Rooms {
            query: wire
                .query
                .map(Cow::into_owned)
                .filter(|q| !q.trim().is_empty()),
            joined: wire.joined.unwrap_or(false),
            limit: limit_field(wire.limit, ROOMS_LIMIT_DEFAULT, ROOMS_LIMIT_MAX)?,
            cursor: wire.cursor.map(Cow::into_owned),
        },
        "ping" => Request::Ping,
        other => {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                format!("unknown op `{}`", truncate(other, 32)),
            ))
        }
    })
}

fn bounded(
    field: &str,
    value: Option<Cow<'_, str>>,
    max: usize,
) -> Result<Option<String>, ProtoError> {
    match value {
        Some(v) if v.len() > max => Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("`{field}` must be at most {max} bytes"),
        )),
        v => Ok(v.map(Cow::into_owned)),
    }
}

fn limit_field(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ProtoError> {
    match limit.unwrap_or(default) {
        0 => Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("`limit` must be 1..={max}"),
        )),
        n if n > max => Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("`limit` must be 1..={max}"),
        )),
        n => Ok(n),
    }
}

fn room_field(op: &str, room: Option<&str>, limits: ParseLimits) -> Result<String, ProtoError> {
    let room = room.ok_or_else(|| missing(op, "room"))?;
    if room.is_empty() || room.len() > limits.room_id_bytes_max {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("`room` must be 1..={} bytes", limits.room_id_bytes_max),
        ));
    }
    if room.chars().any(char::is_control) {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "`room` must not contain control characters",
        ));
    }
    Ok(room.to_owned())
}

fn missing(op: &str, field: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::BadRequest,
        format!("`{op}` needs field `{field}`"),
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

// ---- Encoding -------------------------------------------------------------------------

#[derive(Serialize)]
struct Reply<'a, T: Serialize> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

/// `{"op":"ok","id":…, …body}`.
pub fn ok<T: Serialize>(id: Option<&RawValue>, body: T) -> Vec<u8> {
    to_vec(&Reply { op: "ok", id, body })
}

/// `{"op":"error","id":…,"code":…,"message":…}`.
pub fn error(id: Option<&RawValue>, err: &ProtoError) -> Vec<u8> {
    to_vec(&Reply {
        op: "error",
        id,
        body: ErrorBody {
            code: err.code.as_str(),
            message: &err.message,
        },
    })
}

/// A server-pushed event `{"op":name, …body}` (events carry no id).
pub fn event<T: Serialize>(op: &'static str, body: T) -> Vec<u8> {
    to_vec(&Reply { op, id: None, body })
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers into memory cannot fail.
    serde_json::to_vec(value).expect("protocol values serialise")
}

/// The body of a `msg` event, and of each entry of `history`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Msg {
    pub room: String,
    pub seq: u64,
    pub msg_id: String,
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `None` once deleted: history and replays then hold a tombstone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Serialize)]
pub struct Limits {
    pub body_bytes_max: u32,
    pub frame_bytes_max: u32,
    pub outbound_queue_bytes_max: u32,
    pub history_limit_max: u32,
    pub rooms_per_connection_max: u32,
}

#[derive(Serialize)]
pub struct Hello<'a> {
    pub user: &'a str,
    pub session: &'a str,
    pub instance: &'a str,
    pub shard: u16,
    pub heartbeat_ms: u64,
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ParseLimits = ParseLimits {
        body_bytes_max: 16,
        room_id_bytes_max: 8,
    };

    fn code_of(frame: &str) -> ErrorCode {
        parse(frame.as_bytes(), LIMITS).unwrap_err().1.code
    }

    #[test]
    fn parses_send_and_keeps_the_id() {
        let (id, req) =
            parse(br#"{"op":"send","id":"a7","room":"r","body":"hi"}"#, LIMITS).unwrap();
        assert_eq!(id.unwrap().get(), r#""a7""#);
        assert_eq!(
            req,
            Request::Send {
                room: "r".into(),
                body: "hi".into(),
                client_msg_id: None
            }
        );
    }

    #[test]
    fn errors_map_to_codes() {
        assert_eq!(code_of("not json"), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"op":"fly"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"op":"send","room":"r"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"send","room":5,"body":"x"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"send","room":"r","body":"01234567890123456"}"#),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code_of(r#"{"op":"join","room":"123456789"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"history","room":"r","limit":101}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn error_keeps_the_id_for_matching() {
        let (id, err) = parse(br#"{"op":"send","id":3,"room":"r"}"#, LIMITS).unwrap_err();
        assert_eq!(id.unwrap().get(), "3");
        let out = String::from_utf8(error(None, &err)).unwrap();
        assert!(out.contains(r#""code":"bad_request""#), "{out}");
    }

    #[test]
    fn every_code_is_read_back_by_its_name() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::named(code.as_str()), code);
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "two codes share a name");
        assert_eq!(ErrorCode::named("no_such_code"), ErrorCode::Internal);
    }

    #[test]
    fn reply_echoes_the_raw_id() {
        let id = RawValue::from_string("\"x\"".into()).unwrap();
        let out = ok(Some(&id), serde_json::json!({"seq": 4}));
        assert_eq!(out, br#"{"op":"ok","id":"x","seq":4}"#);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes, LIMITS);
        }

        #[test]
        fn escaped_strings_roundtrip(body in "\\PC{0,8}") {
            let frame = serde_json::json!({"op":"send","room":"r","body":body}).to_string();
            let (_, req) = parse(frame.as_bytes(), ParseLimits { body_bytes_max: 64, room_id_bytes_max: 8 }).unwrap();
            prop_assert_eq!(req, Request::Send { room: "r".into(), body, client_msg_id: None });
        }
    }
}
