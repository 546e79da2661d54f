//! Reload steps: model files in the scenario's directory, engines that load them (engine-sim
//! `--check-model`: a missing file, or one whose first line is `broken`, fails to load like a
//! bad model in llama-server), and `POST /v2/pools/{id}/reload`.

use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::json;

use crate::live::Body;
use crate::world::PoolWorld;

/// The path of the model file `name` in the scenario's directory.
fn model(world: &mut PoolWorld, name: &str) -> String {
    let dir = world.dir().join("models");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir.join(name).display().to_string()
}

#[given(expr = "a model file {string} that loads")]
fn good_model(world: &mut PoolWorld, name: String) {
    let path = model(world, &name);
    std::fs::write(&path, format!("a model: {name}\n")).unwrap_or_else(|e| panic!("{path}: {e}"));
}

#[given(expr = "a model file {string} that fails to load")]
fn broken_model(world: &mut PoolWorld, name: String) {
    let path = model(world, &name);
    std::fs::write(&path, "broken\n").unwrap_or_else(|e| panic!("{path}: {e}"));
}

#[given(expr = "pool {string} is ready serving the model {string}")]
async fn ready_on_model(world: &mut PoolWorld, pool: String, name: String) {
    let path = model(world, &name);
    world.prepare_engine_sim(&pool, "--check-model --load-ms 200");
    let prepared = world.prepared_mut(&pool);
    prepared["model_path"] = json!(path);
    prepared["device_mask"] = json!("GPU0");
    if let Some(flags) = prepared["flags"].as_array_mut() {
        // `-m <model>` follows `--port <port>` (see `engines::engine_sim`).
        flags[3] = json!(path);
    }
    world.preload_ready(&pool).await;
}

async fn reload(world: &mut PoolWorld, pool: &str, body: serde_json::Value) {
    world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/reload"),
            Body::Json(body),
        )
        .await;
}

#[when(expr = "pool {string} is reloaded to the model {string}")]
async fn reload_to(world: &mut PoolWorld, pool: String, name: String) {
    let path = model(world, &name);
    reload(
        world,
        &pool,
        json!({"new_model_ref": path, "drain_deadline_ms": 5000}),
    )
    .await;
}

#[when(expr = "pool {string} is reloaded to the model {string} with the strategy {string}")]
async fn reload_with_strategy(world: &mut PoolWorld, pool: String, name: String, strategy: String) {
    let path = model(world, &name);
    let body = json!({"new_model_ref": path, "strategy": strategy, "drain_deadline_ms": 5000});
    reload(world, &pool, body).await;
}

#[when(expr = "pool {string} is reloaded to the model {string} with the digest {string}")]
async fn reload_with_digest(world: &mut PoolWorld, pool: String, name: String, digest: String) {
    let path = model(world, &name);
    let body = json!({"new_model_ref": path, "digest": digest, "drain_deadline_ms": 5000});
    reload(world, &pool, body).await;
}

/// The `sha256:` digest of the file at `path`, as `sha256sum` computes it.
fn true_digest(path: &str) -> String {
    let output = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("sha256sum: {e}"));
    let hex = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hex.len(), 64, "sha256sum {path}: {hex:?}");
    format!("sha256:{hex}")
}

#[when(expr = "pool {string} is reloaded to the model {string} as a file URI with its true digest")]
async fn reload_to_uri_with_true_digest(world: &mut PoolWorld, pool: String, name: String) {
    let path = model(world, &name);
    let body = json!({
        "new_model_ref": format!("file://{path}"),
        "digest": true_digest(&path),
        "drain_deadline_ms": 5000,
    });
    reload(world, &pool, body).await;
}

