//! The HTTP API beside the WebSocket: publishing from a trusted back end, history, and the
//! optional accounts. Parsing here is pure; `shard.rs` executes a call like a WebSocket
//! request and turns the reply into an HTTP response.

#![forbid(unsafe_code)]

use bytes::Bytes;
use serde::Deserialize;

use crate::wire::auth::{self, Identity, USER_ID_BYTES_MAX};
use crate::wire::protocol::{self, ErrorCode, ProtoError, HISTORY_LIMIT};

/// A protocol error with its HTTP status: what a failed API call answers. The status is
/// always [`status_of`] the code, so the two cannot disagree.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub error: ProtoError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::from(ProtoError::new(code, message))
    }
}

impl From<ProtoError> for ApiError {
    fn from(error: ProtoError) -> ApiError {
        ApiError {
            status: status_of(error.code),
            error,
        }
    }
}

#[derive(Debug)]
pub enum ApiCall {
    /// `POST /api/rooms/{room}/messages` (API key checked).
    Publish {
        room: String,
        from: String,
        body: String,
        client_msg_id: Option<String>,
    },
    /// `GET /api/rooms/{room}/messages` (token checked).
    History {
        room: String,
        identity: Identity,
        before_seq: Option<u64>,
        limit: u32,
    },
    Register {
        user: String,
        password: String,
        name: Option<String>,
    },
    Login {
        user: String,
        password: String,
    },
    Password {
        user: String,
        old_password: String,
        new_password: String,
    },
}

impl ApiCall {
    /// The HTTP status of a successful reply.
    pub fn ok_status(&self) -> u16 {
        match self {
            ApiCall::Publish { .. } | ApiCall::Register { .. } => 201,
            _ => 200,
        }
    }
}

/// The HTTP status for a protocol error code.
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest => 400,
        ErrorCode::Unauthorized => 401,
        ErrorCode::Forbidden | ErrorCode::NotMember => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::RoomExists | ErrorCode::UserExists => 409,
        ErrorCode::TooLarge => 413,
        ErrorCode::RateLimited => 429,
        ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
    }
}

pub fn json_response(status: u16, body: &[u8]) -> Bytes {
    crate::wire::response::json(status, body)
}

pub fn error_response(err: &ApiError) -> Bytes {
    json_response(err.status, &protocol::error(None, &err.error))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
struct PublishBody {
    body: String,
    from: Option<String>,
    client_msg_id: Option<String>,
}

pub fn publish(room: String, body: &[u8], body_bytes_max: usize) -> Result<ApiCall, ApiError> {
    let p: PublishBody = json(body)?;
    if p.body.len() > body_bytes_max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("body_bytes_max is {body_bytes_max}"),
        ));
    }
    if p.client_msg_id
        .as_ref()
        .is_some_and(|k| k.len() > protocol::CLIENT_MSG_ID_BYTES_MAX)
    {
        return Err(bad(format!(
            "`client_msg_id` must be at most {} bytes",
            protocol::CLIENT_MSG_ID_BYTES_MAX
        )));
    }
    let from = p.from.unwrap_or_else(|| "api".to_owned());
    if !auth::is_valid_user_id(&from) {
        return Err(bad(format!(
            "`from` must be 1..={USER_ID_BYTES_MAX} bytes without control characters"
        )));
    }
    Ok(ApiCall::Publish {
        room,
        from,
        body: p.body,
        client_msg_id: p.client_msg_id,
    })
}

pub fn history(room: String, identity: Identity, query: &str) -> Result<ApiCall, ApiError> {
    let mut before_seq = None;
    let mut limit = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "before_seq" => before_seq = Some(number("before_seq", &v)?),
            "limit" => limit = Some(number("limit", &v)?),
            _ => {}
        }
    }
    Ok(ApiCall::History {
        room,
        identity,
        before_seq,
        limit: HISTORY_LIMIT.check(limit)?,
    })
}

fn number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| bad(format!("`{field}` must be a number")))
}

#[derive(Deserialize)]
struct Credentials {
    user: String,
    password: Option<String>,
    name: Option<String>,
    old_password: Option<String>,
    new_password: Option<String>,
}

