//! No engine is ever ready on the CPU when a GPU is required (OC-POOL-3012, `CPU_SPILLOVER`):
//! a real daemon in this process over a real socket (`Daemon::start_with_gpus` with a fixture
//! inventory of 2 GPUs that the tests rewrite, `require_gpu = true`) and real engine-sim
//! children. An engine becomes ready only once the fixture lists its pid on a GPU of its mask;
//! never listed, listed outside its mask, or logging that it found no CUDA device, its start
//! fails with `CPU_SPILLOVER` and it is killed. A `--dev` daemon ignores those log lines.
//!
//! Waits poll the API with a bounded deadline; nothing sleeps hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{engine_sim_preload as engine, pid_alive, write_fixture, Harness};
use pool_managerd::gpu::{simulated_gpus, FixtureInventory, GpuInventory, NoGpu};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;
/// The placement wait of the tests that expect it to run out.
const SHORT_PLACEMENT_MS: u64 = 500;
/// The line a CUDA build of llama-server prints when it sees no device.
const NO_CUDA_LINE: &str =
    "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected";

/// The 2 simulated GPUs, with `pid` listed as a compute process on GPU `on`, if given.
fn gpus_with(pid: Option<u64>, on: usize) -> Value {
    let mut gpus = serde_json::to_value(simulated_gpus(2)).unwrap();
    if let Some(pid) = pid {
        gpus[on]["processes"] = json!([{"pid": pid, "used_bytes": 2 * GIB}]);
    }
    gpus
}

/// A daemon requiring a GPU, over the fixture `<dir>/gpus.json` (2 GPUs, no process), with
/// the given placement wait.
async fn start_gpu_node(placement_timeout_ms: u64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("gpus.json");
    write_fixture(&fixture, &gpus_with(None, 0));
    let mut config = harness::config(dir.path());
    config.require_gpu = true;
    config.gpu.placement_timeout_ms = placement_timeout_ms;
    config.gpu.poll_interval_ms = 100;
    // A failed engine the fixture still lists holds its memory: the restart's wait for it
    // (tests/gpus.rs, features/gpu/release.feature) is cut short here.
    config.gpu.release_timeout_ms = 300;
    let inventory: Arc<dyn GpuInventory> = Arc::new(FixtureInventory::new(&fixture));
    Harness::start_in(dir, &config, inventory).await
}

fn fixture(h: &Harness) -> std::path::PathBuf {
    h.dir.path().join("gpus.json")
}

