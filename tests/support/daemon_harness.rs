//! The harness of the daemon tests (`tests/daemon.rs`, `tests/handoff.rs`, `tests/gpus.rs`,
//! `tests/spillover.rs`): a real daemon in the test's process on a loopback socket over a
//! temporary directory (with a GPU inventory when a test gives one), an HTTP client, engine-sim
//! preload bodies, GPU fixture files, and bounded waits. Included by each test crate with `#[path]`; not every crate uses every item.

#![allow(dead_code)]

#[path = "process.rs"]
pub mod process;
#[path = "serve.rs"]
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_managerd::clock::SystemClock;
use pool_managerd::config::Config;
use pool_managerd::daemon::Daemon;
use serde_json::Value;

/// A daemon in this process over a temporary directory, and an HTTP client for it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub daemon: Option<Daemon>,
    pub base: String,
    pub http: reqwest::Client,
    /// How long `wait_pool` polls before it fails.
    pub wait: Duration,
    /// The configuration it runs with (a restart keeps it).
    pub config: Config,
}

/// The test configuration: loopback port 0, no GPU required, short health and stop times.
pub fn config(dir: &Path) -> Config {
    let mut config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        runtime_dir: dir.join("runtime"),
        journal_dir: dir.join("journal"),
        require_gpu: false,
        // As `--dev` does: a root test machine runs engines as root.
        allow_root_engines: true,
        stop_engines_on_shutdown: true,
        ..Config::default()
    };
    config.health.preload_interval_ms = 50;
    config.health.preload_timeout_ms = 10_000;
    config.stop.grace_ms = 1_000;
    config
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        tune(&mut config);
        let (daemon, _) = Daemon::start(&config, Arc::new(SystemClock)).await.unwrap();
        Harness {
            base: format!("http://{}", daemon.addr()),
            daemon: Some(daemon),
            dir,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            wait: Duration::from_secs(5),
            config,
        }
    }

    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    /// `GET /metrics`: the exposition text, after asserting a 200 in Prometheus' text format.
    pub async fn scrape(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }

    /// The value of the label-less sample `name` in a scrape (a panic naming it, with the
    /// scrape, when it is absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.scrape().await;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in the scrape:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Reads `GET /v2/pools/{pool}` until `check` holds (`self.wait` at most), again each
    /// time the registry publishes a change (and at least every 200 ms: a probe's heartbeat
    /// changes a status without a new seq).
    pub async fn wait_pool(&self, pool: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + self.wait;
        let mut changes = self
            .daemon
            .as_ref()
            .map(|d| d.handle().registry().subscribe());
        loop {
            let (_, status) = self.get(&format!("/v2/pools/{pool}")).await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pool {pool}: {what} not reached: {status}"
            );
            let every = Duration::from_millis(200);
            match changes.as_mut() {
                Some(changes) => {
                    if let Ok(Err(_)) = tokio::time::timeout(every, changes.changed()).await {
                        // The daemon it watched is gone (a restart): poll.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn restart(&mut self) {
        let daemon = self.daemon.take().unwrap();
        daemon.shutdown("test restart").await;
        let (daemon, _) = Daemon::start(&self.config, Arc::new(SystemClock))
            .await
            .unwrap();
        self.base = format!("http://{}", daemon.addr());
        self.daemon = Some(daemon);
    }

    pub async fn stop(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown("test finished").await;
        }
    }
}

impl Harness {
    /// A daemon of `config` over `dir` whose GPUs are `inventory` (a fixture, or none).
    pub async fn start_in(
        dir: tempfile::TempDir,
        config: &Config,
        inventory: Arc<dyn pool_managerd::gpu::GpuInventory>,
    ) -> Harness {
        let (daemon, _) = Daemon::start_with_gpus(config, Arc::new(SystemClock), inventory)
            .await
            .unwrap();
        Harness {
            base: format!("http://{}", daemon.addr()),
            daemon: Some(daemon),
            dir,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            wait: Duration::from_secs(15),
            config: config.clone(),
        }
    }
}

/// The preload body of an engine-sim for `pool` on a free port, with `flags` after its
/// `--port`, and `mask` as its device mask when given.
pub fn engine_sim_preload(pool: &str, mask: Option<&str>, flags: &[&str]) -> Value {
    let port = free_port();
    let mut all = vec!["--port".to_string(), port.to_string()];
    all.extend(flags.iter().map(|f| f.to_string()));
    let mut prepared = serde_json::json!({
        "binary_path": env!("CARGO_BIN_EXE_engine-sim"),
        "flags": all,
        "host": "127.0.0.1",
        "port": port,
        "model_path": "/models/m.gguf",
        "engine_version": "sim-1",
        "pool_id": pool,
        "replica_id": "r0",
    });
    if let Some(mask) = mask {
        prepared["device_mask"] = serde_json::json!(mask);
    }
    serde_json::json!({ "prepared": prepared })
}

/// Writes a GPU fixture file atomically (a reading never sees half a file).
pub fn write_fixture(path: &Path, gpus: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(gpus).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub use process::free_port;

/// Whether `pid` runs (a zombie has ended).
pub fn pid_alive(pid: u64) -> bool {
    // Zombies count as gone: they have exited and only wait to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}
