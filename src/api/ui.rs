//! `GET /ui`: the console, a read-only page of the node in the browser (pools live from the
//! event stream, a pool's timeline, explanation, events and engine log, the GPUs).
//!
//! Owns: the page's three files (`ui/index.html`, `ui/console.js`, `ui/console.css`), built
//! into the binary (nothing is read from disk or the network at run time, no build step), and
//! the headers they are served with: a Content-Security-Policy that lets the page load and
//! call nothing but this daemon (no inline script or style, no frames around it),
//! `X-Content-Type-Options: nosniff`, `Cache-Control: no-cache` (a new binary's page is
//! fetched again).
//!
//! The routes sit outside the token check: the files hold no secret. Every call the page
//! makes carries the token (`Authorization: Bearer`, asked for once when a call answers 401
//! and kept in the tab's `sessionStorage`). The page sends same-origin `GET`s only, which
//! browsers send without an `Origin`: the browser guard (`guard.rs`) refuses every write that
//! comes from a page, so the console cannot change anything, by design.
//!
//! Never: answers anything but these files, or reads a request.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
const INDEX_HTML: &str = include_str!("ui/index.html");
/// Its script.
const CONSOLE_JS: &str = include_str!("ui/console.js");
/// Its style sheet.
const CONSOLE_CSS: &str = include_str!("ui/console.css");

/// What the page may load and call: this daemon only; no inline script or style, no frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
    img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

/// One of the files with its type and the console's headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui` (and `/ui/`): the page.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "console",
    operation_id = "console_page",
    security(()),
    responses(
        (status = 200, description = "The console's page (no token needed: the page asks for it and sends it on each call)", content_type = "text/html; charset=utf-8", body = String),
    )
)]
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/console.js`.
#[utoipa::path(
    get,
    path = "/ui/console.js",
    tag = "console",
    operation_id = "console_script",
    security(()),
    responses(
        (status = 200, description = "The console's script", content_type = "text/javascript; charset=utf-8", body = String),
    )
)]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

/// `GET /ui/console.css`.
#[utoipa::path(
    get,
    path = "/ui/console.css",
    tag = "console",
    operation_id = "console_style",
    security(()),
    responses(
        (status = 200, description = "The console's style sheet", content_type = "text/css; charset=utf-8", body = String),
    )
)]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_own_files_only() {
        assert!(INDEX_HTML.contains(r#"src="/ui/console.js""#));
        assert!(INDEX_HTML.contains(r#"href="/ui/console.css""#));
        for text in [INDEX_HTML, CONSOLE_JS, CONSOLE_CSS] {
            // The SVG namespace is a name, not a place the page loads from.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // No inline script or style: the policy would refuse them.
        assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains("style="));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
    }

    #[tokio::test]
    async fn the_files_carry_the_console_headers() {
        for (response, kind) in [
            (page().await, "text/html"),
            (script().await, "text/javascript"),
            (style().await, "text/css"),
        ] {
            let headers = response.headers();
            let get = |name: header::HeaderName| headers[name].to_str().unwrap().to_string();
            assert!(get(header::CONTENT_TYPE).starts_with(kind));
            assert_eq!(
                get(header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(get(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(get(header::CACHE_CONTROL), "no-cache");
        }
    }
}
