//! `GET /v2/gpus`: the GPUs of the last reading (SPEC section 10), each with its MIG devices
//! and compute processes, a process naming its pool when it is a pool's engine.
//!
//! Owns: the route's answer.
//! Never: calls NVML or reads a file: it shows the [`crate::gpu::GpuMonitor`]'s last view
//! (the observation loop refreshes it every `[gpu] poll_interval_ms`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ApiState;

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
            let wire: Vec<super::dto::Gpu> = gpus.into_iter().map(Into::into).collect();
            Json(wire).into_response()
        }
        None => Json(Vec::<super::dto::Gpu>::new()).into_response(),
    }
}
