//! The daemon end to end: a real daemon (node actor, supervisor, HTTP API) on a loopback
//! socket, real engine-sim children, a real journal in a temp dir.
//!
//! Waits poll the API with a bounded deadline; nothing sleeps hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{config, free_port, pid_alive, Harness};
use pool_managerd::clock::SystemClock;
use pool_managerd::daemon::Daemon;
use serde_json::{json, Value};

const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

fn engine(pool: &str, binary: &str, flags: &[&str]) -> (Value, u16) {
    let port = free_port();
    let mut all = vec!["--port".to_string(), port.to_string()];
    all.extend(flags.iter().map(|f| f.to_string()));
    let prepared = json!({
        "binary_path": binary,
        "flags": all,
        "host": "127.0.0.1",
        "port": port,
        "model_path": "/models/m.gguf",
        "engine_version": "sim-1",
        "pool_id": pool,
        "replica_id": "r0",
    });
    (json!({ "prepared": prepared }), port)
}

#[tokio::test]
async fn preload_writes_the_pid_file_before_ready_and_the_handoff_after() {
    let h = Harness::start().await;
    let (body, _) = engine("p1", ENGINE_SIM, &["--load-ms", "600", "--parallel", "3"]);
    let (status, answer) = h.post("/v2/pools/p1/preload?wait=false", body).await;
    assert_eq!(status, 202, "{answer}");
    let pid_file = h.runtime().join("pids/p1.pid");
    let handoff = h.runtime().join("engines/p1-r0.json");
    let starting = h
        .wait_pool("p1", "a pid while starting", |s| s["pid"].is_u64())
        .await;
    assert_eq!(starting["ready"], false);
    assert_eq!(starting["phase"], "starting");
    let pid_text = std::fs::read_to_string(&pid_file).expect("pid file before ready");
    assert_eq!(pid_text.trim(), starting["pid"].to_string());
    assert!(
        !handoff.exists(),
        "no handoff file before the engine is healthy"
    );

    let ready = h.wait_pool("p1", "ready", |s| s["ready"] == true).await;
    assert_eq!(ready["slots_total"], 3, "slots from /props total_slots");
    assert_eq!(ready["engine_version"], "b0-engine-sim");
    assert_eq!(ready["phase"], "ready");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&handoff).unwrap()).unwrap();
    assert_eq!(doc["pool_id"], "p1");
    assert_eq!(doc["slots_total"], 3);
    assert_eq!(doc["pid"], ready["pid"]);
    assert_eq!(ready["handoff_path"], handoff.display().to_string());

    // A waiting preload of the same engine answers at once (idempotent).
    let (body, _) = engine("p2", ENGINE_SIM, &["--parallel", "2"]);
    let (status, answer) = h.post("/v2/pools/p2/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["pid"].is_u64() && answer["ready_ms"].is_u64());
    assert_eq!(answer["engine_version"], "b0-engine-sim");
    h.stop().await;
}

#[tokio::test]
async fn an_engine_that_never_becomes_healthy_times_out_and_is_killed() {
    let h = Harness::start_with(|c| c.health.preload_timeout_ms = 700).await;
    let (body, _) = engine("slow", ENGINE_SIM, &["--never-healthy"]);
    let started = Instant::now();
    let (status, answer) = h.post("/v2/pools/slow/preload", body).await;
    let took = started.elapsed();
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["code"], "HEALTH_TIMEOUT");
    assert!(
        took >= Duration::from_millis(700),
        "answered after {took:?}"
    );
    let (_, pool) = h.get("/v2/pools/slow").await;
    assert_eq!(pool["ready"], false);
    assert!(
        pool["last_error"].as_str().unwrap().contains("health"),
        "{pool}"
    );
    assert!(
        !h.runtime().join("pids/slow.pid").exists(),
        "pid file removed"
    );
    let (_, events) = h.get("/v2/pools/slow/events").await;
    let spawned = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["kind"] == "EngineSpawned")
        .unwrap();
    let pid = spawned["event"]["pid"].as_u64().unwrap();
    assert!(!pid_alive(pid), "engine {pid} was killed");
    h.stop().await;
}

