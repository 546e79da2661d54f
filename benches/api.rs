//! HTTP API benchmarks of the real daemon over a real loopback socket (figures and how to read
//! them: `BENCHMARKS.md`, section "API").
//!
//! The daemon is started in-process with `Daemon::start` (the code `serve` runs), with
//! `require_gpu = false`, its journal and runtime directory in a fresh temporary directory on
//! the disk under test, and `health.ready_interval_ms` = 600,000, so that no readiness probe
//! (and no heartbeat, which invalidates the cached `GET /v2/pools` body) falls inside a
//! measurement. Its pools are real: each is preloaded through the API with its own
//! `engine-sim` child process (its own port, `--parallel 4`), and is ready only once the
//! daemon's own health probe saw it answer 200. The clients are `reqwest` 0.12 clients in the
//! same process, over keep-alive connections, on a tokio runtime of their own (2 workers;
//! the daemon and the ceiling server run on another, of 2 workers, as in two processes).
//!
//! - `pools_list/daemon`: `GET /v2/pools` with 64 ready pools, from 16 concurrent client
//!   tasks (each awaits its answer and reads the whole body before sending the next request).
//!   `pools_list/ceiling`: the same clients against a plain axum server on the daemon's runtime
//!   that answers the same bytes (the daemon's body, captured once) from a `Bytes` clone.
//!   Then `pools_list paired` (a measurement loop): 10 pairs of 500 ms bursts, one against
//!   each server back to back; the median of the pairs' ratios is the ratio to trust, because
//!   the throughput of this loopback traffic on 2 cores varies from one run to the next (and
//!   within a run) by up to 1.5x, for both servers alike (`BENCHMARKS.md`).
//! - `leases/one_client`: `POST /v2/pools/{id}/leases` then `DELETE .../leases/{lease_id}`,
//!   one round trip (two durable journal appends) at a time. `leases/16_clients`: 16 client
//!   tasks doing the same, each on its own pool; the node actor batches what is queued into
//!   one journal append. Also measured: each round trip's latency, and the disk's flush
//!   requests (`/proc/diskstats`) and journal events per round trip, which show the batching.
//!   Then (a measurement loop) where one client's request goes: the p50 of a registry read,
//!   of a request the actor rejects (no append) and of a durable one; and, timed in-process,
//!   the two costs of the daemon's own in these paths (serializing the list body after a
//!   change, the node actor's copy of the registry per batch).
//! - `ready_latency` (a measurement loop, not a criterion timing; after the criterion groups):
//!   `POST .../preload?wait=false` of an `engine-sim --load-ms L` with the default 500 ms
//!   preload probe interval; this process polls the engine's `/health` every 5 ms (T0: first
//!   200) and `GET /v2/pools/{id}` every 5 ms (T1: first `ready: true`); prints the
//!   percentiles of T1 - T0. L is spread evenly over one probe interval, so the samples cover
//!   every phase of the probe clock.
//!
//! Every engine is stopped at the end (`DELETE /v2/pools/{id}` for each, then a shutdown with
//! `stop_engines_on_shutdown`); any engine child still alive after that (or after a panic) is
//! killed by its pid.
//!
//! Environment:
//! - `POOL_BENCH_POOLS`: ready pools (engine-sim processes) for the groups (default 64).
//! - `POOL_BENCH_CLIENTS`: concurrent clients of `pools_list` and of the concurrent `leases`
//!   benchmark, which is named after it (default 16: `leases/16_clients`).
//! - `POOL_BENCH_READY_SAMPLES`: preloads of `ready_latency` (default 40 under `cargo bench`,
//!   3 in test mode; 0 skips it).
//! - `POOL_BENCH_CLIENT_WORKERS`: worker threads of the clients' runtime (default 2).
//! - `POOL_BENCH_DIR`: where the journal and runtime directory are created (default
//!   `<target>/bench-data`). It must be on the disk under test: fsync on a tmpfs costs nothing.
//! - `POOL_BENCH_KEEP=1`: keep that directory (journal, engine logs) after the run.
//!
//! Test mode (`cargo test --bench api`, or without `--bench`): each criterion benchmark runs
//! once, the measurement loops run a few rounds, nothing is written.
//!
//! The figures criterion cannot give (the ratio, latency percentiles, flushes per round trip,
//! start-up cost of the pools) are printed and, under `cargo bench`, written to
//! `<target>/bench-data/api-figures.json`. Nothing here asserts anything about time; it asserts
//! only that the answers are what they claim to be (statuses, body sizes, every pool ready).

#[path = "support/common.rs"]
mod common;

use common::target_dir;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use criterion::{black_box, Criterion, Throughput};
use pool_managerd::clock::SystemClock;
use pool_managerd::config::Config;
use pool_managerd::daemon::Daemon;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

/// Ready pools unless `POOL_BENCH_POOLS` says otherwise.
const DEFAULT_POOLS: usize = 64;
/// Concurrent clients unless `POOL_BENCH_CLIENTS` says otherwise.
const DEFAULT_CLIENTS: usize = 16;
/// Preloads of `ready_latency` under `cargo bench` / in test mode.
const DEFAULT_READY_SAMPLES: usize = 40;
const TEST_READY_SAMPLES: usize = 3;
/// Slots each bench pool declares (`prepared.slots_total`): room for every client's lease.
const SLOTS: u32 = 64;
/// Readiness probes of ready pools: far apart, so that none falls in a measurement.
const READY_INTERVAL_MS: u64 = 600_000;
/// How often `ready_latency` polls the engine and the daemon.
const POLL_MS: u64 = 5;
/// Criterion samples per benchmark (the figures below are over these, warm-up left out).
const SAMPLES: usize = 10;

// ---- set-up ---------------------------------------------------------------------------------

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?}: want a non-negative integer")),
        Err(_) => default,
    }
}

