//! `GET /v2/gpus`: the GPUs of the last reading (SPEC section 10), each with its MIG devices
//! and compute processes, a process naming its pool when it is a pool's engine, and whether
//! it is quarantined; `POST /v2/gpus/{uuid}/unquarantine` ends a GPU's quarantine.
//!
//! Owns: the routes' answers.
//! Never: calls NVML or reads a file: it shows the [`crate::gpu::GpuMonitor`]'s last view
//! (the observation loop refreshes it every `[gpu] poll_interval_ms`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pool_core::Command;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::openapi::ApiErrorBody;
use super::{ApiError, ApiState};

/// The longest GPU UUID accepted in a path, in bytes.
const GPU_UUID_MAX: usize = 256;

/// `GET /v2/gpus`: 200 `[Gpu]`; with no GPU, 200 `[]` (and `/health` says why).
#[utoipa::path(
    get,
    path = "/v2/gpus",
    tag = "gpus",
    operation_id = "list_gpus",
    responses(
        (status = 200, description = "The GPUs of the last reading with their MIG devices and compute processes; `[]` with no GPU", body = [super::dto::Gpu]),
        (status = 401, description = "`UNAUTHORIZED`", body = super::openapi::ApiErrorBody),
    )
)]
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    match state.gpus() {
        Some(monitor) => {
            let gpus = monitor.load().gpus.clone();
            let published = state.node().registry().load();
            let node = &published.state.node;
            let wire: Vec<super::dto::Gpu> = gpus
                .into_iter()
                .map(|gpu| super::dto::Gpu::from(gpu).with_quarantine(node))
                .collect();
            Json(wire).into_response()
        }
        None => Json(Vec::<super::dto::Gpu>::new()).into_response(),
    }
}

/// The `{uuid}` of a GPU route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the documentation only
pub(super) struct GpuUuidParam {
    /// The GPU's UUID (`GPU-...`, as `GET /v2/gpus` lists it; case does not matter).
    uuid: String,
}

/// `POST /v2/gpus/{uuid}/unquarantine`: the GPU after it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Unquarantined {
    /// The GPU.
    gpu_uuid: String,
    /// Always `false`: engines may start on it again.
    quarantined: bool,
}

/// `POST /v2/gpus/{uuid}/unquarantine`: ends the GPU's quarantine (`GpuUnquarantined`, `by`
/// `api`); its fault count starts again from zero. Pools it held stay failed until preloaded.
/// A GPU that is not quarantined answers 200 as well.
#[utoipa::path(
    post,
    path = "/v2/gpus/{uuid}/unquarantine",
    tag = "gpus",
    operation_id = "unquarantine_gpu",
    params(GpuUuidParam),
    responses(
        (status = 200, description = "The GPU is not quarantined (any more)", body = Unquarantined),
        (status = 400, description = "`INVALID_REQUEST`: no such GPU on this node", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL` (journal failure)", body = ApiErrorBody),
        (status = 503, description = "`JOURNAL_UNAVAILABLE` (the journal cannot take writes: nothing was recorded); `INTERNAL` (shutting down)", body = ApiErrorBody),
    )
)]
pub(super) async fn unquarantine(
    State(state): State<ApiState>,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    if uuid.is_empty() || uuid.len() > GPU_UUID_MAX || uuid.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "the GPU UUID must be 1 to {GPU_UUID_MAX} printable bytes; GET /v2/gpus lists them"
        )));
    }
    state
        .node()
        .submit(Command::UnquarantineGpu {
            gpu_uuid: uuid.clone(),
            by: "api".to_string(),
        })
        .await?;
    Ok(Json(Unquarantined {
        gpu_uuid: uuid,
        quarantined: false,
    })
    .into_response())
}
