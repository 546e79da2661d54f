//! Health: the engine's health check passing or timing out, the handoff that makes a pool
//! ready, a new preload after a failure, and the pool's last error.

use cucumber::{given, then, when};

use crate::world::PoolWorld;

#[when(expr = "the engine of pool {string} passes its health check with {int} slot(s)")]
fn passes_health(world: &mut PoolWorld, pool: String, slots: u32) {
    world.pass_health_check(&pool, slots);
}

#[when(expr = "the handoff file of pool {string} is written")]
fn handoff_written(world: &mut PoolWorld, pool: String) {
    world.write_handoff(&pool);
}

#[when(expr = "the engine of pool {string} never becomes healthy")]
fn never_becomes_healthy(world: &mut PoolWorld, pool: String) {
    world.never_healthy(&pool);
}

#[given(expr = "the engine of pool {string} never became healthy")]
fn never_became_healthy(world: &mut PoolWorld, pool: String) {
    world.never_healthy(&pool);
    let status = world.status(&pool);
    assert!(
        !status.ready && status.last_error.is_some(),
        "pool '{pool}' should have failed: {status:?}"
    );
}

#[when(expr = "pool {string} is preloaded again and becomes ready with {int} slot(s)")]
fn preloaded_again(world: &mut PoolWorld, pool: String, slots: u32) {
    world.ready_pool(&pool, slots);
}

#[then(expr = "pool {string} has a last error containing {string}")]
fn last_error_contains(world: &mut PoolWorld, pool: String, text: String) {
    let status = world.status(&pool);
    let error = status
        .last_error
        .as_deref()
        .unwrap_or_else(|| panic!("pool '{pool}' has no last error: {status:?}"));
    assert!(
        error.contains(&text),
        "last error of pool '{pool}' is '{error}', without '{text}'"
    );
}

#[then(expr = "pool {string} has no last error")]
fn no_last_error(world: &mut PoolWorld, pool: String) {
    let status = world.status(&pool);
    assert_eq!(status.last_error, None, "last error of pool '{pool}'");
}
