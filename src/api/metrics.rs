//! `GET /metrics`: the node's Prometheus exposition, read at each scrape.
//!
//! Owns: the handler only (what is measured and how it is rendered is `crate::metrics`).
//! **Must never:** record a metric or touch the world beyond reading the leaves' memory.

use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pool_core::GpuInfo;

use super::ApiState;
use crate::metrics::{self, render_engine_memory, render_journal};

/// `GET /metrics`: the Prometheus text exposition of this daemon (behind the bearer token
/// when one is set, like every route but `/health`).
pub async fn scrape(AxumState(state): AxumState<ApiState>) -> Response {
    let node = state.node();
    let published = node.registry().load();
    let gpus: Option<Vec<GpuInfo>> = state
        .gpus()
        .map(|monitor| monitor.load().gpus.iter().map(|g| g.info.clone()).collect());
    let mut body = node.metrics().render(&published.state, gpus.as_deref());
    if let Some(cgroups) = node.cgroups().filter(|c| c.has_memory()) {
        let samples: Vec<(String, u64)> = published
            .state
            .pools
            .values()
            .filter_map(|pool| {
                // The pool's engine's leaf (its lane's, after a surge's switch).
                Some((
                    pool.id.as_str().to_string(),
                    cgroups.memory_current(pool.id.as_str(), pool.lane)?,
                ))
            })
            .collect();
        body.push_str(&render_engine_memory(&samples));
    }
    let journal = node.journal_report();
    body.push_str(&render_journal(
        &journal.health,
        &journal.usage,
        published.journal.queued,
    ));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}
