//! HTTP on the WebSocket port: the request head of a new socket decides whether it is
//! upgraded (`/ws`, after authentication) or answered and closed (`/healthz`, `/readyz`,
//! `/metrics`, `/`). Pure: the connection hands in bytes and gets back what to do.

#![forbid(unsafe_code)]

use bytes::Bytes;

use crate::wire::api::{ApiCall, ApiError};
use crate::wire::auth::{Auth, AuthError, Identity};
use crate::wire::protocol::ErrorCode;
use crate::wire::response;

/// Request headers parsed at most; more is 431.
const HEADERS_MAX: usize = 48;

/// The chat page served at `/` (embedded; no build step).
pub const CHAT_PAGE: &str = include_str!("../../static/index.html");

pub enum Outcome {
    /// The head is not complete yet.
    Incomplete,
    /// Send `response`, then close. `status` is the one on its status line, so a caller
    /// can count refusals (503) without reading the bytes.
    Respond { status: u16, response: Bytes },
    /// An API call to execute; its reply becomes the HTTP response.
    Api(ApiCall),
    /// Switch to WebSocket: send the 101 response, then `hello`. The head's first
    /// `request_bytes` are the request; bytes after them are the client's first frames,
    /// sent right behind the handshake.
    Upgrade {
        identity: Identity,
        response: Bytes,
        request_bytes: usize,
    },
    /// Test only (`--fault-injection`): answer 202, then inject the fault.
    Fault(Fault),
    /// `GET /debug/pprof/profile` (API key checked): sample the process, answer the report.
    Profile(ProfileRequest),
    /// Test only (cargo feature `autobahn`): `/autobahn` upgraded, after the checks and the
    /// authentication of `/ws`; the connection echoes every message (shard/echo.rs).
    #[cfg(feature = "autobahn")]
    Echo { response: Bytes },
}

/// A fault `POST /debug/fault/…` injects (test only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `/debug/fault/panic-shard?shard=N`: shard N panics.
    PanicShard(u16),
    /// `/debug/fault/stall-shard?shard=N&ms=M`: shard N blocks its thread for M ms.
    StallShard(u16, u64),
    /// `/debug/fault/panic-log`: the write-ahead log thread panics.
    PanicLog,
}

/// `GET /debug/pprof/profile?seconds=N&format=F&hz=H` (docs/PROFILING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileRequest {
    /// The sampling window, in 1..=[`PROFILE_SECONDS_MAX`] (default 30, as Go's).
    pub seconds: u64,
    /// Samples per second of CPU time, in 1..=[`PROFILE_HZ_MAX`] (default 999, as the perf
    /// command of docs/PROFILING.md).
    pub hz: u32,
    pub format: ProfileFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFormat {
    /// An interactive flamegraph (the default).
    Svg,
    /// pprof's protobuf, gzip'd (`go tool pprof` reads it).
    Pb,
    /// Folded stacks, one `thread;frame;…;leaf count` per line (inferno's and FlameGraph's
    /// input; `sokdo-bench layers` reads it).
    Folded,
}

/// The longest profile one request may ask for.
pub const PROFILE_SECONDS_MAX: u64 = 60;
/// The highest sampling rate one request may ask for (the kernel's timer granularity makes
/// more meaningless, and each sample costs the sampled thread a signal).
pub const PROFILE_HZ_MAX: u32 = 1000;

/// What the router needs to know about the server's state.
pub struct Context<'a> {
    pub auth: &'a Auth,
    pub draining: bool,
    /// Every admission place of the instance is taken: `/readyz` answers 503.
    pub at_capacity: bool,
    /// `Some(why)` while the message log cannot be written: `/readyz` answers 503 with it
    /// (`/healthz` stays 200: reads, joins and reconnects are still served).
    pub log_failure: Option<String>,
    /// `Some(why)` while this instance is in a cluster without quorum: `/readyz` answers
    /// 503 with it.
    pub no_quorum: Option<String>,
    /// `/cluster`'s JSON.
    pub cluster: &'a dyn Fn() -> String,
    /// The instance's admission queue is full too: upgrades get 503.
    pub queue_full: bool,
    pub metrics: &'a dyn Fn() -> String,
    /// `Err(why)` when some part of the process cannot serve: `/healthz` answers 503.
    pub health: &'a dyn Fn() -> Result<(), String>,
    /// `--fault-injection`: serve `POST /debug/fault/…`.
    pub faults: bool,
    /// `--api-key`: `None` disables `POST /api/rooms/{room}/messages`.
    pub api_key: Option<&'a str>,
    /// `--accounts`: enables `/api/auth/*`.
    pub accounts: bool,
    /// `--debug-endpoints`: serve `/debug/pprof/*` (behind `api_key`).
    pub debug_endpoints: bool,
    pub body_bytes_max: usize,
    /// `http_request_bytes_max`: a request (head and body) must fit in it.
    pub request_bytes_max: usize,
}

