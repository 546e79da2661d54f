//! The real NVML code path (`src/gpu/nvml.rs`, through `nvml-wrapper`) in CI, without a GPU:
//! `tests/fake-nvml/fake_nvml.c` is built here into a `libnvidia-ml.so.1` that answers from a
//! scenario file the test rewrites, and the daemon (a real `pool-managerd serve`, a real
//! engine-sim) loads it through `LD_LIBRARY_PATH` as it would load the driver's. Checked
//! through it: the inventory (GPUs, MIG devices, compute processes, VRAM), the placement proof
//! and `CPU_SPILLOVER`, the VRAM of an engine's processes, Xid events from an NVML event set
//! failing the pool on the GPU, the wait for a killed engine's memory before its restart, and
//! NVML's error returns (not supported, GPU lost, no permission for events, driver not
//! loaded). A machine with a GPU remains the final word (`scripts/gpu-check.sh`).
//!
//! Building the library needs a C compiler (`cc`): without one the tests fail under
//! `CI=true` and are skipped with the reason elsewhere.

#[path = "support/fake_nvml.rs"]
mod fake_nvml;
#[path = "support/daemon_harness.rs"]
mod harness;

use harness::serve::{Serve, ServeCommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const GIB: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(20);
const GPU0: &str = "GPU-aaaaaaaa-0000-4000-8000-000000000000";
const GPU1: &str = "GPU-bbbbbbbb-0000-4000-8000-000000000001";
const MIG: &str = "MIG-cccccccc-0000-4000-8000-000000000002";

/// The directory of the fake library built under `dir`, or `None` (skipped, with the reason)
/// where no C compiler runs, which `CI=true` refuses.
fn build_library(dir: &Path) -> Option<PathBuf> {
    let library = fake_nvml::build_library(dir)?;
    library.parent().map(Path::to_path_buf)
}

/// Two GPUs (the second with a MIG device), and `extra` lines.
fn scenario(extra: &[String]) -> String {
    let mut lines = vec![
        format!(
            "gpu 0 {GPU0} NVIDIA_H100_80GB_HBM3 9 0 {} {}",
            80 * GIB,
            70 * GIB
        ),
        format!(
            "gpu 1 {GPU1} NVIDIA_A100-SXM4-80GB 8 0 {} {}",
            80 * GIB,
            80 * GIB
        ),
        format!("mig 1 {MIG} 1g.10gb {} {}", 10 * GIB, 10 * GIB),
        "proc 0 1 1073741824".to_string(),
    ];
    lines.extend(extra.iter().cloned());
    lines.join("\n") + "\n"
}

/// Rewrites the scenario file atomically.
fn write_scenario(path: &Path, extra: &[String]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, scenario(extra)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A daemon that needs a GPU (not `--dev`) over the fake library.
fn daemon(dir: &Path, lib: &Path, file: &Path) -> Serve {
    let config = dir.join("pool-managerd.toml");
    std::fs::write(
        &config,
        "require_gpu = true\nallow_root_engines = true\n\
         [health]\npreload_interval_ms = 50\n\
         [gpu]\npoll_interval_ms = 100\nplacement_timeout_ms = 5000\nrelease_timeout_ms = 20000\n",
    )
    .unwrap();
    ServeCommand::new(DAEMON, dir)
        .config(&config)
        .env("LD_LIBRARY_PATH", lib)
        .env("POOL_MANAGERD_FAKE_NVML", file)
        .start()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

async fn get(base: &str, path: &str) -> Value {
    http()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `GET path` until `check` holds, within [`WAIT`].
async fn until(base: &str, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = get(base, path).await;
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {path} is {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|all| {
            all.iter()
                .map(|e| e["event"]["kind"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `pool-managerd gpus --json` reads the GPUs, their MIG device and processes through the
/// real NVML code; NVML's "not supported" for processes leaves them out, and a library
/// without a loaded driver is a "no GPU" state that says so.
#[test]
fn the_inventory_is_read_through_the_nvml_library() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = build_library(dir.path()) else {
        return;
    };
    let file = dir.path().join("nvml.scenario");
    let gpus = |extra: &[String]| -> (bool, String) {
        write_scenario(&file, extra);
        let out = std::process::Command::new(DAEMON)
            .args(["gpus", "--json"])
            .env("LD_LIBRARY_PATH", &lib)
            .env("POOL_MANAGERD_FAKE_NVML", &file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = gpus(&[format!("proc 1 4242 {}", 2 * GIB)]);
    assert!(ok, "{text}");
    let answer: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(answer["source"], "NVML (libnvidia-ml.so.1)", "{answer}");
    let listed = &answer["gpus"];
    assert_eq!(listed[0]["uuid"], GPU0, "{listed}");
    assert_eq!(listed[0]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(listed[0]["compute_capability"], "9.0");
    assert_eq!(listed[0]["vram_free_bytes"], 70 * GIB);
    assert_eq!(
        listed[0]["processes"],
        json!([{"pid": 1, "used_bytes": GIB}])
    );
    assert_eq!(listed[1]["mig_devices"][0]["uuid"], MIG, "{listed}");
    assert_eq!(listed[1]["processes"][0]["pid"], 4242, "{listed}");

    let not_supported = "error nvmlDeviceGetComputeRunningProcesses_v3 3".to_string();
    let (ok, text) = gpus(&[not_supported]);
    assert!(ok, "{text}");
    let answer: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(answer["gpus"][0]["processes"], json!([]), "{answer}");

    // `--nvml-library` (as `[gpu] nvml_library`) loads the file it names, without the
    // loader's path; one that cannot be loaded is a "no GPU" state naming it.
    write_scenario(&file, &[]);
    let by_path = |library: &Path| -> Value {
        let out = std::process::Command::new(DAEMON)
            .args(["gpus", "--json", "--nvml-library"])
            .arg(library)
            .env_remove("LD_LIBRARY_PATH")
            .env("POOL_MANAGERD_FAKE_NVML", &file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let library = lib.join("libnvidia-ml.so.1");
    let answer = by_path(&library);
    assert_eq!(
        answer["source"],
        format!("NVML ({})", library.display()),
        "{answer}"
    );
    assert_eq!(answer["gpus"][1]["uuid"], GPU1, "{answer}");
    let missing = dir.path().join("elsewhere/libnvidia-ml.so.1");
    let answer = by_path(&missing);
    assert_eq!(answer["available"], false, "{answer}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&missing.display().to_string()) && reason.contains("[gpu] nvml_library"),
        "{answer}"
    );

    let (ok, text) = gpus(&["error nvmlInit_v2 9".to_string()]);
    assert!(ok, "{text}");
    let answer: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(answer["available"], false, "{answer}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("driver is not loaded") && reason.contains("--dev"),
        "{answer}"
    );
}

/// Through NVML: an engine never listed on its GPU fails with `CPU_SPILLOVER`; one listed is
/// ready with its VRAM; an Xid from the event set fails it as a driver error; its restart
/// waits until NVML shows its memory back; a lost GPU is a driver reset; a refused event
/// registration leaves the daemon working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_vram_xids_and_the_release_wait_go_through_nvml() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = build_library(dir.path()) else {
        return;
    };
    let file = dir.path().join("nvml.scenario");
    write_scenario(&file, &[]);
    let serve = daemon(dir.path(), &lib, &file);
    let base = serve.base();

    // Never listed: CPU_SPILLOVER after the placement wait.
    let body = harness::engine_sim_preload("p0", Some("1"), &[]);
    let (status, answer) = post(&base, "/v2/pools/p0/preload", body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("CPU_SPILLOVER")),
        "{answer}"
    );

    // Listed on GPU 0 once spawned: ready, with its VRAM.
    let body = harness::engine_sim_preload("p1", Some("0"), &["--load-ms", "300"]);
    let (status, answer) = post(&base, "/v2/pools/p1/preload?wait=false", body).await;
    assert_eq!(status, 202, "{answer}");
    let spawned = until(&base, "/v2/pools/p1", "spawned", |s| s["pid"].is_u64()).await;
    let pid = spawned["pid"].as_u64().unwrap();
    let listed = format!("proc 0 {pid} {}", 4 * GIB);
    write_scenario(&file, std::slice::from_ref(&listed));
    until(&base, "/v2/pools/p1", "ready with its VRAM", |s| {
        s["ready"] == true && s["vram_used_bytes"] == 4 * GIB
    })
    .await;

    // An Xid 79 on GPU 0 through the event set: the pool fails as a driver error, and its
    // restart (at once) waits: NVML still lists the failed engine.
    write_scenario(&file, &[listed.clone(), "xid 0 79".to_string()]);
    let events = until(&base, "/v2/pools/p1/events", "the Xid's failure", |e| {
        e.to_string().contains("driver_error")
    })
    .await;
    assert!(!kinds(&events).contains(&"GpuMemoryReleased".to_string()));
    until(&base, "/v2/pools/p1", "the restart waiting", |s| {
        s["phase"] == "starting"
    })
    .await;
    // The driver gives the memory back: the restart goes ahead.
    let back = format!(
        "gpu 0 {GPU0} NVIDIA_H100_80GB_HBM3 9 0 {} {}",
        80 * GIB,
        74 * GIB
    );
    write_scenario(&file, &["xid 0 79".to_string(), back]);
    until(&base, "/v2/pools/p1/events", "the memory released", |e| {
        kinds(e).contains(&"GpuMemoryReleased".to_string())
    })
    .await;
    let node = get(&base, "/v2/events?since=1&limit=10000").await;
    assert!(
        kinds(&node).contains(&"GpuXidObserved".to_string()),
        "{node}"
    );

    // GPU lost while the daemon waits on events: a driver reset of GPU 0.
    write_scenario(&file, &["error nvmlEventSetWait_v2 15".to_string()]);
    let node = until(
        &base,
        "/v2/events?since=1&limit=10000",
        "a driver reset",
        |e| e.to_string().contains("DriverResetObserved"),
    )
    .await;
    assert!(node.to_string().contains(GPU0), "{node}");
    drop(serve);
}

/// A refused event registration (no permission, as for a non-root daemon on some drivers):
/// logged, no Xids seen, and the inventory still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refused_by_nvml_leave_the_daemon_working() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = build_library(dir.path()) else {
        return;
    };
    let file = dir.path().join("nvml.scenario");
    write_scenario(&file, &["error nvmlDeviceRegisterEvents 4".to_string()]);
    let serve = daemon(dir.path(), &lib, &file);
    let base = serve.base();
    let gpus = until(&base, "/v2/gpus", "two GPUs", |g| {
        g.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(gpus[0]["uuid"], GPU0);
    let deadline = Instant::now() + WAIT;
    while !serve
        .log_text()
        .contains("cannot register for NVML Xid/ECC events")
    {
        assert!(
            Instant::now() < deadline,
            "no warning:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(serve);
}