/// The `prepared` body of a preload: `engine-sim` on `port` with `sim_flags`.
fn engine_sim(pool: &str, port: u16, slots_total: Option<u32>, sim_flags: &[String]) -> Value {
    let mut flags = vec![
        "--port".to_string(),
        port.to_string(),
        "--parallel".to_string(),
        "4".to_string(),
        "-m".to_string(),
        format!("/models/{pool}.gguf"),
    ];
    flags.extend(sim_flags.iter().cloned());
    let mut prepared = json!({
        "binary_path": env!("CARGO_BIN_EXE_engine-sim"),
        "flags": flags,
        "host": "127.0.0.1",
        "port": port,
        "model_path": format!("/models/{pool}.gguf"),
        "engine_version": "engine-sim",
        "engine": "engine-sim",
        "pool_id": pool,
        "replica_id": "r0",
    });
    if let Some(slots) = slots_total {
        prepared["slots_total"] = json!(slots);
    }
    json!({ "prepared": prepared })
}

fn http_client(idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(idle_per_host)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// The engines this process started (through the daemon). Whatever of them is still alive when
/// this is dropped (normally nothing: every pool is removed first) is killed, by pid, if it is
/// still this process's child.
#[derive(Default)]
struct Engines {
    pids: Mutex<Vec<u32>>,
}

impl Engines {
    fn add(&self, pid: u32) {
        self.pids.lock().expect("lock").push(pid);
    }

    /// The pids that are still our live (not zombie) children.
    fn alive(&self) -> Vec<u32> {
        let me = std::process::id();
        self.pids
            .lock()
            .expect("lock")
            .iter()
            .copied()
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
                    return false;
                };
                let mut fields = rest.split_whitespace();
                let state = fields.next().unwrap_or("Z");
                let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                ppid == me && state != "Z" && state != "X"
            })
            .collect()
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        let alive = self.alive();
        if !alive.is_empty() {
            eprintln!("killing {} engine(s) still running: {alive:?}", alive.len());
        }
        for pid in alive {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Resident memory of a process (`VmRSS`), KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Flush requests completed by the block device that holds `dir`: `/proc/diskstats`, the
/// line of its major:minor, statistic 15 after the name (kernels since 5.5). `None` where that
/// cannot be read.
fn disk_flushes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours = fields.first()?.parse::<u32>().ok()? == major
            && fields.get(1)?.parse::<u32>().ok()? == minor;
        if ours {
            fields.get(18)?.parse().ok()
        } else {
            None
        }
    })
}

/// TCP connections this network namespace has opened so far (`ActiveOpens` of
/// `/proc/net/snmp`): shows whether the clients kept their connections alive.
fn tcp_active_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let index = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// A check that the CPU itself ran at its usual speed during each measured phase (this is a
/// VM: a busy host would slow every figure, and the throughputs here vary from run to run).
/// A thread runs the same fixed integer loop every `PROBE_EVERY` and records the CPU time it
/// took (its own thread CPU time, so that waiting for a core while the benchmark keeps both
/// busy does not count). Reported per phase: the median of its samples (about 1,200 µs here)
/// and that over the fastest sample of the run (1.0 to 1.1 in the recorded runs: the CPU's
/// speed did not change, whatever the throughput did).
struct SpeedProbe {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Iterations of the probe's loop (about 1.3 ms of CPU at full speed here).
const PROBE_ITERATIONS: u64 = 1_000_000;
const PROBE_EVERY: Duration = Duration::from_millis(250);

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes only into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl SpeedProbe {
    fn start() -> SpeedProbe {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::Builder::new()
                .name("speed-probe".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let at = Instant::now();
                        let before = thread_cpu_ns();
                        let mut x = 0x9e37_79b9_7f4a_7c15u64;
                        for i in 0..PROBE_ITERATIONS {
                            x = black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i),
                            );
                        }
                        black_box(x);
                        let took = thread_cpu_ns().saturating_sub(before);
                        samples.lock().expect("lock").push((at, took));
                        std::thread::sleep(PROBE_EVERY);
                    }
                })
                .expect("speed probe thread")
        };
        SpeedProbe {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The probe's median CPU time in the window `[from, to]`, µs, and that over the fastest
    /// probe of the run (None without samples in it).
    fn in_window(&self, from: Instant, to: Instant) -> Option<(f64, f64)> {
        let samples = self.samples.lock().expect("lock");
        let fastest = samples
            .iter()
            .map(|(_, ns)| *ns)
            .filter(|ns| *ns > 0)
            .min()? as f64;
        let mut inside: Vec<u64> = samples
            .iter()
            .filter(|(at, ns)| *at >= from && *at <= to && *ns > 0)
            .map(|(_, ns)| *ns)
            .collect();
        if inside.is_empty() {
            return None;
        }
        inside.sort_unstable();
        let median = inside[inside.len() / 2] as f64;
        Some((median / 1e3, median / fastest))
    }

    /// The fastest probe of the run, µs.
    fn fastest_us(&self) -> Option<f64> {
        let samples = self.samples.lock().expect("lock");
        samples
            .iter()
            .map(|(_, ns)| *ns)
            .filter(|ns| *ns > 0)
            .min()
            .map(|ns| ns as f64 / 1e3)
    }
}

