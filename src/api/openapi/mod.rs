//! `GET /openapi.json`: the OpenAPI 3 document of the API (SPEC section 5), generated with
//! `utoipa` from the code: each handler's `#[utoipa::path]` (path, method, parameters, body,
//! every answer with its codes) and the `ToSchema` derives of the bodies the handlers
//! serialize.
//!
//! Owns: [`ApiDoc`] (the list of documented handlers), the bearer scheme, the aliases (a route
//! that reuses a handler under another path or method is documented as a copy of its target's
//! operation). What the API answers about pools and GPUs is serialized from its own wire types
//! (`api/dto.rs`), whose `ToSchema` derives are the schemas; `tests/wire.rs` checks that they
//! read back as the node's types. The request bodies (`PreparedEngine`, `Handoff`) are parsed
//! straight into the core's types, whose serde attributes are the contract: those are mirrored
//! for the document (`mirrors.rs`: pool-core depends on serde and thiserror only, its boundary
//! test enforces it), and `tests/mirrors.rs` keeps each mirror equal to its type at compile
//! time (an exhaustive destructuring) and at run time (the same JSON).
//!
//! Drift: `every_route_is_documented` reads the router's `.route(...)` calls from the sources
//! of `src/api/` and compares them, both ways, with the document's (method, path) pairs: a
//! route added without its `#[utoipa::path]` (or a documented route that no longer exists)
//! fails the tests.
//!
//! Never: answers anything but the document.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::schema::ObjectBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema, Type};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::{commands, events, gpus, logs, pools, ui};

/// The document: every documented handler and the schemas they name.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pool-managerd",
        description = "Per-node daemon that supervises LLM inference engines (SPEC section 5). \
            Errors are `{\"code\", \"error\"}` with the status of their code. With \
            `LLORCH_API_TOKEN` set, every route but `GET /health` and the console's files \
            (`GET /ui...`) needs `Authorization: Bearer <token>`."
    ),
    paths(
        pools::daemon_health,
        pools::list,
        pools::get_one,
        pools::pool_health,
        pools::explain,
        commands::preload,
        commands::acquire_lease,
        commands::release_lease,
        commands::drain,
        commands::reload,
        commands::stop,
        commands::reset_breaker,
        commands::remove,
        pools::events,
        logs::logs,
        commands::register_handoff,
        events::events,
        gpus::list,
        gpus::unquarantine,
        metrics,
        openapi_json,
        ui::page,
        ui::script,
        ui::style,
    ),
    components(schemas(ErrorCodeSchema)),
    modifiers(&BearerScheme, &Aliases),
    security(("bearer" = [])),
    tags(
        (name = "daemon", description = "The daemon itself"),
        (name = "pools", description = "Pools and their engines"),
        (name = "leases", description = "Slots of a ready pool"),
        (name = "gpus", description = "The node's GPUs"),
        (name = "events", description = "The journal's events"),
        (name = "compatibility", description = "The original system's routes; they answer as their /v2 forms"),
        (name = "console", description = "The console's page and files (no token: the page sends it on each call)"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme (`LLORCH_API_TOKEN`).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`LLORCH_API_TOKEN`; required on every route but `GET /health` and the console's files (`GET /ui...`) when the daemon has one",
                    ))
                    .build(),
            ),
        );
    }
}

/// Routes that reuse a handler: `(method, path, target method, target path)`. Each is
/// documented as a copy of its target's operation (its own operation id), so the two cannot
/// differ.
const ALIASES: &[(HttpMethod, &str, HttpMethod, &str)] = &[
    (
        HttpMethod::Get,
        "/v2/pools/{id}/status",
        HttpMethod::Get,
        "/v2/pools/{id}",
    ),
    (
        HttpMethod::Post,
        "/pools/{id}/preload",
        HttpMethod::Post,
        "/v2/pools/{id}/preload",
    ),
    (
        HttpMethod::Get,
        "/pools/{id}/status",
        HttpMethod::Get,
        "/v2/pools/{id}",
    ),
    (
        HttpMethod::Post,
        "/pools/{id}/status",
        HttpMethod::Get,
        "/v2/pools/{id}",
    ),
    (HttpMethod::Get, "/ui/", HttpMethod::Get, "/ui"),
];

struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (method, path, target_method, target_path) in ALIASES {
            let Some(target) = openapi
                .paths
                .get_path_operation(target_path, target_method.clone())
                .cloned()
            else {
                // `every_route_is_documented` names the alias that has no target.
                continue;
            };
            let mut operation = target;
            let id = format!(
                "{}_{}",
                method_name(method),
                path.trim_matches('/')
                    .replace(['/', '{', '}'], "_")
                    .replace("__", "_")
                    .trim_end_matches('_')
            );
            operation.operation_id = Some(id);
            if path.starts_with("/pools/") {
                operation.tags = Some(vec!["compatibility".to_string()]);
                operation.summary = Some(format!(
                    "Compatibility: answers as {} {target_path}",
                    method_name(target_method).to_uppercase()
                ));
            } else {
                operation.summary = Some(format!(
                    "Same as {} {target_path}",
                    method_name(target_method).to_uppercase()
                ));
            }
            openapi
                .paths
                .add_path_operation(path, vec![method.clone()], operation);
        }
    }
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Options => "options",
        HttpMethod::Head => "head",
        HttpMethod::Patch => "patch",
        HttpMethod::Trace => "trace",
    }
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the document: {e}\"}}"))
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "daemon",
    operation_id = "openapi",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
    )
)]
pub(super) async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

/// `GET /metrics` (the handler is `api/metrics.rs`, rendering with `crate::metrics`; this
/// entry documents it, and `every_route_is_documented` ties it to the router's route).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "daemon",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition (SPEC section 11)", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
    )
)]
#[allow(dead_code)] // documentation only
fn metrics() {}

// ---- shared parameters and bodies ----

/// The `{id}` of every pool route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct PoolIdParam {
    /// The pool id (`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`; anything else is `INVALID_REQUEST`).
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    id: String,
}

/// Every error answer: `{"code", "error"}`, with the status of its code (SPEC section 5),
/// and `rolled_back` beside them for `RELOAD_FAILED`.
#[derive(Serialize, ToSchema)]
#[schema(as = ApiError)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct ApiErrorBody {
    /// The SPEC code.
    #[schema(value_type = ErrorCodeSchema)]
    code: pool_core::ErrorCode,
    /// For people: names the thing and what to do.
    error: String,
    /// With `RELOAD_FAILED`: the old model serves again.
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_back: Option<bool>,
}

/// The SPEC section 5 codes, listed from [`pool_core::ErrorCode::ALL`] (the one vocabulary:
/// a code added there is in the document with no edit here).
pub(super) struct ErrorCodeSchema;

impl PartialSchema for ErrorCodeSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(pool_core::ErrorCode::ALL.iter().map(|c| c.as_str())))
            .description(Some(
                "The SPEC section 5 codes. `INTERNAL`: the journal failed (500), the daemon is \
                 shutting down (503), or a wait gave up (504); `JOURNAL_UNAVAILABLE` (503): the \
                 journal cannot take writes now, nothing was recorded; `HISTORY_EXPIRED` (410): \
                 a seq before the earliest one retention keeps; `OVERLOADED` (503, with \
                 `Retry-After`): every API connection is busy, answered by the HTTP layer to \
                 any route; `CIRCUIT_OPEN` (503) carries `Retry-After`: the whole seconds, \
                 rounded up and at least 1, until the breaker half-opens; `POOL_UNREADY` \
                 (503) carries it while the pool is in backoff: until its restart is due; `ORIGIN_NOT_ALLOWED` (403): a browser `Origin` (or a `Host`) the \
                 daemon does not serve; `PORT_IN_USE` (500): a start failed because the \
                 engine's port is held by another process (named by pid and command line) or \
                 someone else answered on it.",
            ))
            .into()
    }
}

impl ToSchema for ErrorCodeSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

mod mirrors;
pub(super) use mirrors::*;

#[cfg(test)]
mod tests;
