//! HTTP/1.1 responses that close the connection, and the reason phrase of every status the
//! server sends. A leaf: `http` (routing) and `api` (JSON replies) both build on it, and it
//! knows neither.

#![forbid(unsafe_code)]

use bytes::Bytes;

/// The reason phrase of `status` (RFC 9110 §15). Every status the engine sends is listed;
/// any other is a bug, answered with a neutral phrase rather than a panic.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => {
            debug_assert!(false, "no reason phrase for HTTP status {status}");
            "Unknown"
        }
    }
}

/// A complete HTTP/1.1 response that closes the connection. `extra_headers` is empty or
/// whole header lines, each ending in `\r\n`.
pub fn response(status: u16, content_type: &str, body: &[u8], extra_headers: &str) -> Bytes {
    debug_assert!(extra_headers.is_empty() || extra_headers.ends_with("\r\n"));
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A `text/plain` response: `body` is one line for a person (or a script) to read.
pub fn plain(status: u16, body: &str) -> Bytes {
    response(status, "text/plain; charset=utf-8", body.as_bytes(), "")
}

/// An `application/json` response.
pub fn json(status: u16, body: &[u8]) -> Bytes {
    response(status, "application/json", body, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_has_its_status_line_length_and_body() {
        let r = plain(503, "draining\n");
        let text = std::str::from_utf8(&r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 9\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\ndraining\n"), "{text}");
    }

    #[test]
    fn extra_headers_come_before_the_blank_line() {
        let r = response(503, "text/plain", b"x", "Retry-After: 1\r\n");
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.ends_with("Retry-After: 1\r\n\r\nx"), "{text}");
    }

    #[test]
    fn json_replies_say_so() {
        let text = String::from_utf8(json(201, b"{}").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: application/json\r\n"),
            "{text}"
        );
    }
}