/// The pool's events, by kind.
async fn kinds(h: &Harness, pool: &str) -> Vec<String> {
    let (_, events) = h.get(&format!("/v2/pools/{pool}/events")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The pid of the pool's first engine (from its `EngineSpawned`).
async fn first_pid(h: &Harness, pool: &str) -> u64 {
    let (_, events) = h.get(&format!("/v2/pools/{pool}/events")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["kind"] == "EngineSpawned")
        .and_then(|e| e["event"]["pid"].as_u64())
        .unwrap_or_else(|| panic!("no EngineSpawned in {events}"))
}

/// The first `PreloadFailed` of the pool.
async fn first_failure(h: &Harness, pool: &str) -> Value {
    let (_, events) = h.get(&format!("/v2/pools/{pool}/events")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["kind"] == "PreloadFailed")
        .map(|e| e["event"].clone())
        .unwrap_or_else(|| panic!("no PreloadFailed in {events}"))
}

/// Polls until `pid` is gone (the answer of a failed preload comes once the engine is gone,
/// so this is a formality bounded by the harness's wait).
async fn assert_gone(h: &Harness, pid: u64) {
    let deadline = Instant::now() + h.wait;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "engine {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a waiting preload in its own task (its answer is awaited later), so that the test
/// can list the engine on a GPU while the preload waits.
fn preload_in_background(
    h: &Harness,
    pool: &str,
    body: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let http = h.http.clone();
    let url = format!("{}/v2/pools/{pool}/preload", h.base);
    tokio::spawn(async move {
        let response = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    })
}

/// Removes `pool` once no start is under way (a failed start is restarted at once, and a
/// DELETE during a start is refused with 409 `POOL_BUSY`).
async fn remove(h: &Harness, pool: &str) {
    h.wait_pool(pool, "no start under way", |s| {
        let phase = s["phase"].as_str().unwrap_or_default();
        let restarting_now = phase == "backoff" && s["backoff_ms"] == 0;
        !matches!(phase, "starting" | "stopping") && !restarting_now
    })
    .await;
    let (status, answer) = h
        .call(reqwest::Method::DELETE, &format!("/v2/pools/{pool}"), None)
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// Healthy but never listed by NVML: the preload answers 500 `CPU_SPILLOVER` after the
/// placement wait, the engine is gone, the pid file removed, the pool unready with the reason.
#[tokio::test]
async fn an_engine_never_seen_on_a_gpu_fails_with_cpu_spillover() {
    let h = start_gpu_node(SHORT_PLACEMENT_MS).await;
    let started = Instant::now();
    let (status, answer) = h
        .post("/v2/pools/p1/preload", engine("p1", Some("0"), &[]))
        .await;
    let took = started.elapsed();
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("CPU_SPILLOVER")),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(SHORT_PLACEMENT_MS),
        "answered after {took:?}, before the placement wait ran out"
    );
    let pid = first_pid(&h, "p1").await;
    let message = answer["error"].as_str().unwrap();
    for part in [
        &format!("engine pid {pid}"),
        "device mask \"0\"",
        "no compute process",
        "CUDA_VISIBLE_DEVICES",
        "CPU-only",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    assert_gone(&h, pid).await;
    // Its pid file is removed (the restart, at once, may have written its own since).
    let pid_file = std::fs::read_to_string(h.runtime().join("pids/p1.pid")).unwrap_or_default();
    assert_ne!(
        pid_file.trim(),
        pid.to_string(),
        "pid file of {pid} removed"
    );
    let (_, status) = h.get("/v2/pools/p1").await;
    assert_eq!(status["ready"], false, "{status}");
    assert_ne!(status["phase"], "ready", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("CPU_SPILLOVER") && e.contains(&format!("pid {pid}"))),
        "{status}"
    );
    let failure = first_failure(&h, "p1").await;
    assert_eq!(failure["failure"], "cpu_spillover", "{failure}");
    assert_eq!(failure["cause"], "cuda_error", "{failure}");
    let kinds = kinds(&h, "p1").await;
    assert!(
        !kinds.contains(&"HealthCheckPassed".to_string()),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"PoolReady".to_string()), "{kinds:?}");
    remove(&h, "p1").await;
    h.stop().await;
}

/// Listed by NVML on a GPU of its mask once spawned: ready.
#[tokio::test]
async fn an_engine_listed_on_a_gpu_of_its_mask_becomes_ready() {
    let h = start_gpu_node(10_000).await;
    let (status, answer) = h
        .post(
            "/v2/pools/p1/preload?wait=false",
            engine("p1", Some("0"), &[]),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let starting = h
        .wait_pool("p1", "a pid while starting", |s| s["pid"].is_u64())
        .await;
    let pid = starting["pid"].as_u64().unwrap();
    assert_eq!(starting["ready"], false, "{starting}");
    write_fixture(&fixture(&h), &gpus_with(Some(pid), 0));
    let ready = h.wait_pool("p1", "ready", |s| s["ready"] == true).await;
    assert_eq!(ready["pid"].as_u64(), Some(pid), "{ready}");
    assert!(ready["last_error"].is_null(), "{ready}");
    assert!(pid_alive(pid));
    remove(&h, "p1").await;
    h.stop().await;
}

/// Listed, but on a GPU outside its mask (mask "0", listed on GPU 1): `CPU_SPILLOVER`.
#[tokio::test]
async fn an_engine_listed_outside_its_mask_fails_with_cpu_spillover() {
    let h = start_gpu_node(SHORT_PLACEMENT_MS).await;
    // Health passes only after the listing is written, so the listing is what is judged.
    let preload = preload_in_background(&h, "p1", engine("p1", Some("0"), &["--load-ms", "300"]));
    let starting = h
        .wait_pool("p1", "a pid while starting", |s| s["pid"].is_u64())
        .await;
    let pid = starting["pid"].as_u64().unwrap();
    write_fixture(&fixture(&h), &gpus_with(Some(pid), 1));
    let (status, answer) = preload.await.unwrap();
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("CPU_SPILLOVER")),
        "{answer}"
    );
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("outside the mask"), "{message}");
    assert!(
        message.contains(&format!("pid {pid} on GPU 1")),
        "{message}"
    );
    assert_gone(&h, pid).await;
    let (_, status) = h.get("/v2/pools/p1").await;
    assert_eq!(status["ready"], false, "{status}");
    let kinds = kinds(&h, "p1").await;
    assert!(!kinds.contains(&"PoolReady".to_string()), "{kinds:?}");
    remove(&h, "p1").await;
    h.stop().await;
}

