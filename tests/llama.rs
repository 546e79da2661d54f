//! The real engine: llama.cpp's `llama-server` supervised end to end (issue 9). engine-sim
//! proves our logic against our own idea of an engine; these tests prove it against the engine
//! operators run.
//!
//! The server and a tiny model come from `scripts/get-llama-server.sh` (built from source once,
//! then cached): the paths are taken from `POOL_MANAGERD_LLAMA_SERVER` and
//! `POOL_MANAGERD_LLAMA_MODEL`, else from the script's default cache
//! (`~/.cache/pool-managerd/llama`). Without them the tests fail under `CI=true` (`.ci/run`
//! runs the script first) and are skipped with a printed reason elsewhere.
//!
//! Each test runs a real daemon (in this process, or as a `serve` child for the SIGKILL test)
//! over a temporary directory, on a free loopback port. Waits poll with bounded deadlines;
//! nothing sleeps hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use harness::serve::{Serve, ServeCommand};
#[path = "support/llama_server.rs"]
mod llama_server;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, pid_alive, Harness};
use llama_server::Llama;
use serde_json::{json, Value};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
/// A real server's start: process start, model load (the tiny model loads in well under a
/// second), listening. Generous for a loaded 2-core machine.
const READY_WAIT: Duration = Duration::from_secs(60);

fn llama() -> Option<Llama> {
    llama_server::find("skipped")
}

/// The prepared engine of a llama-server for `pool` on `port` serving `model`, with 2 slots
/// (`--parallel 2`, which the daemon reads back from `/props`: no `slots_total` is given).
fn prepared(llama: &Llama, pool: &str, port: u16, model: &Path) -> Value {
    let model = model.display().to_string();
    json!({
        "binary_path": llama.server.display().to_string(),
        "flags": ["-m", model, "--host", "127.0.0.1", "--port", port.to_string(),
                  "--parallel", "2", "-c", "256", "-t", "1"],
        "host": "127.0.0.1",
        "port": port,
        "model_path": model,
        "engine_version": "llama.cpp",
        "engine": "llamacpp",
        "pool_id": pool,
        "replica_id": "r0",
    })
}

/// A daemon for the real engine: development mode, a preload timeout that a cold start fits
/// in, fast restarts.
async fn daemon() -> Harness {
    let mut h = Harness::start_with(|c| {
        c.health.preload_interval_ms = 50;
        c.health.preload_timeout_ms = 60_000;
        c.stop.grace_ms = 5_000;
        c.backoff.min_ms = 100;
        c.backoff.initial_ms = 200;
        c.backoff.max_ms = 1_000;
    })
    .await;
    h.wait = READY_WAIT;
    h
}

/// Preloads pool `p1` with the server on `port` serving the tiny model; the 200 answer.
async fn preload_ready(h: &Harness, llama: &Llama, port: u16) -> Value {
    let (status, answer) = h
        .post(
            "/v2/pools/p1/preload",
            json!({ "prepared": prepared(llama, "p1", port, &llama.model) }),
        )
        .await;
    assert_eq!(status, 200, "preload: {answer}");
    answer
}

fn last_of(events: &Value, kind: &str) -> Value {
    events
        .as_array()
        .and_then(|all| all.iter().rev().find(|e| e["event"]["kind"] == kind))
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} in {events}"))
}

async fn remove(h: &Harness, pool: &str) {
    let (status, answer) = h
        .call(reqwest::Method::DELETE, &format!("/v2/pools/{pool}"), None)
        .await;
    assert_eq!(status, 200, "DELETE {pool}: {answer}");
}

