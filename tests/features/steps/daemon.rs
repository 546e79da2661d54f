//! The daemon itself: starting it (with a configuration, on a node with or without GPUs),
//! restarting it over the same journal, its `/health`, and the registry it serves before and
//! after a restart.

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::Value;

use crate::live::Body;
use crate::world::PoolWorld;

#[given("a running daemon")]
async fn running_daemon(world: &mut PoolWorld) {
    world.start_daemon().await;
}

#[given(expr = "a running daemon on a node whose NVIDIA driver lists {int} GPU(s)")]
async fn running_daemon_with_gpus(world: &mut PoolWorld, gpus: u32) {
    world.setup_mut().gpus = Some(gpus);
    world.start_daemon().await;
}

/// A table of `| key | value |` rows, TOML keys with their table (`stop.grace_ms`).
#[given("a running daemon configured with:")]
async fn running_daemon_configured(world: &mut PoolWorld, step: &Step) {
    let table = step
        .table
        .as_ref()
        .unwrap_or_else(|| panic!("the step needs a table of | key | value |"));
    for row in &table.rows {
        let [key, value] = row.as_slice() else {
            panic!("each row is | key | value |, got {row:?}");
        };
        world.setup_mut().set(key, value);
    }
    world.start_daemon().await;
}

#[when("the daemon's health is requested")]
async fn health_requested(world: &mut PoolWorld) {
    world.request(Method::GET, "/health", Body::Empty).await;
}

#[then("the answer names the daemon's version")]
fn answer_names_version(world: &mut PoolWorld) {
    let answer = world.answer();
    assert_eq!(
        answer.body["version"].as_str(),
        Some(pool_managerd::daemon::VERSION),
        "version in {}",
        answer.body
    );
}

async fn journal_seq(world: &PoolWorld) -> (u64, Value) {
    let answer = world.peek(Method::GET, "/health").await;
    assert_eq!(answer.status, 200, "GET /health: {}", answer.body);
    let seq = answer.body["journal_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no journal_seq in {}", answer.body));
    (seq, answer.body)
}

#[given("the journal seq that the daemon's health shows is noted")]
async fn note_journal_seq(world: &mut PoolWorld) {
    let (seq, _) = journal_seq(world).await;
    assert!(
        seq > 0,
        "a started daemon has journaled at least its start (DaemonStarted)"
    );
    world.noted_seq = Some(seq);
}

#[then(expr = "the daemon's health shows {int} pool(s) and a journal seq past the noted one")]
async fn health_shows_more(world: &mut PoolWorld, pools: u64) {
    let noted = world
        .noted_seq
        .unwrap_or_else(|| panic!("no journal seq was noted"));
    let (seq, body) = journal_seq(world).await;
    assert!(
        seq > noted,
        "journal_seq {seq} should be past the noted {noted}: {body}"
    );
    assert_eq!(body["pools"].as_u64(), Some(pools), "pools in {body}");
}

#[when("the daemon is restarted over the same journal")]
async fn daemon_restarted(world: &mut PoolWorld) {
    world.daemon_mut().restart().await;
}

#[given("the list of pools is noted")]
async fn note_pools(world: &mut PoolWorld) {
    let answer = world.peek(Method::GET, "/v2/pools").await;
    assert_eq!(answer.status, 200, "GET /v2/pools: {}", answer.body);
    world.noted_pools = Some(answer.body);
}

/// The list without the fields named in `aside`, for comparisons.
fn without(list: &Value, aside: &[&str]) -> Value {
    let mut list = list.clone();
    for status in list.as_array_mut().into_iter().flatten() {
        if let Some(object) = status.as_object_mut() {
            for field in aside {
                object.remove(*field);
            }
        }
    }
    list
}

async fn pools_equal_noted(world: &mut PoolWorld, aside: &[&str]) {
    let noted = world
        .noted_pools
        .clone()
        .unwrap_or_else(|| panic!("no list of pools was noted"));
    let answer = world.peek(Method::GET, "/v2/pools").await;
    assert_eq!(answer.status, 200, "GET /v2/pools: {}", answer.body);
    assert!(
        noted.as_array().is_some_and(|pools| !pools.is_empty()),
        "the noted list has pools to compare: {noted}"
    );
    assert_eq!(
        without(&answer.body, aside),
        without(&noted, aside),
        "GET /v2/pools now (left) and as noted (right), {aside:?} aside"
    );
}

#[then("the list of pools equals the noted one, heartbeats aside")]
async fn pools_equal_heartbeats_aside(world: &mut PoolWorld) {
    pools_equal_noted(world, &["last_heartbeat_ms"]).await;
}

#[then("the list of pools equals the noted one, heartbeats and seqs aside")]
async fn pools_equal_heartbeats_seqs_aside(world: &mut PoolWorld) {
    pools_equal_noted(world, &["last_heartbeat_ms", "last_seq"]).await;
}

#[then(expr = "the daemon's health shows {int} pool(s)")]
async fn health_shows_pools(world: &mut PoolWorld, pools: u64) {
    let (_, body) = journal_seq(world).await;
    assert_eq!(body["pools"].as_u64(), Some(pools), "pools in {body}");
}