impl Drop for SpeedProbe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The daemon with its ready pools, the ceiling server and the clients.
struct Bench {
    /// The clients' runtime (2 workers): every request of the benchmarks is sent from it.
    rt: Runtime,
    /// The daemon's runtime (2 workers), which also runs the ceiling server. Servers and
    /// clients run apart, as they would in two processes. On one shared runtime the figures
    /// were bimodal: whether a connection's client and server halves happened to share a
    /// worker decided the cost of every request (the same CPU use, 1.6x the throughput, a
    /// third of the futex wake-ups per request), and that changed from one benchmark (one set
    /// of fresh connections) to the next. Apart they still vary from run to run (four busy
    /// worker threads on two cores), which is why the ratio is also measured in pairs.
    server_rt: Runtime,
    /// `None` once shut down.
    daemon: Option<Daemon>,
    base: String,
    ceiling_base: String,
    pools: Vec<String>,
    /// The daemon's `GET /v2/pools` body when every pool is ready (and the ceiling's body).
    body_len: usize,
    data_dir: PathBuf,
    engines: Arc<Engines>,
}

/// Dropped in field order: the daemon and its runtime first, then any engine still alive is
/// killed, then the temporary directory is removed.
struct Setup {
    bench: Option<Bench>,
    engines: Arc<Engines>,
    root: tempfile::TempDir,
    figures_path: PathBuf,
    pools: usize,
    clients: usize,
    figures: serde_json::Map<String, Value>,
    speed: SpeedProbe,
    /// Measured windows, for the speed report: (name, from, to).
    phases: Vec<(String, Instant, Instant)>,
}