/// Preload (waiting) with a probe of our own on the engine's `/health` beside it: the real
/// server answers 503 "Loading model" while it loads, and the daemon must treat that as
/// loading, not as a failure. Returns the preload's answer and every status the probe saw.
async fn preload_watching_health(
    h: &Harness,
    pool: &str,
    body: Value,
    port: u16,
) -> (u16, Value, Vec<u16>) {
    let probe_client = reqwest::Client::builder().no_proxy().build().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe_done = done.clone();
    let probe = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !probe_done.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(response) = probe_client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
            {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                if status == 503 {
                    assert!(text.contains("Loading model"), "the real 503 body: {text}");
                }
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    let (status, answer) = h
        .post(
            &format!("/v2/pools/{pool}/preload"),
            json!({ "prepared": body }),
        )
        .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (status, answer, probe.await.unwrap())
}

#[tokio::test]
async fn a_real_llama_server_preloads_leases_its_slots_serves_and_stops_gracefully() {
    let Some(llama) = llama() else { return };
    let h = daemon().await;
    let port = free_port();
    let body = prepared(&llama, "p1", port, &llama.model);
    let (status, answer, seen) = preload_watching_health(&h, "p1", body, port).await;
    assert_eq!(status, 200, "preload: {answer}");
    // Every 503 the probe saw carried "Loading model" (checked in the probe), and the preload
    // went on through it. The tiny model loads in milliseconds, so the window is often too
    // short to see; engine-sim answers the same 503 body for as long as told (tests/daemon.rs).
    eprintln!("statuses the probe saw while the server started: {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&200),
        "the probe ended on a healthy server: {seen:?}"
    );
    assert_eq!(
        answer["slots_total"], 2,
        "slots from /props total_slots: {answer}"
    );
    let pid = answer["pid"].as_u64().unwrap();

    // Leases up to total_slots, then 429.
    let (first, lease) = h.post("/v2/pools/p1/leases", json!({})).await;
    assert_eq!(first, 201, "{lease}");
    let (second, _) = h.post("/v2/pools/p1/leases", json!({})).await;
    assert_eq!(second, 201);
    let (third, refused) = h.post("/v2/pools/p1/leases", json!({})).await;
    assert_eq!(
        (third, refused["code"].as_str()),
        (429, Some("SLOTS_EXHAUSTED"))
    );

    // A completion through the engine while leased.
    let completion: Value = h
        .http
        .post(format!("http://127.0.0.1:{port}/completion"))
        .json(&json!({"prompt": "hello", "n_predict": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        completion["content"].is_string(),
        "a completion: {completion}"
    );

    let lease_id = lease["lease_id"].as_str().unwrap();
    let (released, _) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/pools/p1/leases/{lease_id}"),
            None,
        )
        .await;
    assert_eq!(released, 200);

    // A graceful stop: SIGTERM, and the server exits 0 within the grace.
    let (stopped, _) = h.post("/v2/pools/p1/stop", json!({})).await;
    assert_eq!(stopped, 202);
    h.wait_pool("p1", "stopped", |s| s["phase"] == "stopped")
        .await;
    assert!(!pid_alive(pid), "the server (pid {pid}) is gone");
    let (_, events) = h.get("/v2/pools/p1/events").await;
    let stop = last_of(&events, "EngineStopped");
    assert_eq!(stop["event"]["graceful"], true, "{stop}");
    remove(&h, "p1").await;
    h.stop().await;
}

#[tokio::test]
async fn a_segfault_of_the_real_server_is_restarted_to_ready() {
    let Some(llama) = llama() else { return };
    let h = daemon().await;
    let port = free_port();
    let answer = preload_ready(&h, &llama, port).await;
    let pid = answer["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGSEGV,
    )
    .unwrap();
    let status = h
        .wait_pool("p1", "ready on a new engine", |s| {
            s["ready"] == true && s["pid"].as_u64().is_some_and(|p| p != pid)
        })
        .await;
    assert_eq!(status["restart_count"], 1, "{status}");
    let (_, events) = h.get("/v2/pools/p1/events").await;
    let exit = last_of(&events, "EngineExited");
    assert_eq!(exit["event"]["reason"], "signal", "{exit}");
    assert_eq!(exit["event"]["signal"], 11, "{exit}");
    // A one-off crash is restarted at once.
    let restart = last_of(&events, "RestartScheduled");
    assert_eq!(restart["event"]["delay_ms"], 0, "{restart}");
    remove(&h, "p1").await;
    h.stop().await;
}

#[tokio::test]
async fn a_bad_model_path_fails_fast_with_the_servers_words() {
    let Some(llama) = llama() else { return };
    let h = daemon().await;
    let missing = h.dir.path().join("no-such-model.gguf");
    let started = Instant::now();
    let (status, answer) = h
        .post(
            "/v2/pools/p1/preload",
            json!({ "prepared": prepared(&llama, "p1", free_port(), &missing) }),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("ENGINE_EXITED")),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an exit while loading is seen at once, not at the 60 s preload timeout"
    );
    let (_, pool) = h.get("/v2/pools/p1").await;
    let last_error = pool["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("failed to load model"),
        "the server's own words in last_error: {last_error}"
    );
    // The first failure is restarted at once; that start fails the same way and backs off.
    h.wait_pool("p1", "in backoff after two failed starts", |s| {
        s["crash_count"] == 2 && s["phase"] == "backoff"
    })
    .await;
    remove(&h, "p1").await;
    h.stop().await;
}

#[tokio::test]
async fn a_reload_moves_the_real_server_to_a_second_model_file() {
    let Some(llama) = llama() else { return };
    let h = daemon().await;
    let second = h.dir.path().join("second-model.gguf");
    std::fs::copy(&llama.model, &second).unwrap();
    let port = free_port();
    let answer = preload_ready(&h, &llama, port).await;
    let old_pid = answer["pid"].as_u64().unwrap();
    let second_path = second.display().to_string();
    let (status, answer) = h
        .post(
            "/v2/pools/p1/reload",
            json!({"new_model_ref": second_path, "drain_deadline_ms": 10_000}),
        )
        .await;
    assert_eq!(status, 200, "reload: {answer}");
    assert_eq!(answer["noop"], false);
    assert_eq!(answer["model_ref"], second_path.as_str());
    let (_, pool) = h.get("/v2/pools/p1").await;
    assert_eq!(pool["ready"], true, "{pool}");
    let new_pid = pool["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid, "a new server serves the new model");
    assert!(!pid_alive(old_pid), "the old server is gone");
    let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&second_path),
        "the new server's -m follows the model"
    );
    remove(&h, "p1").await;
    h.stop().await;
}

