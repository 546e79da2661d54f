//! Handlers of the routes that change a pool (preload, leases, drain, reload, stop, breaker
//! reset, removal, handoff): each one a command to the node, its outcome mapped to a status.
//!
//! Owns: those request and answer shapes. Never: keeps state of its own.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pool_core::{Command, LeaseId, Observation, PoolId, PreparedEngine};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::dto;
use super::openapi::{ApiErrorBody, HandoffSchema, PreparedEngineSchema};
use super::{ApiError, ApiState, JsonBody, PoolPath};
use crate::port::HandoffRefused;

/// `POST /v2/pools/{id}/preload`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PreloadBody {
    /// The engine provisioner's output; `prepared.pool_id` must equal the path's id.
    #[schema(value_type = PreparedEngineSchema)]
    prepared: PreparedEngine,
}

/// `?wait=false`: answer 202 once the preload is durable, without waiting for the engine.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PreloadQuery {
    /// Wait until ready or failed (default `true`).
    wait: Option<bool>,
}

/// `POST /v2/pools/{id}/preload`: the engine serves.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PreloadReady {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// The engine's pid.
    pid: Option<u32>,
    /// The handoff file written for it.
    handoff_path: Option<String>,
    /// The engine's version.
    engine_version: Option<String>,
    /// Slots it serves.
    slots_total: u32,
    /// From the request to ready.
    ready_ms: u64,
}

/// `POST /v2/pools/{id}/preload?wait=false`: accepted, the engine starts in the background.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PreloadAccepted {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// Always `true`.
    accepted: bool,
    /// The pool's phase once the preload is durable.
    phase: dto::Phase,
}

/// `POST /v2/pools/{id}/preload` (and `POST /pools/{id}/preload`).
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/preload",
    tag = "pools",
    operation_id = "preload",
    params(super::openapi::PoolIdParam, PreloadQuery),
    request_body = PreloadBody,
    responses(
        (status = 200, description = "The engine is ready", body = PreloadReady),
        (status = 202, description = "`?wait=false`: accepted; the engine starts in the background", body = PreloadAccepted),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id, query or body (the error names the field), or a `prepared.env` key that is a loader or shell hook or not in `[engines] env_allow` (the error names the key)", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 403, description = "`BINARY_NOT_ALLOWED`: `prepared.binary_path`, with its symlinks resolved, is not under `allowed_binaries`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`, `POOL_DRAINING`", body = ApiErrorBody),
        (status = 413, description = "`INVALID_REQUEST`: the body is over 1 MiB", body = ApiErrorBody),
        (status = 422, description = "`INVALID_DEVICE_MASK`, `MODEL_NOT_FOUND`", body = ApiErrorBody),
        (status = 500, description = "`SPAWN_FAILED`, `HEALTH_TIMEOUT`, `ENGINE_EXITED`, `CPU_SPILLOVER`, `PORT_IN_USE`; `INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`GPU_REQUIRED`, `INSUFFICIENT_VRAM`, `CIRCUIT_OPEN` (with `Retry-After`), `GPU_QUARANTINED` (a GPU of the mask, or any GPU for a pool without one, is quarantined: no `Retry-After`, it lasts until `POST /v2/gpus/{uuid}/unquarantine`); `JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody, headers(("Retry-After" = u64, description = "With `CIRCUIT_OPEN`: whole seconds (rounded up, at least 1) until the breaker half-opens; with `POOL_UNREADY` while the pool is in backoff: until its restart is due"))),
        (status = 504, description = "`INTERNAL`: the wait gave up (the preload goes on)", body = ApiErrorBody),
    )
)]
pub(super) async fn preload(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    query: Result<Query<PreloadQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody<PreloadBody>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid(format!("query: {e} (wait=true|false)")))?;
    let wait = query.wait.unwrap_or(true);
    if let Err(refused) = state.check_engine(&body.prepared) {
        // A known pool records the refusal as its last error.
        let _ = state
            .node()
            .submit(Observation::PreloadRefused {
                pool_id: pool_id.clone(),
                code: refused.code,
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
            Json(PreloadAccepted {
                pool_id,
                accepted: true,
                phase: status.phase.into(),
            }),
        )
            .into_response());
    }
    Ok(Json(PreloadReady {
        pool_id,
        pid: status.pid,
        handoff_path: status.handoff_path,
        engine_version: status.engine_version,
        slots_total: status.slots_total,
        ready_ms: outcome.ready_ms,
    })
    .into_response())
}

/// `POST /v2/pools/{id}/leases`: the new lease.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LeaseAcquired {
    /// Give it back with `DELETE /v2/pools/{id}/leases/{lease_id}`.
    #[schema(value_type = String)]
    lease_id: LeaseId,
    /// Leases held now.
    active_leases: u32,
    /// Free slots now.
    slots_free: u32,
}

/// `DELETE /v2/pools/{id}/leases/{lease_id}`: the slots after the release.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LeaseReleased {
    /// Leases held now.
    active_leases: u32,
    /// Free slots now.
    slots_free: u32,
}

/// `POST /v2/pools/{id}/leases`: 201 with the new lease.
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/leases",
    tag = "leases",
    operation_id = "acquire_lease",
    params(super::openapi::PoolIdParam),
    responses(
        (status = 201, description = "One slot taken", body = LeaseAcquired),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 409, description = "`POOL_DRAINING`, `POOL_BUSY`", body = ApiErrorBody),
        (status = 429, description = "`SLOTS_EXHAUSTED`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`POOL_UNREADY` (with `Retry-After` while the pool is in backoff), `CIRCUIT_OPEN` (with `Retry-After`); `JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody, headers(("Retry-After" = u64, description = "With `CIRCUIT_OPEN`: whole seconds (rounded up, at least 1) until the breaker half-opens; with `POOL_UNREADY` while the pool is in backoff: until its restart is due"))),
    )
)]
pub(super) async fn acquire_lease(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    let (lease_id, after) = state.node().acquire_lease(pool_id.clone()).await?;
    let pool = after.pool(pool_id.as_str());
    Ok((
        StatusCode::CREATED,
        Json(LeaseAcquired {
            lease_id,
            active_leases: pool.map_or(0, |p| p.active_leases()),
            slots_free: pool.map_or(0, |p| p.slots_free()),
        }),
    )
        .into_response())
}

