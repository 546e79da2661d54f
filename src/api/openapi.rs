//! `GET /openapi.json`: the OpenAPI 3 document of the API (SPEC section 5), generated with
//! `utoipa` from the code: each handler's `#[utoipa::path]` (path, method, parameters, body,
//! every answer with its codes) and the `ToSchema` derives of the bodies the handlers
//! serialize.
//!
//! Owns: [`ApiDoc`] (the list of documented handlers), the bearer scheme, the aliases (a route
//! that reuses a handler under another path or method is documented as a copy of its target's
//! operation), and the schemas of the pool-core types the API shows (`PoolStatus`,
//! `PreparedEngine`, `Handoff`, ...). Those are mirrors here rather than derives in the core:
//! pool-core depends on serde and thiserror only (its boundary test enforces it), and a
//! feature-gated utoipa there would still put a web-documentation crate into the pure crate's
//! manifest. The tests below keep each mirror equal to its type at compile time (an
//! exhaustive destructuring fails to build when the core adds a field or variant) and at run
//! time (both serialize to the same JSON).
//!
//! Drift: `every_route_is_documented` reads the router's `.route(...)` calls from the sources
//! of `src/api/` and compares them, both ways, with the document's (method, path) pairs: a
//! route added without its `#[utoipa::path]` (or a documented route that no longer exists)
//! fails the tests.
//!
//! Never: answers anything but the document.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema, SchemaFormat, Type};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::{events, gpus, pools};

/// The document: every documented handler and the schemas they name.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pool-managerd",
        description = "Per-node daemon that supervises LLM inference engines (SPEC section 5). \
            Errors are `{\"code\", \"error\"}` with the status of their code. With \
            `LLORCH_API_TOKEN` set, every route but `GET /health` needs \
            `Authorization: Bearer <token>`."
    ),
    paths(
        pools::daemon_health,
        pools::list,
        pools::get_one,
        pools::pool_health,
        pools::preload,
        pools::acquire_lease,
        pools::release_lease,
        pools::drain,
        pools::reload,
        pools::stop,
        pools::reset_breaker,
        pools::remove,
        pools::events,
        pools::register_handoff,
        events::events,
        gpus::list,
        metrics,
        openapi_json,
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
                        "`LLORCH_API_TOKEN`; required on every route but `GET /health` when the daemon has one",
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
                 any route; `ORIGIN_NOT_ALLOWED` (403): a browser `Origin` (or a `Host`) the \
                 daemon does not serve.",
            ))
            .into()
    }
}

impl ToSchema for ErrorCodeSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

// ---- mirrors of the pool-core types the API shows (see the module's comment) ----

/// The public phase of a pool (SPEC section 4).
#[derive(Serialize, ToSchema)]
#[schema(as = Phase)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // read by the documentation only
pub(super) enum PhaseSchema {
    Registered,
    Starting,
    Ready,
    Draining,
    Stopping,
    Stopped,
    Backoff,
    CircuitOpen,
    Reloading,
    Failed,
}

/// The circuit breaker's state.
#[derive(Serialize, ToSchema)]
#[schema(as = BreakerState)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // read by the documentation only
pub(super) enum BreakerStateSchema {
    Closed,
    Open,
    HalfOpen,
}

/// A pool as the API shows it (SPEC section 5), every field always present.
#[derive(Serialize, ToSchema)]
#[schema(as = PoolStatus)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct PoolStatusSchema {
    /// The pool.
    pool_id: String,
    /// Public phase.
    phase: PhaseSchema,
    /// An engine process exists.
    live: bool,
    /// It serves.
    ready: bool,
    /// A drain is in progress.
    draining: bool,
    /// The engine's pid.
    pid: Option<u32>,
    /// Engine kind.
    engine: Option<String>,
    /// Engine version.
    engine_version: Option<String>,
    /// Model served.
    model_ref: Option<String>,
    /// Device mask.
    device_mask: Option<String>,
    /// Slots.
    slots_total: u32,
    /// Free slots, `0..=slots_total`.
    slots_free: u32,
    /// Leases held.
    active_leases: u32,
    /// Last failure.
    last_error: Option<String>,
    /// Last recorded healthy answer (ms since the Unix epoch).
    last_heartbeat_ms: Option<u64>,
    /// Restarts.
    restart_count: u32,
    /// Failures.
    crash_count: u32,
    /// The current backoff delay (0 unless in backoff).
    backoff_ms: u64,
    /// Breaker state.
    breaker: BreakerStateSchema,
    /// VRAM used by the engine.
    vram_used_bytes: Option<u64>,
    /// Handoff file.
    handoff_path: Option<String>,
    /// Seq of the last event that touched the pool.
    last_seq: u64,
}