impl Setup {
    fn new() -> Setup {
        let base = std::env::var_os("POOL_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("bench-data"));
        std::fs::create_dir_all(&base).expect("create bench dir");
        let root = tempfile::Builder::new()
            .prefix("api-bench-")
            .tempdir_in(&base)
            .expect("bench temp dir");
        let pools = env_count("POOL_BENCH_POOLS", DEFAULT_POOLS).max(1);
        let clients = env_count("POOL_BENCH_CLIENTS", DEFAULT_CLIENTS).max(1);
        Setup {
            root,
            figures_path: target_dir().join("bench-data").join("api-figures.json"),
            pools,
            clients,
            bench: None,
            figures: serde_json::Map::new(),
            engines: Arc::default(),
            speed: SpeedProbe::start(),
            phases: Vec::new(),
        }
    }

    fn phase(&mut self, name: &str, from: Instant, to: Instant) {
        self.phases.push((name.to_string(), from, to));
    }

    /// The window of criterion's measured calls.
    fn phase_of_calls(&mut self, name: &str, calls: &[Call]) {
        let from = calls.iter().filter_map(|c| c.started_at).min();
        let to = calls
            .iter()
            .filter_map(|c| c.started_at.map(|at| at + c.elapsed))
            .max();
        if let (Some(from), Some(to)) = (from, to) {
            self.phase(name, from, to);
        }
    }

    /// The daemon with its pools ready, started on first use.
    fn bench(&mut self) -> &Bench {
        if self.bench.is_none() {
            let (bench, startup) = start_bench(self.root.path(), self.pools, &self.engines);
            self.figures.insert("startup".into(), startup);
            self.bench = Some(bench);
        }
        self.bench.as_ref().expect("just started")
    }
}

fn client_workers() -> usize {
    env_count("POOL_BENCH_CLIENT_WORKERS", 2).max(1)
}

/// Starts the daemon, preloads `pools` engine-sim pools (all at once, each answering once
/// ready), checks they are all ready, and starts the ceiling server with the same body.
fn start_bench(root: &Path, pools: usize, engines: &Arc<Engines>) -> (Bench, Value) {
    // Servers and clients on two runtimes (as if in two processes): see `Bench::server_rt`.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .expect("server runtime");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_workers())
        .enable_all()
        .thread_name("client")
        .build()
        .expect("client runtime");
    let data_dir = root.join("daemon");
    let mut config = Config {
        addr: "127.0.0.1:0".parse().expect("addr"),
        runtime_dir: data_dir.join("runtime"),
        journal_dir: data_dir.join("journal"),
        require_gpu: false,
        // As `--dev` does: a root bench machine runs engines as root.
        allow_root_engines: true,
        stop_engines_on_shutdown: true,
        ..Config::default()
    };
    config.health.ready_interval_ms = READY_INTERVAL_MS;
    config.stop.grace_ms = 2_000;
    let names: Vec<String> = (0..pools).map(|i| format!("pool-{i:02}")).collect();
    let started = Instant::now();
    let (daemon, _report) = server_rt
        .block_on(Daemon::start(&config, Arc::new(SystemClock)))
        .expect("start the daemon");
    let daemon_start_s = started.elapsed().as_secs_f64();
    let base = format!("http://{}", daemon.addr());
    let (body, startup) = rt.block_on(async {
        let client = http_client(pools);
        let ports = common::free_ports(pools);
        let preloading = Instant::now();
        let answers = futures::future::join_all(names.iter().zip(&ports).map(|(pool, port)| {
            let (client, base) = (&client, &base);
            async move {
                let body = engine_sim(pool, *port, Some(SLOTS), &[]);
                let answer = client
                    .post(format!("{base}/v2/pools/{pool}/preload"))
                    .json(&body)
                    .send()
                    .await
                    .expect("preload");
                let status = answer.status();
                let answer: Value = answer.json().await.expect("preload answer");
                assert_eq!(status, 200, "preload of {pool}: {answer}");
                answer
            }
        }))
        .await;
        let preload_s = preloading.elapsed().as_secs_f64();
        for answer in &answers {
            engines.add(answer["pid"].as_u64().expect("pid") as u32);
        }
        let ready_ms: Vec<u64> = answers
            .iter()
            .map(|a| a["ready_ms"].as_u64().unwrap_or(0))
            .collect();

        let listed = client
            .get(format!("{base}/v2/pools"))
            .send()
            .await
            .expect("list");
        assert_eq!(listed.status(), 200);
        let body = listed.bytes().await.expect("list body");
        let statuses: Vec<Value> = serde_json::from_slice(&body).expect("list json");
        assert_eq!(statuses.len(), pools, "every pool is listed");
        assert!(
            statuses.iter().all(|s| s["ready"] == json!(true)),
            "every pool is ready"
        );
        let rss: Vec<u64> = statuses
            .iter()
            .filter_map(|s| rss_kib(s["pid"].as_u64().expect("pid") as u32))
            .collect();
        let rss_total_mib = rss.iter().sum::<u64>() as f64 / 1024.0;
        let startup = json!({
            "pools": pools,
            "daemon_start_s": daemon_start_s,
            "preload_all_s": preload_s,
            "ready_ms_min": ready_ms.iter().min(),
            "ready_ms_max": ready_ms.iter().max(),
            "engine_rss_total_mib": rss_total_mib,
            "engine_rss_each_kib_max": rss.iter().max(),
            "list_body_bytes": body.len(),
        });
        eprintln!(
            "start-up: daemon {daemon_start_s:.3} s; {pools} engine-sim pools preloaded at once, all ready after {preload_s:.3} s (ready_ms {}..{}); engines' RSS {rss_total_mib:.1} MiB in all; GET /v2/pools body {} bytes",
            ready_ms.iter().min().unwrap_or(&0),
            ready_ms.iter().max().unwrap_or(&0),
            body.len()
        );

        (body, startup)
    });

    // The ceiling: the same kind of axum server, on the daemon's runtime, answering the same
    // bytes from a clone.
    let ceiling_body: Bytes = body.clone();
    let router = Router::new().route(
        "/v2/pools",
        get(move || {
            let body = ceiling_body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("ceiling listener");
    let ceiling_base = format!("http://{}", listener.local_addr().expect("ceiling addr"));
    server_rt.spawn(async move {
        axum::serve(listener, router).await.expect("ceiling server");
    });
    let bench = Bench {
        rt,
        server_rt,
        daemon: Some(daemon),
        base,
        ceiling_base,
        pools: names,
        body_len: body.len(),
        data_dir,
        engines: engines.clone(),
    };
    (bench, startup)
}

impl Bench {
    /// `journal_seq` of `GET /health`.
    async fn journal_seq(&self, client: &reqwest::Client) -> u64 {
        let health: Value = client
            .get(format!("{}/health", self.base))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("health json");
        health["journal_seq"].as_u64().expect("journal_seq")
    }

    /// Removes every pool (each answer comes once its engine is gone) and shuts the daemon down.
    fn shutdown(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        let client = http_client(self.pools.len());
        let (base, pools) = (&self.base, &self.pools);
        self.rt.block_on(async {
            let listed: Vec<Value> = client
                .get(format!("{base}/v2/pools"))
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("list json");
            let ids: Vec<String> = listed
                .iter()
                .filter_map(|s| s["pool_id"].as_str().map(str::to_string))
                .collect();
            assert!(pools.iter().all(|p| ids.contains(p)));
            let removed = futures::future::join_all(ids.iter().map(|pool| {
                let client = &client;
                async move {
                    client
                        .delete(format!("{base}/v2/pools/{pool}"))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                }
            }))
            .await;
            for (pool, status) in ids.iter().zip(removed) {
                if status.as_ref().ok() != Some(&200) {
                    eprintln!("DELETE /v2/pools/{pool}: {status:?}");
                }
            }
        });
        self.server_rt
            .block_on(daemon.shutdown("benchmark finished"));
        let alive = self.engines.alive();
        if alive.is_empty() {
            eprintln!("every engine stopped, every pool removed");
        } else {
            eprintln!("engines still alive after removal and shutdown: {alive:?}");
        }
    }
}

// ---- figures --------------------------------------------------------------------------------

/// One criterion call of a routine: its iterations and what they took.
#[derive(Default, Clone)]
struct Call {
    iters: u64,
    elapsed: Duration,
    /// Per-operation latencies, ns (leases only).
    ns: Vec<u64>,
    flushes: Option<u64>,
    events: u64,
    /// TCP connections opened during the call (all clients of the machine).
    opens: Option<u64>,
    started_at: Option<Instant>,
}

/// The last `SAMPLES` calls: criterion's measured samples (the warm-up calls come first).
fn measured(calls: &[Call]) -> &[Call] {
    &calls[calls.len().saturating_sub(SAMPLES)..]
}

fn per_second(calls: &[Call]) -> f64 {
    let iters: u64 = calls.iter().map(|c| c.iters).sum();
    let secs: f64 = calls.iter().map(|c| c.elapsed.as_secs_f64()).sum();
    if secs > 0.0 {
        iters as f64 / secs
    } else {
        0.0
    }
}

fn percentile_ms(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e6
}

fn latency_figures(mut ns: Vec<u64>) -> Value {
    ns.sort_unstable();
    json!({
        "count": ns.len(),
        "p50_ms": percentile_ms(&ns, 50.0),
        "p90_ms": percentile_ms(&ns, 90.0),
        "p99_ms": percentile_ms(&ns, 99.0),
        "max_ms": ns.last().map(|n| *n as f64 / 1e6),
    })
}

/// Splits `iters` over `clients` as evenly as possible.
fn share(iters: u64, clients: usize, k: usize) -> u64 {
    iters / clients as u64 + u64::from((k as u64) < iters % clients as u64)
}

// ---- (1) GET /v2/pools against its ceiling ----------------------------------------------------

async fn get_loop(client: reqwest::Client, url: Arc<str>, count: u64, body_len: usize) {
    for _ in 0..count {
        let answer = client.get(&*url).send().await.expect("GET");
        assert_eq!(answer.status(), 200, "GET {url}");
        let body = answer.bytes().await.expect("body");
        assert_eq!(body.len(), body_len, "GET {url}: body size");
        black_box(body);
    }
}

fn bench_pools_list(c: &mut Criterion, setup: &mut Setup) {
    let clients = setup.clients;
    let mut group = c.benchmark_group("pools_list");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));
    let daemon_calls: Mutex<Vec<Call>> = Mutex::default();
    let ceiling_calls: Mutex<Vec<Call>> = Mutex::default();
    let mut seq_before = None;
    for (name, calls) in [("daemon", &daemon_calls), ("ceiling", &ceiling_calls)] {
        group.bench_function(name, |b| {
            let bench = setup.bench();
            let base = if name == "daemon" {
                &bench.base
            } else {
                &bench.ceiling_base
            };
            let url: Arc<str> = format!("{base}/v2/pools").into();
            let client = http_client(clients);
            if name == "daemon" && seq_before.is_none() {
                seq_before = Some(bench.rt.block_on(bench.journal_seq(&client)));
            }
            let body_len = bench.body_len;
            b.to_async(&bench.rt).iter_custom(|iters| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let opens_before = tcp_active_opens();
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..clients)
                        .map(|k| {
                            tokio::spawn(get_loop(
                                client.clone(),
                                url.clone(),
                                share(iters, clients, k),
                                body_len,
                            ))
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("client task");
                    }
                    let elapsed = started.elapsed();
                    let opens = tcp_active_opens()
                        .zip(opens_before)
                        .map(|(after, before)| after.saturating_sub(before));
                    calls.lock().expect("lock").push(Call {
                        iters,
                        elapsed,
                        opens,
                        started_at: Some(started),
                        ..Call::default()
                    });
                    elapsed
                }
            })
        });
    }
    group.finish();
    let daemon_calls = daemon_calls.into_inner().expect("lock");
    let ceiling_calls = ceiling_calls.into_inner().expect("lock");
    if daemon_calls.is_empty() || ceiling_calls.is_empty() {
        return; // filtered out
    }
    setup.phase_of_calls("pools_list/daemon", measured(&daemon_calls));
    setup.phase_of_calls("pools_list/ceiling", measured(&ceiling_calls));
    let bench = setup.bench();
    let seq_after = bench.rt.block_on(bench.journal_seq(&http_client(1)));
    let daemon_rps = per_second(measured(&daemon_calls));
    let ceiling_rps = per_second(measured(&ceiling_calls));
    let ratio = daemon_rps / ceiling_rps;
    let opens = |calls: &[Call]| calls.iter().map(|c| c.opens).sum::<Option<u64>>();
    let (daemon_opens, ceiling_opens) = (
        opens(measured(&daemon_calls)),
        opens(measured(&ceiling_calls)),
    );
    eprintln!(
        "pools_list: TCP connections opened during the measured samples: daemon {daemon_opens:?}, ceiling {ceiling_opens:?}"
    );
    eprintln!(
        "pools_list: daemon {daemon_rps:.0} req/s, ceiling {ceiling_rps:.0} req/s: {:.1} % of the ceiling ({clients} clients, {} pools, {} bytes per answer; journal seq {seq_before:?} -> {seq_after}: {})",
        ratio * 100.0,
        bench.pools.len(),
        bench.body_len,
        if seq_before == Some(seq_after) { "the cached body was never invalidated" } else { "the registry changed during the run" },
    );
    let figures = json!({
        "clients": clients,
        "pools": bench.pools.len(),
        "body_bytes": bench.body_len,
        "daemon_req_per_s": daemon_rps,
        "ceiling_req_per_s": ceiling_rps,
        "ratio": ratio,
        "tcp_opens_measured": { "daemon": daemon_opens, "ceiling": ceiling_opens },
        "journal_seq_before": seq_before,
        "journal_seq_after": seq_after,
    });
    setup.figures.insert("pools_list".into(), figures);
}

