//! Crash to unready: an engine killed with SIGKILL, to `ready: false` in `GET /v2/pools/{id}`.
//!
//! The real daemon (`Daemon::start`, what `serve` runs) in this process, one engine-sim pool.
//! Each round: the pool is ready; the benchmark sends SIGKILL to the engine and at once polls
//! `GET /v2/pools/{id}` (keep-alive, back to back) until it says `ready: false`; the time from
//! the kill to that answer is one sample. Then the restart policy brings the pool back (the
//! first restart at once, then after a backoff set to a few ms) and the next round kills the
//! new engine. The breaker and the storm bound are set to need more failures than rounds.
//!
//! The path measured: SIGCHLD -> tokio reaps the child -> the exit watcher reads the log tail ->
//! `EngineExited` through the actor's inbox -> durable append (fdatasync) -> publish -> the
//! next `GET`.
//!
//! `cargo bench --bench crash` runs 200 rounds (`POOL_BENCH_CRASHES`); `cargo test --bench
//! crash` (CI) runs 5.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_managerd::clock::SystemClock;
use pool_managerd::config::Config;
use pool_managerd::daemon::Daemon;
use serde_json::{json, Value};

const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let rounds = env_u64("POOL_BENCH_CRASHES", if measured { 200 } else { 5 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rounds));
}

/// `GET /v2/pools/crashy`.
async fn pool_status(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/v2/pools/crashy"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status answer")
}

/// Waits until the pool is ready on an engine other than `killed`; its pid.
async fn ready_again(http: &reqwest::Client, base: &str, killed: u64, round: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = pool_status(http, base).await;
        if let Some(pid) = status["pid"].as_u64().filter(|p| *p != killed) {
            if status["ready"] == true {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: not ready again 30 s after the kill: {status}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(rounds: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        addr: "127.0.0.1:0".parse().expect("addr"),
        runtime_dir: dir.path().join("runtime"),
        journal_dir: dir.path().join("journal"),
        require_gpu: false,
        // As `--dev` does: a root test machine runs engines as root.
        allow_root_engines: true,
        stop_engines_on_shutdown: true,
        ..Config::default()
    };
    config.health.preload_interval_ms = 10;
    config.health.ready_interval_ms = 600_000;
    config.breaker.failure_threshold = u32::try_from(rounds * 2 + 10).unwrap_or(u32::MAX);
    config.storm.max_restarts = u32::try_from(rounds * 2 + 10).unwrap_or(u32::MAX);
    config.backoff.initial_ms = 5;
    config.backoff.min_ms = 1;
    config.backoff.max_ms = 20;
    let (daemon, _) = Daemon::start(&config, Arc::new(SystemClock))
        .await
        .expect("daemon");
    let base = format!("http://{}", daemon.addr());
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let body = json!({"prepared": {
        "binary_path": ENGINE_SIM, "flags": ["--port", port.to_string()], "host": "127.0.0.1",
        "port": port, "model_path": "/m.gguf", "engine_version": "sim", "pool_id": "crashy",
        "replica_id": "r0",
    }})
    .to_string();
    let answer: Value = http
        .post(format!("{base}/v2/pools/crashy/preload"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("preload")
        .json()
        .await
        .expect("preload answer");
    let mut pid = answer["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("preload failed: {answer}"));
    let mut samples_ms = Vec::with_capacity(rounds as usize);
    for round in 0..rounds {
        if round > 0 {
            pid = ready_again(&http, &base, pid, round).await;
        }
        let killed_at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        loop {
            let status = pool_status(&http, &base).await;
            if status["ready"] == false {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "round {round}: still ready 10 s after the kill"
            );
        }
        samples_ms.push(killed_at.elapsed().as_secs_f64() * 1e3);
    }
    let (_, events): (u16, Value) = {
        let response = http
            .get(format!("{base}/v2/pools/crashy/events?limit=10000"))
            .send()
            .await
            .expect("events");
        (
            response.status().as_u16(),
            response.json().await.expect("events"),
        )
    };
    let crashes = events.as_array().map_or(0, |e| {
        e.iter()
            .filter(|e| e["event"]["kind"] == "EngineExited")
            .count()
    });
    let _ = http.delete(format!("{base}/v2/pools/crashy")).send().await;
    daemon.shutdown("benchmark finished").await;
    samples_ms.sort_by(f64::total_cmp);
    println!(
        "crash to unready over {} SIGKILLs ({crashes} EngineExited journaled): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, min {:.2} ms",
        samples_ms.len(),
        percentile(&samples_ms, 50.0),
        percentile(&samples_ms, 90.0),
        percentile(&samples_ms, 99.0),
        samples_ms.last().copied().unwrap_or(0.0),
        samples_ms.first().copied().unwrap_or(0.0),
    );
}