/// "no CUDA-capable device is detected" in the log while starting fails the start at once
/// with the line, although the engine would answer healthy later and its pid is listed on a
/// GPU of its mask.
#[tokio::test]
async fn a_no_cuda_device_line_fails_the_start_at_once() {
    // A long placement wait: the failure must not come from it.
    let h = start_gpu_node(10_000).await;
    let started = Instant::now();
    let preload = preload_in_background(
        &h,
        "p1",
        engine(
            "p1",
            Some("0"),
            &[
                "--log-line-after-ms",
                "0",
                "--log-line",
                NO_CUDA_LINE,
                "--load-ms",
                "8000",
            ],
        ),
    );
    let starting = h
        .wait_pool("p1", "a pid while starting", |s| s["pid"].is_u64())
        .await;
    let pid = starting["pid"].as_u64().unwrap();
    write_fixture(&fixture(&h), &gpus_with(Some(pid), 0));
    let (status, answer) = preload.await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("CPU_SPILLOVER")),
        "{answer}"
    );
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("no CUDA-capable device is detected"),
        "{message}"
    );
    assert!(message.contains(&format!("engine pid {pid}")), "{message}");
    // Not the placement wait (10 s after a health pass that never came: the engine loads for
    // 8 s) but the log line: the answer names it and no health check passed.
    eprintln!("answered after {took:?}");
    assert_gone(&h, pid).await;
    let kinds = kinds(&h, "p1").await;
    assert!(
        !kinds.contains(&"HealthCheckPassed".to_string()),
        "failed before its health passed: {kinds:?}"
    );
    let (_, status) = h.get("/v2/pools/p1").await;
    assert_eq!(status["ready"], false, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no CUDA-capable device is detected")),
        "{status}"
    );
    remove(&h, "p1").await;
    h.stop().await;
}

/// On a `--dev` node (no GPU, `require_gpu = false`) CPU-only engines are allowed: the same
/// line does not fail the preload.
#[tokio::test]
async fn a_dev_node_ignores_the_no_cuda_device_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = harness::config(dir.path());
    assert!(!config.require_gpu);
    let inventory: Arc<dyn GpuInventory> = Arc::new(NoGpu::new("no GPU on this test node"));
    let h = Harness::start_in(dir, &config, inventory).await;
    let (status, answer) = h
        .post(
            "/v2/pools/p1/preload",
            engine(
                "p1",
                None,
                &[
                    "--log-line-after-ms",
                    "0",
                    "--log-line",
                    NO_CUDA_LINE,
                    "--load-ms",
                    "300",
                ],
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, status) = h.get("/v2/pools/p1").await;
    assert_eq!(status["ready"], true, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    remove(&h, "p1").await;
    h.stop().await;
}