/// Multi-GPU split: `"auto"` or explicit ratios, one per GPU of the mask.
#[derive(Serialize)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct TensorSplitSchema;

impl PartialSchema for TensorSplitSchema {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["auto"])),
            )
            .item(
                ArrayBuilder::new().items(
                    ObjectBuilder::new()
                        .schema_type(Type::Number)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
                ),
            )
            .description(Some(
                "Multi-GPU split: \"auto\" or explicit ratios, one per GPU of the mask",
            ))
            .into()
    }
}

impl ToSchema for TensorSplitSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TensorSplit")
    }
}

/// The engine provisioner's output (SPEC section 5): what to spawn and how to reach it.
#[derive(Serialize, ToSchema)]
#[schema(as = PreparedEngine)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct PreparedEngineSchema {
    /// Absolute path of the engine binary (checked against `allowed_binaries`).
    binary_path: String,
    /// Arguments, in order.
    #[serde(default)]
    flags: Vec<String>,
    /// Host the engine listens on; the health probe goes there.
    host: String,
    /// Port the engine listens on.
    #[schema(maximum = 65535)]
    port: u16,
    /// The model file.
    model_path: String,
    /// The engine's version as the provisioner knows it.
    engine_version: String,
    /// Must equal the pool id of the path.
    pool_id: String,
    /// Replica id, part of the handoff file name.
    replica_id: String,
    /// GPUs the engine may use (`"0,1"`, `"GPU0"`, UUIDs).
    #[serde(default)]
    device_mask: Option<String>,
    /// Engine kind for display; defaults to the binary's file name.
    #[serde(default)]
    engine: Option<String>,
    /// Extra environment (besides PATH, HOME, LANG and the CUDA variables).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Health route.
    #[serde(default)]
    #[schema(default = "/health")]
    health_path: String,
    /// Slots the engine serves; when absent the daemon asks `/props` or reads `--parallel`.
    #[serde(default)]
    slots_total: Option<u32>,
    /// VRAM the engine needs.
    #[serde(default)]
    vram_required_bytes: Option<u64>,
    /// Host RAM the engine needs.
    #[serde(default)]
    ram_required_bytes: Option<u64>,
    /// Multi-GPU split.
    #[serde(default)]
    tensor_split: Option<TensorSplitSchema>,
}

/// The model of a handoff.
#[derive(Serialize, ToSchema)]
#[schema(as = HandoffModel)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct HandoffModelSchema {
    /// The model file the engine serves.
    path: String,
}

/// The handoff document of an engine started by someone else (SPEC section 6).
#[derive(Serialize, ToSchema)]
#[schema(as = Handoff)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct HandoffSchema {
    /// Engine kind (`"llamacpp"`).
    engine: String,
    /// Engine version reported by the engine.
    engine_version: String,
    /// Where the engine serves; `{url}/health` must answer 200.
    url: String,
    /// The pool: must equal the path's id.
    pool_id: String,
    /// The replica.
    replica_id: String,
    /// The model served.
    model: HandoffModelSchema,
    /// The engine's arguments.
    #[serde(default)]
    flags: Vec<String>,
    /// GPUs the engine uses.
    #[serde(default)]
    device_mask: Option<String>,
    /// Slots the engine serves (1..=4096).
    #[schema(minimum = 1, maximum = 4096)]
    slots_total: u32,
    /// The engine's pid, when known (not 0).
    #[serde(default)]
    pid: Option<u32>,
}

/// An event as the journal's JSON form shows it: `kind` and the event's fields.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct EventSchema {
    /// The event's kind (`EngineSpawned`, `PoolReady`, ...); its fields follow.
    kind: String,
}

