//! Handlers of the routes that read (the daemon's health, the pools, one pool, its health, its
//! events): one function per route, shapes of SPEC section 5; the routes that change a pool
//! are in `commands.rs`.
//!
//! Owns: request and answer shapes, query parsing, the mapping of node outcomes to statuses.
//! Never: keeps state of its own.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::dto;
use super::openapi::{ApiErrorBody, EnvelopeSchema};
use super::{ApiError, ApiState, PoolPath};

/// Default and largest page of `GET .../events`.
const EVENTS_LIMIT_DEFAULT: usize = 1_000;

/// `GET /health`'s `status`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum DaemonStatus {
    /// Serving.
    Ok,
    /// Serving; the journal cannot take writes now (a full, read-only or failing disk), so
    /// changes answer `JOURNAL_UNAVAILABLE` until it can again, or its background scrub found
    /// a damaged segment (`journal.damage`) (200).
    Degraded,
    /// The journal failed: no further changes until restarted (503, with `journal_error`).
    JournalFailed,
}

/// `GET /health`'s `gpu`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct GpuHealth {
    /// A usable GPU was found.
    available: bool,
    /// How many.
    count: u32,
    /// Whether preloads need a GPU (`require_gpu`; `--dev` turns it off).
    required: bool,
    /// Why none is usable (the preflight's verdict, or the last reading's).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `GET /health`'s `journal`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JournalHealth {
    /// Changes are recorded (and so accepted); `false` while the disk refuses writes.
    writable: bool,
    /// Why not: the journal directory and the operating system's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// `enospc`, `erofs`, `eio` or `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Since when (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    since_ms: Option<u64>,
    /// Observations kept in memory until they can be recorded.
    queued_observations: usize,
    /// The earliest seq still held (retention drops older ones).
    first_seq: u64,
    /// Sealed segments.
    segments: u64,
    /// Bytes on disk (segments, live store, snapshots).
    bytes: u64,
    /// Damage found in sealed segments by the background scrub (each names the file and the
    /// way out); changes are still recorded, reads that reach the damage fail.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    damage: Vec<String>,
}

/// `GET /health`: daemon liveness.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DaemonHealth {
    /// `ok`; `degraded` while the journal cannot take writes (reads work, changes answer
    /// `JOURNAL_UNAVAILABLE`); `journal_failed` (503) when it failed for good.
    status: DaemonStatus,
    /// The daemon's version.
    version: String,
    /// Seq of the last durable event.
    journal_seq: u64,
    /// Pools in the registry.
    pools: usize,
    /// GPUs as the last reading (or the start-up preflight) saw them.
    gpu: GpuHealth,
    /// Whether the journal takes writes, and its retained range and size.
    journal: JournalHealth,
    /// Why the journal failed (with `status: journal_failed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    journal_error: Option<String>,
}

/// `GET /health`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "daemon",
    operation_id = "daemon_health",
    security(()),
    responses(
        (status = 200, description = "The daemon is up (`status: ok`), or up with a journal \
            that cannot take writes (`status: degraded`, `journal.writable: false`)", body = DaemonHealth),
        (status = 503, description = "The journal failed (`status: journal_failed`, `journal_error`): \
            no further changes until restarted", body = DaemonHealth),
    )
)]
pub(super) async fn daemon_health(State(state): State<ApiState>) -> Response {
    let published = state.node().registry().load();
    // The live view of the last GPU reading, else the start-up verdict.
    let live = state.gpus().map(|monitor| monitor.load());
    let gpu = live.as_ref().map_or(&published.gpu, |view| &view.summary);
    let report = state.node().journal_report();
    let view = &published.journal;
    let body = DaemonHealth {
        status: if view.failed.is_some() {
            DaemonStatus::JournalFailed
        } else if !view.writable || !report.health.damage.is_empty() {
            DaemonStatus::Degraded
        } else {
            DaemonStatus::Ok
        },
        version: state.inner.version.clone(),
        journal_seq: published.state.last_seq(),
        pools: published.state.pools.len(),
        gpu: GpuHealth {
            available: gpu.available,
            count: gpu.count,
            required: gpu.required,
            reason: published
                .state
                .node
                .preflight_error
                .as_ref()
                .or(gpu.reason.as_ref())
                .cloned(),
        },
        journal: JournalHealth {
            writable: view.writable,
            error: view.error.clone(),
            kind: view.kind.map(str::to_string),
            since_ms: view.since_ms,
            queued_observations: view.queued,
            first_seq: report.usage.first_seq,
            segments: report.usage.segments,
            bytes: report.usage.total_bytes(),
            damage: report.health.damage.clone(),
        },
        journal_error: view.failed.clone(),
    };
    if body.journal_error.is_some() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(body).into_response()
}