#[tokio::test]
async fn a_drain_waits_for_the_lease_then_stops_the_real_server() {
    let Some(llama) = llama() else { return };
    let h = daemon().await;
    preload_ready(&h, &llama, free_port()).await;
    let (_, lease) = h.post("/v2/pools/p1/leases", json!({})).await;
    let (status, _) = h
        .post("/v2/pools/p1/drain", json!({"deadline_ms": 60_000}))
        .await;
    assert_eq!(status, 202);
    let (refused, answer) = h.post("/v2/pools/p1/leases", json!({})).await;
    assert_eq!(
        (refused, answer["code"].as_str()),
        (409, Some("POOL_DRAINING"))
    );
    let lease_id = lease["lease_id"].as_str().unwrap();
    h.call(
        reqwest::Method::DELETE,
        &format!("/v2/pools/p1/leases/{lease_id}"),
        None,
    )
    .await;
    h.wait_pool("p1", "stopped", |s| s["phase"] == "stopped")
        .await;
    let (_, events) = h.get("/v2/pools/p1/events").await;
    let drained = last_of(&events, "DrainCompleted");
    assert_eq!(drained["event"]["outcome"], "graceful", "{drained}");
    let stopped = last_of(&events, "EngineStopped");
    assert_eq!(stopped["event"]["graceful"], true, "{stopped}");
    remove(&h, "p1").await;
    h.stop().await;
}

/// `pool-managerd serve` as a child, killed with SIGKILL on drop (the test is of a daemon
/// that dies without a word).
struct ServeChild {
    serve: Serve,
    base: String,
}

impl ServeChild {
    async fn start(dir: &Path, port: u16, http: &reqwest::Client) -> ServeChild {
        let serve = ServeCommand::on_port(DAEMON, dir, port)
            .dev()
            .env("RUST_LOG", "warn")
            .spawn();
        let base = serve.base();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/health")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "serve did not start: {}",
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ServeChild { serve, base }
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.serve.guard.0.kill();
        let _ = self.serve.guard.0.wait();
    }
}