/// `clients` tasks sending `GET /v2/pools` to `url` until `deadline`; the requests answered.
async fn get_burst(
    client: &reqwest::Client,
    url: &Arc<str>,
    clients: usize,
    body_len: usize,
    burst: Duration,
) -> u64 {
    let deadline = tokio::time::Instant::now() + burst;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut answered = 0u64;
                while tokio::time::Instant::now() < deadline {
                    get_loop(client.clone(), url.clone(), 1, body_len).await;
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await.expect("client task");
    }
    answered
}

/// The ratio measured in pairs: `pairs` times a burst against the daemon and one against the
/// ceiling, back to back (which goes first alternates), so that a change in the machine's
/// speed or load moves both sides of a pair alike. The median of the pairs' ratios
/// is the robust figure; the criterion groups above give the absolute ones.
fn pools_list_paired(setup: &mut Setup, pairs: usize, burst: Duration) {
    if pairs == 0 {
        return;
    }
    let clients = setup.clients;
    let bench = setup.bench();
    let client = http_client(clients);
    let daemon_url: Arc<str> = format!("{}/v2/pools", bench.base).into();
    let ceiling_url: Arc<str> = format!("{}/v2/pools", bench.ceiling_base).into();
    let body_len = bench.body_len;
    let mut ratios = Vec::with_capacity(pairs);
    let (mut daemon_total, mut ceiling_total) = (0u64, 0u64);
    let mut rows = Vec::with_capacity(pairs);
    let started = Instant::now();
    bench.rt.block_on(async {
        // Warm both sides' connections first.
        get_burst(&client, &daemon_url, clients, body_len, burst / 4).await;
        get_burst(&client, &ceiling_url, clients, body_len, burst / 4).await;
        for pair in 0..pairs {
            let (daemon, ceiling) = if pair % 2 == 0 {
                let daemon = get_burst(&client, &daemon_url, clients, body_len, burst).await;
                let ceiling = get_burst(&client, &ceiling_url, clients, body_len, burst).await;
                (daemon, ceiling)
            } else {
                let ceiling = get_burst(&client, &ceiling_url, clients, body_len, burst).await;
                let daemon = get_burst(&client, &daemon_url, clients, body_len, burst).await;
                (daemon, ceiling)
            };
            daemon_total += daemon;
            ceiling_total += ceiling;
            ratios.push(daemon as f64 / ceiling.max(1) as f64);
            rows.push(json!([daemon, ceiling]));
        }
    });
    setup.phase("pools_list/paired", started, Instant::now());
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let seconds = burst.as_secs_f64() * pairs as f64;
    let (daemon_rps, ceiling_rps) = (
        daemon_total as f64 / seconds,
        ceiling_total as f64 / seconds,
    );
    eprintln!(
        "pools_list paired ({pairs} pairs of {} ms bursts, {clients} clients): daemon {daemon_rps:.0} req/s, ceiling {ceiling_rps:.0} req/s; ratio median {:.1} % (pairs {:.1} % to {:.1} %)",
        burst.as_millis(),
        median * 100.0,
        sorted.first().copied().unwrap_or(f64::NAN) * 100.0,
        sorted.last().copied().unwrap_or(f64::NAN) * 100.0,
    );
    setup.figures.insert(
        "pools_list_paired".into(),
        json!({
            "pairs": pairs,
            "burst_ms": burst.as_millis() as u64,
            "clients": clients,
            "daemon_req_per_s": daemon_rps,
            "ceiling_req_per_s": ceiling_rps,
            "ratio_median": median,
            "ratio_min": sorted.first(),
            "ratio_max": sorted.last(),
            "answered_per_pair": rows,
        }),
    );
}