/// `DELETE /v2/pools/{id}/leases/{lease_id}`.
#[utoipa::path(
    delete,
    path = "/v2/pools/{id}/leases/{lease_id}",
    tag = "leases",
    operation_id = "release_lease",
    params(
        super::openapi::PoolIdParam,
        ("lease_id" = String, Path, description = "A lease id from `POST /v2/pools/{id}/leases` (printable ASCII, no spaces)", pattern = "^[!-~]{1,128}$"),
    ),
    responses(
        (status = 200, description = "The slot is free again", body = LeaseReleased),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool or lease id", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`, `LEASE_NOT_FOUND`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
    )
)]
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
    Ok(Json(LeaseReleased {
        active_leases: pool.map_or(0, |p| p.active_leases()),
        slots_free: pool.map_or(0, |p| p.slots_free()),
    })
    .into_response())
}

/// `POST /v2/pools/{id}/drain`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainBody {
    /// How long leases may run on before the engine is stopped anyway.
    deadline_ms: u64,
}

/// `POST /v2/pools/{id}/drain`: accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DrainAccepted {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// Always `true`.
    draining: bool,
}

/// `POST /v2/pools/{id}/drain`: 202 once draining is durable. A drain of a pool already
/// draining joins it (same answer; the first deadline stands).
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/drain",
    tag = "pools",
    operation_id = "drain",
    params(super::openapi::PoolIdParam),
    request_body = DrainBody,
    responses(
        (status = 202, description = "Draining (durable)", body = DrainAccepted),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or body", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`", body = ApiErrorBody),
        (status = 413, description = "`INVALID_REQUEST`: the body is over 1 MiB", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`POOL_UNREADY`; `JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
    )
)]
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
        Json(DrainAccepted {
            pool_id,
            draining: true,
        }),
    )
        .into_response())
}

/// `POST /v2/pools/{id}/reload`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReloadBody {
    /// The model file to serve instead.
    new_model_ref: String,
    /// Its expected digest (`sha256:<hex>`), checked while staging.
    #[serde(default)]
    digest: Option<String>,
    /// The drain before the switch (`drain_first`), or the old engine's drain after it
    /// (`surge`).
    #[serde(default)]
    drain_deadline_ms: Option<u64>,
    /// How to replace the engine (default `auto`).
    #[serde(default)]
    strategy: dto::ReloadStrategyAsked,
}

/// `POST /v2/pools/{id}/reload`: the new model serves.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReloadDone {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// The engine's version now.
    engine_version: Option<String>,
    /// The model served now.
    model_ref: Option<String>,
    /// How long the reload took.
    duration_ms: u64,
    /// The model was already served: nothing was done.
    noop: bool,
    /// How the engine was replaced (absent for a no-op).
    strategy: Option<dto::ReloadStrategy>,
    /// Why that strategy, in words (absent for a no-op).
    strategy_reason: Option<String>,
    /// Where new leases are served now.
    url: Option<String>,
}

/// `POST /v2/pools/{id}/reload`: waits until the new model serves (200), the staging failed
/// (`MODEL_NOT_FOUND`, the running engine untouched), or the reload failed after staging
/// (`RELOAD_FAILED` with `rolled_back`; a failed surge is rolled back: the old engine never
/// stopped). `strategy` `surge` without a free port of `[reload] surge_ports`, or with a new
/// engine that does not fit beside the old one, is refused.
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/reload",
    tag = "pools",
    operation_id = "reload",
    params(super::openapi::PoolIdParam),
    request_body = ReloadBody,
    responses(
        (status = 200, description = "The new model serves", body = ReloadDone),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or body (an unknown `strategy`), or `strategy` `surge` with no free port of `[reload] surge_ports`", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`, `POOL_DRAINING`", body = ApiErrorBody),
        (status = 413, description = "`INVALID_REQUEST`: the body is over 1 MiB", body = ApiErrorBody),
        (status = 422, description = "`MODEL_NOT_FOUND`: staging failed; the running engine is untouched", body = ApiErrorBody),
        (status = 500, description = "`RELOAD_FAILED` (with `rolled_back`; `true` after a failed surge: the old engine never stopped), `SPAWN_FAILED`, `HEALTH_TIMEOUT`, `ENGINE_EXITED`; `INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`POOL_UNREADY` (with `Retry-After` while the pool is in backoff), `CIRCUIT_OPEN` (with `Retry-After`), `GPU_REQUIRED`, `INSUFFICIENT_VRAM`; `JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody, headers(("Retry-After" = u64, description = "With `CIRCUIT_OPEN`: whole seconds (rounded up, at least 1) until the breaker half-opens; with `POOL_UNREADY` while the pool is in backoff: until its restart is due"))),
        (status = 504, description = "`INTERNAL`: the wait gave up (the reload goes on)", body = ApiErrorBody),
    )
)]
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
            body.strategy.into(),
        )
        .await?;
    let (strategy, strategy_reason) = outcome
        .chosen
        .map(|c| (c.strategy.into(), c.reason))
        .unzip();
    Ok(Json(ReloadDone {
        pool_id,
        engine_version: outcome.status.engine_version,
        model_ref: outcome.status.model_ref,
        duration_ms: outcome.duration_ms,
        noop: outcome.noop,
        strategy,
        strategy_reason,
        url: outcome.status.url,
    })
    .into_response())
}

