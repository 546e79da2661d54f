//! The HTTP API (SPEC section 5): routes, authentication, body limits.
//!
//! Owns: the routes and their JSON shapes, the bearer-token check, the checks that keep web
//! pages out (`guard.rs`: `Origin`, `Host`, `Content-Type`), the admission of a preload's
//! engine (binary and environment, before it reaches the core).
//! Never: touches the journal or processes directly: commands go to the node actor through
//! its handle, reads come from the published registry (so readers never wait on the actor).
//!
//! Route map (`pools.rs` holds the handlers):
//! - `GET /health`
//! - `GET /v2/pools`, `GET /v2/pools/{id}` (= `/status`, `?at_seq=N`), `GET .../health`,
//!   `GET .../explain` (`?at_seq=N`: why the pool is in its phase, from the journal)
//! - `POST .../preload` (`?wait=false` answers 202), `POST .../leases`,
//!   `DELETE .../leases/{lease_id}`, `POST .../drain`, `POST .../reload` (waits),
//!   `POST .../stop`,
//!   `POST .../breaker/reset`, `DELETE /v2/pools/{id}`, `GET .../events`
//! - `GET /v2/pools/{id}/logs` (`logs.rs`: the last lines of the pool's current engine log,
//!   `?tail=N`; `?follow=true` or `Accept: text/event-stream` streams new lines)
//! - `GET /v2/gpus` (`gpus.rs`: the last GPU reading, with each process's pool and each GPU's
//!   quarantine), `POST /v2/gpus/{uuid}/unquarantine`
//! - compatibility: `POST /pools/{id}/preload`, `GET|POST /pools/{id}/status`
//! - `GET /openapi.json` (`openapi.rs`: the OpenAPI document, generated from the handlers'
//!   `#[utoipa::path]` attributes; a test fails when a route here is not documented)
//! - `GET /ui` (= `/ui/`), `GET /ui/console.js`, `GET /ui/console.css` (`ui.rs`: the console,
//!   files built into the binary; outside the token check, the page sends the token on each
//!   call it makes)

mod bare_errors;
mod commands;
pub mod dto;
mod error;
mod events;
mod gpus;
pub mod guard;
mod logs;
mod metrics;
mod openapi;
mod pools;
mod server;
mod sse;
mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::supervisor::admission::Admission;

use crate::gpu::GpuMonitor;
use crate::node::NodeHandle;

pub use error::{parse_json, status_of, ApiError, JsonBody, PoolPath, BODY_MAX_BYTES};
pub use openapi::{document_json as openapi_document, ApiDoc};
pub use server::{serve, BodyTimeout, ServeSettings};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    node: NodeHandle,
    token: Option<String>,
    admission: Arc<Admission>,
    guard: guard::BrowserGuard,
    version: String,
    gpus: Option<GpuMonitor>,
    handoff_check: crate::port::HandoffCheck,
}

/// API settings.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    /// `LLORCH_API_TOKEN`: when set, every route but `GET /health` and the console's files
    /// (`GET /ui...`) needs it.
    pub token: Option<String>,
    /// What may be started (`allowed_binaries`, `[engines] env_allow`).
    pub admission: Arc<Admission>,
    /// `Origin`, `Host` and `Content-Type` checks ([`guard`]).
    pub guard: guard::BrowserGuard,
    /// The daemon's version for `/health`.
    pub version: String,
    /// The live GPU view (`GET /v2/gpus`, `/health`'s `gpu`); `None`: the start-up verdict
    /// of the published registry, and no GPUs listed.
    pub gpus: Option<GpuMonitor>,
    /// What a handoff must pass before it is recorded (the world's check: the URL names this
    /// node, the engine answers `{url}/health` with 200); the default refuses every handoff.
    pub handoff_check: crate::port::HandoffCheck,
}

impl ApiState {
    /// State over `node`.
    pub fn new(node: NodeHandle, settings: ApiSettings) -> ApiState {
        ApiState {
            inner: Arc::new(ApiInner {
                node,
                token: settings.token.filter(|t| !t.is_empty()),
                admission: settings.admission,
                guard: settings.guard,
                version: settings.version,
                gpus: settings.gpus,
                handoff_check: settings.handoff_check,
            }),
        }
    }

    pub(crate) fn node(&self) -> &NodeHandle {
        &self.inner.node
    }

    pub(crate) fn gpus(&self) -> Option<&GpuMonitor> {
        self.inner.gpus.as_ref()
    }

    pub(crate) fn handoff_check(&self) -> &crate::port::HandoffCheck {
        &self.inner.handoff_check
    }

    /// `Err(BINARY_NOT_ALLOWED)` unless the engine's binary is allowed (symlinks resolved),
    /// `Err(INVALID_REQUEST)` naming an `env{}` key that is a hook or not in `env_allow`.
    pub(crate) fn check_engine(&self, engine: &pool_core::PreparedEngine) -> Result<(), ApiError> {
        self.inner
            .admission
            .check_request(engine)
            .map_err(|refused| ApiError::new(refused.code, refused.message))
    }
}

/// The router with every route, the body limit and the token check.
pub fn router(state: ApiState) -> Router {
    let pools = Router::new()
        .route("/v2/pools", get(pools::list))
        .route(
            "/v2/pools/{id}",
            get(pools::get_one).delete(commands::remove),
        )
        .route("/v2/pools/{id}/status", get(pools::get_one))
        .route("/v2/pools/{id}/health", get(pools::pool_health))
        .route("/v2/pools/{id}/explain", get(pools::explain))
        .route("/v2/pools/{id}/preload", post(commands::preload))
        .route("/v2/pools/{id}/leases", post(commands::acquire_lease))
        .route(
            "/v2/pools/{id}/leases/{lease_id}",
            delete(commands::release_lease),
        )
        .route("/v2/pools/{id}/drain", post(commands::drain))
        .route("/v2/pools/{id}/reload", post(commands::reload))
        .route("/v2/pools/{id}/stop", post(commands::stop))
        .route(
            "/v2/pools/{id}/breaker/reset",
            post(commands::reset_breaker),
        )
        .route("/v2/pools/{id}/events", get(pools::events))
        .route("/v2/pools/{id}/logs", get(logs::logs))
        .route("/v2/pools/{id}/handoff", post(commands::register_handoff)) // handoff route
        .route("/v2/events", get(events::events))
        .route("/v2/gpus", get(gpus::list))
        .route("/v2/gpus/{uuid}/unquarantine", post(gpus::unquarantine))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::scrape))
        .route("/pools/{id}/preload", post(commands::preload))
        .route(
            "/pools/{id}/status",
            get(pools::get_one).post(pools::get_one),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(pools::daemon_health))
        // The console's files hold no secret; the calls the page makes carry the token.
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/console.js", get(ui::script))
        .route("/ui/console.css", get(ui::style))
        .merge(pools)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard_request))
        .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(format!(
        "no route {method} {}; see the API in SPEC section 5",
        uri.path()
    ))
    .with_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(format!("method {method} is not allowed on {}", uri.path()))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// The [`guard`] checks, before anything else (authentication included).
async fn guard_request(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match state.inner.guard.check(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// Bearer-token check (constant-time) when a token is configured.
async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.inner.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::new(
            pool_core::ErrorCode::Unauthorized,
            "missing or wrong bearer token; send 'Authorization: Bearer <LLORCH_API_TOKEN>'",
        )
        .into_response()
    }
}

/// Compares in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