#[utoipa::path(
    get,
    path = "/v2/pools",
    tag = "pools",
    operation_id = "list_pools",
    params(AtSeq),
    responses(
        (status = 200, description = "All pools, sorted by id", body = [dto::PoolStatus]),
        (status = 400, description = "`INVALID_REQUEST`: a bad query (`at_seq` beyond the journal's last event)", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 410, description = "`HISTORY_EXPIRED`: `at_seq` is before the earliest seq retention keeps", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL`: the journal could not be replayed", body = ApiErrorBody),
    )
)]
/// `GET /v2/pools`: the cached body (serialized once per change); with `?at_seq=N`, the
/// registry as it was right after event N, replayed from the nearest snapshot (what
/// `pool-managerd replay --until-seq N --json` prints as `pools`; N = 0: no pools; N past the
/// journal's end: `INVALID_REQUEST` naming its last seq).
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<AtSeq>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let Some(seq) = query.at_seq else {
        return Ok((
            [(header::CONTENT_TYPE, "application/json")],
            state.node().registry().statuses_body(|statuses| {
                let wire: Vec<dto::PoolStatus> = statuses.into_iter().map(Into::into).collect();
                serde_json::to_vec(&wire)
            }),
        )
            .into_response());
    };
    let past = if seq == 0 {
        std::sync::Arc::new(pool_core::State::default())
    } else {
        state.node().state_at(seq).await?
    };
    let wire: Vec<dto::PoolStatus> = past.statuses().into_iter().map(Into::into).collect();
    Ok(Json(wire).into_response())
}

/// `?at_seq=N`: the registry as it was right after event N (replayed).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AtSeq {
    /// A seq of the journal, at most its last (`journal_seq` of `GET /health`).
    at_seq: Option<u64>,
}

/// `GET /v2/pools/{id}` and `/status` (and the compatibility `POST /pools/{id}/status`).
#[utoipa::path(
    get,
    path = "/v2/pools/{id}",
    tag = "pools",
    operation_id = "get_pool",
    params(super::openapi::PoolIdParam, AtSeq),
    responses(
        (status = 200, description = "The pool (as it was after event `at_seq`, when given)", body = dto::PoolStatus),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or query (`at_seq` beyond the journal's last event)", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 410, description = "`HISTORY_EXPIRED`: `at_seq` is before the earliest seq retention keeps", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL`: the journal could not be replayed", body = ApiErrorBody),
    )
)]
pub(super) async fn get_one(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    query: Result<Query<AtSeq>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let status = match query.at_seq {
        None => state.node().registry().status(pool_id.as_str()),
        Some(seq) => state.node().state_at(seq).await?.status(pool_id.as_str()),
    };
    let status = status.ok_or_else(|| {
        ApiError::from(pool_core::Rejection::PoolNotFound {
            pool_id: pool_id.to_string(),
        })
    })?;
    Ok(Json(dto::PoolStatus::from(status)).into_response())
}