pub fn route(head: &[u8], ctx: &Context<'_>) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => Outcome::Incomplete,
        Ok(httparse::Status::Complete(head_len)) => {
            let content_length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
            let body_len = match content_length {
                None => 0,
                Some(Some(n)) => n,
                Some(None) => return Outcome::plain(400, "malformed Content-Length\n"),
            };
            // A body that cannot fit is refused at once, not waited for until the handshake
            // times out. 413: the head is fine, its body is too large (431 is for the head).
            let request_bytes = head_len.saturating_add(body_len);
            if request_bytes > ctx.request_bytes_max {
                return Outcome::plain(
                    413,
                    &format!("Content-Length {body_len} exceeds what http_request_bytes_max ({}) leaves for a body\n", ctx.request_bytes_max),
                );
            }
            if head.len() < request_bytes {
                return Outcome::Incomplete;
            }
            match Outcome::from_request(&req, &head[head_len..request_bytes], ctx) {
                Outcome::Upgrade {
                    identity, response, ..
                } => Outcome::Upgrade {
                    identity,
                    response,
                    request_bytes,
                },
                other => other,
            }
        }
        Err(httparse::Error::TooManyHeaders) => Outcome::plain(431, "too many headers\n"),
        Err(e) => Outcome::plain(400, &format!("malformed HTTP request: {e}\n")),
    }
}

impl Outcome {
    /// A `text/plain` answer: `body` is one line saying why.
    pub fn plain(status: u16, body: &str) -> Outcome {
        Outcome::Respond {
            status,
            response: response::plain(status, body),
        }
    }

    fn respond(status: u16, content_type: &str, body: &[u8], extra_headers: &str) -> Outcome {
        Outcome::Respond {
            status,
            response: response::response(status, content_type, body, extra_headers),
        }
    }

    fn from_request(req: &httparse::Request<'_, '_>, body: &[u8], ctx: &Context<'_>) -> Outcome {
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path.starts_with("/api/") {
            return match api_call(req, path, query, body, ctx) {
                Ok(call) => Outcome::Api(call),
                Err(e) => Outcome::Respond {
                    status: e.status,
                    response: crate::wire::api::error_response(&e),
                },
            };
        }
        if let Some(kind) = path.strip_prefix("/debug/fault/").filter(|_| ctx.faults) {
            return match (req.method, fault(kind, query)) {
                (Some("POST"), Ok(f)) => Outcome::Fault(f),
                (Some("POST"), Err(why)) => Outcome::plain(400, &why),
                _ => Outcome::plain(405, "POST only\n"),
            };
        }
        if let Some(what) = path.strip_prefix("/debug/pprof/") {
            return pprof(req, what, query, ctx);
        }
        if req.method != Some("GET") {
            return Outcome::plain(405, "only GET is served here\n");
        }
        match path {
            "/healthz" => match (ctx.health)() {
                Ok(()) => Outcome::plain(200, "ok\n"),
                Err(why) => Outcome::plain(503, &format!("{why}\n")),
            },
            "/readyz" if ctx.draining => Outcome::plain(503, "draining\n"),
            "/readyz" if ctx.log_failure.is_some() => {
                let why = ctx.log_failure.as_deref().unwrap_or_default();
                Outcome::plain(503, &format!("{why}\n"))
            }
            "/readyz" if ctx.no_quorum.is_some() => {
                let why = ctx.no_quorum.as_deref().unwrap_or_default();
                Outcome::plain(503, &format!("{why}\n"))
            }
            "/readyz" if ctx.at_capacity => Outcome::plain(503, "full\n"),
            "/readyz" => Outcome::plain(200, "ready\n"),
            "/metrics" => Outcome::respond(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                (ctx.metrics)().as_bytes(),
                "",
            ),
            "/cluster" => Outcome::respond(200, "application/json", (ctx.cluster)().as_bytes(), ""),
            "/" => Outcome::respond(200, "text/html; charset=utf-8", CHAT_PAGE.as_bytes(), ""),
            "/ws" => upgrade(req, query, ctx),
            #[cfg(feature = "autobahn")]
            "/autobahn" => match upgrade(req, query, ctx) {
                Outcome::Upgrade { response, .. } => Outcome::Echo { response },
                refused => refused,
            },
            _ => Outcome::plain(404, "no such path\n"),
        }
    }
}

