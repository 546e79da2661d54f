//! Pools in the registry: their status (live, ready, phase, counts, last error, engine
//! version), the sorted list, absence. The checks read the registry under test: the daemon's
//! API when the scenario runs one, the scripted core otherwise (the journal feature).

use cucumber::{given, then, when};
use reqwest::Method;

use crate::live::Body;
use crate::steps::params::{list, Liveness, Readiness};
use crate::world::PoolWorld;

#[given(expr = "pool {string} was preloaded and became ready with {int} slot(s)")]
async fn pool_became_ready(world: &mut PoolWorld, pool: String, slots: u32) {
    if world.has_daemon() {
        world.prepare_engine_sim(&pool, &format!("--parallel {slots}"));
        world.preload_ready(&pool).await;
    } else {
        world.script_ready_pool(&pool, slots);
    }
}

#[when(expr = "the status of pool {string} is requested")]
async fn status_requested(world: &mut PoolWorld, pool: String) {
    world
        .request(Method::GET, &format!("/v2/pools/{pool}"), Body::Empty)
        .await;
}

#[when("the list of pools is requested")]
async fn list_requested(world: &mut PoolWorld) {
    world.request(Method::GET, "/v2/pools", Body::Empty).await;
}

#[then(expr = "the answer lists the pools {string}")]
fn answer_lists(world: &mut PoolWorld, pools: String) {
    let answer = world.answer();
    let listed: Vec<String> = answer
        .body
        .as_array()
        .unwrap_or_else(|| panic!("{} is not a list: {}", answer.request, answer.body))
        .iter()
        .map(|status| status["pool_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, list(&pools), "the pools listed, in order");
}

#[then("the answer lists no pool")]
fn answer_lists_none(world: &mut PoolWorld) {
    let answer = world.answer();
    assert_eq!(
        answer.body,
        serde_json::json!([]),
        "{} should list no pool",
        answer.request
    );
}

#[then(expr = "the answer shows the pid of the engine of pool {string}")]
async fn answer_shows_pid(world: &mut PoolWorld, pool: String) {
    let engine = world.engine_of(&pool).await;
    let answer = world.answer();
    assert_eq!(
        answer.body["pid"].as_u64(),
        Some(u64::from(engine.pid)),
        "pid in {}",
        answer.body
    );
    assert!(
        engine.is_running(),
        "the engine pid {} should run",
        engine.pid
    );
}

#[then(expr = "pool {string} is {liveness} and {readiness}")]
async fn pool_is(world: &mut PoolWorld, pool: String, live: Liveness, ready: Readiness) {
    let status = world.status(&pool).await;
    assert_eq!(status.live, live.0, "pool '{pool}' live: {status:?}");
    assert_eq!(status.ready, ready.0, "pool '{pool}' ready: {status:?}");
}

#[then(expr = "pool {string} is in phase {string}")]
async fn pool_in_phase(world: &mut PoolWorld, pool: String, phase: String) {
    let status = world.status(&pool).await;
    assert_eq!(status.phase.as_str(), phase, "pool '{pool}': {status:?}");
}

#[then(expr = "pool {string} becomes live")]
async fn pool_becomes_live(world: &mut PoolWorld, pool: String) {
    world
        .status_becomes(&pool, "live", |s| s.is_some_and(|s| s.live))
        .await;
}

#[then(expr = "pool {string} becomes ready")]
async fn pool_becomes_ready(world: &mut PoolWorld, pool: String) {
    world
        .status_becomes(&pool, "ready", |s| s.is_some_and(|s| s.ready))
        .await;
}

#[then(expr = "pool {string} reaches phase {string}")]
async fn pool_reaches_phase(world: &mut PoolWorld, pool: String, phase: String) {
    world
        .status_becomes(&pool, &format!("phase {phase}"), |s| {
            s.is_some_and(|s| s.phase.as_str() == phase)
        })
        .await;
}

#[then(expr = "pool {string} is ready with {int} slot(s)")]
async fn pool_ready_with_slots(world: &mut PoolWorld, pool: String, slots: u32) {
    let status = world.status(&pool).await;
    assert!(status.ready, "pool '{pool}' should be ready: {status:?}");
    assert_eq!(
        (status.slots_total, status.slots_free),
        (slots, slots),
        "(slots_total, slots_free) of pool '{pool}': {status:?}"
    );
}

#[then(expr = "pool {string} has {int} active lease(s) and {int} free slot(s)")]
async fn pool_has_leases_and_slots(world: &mut PoolWorld, pool: String, leases: u32, free: u32) {
    let status = world.status(&pool).await;
    assert_eq!(
        (status.active_leases, status.slots_free),
        (leases, free),
        "(active leases, free slots) of pool '{pool}': {status:?}"
    );
    if !world.has_daemon() {
        assert_eq!(
            world.registry().active_leases(&pool),
            leases,
            "the registry's lease count of pool '{pool}'"
        );
    }
}

#[then(expr = "pool {string} has a last error containing {string}")]
async fn last_error_contains(world: &mut PoolWorld, pool: String, text: String) {
    let status = world.status(&pool).await;
    let error = status
        .last_error
        .as_deref()
        .unwrap_or_else(|| panic!("pool '{pool}' has no last error: {status:?}"));
    assert!(
        error.contains(&text),
        "last error of pool '{pool}' is {error:?}, without {text:?}"
    );
}

#[then(expr = "pool {string} has no last error")]
async fn no_last_error(world: &mut PoolWorld, pool: String) {
    let status = world.status(&pool).await;
    assert_eq!(status.last_error, None, "last error of pool '{pool}'");
}

#[then(expr = "pool {string} shows the engine version {string}")]
async fn shows_engine_version(world: &mut PoolWorld, pool: String, version: String) {
    let status = world.status(&pool).await;
    assert_eq!(
        status.engine_version.as_deref(),
        Some(version.as_str()),
        "engine_version of pool '{pool}': {status:?}"
    );
}

#[then(expr = "pool {string} is not in the registry")]
async fn pool_absent(world: &mut PoolWorld, pool: String) {
    if world.has_daemon() {
        let answer = world.peek(Method::GET, &format!("/v2/pools/{pool}")).await;
        assert_eq!(
            (answer.status, answer.body["code"].as_str()),
            (404, Some("POOL_NOT_FOUND")),
            "GET /v2/pools/{pool}: {}",
            answer.body
        );
        let listed = world.peek(Method::GET, "/v2/pools").await;
        assert!(
            listed
                .body
                .as_array()
                .is_some_and(|pools| pools.iter().all(|p| p["pool_id"] != pool.as_str())),
            "pool '{pool}' is listed: {}",
            listed.body
        );
        return;
    }
    let registry = world.registry();
    assert_eq!(registry.status(&pool), None, "pool '{pool}'");
    assert_eq!(
        registry.active_leases(&pool),
        0,
        "leases of unknown pool '{pool}'"
    );
}