#[tokio::test]
async fn a_sigkilled_daemon_adopts_the_running_real_server() {
    let Some(llama) = llama() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let daemon_port = free_port();
    let engine_port = free_port();
    let daemon = ServeChild::start(dir.path(), daemon_port, &http).await;
    let body = json!({ "prepared": prepared(&llama, "p1", engine_port, &llama.model) });
    let answer: Value = http
        .post(format!("{}/v2/pools/p1/preload", daemon.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = answer["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("preload: {answer}"));
    drop(daemon); // SIGKILL
    assert!(pid_alive(pid), "the server outlives the daemon");

    let daemon = ServeChild::start(dir.path(), daemon_port, &http).await;
    let pool: Value = http
        .get(format!("{}/v2/pools/p1", daemon.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pool["ready"], true, "{pool}");
    assert_eq!(pool["pid"].as_u64(), Some(pid), "the same server, adopted");
    let events: Value = http
        .get(format!("{}/v2/pools/p1/events", daemon.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spawned = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["kind"] == "EngineSpawned")
        .count();
    assert_eq!(spawned, 1, "no second server: {events}");
    last_of(&events, "EngineAdopted");
    // The adopted server still serves.
    let health = http
        .get(format!("http://127.0.0.1:{engine_port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let removed = http
        .delete(format!("{}/v2/pools/p1", daemon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status().as_u16(), 200);
    assert!(
        !pid_alive(pid),
        "removing the pool stops the adopted server"
    );
    drop(daemon);
}

/// A real server started by a launcher script that `exec`s it (its `/proc/<pid>/exe` is
/// llama-server, not the script) is recorded with the executable it runs once it serves and
/// the boot id, adopted after a SIGKILL of the daemon, and holds its port: a second pool
/// prepared on that port fails with `PORT_IN_USE` naming the server's pid and command line.
#[tokio::test]
async fn a_launched_real_server_is_adopted_and_keeps_its_port() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(llama) = llama() else { return };
    let dir = tempfile::tempdir().unwrap();
    let launcher = dir.path().join("launch-llama");
    let script = format!("#!/bin/sh\nexec '{}' \"$@\"\n", llama.server.display());
    std::fs::write(&launcher, script).unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (daemon_port, engine_port) = (free_port(), free_port());
    let daemon = ServeChild::start(dir.path(), daemon_port, &http).await;
    let mut engine = prepared(&llama, "p1", engine_port, &llama.model);
    engine["binary_path"] = launcher.display().to_string().into();
    let answer: Value = http
        .post(format!("{}/v2/pools/p1/preload", daemon.base))
        .json(&json!({ "prepared": engine }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = answer["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("preload: {answer}"));
    drop(daemon); // SIGKILL
    let daemon = ServeChild::start(dir.path(), daemon_port, &http).await;
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let pool = get(format!("{}/v2/pools/p1", daemon.base)).await;
    assert_eq!(pool["ready"], true, "{pool}");
    assert_eq!(pool["pid"].as_u64(), Some(pid), "the same server, adopted");
    let events = get(format!("{}/v2/pools/p1/events", daemon.base)).await;
    last_of(&events, "EngineAdopted");
    let passed = last_of(&events, "HealthCheckPassed");
    let server = std::fs::canonicalize(&llama.server).unwrap();
    assert_eq!(
        passed["event"]["exe"],
        server.display().to_string(),
        "{passed}"
    );
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(
        last_of(&events, "EngineSpawned")["event"]["boot_id"],
        boot.trim()
    );

    let second = json!({ "prepared": prepared(&llama, "p2", engine_port, &llama.model) });
    let refused = http
        .post(format!("{}/v2/pools/p2/preload", daemon.base))
        .json(&second)
        .send()
        .await
        .unwrap();
    let status = refused.status().as_u16();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(status, 500, "{refused}");
    assert_eq!(refused["code"], "PORT_IN_USE", "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("pid {pid} (")), "{error}");
    assert!(
        error.contains("llama-server") && error.contains("--port"),
        "{error}"
    );
    assert!(pid_alive(pid), "the holder is never signalled");
    // The refused start is restarted at once, refused again, and then waits out a backoff.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pool = get(format!("{}/v2/pools/p2", daemon.base)).await;
        if pool["crash_count"] == 2 && pool["phase"] == "backoff" {
            break;
        }
        assert!(Instant::now() < deadline, "p2 did not back off: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pool in ["p2", "p1"] {
        let removed = http
            .delete(format!("{}/v2/pools/{pool}", daemon.base))
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status().as_u16(), 200);
    }
    assert!(
        !pid_alive(pid),
        "removing the pool stops the adopted server"
    );
    drop(daemon);
}

/// engine-sim stands in for llama-server in most tests, so where they can answer alike they
/// must: the same statuses and bodies for `/health`, `/metrics` without `--metrics` and an
/// unknown route; the same slot fields; engine-sim's `/props` and `/completion` fields a subset
/// of the real ones; both exit 0 on SIGTERM.
#[tokio::test]
async fn engine_sim_answers_like_the_real_server() {
    let Some(llama) = llama() else { return };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (real_port, sim_port) = (free_port(), free_port());
    let model = llama.model.display().to_string();
    let mut real = Command::new(&llama.server)
        .args([
            "-m",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            &real_port.to_string(),
        ])
        .args(["--parallel", "2", "-c", "256", "-t", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_engine-sim"))
        .args([
            "-m",
            &model,
            "--port",
            &sim_port.to_string(),
            "--parallel",
            "2",
            "-c",
            "256",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for port in [real_port, sim_port] {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let healthy = http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if healthy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "port {port} never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let answer = |port: u16, method: reqwest::Method, path: &'static str| {
        let request = http
            .request(method, format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"prompt":"hello","n_predict":3,"ignore_eos":true}"#);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let keys = |value: &Value| -> Vec<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    use reqwest::Method;
    for path in ["/health", "/metrics", "/no-such-route"] {
        let r = answer(real_port, Method::GET, path).await;
        let s = answer(sim_port, Method::GET, path).await;
        assert_eq!(
            s, r,
            "GET {path}: engine-sim (left) and llama-server (right)"
        );
    }
    let (rs, real_props) = answer(real_port, Method::GET, "/props").await;
    let (ss, sim_props) = answer(sim_port, Method::GET, "/props").await;
    assert_eq!((ss, rs), (200, 200));
    for key in keys(&sim_props) {
        assert!(
            real_props.get(&key).is_some(),
            "/props field {key} is not llama-server's"
        );
    }
    assert_eq!(sim_props["total_slots"], real_props["total_slots"]);
    let (_, real_slots) = answer(real_port, Method::GET, "/slots").await;
    let (_, sim_slots) = answer(sim_port, Method::GET, "/slots").await;
    assert_eq!(
        sim_slots.as_array().map(Vec::len),
        real_slots.as_array().map(Vec::len)
    );
    let mut real_slot = keys(&real_slots[0]);
    let mut sim_slot = keys(&sim_slots[0]);
    real_slot.sort();
    sim_slot.sort();
    assert_eq!(sim_slot, real_slot, "the fields of a slot");
    assert_eq!(sim_slots[0]["n_ctx"], real_slots[0]["n_ctx"]);
    let (rs, real_completion) = answer(real_port, Method::POST, "/completion").await;
    let (ss, sim_completion) = answer(sim_port, Method::POST, "/completion").await;
    assert_eq!((ss, rs), (200, 200));
    for key in keys(&sim_completion) {
        assert!(
            real_completion.get(&key).is_some(),
            "/completion field {key} is not llama-server's"
        );
    }
    assert_eq!(
        sim_completion["tokens_predicted"],
        real_completion["tokens_predicted"]
    );
    for child in [&mut real, &mut sim] {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    let (real_exit, sim_exit) = (real.wait().unwrap(), sim.wait().unwrap());
    assert_eq!(
        (sim_exit.code(), real_exit.code()),
        (Some(0), Some(0)),
        "SIGTERM: engine-sim and llama-server exit 0"
    );
}

/// The progress probes read the real server: while completions run, `/slots` shows a slot
/// processing and `/metrics` (`--metrics`) `llamacpp:requests_processing` > 0, each with a
/// mark that moves (the slot's task and `n_decoded`; `llamacpp:n_decode_total`,
/// `tokens_predicted_total`); once they are done, both read idle. The tiny model decodes its
/// 256-token context in tens of milliseconds, so completions are sent back to back from two
/// clients until both readers have seen the work move.
#[tokio::test]
async fn the_progress_reader_sees_the_real_servers_work_advance() {
    use pool_core::progress::Reading;
    use pool_managerd::supervisor::probe::Prober;
    use pool_managerd::supervisor::progress::{read, Source};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let Some(llama) = llama() else { return };
    let port = free_port();
    let model = llama.model.display().to_string();
    // Ended on drop (SIGTERM, then SIGKILL), whatever the outcome.
    let _server = harness::process::ChildGuard(
        Command::new(&llama.server)
            .args([
                "-m",
                &model,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["--parallel", "2", "-c", "512", "-t", "1", "--metrics"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + READY_WAIT;
    while !http
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200)
    {
        assert!(
            Instant::now() < deadline,
            "llama-server never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let prober = Prober::new();
    for source in [Source::LlamaSlots, Source::LlamaMetrics] {
        let seen = read(&prober, &base, source, 2_000).await.unwrap();
        assert_eq!(
            seen.reading,
            Reading::Idle,
            "{source:?} before any work: {}",
            seen.said
        );
    }
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{base}/completion"));
            let (done, completed) = (done.clone(), completed.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let body = json!({"prompt": "hello", "n_predict": 240, "ignore_eos": true});
                    let answer = http.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(answer.status().as_u16(), 200);
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Each reader must see the work advance between two readings (the same slots' tasks with
    // more tokens decoded; more decode steps), and its mark move with it.
    let sources = [Source::LlamaSlots, Source::LlamaMetrics];
    let mut last: [Option<(u64, String)>; 2] = [None, None];
    let mut moved: [Option<(String, String)>; 2] = [None, None];
    let deadline = Instant::now() + Duration::from_secs(60);
    while moved.iter().any(Option::is_none) {
        for (i, source) in sources.into_iter().enumerate() {
            let seen = read(&prober, &base, source, 2_000).await.unwrap();
            let Reading::Working { mark } = seen.reading else {
                last[i] = None;
                continue;
            };
            if let Some((before, said)) = last[i]
                .take()
                .filter(|(_, said)| advanced(source, said, &seen.said))
            {
                assert_ne!(
                    before, mark,
                    "{source:?}: the work advanced ({said} -> {}) but the mark did not move",
                    seen.said
                );
                moved[i] = Some((said, seen.said.clone()));
            }
            last[i] = Some((mark, seen.said));
        }
        assert!(
            Instant::now() < deadline,
            "the readers did not see the work advance within 60 s ({} completions): {moved:?}",
            completed.load(Ordering::Relaxed)
        );
    }
    let (_, metrics) = moved[1].clone().unwrap();
    assert!(
        metrics.contains("llamacpp:tokens_predicted_total") && !metrics.contains("absent"),
        "{metrics}"
    );
    done.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    for source in [Source::LlamaSlots, Source::LlamaMetrics] {
        let seen = read(&prober, &base, source, 2_000).await.unwrap();
        assert_eq!(
            seen.reading,
            Reading::Idle,
            "{source:?} after the work: {}",
            seen.said
        );
    }
}

/// Whether the work a progress reader described went forward from `before` to `after`: on
/// `/slots` the same slots and tasks with more tokens decoded, on `/metrics` more decode steps.
fn advanced(
    source: pool_managerd::supervisor::progress::Source,
    before: &str,
    after: &str,
) -> bool {
    use pool_managerd::supervisor::progress::Source;
    // "processing: slot 0 (task 4): 1 tokens decoded, slot 1 (task 3): 1 tokens decoded"
    let slots = |said: &str| -> Option<(Vec<String>, u64)> {
        let mut who = Vec::new();
        let mut decoded = 0;
        for item in said.strip_prefix("processing: ")?.split(", ") {
            let (slot, tokens) = item.split_once("): ")?;
            who.push(slot.to_string());
            decoded += tokens.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some((who, decoded))
    };
    // "llamacpp:requests_processing 2, ..., llamacpp:n_decode_total 3, ..."
    let decodes = |said: &str| -> Option<f64> {
        said.split(", ")
            .find_map(|item| item.strip_prefix("llamacpp:n_decode_total "))?
            .parse()
            .ok()
    };
    match source {
        Source::LlamaSlots => match (slots(before), slots(after)) {
            (Some((a, n)), Some((b, m))) => a == b && m > n,
            _ => false,
        },
        _ => matches!((decodes(before), decodes(after)), (Some(a), Some(b)) if b > a),
    }
}
