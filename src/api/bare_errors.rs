//! hyper's own answers to a malformed request head, turned into the API's JSON.
//!
//! hyper answers a head it cannot parse (a bad byte in the request line or a header, an
//! unknown version, a URI over 64 KiB, too many or too large headers) with a bare
//! `400`/`414`/`431` and no body, and offers no hook to change it. The connection's socket
//! wrapper hands each write to [`json_for_bare_error`]: a write that begins with such a head
//! (only a head, `content-length: 0`, no `content-type`) is replaced by the same status with
//! `{"code":"INVALID_REQUEST","error"}` and `connection: close`.
//!
//! Owns: recognizing hyper's bare error head, the replacement bytes.
//! Never: touches any other write: the API's own answers always carry a `content-type` and a
//! body, and bodies written by the API (JSON, SSE, Prometheus text) hold no raw `\r\n` line
//! that could pass for a status line.

/// When `written` begins with hyper's bare error head: the head's length (what hyper is told
/// was written) and the JSON answer to write instead.
pub fn json_for_bare_error(written: &[u8]) -> Option<(usize, Vec<u8>)> {
    let end = written.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&written[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let (status, message) = match status_line.get(..13)? {
        "HTTP/1.1 400 " => (
            "400 Bad Request",
            "malformed request head (the request line, a header name or value, or the HTTP \
             version); send a valid HTTP/1.1 request",
        ),
        "HTTP/1.1 414 " => (
            "414 URI Too Long",
            "request URI too long (64 KiB at most); shorten the path and query",
        ),
        "HTTP/1.1 431 " => (
            "431 Request Header Fields Too Large",
            "request head too large (at most 100 headers and about 400 KiB); send fewer or \
             smaller headers",
        ),
        _ => return None,
    };
    let mut bodyless = false;
    for line in lines.map(str::to_ascii_lowercase) {
        if line.starts_with("content-type:") {
            return None;
        }
        bodyless |= line == "content-length: 0";
    }
    if !bodyless {
        return None;
    }
    let body =
        serde_json::json!({ "code": pool_core::ErrorCode::InvalidRequest, "error": message })
            .to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    Some((end, answer.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_heads_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                     date: Wed, 02 Dec 2026 18:00:00 GMT\r\n\r\n";
        let (consumed, answer) = json_for_bare_error(bare).unwrap();
        assert_eq!(consumed, bare.len());
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(answer.contains("\"code\":\"INVALID_REQUEST\""), "{answer}");
        // The API's own 400 carries a type and a body; a 200 is never touched.
        let api = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                    content-length: 2\r\n\r\n{}";
        assert!(json_for_bare_error(api).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(json_for_bare_error(ok).is_none());
        assert!(json_for_bare_error(b"data: {\"x\":1}\n\n").is_none());
    }
}
