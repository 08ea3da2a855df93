//! The client protocol (docs/PROTOCOL.md): parsing requests, encoding replies and events.
//!
//! Parsing is separate from execution: a text frame becomes a typed [`Request`] here, or a
//! [`ProtoError`] carrying the protocol error code, and the shard executes it. Nothing a
//! client sends can panic this module.

#![forbid(unsafe_code)]

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
            #[cfg(test)]
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
    /// The code named `s` (`internal` for any other string): tests read codes back.
    #[cfg(test)]
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
    /// With `rate_limited`: how long to wait before asking again (`retry_after_ms`).
    pub retry_after_ms: Option<u64>,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// `rate_limited`, with `retry_after_ms` (rounded up, at least 1).
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        let ms = u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        ProtoError {
            code: ErrorCode::RateLimited,
            message: message.into(),
            retry_after_ms: Some(ms.max(1)),
        }
    }
}

/// Most messages a `history` request may ask for (PROTOCOL.md).
pub const HISTORY_LIMIT_MAX: u32 = 100;
/// `history` without `limit`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;

/// The rule of a `limit` field: 1..=`max`, `default` when the field is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRule {
    pub default: u32,
    pub max: u32,
}

/// `history`'s `limit`, on the WebSocket and over HTTP.
pub const HISTORY_LIMIT: LimitRule = LimitRule {
    default: HISTORY_LIMIT_DEFAULT,
    max: HISTORY_LIMIT_MAX,
};
/// `search`'s `limit`.
pub const SEARCH_LIMIT: LimitRule = LimitRule {
    default: 20,
    max: 100,
};
/// `rooms`'s `limit`.
pub const ROOMS_LIMIT: LimitRule = LimitRule {
    default: 50,
    max: 100,
};

impl LimitRule {
    /// The limit asked for (the default when absent), or `bad_request` outside 1..=max.
    pub fn check(self, limit: Option<u32>) -> Result<u32, ProtoError> {
        debug_assert!((1..=self.max).contains(&self.default));
        let limit = limit.unwrap_or(self.default);
        if (1..=self.max).contains(&limit) {
            Ok(limit)
        } else {
            Err(bad(format!("`limit` must be 1..={}", self.max)))
        }
    }
}

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
    /// A new token for the connection's user (docs/PROTOCOL.md "Token refresh").
    Refresh {
        token: String,
    },
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
            Request::Rooms { .. } | Request::Ping | Request::Refresh { .. } => None,
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
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
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
    let id = match wire.id.map(checked_id).transpose() {
        Ok(id) => id,
        Err(e) => return Err((None, e)),
    };
    match build(wire, limits) {
        Ok(req) => Ok((id, req)),
        Err(e) => Err((id, e)),
    }
}

/// The request id of a frame that is not parsed any further (a `rate_limited` one), when
/// it has a valid one.
pub fn request_id(frame: &[u8]) -> RequestId {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let wire: IdOnly<'_> = serde_json::from_slice(frame).ok()?;
    checked_id(wire.id?).ok()
}

/// An `id` is a string that is text (no lone surrogate: `"\ud800"` passes the raw scan
/// but no strict reader takes it back), or a number that a JSON reader can hold (a finite
/// double): one like `1e999` would be echoed as something the client's own parser rejects.
/// Found by the `protocol_request` fuzz target (docs/SECURITY.md "Found").
fn checked_id(raw: &RawValue) -> Result<Box<RawValue>, ProtoError> {
    let text = raw.get();
    let valid = match text.as_bytes().first() {
        Some(b'"') => {
            serde_json::from_str::<&str>(text).is_ok()
                || serde_json::from_str::<String>(text).is_ok()
        }
        Some(b'-' | b'0'..=b'9') => text.parse::<f64>().is_ok_and(f64::is_finite),
        _ => false,
    };
    if !valid {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "`id` must be a string of text or a number within the range of a double",
        ));
    }
    Ok(raw.to_owned())
}