#[tokio::test]
async fn an_engine_that_exits_while_loading_fails_at_once_with_its_log_tail() {
    let h = Harness::start().await;
    let (body, _) = engine(
        "crashy",
        ENGINE_SIM,
        &[
            "--load-ms",
            "5000",
            "--crash-after-ms",
            "100",
            "--exit-code",
            "7",
        ],
    );
    let started = Instant::now();
    let (status, answer) = h.post("/v2/pools/crashy/preload", body).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["code"], "ENGINE_EXITED");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not after the 10 s timeout"
    );
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("exit code 7"), "{error}");
    assert!(
        error.contains("crashing after 100 ms"),
        "log tail in the error: {error}"
    );
    let (_, health) = h.get("/v2/pools/crashy/health").await;
    assert_eq!(health["ready"], false);
    assert!(health["last_error"]
        .as_str()
        .unwrap()
        .contains("crashing after"));
    assert!(!h.runtime().join("pids/crashy.pid").exists());
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_get_their_codes_never_a_500() {
    let h = Harness::start().await;
    let missing = engine("nobin", "/nonexistent/llama-server", &[]).0;
    let (status, answer) = h.post("/v2/pools/nobin/preload", missing).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("SPAWN_FAILED")),
        "{answer}"
    );
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/llama-server"));

    let (status, answer) = h.post("/v2/pools/bad%20id/preload", json!({})).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    let (status, answer) = h.get("/v2/pools/-leading-dash").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );

    let (status, answer) = h
        .call(
            reqwest::Method::POST,
            "/v2/pools/p/preload",
            Some("{not json".into()),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    let mut wrong = engine("p", ENGINE_SIM, &[]).0;
    wrong["prepared"]["port"] = json!("eighty");
    let (status, answer) = h.post("/v2/pools/p/preload", wrong).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("prepared.port"),
        "{answer}"
    );

    let huge = format!("{{\"prepared\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let (status, answer) = h
        .call(reqwest::Method::POST, "/v2/pools/p/preload", Some(huge))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("INVALID_REQUEST")),
        "{answer}"
    );

    let (status, answer) = h.get("/v2/pools/unknown").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("POOL_NOT_FOUND"))
    );
    let (status, _) = h.post("/v2/pools/unknown/leases", json!({})).await;
    assert_eq!(status, 404);
    let (status, answer) = h.get("/no/such/route").await;
    assert_eq!(status, 404, "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn any_http_server_with_a_health_route_works_as_an_engine() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true: python3 is needed (its http.server is the engine here); .ci/run installs it"
        );
        eprintln!("skipped: python3 not installed (CI installs it)");
        return;
    }
    let h = Harness::start().await;
    let port = free_port();
    let body = json!({"prepared": {
        "binary_path": "python3",
        "flags": ["-m", "http.server", "--bind", "127.0.0.1", port.to_string()],
        "host": "127.0.0.1", "port": port, "model_path": "none", "engine_version": "py",
        "pool_id": "web", "replica_id": "r0", "health_path": "/",
    }});
    let (status, answer) = h.post("/v2/pools/web/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let (status, lease) = h.post("/v2/pools/web/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["slots_free"], 0, "no /props, no --parallel: 1 slot");
    let (status, _) = h.post("/v2/pools/web/leases", json!({})).await;
    assert_eq!(status, 429);
    let lease_id = lease["lease_id"].as_str().unwrap();
    let (status, _) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/pools/web/leases/{lease_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = h.post("/v2/pools/web/stop", json!({})).await;
    assert_eq!(status, 202);
    h.wait_pool("web", "stopped", |s| s["phase"] == "stopped")
        .await;
    let (status, _) = h.call(reqwest::Method::DELETE, "/v2/pools/web", None).await;
    assert_eq!(status, 200);
    let (status, _) = h.get("/v2/pools/web").await;
    assert_eq!(status, 404);
    h.stop().await;
}

