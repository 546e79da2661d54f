//! Pools in the registry: setting them up (starting, ready) and reading their status (live,
//! ready, phase, counts, the sorted listing, absence).

use std::str::FromStr;

use cucumber::{given, then, Parameter};

use crate::world::PoolWorld;

/// `live` or `not live` (an engine process exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "liveness", regex = "live|not live")]
pub struct Liveness(bool);

impl FromStr for Liveness {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "live" => Ok(Liveness(true)),
            "not live" => Ok(Liveness(false)),
            other => Err(format!("expected 'live' or 'not live', got '{other}'")),
        }
    }
}

/// `ready` or `not ready` (the pool serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "readiness", regex = "ready|not ready")]
pub struct Readiness(bool);

impl FromStr for Readiness {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ready" => Ok(Readiness(true)),
            "not ready" => Ok(Readiness(false)),
            other => Err(format!("expected 'ready' or 'not ready', got '{other}'")),
        }
    }
}

#[given(expr = "a ready pool {string} with {int} slot(s)")]
fn a_ready_pool(world: &mut PoolWorld, pool: String, slots: u32) {
    world.ready_pool(&pool, slots);
}

#[given(expr = "pool {string} was preloaded and became ready with {int} slot(s)")]
fn pool_became_ready(world: &mut PoolWorld, pool: String, slots: u32) {
    world.ready_pool(&pool, slots);
}

#[given(expr = "a registered pool {string} that is still starting")]
fn a_starting_pool(world: &mut PoolWorld, pool: String) {
    world.start_pool(&pool, None);
    let status = world.status(&pool);
    assert!(
        status.live && !status.ready,
        "pool '{pool}' should be starting: {status:?}"
    );
}

#[then(expr = "pool {string} is {liveness} and {readiness}")]
fn pool_is(world: &mut PoolWorld, pool: String, live: Liveness, ready: Readiness) {
    let status = world.status(&pool);
    assert_eq!(status.live, live.0, "pool '{pool}' live: {status:?}");
    assert_eq!(status.ready, ready.0, "pool '{pool}' ready: {status:?}");
}

#[then(expr = "pool {string} is in phase {string}")]
fn pool_in_phase(world: &mut PoolWorld, pool: String, phase: String) {
    let status = world.status(&pool);
    assert_eq!(status.phase.as_str(), phase, "pool '{pool}': {status:?}");
}

#[then(expr = "pool {string} has {int} active lease(s)")]
fn pool_has_leases(world: &mut PoolWorld, pool: String, leases: u32) {
    assert_eq!(
        world.registry().active_leases(&pool),
        leases,
        "active leases of pool '{pool}'"
    );
}

#[then(expr = "pool {string} has {int} active lease(s) and {int} free slot(s)")]
fn pool_has_leases_and_slots(world: &mut PoolWorld, pool: String, leases: u32, free: u32) {
    let status = world.status(&pool);
    assert_eq!(
        (status.active_leases, status.slots_free),
        (leases, free),
        "(active leases, free slots) of pool '{pool}': {status:?}"
    );
    assert_eq!(
        world.registry().active_leases(&pool),
        leases,
        "the registry's lease count of pool '{pool}'"
    );
}

#[then(expr = "the registry lists the pools {string}")]
fn registry_lists(world: &mut PoolWorld, pools: String) {
    let expected: Vec<&str> = pools.split(',').map(str::trim).collect();
    let listed: Vec<String> = world
        .registry()
        .statuses()
        .iter()
        .map(|status| status.pool_id.to_string())
        .collect();
    assert_eq!(listed, expected, "the registry's pools, in order");
}

#[then(expr = "pool {string} is not in the registry")]
fn pool_absent(world: &mut PoolWorld, pool: String) {
    let registry = world.registry();
    assert_eq!(registry.status(&pool), None, "pool '{pool}'");
    assert!(
        registry
            .statuses()
            .iter()
            .all(|status| status.pool_id.as_str() != pool),
        "pool '{pool}' is listed"
    );
    assert_eq!(
        registry.active_leases(&pool),
        0,
        "leases of unknown pool '{pool}'"
    );
}
