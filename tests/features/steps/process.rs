//! Engine processes as `/proc` shows them (binary, flags, process group, session, stdin,
//! environment), stopping and removing pools, engines that end by themselves, and the pool's
//! history (`GET /v2/pools/{id}/events`) that records it all.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::Value;

use crate::engines::EngineProcess;
use crate::live::Body;
use crate::steps::params::{list, Json};
use crate::world::{PoolWorld, EVENTUALLY, POLL};

/// Variables engines get from the daemon's own environment (SPEC section 6).
const PASSED: [&str; 3] = ["PATH", "HOME", "LANG"];

/// The engine of `pool`, which must be running.
async fn running_engine(world: &PoolWorld, pool: &str) -> EngineProcess {
    let engine = world.engine_of(pool).await;
    assert!(
        engine.is_running(),
        "the engine of pool '{pool}' (pid {}) should be running",
        engine.pid
    );
    engine
}

fn canonical(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[then(expr = "the engine of pool {string} is running")]
async fn engine_running(world: &mut PoolWorld, pool: String) {
    running_engine(world, &pool).await;
}

#[then(expr = "the engine of pool {string} is gone")]
async fn engine_gone(world: &mut PoolWorld, pool: String) {
    let engine = world.engine_of(&pool).await;
    PoolWorld::until(
        &format!(
            "the engine of pool '{pool}' (pid {}) should be gone",
            engine.pid
        ),
        || !engine.is_running(),
    )
    .await;
}

#[then(expr = "the engine of pool {string} runs the binary of its prepared engine")]
async fn engine_runs_binary(world: &mut PoolWorld, pool: String) {
    let engine = running_engine(world, &pool).await;
    let binary = world.prepared_mut(&pool)["binary_path"]
        .as_str()
        .unwrap_or_else(|| panic!("prepared engine without binary_path"))
        .to_string();
    assert_eq!(
        canonical(&engine.exe()),
        canonical(Path::new(&binary)),
        "/proc/{}/exe",
        engine.pid
    );
}

#[then(expr = "the engine of pool {string} was started with the prepared flags, in order")]
async fn engine_has_flags(world: &mut PoolWorld, pool: String) {
    let engine = running_engine(world, &pool).await;
    let prepared = world.prepared_mut(&pool).clone();
    let flags: Vec<String> = prepared["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f.as_str().unwrap_or_default().to_string())
        .collect();
    let cmdline = engine.cmdline();
    assert_eq!(
        cmdline.first().map(String::as_str),
        prepared["binary_path"].as_str(),
        "program of /proc/{}/cmdline: {cmdline:?}",
        engine.pid
    );
    assert_eq!(
        cmdline.get(1..).unwrap_or_default(),
        flags.as_slice(),
        "arguments of /proc/{}/cmdline",
        engine.pid
    );
}

#[then(expr = "the engine of pool {string} leads its own process group")]
async fn own_group(world: &mut PoolWorld, pool: String) {
    let engine = running_engine(world, &pool).await;
    let (group, _) = engine.group_and_session();
    assert_eq!(group, engine.pid, "process group of the engine");
    let (ours, _) = EngineProcess {
        pid: std::process::id(),
        start_time: 0,
    }
    .group_and_session();
    assert_ne!(group, ours, "the engine is not in the daemon's group");
}

#[then(expr = "the engine of pool {string} leads its own session")]
async fn own_session(world: &mut PoolWorld, pool: String) {
    let engine = running_engine(world, &pool).await;
    let (_, session) = engine.group_and_session();
    assert_eq!(session, engine.pid, "session of the engine");
}

#[then(expr = "the standard input of the engine of pool {string} is \\/dev\\/null")]
async fn stdin_null(world: &mut PoolWorld, pool: String) {
    let engine = running_engine(world, &pool).await;
    assert_eq!(
        engine.fd_target(0),
        Path::new("/dev/null"),
        "stdin of pid {}",
        engine.pid
    );
}

/// The engine's environment must be exactly PATH, HOME and LANG as the daemon has them, plus
/// the table's `| NAME | value |` rows (if any).
async fn check_environment(world: &PoolWorld, pool: &str, extra: BTreeMap<String, String>) {
    let engine = running_engine(world, pool).await;
    let mut expected: BTreeMap<String, String> = PASSED
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
        .collect();
    expected.extend(extra);
    let actual: BTreeMap<String, String> = engine.environment().into_iter().collect();
    assert_eq!(actual, expected, "/proc/{}/environ", engine.pid);
    let ours: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| !expected.contains_key(name))
        .collect();
    assert!(
        !ours.is_empty(),
        "the daemon's own environment should hold variables an engine must not see"
    );
}

#[then(
    expr = "the engine of pool {string} sees only PATH, HOME and LANG of the daemon's environment"
)]
async fn environment_scrubbed(world: &mut PoolWorld, pool: String) {
    check_environment(world, &pool, BTreeMap::new()).await;
}