#[tokio::test]
async fn a_restarted_daemon_serves_the_same_registry() {
    // A long backoff: the failed pool settles (its first restart is immediate and fails too).
    let mut h = Harness::start_with(|c| c.backoff.initial_ms = 600_000).await;
    let (body, _) = engine("kept", ENGINE_SIM, &["--parallel", "2"]);
    assert_eq!(h.post("/v2/pools/kept/preload", body).await.0, 200);
    let (_, lease) = h.post("/v2/pools/kept/leases", json!({})).await;
    assert!(lease["lease_id"].is_string());
    assert_eq!(h.post("/v2/pools/kept/stop", json!({})).await.0, 202);
    h.wait_pool("kept", "stopped", |s| s["phase"] == "stopped")
        .await;
    let failed = engine("gone", "/nonexistent/engine", &[]).0;
    assert_eq!(h.post("/v2/pools/gone/preload", failed).await.0, 500);
    h.wait_pool(
        "gone",
        "in its backoff after the immediate restart failed",
        |s| s["crash_count"] == 2 && s["phase"] == "backoff",
    )
    .await;
    let (_, before) = h.get("/v2/pools").await;

    h.restart().await;
    let (_, after) = h.get("/v2/pools").await;
    let strip = |mut v: Value| {
        for pool in v.as_array_mut().unwrap() {
            pool.as_object_mut().unwrap().remove("last_seq");
            // A pool in backoff restarts on its own schedule; compare what the journal fixed.
            pool.as_object_mut().unwrap().remove("phase");
        }
        v
    };
    assert_eq!(
        strip(before.clone()),
        strip(after.clone()),
        "before: {before}\nafter: {after}"
    );
    let (_, health) = h.get("/health").await;
    assert!(health["journal_seq"].as_u64().unwrap() > 0);
    h.stop().await;
}

#[tokio::test]
async fn a_token_guards_every_route_but_health() {
    let h = Harness::start_with(|c| c.api_token = Some("s3cret".into())).await;
    let (status, _) = h.get("/health").await;
    assert_eq!(status, 200);
    for route in ["/v2/pools", "/v2/gpus"] {
        let (status, answer) = h.get(route).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (401, Some("UNAUTHORIZED")),
            "{route} without the token"
        );
        let response = h
            .http
            .get(format!("{}{route}", h.base))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{route} with the token");
    }
    h.stop().await;
}

#[tokio::test]
async fn binaries_outside_the_allow_list_are_refused() {
    let h = Harness::start_with(|c| c.allowed_binaries = vec![PathBuf::from("/opt/engines")]).await;
    let (body, _) = engine("p", ENGINE_SIM, &[]);
    let (status, answer) = h.post("/v2/pools/p/preload", body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("BINARY_NOT_ALLOWED")),
        "{answer}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_drain_refuses_new_leases_and_stops_the_engine_when_the_last_lease_returns() {
    let h = Harness::start().await;
    let (body, _) = engine("d", ENGINE_SIM, &["--parallel", "2"]);
    assert_eq!(h.post("/v2/pools/d/preload", body).await.0, 200);
    let (_, lease) = h.post("/v2/pools/d/leases", json!({})).await;
    let lease_id = lease["lease_id"].as_str().unwrap().to_string();

    let (status, answer) = h
        .post("/v2/pools/d/drain", json!({"deadline_ms": 30_000}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"pool_id": "d", "draining": true}));
    let (status, answer) = h.post("/v2/pools/d/leases", json!({})).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("POOL_DRAINING"))
    );
    let (status, _) = h.post("/v2/pools/d/drain", json!({"deadline_ms": 1})).await;
    assert_eq!(status, 202, "a second drain joins the first");
    let (status, answer) = h.post("/v2/pools/d/drain", json!({"deadline": 1})).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );

    let path = format!("/v2/pools/d/leases/{lease_id}");
    assert_eq!(h.call(reqwest::Method::DELETE, &path, None).await.0, 200);
    let stopped = h
        .wait_pool("d", "stopped by the drain", |s| s["phase"] == "stopped")
        .await;
    assert_eq!(stopped["draining"], false);
    assert_eq!(stopped["ready"], false);
    let (_, events) = h.get("/v2/pools/d/events").await;
    let completed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["kind"] == "DrainCompleted")
        .expect("DrainCompleted journaled");
    assert_eq!(completed["event"]["outcome"], "graceful");

    // A manual breaker reset of a closed breaker is accepted and changes nothing.
    let (status, answer) = h.post("/v2/pools/d/breaker/reset", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["breaker"], "closed");
    h.stop().await;
}