// ---- (2) lease round trips --------------------------------------------------------------------

/// `count` lease round trips on `pool`; the latency of each, ns.
async fn lease_loop(client: reqwest::Client, base: Arc<str>, pool: String, count: u64) -> Vec<u64> {
    let leases = format!("{base}/v2/pools/{pool}/leases");
    let mut ns = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let sent = Instant::now();
        let answer = client.post(&leases).send().await.expect("acquire");
        let status = answer.status();
        let granted: Value = answer.json().await.expect("acquire answer");
        assert_eq!(status, 201, "POST {leases}: {granted}");
        let lease = granted["lease_id"].as_str().expect("lease_id");
        let answer = client
            .delete(format!("{leases}/{lease}"))
            .send()
            .await
            .expect("release");
        let status = answer.status();
        let released = answer.bytes().await.expect("release answer");
        assert_eq!(
            status,
            200,
            "DELETE {leases}/{lease}: {}",
            String::from_utf8_lossy(&released)
        );
        ns.push(sent.elapsed().as_nanos() as u64);
    }
    ns
}

fn bench_leases(c: &mut Criterion, setup: &mut Setup) {
    let clients = setup.clients;
    let mut group = c.benchmark_group("leases");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));
    let one_calls: Mutex<Vec<Call>> = Mutex::default();
    let many_calls: Mutex<Vec<Call>> = Mutex::default();
    let many_name = format!("{clients}_clients");
    for (name, writers, calls) in [
        ("one_client", 1, &one_calls),
        (many_name.as_str(), clients, &many_calls),
    ] {
        group.bench_function(name, |b| {
            let bench = setup.bench();
            let client = http_client(writers);
            let base: Arc<str> = bench.base.as_str().into();
            let pools = bench.pools.clone();
            let data_dir = bench.data_dir.clone();
            b.to_async(&bench.rt).iter_custom(|iters| {
                let (client, base, pools, data_dir) = (
                    client.clone(),
                    base.clone(),
                    pools.clone(),
                    data_dir.clone(),
                );
                async move {
                    let seq_before = bench.journal_seq(&client).await;
                    let flushes_before = disk_flushes(&data_dir);
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|k| {
                            tokio::spawn(lease_loop(
                                client.clone(),
                                base.clone(),
                                pools[k % pools.len()].clone(),
                                share(iters, writers, k),
                            ))
                        })
                        .collect();
                    let mut ns = Vec::with_capacity(iters as usize);
                    for task in tasks {
                        ns.extend(task.await.expect("client task"));
                    }
                    let elapsed = started.elapsed();
                    let flushes = disk_flushes(&data_dir)
                        .zip(flushes_before)
                        .map(|(after, before)| after.saturating_sub(before));
                    let events = bench.journal_seq(&client).await - seq_before;
                    calls.lock().expect("lock").push(Call {
                        iters,
                        elapsed,
                        ns,
                        flushes,
                        events,
                        opens: None,
                        started_at: Some(started),
                    });
                    elapsed
                }
            })
        });
    }
    group.finish();
    let mut figures = serde_json::Map::new();
    for (name, calls) in [
        ("one_client", one_calls.into_inner().expect("lock")),
        (many_name.as_str(), many_calls.into_inner().expect("lock")),
    ] {
        if calls.is_empty() {
            continue; // filtered out
        }
        let calls = measured(&calls);
        setup.phase_of_calls(&format!("leases/{name}"), calls);
        let round_trips: u64 = calls.iter().map(|c| c.iters).sum();
        let events: u64 = calls.iter().map(|c| c.events).sum();
        let flushes: Option<u64> = calls.iter().map(|c| c.flushes).sum();
        let latency = latency_figures(calls.iter().flat_map(|c| c.ns.iter().copied()).collect());
        let rate = per_second(calls);
        eprintln!(
            "leases/{name}: {rate:.0} round trips/s ({:.0} durable appends/s); round trip {latency}; {:.2} journal events and {} disk flushes per round trip",
            rate * 2.0,
            events as f64 / round_trips as f64,
            flushes.map_or("?".to_string(), |f| format!("{:.2}", f as f64 / round_trips as f64)),
        );
        figures.insert(
            name.to_string(),
            json!({
                "round_trips_per_s": rate,
                "round_trips": round_trips,
                "events_per_round_trip": events as f64 / round_trips as f64,
                "disk_flushes_per_round_trip": flushes.map(|f| f as f64 / round_trips as f64),
                "round_trip_latency": latency,
            }),
        );
    }
    if !figures.is_empty() {
        setup
            .figures
            .insert("leases".into(), Value::Object(figures));
    }
}