#[then(
    expr = "the engine of pool {string} sees only PATH, HOME and LANG of the daemon's environment, and:"
)]
async fn environment_scrubbed_and(world: &mut PoolWorld, pool: String, step: &Step) {
    let table = step
        .table
        .as_ref()
        .unwrap_or_else(|| panic!("the step needs a table of | NAME | value |"));
    let extra = table
        .rows
        .iter()
        .map(|row| match row.as_slice() {
            [name, value] => (name.clone(), value.clone()),
            other => panic!("each row is | NAME | value |, got {other:?}"),
        })
        .collect();
    check_environment(world, &pool, extra).await;
}

#[when(expr = "pool {string} is stopped")]
async fn stopped(world: &mut PoolWorld, pool: String) {
    world
        .request(Method::POST, &format!("/v2/pools/{pool}/stop"), Body::Empty)
        .await;
}

#[given(expr = "pool {string} was stopped")]
async fn was_stopped(world: &mut PoolWorld, pool: String) {
    stopped(world, pool.clone()).await;
    let answer = world.answer();
    assert_eq!(answer.status, 202, "stop of pool '{pool}': {}", answer.body);
    world
        .status_becomes(&pool, "stopped", |s| {
            s.is_some_and(|s| s.phase.as_str() == "stopped")
        })
        .await;
}

#[when(expr = "pool {string} is removed")]
async fn removed(world: &mut PoolWorld, pool: String) {
    world
        .request(Method::DELETE, &format!("/v2/pools/{pool}"), Body::Empty)
        .await;
}

#[given(expr = "the engine of pool {string} is noted")]
async fn engine_noted(world: &mut PoolWorld, pool: String) {
    let engine = running_engine(world, &pool).await;
    world.noted_engines.insert(pool, engine);
}

#[then(expr = "the engine of pool {string} is the noted one, still running")]
async fn engine_is_noted(world: &mut PoolWorld, pool: String) {
    let noted = world
        .noted_engines
        .get(&pool)
        .copied()
        .unwrap_or_else(|| panic!("the engine of pool '{pool}' was not noted"));
    let status = world.status(&pool).await;
    assert_eq!(
        status.pid,
        Some(noted.pid),
        "the pool's engine is the noted one: {status:?}"
    );
    assert!(
        noted.is_running(),
        "the noted engine pid {} runs",
        noted.pid
    );
}