/// The kinds of a pool's events, oldest first.
async fn kinds(h: &Harness, pool: &str) -> Vec<String> {
    let (_, events) = h.get(&format!("/v2/pools/{pool}/events")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_gpu_fault_in_the_log_of_a_running_engine_makes_it_a_crash_of_that_reason() {
    let h = Harness::start().await;
    let (body, _) = engine(
        "gpu",
        ENGINE_SIM,
        &[
            "--log-line-after-ms",
            "300",
            "--log-line",
            "CUDA error: an illegal memory access was encountered",
        ],
    );
    let (status, answer) = h.post("/v2/pools/gpu/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().unwrap();
    let _guard = KillOnDrop(pid);
    // The engine keeps running after the line: only the log watcher can tell.
    let failed = h
        .wait_pool("gpu", "unready after the fault line", |s| {
            s["ready"] == false
        })
        .await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("illegal memory access"),
        "{failed}"
    );
    let (_, events) = h.get("/v2/pools/gpu/events").await;
    let stop = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["kind"] == "EngineStopRequested")
        .expect("the faulty engine is stopped");
    assert_eq!(
        stop["event"]["reason"]["failure"]["reason"], "cuda_error",
        "{stop}"
    );
    h.wait_pool("gpu", "the engine gone", |s| s["pid"] != pid)
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "engine {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kinds(&h, "gpu")
        .await
        .contains(&"RestartScheduled".to_string()));
    h.stop().await;
}

#[tokio::test]
async fn an_engine_that_dies_of_a_cuda_error_is_recorded_as_cuda_error() {
    let h = Harness::start().await;
    let (body, _) = engine("cuda", ENGINE_SIM, &["--cuda-error-after-ms", "300"]);
    assert_eq!(h.post("/v2/pools/cuda/preload", body).await.0, 200);
    h.wait_pool("cuda", "unready", |s| s["ready"] == false)
        .await;
    let (_, events) = h.get("/v2/pools/cuda/events").await;
    let reasons: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| match e["event"]["kind"].as_str() {
            Some("EngineExited") => e["event"]["reason"].as_str().map(str::to_string),
            Some("EngineStopRequested") => e["event"]["reason"]["failure"]["reason"]
                .as_str()
                .map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("cuda_error"),
        "{events}"
    );
    h.stop().await;
}

/// The reason recorded for the first failure of a pool: `EngineExited.reason`, or the reason
/// of a failure stop (`EngineStopRequested{reason: failure}`).
async fn first_failure(h: &Harness, pool: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, events) = h.get(&format!("/v2/pools/{pool}/events")).await;
        let found =
            events
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| match e["event"]["kind"].as_str() {
                    Some("EngineExited") => e["event"]["reason"].as_str().map(str::to_string),
                    Some("EngineStopRequested") => e["event"]["reason"]["failure"]["reason"]
                        .as_str()
                        .map(str::to_string),
                    _ => None,
                });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_crash_reason_comes_from_a_real_engine() {
    let h = Harness::start_with(|c| {
        c.health.ready_interval_ms = 100;
        c.backoff.initial_ms = 60_000; // one failure per pool, no restart within the test
    })
    .await;
    let vram = "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 97656.25 MiB on device 0: cudaMalloc failed: out of memory";
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "exit3",
            vec!["--crash-after-ms", "300", "--exit-code", "3"],
            "crash",
        ),
        (
            "segv",
            vec!["--crash-after-ms", "300", "--crash-signal", "SEGV"],
            "signal",
        ),
        (
            "abrt",
            vec!["--crash-after-ms", "300", "--crash-signal", "ABRT"],
            "signal",
        ),
        (
            "killed",
            vec!["--crash-after-ms", "300", "--crash-signal", "KILL"],
            "oom_killed",
        ),
        // A wrapper's report of its child's death by SIGKILL: exit 137.
        (
            "exit137",
            vec!["--crash-after-ms", "300", "--exit-code", "137"],
            "oom_killed",
        ),
        ("cuda", vec!["--cuda-error-after-ms", "300"], "cuda_error"),
        (
            "vram",
            vec!["--cuda-error-after-ms", "300", "--cuda-error-message", vram],
            "vram_oom",
        ),
        (
            "xid",
            vec![
                "--log-line-after-ms",
                "300",
                "--log-line",
                "NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus",
            ],
            "driver_error",
        ),
        ("hung", vec!["--hang-after-ms", "300"], "health_timeout"),
        (
            "done",
            vec!["--crash-after-ms", "300", "--exit-code", "0"],
            "graceful",
        ),
    ];
    let mut guards = Vec::new();
    for (pool, flags, _) in &cases {
        let (body, _) = engine(pool, ENGINE_SIM, flags);
        let (status, answer) = h.post(&format!("/v2/pools/{pool}/preload"), body).await;
        assert_eq!(status, 200, "{pool}: {answer}");
        guards.push(KillOnDrop(answer["pid"].as_u64().unwrap()));
    }
    for (pool, _, expected) in &cases {
        assert_eq!(
            first_failure(&h, pool).await.as_deref(),
            Some(*expected),
            "pool {pool}"
        );
    }
    let graceful = h.wait_pool("done", "stopped", |s| s["pid"].is_null()).await;
    assert_eq!(
        graceful["restart_count"], 0,
        "a graceful exit is not restarted: {graceful}"
    );
    assert!(!kinds(&h, "done")
        .await
        .contains(&"RestartScheduled".to_string()));
    assert!(kinds(&h, "exit3")
        .await
        .contains(&"RestartScheduled".to_string()));
    h.stop().await;
}

