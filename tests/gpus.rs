//! GPUs end to end (SPEC section 10): `serve` without `--dev` on a machine without a GPU (a
//! child process over a real socket), `pool-managerd gpus` (table, JSON, the no-GPU reason),
//! and the observation loop driven by a fixture file that the tests rewrite (a process on a
//! GPU, less free VRAM, an engine outside its mask, an Xid, GPUs appearing and vanishing, a GPU
//! quarantined by its hardware Xids).
//!
//! Waits poll the API (or the published registry) with a bounded deadline; nothing sleeps
//! hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::serve::ServeCommand;
use harness::{engine_sim_preload, write_fixture, Harness};
use pool_managerd::gpu::{simulated_gpus, GpuInventory, NvmlInventory};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_pool-managerd");
/// How long a wait for the observation loop (50 ms ticks) may take.
const LOOP_WAIT: Duration = Duration::from_secs(10);
const GIB: u64 = 1 << 30;

/// Polls `probe` until it gives `Some`, at most `LOOP_WAIT`.
async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LOOP_WAIT;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {LOOP_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The acceptance check of issue 7: `serve` without `--dev` on a machine without a GPU
/// starts, answers `/health` with the reason, and refuses a preload with `GPU_REQUIRED`.
#[tokio::test]
async fn serve_without_dev_on_a_machine_without_a_gpu_refuses_preloads() {
    if let Ok(snapshot) = NvmlInventory::new().observe() {
        eprintln!(
            "skipped: this machine has {} GPU(s) through NVML",
            snapshot.gpus.len()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Without `--dev`: a GPU is required, and this machine has none.
    let mut child = ServeCommand::new(BIN, dir.path()).spawn();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = child.base();
    let health: Value = until("serve answers /health", async || {
        if let Ok(Some(status)) = child.guard.0.try_wait() {
            panic!("serve exited with {status}: {}", child.log_text());
        }
        let response = http.get(format!("{base}/health")).send().await.ok()?;
        response.json().await.ok()
    })
    .await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["gpu"]["available"], false, "{health}");
    assert_eq!(health["gpu"]["count"], 0, "{health}");
    assert_eq!(health["gpu"]["required"], true, "{health}");
    let reason = health["gpu"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("NVIDIA"), "{health}");
    assert!(reason.contains("--dev"), "{health}");

    let response = http
        .post(format!("{base}/v2/pools/p1/preload"))
        .json(&engine_sim_preload("p1", None, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "GPU_REQUIRED", "{answer}");

    let gpus: Value = http
        .get(format!("{base}/v2/gpus"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gpus, json!([]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.guard.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.guard.0.wait().unwrap();
    assert!(status.success(), "serve stopped on SIGTERM with {status}");
}

fn gpus_command(args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .arg("gpus")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn two_gpus_with_mig() -> Value {
    json!([
        {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA H100 80GB HBM3",
         "compute_capability": "9.0", "vram_total_bytes": 80 * GIB,
         "vram_free_bytes": 79 * GIB, "processes": [{"pid": 4242, "used_bytes": GIB}]},
        {"index": 1, "uuid": "GPU-bbbb", "name": "NVIDIA A100-SXM4-40GB",
         "compute_capability": "8.0", "vram_total_bytes": 40 * GIB,
         "vram_free_bytes": 40 * GIB,
         "mig_devices": [{"uuid": "MIG-cccc", "name": "1g.5gb",
                          "vram_total_bytes": 5 * GIB, "vram_free_bytes": 5 * GIB}]}
    ])
}

#[test]
fn gpus_command_prints_the_inventory_or_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("gpus.json");
    write_fixture(&fixture, &two_gpus_with_mig());
    let fixture_arg = fixture.to_str().unwrap();

    let (code, table) = gpus_command(&["--gpu-fixture", fixture_arg]);
    assert_eq!(code, 0, "{table}");
    for expected in [
        "INDEX",
        "GPU-aaaa",
        "NVIDIA H100 80GB HBM3",
        "9.0",
        "80.0 GiB",
        "79.0 GiB",
        "4242 1.0 GiB",
        "1/mig",
        "MIG-cccc",
        "1g.5gb",
    ] {
        assert!(
            table.contains(expected),
            "{expected:?} missing from:\n{table}"
        );
    }

    let (code, out) = gpus_command(&["--gpu-fixture", fixture_arg, "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["available"], true);
    assert_eq!(doc["gpus"][0]["uuid"], "GPU-aaaa");
    assert_eq!(doc["gpus"][0]["processes"][0]["used_bytes"], GIB);
    assert_eq!(doc["gpus"][1]["mig_devices"][0]["uuid"], "MIG-cccc");
    assert_eq!(doc["gpus"][1]["mig_devices"][0]["parent_index"], 1);

    // Missing and invalid fixtures: the reason, exit 0.
    let missing = dir.path().join("missing.json");
    let (code, out) = gpus_command(&["--gpu-fixture", missing.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no usable GPU") && out.contains("missing.json"),
        "{out}"
    );
    let mut duplicate = two_gpus_with_mig();
    duplicate[1]["uuid"] = json!("GPU-aaaa");
    write_fixture(&fixture, &duplicate);
    let (code, out) = gpus_command(&["--gpu-fixture", fixture_arg, "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["available"], false);
    assert!(
        doc["reason"].as_str().unwrap().contains("appears twice"),
        "{doc}"
    );

    // NVML: this machine's GPUs, or why there are none; exit 0 either way.
    let (code, out) = gpus_command(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("GPUs from NVML") || out.contains("no usable GPU"),
        "{out}"
    );
}

async fn start_with_fixture(fixture: &Path, require_gpu: bool) -> Harness {
    let fixture: PathBuf = fixture.to_path_buf();
    let mut h = Harness::start_with(|c| {
        c.require_gpu = require_gpu;
        c.gpu.fixture = fixture;
        c.gpu.poll_interval_ms = 50;
        // With require_gpu, an engine never listed on a GPU fails its start (CPU_SPILLOVER)
        // after this wait (tests/spillover.rs); these tests do not list their engines.
        c.gpu.placement_timeout_ms = 500;
    })
    .await;
    h.wait = LOOP_WAIT;
    h
}

fn pool_vram(h: &Harness, pool: &str) -> Option<u64> {
    h.daemon
        .as_ref()?
        .handle()
        .registry()
        .status(pool)?
        .vram_used_bytes
}

/// The loop turns what the fixture shows into the registry: an engine's VRAM, its pool in
/// `GET /v2/gpus`, the core's inventory, a process outside the mask, an Xid on its GPU.
#[tokio::test]
async fn the_observation_loop_follows_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("gpus.json");
    let mut gpus = serde_json::to_value(simulated_gpus(2)).unwrap();
    write_fixture(&fixture, &gpus);
    let h = start_with_fixture(&fixture, false).await;
    let uuid0 = gpus[0]["uuid"].as_str().unwrap().to_string();
    let uuid1 = gpus[1]["uuid"].as_str().unwrap().to_string();

    let (status, health) = h.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["gpu"]["available"], true, "{health}");
    assert_eq!(health["gpu"]["count"], 2, "{health}");
    assert!(health["gpu"].get("reason").is_none(), "{health}");
    let (status, listed) = h.get("/v2/gpus").await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed[0]["uuid"], uuid0.as_str());
    assert_eq!(listed[0]["compute_capability"], "9.0");
    assert_eq!(listed[0]["vram_total_bytes"], 80 * GIB);
    assert_eq!(listed[0]["mig_devices"], json!([]));
    assert_eq!(listed[0]["processes"], json!([]));

    let (status, answer) = h
        .post(
            "/v2/pools/p1/preload",
            engine_sim_preload("p1", Some("0"), &[]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().unwrap();

    // The engine appears on GPU 0 with 2 GiB, and GPU 0 has 10 GiB less free.
    gpus[0]["processes"] =
        json!([{"pid": pid, "used_bytes": 2 * GIB}, {"pid": 1, "used_bytes": GIB}]);
    gpus[0]["vram_free_bytes"] = json!(69 * GIB);
    write_fixture(&fixture, &gpus);
    let status = h
        .wait_pool("p1", "vram_used_bytes of 2 GiB", |s| {
            s["vram_used_bytes"] == 2 * GIB
        })
        .await;
    assert_eq!(status["ready"], true, "{status}");
    let listed = until("the engine's pool in GET /v2/gpus", async || {
        let (_, listed) = h.get("/v2/gpus").await;
        (listed[0]["processes"][0]["pool_id"] == "p1").then_some(listed)
    })
    .await;
    assert_eq!(listed[0]["processes"][0]["pid"], pid);
    assert!(
        listed[0]["processes"][1].get("pool_id").is_none(),
        "pid 1 is no pool's engine: {listed}"
    );
    let registry = h.daemon.as_ref().unwrap().handle().registry().clone();
    until("the core's inventory with less free VRAM", async || {
        let state = registry.load().state.clone();
        (state.node.gpus.first()?.vram_free_bytes == 69 * GIB).then_some(())
    })
    .await;

    // The engine shows up on GPU 1, outside its mask "0": DeviceMaskViolation.
    gpus[1]["processes"] = json!([{"pid": pid, "used_bytes": GIB}]);
    write_fixture(&fixture, &gpus);
    until("a DeviceMaskViolation on GPU 1", async || {
        let (_, events) = h.get("/v2/pools/p1/events").await;
        let text = events.to_string();
        (text.contains("DeviceMaskViolation") && text.contains(&uuid1)).then_some(())
    })
    .await;
    assert_eq!(
        pool_vram(&h, "p1"),
        Some(3 * GIB),
        "VRAM summed over the GPUs"
    );

    // An Xid on GPU 0: the core counts it and handles the pool on it as a driver error.
    gpus[1]["processes"] = json!([]);
    gpus[0]["xids"] = json!([79]);
    write_fixture(&fixture, &gpus);
    until(
        "the Xid recorded and the pool failed as a driver error",
        async || {
            let state = registry.load().state.clone();
            let (_, events) = h.get("/v2/pools/p1/events").await;
            (state.node.xid_total == 1 && events.to_string().contains("driver_error")).then_some(())
        },
    )
    .await;
    // Reported once: a later reading of the same list adds nothing.
    gpus[0]["vram_free_bytes"] = json!(60 * GIB);
    write_fixture(&fixture, &gpus);
    until("the next reading", async || {
        let state = registry.load().state.clone();
        (state.node.gpus.first()?.vram_free_bytes == 60 * GIB).then_some(())
    })
    .await;
    assert_eq!(registry.load().state.node.xid_total, 1);

    // The restart (at once) waits for the failed engine's memory: the driver gives it back
    // (its process gone, GPU 0's free VRAM up by its 2 GiB), and the new engine starts.
    gpus[0]["processes"] = json!([{"pid": 1, "used_bytes": GIB}]);
    gpus[0]["vram_free_bytes"] = json!(71 * GIB);
    write_fixture(&fixture, &gpus);
    let ready = h
        .wait_pool("p1", "ready on a new engine", |s| {
            s["ready"] == true && s["pid"].as_u64().is_some_and(|p| p != pid)
        })
        .await;
    assert_eq!(ready["restart_count"], 1, "{ready}");
    let (_, events) = h.get("/v2/pools/p1/events").await;
    assert!(
        events.to_string().contains("GpuMemoryReleased"),
        "the restart waited for the memory: {events}"
    );

    assert_eq!(h.post("/v2/pools/p1/stop", json!({})).await.0, 202);
    h.wait_pool("p1", "stopped", |s| s["phase"] == "stopped")
        .await;
    let (status, answer) = h.call(reqwest::Method::DELETE, "/v2/pools/p1", None).await;
    assert_eq!(status, 200, "{answer}");
    h.stop().await;
}

/// A GPU's hardware Xids quarantine it (`[gpu] quarantine_after`, 3): `GET /v2/gpus` and the
/// gauge say so, `pool-managerd gpus --addr` shows it in its QUARANTINED column, and
/// `POST /v2/gpus/{uuid}/unquarantine` ends it.
#[tokio::test]
async fn a_quarantined_gpu_is_shown_by_the_api_the_metrics_and_the_gpus_command() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("gpus.json");
    let mut gpus = serde_json::to_value(simulated_gpus(2)).unwrap();
    write_fixture(&fixture, &gpus);
    let h = start_with_fixture(&fixture, false).await;
    let uuid0 = gpus[0]["uuid"].as_str().unwrap().to_string();
    // Three hardware Xids (the default quarantine_after); 13 is an application's.
    gpus[0]["xids"] = json!([13, 79, 94, 48]);
    write_fixture(&fixture, &gpus);
    let listed = until("GPU 0 quarantined in GET /v2/gpus", async || {
        let (_, listed) = h.get("/v2/gpus").await;
        (listed[0]["quarantined"] == true).then_some(listed)
    })
    .await;
    assert!(listed[0]["quarantined_since_ms"].is_u64(), "{listed}");
    assert_eq!(listed[1]["quarantined"], false, "{listed}");
    let (_, metrics) = h.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains(&format!("gpu_quarantined{{gpu=\"{uuid0}\",index=\"0\"}} 1")),
        "{metrics}"
    );

    let args = [
        "--gpu-fixture".to_string(),
        fixture.to_str().unwrap().to_string(),
        "--addr".to_string(),
        h.base.clone(),
    ];
    let (code, table) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        gpus_command(&args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&uuid0))
        .unwrap_or_default();
    assert!(
        table.contains("QUARANTINED") && row.ends_with("yes"),
        "{table}"
    );

    let path = format!("/v2/gpus/{uuid0}/unquarantine");
    let (status, answer) = h.post(&path, json!({})).await;
    assert_eq!(
        (status, &answer["quarantined"]),
        (200, &json!(false)),
        "{answer}"
    );
    let (_, listed) = h.get("/v2/gpus").await;
    assert_eq!(listed[0]["quarantined"], false, "{listed}");
    h.stop().await;
}

/// With `require_gpu`, GPUs vanishing refuse preloads (`GPU_REQUIRED`) and GPUs appearing
/// allow them again; `/health` follows.
#[tokio::test]
async fn gpus_appearing_and_vanishing_gate_preloads() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("gpus.json");
    write_fixture(&fixture, &json!([]));
    let h = start_with_fixture(&fixture, true).await;

    let (_, health) = h.get("/health").await;
    assert_eq!(health["gpu"]["available"], false, "{health}");
    assert_eq!(health["gpu"]["required"], true, "{health}");
    assert!(
        health["gpu"]["reason"]
            .as_str()
            .unwrap()
            .contains("lists no GPU"),
        "{health}"
    );
    let (status, answer) = h
        .post("/v2/pools/p1/preload", engine_sim_preload("p1", None, &[]))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("GPU_REQUIRED")),
        "{answer}"
    );
    let (status, listed) = h.get("/v2/gpus").await;
    assert_eq!((status, listed), (200, json!([])));

    write_fixture(&fixture, &serde_json::to_value(simulated_gpus(1)).unwrap());
    let registry = h.daemon.as_ref().unwrap().handle().registry().clone();
    until("GPUs back in /health and the core", async || {
        let (_, health) = h.get("/health").await;
        let state = registry.load().state.clone();
        (health["gpu"]["available"] == true
            && health["gpu"].get("reason").is_none()
            && state.node.preflight_error.is_none()
            && state.node.gpus.len() == 1)
            .then_some(())
    })
    .await;
    let (status, answer) = h
        .post(
            "/v2/pools/p1/preload?wait=false",
            engine_sim_preload("p1", Some("0"), &[]),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // The engine is not on the simulated GPU: the start ends (CPU_SPILLOVER) and the engine is
    // stopped, restarted at once, and fails the same way. A DELETE while a start is under way
    // would be refused (409 POOL_BUSY): wait for the backoff after the second failure.
    h.wait_pool("p1", "the starts over and the engine gone", |s| {
        s["phase"] == "backoff" && s["backoff_ms"].as_u64() > Some(0)
    })
    .await;
    let (status, answer) = h.call(reqwest::Method::DELETE, "/v2/pools/p1", None).await;
    assert_eq!(status, 200, "{answer}");

    write_fixture(&fixture, &json!([]));
    until("GPUs gone again", async || {
        let state = registry.load().state.clone();
        (state.node.preflight_error.is_some() && state.node.gpus.is_empty()).then_some(())
    })
    .await;
    let (status, answer) = h
        .post("/v2/pools/p2/preload", engine_sim_preload("p2", None, &[]))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("GPU_REQUIRED")),
        "{answer}"
    );
    h.stop().await;
}