pub fn auth(action: &str, body: &[u8]) -> Result<ApiCall, ApiError> {
    let c: Credentials = json(body)?;
    let need =
        |v: Option<String>, field: &str| v.ok_or_else(|| bad(format!("missing field `{field}`")));
    Ok(match action {
        "register" => ApiCall::Register {
            user: c.user,
            password: need(c.password, "password")?,
            name: c.name,
        },
        "login" => ApiCall::Login {
            user: c.user,
            password: need(c.password, "password")?,
        },
        _ => ApiCall::Password {
            user: c.user,
            old_password: need(c.old_password, "old_password")?,
            new_password: need(c.new_password, "new_password")?,
        },
    })
}

/// The room named in `/api/rooms/{room}/messages`, percent-decoded.
pub fn room_of(path: &str) -> Option<String> {
    let encoded = path
        .strip_prefix("/api/rooms/")?
        .strip_suffix("/messages")?;
    let room = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    (!room.is_empty() && !room.contains('/')).then(|| room.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_bodies() {
        assert_eq!(
            room_of("/api/rooms/%EB%B0%A9/messages").as_deref(),
            Some("방")
        );
        assert_eq!(room_of("/api/rooms//messages"), None);
        assert!(
            matches!(publish("r".into(), br#"{"body":"hi"}"#, 10), Ok(ApiCall::Publish { from, .. }) if from == "api")
        );
        assert_eq!(
            publish("r".into(), br#"{"body":"too long body"}"#, 4)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(publish("r".into(), b"nope", 4).unwrap_err().status, 400);
        assert_eq!(auth("login", br#"{"user":"u"}"#).unwrap_err().status, 400);
    }

    fn history_error(query: &str) -> ApiError {
        let identity = Identity {
            user: "u".into(),
            name: None,
            exp: None,
        };
        history("r".into(), identity, query).unwrap_err()
    }

    #[test]
    fn history_takes_the_websocket_limit_rule() {
        let identity = Identity {
            user: "u".into(),
            name: None,
            exp: None,
        };
        assert!(matches!(
            history("r".into(), identity, "before_seq=9"),
            Ok(ApiCall::History { before_seq: Some(9), limit, .. }) if limit == HISTORY_LIMIT.default
        ));
        let e = history_error("limit=101");
        assert_eq!((e.status, e.error.code), (400, ErrorCode::BadRequest));
        assert_eq!(e.error.message, "`limit` must be 1..=100");
        assert_eq!(
            history_error("limit=0").error.message,
            "`limit` must be 1..=100"
        );
        assert_eq!(
            history_error("limit=x").error.message,
            "`limit` must be a number"
        );
        assert_eq!(
            history_error("before_seq=-1").error.message,
            "`before_seq` must be a number"
        );
    }

    #[test]
    fn publish_takes_the_user_id_rule_for_from() {
        for from in ["", r"a\u0007b"] {
            let body = format!(r#"{{"body":"hi","from":"{from}"}}"#);
            let e = publish("r".into(), body.as_bytes(), 10).unwrap_err();
            assert_eq!(e.status, 400, "{from:?}");
        }
        let long = format!(
            r#"{{"body":"hi","from":"{}"}}"#,
            "a".repeat(USER_ID_BYTES_MAX + 1)
        );
        assert_eq!(
            publish("r".into(), long.as_bytes(), 10).unwrap_err().status,
            400
        );
        let ok = format!(
            r#"{{"body":"hi","from":"{}"}}"#,
            "a".repeat(USER_ID_BYTES_MAX)
        );
        assert!(publish("r".into(), ok.as_bytes(), 10).is_ok());
    }

    #[test]
    fn every_status_agrees_with_its_code() {
        for &code in ErrorCode::ALL {
            let e = ApiError::new(code, "x");
            assert_eq!(e.status, status_of(code));
            assert!(e.status >= 400, "{code:?} maps to a success status");
        }
        assert_eq!(status_of(ErrorCode::UserExists), 409);
    }
}