/// Waits (bounded) for the engine of `pool` to end on its own, and notes when it was seen
/// gone.
#[when(expr = "the engine of pool {string} exits by itself")]
async fn exits_by_itself(world: &mut PoolWorld, pool: String) {
    let engine = world.engine_of(&pool).await;
    let deadline = Instant::now() + EVENTUALLY;
    while engine.is_running() {
        assert!(
            Instant::now() < deadline,
            "the engine of pool '{pool}' (pid {}) did not exit within {EVENTUALLY:?}",
            engine.pid
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    world.exits_seen.insert(pool, (Instant::now(), engine.pid));
}

/// The pool is unready in the decision that records its engine's `EngineExited`: awaiting
/// that event (of the exited pid) tells when the daemon saw the exit, also when a restart,
/// the first of which is immediate, made the pool ready again before a poll of its status
/// could see it unready.
#[then(expr = "pool {string} was not ready any more {int} ms after its engine exited")]
async fn unready_soon_after_exit(world: &mut PoolWorld, pool: String, ms: u64) {
    let (exited, pid) = world
        .exits_seen
        .get(&pool)
        .copied()
        .unwrap_or_else(|| panic!("no exit of the engine of pool '{pool}' was seen"));
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let events = world.events(&pool).await;
        let recorded = events
            .iter()
            .any(|e| e["event"]["kind"] == "EngineExited" && e["event"]["pid"] == pid);
        if recorded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool '{pool}' recorded no EngineExited of pid {pid} within {EVENTUALLY:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let after = exited.elapsed();
    assert!(
        after.as_millis() < u128::from(ms),
        "pool '{pool}' recorded the exit of pid {pid} only {after:?} after it was seen gone"
    );
}

/// The kinds of the pool's events, oldest first.
async fn event_kinds(world: &PoolWorld, pool: &str) -> Vec<String> {
    world
        .events(pool)
        .await
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[then(expr = "the events of pool {string} include, in this order, {string}")]
async fn events_in_order(world: &mut PoolWorld, pool: String, kinds: String) {
    let recorded = event_kinds(world, &pool).await;
    let mut rest = recorded.iter();
    for kind in list(&kinds) {
        assert!(
            rest.any(|k| *k == kind),
            "the events of pool '{pool}' should include {kinds} in this order: {recorded:?}"
        );
    }
}

#[then(expr = "the events of pool {string} include no {string}")]
async fn events_exclude(world: &mut PoolWorld, pool: String, kind: String) {
    let recorded = event_kinds(world, &pool).await;
    assert!(
        !recorded.contains(&kind),
        "pool '{pool}' should have no {kind}: {recorded:?}"
    );
}

/// The last event of `kind` of the pool, eventually (effects are reported after the answer).
async fn last_event(world: &PoolWorld, pool: &str, kind: &str) -> Value {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let events = world.events(pool).await;
        if let Some(event) = events.iter().rev().find(|e| e["event"]["kind"] == kind) {
            return event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} among the events of pool '{pool}' within {EVENTUALLY:?}: {events:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[then(expr = "the events of pool {string} record {string} with {string} {json}")]
async fn event_records(
    world: &mut PoolWorld,
    pool: String,
    kind: String,
    field: String,
    value: Json,
) {
    let event = last_event(world, &pool, &kind).await;
    assert_eq!(
        event["event"][&field], value.0,
        "{field} of the last {kind} of pool '{pool}': {event}"
    );
}

#[then(
    expr = "the engine of pool {string} was stopped no sooner than {int} ms after the stop was asked"
)]
async fn stop_took(world: &mut PoolWorld, pool: String, ms: u64) {
    let asked = last_event(world, &pool, "EngineStopRequested").await;
    let stopped = last_event(world, &pool, "EngineStopped").await;
    let (asked_ms, stopped_ms) = (
        asked["ts_ms"].as_u64().unwrap_or(u64::MAX),
        stopped["ts_ms"].as_u64().unwrap_or(0),
    );
    assert!(
        stopped_ms.saturating_sub(asked_ms) >= ms && stopped_ms >= asked_ms,
        "stop asked at {asked_ms}, engine stopped at {stopped_ms}: less than {ms} ms"
    );
}

/// `GET http://host:port{health_path}` of the prepared engine of `pool`: status and body.
async fn engine_health(world: &mut PoolWorld, pool: &str) -> (u16, String) {
    let prepared = world.prepared_mut(pool).clone();
    let url = format!(
        "http://{}:{}{}",
        prepared["host"].as_str().unwrap_or("127.0.0.1"),
        prepared["port"],
        prepared["health_path"].as_str().unwrap_or("/health")
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("HTTP client: {e}"));
    // A live engine may not listen yet (its pid is known from the moment it is spawned):
    // a refused connection is retried, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let response = loop {
        match client.get(&url).send().await {
            Ok(response) => break response,
            Err(e) if e.is_connect() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    };
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Reads the pool's status, then asks its engine: an engine still loading after the status
/// was read was loading when it was read (loading ends once), so the pool was not ready while
/// its engine was loading.
#[then(expr = "pool {string} is not ready while its engine answers {int} {string}")]
async fn not_ready_while_loading(world: &mut PoolWorld, pool: String, code: u16, text: String) {
    let status = world.status(&pool).await;
    let (engine_status, body) = engine_health(world, &pool).await;
    assert_eq!(
        (engine_status, body.contains(&text)),
        (code, true),
        "the engine of pool '{pool}' should still be loading: {engine_status} {body}"
    );
    assert!(
        !status.ready,
        "pool '{pool}' is ready while its engine loads: {status:?}"
    );
}

#[then(expr = "the engine of pool {string} answers {int} on its health route")]
async fn engine_answers(world: &mut PoolWorld, pool: String, code: u16) {
    let (status, body) = engine_health(world, &pool).await;
    assert_eq!(status, code, "health route of pool '{pool}': {body}");
}