/// A journaled event with its position.
#[derive(Serialize, ToSchema)]
#[schema(as = Envelope)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct EnvelopeSchema {
    /// Position in the journal (1, 2, 3, ...).
    seq: u64,
    /// When it was decided, ms since the Unix epoch.
    ts_ms: u64,
    /// The pool; absent (null) for node-level events.
    pool_id: Option<String>,
    /// Seq of the event that caused this one.
    cause: Option<u64>,
    /// The event.
    event: EventSchema,
}

/// A compute process on a GPU.
#[derive(Serialize, ToSchema)]
#[schema(as = GpuProcess)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct GpuProcessSchema {
    /// Its pid.
    pid: u32,
    /// GPU memory it uses (0 where NVML cannot say).
    used_bytes: u64,
    /// The pool whose engine it is; absent for other processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_id: Option<String>,
}

/// A MIG device (a slice of a GPU with MIG mode on).
#[derive(Serialize, ToSchema)]
#[schema(as = MigDevice)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct MigDeviceSchema {
    /// `MIG-...` UUID (usable in a device mask).
    uuid: String,
    /// The NVML index of the GPU it is a slice of.
    parent_index: u32,
    /// Its profile (`"1g.10gb"`) or name.
    name: String,
    /// Its total memory.
    vram_total_bytes: u64,
    /// Its free memory when observed.
    vram_free_bytes: u64,
    /// Compute processes on this slice.
    processes: Vec<GpuProcessSchema>,
}

