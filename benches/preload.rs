//! Preload to ready, the real engine beside the test engine: `pool-managerd serve --dev` (the
//! real binary, a child of the benchmark) preloads one pool at a time, again and again, with
//! llama.cpp's `llama-server` on the tiny model of `scripts/get-llama-server.sh` and with
//! engine-sim, both with 2 slots from `/props`. The figure is the preload's own `ready_ms`
//! (spawn to ready, as the daemon measures it) and the wall time of the `POST .../preload`
//! call as a client sees it.
//!
//! Twice: with the default health poll (every 500 ms, the first at once), as operators run it,
//! and with a 10 ms poll, which shows the engines' own start times.
//!
//! `cargo bench --bench preload` runs 20 preloads of each; `cargo test --bench preload` (CI)
//! runs 2. The server and model come from `POOL_MANAGERD_LLAMA_SERVER` /
//! `POOL_MANAGERD_LLAMA_MODEL` or the script's cache; without them only engine-sim is measured
//! (and under `CI=true` the run fails).

#[path = "support/common.rs"]
mod common;

use common::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llama_server::Llama;
use serde_json::{json, Value};

#[path = "../tests/support/llama_server.rs"]
mod llama_server;

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

/// The daemon, SIGKILLed on drop (its engines are removed by the rounds).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The prepared engine of the `i`-th preload.
fn prepared(engine: &str, llama: Option<&Llama>, port: u16) -> Value {
    let pool = "bench";
    match (engine, llama) {
        ("llama-server", Some(Llama { server, model })) => json!({
            "binary_path": server.display().to_string(),
            "flags": ["-m", model.display().to_string(), "--host", "127.0.0.1",
                      "--port", port.to_string(), "--parallel", "2", "-c", "256", "-t", "1"],
            "host": "127.0.0.1", "port": port, "model_path": model.display().to_string(),
            "engine_version": "llama.cpp", "pool_id": pool, "replica_id": "r0",
        }),
        _ => json!({
            "binary_path": ENGINE_SIM,
            "flags": ["--port", port.to_string(), "--parallel", "2", "--load-ms", "0"],
            "host": "127.0.0.1", "port": port, "model_path": "/models/sim.gguf",
            "engine_version": "sim", "pool_id": pool, "replica_id": "r0",
        }),
    }
}

/// `rounds` preloads of `engine`, each removed again; (ready_ms, wall ms) of each.
async fn measure(
    http: &reqwest::Client,
    base: &str,
    engine: &str,
    llama: Option<&Llama>,
    rounds: usize,
) -> Vec<(f64, f64)> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let body = json!({ "prepared": prepared(engine, llama, free_port()) });
        let started = Instant::now();
        let response = http
            .post(format!("{base}/v2/pools/bench/preload"))
            .json(&body)
            .send()
            .await
            .expect("preload");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("preload answer");
        let wall = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 200, "{engine} preload: {answer}");
        let ready_ms = answer["ready_ms"].as_f64().expect("ready_ms");
        samples.push((ready_ms, wall));
        let removed = http
            .delete(format!("{base}/v2/pools/bench"))
            .send()
            .await
            .expect("remove");
        assert_eq!(removed.status().as_u16(), 200);
    }
    samples
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "median {:.0} ms (min {:.0}, max {:.0})",
        values[values.len() / 2],
        values[0],
        values[values.len() - 1]
    )
}

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let rounds = if measured { 20 } else { 2 };
    let llama = llama_server::find("measuring engine-sim only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    // The default health poll (every 500 ms, the first at once) and a fast one (10 ms), which
    // shows the engines' own start times rather than the poll's.
    for interval_ms in [500u64, 10] {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!("[health]\npreload_interval_ms = {interval_ms}\n"),
        )
        .expect("config");
        let _daemon = Daemon(
            Command::new(DAEMON)
                .args(["serve", "--dev", "--addr", &format!("127.0.0.1:{port}")])
                .arg("--config")
                .arg(&config)
                .arg("--runtime-dir")
                .arg(dir.path().join("runtime"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pool-managerd serve"),
        );
        let base = format!("http://127.0.0.1:{port}");
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while http.get(format!("{base}/health")).send().await.is_err() {
                assert!(Instant::now() < deadline, "the daemon did not start");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut engines = vec!["engine-sim"];
            if llama.is_some() {
                engines.push("llama-server");
            }
            for engine in engines {
                let samples = measure(&http, &base, engine, llama.as_ref(), rounds).await;
                let mut ready: Vec<f64> = samples.iter().map(|s| s.0).collect();
                let mut wall: Vec<f64> = samples.iter().map(|s| s.1).collect();
                println!(
                    "health poll every {interval_ms} ms, {engine}: {rounds} preloads, ready_ms {}; POST to answer {}",
                    summary(&mut ready),
                    summary(&mut wall)
                );
            }
        });
    }
}