/// `GET /v2/pools/{id}/explain[?at_seq=N]`: why the pool is in its phase.
#[utoipa::path(
    get,
    path = "/v2/pools/{id}/explain",
    tag = "pools",
    operation_id = "explain_pool",
    params(super::openapi::PoolIdParam, AtSeq),
    responses(
        (status = 200, description = "Why the pool is in its phase (as it was after event \
            `at_seq`, when given): since when, the causal chain with each step's seq and time, \
            what the daemon does next and when, what an operator can do", body = dto::Explanation),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or query (`at_seq` beyond the journal's last event)", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`: no such pool (then)", body = ApiErrorBody),
        (status = 410, description = "`HISTORY_EXPIRED`: `at_seq` is before the earliest seq retention keeps", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL`: the journal could not be read", body = ApiErrorBody),
    )
)]
pub(super) async fn explain(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    query: Result<Query<AtSeq>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let explanation = state
        .node()
        .explain(pool_id.clone(), query.at_seq)
        .await?
        .ok_or_else(|| {
            ApiError::from(pool_core::Rejection::PoolNotFound {
                pool_id: pool_id.to_string(),
            })
        })?;
    Ok(Json(dto::Explanation::from(explanation)).into_response())
}

/// `GET /v2/pools/{id}/health`: the orchestrator's view of a pool.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PoolHealth {
    /// An engine process exists.
    live: bool,
    /// It serves.
    ready: bool,
    /// A drain is in progress.
    draining: bool,
    /// Last failure.
    last_error: Option<String>,
    /// Free slots.
    slots_free: u32,
}

/// `GET /v2/pools/{id}/health`: the orchestrator's view.
#[utoipa::path(
    get,
    path = "/v2/pools/{id}/health",
    tag = "pools",
    operation_id = "pool_health",
    params(super::openapi::PoolIdParam),
    responses(
        (status = 200, description = "The orchestrator's view of the pool", body = PoolHealth),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
    )
)]
pub(super) async fn pool_health(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    let status = state
        .node()
        .registry()
        .status(pool_id.as_str())
        .ok_or_else(|| {
            ApiError::from(pool_core::Rejection::PoolNotFound {
                pool_id: pool_id.to_string(),
            })
        })?;
    Ok(Json(PoolHealth {
        live: status.live,
        ready: status.ready,
        draining: status.draining,
        last_error: status.last_error,
        slots_free: status.slots_free,
    })
    .into_response())
}

/// `?since=&limit=` of `GET /v2/pools/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// First seq (inclusive); default 1.
    since: Option<u64>,
    /// At most this many events (default 1000, clamped to 1..=100000).
    limit: Option<usize>,
}

/// `GET /v2/pools/{id}/events?since=&limit=`: the pool's history, oldest first.
#[utoipa::path(
    get,
    path = "/v2/pools/{id}/events",
    tag = "pools",
    operation_id = "pool_events",
    params(super::openapi::PoolIdParam, EventsQuery),
    responses(
        (status = 200, description = "The pool's events, oldest first", body = [EnvelopeSchema]),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or query", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`: no event of the pool was ever journaled", body = ApiErrorBody),
        (status = 410, description = "`HISTORY_EXPIRED`: `since` is before the earliest seq retention keeps", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL`: the journal could not be read", body = ApiErrorBody),
    )
)]
pub(super) async fn events(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let limit = query
        .limit
        .unwrap_or(EVENTS_LIMIT_DEFAULT)
        .clamp(1, pool_journal::MAX_READ_POOL_LIMIT);
    if state.node().registry().status(pool_id.as_str()).is_none() && query.since.is_none() {
        // A removed pool still has a history; an id never seen has none: say so.
        let events = state.node().pool_events(pool_id.clone(), 1, 1).await?;
        if events.is_empty() {
            return Err(ApiError::from(pool_core::Rejection::PoolNotFound {
                pool_id: pool_id.to_string(),
            }));
        }
    }
    let envelopes = state
        .node()
        .pool_events(pool_id, query.since.unwrap_or(1), limit)
        .await?;
    Ok(Json(super::events::envelopes_json(&envelopes)?).into_response())
}

// ---- handoff route (SPEC 6, engines started by someone else) ----
