//! Handlers of the API routes (one function per route; shapes of SPEC section 5).
//!
//! Owns: request and answer shapes, query parsing, the mapping of node outcomes to statuses.
//! Never: keeps state of its own.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pool_core::{Command, LeaseId, Observation, PreparedEngine};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, JsonBody, PoolPath};

/// Default and largest page of `GET .../events`.
const EVENTS_LIMIT_DEFAULT: usize = 1_000;

/// `GET /health`.
pub(super) async fn daemon_health(State(state): State<ApiState>) -> Response {
    let published = state.node().registry().load();
    // The live view of the last GPU reading, else the start-up verdict.
    let live = state.gpus().map(|monitor| monitor.load());
    let gpu = live.as_ref().map_or(&published.gpu, |view| &view.summary);
    let mut body = json!({
        "status": if published.journal_failure.is_some() { "journal_failed" } else { "ok" },
        "version": state.inner.version,
        "journal_seq": published.state.last_seq(),
        "pools": published.state.pools.len(),
        "gpu": {
            "available": gpu.available,
            "count": gpu.count,
            "required": gpu.required,
        },
    });
    if let Some(reason) = published
        .state
        .node
        .preflight_error
        .as_ref()
        .or(gpu.reason.as_ref())
    {
        body["gpu"]["reason"] = json!(reason);
    }
    if let Some(failure) = &published.journal_failure {
        body["journal_error"] = json!(failure);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(body).into_response()
}

/// `GET /v2/pools`: the cached body (serialized once per change).
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.node().registry().statuses_json(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct AtSeq {
    at_seq: Option<u64>,
}

/// `GET /v2/pools/{id}` and `/status` (and the compatibility `POST /pools/{id}/status`).
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
    Ok(Json(status).into_response())
}

/// `GET /v2/pools/{id}/health`: the orchestrator's view.
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
    Ok(Json(json!({
        "live": status.live,
        "ready": status.ready,
        "draining": status.draining,
        "last_error": status.last_error,
        "slots_free": status.slots_free,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PreloadBody {
    prepared: PreparedEngine,
}

#[derive(Debug, Deserialize)]
pub(super) struct PreloadQuery {
    wait: Option<bool>,
}

/// `POST /v2/pools/{id}/preload` (and `POST /pools/{id}/preload`).
pub(super) async fn preload(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    query: Result<Query<PreloadQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody<PreloadBody>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid(format!("query: {e} (wait=true|false)")))?;
    let wait = query.wait.unwrap_or(true);
    if let Err(refused) = state.check_binary(&body.prepared.binary_path) {
        // A known pool records the refusal as its last error.
        let _ = state
            .node()
            .submit(Observation::PreloadRefused {
                pool_id: pool_id.clone(),
                code: refused.code.to_string(),
                reason: refused.message.clone(),
            })
            .await;
        return Err(refused);
    }
    let outcome = state
        .node()
        .preload(pool_id.clone(), body.prepared, wait)
        .await?;
    let status = outcome.status;
    if !wait {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "pool_id": pool_id,
                "accepted": true,
                "phase": status.phase,
            })),
        )
            .into_response());
    }
    Ok(Json(json!({
        "pool_id": pool_id,
        "pid": status.pid,
        "handoff_path": status.handoff_path,
        "engine_version": status.engine_version,
        "slots_total": status.slots_total,
        "ready_ms": outcome.ready_ms,
    }))
    .into_response())
}

/// `POST /v2/pools/{id}/leases`: 201 with the new lease.
pub(super) async fn acquire_lease(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    let (lease_id, after) = state.node().acquire_lease(pool_id.clone()).await?;
    let pool = after.pool(pool_id.as_str());
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "lease_id": lease_id,
            "active_leases": pool.map_or(0, |p| p.active_leases()),
            "slots_free": pool.map_or(0, |p| p.slots_free()),
        })),
    )
        .into_response())
}

