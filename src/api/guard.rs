//! What keeps a web page out of the API: a page opened on the node can send "simple"
//! cross-origin requests to `127.0.0.1:9200` (a `text/plain` POST needs no preflight), and a
//! DNS-rebinding page reaches it under a name of its own. So: a request that carries a body
//! must say `Content-Type: application/json` (415 otherwise), a request with an `Origin` is
//! refused unless `[api] allowed_origins` lists it (browsers send `Origin` on cross-origin
//! requests, other clients do not), and on a loopback bind the `Host` must be a loopback name.
//!
//! Owns: these three checks, on headers only. Never: reads a body, authenticates (the token
//! check is `authenticate`), or answers anything but `{"code","error"}`.

use axum::http::{header, HeaderMap, Method, StatusCode};

use super::error::ApiError;

/// The checks' settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserGuard {
    /// The API listens on a loopback address: `Host` must be a loopback name.
    pub loopback: bool,
    /// `[api] allowed_origins`: exact `Origin` values accepted (default none).
    pub allowed_origins: Vec<String>,
}

impl BrowserGuard {
    /// `Err` (415 or 403) when the request must be refused.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        self.check_origin(headers)?;
        self.check_host(headers)?;
        check_content_type(method, headers)
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("(not text)");
        if self.allowed_origins.iter().any(|o| o == origin) {
            return Ok(());
        }
        Err(ApiError::new(
            pool_core::ErrorCode::OriginNotAllowed,
            format!(
                "requests from web pages are refused: Origin '{}' is not in [api] \
                 allowed_origins; list it there if a browser console must call this API",
                crate::supervisor::admission::escape(origin)
            ),
        ))
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.loopback {
            return Ok(());
        }
        let Some(host) = headers.get(header::HOST) else {
            return Ok(());
        };
        let host = host.to_str().unwrap_or("");
        if is_loopback_host(host) {
            return Ok(());
        }
        Err(ApiError::new(
            pool_core::ErrorCode::OriginNotAllowed,
            format!(
                "Host '{}' is not a loopback name, and this API listens on loopback only \
                 (a page reaching it through a name of its own is refused); call it as \
                 127.0.0.1, [::1] or localhost",
                crate::supervisor::admission::escape(host)
            ),
        ))
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after)) if after.is_empty() || after.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A request with a body must declare it JSON.
fn check_content_type(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    if !has_body {
        return Ok(());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "a request body must be sent with 'Content-Type: application/json' (got '{}')",
        crate::supervisor::admission::escape(content_type)
    ))
    .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:9200",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9200",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9200",
            "10.0.0.1",
            "[::2]:1",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_body_must_be_json() {
        let json = headers(&[
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::CONTENT_LENGTH, "2"),
        ]);
        assert!(check_content_type(&Method::POST, &json).is_ok());
        let plain = headers(&[
            (header::CONTENT_TYPE, "text/plain"),
            (header::CONTENT_LENGTH, "2"),
        ]);
        let refused = check_content_type(&Method::POST, &plain).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let empty = headers(&[(header::CONTENT_LENGTH, "0")]);
        assert!(check_content_type(&Method::POST, &empty).is_ok());
    }

    #[test]
    fn an_origin_must_be_listed() {
        let guard = BrowserGuard {
            loopback: true,
            allowed_origins: vec!["https://console.example".into()],
        };
        let page = headers(&[(header::ORIGIN, "https://evil.example")]);
        assert!(guard.check(&Method::GET, &page).is_err());
        let console = headers(&[(header::ORIGIN, "https://console.example")]);
        assert!(guard.check(&Method::GET, &console).is_ok());
        assert!(guard.check(&Method::GET, &HeaderMap::new()).is_ok());
    }
}