/// Parses `/debug/fault/KIND?…`.
fn fault(kind: &str, query: &str) -> Result<Fault, String> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("missing ?{name}=\n"))
            .and_then(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("?{name}= is not a number\n"))
            })
    };
    let shard =
        || param("shard").and_then(|n| u16::try_from(n).map_err(|_| "?shard= too large\n".into()));
    match kind {
        "panic-shard" => Ok(Fault::PanicShard(shard()?)),
        "stall-shard" => Ok(Fault::StallShard(shard()?, param("ms")?)),
        "panic-log" => Ok(Fault::PanicLog),
        _ => Err("faults: panic-shard?shard=N, stall-shard?shard=N&ms=M, panic-log\n".into()),
    }
}

/// `/debug/pprof/WHAT`: on when `--debug-endpoints` and `--api-key` are, the key checked
/// before anything else is read.
fn pprof(req: &httparse::Request<'_, '_>, what: &str, query: &str, ctx: &Context<'_>) -> Outcome {
    if !ctx.debug_endpoints {
        return Outcome::plain(
            404,
            "the debug endpoints are off (--debug-endpoints false)\n",
        );
    }
    let Some(expected) = ctx.api_key else {
        return Outcome::plain(
            403,
            "the debug endpoints need an API key (start the server with --api-key)\n",
        );
    };
    if header(req, "x-api-key") != Some(expected) {
        return Outcome::plain(401, "missing or wrong X-Api-Key\n");
    }
    if what != "profile" {
        return Outcome::plain(404, "/debug/pprof/ serves `profile` only\n");
    }
    if req.method != Some("GET") {
        return Outcome::plain(405, "GET only\n");
    }
    match profile_request(query) {
        Ok(p) => Outcome::Profile(p),
        Err(why) => Outcome::plain(400, &format!("{why}\n")),
    }
}

/// Parses the query of `/debug/pprof/profile`.
pub fn profile_request(query: &str) -> Result<ProfileRequest, String> {
    let mut p = ProfileRequest {
        seconds: 30,
        hz: 999,
        format: ProfileFormat::Svg,
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "seconds" => {
                p.seconds = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=PROFILE_SECONDS_MAX).contains(s))
                    .ok_or_else(|| {
                        format!("?seconds={v}: must be a whole number in 1..={PROFILE_SECONDS_MAX}")
                    })?;
            }
            "hz" => {
                p.hz = v
                    .parse()
                    .ok()
                    .filter(|h| (1..=PROFILE_HZ_MAX).contains(h))
                    .ok_or_else(|| {
                        format!(
                            "?hz={v}: samples per second, a whole number in 1..={PROFILE_HZ_MAX}"
                        )
                    })?;
            }
            "format" => {
                p.format = match &*v {
                    "svg" => ProfileFormat::Svg,
                    "pb" => ProfileFormat::Pb,
                    "folded" => ProfileFormat::Folded,
                    _ => return Err(format!("?format={v}: svg, pb or folded")),
                };
            }
            _ => return Err(format!("?{k}=: unknown parameter (seconds, format, hz)")),
        }
    }
    Ok(p)
}

fn header<'h>(req: &httparse::Request<'_, 'h>, name: &str) -> Option<&'h str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Who the request is, by the WebSocket's rules: a JWT from `Authorization: Bearer` or
/// `?token=`, or `?user=` in development mode.
fn identify(
    req: &httparse::Request<'_, '_>,
    query: &str,
    auth: &Auth,
) -> Result<Identity, AuthError> {
    let mut token = None;
    let mut user = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "token" => token = Some(v.into_owned()),
            "user" => user = Some(v.into_owned()),
            _ => {}
        }
    }
    let bearer = header(req, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    auth.authenticate(bearer, token.as_deref(), user.as_deref())
}