/// The pool serves the model as the reload named it (a `file://` URI), from a new engine
/// whose `-m` is the file's path: the engine is given the path the URI names, never the URI.
#[then(expr = "pool {string} serves the model {string} by its file URI")]
async fn serves_model_by_uri(world: &mut PoolWorld, pool: String, name: String) {
    let path = model(world, &name);
    let uri = format!("file://{path}");
    let status = world
        .status_becomes(&pool, "ready", |s| s.is_some_and(|s| s.ready))
        .await;
    let status = status.unwrap_or_else(|| panic!("pool '{pool}' is gone"));
    assert_eq!(
        status.model_ref.as_deref(),
        Some(uri.as_str()),
        "{status:?}"
    );
    let engine = world.engine_of(&pool).await;
    let cmdline = engine.cmdline();
    assert!(
        cmdline.contains(&path) && !cmdline.iter().any(|arg| arg.contains("file:")),
        "the engine's -m flag is the path the URI names: {cmdline:?}"
    );
}

#[then(expr = "pool {string} serves the model {string}")]
async fn serves_model(world: &mut PoolWorld, pool: String, name: String) {
    let path = model(world, &name);
    let status = world
        .status_becomes(&pool, "ready", |s| s.is_some_and(|s| s.ready))
        .await;
    let status = status.unwrap_or_else(|| panic!("pool '{pool}' is gone"));
    assert_eq!(
        status.model_ref.as_deref(),
        Some(path.as_str()),
        "{status:?}"
    );
    // The engine the status names (after a failed surge, the last one spawned is not it).
    let engine = world
        .engines_of(&pool)
        .await
        .into_iter()
        .rfind(|engine| Some(engine.pid) == status.pid)
        .unwrap_or_else(|| panic!("pool '{pool}' names no engine it spawned: {status:?}"));
    assert!(
        engine.cmdline().contains(&path),
        "the engine's -m flag follows the model: {:?}",
        engine.cmdline()
    );
}

#[when(expr = "pool {string} is reloaded to the model {string} with a drain deadline of {int} ms")]
async fn reload_with_drain_deadline(
    world: &mut PoolWorld,
    pool: String,
    name: String,
    deadline_ms: u64,
) {
    let path = model(world, &name);
    let body = json!({"new_model_ref": path, "drain_deadline_ms": deadline_ms});
    reload(world, &pool, body).await;
}

/// The last event of `kind` in `events`.
fn last_of<'a>(events: &'a [serde_json::Value], kind: &str, pool: &str) -> &'a serde_json::Value {
    events
        .iter()
        .rev()
        .find(|e| e["event"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} of pool '{pool}'"))
}

/// The reload's answer gives its duration as recorded: from the `ReloadRequested` to the
/// `ReloadSucceeded` of the pool (the new engine's load time at least, and no longer than
/// the answer took; the recorded times are whole ms, so the answer may look 1 ms shorter).
#[then(
    expr = "the answer's duration is the time from the pool {string}'s reload request to its success, at least {int} ms"
)]
async fn answer_duration_recorded(world: &mut PoolWorld, pool: String, at_least_ms: u64) {
    let events = world.events(&pool).await;
    let requested = last_of(&events, "ReloadRequested", &pool);
    let succeeded = last_of(&events, "ReloadSucceeded", &pool);
    let ts = |envelope: &serde_json::Value| {
        envelope["ts_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ts_ms: {envelope}"))
    };
    let recorded = ts(succeeded).saturating_sub(ts(requested));
    let answer = world.answer();
    assert_eq!(
        (&answer.body["duration_ms"], &succeeded["event"]["duration_ms"]),
        (&json!(recorded), &json!(recorded)),
        "duration_ms of the answer and of the ReloadSucceeded, against the recorded times: {} {requested} {succeeded}",
        answer.body
    );
    let took_ms = u64::try_from(answer.elapsed.as_millis()).unwrap_or(u64::MAX);
    assert!(
        (at_least_ms..=took_ms.saturating_add(1)).contains(&recorded),
        "duration {recorded} ms: not within {at_least_ms} ms and the {took_ms} ms the answer took"
    );
}
