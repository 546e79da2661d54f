//! Leases: the orchestrator takes a slot (the daemon chooses the lease id; scenarios call the
//! lease by an alias such as "A") and gives it back; draining refuses new leases.
//!
//! `Given the orchestrator took lease ...` also drives the scripted core (journal feature),
//! where the alias is the lease id itself.

use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::json;

use crate::live::Body;
use crate::world::PoolWorld;

/// A lease id the daemon never grants (its ids are generated).
const NEVER_GRANTED: &str = "lease-that-was-never-granted";

async fn take_lease(world: &mut PoolWorld, alias: &str, pool: &str) {
    let answer = world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/leases"),
            Body::Empty,
        )
        .await
        .clone();
    if answer.status == 201 {
        let lease_id = answer.body["lease_id"]
            .as_str()
            .unwrap_or_else(|| panic!("a granted lease has a lease_id: {}", answer.body))
            .to_string();
        world
            .leases
            .insert((pool.to_string(), alias.to_string()), lease_id);
    }
}

#[when(expr = "the orchestrator takes lease {string} on pool {string}")]
async fn takes_lease(world: &mut PoolWorld, alias: String, pool: String) {
    take_lease(world, &alias, &pool).await;
}

#[given(expr = "the orchestrator took lease {string} on pool {string}")]
async fn took_lease(world: &mut PoolWorld, alias: String, pool: String) {
    if !world.has_daemon() {
        world
            .drive(|s| s.acquire_lease(&pool, &alias))
            .unwrap_or_else(|e| panic!("taking lease '{alias}' on pool '{pool}': {e}"));
        return;
    }
    take_lease(world, &alias, &pool).await;
    let answer = world.answer();
    assert_eq!(
        answer.status, 201,
        "taking lease \"{alias}\" on pool '{pool}': {}",
        answer.body
    );
}

#[when(expr = "the orchestrator returns lease {string} on pool {string}")]
async fn returns_lease(world: &mut PoolWorld, alias: String, pool: String) {
    let lease_id = world.lease_id(&pool, &alias);
    world
        .request(
            Method::DELETE,
            &format!("/v2/pools/{pool}/leases/{lease_id}"),
            Body::Empty,
        )
        .await;
}

#[given(expr = "the orchestrator returned lease {string} on pool {string}")]
async fn returned_lease(world: &mut PoolWorld, alias: String, pool: String) {
    returns_lease(world, alias.clone(), pool.clone()).await;
    let answer = world.answer();
    assert_eq!(
        answer.status, 200,
        "returning lease \"{alias}\" on pool '{pool}': {}",
        answer.body
    );
}

#[when(expr = "the orchestrator returns a lease that was never granted on pool {string}")]
async fn returns_unknown_lease(world: &mut PoolWorld, pool: String) {
    world
        .request(
            Method::DELETE,
            &format!("/v2/pools/{pool}/leases/{NEVER_GRANTED}"),
            Body::Empty,
        )
        .await;
}

#[then("the answer names a new lease")]
fn answer_names_lease(world: &mut PoolWorld) {
    let answer = world.answer();
    assert!(
        answer.body["lease_id"]
            .as_str()
            .is_some_and(|id| !id.trim().is_empty()),
        "a lease id in {}",
        answer.body
    );
}

#[then(expr = "leases {string} and {string} of pool {string} have different ids")]
fn leases_differ(world: &mut PoolWorld, first: String, second: String, pool: String) {
    let (a, b) = (
        world.lease_id(&pool, &first),
        world.lease_id(&pool, &second),
    );
    assert_ne!(a, b, "two leases with one id");
}

#[given(expr = "pool {string} is asked to drain within {int} ms")]
async fn drain(world: &mut PoolWorld, pool: String, deadline_ms: u64) {
    let answer = world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/drain"),
            Body::Json(json!({ "deadline_ms": deadline_ms })),
        )
        .await;
    assert_eq!(
        answer.status, 202,
        "drain of pool '{pool}': {}",
        answer.body
    );
}

/// The drain request itself, its answer kept for `Then the answer ...` steps.
#[when(expr = "the orchestrator drains pool {string} with a deadline of {int} ms")]
async fn orchestrator_drains(world: &mut PoolWorld, pool: String, deadline_ms: u64) {
    world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/drain"),
            Body::Json(json!({ "deadline_ms": deadline_ms })),
        )
        .await;
}

/// The warning of a drain that reached its deadline names each lease still held. Reads the
/// log of a daemon in its own process, which writes it once the stop is journaled.
#[then(
    expr = "the daemon's log warns that lease {string} of pool {string} was held at the drain deadline"
)]
async fn log_warns_of_lease(world: &mut PoolWorld, alias: String, pool: String) {
    let lease_id = world.lease_id(&pool, &alias);
    let warned = |log: &str| {
        log.lines().any(|line| {
            line.contains("WARN")
                && line.contains("drain deadline reached")
                && line.contains(&lease_id)
                && line.contains(&pool)
        })
    };
    let deadline = std::time::Instant::now() + crate::world::EVENTUALLY;
    loop {
        let log = world.daemon().process_log();
        if warned(&log) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warning naming lease {lease_id} of pool '{pool}' at the drain deadline in the daemon's log:\n{log}"
        );
        tokio::time::sleep(crate::world::POLL).await;
    }
}