/// `POST /v2/pools/{id}/stop`: accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StopAccepted {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// Always `true`.
    stopping: bool,
    /// The pool's phase once the stop is durable.
    phase: Option<dto::Phase>,
}

/// `POST /v2/pools/{id}/stop`: 202 once the stop is durable; the engine stops in the
/// background (SIGTERM, grace, SIGKILL).
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/stop",
    tag = "pools",
    operation_id = "stop",
    params(super::openapi::PoolIdParam),
    responses(
        (status = 202, description = "Stopping (durable)", body = StopAccepted),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
    )
)]
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
    let phase = committed
        .state
        .status(pool_id.as_str())
        .map(|s| s.phase.into());
    Ok((
        StatusCode::ACCEPTED,
        Json(StopAccepted {
            pool_id,
            stopping: true,
            phase,
        }),
    )
        .into_response())
}

/// `POST /v2/pools/{id}/breaker/reset`: the breaker after the reset.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BreakerReset {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// The breaker now.
    breaker: Option<dto::BreakerState>,
    /// The pool's phase now.
    phase: Option<dto::Phase>,
}

/// `POST /v2/pools/{id}/breaker/reset`.
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/breaker/reset",
    tag = "pools",
    operation_id = "reset_breaker",
    params(super::openapi::PoolIdParam),
    responses(
        (status = 200, description = "The breaker is closed", body = BreakerReset),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
    )
)]
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
    Ok(Json(BreakerReset {
        pool_id,
        breaker: status.as_ref().map(|s| s.breaker.into()),
        phase: status.as_ref().map(|s| s.phase.into()),
    })
    .into_response())
}