/// One GPU of the last reading (SPEC section 10).
#[derive(Serialize, ToSchema)]
#[schema(as = Gpu)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct GpuSchema {
    /// NVML index (PCI bus order).
    index: u32,
    /// `GPU-...` UUID.
    uuid: String,
    /// Marketing name.
    name: String,
    /// `"8.6"`.
    compute_capability: String,
    /// Total VRAM.
    vram_total_bytes: u64,
    /// Free VRAM when observed.
    vram_free_bytes: u64,
    /// MIG devices, where MIG mode is on (empty otherwise).
    mig_devices: Vec<MigDeviceSchema>,
    /// Compute processes on the GPU as a whole.
    processes: Vec<GpuProcessSchema>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(document_json()).expect("the document is JSON")
    }

    /// `(METHOD, path)` of every `.route("path", get(..).post(..))` in the sources of
    /// `src/api/` (axum's `Router` does not list its routes).
    fn routes_in_sources() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut routes = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "expected the api's sources in {dir:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // The code, without comments and tests.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let text: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for banned in [".nest(", ".route_service(", ".nest_service("] {
                assert!(
                    !text.contains(banned),
                    "{}: {banned}...) is not understood by this test; teach it, or use .route",
                    file.display()
                );
            }
            let mut rest = text.as_str();
            while let Some(at) = rest.find(".route(") {
                rest = &rest[at + ".route(".len()..];
                // The call's argument list, up to its closing parenthesis.
                let mut depth = 1usize;
                let mut end = 0;
                for (i, c) in rest.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let call = &rest[..end];
                let path = call.split('"').nth(1).unwrap_or_else(|| {
                    panic!("{}: a route without a literal path: {call}", file.display())
                });
                let after = &call[call.find(',').unwrap_or(0)..];
                let mut methods = 0;
                for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
                    let needle = format!("{method}(");
                    let mut search = after;
                    while let Some(i) = search.find(&needle) {
                        let before = search[..i].chars().next_back();
                        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                            routes.push((method.to_uppercase(), path.to_string()));
                            methods += 1;
                        }
                        search = &search[i + needle.len()..];
                    }
                }
                assert!(
                    methods > 0,
                    "{}: no method found in .route({call})",
                    file.display()
                );
            }
        }
        routes.sort();
        routes.dedup();
        routes
    }

    fn routes_in_document() -> Vec<(String, String)> {
        let doc = document();
        let mut routes = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    routes.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        routes.sort();
        routes
    }

    #[test]
    fn every_route_is_documented() {
        let routes = routes_in_sources();
        let documented = routes_in_document();
        assert!(routes.len() >= 19, "found only {routes:?}");
        let missing: Vec<_> = routes.iter().filter(|r| !documented.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "routes without an OpenAPI entry (add #[utoipa::path] to the handler and list it in \
             ApiDoc's paths, or an ALIASES entry when it reuses a handler): {missing:?}"
        );
        let stale: Vec<_> = documented.iter().filter(|r| !routes.contains(r)).collect();
        assert!(
            stale.is_empty(),
            "documented routes the router does not have: {stale:?}"
        );
    }

    #[test]
    fn every_operation_but_health_needs_the_bearer_token() {
        let doc = document();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let open = operation.get("security") == Some(&serde_json::json!([{}]));
                assert_eq!(
                    open,
                    path == "/health",
                    "{method} {path}: only GET /health is open"
                );
                let responses = operation["responses"].as_object().unwrap();
                if path != "/health" {
                    assert!(responses.contains_key("401"), "{method} {path}: no 401");
                }
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') && path != "/health" {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ApiError",
                            "{method} {path} {status}: errors are ApiError"
                        );
                    }
                }
                assert!(
                    operation["operationId"].is_string(),
                    "{method} {path}: no operationId"
                );
            }
        }
    }

    #[test]
    fn error_codes_have_the_statuses_the_document_names() {
        let doc = document();
        let codes: Vec<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let all: Vec<&str> = pool_core::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(codes, all);
        // Every code some route names in its answers is a known code with that status.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let description = response["description"].as_str().unwrap();
                    for code in description.split('`').skip(1).step_by(2) {
                        if code.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                            assert!(codes.iter().any(|c| c == code), "{method} {path}: {code}");
                            if code != "INTERNAL" && code != "INVALID_REQUEST" {
                                let code = pool_core::ErrorCode::parse(code).unwrap();
                                assert_eq!(
                                    super::super::status_of(code).as_str(),
                                    status,
                                    "{method} {path}: {code}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    // ---- the mirrors equal the core's types ----

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn properties(schema: &str) -> Vec<String> {
        let doc = document();
        keys(&doc["components"]["schemas"][schema]["properties"])
    }

    fn required(schema: &str) -> Vec<String> {
        let doc = document();
        let mut out: Vec<String> = doc["components"]["schemas"][schema]["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    fn phase(phase: pool_core::Phase) -> PhaseSchema {
        use pool_core::Phase as P;
        match phase {
            P::Registered => PhaseSchema::Registered,
            P::Starting => PhaseSchema::Starting,
            P::Ready => PhaseSchema::Ready,
            P::Draining => PhaseSchema::Draining,
            P::Stopping => PhaseSchema::Stopping,
            P::Stopped => PhaseSchema::Stopped,
            P::Backoff => PhaseSchema::Backoff,
            P::CircuitOpen => PhaseSchema::CircuitOpen,
            P::Reloading => PhaseSchema::Reloading,
            P::Failed => PhaseSchema::Failed,
        }
    }

    fn breaker(state: pool_core::BreakerState) -> BreakerStateSchema {
        use pool_core::BreakerState as B;
        match state {
            B::Closed => BreakerStateSchema::Closed,
            B::Open => BreakerStateSchema::Open,
            B::HalfOpen => BreakerStateSchema::HalfOpen,
        }
    }

    #[test]
    fn enums_equal_the_core() {
        use pool_core::{BreakerState as B, Phase as P};
        for p in [
            P::Registered,
            P::Starting,
            P::Ready,
            P::Draining,
            P::Stopping,
            P::Stopped,
            P::Backoff,
            P::CircuitOpen,
            P::Reloading,
            P::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::to_value(phase(p)).unwrap()
            );
        }
        for b in [B::Closed, B::Open, B::HalfOpen] {
            assert_eq!(
                serde_json::to_value(b).unwrap(),
                serde_json::to_value(breaker(b)).unwrap()
            );
        }
        let doc = document();
        assert_eq!(
            doc["components"]["schemas"]["Phase"]["enum"]
                .as_array()
                .unwrap()
                .len(),
            10
        );
    }

    #[test]
    fn pool_status_equals_the_core() {
        let status = pool_core::PoolStatus {
            pool_id: pool_core::PoolId::new("p1").unwrap(),
            phase: pool_core::Phase::Ready,
            live: true,
            ready: true,
            draining: false,
            pid: Some(42),
            engine: Some("llamacpp".into()),
            engine_version: Some("b1".into()),
            model_ref: Some("/m.gguf".into()),
            device_mask: Some("0".into()),
            slots_total: 4,
            slots_free: 3,
            active_leases: 1,
            last_error: None,
            last_heartbeat_ms: Some(7),
            restart_count: 0,
            crash_count: 0,
            backoff_ms: 0,
            breaker: pool_core::BreakerState::Closed,
            vram_used_bytes: None,
            handoff_path: None,
            last_seq: 9,
        };
        // Exhaustive: a field added to the core's PoolStatus fails to build here.
        let pool_core::PoolStatus {
            pool_id,
            phase: p,
            live,
            ready,
            draining,
            pid,
            engine,
            engine_version,
            model_ref,
            device_mask,
            slots_total,
            slots_free,
            active_leases,
            last_error,
            last_heartbeat_ms,
            restart_count,
            crash_count,
            backoff_ms,
            breaker: b,
            vram_used_bytes,
            handoff_path,
            last_seq,
        } = status.clone();
        let mirror = PoolStatusSchema {
            pool_id: pool_id.to_string(),
            phase: phase(p),
            live,
            ready,
            draining,
            pid,
            engine,
            engine_version,
            model_ref,
            device_mask,
            slots_total,
            slots_free,
            active_leases,
            last_error,
            last_heartbeat_ms,
            restart_count,
            crash_count,
            backoff_ms,
            breaker: breaker(b),
            vram_used_bytes,
            handoff_path,
            last_seq,
        };
        let real = serde_json::to_value(&status).unwrap();
        assert_eq!(real, serde_json::to_value(&mirror).unwrap());
        assert_eq!(keys(&real), properties("PoolStatus"));
    }

    #[test]
    fn prepared_engine_equals_the_core() {
        let full: pool_core::PreparedEngine = serde_json::from_value(serde_json::json!({
            "binary_path": "/usr/bin/llama-server",
            "flags": ["--parallel", "2"],
            "host": "127.0.0.1",
            "port": 8080,
            "model_path": "/m.gguf",
            "engine_version": "b1",
            "pool_id": "p1",
            "replica_id": "r0",
            "device_mask": "0",
            "engine": "llamacpp",
            "env": {"A": "1"},
            "health_path": "/health",
            "slots_total": 2,
            "vram_required_bytes": 1,
            "ram_required_bytes": 2,
            "tensor_split": "auto",
        }))
        .unwrap();
        let pool_core::PreparedEngine {
            binary_path,
            flags,
            host,
            port,
            model_path,
            engine_version,
            pool_id,
            replica_id,
            device_mask,
            engine,
            env,
            health_path,
            slots_total,
            vram_required_bytes,
            ram_required_bytes,
            tensor_split,
        } = full.clone();
        let _ = (
            binary_path,
            flags,
            host,
            port,
            model_path,
            engine_version,
            pool_id,
            replica_id,
            device_mask,
            engine,
            env,
            health_path,
            slots_total,
            vram_required_bytes,
            ram_required_bytes,
            tensor_split,
        );
        let real = serde_json::to_value(&full).unwrap();
        assert_eq!(keys(&real), properties("PreparedEngine"));
        // Exactly the schema's required fields are needed.
        let required = required("PreparedEngine");
        let minimal: serde_json::Map<String, Value> = required
            .iter()
            .map(|k| (k.clone(), real[k].clone()))
            .collect();
        serde_json::from_value::<pool_core::PreparedEngine>(Value::Object(minimal.clone()))
            .expect("the schema's required fields suffice");
        for k in &required {
            let mut less = minimal.clone();
            less.remove(k);
            assert!(
                serde_json::from_value::<pool_core::PreparedEngine>(Value::Object(less)).is_err(),
                "{k} is required by the schema but not by the type"
            );
        }
        let doc = document();
        assert_eq!(
            doc["components"]["schemas"]["PreparedEngine"]["additionalProperties"],
            false
        );
    }

    #[test]
    fn handoff_equals_the_core() {
        let full: pool_core::Handoff = serde_json::from_value(serde_json::json!({
            "engine": "llamacpp",
            "engine_version": "b1",
            "url": "http://127.0.0.1:8080",
            "pool_id": "p1",
            "replica_id": "r0",
            "model": {"path": "/m.gguf"},
            "flags": [],
            "device_mask": "0",
            "slots_total": 1,
            "pid": 7,
        }))
        .unwrap();
        let pool_core::Handoff {
            engine,
            engine_version,
            url,
            pool_id,
            replica_id,
            model: pool_core::HandoffModel { path },
            flags,
            device_mask,
            slots_total,
            pid,
        } = full.clone();
        let _ = (
            engine,
            engine_version,
            url,
            pool_id,
            replica_id,
            path,
            flags,
            device_mask,
            slots_total,
            pid,
        );
        let real = serde_json::to_value(&full).unwrap();
        assert_eq!(keys(&real), properties("Handoff"));
        assert_eq!(keys(&real["model"]), properties("HandoffModel"));
        let required = required("Handoff");
        let minimal: serde_json::Map<String, Value> = required
            .iter()
            .map(|k| (k.clone(), real[k].clone()))
            .collect();
        serde_json::from_value::<pool_core::Handoff>(Value::Object(minimal.clone()))
            .expect("the schema's required fields suffice");
        for k in &required {
            let mut less = minimal.clone();
            less.remove(k);
            assert!(
                serde_json::from_value::<pool_core::Handoff>(Value::Object(less)).is_err(),
                "{k} is required by the schema but not by the type"
            );
        }
    }

    #[test]
    fn gpu_equals_the_shell() {
        let process = crate::gpu::GpuProcess {
            pid: 1,
            used_bytes: 2,
            pool_id: Some("p1".into()),
        };
        let gpu = crate::gpu::Gpu {
            info: pool_core::GpuInfo {
                index: 0,
                uuid: "GPU-1".into(),
                name: "A100".into(),
                compute_capability: "8.0".into(),
                vram_total_bytes: 10,
                vram_free_bytes: 5,
            },
            mig_devices: vec![crate::gpu::MigDevice {
                info: pool_core::MigDeviceInfo {
                    uuid: "MIG-1".into(),
                    parent_index: 0,
                    name: "1g.10gb".into(),
                    vram_total_bytes: 1,
                    vram_free_bytes: 1,
                },
                processes: vec![process.clone()],
            }],
            processes: vec![process],
        };
        // Exhaustive destructurings: a field added to these types fails to build here.
        let crate::gpu::Gpu {
            info:
                pool_core::GpuInfo {
                    index,
                    uuid,
                    name,
                    compute_capability,
                    vram_total_bytes,
                    vram_free_bytes,
                },
            mig_devices,
            processes,
        } = gpu.clone();
        let process_mirror = |p: crate::gpu::GpuProcess| {
            let crate::gpu::GpuProcess {
                pid,
                used_bytes,
                pool_id,
            } = p;
            GpuProcessSchema {
                pid,
                used_bytes,
                pool_id,
            }
        };
        let mirror = GpuSchema {
            index,
            uuid,
            name,
            compute_capability,
            vram_total_bytes,
            vram_free_bytes,
            mig_devices: mig_devices
                .into_iter()
                .map(|m| {
                    let crate::gpu::MigDevice {
                        info:
                            pool_core::MigDeviceInfo {
                                uuid,
                                parent_index,
                                name,
                                vram_total_bytes,
                                vram_free_bytes,
                            },
                        processes,
                    } = m;
                    MigDeviceSchema {
                        uuid,
                        parent_index,
                        name,
                        vram_total_bytes,
                        vram_free_bytes,
                        processes: processes.into_iter().map(process_mirror).collect(),
                    }
                })
                .collect(),
            processes: processes.into_iter().map(process_mirror).collect(),
        };
        assert_eq!(
            serde_json::to_value(&gpu).unwrap(),
            serde_json::to_value(&mirror).unwrap()
        );
        assert_eq!(
            keys(&serde_json::to_value(&gpu).unwrap()),
            properties("Gpu")
        );
    }

    #[test]
    fn envelope_equals_the_journal_form() {
        let envelope = pool_journal::Envelope {
            seq: 3,
            ts_ms: 4,
            pool_id: Some("p1".to_string()),
            cause: Some(2),
            event: pool_core::Event::DaemonStarted {
                version: "0".into(),
                pid: 1,
            },
        };
        let json = pool_journal::envelope_to_json(&envelope);
        let Ok(json) = json else { panic!("{json:?}") };
        assert_eq!(keys(&json), properties("Envelope"));
        assert!(json["event"]["kind"].is_string());
    }
}