/// A prepared engine serving the model file `model` (engine-sim checks it like llama-server).
fn model_engine(pool: &str, model: &Path) -> Value {
    let port = free_port();
    let model = model.display().to_string();
    json!({"prepared": {
        "binary_path": ENGINE_SIM,
        "flags": ["--port", port.to_string(), "-m", model, "--check-model", "--load-ms", "200"],
        "host": "127.0.0.1", "port": port, "model_path": model, "engine_version": "sim-1",
        "pool_id": pool, "replica_id": "r0", "device_mask": "GPU0",
    }})
}

#[tokio::test]
async fn reload_swaps_the_model_or_rolls_back_and_never_touches_the_engine_for_a_bad_model() {
    // One GPU (a fixture), so that the engine's mask names a GPU of the node.
    let gpus = tempfile::tempdir().unwrap();
    let fixture = gpus.path().join("gpus.json");
    harness::write_fixture(
        &fixture,
        &serde_json::to_value(pool_managerd::gpu::simulated_gpus(1)).unwrap(),
    );
    let h = Harness::start_with(|c| c.gpu.fixture = fixture).await;
    let models = h.dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let (a, b, broken) = (
        models.join("a.gguf"),
        models.join("b.gguf"),
        models.join("c.gguf"),
    );
    std::fs::write(&a, "model a\n").unwrap();
    std::fs::write(&b, "model b\n").unwrap();
    std::fs::write(&broken, "broken\n").unwrap();
    let (status, answer) = h.post("/v2/pools/r/preload", model_engine("r", &a)).await;
    assert_eq!(status, 200, "{answer}");
    let first_pid = answer["pid"].as_u64().unwrap();
    let mut guards = vec![KillOnDrop(first_pid)];

    // Missing model, wrong digest: 422, the same engine still serving.
    let missing = json!({"new_model_ref": models.join("none.gguf").display().to_string()});
    let (status, answer) = h.post("/v2/pools/r/reload", missing).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("MODEL_NOT_FOUND")),
        "{answer}"
    );
    let wrong = json!({"new_model_ref": format!("file://{}", b.display()), "digest": format!("sha256:{}", "0".repeat(64))});
    let (status, answer) = h.post("/v2/pools/r/reload", wrong).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("MODEL_NOT_FOUND")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("digest mismatch"),
        "{answer}"
    );
    let still = h.wait_pool("r", "serving", |s| s["ready"] == true).await;
    assert_eq!(
        still["pid"], first_pid,
        "the running engine was not touched"
    );

    // The same model: a no-op.
    let same = json!({"new_model_ref": a.display().to_string()});
    let (status, answer) = h.post("/v2/pools/r/reload", same).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["noop"], true);

    // A good model: a new engine on it; pool id, device mask and replica kept.
    let good = json!({"new_model_ref": b.display().to_string(), "drain_deadline_ms": 5000});
    let (status, answer) = h.post("/v2/pools/r/reload", good).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["noop"], false);
    assert_eq!(answer["model_ref"], b.display().to_string());
    let after = h.wait_pool("r", "ready on b", |s| s["ready"] == true).await;
    let second_pid = after["pid"].as_u64().unwrap();
    guards.push(KillOnDrop(second_pid));
    assert_ne!(second_pid, first_pid);
    assert_eq!(after["device_mask"], "GPU0");
    assert_eq!(after["pool_id"], "r");
    let cmdline = std::fs::read(format!("/proc/{second_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("b.gguf"),
        "the -m flag follows the model"
    );
    assert!(!pid_alive(first_pid), "the old engine is gone");

    // A model the new engine cannot load: rolled back to b, ready again.
    let bad = json!({"new_model_ref": broken.display().to_string(), "drain_deadline_ms": 5000});
    let (status, answer) = h.post("/v2/pools/r/reload", bad).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("RELOAD_FAILED")),
        "{answer}"
    );
    assert_eq!(answer["rolled_back"], true, "{answer}");
    let rolled = h
        .wait_pool("r", "ready again", |s| s["ready"] == true)
        .await;
    guards.push(KillOnDrop(rolled["pid"].as_u64().unwrap()));
    assert_eq!(rolled["model_ref"], b.display().to_string());
    let kinds = kinds(&h, "r").await;
    for kind in [
        "ReloadRequested",
        "ModelStaged",
        "ReloadSucceeded",
        "ReloadFailed",
        "ReloadRolledBack",
    ] {
        assert!(kinds.contains(&kind.to_string()), "{kind} in {kinds:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_drain_past_its_deadline_force_stops_the_engine_with_leases_held() {
    let h = Harness::start().await;
    let (body, _) = engine("held", ENGINE_SIM, &["--parallel", "2"]);
    let (_, answer) = h.post("/v2/pools/held/preload", body).await;
    let _guard = KillOnDrop(answer["pid"].as_u64().unwrap());
    let (_, lease) = h.post("/v2/pools/held/leases", json!({})).await;
    assert_eq!(lease["active_leases"], 1);
    let started = Instant::now();
    let (status, _) = h
        .post("/v2/pools/held/drain", json!({"deadline_ms": 300}))
        .await;
    assert_eq!(status, 202);
    let stopped = h
        .wait_pool("held", "force-stopped", |s| s["phase"] == "stopped")
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the deadline"
    );
    assert_eq!(stopped["draining"], false);
    let (_, events) = h.get("/v2/pools/held/events").await;
    let completed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["kind"] == "DrainCompleted")
        .expect("DrainCompleted");
    assert_eq!(
        completed["event"]["outcome"], "force_stopped",
        "{completed}"
    );
    assert_eq!(completed["event"]["leases_at_stop"], 1, "{completed}");
    h.stop().await;
}