fn api_call(
    req: &httparse::Request<'_, '_>,
    path: &str,
    query: &str,
    body: &[u8],
    ctx: &Context<'_>,
) -> Result<ApiCall, ApiError> {
    let method = req.method.unwrap_or("");
    if let Some(action) = path.strip_prefix("/api/auth/") {
        if !matches!(action, "register" | "login" | "password") {
            return Err(ApiError::new(ErrorCode::NotFound, "no such path"));
        }
        if !ctx.accounts {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "accounts are disabled (start the server with --accounts)",
            ));
        }
        if method != "POST" {
            return Err(ApiError::new(ErrorCode::BadRequest, "use POST"));
        }
        return crate::wire::api::auth(action, body);
    }
    let room = crate::wire::api::room_of(path)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such path"))?;
    match method {
        "POST" => {
            let Some(expected) = ctx.api_key else {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "the server API is disabled (start the server with --api-key)",
                ));
            };
            if header(req, "x-api-key") != Some(expected) {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "missing or wrong X-Api-Key",
                ));
            }
            crate::wire::api::publish(room, body, ctx.body_bytes_max)
        }
        "GET" => {
            let identity = identify(req, query, ctx.auth)
                .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
            crate::wire::api::history(room, identity, query)
        }
        _ => Err(ApiError::new(ErrorCode::BadRequest, "use GET or POST")),
    }
}