/// Dispatches on `op`: one parse function per op, mini-redis `cmd/` style.
fn build(mut wire: Wire<'_>, limits: ParseLimits) -> Result<Request, ProtoError> {
    let op = wire.op.take().ok_or_else(|| bad("missing field `op`"))?;
    let f = Fields {
        op: &op,
        wire,
        limits,
    };
    match &*op {
        "join" => join(f),
        "create" => create(f),
        "leave" => leave(f),
        "send" => send(f),
        "history" => history(f),
        "read" => read(f),
        "delete" => delete(f),
        "typing" => typing(f),
        "presence" => presence(f),
        "search" => search(f),
        "update_room" => update_room(f),
        "rooms" => rooms(f),
        "ping" => Ok(Request::Ping),
        "refresh" => refresh(f),
        other => Err(bad(format!("unknown op `{}`", truncate(other, 32)))),
    }
}

/// One request's fields, with its op (named in error messages) and the parse limits.
struct Fields<'o, 'a> {
    op: &'o str,
    wire: Wire<'a>,
    limits: ParseLimits,
}

impl Fields<'_, '_> {
    /// `room`: required, 1..=`room_id_bytes_max` bytes, no control characters.
    fn room(&self) -> Result<String, ProtoError> {
        let room = self
            .wire
            .room
            .as_deref()
            .ok_or_else(|| missing(self.op, "room"))?;
        let max = self.limits.room_id_bytes_max;
        if room.is_empty() || room.len() > max {
            return Err(bad(format!("`room` must be 1..={max} bytes")));
        }
        if room.chars().any(char::is_control) {
            return Err(bad("`room` must not contain control characters"));
        }
        Ok(room.to_owned())
    }

    /// `seq`: required.
    fn seq(&self) -> Result<u64, ProtoError> {
        self.wire.seq.ok_or_else(|| missing(self.op, "seq"))
    }
}

fn refresh(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    let token = f.wire.token.ok_or_else(|| missing(f.op, "token"))?;
    Ok(Request::Refresh {
        token: token.into_owned(),
    })
}

fn join(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Join {
        room: f.room()?,
        password: f.wire.password.map(Cow::into_owned),
        after_seq: f.wire.after_seq,
    })
}

fn create(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Create {
        room: f.room()?,
        title: bounded("title", f.wire.title, TITLE_BYTES_MAX)?,
        private: f.wire.private.unwrap_or(false),
        password: f.wire.password.map(Cow::into_owned),
    })
}

fn leave(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Leave { room: f.room()? })
}

fn send(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    let room = f.room()?;
    let body = f.wire.body.ok_or_else(|| missing(f.op, "body"))?;
    let max = f.limits.body_bytes_max;
    if body.len() > max {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("body is {} bytes; body_bytes_max is {max}", body.len()),
        ));
    }
    Ok(Request::Send {
        room,
        body: body.into_owned(),
        client_msg_id: bounded(
            "client_msg_id",
            f.wire.client_msg_id,
            CLIENT_MSG_ID_BYTES_MAX,
        )?,
    })
}

fn history(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    let limit = HISTORY_LIMIT.check(f.wire.limit)?;
    Ok(Request::History {
        room: f.room()?,
        before_seq: f.wire.before_seq,
        limit,
    })
}

fn read(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Read {
        room: f.room()?,
        seq: f.seq()?,
    })
}

fn delete(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Delete {
        room: f.room()?,
        seq: f.seq()?,
    })
}

fn typing(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Typing { room: f.room()? })
}

fn presence(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Presence { room: f.room()? })
}

fn search(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    let query = f
        .wire
        .query
        .as_deref()
        .ok_or_else(|| missing(f.op, "query"))?;
    if query.trim().is_empty() || query.len() > QUERY_BYTES_MAX {
        return Err(bad(format!(
            "`query` must be 1..={QUERY_BYTES_MAX} bytes, not blank"
        )));
    }
    Ok(Request::Search {
        query: query.to_owned(),
        room: f.room()?,
        limit: SEARCH_LIMIT.check(f.wire.limit)?,
    })
}

fn update_room(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::UpdateRoom {
        room: f.room()?,
        title: bounded("title", f.wire.title, TITLE_BYTES_MAX)?,
        private: f.wire.private,
        password: f.wire.password.map(Cow::into_owned),
    })
}

fn rooms(f: Fields<'_, '_>) -> Result<Request, ProtoError> {
    Ok(Request::Rooms {
        query: f
            .wire
            .query
            .map(Cow::into_owned)
            .filter(|q| !q.trim().is_empty()),
        joined: f.wire.joined.unwrap_or(false),
        limit: ROOMS_LIMIT.check(f.wire.limit)?,
        cursor: f.wire.cursor.map(Cow::into_owned),
    })
}