#[tokio::test]
async fn a_drain_with_no_leases_completes_at_once() {
    let h = Harness::start().await;
    let (body, _) = engine("idle", ENGINE_SIM, &[]);
    let (_, answer) = h.post("/v2/pools/idle/preload", body).await;
    let _guard = KillOnDrop(answer["pid"].as_u64().unwrap());
    let (status, _) = h
        .post("/v2/pools/idle/drain", json!({"deadline_ms": 60_000}))
        .await;
    assert_eq!(status, 202);
    h.wait_pool("idle", "stopped", |s| s["phase"] == "stopped")
        .await;
    let (_, events) = h.get("/v2/pools/idle/events").await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"]["kind"] == "DrainCompleted" && e["event"]["outcome"] == "graceful"));
    h.stop().await;
}

/// Kills the process group of an engine when dropped (also when a test panics).
struct KillOnDrop(u64);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if pid_alive(self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test]
async fn engines_outlive_the_daemon_and_are_adopted_by_its_next_start() {
    let mut h = Harness::start_with(|c| c.stop_engines_on_shutdown = false).await;
    let (body, _) = engine("long", ENGINE_SIM, &["--parallel", "2"]);
    let (status, answer) = h.post("/v2/pools/long/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().unwrap();
    // This engine outlives a daemon on purpose: never let it outlive a failed test.
    let _guard = KillOnDrop(pid);
    let (_, lease) = h.post("/v2/pools/long/leases", json!({})).await;
    assert_eq!(lease["active_leases"], 1);

    // Stop the daemon; the engine keeps serving.
    let daemon = h.daemon.take().unwrap();
    daemon.shutdown("upgrade").await;
    assert!(pid_alive(pid), "the engine outlived the daemon");

    let config = config(h.dir.path());
    let (daemon, _) = Daemon::start(&config, Arc::new(SystemClock)).await.unwrap();
    h.base = format!("http://{}", daemon.addr());
    h.daemon = Some(daemon);
    let status = h
        .wait_pool("long", "adopted", |s| s["ready"] == true && s["pid"] == pid)
        .await;
    assert_eq!(status["active_leases"], 1, "leases kept across the restart");
    let (_, events) = h.get("/v2/pools/long/events").await;
    let kinds: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.iter().any(|k| k == "EngineAdopted"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "EngineSpawned").count(),
        1,
        "never a second engine: {kinds:?}"
    );
    // The adopted engine is watched: its death is seen.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    h.wait_pool("long", "unready after the adopted engine died", |s| {
        s["ready"] == false
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_root_daemon_runs_engines_as_engine_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: engine_user does not apply");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        panic!("this test needs the user 'nobody'");
    };
    let h = Harness::start_with(|c| c.engine_user = "nobody".into()).await;
    let (body, _) = engine("unpriv", ENGINE_SIM, &[]);
    let (status, answer) = h.post("/v2/pools/unpriv/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.uid.to_string()),
        "{uid_line}"
    );
    let nnp = proc_status
        .lines()
        .find(|l| l.starts_with("NoNewPrivs:"))
        .unwrap();
    assert!(nnp.ends_with('1'), "{nnp}");
    h.stop().await;
}

