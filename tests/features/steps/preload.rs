//! Prepared engines (what the engine provisioner hands over) and preloads: waiting for the
//! outcome, or not; through the compatibility route; with malformed, oversized or mismatched
//! bodies; several pools at once.

use std::time::Instant;

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::{json, Value};

use crate::engines;
use crate::live::Body;
use crate::steps::params::{list, Json};
use crate::world::PoolWorld;

// ------------------------------------------------------------------ prepared engines

#[given(expr = "pool {string} is prepared as an engine-sim")]
fn prepared_engine_sim(world: &mut PoolWorld, pool: String) {
    world.prepare_engine_sim(&pool, "");
}

#[given(expr = "pool {string} is prepared as an engine-sim started with {string}")]
fn prepared_engine_sim_with(world: &mut PoolWorld, pool: String, flags: String) {
    world.prepare_engine_sim(&pool, &flags);
}

#[given(expr = "pool {string} is prepared as Python's http.server")]
fn prepared_python(world: &mut PoolWorld, pool: String) {
    let root = world.dir().join("www");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    std::fs::write(root.join("index.txt"), "served by python3 -m http.server\n")
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let engine = engines::python_http_server(&pool, engines::free_port(), &root);
    world.prepared.insert(pool, engine);
}

/// Sets a field of the prepared engine; a dotted path reaches into objects (`env.NAME`).
#[given(expr = "the prepared engine of pool {string} has {string} set to {json}")]
fn prepared_field(world: &mut PoolWorld, pool: String, path: String, value: Json) {
    let mut target = world.prepared_mut(&pool);
    let segments: Vec<&str> = path.split('.').collect();
    let (last, parents) = segments
        .split_last()
        .unwrap_or_else(|| panic!("empty field path"));
    for segment in parents {
        if !target[*segment].is_object() {
            target[*segment] = json!({});
        }
        target = &mut target[*segment];
    }
    target[*last] = value.0;
}

// ------------------------------------------------------------------ preloads

#[when(expr = "pool {string} is preloaded")]
async fn preloaded(world: &mut PoolWorld, pool: String) {
    world.preload(&pool).await;
}

#[when(expr = "pool {string} is preloaded without waiting")]
async fn preloaded_no_wait(world: &mut PoolWorld, pool: String) {
    world
        .post_preload(&pool, &format!("/v2/pools/{pool}/preload?wait=false"))
        .await;
}

#[when(expr = "pool {string} is preloaded through {string}")]
async fn preloaded_through(world: &mut PoolWorld, pool: String, path: String) {
    world.post_preload(&pool, &path).await;
}

#[when(expr = "pool {string} is preloaded with an engine-sim")]
async fn preloaded_sim(world: &mut PoolWorld, pool: String) {
    world.prepare_engine_sim(&pool, "");
    world.preload(&pool).await;
}

#[when(expr = "pool {string} is preloaded with an engine-sim started with {string}")]
async fn preloaded_sim_with(world: &mut PoolWorld, pool: String, flags: String) {
    world.prepare_engine_sim(&pool, &flags);
    world.preload(&pool).await;
}

#[when(
    expr = "pool {string} is preloaded without waiting with an engine-sim started with {string}"
)]
async fn preloaded_sim_no_wait(world: &mut PoolWorld, pool: String, flags: String) {
    world.prepare_engine_sim(&pool, &flags);
    preloaded_no_wait(world, pool).await;
}

#[when(expr = "pool {string} is preloaded again with an engine-sim")]
async fn preloaded_again(world: &mut PoolWorld, pool: String) {
    preloaded_sim(world, pool).await;
}

#[when(expr = "pool {string} is preloaded with Python's http.server as its engine")]
async fn preloaded_python(world: &mut PoolWorld, pool: String) {
    prepared_python(world, pool.clone());
    world.preload(&pool).await;
}

/// The body as written (a doc string), with `{engine-sim}` and `{port}` replaced by the
/// engine-sim binary and a free port.
#[when(expr = "pool {string} is preloaded with the body:")]
async fn preloaded_with_body(world: &mut PoolWorld, pool: String, step: &Step) {
    let text = step
        .docstring
        .as_deref()
        .unwrap_or_else(|| panic!("the step needs a doc string"))
        .replace("{engine-sim}", engines::ENGINE_SIM)
        .replace("{port}", &engines::free_port().to_string());
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        if let Some(prepared) = value.get("prepared") {
            world.prepared.insert(pool.clone(), prepared.clone());
        }
    }
    world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/preload"),
            Body::Raw(text),
        )
        .await;
}

#[when(expr = "an engine-sim preload of pool {string} is posted to {string}")]
async fn preload_posted_to(world: &mut PoolWorld, pool: String, path: String) {
    world.prepare_engine_sim(&pool, "");
    world.post_preload(&pool, &path).await;
}