/// `DELETE /v2/pools/{id}`: gone.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Removed {
    /// The pool.
    #[schema(value_type = String)]
    pool_id: PoolId,
    /// Always `true`.
    removed: bool,
}

/// `DELETE /v2/pools/{id}`: stops the engine and forgets the pool; answers once it is gone.
#[utoipa::path(
    delete,
    path = "/v2/pools/{id}",
    tag = "pools",
    operation_id = "remove_pool",
    params(super::openapi::PoolIdParam),
    responses(
        (status = 200, description = "The engine is stopped and the pool forgotten", body = Removed),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
        (status = 504, description = "`INTERNAL`: the wait gave up (the removal goes on)", body = ApiErrorBody),
    )
)]
pub(super) async fn remove(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
) -> Result<Response, ApiError> {
    state.node().remove(pool_id.clone()).await?;
    Ok(Json(Removed {
        pool_id,
        removed: true,
    })
    .into_response())
}

/// `POST /v2/pools/{id}/handoff`: the handoff document of an engine started by someone else;
/// validated (400 naming the field), probed (`POOL_UNREADY` unless `{url}/health` answers
/// 200), then registered with path `"api"`; 200 with the pool's status.
#[utoipa::path(
    post,
    path = "/v2/pools/{id}/handoff",
    tag = "pools",
    operation_id = "register_handoff",
    params(super::openapi::PoolIdParam),
    request_body = HandoffSchema,
    responses(
        (status = 200, description = "Registered: the pool's status", body = dto::PoolStatus),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or body (the error names the field; `pool_id` must equal the path's)", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 409, description = "`POOL_BUSY`: the pool runs an engine of ours", body = ApiErrorBody),
        (status = 413, description = "`INVALID_REQUEST`: the body is over 1 MiB", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`POOL_UNREADY`: `{url}/health` did not answer 200; `JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
    )
)]
pub(super) async fn register_handoff(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    JsonBody(handoff): JsonBody<pool_core::Handoff>,
) -> Result<Response, ApiError> {
    handoff
        .validate()
        .map_err(|(field, why)| ApiError::invalid(format!("field '{field}': {why}")))?;
    if handoff.pool_id != pool_id.as_str() {
        return Err(ApiError::invalid(format!(
            "field 'pool_id': '{}' does not match the pool '{pool_id}' of the path",
            handoff.pool_id
        )));
    }
    match state.handoff_check().check(&handoff).await {
        Ok(()) => {}
        Err(HandoffRefused::Invalid { field, why }) => {
            return Err(ApiError::invalid(format!("field '{field}': {why}")));
        }
        Err(HandoffRefused::Unhealthy(why)) => {
            return Err(ApiError::new(
                pool_core::ErrorCode::PoolUnready,
                format!("the handed-off engine is not healthy: {why}; retry once it answers 200"),
            ));
        }
    }
    let committed = state
        .node()
        .submit(Command::RegisterHandoff {
            pool_id: pool_id.clone(),
            handoff,
            path: "api".to_string(),
        })
        .await?;
    let status = committed.state.status(pool_id.as_str());
    Ok(Json(status.map(dto::PoolStatus::from)).into_response())
}