/// Records the journals of real daemon runs into `replay-tests/journals/daemon-*.ndjson`
/// (their snapshots follow with `INSTA_UPDATE=always cargo test --test replay`). Not a test:
/// run it on purpose with `cargo test --test daemon -- --ignored record_daemon_journals`.
#[tokio::test]
#[ignore = "records replay-tests journals from real runs; run on purpose"]
async fn record_daemon_journals() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay-tests/journals");

    // A preload with leases, then a stop.
    let h = Harness::start().await;
    let (body, _) = engine("chat", ENGINE_SIM, &["--parallel", "4", "--load-ms", "300"]);
    assert_eq!(h.post("/v2/pools/chat/preload", body).await.0, 200);
    let mut leases = Vec::new();
    for _ in 0..3 {
        let (status, lease) = h.post("/v2/pools/chat/leases", json!({})).await;
        assert_eq!(status, 201);
        leases.push(lease["lease_id"].as_str().unwrap().to_string());
    }
    let path = format!("/v2/pools/chat/leases/{}", leases[0]);
    assert_eq!(h.call(reqwest::Method::DELETE, &path, None).await.0, 200);
    assert_eq!(h.post("/v2/pools/chat/stop", json!({})).await.0, 202);
    h.wait_pool("chat", "stopped", |s| s["phase"] == "stopped")
        .await;
    export(h, &out.join("daemon-preload-leases.ndjson")).await;

    // Failed preloads: an engine that never becomes healthy, one that exits while loading.
    let h = Harness::start_with(|c| c.health.preload_timeout_ms = 600).await;
    let (body, _) = engine("slow", ENGINE_SIM, &["--never-healthy"]);
    assert_eq!(h.post("/v2/pools/slow/preload", body).await.0, 500);
    let (body, _) = engine(
        "crashy",
        ENGINE_SIM,
        &["--load-ms", "3000", "--crash-after-ms", "100"],
    );
    assert_eq!(h.post("/v2/pools/crashy/preload", body).await.0, 500);
    for pool in ["slow", "crashy"] {
        let path = format!("/v2/pools/{pool}");
        assert_eq!(h.call(reqwest::Method::DELETE, &path, None).await.0, 200);
    }
    export(h, &out.join("daemon-preload-failed.ndjson")).await;
}

