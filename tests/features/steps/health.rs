//! The orchestrator's view of a pool: `GET /v2/pools/{id}/health` (live, ready, draining,
//! last_error, slots_free).

use cucumber::when;
use reqwest::Method;

use crate::live::Body;
use crate::world::PoolWorld;

#[when(expr = "the health of pool {string} is requested")]
async fn health_requested(world: &mut PoolWorld, pool: String) {
    world
        .request(
            Method::GET,
            &format!("/v2/pools/{pool}/health"),
            Body::Empty,
        )
        .await;
}
