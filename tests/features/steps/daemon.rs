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

// ---- a daemon in its own process, killed for real (adoption) ----

#[given("a running daemon in its own process")]
async fn running_daemon_process(world: &mut PoolWorld) {
    world.setup_mut().own_process = true;
    world.start_daemon().await;
}

/// A table of `| key | value |` rows, as for `a running daemon configured with:`.
#[given("a running daemon in its own process, configured with:")]
async fn running_daemon_process_configured(world: &mut PoolWorld, step: &Step) {
    world.setup_mut().own_process = true;
    running_daemon_configured(world, step).await;
}

#[when("the daemon process is killed with SIGKILL")]
fn daemon_process_killed(world: &mut PoolWorld) {
    world.daemon_mut().kill_hard();
}

/// SIGTERM, the clean shutdown of `serve` (ctrl-c, systemd stop); it must exit 0.
#[when("the daemon process is stopped with SIGTERM")]
async fn daemon_process_terminated(world: &mut PoolWorld) {
    let status = world.daemon_mut().terminate().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "serve did not exit 0 on SIGTERM: {status:?}"
    );
}

#[when("the daemon process is started again")]
async fn daemon_process_started_again(world: &mut PoolWorld) {
    world.daemon_mut().start_again().await;
}

#[then(expr = "the noted engine of pool {string} is still running")]
fn noted_engine_still_running(world: &mut PoolWorld, pool: String) {
    let noted = noted_engine(world, &pool);
    assert!(
        noted.is_running(),
        "the engine of pool '{pool}' (pid {}) outlives the daemon",
        noted.pid
    );
}

/// The engine dies while no daemon watches it (its pid is not reused: nothing else starts).
#[when(expr = "the noted engine of pool {string} is killed by SIGKILL while the daemon is down")]
async fn noted_engine_killed(world: &mut PoolWorld, pool: String) {
    assert!(
        !world.daemon().is_running(),
        "the daemon is still running; kill it first"
    );
    let noted = noted_engine(world, &pool);
    assert!(
        noted.signal_group(nix::sys::signal::Signal::SIGKILL),
        "the engine of pool '{pool}' (pid {}) was not running",
        noted.pid
    );
    let deadline = std::time::Instant::now() + crate::world::EVENTUALLY;
    while noted.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine of pool '{pool}' (pid {}) survived SIGKILL",
            noted.pid
        );
        tokio::time::sleep(crate::world::POLL).await;
    }
}

#[then(expr = "pool {string} runs a new engine, not the noted one")]
async fn runs_new_engine(world: &mut PoolWorld, pool: String) {
    let noted = noted_engine(world, &pool);
    let engine = world.engine_of(&pool).await;
    assert_ne!(
        engine.pid, noted.pid,
        "pool '{pool}' runs a new engine, not the noted pid"
    );
    assert!(
        engine.is_running(),
        "the new engine (pid {}) runs",
        engine.pid
    );
    assert!(
        !noted.is_running(),
        "the noted engine (pid {}) is gone",
        noted.pid
    );
}

fn noted_engine(world: &PoolWorld, pool: &str) -> crate::engines::EngineProcess {
    world
        .noted_engines
        .get(pool)
        .copied()
        .unwrap_or_else(|| panic!("the engine of pool '{pool}' was not noted"))
}

#[then(expr = "the noted engine of pool {string} is gone")]
async fn noted_engine_gone(world: &mut PoolWorld, pool: String) {
    let noted = noted_engine(world, &pool);
    let deadline = std::time::Instant::now() + crate::world::EVENTUALLY;
    while noted.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the noted engine of pool '{pool}' (pid {}) still runs",
            noted.pid
        );
        tokio::time::sleep(crate::world::POLL).await;
    }
}