/// An optional text field of at most `max` bytes.
fn bounded(
    field: &str,
    value: Option<Cow<'_, str>>,
    max: usize,
) -> Result<Option<String>, ProtoError> {
    match value {
        Some(v) if v.len() > max => Err(bad(format!("`{field}` must be at most {max} bytes"))),
        v => Ok(v.map(Cow::into_owned)),
    }
}

fn bad(message: impl Into<String>) -> ProtoError {
    ProtoError::new(ErrorCode::BadRequest, message)
}

fn missing(op: &str, field: &str) -> ProtoError {
    bad(format!("`{op}` needs field `{field}`"))
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
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
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
            retry_after_ms: err.retry_after_ms,
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
    /// `--messages-per-connection-per-s` / `-burst`: requests per second (0: no limit)
    /// and at once, before `rate_limited`.
    pub requests_per_s: u32,
    pub requests_burst: u32,
    /// `--rate-limited-replies-max`: `rate_limited` replies in a row before close 1008.
    pub rate_limited_replies_max: u32,
    /// `--pings-per-connection-per-s`: WebSocket pings per second (0: no limit).
    pub pings_per_s: u32,
}

#[derive(Serialize)]
pub struct Hello<'a> {
    pub user: &'a str,
    pub session: &'a str,
    pub instance: &'a str,
    pub shard: u16,
    pub heartbeat_ms: u64,
    /// The token's `exp`: refresh before it (absent in development mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
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

    fn error_of(frame: &str) -> ProtoError {
        parse(frame.as_bytes(), LIMITS).unwrap_err().1
    }

    fn request_of(frame: &str) -> Request {
        parse(frame.as_bytes(), LIMITS).unwrap().1
    }

    #[test]
    fn every_op_but_rooms_and_ping_needs_a_valid_room() {
        let ops = [
            "join",
            "create",
            "leave",
            "send",
            "history",
            "read",
            "delete",
            "typing",
            "presence",
            "search",
            "update_room",
        ];
        for op in ops {
            // Give each op every other field it needs, so the room is what fails.
            let rest = r#""body":"b","seq":1,"query":"q""#;
            let e = error_of(&format!(r#"{{"op":"{op}",{rest}}}"#));
            assert_eq!(e.code, ErrorCode::BadRequest, "{op}");
            assert_eq!(e.message, format!("`{op}` needs field `room`"));
            let e = error_of(&format!(r#"{{"op":"{op}","room":"",{rest}}}"#));
            assert_eq!(e.message, "`room` must be 1..=8 bytes", "{op}");
            let e = error_of(&format!(r#"{{"op":"{op}","room":"a\u0007b",{rest}}}"#));
            assert!(
                e.message.contains("control characters"),
                "{op}: {}",
                e.message
            );
        }
        assert_eq!(request_of(r#"{"op":"ping"}"#), Request::Ping);
    }

    #[test]
    fn send_checks_body_and_client_msg_id() {
        assert_eq!(
            error_of(r#"{"op":"send","room":"r"}"#).message,
            "`send` needs field `body`"
        );
        let e = error_of(r#"{"op":"send","room":"r","body":"01234567890123456"}"#);
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert_eq!(e.message, "body is 17 bytes; body_bytes_max is 16");
        let key = "k".repeat(CLIENT_MSG_ID_BYTES_MAX + 1);
        let e = error_of(&format!(
            r#"{{"op":"send","room":"r","body":"b","client_msg_id":"{key}"}}"#
        ));
        assert_eq!(e.message, "`client_msg_id` must be at most 128 bytes");
        assert_eq!(
            request_of(r#"{"op":"send","room":"r","body":"","client_msg_id":"k1"}"#),
            Request::Send {
                room: "r".into(),
                body: String::new(),
                client_msg_id: Some("k1".into())
            }
        );
    }

    #[test]
    fn read_and_delete_need_a_numeric_seq() {
        for op in ["read", "delete"] {
            let e = error_of(&format!(r#"{{"op":"{op}","room":"r"}}"#));
            assert_eq!(e.message, format!("`{op}` needs field `seq`"));
            let e = error_of(&format!(r#"{{"op":"{op}","room":"r","seq":"7"}}"#));
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
        }
        assert_eq!(
            request_of(r#"{"op":"delete","room":"r","seq":7}"#),
            Request::Delete {
                room: "r".into(),
                seq: 7
            }
        );
    }

    #[test]
    fn limits_are_one_rule_with_a_default() {
        for (op, rule) in [
            ("history", HISTORY_LIMIT),
            ("search", SEARCH_LIMIT),
            ("rooms", ROOMS_LIMIT),
        ] {
            let frame = |limit: &str| format!(r#"{{"op":"{op}","room":"r","query":"q"{limit}}}"#);
            let expected = format!("`limit` must be 1..={}", rule.max);
            assert_eq!(error_of(&frame(r#","limit":0"#)).message, expected, "{op}");
            let over = format!(r#","limit":{}"#, rule.max + 1);
            assert_eq!(error_of(&frame(&over)).message, expected, "{op}");
            let limit = match request_of(&frame("")) {
                Request::History { limit, .. }
                | Request::Search { limit, .. }
                | Request::Rooms { limit, .. } => limit,
                other => panic!("{other:?}"),
            };
            assert_eq!(limit, rule.default, "{op}");
        }
        assert_eq!(HISTORY_LIMIT.check(Some(HISTORY_LIMIT_MAX)), Ok(100));
    }

    #[test]
    fn search_needs_a_query_that_is_not_blank() {
        assert_eq!(
            error_of(r#"{"op":"search","room":"r"}"#).message,
            "`search` needs field `query`"
        );
        let blank = error_of(r#"{"op":"search","room":"r","query":"  "}"#);
        assert_eq!(blank.message, "`query` must be 1..=256 bytes, not blank");
        let long = "q".repeat(QUERY_BYTES_MAX + 1);
        let e = error_of(&format!(r#"{{"op":"search","room":"r","query":"{long}"}}"#));
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn titles_are_bounded_and_rooms_drops_a_blank_query() {
        let title = "t".repeat(TITLE_BYTES_MAX + 1);
        for op in ["create", "update_room"] {
            let e = error_of(&format!(r#"{{"op":"{op}","room":"r","title":"{title}"}}"#));
            assert_eq!(e.message, "`title` must be at most 256 bytes", "{op}");
        }
        assert_eq!(
            request_of(r#"{"op":"create","room":"r","private":true,"password":"p"}"#),
            Request::Create {
                room: "r".into(),
                title: None,
                private: true,
                password: Some("p".into())
            }
        );
        assert_eq!(
            request_of(r#"{"op":"rooms","query":" ","joined":true,"cursor":"c"}"#),
            Request::Rooms {
                query: None,
                joined: true,
                limit: ROOMS_LIMIT.default,
                cursor: Some("c".into())
            }
        );
    }

    #[test]
    fn a_missing_or_unknown_op_is_named() {
        assert_eq!(error_of(r#"{"room":"r"}"#).message, "missing field `op`");
        let long = "x".repeat(100);
        let e = error_of(&format!(r#"{{"op":"{long}"}}"#));
        assert_eq!(e.message, format!("unknown op `{}`", "x".repeat(32)));
        let (id, e) = parse(br#"{"op":"ping","id":[1]}"#, LIMITS).unwrap_err();
        assert!(id.is_none());
        let bad_id = "`id` must be a string of text or a number within the range of a double";
        assert_eq!(e.message, bad_id);
        let (id, e) = parse(br#"{"op":"ping","id":1e999}"#, LIMITS).unwrap_err();
        assert!(id.is_none(), "not echoed");
        assert_eq!(e.message, bad_id);
        let (id, _) = parse(br#"{"op":"ping","id":-1.5e300}"#, LIMITS).unwrap();
        assert_eq!(id.unwrap().get(), "-1.5e300");
        assert_eq!(
            request_id(br#"{"op":"send","id":"a"}"#).unwrap().get(),
            r#""a""#
        );
        assert!(request_id(br#"{"id":1e999}"#).is_none());
        // A lone surrogate is not text: echoed, no strict JSON reader reads the reply.
        let (id, e) = parse(br#"{"op":"ping","id":"a\ud800b"}"#, LIMITS).unwrap_err();
        assert!(id.is_none(), "not echoed");
        assert_eq!(e.message, bad_id);
        let (id, _) = parse(br#"{"op":"ping","id":"\ud83d\ude00 \\ \n"}"#, LIMITS).unwrap();
        assert_eq!(
            id.unwrap().get(),
            r#""\ud83d\ude00 \\ \n""#,
            "a surrogate pair is text"
        );
        assert!(request_id(b"not json").is_none());
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