async fn export(h: Harness, to: &Path) {
    let Harness { dir, daemon, .. } = h;
    let journal_dir = dir.path().join("journal");
    daemon.unwrap().shutdown("recording finished").await;
    let (journal, _) =
        pool_managerd::schema::PoolJournal::open(pool_journal::JournalConfig::new(&journal_dir))
            .unwrap();
    let mut file = std::fs::File::create(to).unwrap();
    journal.export(&mut file).unwrap();
    journal.close().unwrap();
}

/// A pid that now belongs to an unrelated program is never taken for our engine: not adopted
/// (its start time or boot differs from the journal's), and not killed by a new start (its
/// pid file names it, but it does not run the prepared binary as a session leader). The
/// binary is no part of the identity: with the same pid, start time and boot, another binary
/// (a launcher's `exec`, an upgrade) is adopted, the change logged.
#[tokio::test]
async fn an_unrelated_process_is_neither_adopted_nor_killed() {
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let pid = stranger.id();
    let start_time = pool_managerd::supervisor::process::start_time(pid).unwrap();
    let pool = pool_managerd::core::PoolId::new("p").unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot = Some(boot.trim().to_string());
    let verdict = |start_time, boot_id: &Option<String>, binary: Option<&str>| {
        let recorded = pool_managerd::supervisor::Recorded {
            pid,
            start_time,
            boot_id: boot_id.clone(),
            binary_path: binary.map(str::to_string),
            exe: None,
        };
        pool_managerd::supervisor::verify_engine(&pool, &recorded)
    };
    use pool_managerd::core::Observation::{EngineAdopted, EngineLost};
    assert!(
        matches!(verdict(start_time + 1, &boot, None), EngineLost { .. }),
        "another start time"
    );
    assert!(
        matches!(verdict(0, &boot, None), EngineLost { .. }),
        "an unknown start time"
    );
    let other_boot = Some("00000000-0000-4000-8000-000000000000".to_string());
    assert!(
        matches!(
            verdict(start_time, &other_boot, Some("sleep")),
            EngineLost { .. }
        ),
        "another boot"
    );
    assert!(
        matches!(
            verdict(start_time, &boot, Some("sleep")),
            EngineAdopted { .. }
        ),
        "the same one"
    );
    assert!(
        matches!(
            verdict(start_time, &boot, Some(ENGINE_SIM)),
            EngineAdopted { .. }
        ),
        "the same one, another binary (logged)"
    );
    assert!(
        matches!(
            verdict(start_time, &None, Some("sleep")),
            EngineAdopted { .. }
        ),
        "a record without a boot id (before format version 4)"
    );

    // Its pid in a pool's pid file: a preload of that pool leaves it alone.
    let h = Harness::start().await;
    let pids = h.runtime().join("pids");
    std::fs::write(pids.join("p.pid"), format!("{pid}\n")).unwrap();
    let (body, _) = engine("p", ENGINE_SIM, &[]);
    let (status, answer) = h.post("/v2/pools/p/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let _guard = KillOnDrop(answer["pid"].as_u64().unwrap());
    assert!(
        pid_alive(u64::from(pid)),
        "the unrelated process was killed"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    h.stop().await;
}

/// `daemon::run` serves on the listener its caller bound (not on `config.addr`), until the
/// shutdown future resolves, and records that future's reason as the daemon's stop.
#[tokio::test]
async fn run_serves_on_the_callers_listener_until_its_shutdown_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // An address already taken: `run` must not try to bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.addr = taken.local_addr().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn({
        let config = config.clone();
        async move {
            let shutdown = async move {
                let _ = stopped.await;
                "stopped by its caller".to_string()
            };
            pool_managerd::daemon::run(&config, Arc::new(SystemClock), listener, shutdown).await
        }
    });
    let health = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run returns once its shutdown resolved")
        .unwrap()
        .unwrap();
    assert_eq!(report.replayed_to_seq, 0, "a fresh journal");
    let (journal, _) = pool_managerd::schema::PoolJournal::open(pool_journal::JournalConfig::new(
        &config.journal_dir,
    ))
    .unwrap();
    let last = journal.read_from(1).last().unwrap().unwrap();
    assert!(
        matches!(&last.event, pool_core::Event::DaemonStopped { reason } if reason == "stopped by its caller"),
        "{last:?}"
    );
    let _ = journal.close();
}
