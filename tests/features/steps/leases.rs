//! Leases and the commands around them: taking and returning leases, draining, and whether the
//! last command was accepted or rejected with which code.

use cucumber::{given, then, when};

use pool_managerd::script::ScriptError;

use crate::world::PoolWorld;

#[when(expr = "the orchestrator takes lease {string} on pool {string}")]
fn take_lease(world: &mut PoolWorld, lease: String, pool: String) {
    world.command(format!("taking lease '{lease}' on pool '{pool}'"), |s| {
        s.acquire_lease(&pool, &lease)
    });
}

#[given(expr = "the orchestrator took lease {string} on pool {string}")]
fn took_lease(world: &mut PoolWorld, lease: String, pool: String) {
    world
        .drive(|s| s.acquire_lease(&pool, &lease))
        .unwrap_or_else(|e| panic!("taking lease '{lease}' on pool '{pool}': {e}"));
}

#[when(expr = "the orchestrator returns lease {string} on pool {string}")]
fn return_lease(world: &mut PoolWorld, lease: String, pool: String) {
    world.command(format!("returning lease '{lease}' on pool '{pool}'"), |s| {
        s.release_lease(&pool, &lease)
    });
}

#[given(expr = "the orchestrator returned lease {string} on pool {string}")]
fn returned_lease(world: &mut PoolWorld, lease: String, pool: String) {
    world
        .drive(|s| s.release_lease(&pool, &lease))
        .unwrap_or_else(|e| panic!("returning lease '{lease}' on pool '{pool}': {e}"));
}

#[given(expr = "pool {string} is asked to drain within {int} ms")]
fn drain(world: &mut PoolWorld, pool: String, deadline_ms: u64) {
    world
        .drive(|s| s.drain(&pool, deadline_ms))
        .unwrap_or_else(|e| panic!("draining pool '{pool}': {e}"));
    let status = world.status(&pool);
    assert!(
        status.draining,
        "pool '{pool}' should be draining: {status:?}"
    );
}

#[then("it is accepted")]
fn accepted(world: &mut PoolWorld) {
    let outcome = world.take_outcome();
    match outcome.result {
        Ok(events) => assert!(
            events > 0,
            "{} was accepted but recorded no event",
            outcome.what
        ),
        Err(error) => panic!("{} should be accepted, got: {error}", outcome.what),
    }
}

#[then(expr = "it is rejected with {word}")]
fn rejected(world: &mut PoolWorld, code: String) {
    let outcome = world.take_outcome();
    match outcome.result {
        Err(ScriptError::Rejected(rejection)) => assert_eq!(
            rejection.code(),
            code,
            "{} was rejected with: {rejection}",
            outcome.what
        ),
        Err(other) => panic!(
            "{} should be rejected with {code}, got: {other}",
            outcome.what
        ),
        Ok(events) => panic!(
            "{} should be rejected with {code}, but was accepted ({events} events)",
            outcome.what
        ),
    }
}