fn upgrade(req: &httparse::Request<'_, '_>, query: &str, ctx: &Context<'_>) -> Outcome {
    let header = |name: &str| header(req, name);
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Outcome::plain(400, "expected a WebSocket upgrade (Upgrade: websocket)\n");
    }
    if header("sec-websocket-version") != Some("13") {
        return Outcome::respond(
            426,
            "text/plain; charset=utf-8",
            b"only WebSocket version 13 is supported\n",
            "Sec-WebSocket-Version: 13\r\n",
        );
    }
    let Some(key) = header("sec-websocket-key") else {
        return Outcome::plain(400, "missing Sec-WebSocket-Key\n");
    };
    if ctx.draining || ctx.queue_full {
        let why = if ctx.draining {
            "draining: reconnect to another instance\n"
        } else {
            "at capacity: retry later\n"
        };
        return Outcome::respond(
            503,
            "text/plain; charset=utf-8",
            why.as_bytes(),
            "Retry-After: 1\r\n",
        );
    }
    match identify(req, query, ctx.auth) {
        Ok(identity) => {
            let accept = crate::wire::ws::accept_key(key.trim().as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            Outcome::Upgrade {
                identity,
                response: Bytes::from(response),
                // `route` sets it: only it knows where the request ends.
                request_bytes: 0,
            }
        }
        Err(e) => Outcome::plain(401, &format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response to `GET path` (a test's request that must be answered at once).
    fn get(path: &str, ctx: &Context<'_>) -> String {
        match route(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(), ctx) {
            Outcome::Respond { response, .. } => String::from_utf8_lossy(&response).into_owned(),
            _ => panic!("not a response"),
        }
    }

    fn ctx(auth: &Auth, draining: bool) -> Context<'_> {
        Context {
            auth,
            draining,
            at_capacity: false,
            log_failure: None,
            queue_full: false,
            no_quorum: None,
            cluster: &|| String::from("{}"),
            metrics: &|| String::from("m"),
            health: &|| Ok(()),
            faults: false,
            api_key: None,
            debug_endpoints: true,
            accounts: false,
            body_bytes_max: 100,
            request_bytes_max: 1000,
        }
    }

    fn status(out: Outcome) -> String {
        match out {
            Outcome::Respond { status, response } => {
                let line = String::from_utf8_lossy(&response[..12]).into_owned();
                assert_eq!(line, format!("HTTP/1.1 {status}"), "carried status differs");
                line
            }
            Outcome::Upgrade { response, .. } => {
                String::from_utf8_lossy(&response[..12]).into_owned()
            }
            Outcome::Incomplete => "incomplete".into(),
            Outcome::Api(_) => "api".into(),
            Outcome::Fault(_) => "fault".into(),
            Outcome::Profile(p) => format!("profile {p:?}"),
            #[cfg(feature = "autobahn")]
            Outcome::Echo { response } => String::from_utf8_lossy(&response[..12]).into_owned(),
        }
    }

    #[test]
    fn a_profile_request_defaults_to_go_s_30_seconds_as_an_svg() {
        assert_eq!(
            profile_request(""),
            Ok(ProfileRequest {
                seconds: 30,
                hz: 999,
                format: ProfileFormat::Svg
            })
        );
        assert_eq!(
            profile_request("seconds=60&format=pb&hz=1000"),
            Ok(ProfileRequest {
                seconds: 60,
                hz: 1000,
                format: ProfileFormat::Pb
            })
        );
        assert!(profile_request("seconds=-1")
            .unwrap_err()
            .contains("1..=60"));
        assert!(profile_request("debug=1").unwrap_err().contains("unknown"));
    }

    const UPGRADE: &str = "GET /ws?user=al%20ice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    /// The test-only echo endpoint exists only with the `autobahn` feature; without it
    /// `/autobahn` is an unknown path, and with it a refused upgrade is refused as on `/ws`.
    #[test]
    fn autobahn_is_routed_only_in_the_test_build() {
        let auth = Auth::new(None);
        let upgrade = UPGRADE.replace("/ws?", "/autobahn?");
        let routed = status(route(upgrade.as_bytes(), &ctx(&auth, false)));
        let expected = if cfg!(feature = "autobahn") {
            "HTTP/1.1 101"
        } else {
            "HTTP/1.1 404"
        };
        assert_eq!(routed, expected);
        let draining = status(route(upgrade.as_bytes(), &ctx(&auth, true)));
        let expected = if cfg!(feature = "autobahn") {
            "HTTP/1.1 503"
        } else {
            "HTTP/1.1 404"
        };
        assert_eq!(draining, expected);
    }

    /// Regression (found preparing the fuzz targets, issue 15): a Content-Length of
    /// usize::MAX wrapped `head_len + body_len` below `head_len`, and slicing the body
    /// panicked (a shard down per request). The sum saturates now, so it is 413 at once.
    #[test]
    fn a_content_length_at_usize_max_is_refused_not_a_panic() {
        let auth = Auth::new(None);
        let head = format!(
            "POST /api/auth/login HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            usize::MAX
        );
        assert_eq!(
            status(route(head.as_bytes(), &ctx(&auth, false))),
            "HTTP/1.1 413"
        );
    }

    #[test]
    fn routes() {
        let auth = Auth::new(None);
        assert_eq!(
            status(route(b"GET /healthz HTTP/1.1\r\n\r\n", &ctx(&auth, false))),
            "HTTP/1.1 200"
        );
        assert_eq!(
            status(route(b"GET /readyz HTTP/1.1\r\n\r\n", &ctx(&auth, true))),
            "HTTP/1.1 503"
        );
        assert_eq!(
            status(route(b"GET /nope HTTP/1.1\r\n\r\n", &ctx(&auth, false))),
            "HTTP/1.1 404"
        );
        assert_eq!(
            status(route(b"POST /ws HTTP/1.1\r\n\r\n", &ctx(&auth, false))),
            "HTTP/1.1 405"
        );
        assert_eq!(
            status(route(b"GET /ws HTTP/1.1\r\n\r\n", &ctx(&auth, false))),
            "HTTP/1.1 400"
        );
        assert_eq!(
            status(route(b"GET /healthz HTTP/1.1\r\n", &ctx(&auth, false))),
            "incomplete"
        );
        assert_eq!(
            status(route(b"GET /api/nope HTTP/1.1\r\n\r\n", &ctx(&auth, false))),
            "HTTP/1.1 404"
        );
        assert_eq!(
            status(route(
                b"POST /api/auth/login HTTP/1.1\r\n\r\n",
                &ctx(&auth, false)
            )),
            "HTTP/1.1 404"
        );
    }

    #[test]
    fn healthz_reports_a_stalled_shard() {
        let auth = Auth::new(None);
        let ctx = Context {
            health: &|| Err("shard 1 has not run for 12000 ms".into()),
            ..ctx(&auth, false)
        };
        let Outcome::Respond { response: r, .. } = route(b"GET /healthz HTTP/1.1\r\n\r\n", &ctx)
        else {
            panic!("not a response")
        };
        let text = String::from_utf8_lossy(&r);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.ends_with("shard 1 has not run for 12000 ms\n"),
            "{text}"
        );
    }

    #[test]
    fn readyz_reports_a_log_that_cannot_be_written_and_healthz_does_not() {
        let auth = Auth::new(None);
        let why = "the message log cannot be written (No space left on device)";
        let ctx = Context {
            log_failure: Some(why.to_string()),
            ..ctx(&auth, false)
        };
        let answer = |path: &str| get(path, &ctx);
        let ready = answer("/readyz");
        assert!(
            ready.starts_with("HTTP/1.1 503") && ready.ends_with(&format!("{why}\n")),
            "{ready}"
        );
        assert!(answer("/healthz").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn readyz_reports_no_quorum_and_cluster_answers_its_json() {
        let auth = Auth::new(None);
        let why = "no quorum: this instance sees 1 of 3 configured cluster members (needs 2)";
        let ctx = Context {
            no_quorum: Some(why.to_string()),
            cluster: &|| String::from(r#"{"quorum":false}"#),
            ..ctx(&auth, false)
        };
        let answer = |path: &str| get(path, &ctx);
        let ready = answer("/readyz");
        assert!(
            ready.starts_with("HTTP/1.1 503") && ready.ends_with(&format!("{why}\n")),
            "{ready}"
        );
        let cluster = answer("/cluster");
        assert!(cluster.starts_with("HTTP/1.1 200"), "{cluster}");
        assert!(cluster.contains("application/json"), "{cluster}");
        assert!(cluster.ends_with(r#"{"quorum":false}"#), "{cluster}");
        assert!(answer("/healthz").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn fault_routes_exist_only_with_fault_injection() {
        let auth = Auth::new(None);
        let off = ctx(&auth, false);
        let on = Context {
            faults: true,
            ..ctx(&auth, false)
        };
        let req = |path: &str, ctx: &Context<'_>| {
            route(format!("POST {path} HTTP/1.1\r\n\r\n").as_bytes(), ctx)
        };
        let fault = |path: &str| match req(path, &on) {
            Outcome::Fault(f) => Some(f),
            _ => None,
        };
        assert_eq!(status(req("/debug/fault/panic-log", &off)), "HTTP/1.1 405");
        assert_eq!(fault("/debug/fault/panic-log"), Some(Fault::PanicLog));
        assert_eq!(
            fault("/debug/fault/panic-shard?shard=3"),
            Some(Fault::PanicShard(3))
        );
        assert_eq!(
            fault("/debug/fault/stall-shard?shard=1&ms=250"),
            Some(Fault::StallShard(1, 250))
        );
        assert_eq!(status(req("/debug/fault/panic-shard", &on)), "HTTP/1.1 400");
        assert_eq!(
            status(req("/debug/fault/panic-shard?shard=x", &on)),
            "HTTP/1.1 400"
        );
        assert_eq!(status(req("/debug/fault/nothing", &on)), "HTTP/1.1 400");
    }

    #[test]
    fn upgrade_answers_the_rfc_example_key() {
        let auth = Auth::new(None);
        match route(UPGRADE.as_bytes(), &ctx(&auth, false)) {
            Outcome::Upgrade {
                identity,
                response,
                request_bytes,
            } => {
                assert_eq!(identity.user, "al ice");
                assert_eq!(request_bytes, UPGRADE.len());
                let text = String::from_utf8(response.to_vec()).unwrap();
                assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
            }
            _ => panic!("expected an upgrade"),
        }
        assert_eq!(
            status(route(UPGRADE.as_bytes(), &ctx(&auth, true))),
            "HTTP/1.1 503"
        );
        let full = Context {
            queue_full: true,
            ..ctx(&auth, false)
        };
        match route(UPGRADE.as_bytes(), &full) {
            Outcome::Respond { status, response } => {
                assert_eq!(status, 503);
                let text = String::from_utf8(response.to_vec()).unwrap();
                assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
            }
            _ => panic!("a full shard upgraded"),
        }
        let secured = Auth::new(Some("k"));
        assert_eq!(
            status(route(UPGRADE.as_bytes(), &ctx(&secured, false))),
            "HTTP/1.1 401"
        );
    }
}
