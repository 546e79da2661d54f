//! `pool-managerd demo`: the daemon's main job on a machine with nothing installed (no GPU,
//! no configuration): a daemon on a free loopback port with a temporary runtime directory,
//! two engine-sim pools preloaded over HTTP, leases taken and returned (one refused with
//! `SLOTS_EXHAUSTED`), one preload failing (`ENGINE_EXITED`, with the engine's log tail), a
//! pool crash-looping (a first restart at once, then backoff delays growing, the breaker
//! opening, explained (`GET /v2/pools/{id}/explain`: the failures by seq, the half-open
//! trial's time), a preload refused with its `Retry-After`, a manual reset, a healthy restart), a
//! drain, a reload that succeeds and one that rolls back, and a daemon restart that adopts its
//! running engines, then the registry table and the journal's timeline. Its supervision policy
//! is fast (backoff from 200 ms, breaker after 4 failures) so that the story fits in seconds.
//!
//! The engines are this very binary run as its hidden `engine-sim` subcommand, so the demo
//! needs nothing but itself.
//!
//! With `--gpu-fixture FILE` (GPUs from a JSON file, a testing aid) the daemon sees GPUs:
//! each pool's prepared engine then names one of them in its `device_mask`, in turn (so the
//! registry shows where each pool is placed and each engine gets `CUDA_VISIBLE_DEVICES`), and
//! the demo turns `[gpu] allow_sharing` on, since it runs more pools than a small fixture has
//! GPUs and two pools may not claim one GPU otherwise (`INVALID_DEVICE_MASK`).
//!
//! Owns: the demo's script and its printout.
//! Never: leaves an engine running or a file behind (unless `--keep`).

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::clock::SystemClock;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::table;

mod steps;

/// `demo` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep the temporary runtime directory (journal, engine logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Testing aid: the daemon reads its GPUs from this JSON file instead of NVML (the demo's
    /// engines run on the CPU either way).
    #[arg(long, value_name = "FILE")]
    pub gpu_fixture: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args))
}

struct Client {
    http: reqwest::Client,
    base: String,
    /// The GPU indexes of the fixture (empty without one): pools take them in turn as masks.
    gpus: Vec<u32>,
}

impl Client {
    /// The prepared engine of `pool` ([`engine`]), with a device mask naming one GPU of the
    /// fixture when there is one (the pools of [`DEMO_POOLS`] take the GPUs in turn).
    fn prepared(&self, pool: &str, port: u16, sim_flags: &[&str]) -> anyhow::Result<Value> {
        let mut prepared = engine(pool, port, sim_flags)?;
        if !self.gpus.is_empty() {
            let ordinal = DEMO_POOLS.iter().position(|p| *p == pool).unwrap_or(0);
            let gpu = self.gpus[ordinal % self.gpus.len()];
            prepared["device_mask"] = json!(format!("GPU{gpu}"));
        }
        Ok(prepared)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, value, _) = self.call_with_retry_after(method, path, body).await?;
        Ok((status, value))
    }

    /// [`Client::call`], with the answer's `Retry-After` header when it has one.
    async fn call_with_retry_after(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value, Option<String>)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value, retry_after))
    }
}

/// The demo's pools, in the order they are first preloaded.
const DEMO_POOLS: [&str; 5] = ["chat-a", "chat-b", "broken", "flaky", "chat-c"];

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port that is free, with the next one free too (a few tries).
fn two_free_ports() -> Option<u16> {
    (0..20).find_map(|_| {
        let first = StdListener::bind("127.0.0.1:0").ok()?;
        let low = first.local_addr().ok()?.port();
        let next = low.checked_add(1)?;
        StdListener::bind(("127.0.0.1", next)).ok().map(|_| low)
    })
}

fn engine(pool: &str, port: u16, sim_flags: &[&str]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut flags = vec![
        "engine-sim".to_string(),
        "--port".to_string(),
        port.to_string(),
        "-m".to_string(),
        format!("/models/{pool}.gguf"),
    ];
    flags.extend(sim_flags.iter().map(|f| f.to_string()));
    Ok(json!({
        "binary_path": exe.display().to_string(),
        "flags": flags,
        "host": "127.0.0.1",
        "port": port,
        "model_path": format!("/models/{pool}.gguf"),
        "engine_version": "engine-sim",
        "engine": "engine-sim",
        "pool_id": pool,
        "replica_id": "r0",
    }))
}