/// Where one client's round trip goes: the p50 of three kinds of request, each repeated
/// `rounds` times by one client on `pool-00`:
/// - `GET /v2/pools/{id}`: HTTP and the published registry only (no actor);
/// - `DELETE /v2/pools/{id}/leases/lease-absent`: HTTP and a trip through the node actor that
///   the core rejects (404 LEASE_NOT_FOUND: no journal append);
/// - half a lease round trip (acquire or release): HTTP, the actor and a durable append.
fn one_client_breakdown(setup: &mut Setup, rounds: usize) {
    if rounds == 0 {
        return;
    }
    let bench = setup.bench();
    let client = http_client(1);
    let pool = &bench.pools[0];
    let base = &bench.base;
    let (status_ns, rejected_ns, durable_ns) = bench.rt.block_on(async {
        let status_url = format!("{base}/v2/pools/{pool}");
        let absent_url = format!("{base}/v2/pools/{pool}/leases/lease-absent");
        let (mut status_ns, mut rejected_ns, mut durable_ns) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let sent = Instant::now();
            let answer = client.get(&status_url).send().await.expect("status");
            assert_eq!(answer.status(), 200);
            black_box(answer.bytes().await.expect("status body"));
            status_ns.push(sent.elapsed().as_nanos() as u64);

            let sent = Instant::now();
            let answer = client.delete(&absent_url).send().await.expect("release");
            assert_eq!(answer.status(), 404, "DELETE of an unknown lease");
            black_box(answer.bytes().await.expect("release body"));
            rejected_ns.push(sent.elapsed().as_nanos() as u64);
        }
        let round_trips = lease_loop(
            client.clone(),
            base.as_str().into(),
            pool.clone(),
            rounds as u64,
        )
        .await;
        durable_ns.extend(round_trips.iter().map(|ns| ns / 2));
        (status_ns, rejected_ns, durable_ns)
    });
    let status = latency_figures(status_ns);
    let rejected = latency_figures(rejected_ns);
    let durable = latency_figures(durable_ns);
    eprintln!(
        "one client, p50: GET /v2/pools/{{id}} {:.3} ms; DELETE of an unknown lease (through the actor, no append) {:.3} ms; half a lease round trip (durable append) {:.3} ms",
        status["p50_ms"].as_f64().unwrap_or(f64::NAN),
        rejected["p50_ms"].as_f64().unwrap_or(f64::NAN),
        durable["p50_ms"].as_f64().unwrap_or(f64::NAN),
    );
    setup.figures.insert(
        "one_client_breakdown".into(),
        json!({ "get_status": status, "rejected_release": rejected, "half_round_trip": durable }),
    );
}

// ---- (3) engine healthy -> pool ready -----------------------------------------------------------

/// Polls `url` every `POLL_MS` until `done(status, body)`; the instant of the first answer that
/// passed. Panics after `limit`.
async fn poll_until(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
    done: impl Fn(u16, &[u8]) -> bool,
) -> Instant {
    let deadline = Instant::now() + limit;
    let mut ticker = tokio::time::interval(Duration::from_millis(POLL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Ok(answer) = client.get(url).send().await {
            let status = answer.status().as_u16();
            let body = answer.bytes().await.unwrap_or_default();
            if done(status, &body) {
                return Instant::now();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url}: not there after {limit:?}"
        );
    }
}

fn ready_latency(setup: &mut Setup, samples: usize) {
    if samples == 0 {
        return;
    }
    let engines = setup.engines.clone();
    let bench = setup.bench();
    let interval_ms = Config::default().health.preload_interval_ms;
    let client = http_client(4);
    let base = bench.base.clone();
    let mut lags_ns = Vec::with_capacity(samples);
    let mut rows = Vec::with_capacity(samples);
    let started = Instant::now();
    bench.rt.block_on(async {
        for i in 0..samples {
            // Load times spread evenly over one probe interval, offset by 100 ms.
            let load_ms = 100 + (i as u64 * interval_ms) / samples as u64;
            let pool = format!("ready-{i:02}");
            let port = common::free_ports(1)[0];
            let body = engine_sim(
                &pool,
                port,
                None,
                &["--load-ms".into(), load_ms.to_string()],
            );
            let sent = Instant::now();
            let answer = client
                .post(format!("{base}/v2/pools/{pool}/preload?wait=false"))
                .json(&body)
                .send()
                .await
                .expect("preload");
            assert_eq!(answer.status(), 202, "preload {pool}");
            let engine_url = format!("http://127.0.0.1:{port}/health");
            let pool_url = format!("{base}/v2/pools/{pool}");
            let limit = Duration::from_secs(30);
            let (t0, t1) = tokio::join!(
                poll_until(&client, &engine_url, limit, |status, _| status == 200),
                poll_until(&client, &pool_url, limit, |status, body| {
                    status == 200
                        && serde_json::from_slice::<Value>(body)
                            .is_ok_and(|s| s["ready"] == json!(true))
                }),
            );
            let status: Value = client
                .get(&pool_url)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("status json");
            if let Some(pid) = status["pid"].as_u64() {
                engines.add(pid as u32);
            }
            let lag_ms = if t1 >= t0 {
                t1.duration_since(t0).as_secs_f64() * 1e3
            } else {
                -(t0.duration_since(t1).as_secs_f64() * 1e3)
            };
            lags_ns.push((lag_ms * 1e6).max(0.0) as u64);
            rows.push(json!({
                "load_ms": load_ms,
                "healthy_after_ms": t0.duration_since(sent).as_secs_f64() * 1e3,
                "ready_after_ms": t1.duration_since(sent).as_secs_f64() * 1e3,
                "lag_ms": lag_ms,
            }));
            let removed = client
                .delete(format!("{base}/v2/pools/{pool}"))
                .send()
                .await
                .expect("remove");
            assert_eq!(removed.status(), 200, "DELETE {pool}");
        }
    });
    setup.phase("ready_latency", started, Instant::now());
    let figures = latency_figures(lags_ns.clone());
    let min_ms = lags_ns.iter().min().map(|n| *n as f64 / 1e6);
    let mean_ms = lags_ns.iter().sum::<u64>() as f64 / lags_ns.len() as f64 / 1e6;
    eprintln!(
        "ready_latency: engine 200 -> pool ready, {samples} preloads (preload_interval_ms {interval_ms}, probes of ready pools every {READY_INTERVAL_MS} ms, polled every {POLL_MS} ms): {figures}, min {min_ms:?} ms, mean {mean_ms:.1} ms ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    setup.figures.insert(
        "ready_latency".into(),
        json!({
            "preload_interval_ms": interval_ms,
            "poll_ms": POLL_MS,
            "lag": figures,
            "lag_min_ms": min_ms,
            "lag_mean_ms": mean_ms,
            "samples": rows,
        }),
    );
}

// ---- what a request costs inside the daemon ----------------------------------------------------

/// Two costs of the daemon's own that the groups above include: serializing the `GET
/// /v2/pools` body after a change (a cache miss), and the copy of the registry the node actor
/// makes for every batch. Timed in-process on the bench daemon's registry.
fn inner_costs(setup: &mut Setup) {
    let bench = setup.bench();
    let Some(daemon) = bench.daemon.as_ref() else {
        return;
    };
    let handle = daemon.handle();
    let registry = handle.registry();
    const ROUNDS: u32 = 2_000;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        black_box(serde_json::to_vec(&registry.statuses()).expect("json"));
    }
    let serialize_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    let state = registry.load().state.clone();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        black_box((*state).clone());
    }
    let clone_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    eprintln!(
        "inside the daemon, {} pools: GET /v2/pools body serialized on a cache miss {serialize_us:.1} µs; the registry copy per actor batch {clone_us:.1} µs",
        state.pools.len()
    );
    setup.figures.insert(
        "inner_costs".into(),
        json!({
            "pools": state.pools.len(),
            "statuses_json_us": serialize_us,
            "state_clone_us": clone_us,
        }),
    );
}