#[when(expr = "an engine-sim preload of pool {string} is posted for a pool id of {int} characters")]
async fn preload_long_id(world: &mut PoolWorld, pool: String, length: usize) {
    let id = "p".repeat(length);
    world.prepare_engine_sim(&pool, "");
    world
        .post_preload(&pool, &format!("/v2/pools/{id}/preload"))
        .await;
}

/// A well-formed preload body padded to `kib` KiB with a long flag.
#[when(expr = "pool {string} is preloaded with a body of {int} KiB")]
async fn preloaded_big_body(world: &mut PoolWorld, pool: String, kib: usize) {
    world.prepare_engine_sim(&pool, "");
    let mut body = json!({ "prepared": world.prepared_mut(&pool).clone() });
    let size = body.to_string().len();
    let padding = (kib * 1024).saturating_sub(size + 8);
    body["prepared"]["flags"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("flags are a list"))
        .push(Value::String("x".repeat(padding)));
    let text = body.to_string();
    assert!(
        text.len() >= kib * 1024 - 16 && text.len() <= kib * 1024,
        "body of {} bytes for {kib} KiB",
        text.len()
    );
    world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/preload"),
            Body::Raw(text),
        )
        .await;
}

#[when(
    expr = "pools {string} are preloaded at the same time with engine-sims started with {string}"
)]
async fn preloaded_together(world: &mut PoolWorld, pools: String, flags: String) {
    let pools = list(&pools);
    for pool in &pools {
        world.prepare_engine_sim(pool, &flags);
    }
    let daemon = world.daemon();
    let requests: Vec<_> = pools
        .iter()
        .map(|pool| {
            let body = json!({ "prepared": world.prepared[pool] });
            let path = format!("/v2/pools/{pool}/preload");
            (pool.clone(), async move {
                daemon.call(Method::POST, &path, Body::Json(body)).await
            })
        })
        .collect();
    let started = Instant::now();
    let (keys, futures): (Vec<String>, Vec<_>) = requests.into_iter().unzip();
    let answers = futures::future::join_all(futures).await;
    let elapsed = started.elapsed();
    world.answers = keys.into_iter().zip(answers).collect();
    world.together_elapsed = Some(elapsed);
}

#[then(expr = "every preload answered {int}")]
fn every_preload_answered(world: &mut PoolWorld, status: u16) {
    assert!(!world.answers.is_empty(), "no preloads were sent together");
    for (pool, answer) in &world.answers {
        assert_eq!(
            answer.status, status,
            "preload of pool '{pool}': {}",
            answer.body
        );
    }
}

#[then(expr = "the preloads took less than {int} ms together")]
fn preloads_overlapped(world: &mut PoolWorld, ms: u64) {
    let elapsed = world
        .together_elapsed
        .unwrap_or_else(|| panic!("no preloads were sent together"));
    assert!(
        elapsed.as_millis() < u128::from(ms),
        "the preloads took {elapsed:?} together, not less than {ms} ms: did they run one after another?"
    );
}

// ------------------------------------------------------------------ pools set up by preloads

#[given(expr = "a ready pool {string} with {int} slot(s)")]
async fn a_ready_pool(world: &mut PoolWorld, pool: String, slots: u32) {
    world.prepare_engine_sim(&pool, &format!("--parallel {slots}"));
    let answer = world.preload_ready(&pool).await;
    assert_eq!(
        answer.body["slots_total"].as_u64(),
        Some(u64::from(slots)),
        "slots of pool '{pool}': {}",
        answer.body
    );
}

#[given(expr = "pool {string} is ready with an engine-sim started with {string}")]
async fn ready_with_flags(world: &mut PoolWorld, pool: String, flags: String) {
    world.prepare_engine_sim(&pool, &flags);
    world.preload_ready(&pool).await;
}

#[given(expr = "pool {string} is loading with an engine-sim started with {string}")]
async fn loading_with_flags(world: &mut PoolWorld, pool: String, flags: String) {
    world.prepare_engine_sim(&pool, &flags);
    let answer = world
        .post_preload(&pool, &format!("/v2/pools/{pool}/preload?wait=false"))
        .await
        .clone();
    assert_eq!(
        answer.status, 202,
        "preload of pool '{pool}': {}",
        answer.body
    );
    world
        .status_becomes(&pool, "live", |s| s.is_some_and(|s| s.live))
        .await;
}

/// engine-sim loads for 5 s but exits with code 3 after 100 ms: `ENGINE_EXITED`.
#[given(expr = "pool {string} failed to preload because its engine exited while loading")]
async fn failed_preload(world: &mut PoolWorld, pool: String) {
    world.prepare_engine_sim(&pool, "--load-ms 5000 --crash-after-ms 100 --exit-code 3");
    let answer = world.preload(&pool).await.clone();
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (500, Some("ENGINE_EXITED")),
        "preload of pool '{pool}': {}",
        answer.body
    );
    // The first failure is restarted at once; that engine fails too, and the pool waits out
    // the (long) backoff of these daemons.
    super::supervision::await_settled(world, &pool).await;
}