fn step(text: &str) {
    println!("  {text}");
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("pool-managerd-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let config = demo_config(dir.path(), &args);
    let (daemon, _) = Daemon::start(&config, Arc::new(SystemClock)).await?;
    let mut client = Client {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: format!("http://{}", daemon.addr()),
        gpus: Vec::new(),
    };
    let cpu = if args.gpu_fixture.is_some() {
        "engine-sim runs on the CPU: CPU-only engines allowed, as with --dev"
    } else {
        "no GPU: CPU-only engines allowed, as with --dev"
    };
    println!(
        "pool-managerd {} demo: daemon on http://{} ({cpu})",
        crate::daemon::VERSION,
        daemon.addr()
    );
    println!("runtime directory: {}\n", config.runtime_dir.display());
    if args.gpu_fixture.is_some() {
        show_gpus(&mut client).await?;
    }
    let mut result = steps::script(&client, dir.path()).await;
    // The daemon restarts; its engines keep serving and are adopted.
    let daemon = if result.is_ok() {
        let (daemon, adopted) = restart(daemon, &config, &mut client).await?;
        result = adopted;
        daemon
    } else {
        daemon
    };
    clean_up(daemon, &config, &client).await?;
    if args.keep {
        let kept = dir.keep();
        println!("\nkept: {}", kept.display());
    }
    result?;
    println!("\ndemo finished: every engine stopped, every pool removed.");
    Ok(ExitCode::SUCCESS)
}

/// The demo's configuration: a temporary runtime directory, no GPU required, short health,
/// stop and backoff timings so that a crash loop shows within seconds.
fn demo_config(dir: &std::path::Path, args: &DemoArgs) -> Config {
    let mut config = Config {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime_dir: dir.join("runtime"),
        journal_dir: dir.join("runtime/journal"),
        require_gpu: false,
        // As `--dev` does: a root test machine runs engines as root.
        allow_root_engines: true,
        ..Config::default()
    };
    config.health.preload_timeout_ms = 15_000;
    config.health.preload_interval_ms = 100;
    config.stop.grace_ms = 2_000;
    config.backoff.initial_ms = 200;
    config.backoff.min_ms = 100;
    config.backoff.max_ms = 3_200;
    config.breaker.failure_threshold = 4;
    config.breaker.open_ms = 60_000;
    // Two ports for a reload's new engine beside the old one (step 7's surges): the first
    // surge's engine keeps one, the next surge takes the other.
    if let Some(low) = two_free_ports() {
        config.reload.surge_ports = format!("{low}-{}", low + 1);
    }
    if let Some(fixture) = &args.gpu_fixture {
        config.gpu.fixture = fixture.clone();
        // More pools than a small fixture has GPUs: they share them (see the module doc).
        config.gpu.allow_sharing = true;
    }
    config
}

/// The fixture's GPUs (`GET /v2/gpus`), which the pools' masks then name in turn.
async fn show_gpus(client: &mut Client) -> anyhow::Result<()> {
    let (_, gpus) = client.call(reqwest::Method::GET, "/v2/gpus", None).await?;
    let quarantined = crate::cli::gpus::quarantined_uuids(&gpus);
    let gpus: Vec<crate::gpu::Gpu> = serde_json::from_value(gpus).unwrap_or_default();
    println!("GPUs from the fixture (GET /v2/gpus):");
    print!("{}", table::gpus_table(&gpus, Some(&quarantined)));
    client.gpus = gpus.iter().map(|g| g.info.index).collect();
    if !client.gpus.is_empty() {
        println!(
            "each pool's device mask names one of these {} GPU(s) in turn; [gpu] allow_sharing = true lets the demo's {} pools share them",
            client.gpus.len(),
            DEMO_POOLS.len()
        );
    }
    println!();
    Ok(())
}

/// Step 8: the daemon stops and starts again over the same journal; every ready engine must
/// be adopted (same pid, still ready). Returns the new daemon and whether they all were.
async fn restart(
    daemon: Daemon,
    config: &Config,
    client: &mut Client,
) -> anyhow::Result<(Daemon, anyhow::Result<()>)> {
    println!("\n8. The daemon restarts (an upgrade, say); its engines keep serving");
    let (_, before) = client.call(reqwest::Method::GET, "/v2/pools", None).await?;
    daemon.shutdown("demo: restart").await;
    let (daemon, report) = Daemon::start(config, Arc::new(SystemClock)).await?;
    client.base = format!("http://{}", daemon.addr());
    step(&format!(
        "stopped, started again over the same journal ({} events replayed in {} ms)",
        report.events_folded, report.replay_ms
    ));
    let (_, after) = client.call(reqwest::Method::GET, "/v2/pools", None).await?;
    let mut result = Ok(());
    for (old, new) in before
        .as_array()
        .into_iter()
        .flatten()
        .zip(after.as_array().into_iter().flatten())
        .filter(|(old, _)| old["ready"] == true)
    {
        step(&format!(
            "{}: pid {} before, pid {} after, ready {}, leases {} (adopted, not restarted)",
            new["pool_id"].as_str().unwrap_or("?"),
            old["pid"],
            new["pid"],
            new["ready"],
            new["active_leases"]
        ));
        if old["pid"] != new["pid"] || new["ready"] != true {
            result = Err(anyhow::anyhow!(
                "pool {} was not adopted: {new}",
                new["pool_id"]
            ));
        }
    }
    Ok((daemon, result))
}

/// Whatever happened: every pool stopped and forgotten, the daemon stopped, then the registry
/// as it was and the journal's timeline printed.
async fn clean_up(daemon: Daemon, config: &Config, client: &Client) -> anyhow::Result<()> {
    let (_, pools) = client.call(reqwest::Method::GET, "/v2/pools", None).await?;
    let registry_before_cleanup = pools.clone();
    for pool in pools.as_array().cloned().unwrap_or_default() {
        if let Some(id) = pool["pool_id"].as_str() {
            let _ = client
                .call(reqwest::Method::DELETE, &format!("/v2/pools/{id}"), None)
                .await;
        }
    }
    daemon.shutdown("demo finished").await;
    println!("\nRegistry before cleanup (GET /v2/pools):");
    let statuses: Vec<pool_core::PoolStatus> =
        serde_json::from_value(registry_before_cleanup).unwrap_or_default();
    print!("{}", table::registry_table(&statuses));
    println!("\nJournal timeline ({}):", config.journal_dir.display());
    let journal = crate::cli::open_existing(&config.journal_dir)?;
    for envelope in journal.read_from(1) {
        println!("  {}", table::timeline_line(&envelope?));
    }
    let _ = journal.close();
    Ok(())
}