/// `DELETE /v2/pools/{id}/leases/{lease_id}`.
pub(super) async fn release_lease(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    Path((_, lease_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let lease_id = LeaseId::new(&lease_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let committed = state
        .node()
        .submit(Command::ReleaseLease {
            pool_id: pool_id.clone(),
            lease_id,
        })
        .await?;
    let pool = committed.state.pool(pool_id.as_str());
    Ok(Json(json!({
        "active_leases": pool.map_or(0, |p| p.active_leases()),
        "slots_free": pool.map_or(0, |p| p.slots_free()),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainBody {
    deadline_ms: u64,
}

/// `POST /v2/pools/{id}/drain`: 202 once draining is durable. A drain of a pool already
/// draining joins it (same answer; the first deadline stands).
pub(super) async fn drain(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    JsonBody(body): JsonBody<DrainBody>,
) -> Result<Response, ApiError> {
    state
        .node()
        .submit(Command::Drain {
            pool_id: pool_id.clone(),
            deadline_ms: body.deadline_ms,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"pool_id": pool_id, "draining": true})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReloadBody {
    new_model_ref: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    drain_deadline_ms: Option<u64>,
}

/// `POST /v2/pools/{id}/reload`: waits until the new model serves (200), the staging failed
/// (`MODEL_NOT_FOUND`, the running engine untouched), or the reload failed after staging
/// (`RELOAD_FAILED` with `rolled_back`).
pub(super) async fn reload(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    JsonBody(body): JsonBody<ReloadBody>,
) -> Result<Response, ApiError> {
    let outcome = state
        .node()
        .reload(
            pool_id.clone(),
            body.new_model_ref,
            body.digest,
            body.drain_deadline_ms,
        )
        .await?;
    Ok(Json(json!({
        "pool_id": pool_id,
        "engine_version": outcome.status.engine_version,
        "model_ref": outcome.status.model_ref,
        "duration_ms": outcome.duration_ms,
        "noop": outcome.noop,
    }))
    .into_response())
}

/// `POST /v2/pools/{id}/stop`: 202 once the stop is durable; the engine stops in the
/// background (SIGTERM, grace, SIGKILL).
pub(super) async fn stop(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    let committed = state
        .node()
        .submit(Command::Stop {
            pool_id: pool_id.clone(),
        })
        .await?;
    let phase = committed.state.status(pool_id.as_str()).map(|s| s.phase);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"pool_id": pool_id, "stopping": true, "phase": phase})),
    )
        .into_response())
}

/// `POST /v2/pools/{id}/breaker/reset`.
pub(super) async fn reset_breaker(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    let committed = state
        .node()
        .submit(Command::ResetBreaker {
            pool_id: pool_id.clone(),
            by: "api".to_string(),
        })
        .await?;
    let status = committed.state.status(pool_id.as_str());
    Ok(Json(json!({
        "pool_id": pool_id,
        "breaker": status.as_ref().map(|s| s.breaker),
        "phase": status.as_ref().map(|s| s.phase),
    }))
    .into_response())
}

/// `DELETE /v2/pools/{id}`: stops the engine and forgets the pool; answers once it is gone.
pub(super) async fn remove(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    state.node().remove(pool_id.clone()).await?;
    Ok(Json(json!({"pool_id": pool_id, "removed": true})).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v2/pools/{id}/events?since=&limit=`: the pool's history, oldest first.
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
    let body: Vec<serde_json::Value> = envelopes
        .iter()
        .filter_map(|e| pool_journal::envelope_to_json(e).ok())
        .collect();
    Ok(Json(body).into_response())
}

// ---- handoff route (SPEC 6, engines started by someone else) ----
/// `POST /v2/pools/{id}/handoff`: the handoff document of an engine started by someone else;
/// validated (400 naming the field), probed (`POOL_UNREADY` unless `{url}/health` answers
/// 200), then registered with path `"api"`; 200 with the pool's status.
pub(super) async fn register_handoff(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    JsonBody(handoff): JsonBody<pool_core::Handoff>,
) -> Result<Response, ApiError> {
    use crate::supervisor::handoff as watcher;
    handoff
        .validate()
        .map_err(|(field, why)| ApiError::invalid(format!("field '{field}': {why}")))?;
    if handoff.pool_id != pool_id.as_str() {
        return Err(ApiError::invalid(format!(
            "field 'pool_id': '{}' does not match the pool '{pool_id}' of the path",
            handoff.pool_id
        )));
    }
    if let Err(why) = watcher::probe_health(&watcher::probe_client(), &handoff.url).await {
        return Err(ApiError::new(
            "POOL_UNREADY",
            format!("the handed-off engine is not healthy: {why}; retry once it answers 200"),
        ));
    }
    let committed = state
        .node()
        .submit(Command::RegisterHandoff {
            pool_id: pool_id.clone(),
            handoff,
            path: "api".to_string(),
        })
        .await?;
    Ok(Json(committed.state.status(pool_id.as_str())).into_response())
}