/// Prints the machine's speed during each measured phase (see [`SpeedProbe`]).
fn speed_report(setup: &mut Setup) {
    if setup.phases.is_empty() {
        return;
    }
    let mut report = serde_json::Map::new();
    let mut line = Vec::new();
    for (name, from, to) in &setup.phases {
        let window = setup.speed.in_window(*from, *to);
        line.push(format!(
            "{name} {}",
            window.map_or("?".to_string(), |(us, slowdown)| format!(
                "{us:.0} µs (x{slowdown:.2})"
            ))
        ));
        report.insert(
            name.clone(),
            json!(window.map(|(us, slowdown)| json!({"probe_us": us, "slowdown": slowdown}))),
        );
    }
    let fastest = setup.speed.fastest_us();
    eprintln!(
        "machine speed: the probe loop's median CPU time per phase (x: over the fastest of the run, {} µs): {}",
        fastest.map_or("?".to_string(), |us| format!("{us:.0}")),
        line.join(", ")
    );
    report.insert("fastest_probe_us".into(), json!(fastest));
    setup
        .figures
        .insert("machine_speed".into(), Value::Object(report));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|arg| arg == "--list");
    // Only `cargo bench` (which passes `--bench`) measures; `cargo test --bench api` and
    // `--test` run each benchmark once.
    let measured = args.iter().any(|arg| arg == "--bench")
        && !args.iter().any(|arg| arg == "--test" || arg == "--list");
    let mut criterion = Criterion::default().configure_from_args();
    let mut setup = Setup::new();
    bench_pools_list(&mut criterion, &mut setup);
    if setup.bench.is_some() && !listing {
        // Only when the group above ran (not filtered out).
        let (pairs, burst_ms) = if measured { (10, 500) } else { (1, 50) };
        pools_list_paired(&mut setup, pairs, Duration::from_millis(burst_ms));
    }
    bench_leases(&mut criterion, &mut setup);
    criterion.final_summary();
    if !listing {
        let default_samples = if measured {
            DEFAULT_READY_SAMPLES
        } else {
            TEST_READY_SAMPLES
        };
        ready_latency(
            &mut setup,
            env_count("POOL_BENCH_READY_SAMPLES", default_samples),
        );
        if setup.bench.is_some() {
            one_client_breakdown(&mut setup, if measured { 2_000 } else { 5 });
            inner_costs(&mut setup);
        }
    }
    speed_report(&mut setup);
    if let Some(bench) = setup.bench.as_mut() {
        bench.shutdown();
    }
    if std::env::var_os("POOL_BENCH_KEEP").is_some() {
        eprintln!("data kept in {}", setup.root.keep().display());
    }
    if !measured {
        return;
    }
    setup.figures.insert(
        "args".into(),
        json!(std::env::args().skip(1).collect::<Vec<_>>()),
    );
    let figures = Value::Object(std::mem::take(&mut setup.figures));
    let text = serde_json::to_string_pretty(&figures).expect("json");
    if let Some(parent) = setup.figures_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&setup.figures_path, format!("{text}\n")) {
        Ok(()) => eprintln!("figures written to {}", setup.figures_path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", setup.figures_path.display()),
    }
}
