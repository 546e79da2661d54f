//! A real daemon for one scenario: `pool_managerd::daemon::Daemon` started in this process
//! (node actor, supervisor, HTTP API) on a free loopback port, over a journal and a runtime
//! directory in the scenario's temporary directory, and an HTTP client that talks to it.
//!
//! Clean-up ([`LiveDaemon::clean_up`], run after every scenario whatever its outcome): every
//! pool is removed over the API (which stops its engine: SIGTERM, grace, SIGKILL), the daemon
//! is shut down, and then the journal is read for every engine the daemon ever spawned
//! (`EngineSpawned` carries the pid and its start time): one still running is killed and
//! reported (which fails the run), so that no engine outlives the run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_managerd::clock::{ManualClock, SharedClock, SystemClock};
use pool_managerd::config::Config;
use pool_managerd::core::Event;
use pool_managerd::daemon::Daemon;
use pool_managerd::gpu::{self, simulated_gpus, FixtureInventory, Gpu, GpuInventory};
use pool_managerd::schema::PoolJournal;
use reqwest::Method;
use serde_json::Value;

use crate::daemon_process::{free_loopback_addr, DaemonProcess};
use crate::engines::EngineProcess;

/// How long a request may take before the step fails (a waiting preload is bounded by the
/// scenario's health timeout, well below this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the clean-up keeps retrying the removal of a pool that is busy.
const REMOVE_RETRY: Duration = Duration::from_secs(10);
/// The files of a journal directory that are locked while it is open: `pool_journal`'s
/// store takes a `flock` on `LOCK`, sled one on `db`.
const JOURNAL_LOCK_FILES: [&str; 2] = ["LOCK", "db"];
/// The longest a forked child (of a parallel scenario's daemon) may hold inherited
/// descriptors before it execs, on a loaded 2-core machine.
const FORK_EXEC_WINDOW_MAX: Duration = Duration::from_secs(2);
/// How long the clean-up waits for a killed survivor to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// The GPU fixture of the node (an empty list on a node without a GPU), in the scenario's
/// directory: read by the daemon at every reading, so a step may rewrite it while the daemon
/// runs (`steps/gpus.rs`).
pub const GPU_FIXTURE_FILE: &str = "gpus.json";

/// What a scenario sets before its daemon starts.
#[derive(Debug, Clone)]
pub struct DaemonSetup {
    /// The daemon's configuration (addresses and directories are filled in at start).
    pub config: Config,
    /// How many GPUs the (simulated) NVIDIA driver lists; `None`: no GPU (the fixture lists
    /// none, and the daemon says so in its own words).
    pub gpus: Option<u32>,
    /// The GPUs of the fixture as a step described them (names, VRAM, MIG devices); when
    /// set, they are the node's GPUs instead of `gpus` simulated ones.
    pub gpu_fixture: Option<Vec<Gpu>>,
    /// Where a manual clock starts (ms since the epoch); `None`: the system clock. A daemon
    /// on a manual clock sees time pass only when a step advances it (restart, half-open,
    /// backoff-reset and breaker-close timers, health deadlines, every event's `ts_ms`).
    pub manual_clock_at_ms: Option<u64>,
    /// Run the daemon as its own process (`pool-managerd serve`), which a step can kill with
    /// SIGKILL, instead of in this process (see `daemon_process.rs`).
    pub own_process: bool,
    /// The fake NVML library when the run reads the GPUs through NVML (`gpu_source.rs`);
    /// `None`: through the fixture.
    pub fake_nvml: Option<PathBuf>,
    /// NVML error returns a step asked for (`error <function> <code>` lines of the fake
    /// library's scenario), which the fixture has no field for.
    pub nvml_lines: Vec<String>,
    /// The Xids of the fixture that are double-bit ECC errors (GPU index, position in its
    /// `xids`): the fixture lists them as the Xid 48 the daemon reports, the fake NVML
    /// library delivers them as ECC events.
    pub ecc_xids: BTreeSet<(u64, usize)>,
}

impl DaemonSetup {
    /// The daemon the scenarios run unless they say otherwise: development mode (no GPU
    /// required), a fast health poll, a health timeout of 10 s, a ready probe only every 60 s
    /// (so that only exit detection can explain a crash seen sooner), a stop grace of 2 s, and
    /// a first restart delay of 60 s (a failed start is restarted only after the scenario is
    /// over: each scenario sees the starts it asked for and no other).
    pub fn for_tests() -> DaemonSetup {
        let mut config = Config {
            addr: "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|e| panic!("loopback address: {e}")),
            require_gpu: false,
            // As `--dev` does: a root test machine runs engines as root.
            allow_root_engines: true,
            ..Config::default()
        };
        config.health.preload_interval_ms = 25;
        config.health.preload_timeout_ms = 10_000;
        config.health.ready_interval_ms = 60_000;
        config.stop.grace_ms = 2_000;
        config.backoff.initial_ms = 60_000;
        config.backoff.max_ms = 60_000;
        DaemonSetup {
            config,
            gpus: None,
            gpu_fixture: None,
            manual_clock_at_ms: None,
            own_process: false,
            fake_nvml: crate::gpu_source::selected(),
            nvml_lines: Vec::new(),
            ecc_xids: BTreeSet::new(),
        }
    }

    /// Sets one configuration key (the TOML name, with its table) to `value`.
    pub fn set(&mut self, key: &str, value: &str) {
        let number = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{key} = {value:?}: not a whole number ({e})"))
        };
        let count = || -> u32 {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{key} = {value:?}: not a count ({e})"))
        };
        let fraction = || -> f64 {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{key} = {value:?}: not a number ({e})"))
        };
        let flag = || -> bool {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{key} = {value:?}: not true or false ({e})"))
        };
        let config = &mut self.config;
        let multiplier = &mut config.backoff.reason_multiplier;
        match key {
            "require_gpu" => config.require_gpu = flag(),
            "gpu.poll_interval_ms" => config.gpu.poll_interval_ms = number(),
            "gpu.placement_timeout_ms" => config.gpu.placement_timeout_ms = number(),
            "gpu.allow_sharing" => config.gpu.allow_sharing = flag(),
            "gpu.release_timeout_ms" => config.gpu.release_timeout_ms = number(),
            "gpu.release_slack_bytes" => config.gpu.release_slack_bytes = number(),
            "health.preload_interval_ms" => config.health.preload_interval_ms = number(),
            "health.preload_timeout_ms" => config.health.preload_timeout_ms = number(),
            "health.ready_interval_ms" => config.health.ready_interval_ms = number(),
            "health.failures_to_crash" => config.health.failures_to_crash = count(),
            "health.progress_interval_ms" => config.health.progress_interval_ms = number(),
            "health.stall_after_ms" => config.health.stall_after_ms = number(),
            "stop.grace_ms" => config.stop.grace_ms = number(),
            "reload.surge_ports" => config.reload.surge_ports = value.to_string(),
            "backoff.initial_ms" => config.backoff.initial_ms = number(),
            "backoff.min_ms" => config.backoff.min_ms = number(),
            "backoff.max_ms" => config.backoff.max_ms = number(),
            "backoff.factor" => config.backoff.factor = fraction(),
            "backoff.jitter" => config.backoff.jitter = fraction(),
            "backoff.reset_after_ms" => config.backoff.reset_after_ms = number(),
            "backoff.reason_multiplier.crash" => multiplier.crash = fraction(),
            "backoff.reason_multiplier.cuda_error" => multiplier.cuda_error = fraction(),
            "backoff.reason_multiplier.vram_oom" => multiplier.vram_oom = fraction(),
            "backoff.reason_multiplier.driver_error" => multiplier.driver_error = fraction(),
            "backoff.reason_multiplier.oom_killed" => multiplier.oom_killed = fraction(),
            "backoff.reason_multiplier.signal" => multiplier.signal = fraction(),
            "breaker.failure_threshold" => config.breaker.failure_threshold = count(),
            "breaker.open_ms" => config.breaker.open_ms = number(),
            "breaker.close_after_stable_ms" => config.breaker.close_after_stable_ms = number(),
            "storm.max_restarts" => config.storm.max_restarts = count(),
            "storm.window_ms" => config.storm.window_ms = number(),
            other => panic!("the feature suite does not set `{other}` (see live.rs)"),
        }
        config
            .policy()
            .validate()
            .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
    }
}

/// An answer of the daemon's API.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The request, for messages (`POST /v2/pools/p1/preload`).
    pub request: String,
    /// HTTP status.
    pub status: u16,
    /// The body: JSON when it parses, else the text as a JSON string.
    pub body: Value,
    /// Its `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// How long the request took.
    pub elapsed: Duration,
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// None.
    Empty,
    /// JSON.
    Json(Value),
    /// Raw text sent as `application/json` (malformed bodies).
    Raw(String),
}

/// A running daemon and its client.
pub struct LiveDaemon {
    setup: DaemonSetup,
    clock: Option<ManualClock>,
    gpus: Arc<dyn GpuInventory>,
    daemon: Option<Daemon>,
    /// The daemon when it runs as its own process.
    process: Option<DaemonProcess>,
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for LiveDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDaemon")
            .field("base", &self.base)
            .field("running", &self.is_running())
            .field("process", &self.process.as_ref().map(DaemonProcess::pid))
            .field("config", &self.setup.config)
            .field("manual_clock", &self.clock)
            .finish()
    }
}

impl LiveDaemon {
    /// Starts a daemon of `setup` whose directories live under `dir`.
    pub async fn start(mut setup: DaemonSetup, dir: &Path) -> LiveDaemon {
        setup.config.runtime_dir = dir.join("runtime");
        setup.config.journal_dir = dir.join("journal");
        // The node's GPUs: the fixture a step described, `count` simulated GPUs, or none (a
        // fixture that lists no GPU: the daemon's own "no GPU" state, in its own words).
        let listed = match (&setup.gpu_fixture, setup.gpus) {
            (Some(described), _) => described.clone(),
            (None, Some(count)) => simulated_gpus(count),
            (None, None) => Vec::new(),
        };
        let file = dir.join(GPU_FIXTURE_FILE);
        let json = serde_json::to_value(&listed).unwrap_or_else(|e| panic!("GPU fixture: {e}"));
        std::fs::write(&file, json.to_string())
            .unwrap_or_else(|e| panic!("GPU fixture {}: {e}", file.display()));
        // Over NVML: the scenario's copy of the fake library, told the same GPUs.
        let gpus: Arc<dyn GpuInventory> = match &setup.fake_nvml {
            Some(library) => {
                setup.config.gpu.nvml_library = crate::gpu_source::install(library, dir);
                crate::gpu_source::write_scenario(dir, &json, &setup.ecc_xids, &setup.nvml_lines);
                gpu::open_inventory(&setup.config.gpu)
            }
            None => Arc::new(FixtureInventory::new(&file)),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|e| panic!("HTTP client: {e}"));
        let clock = setup.manual_clock_at_ms.map(ManualClock::new);
        let mut live = LiveDaemon {
            setup,
            clock,
            gpus,
            daemon: None,
            process: None,
            base: String::new(),
            http,
        };
        live.boot().await;
        live
    }

    async fn boot(&mut self) {
        if self.setup.own_process {
            assert!(
                self.clock.is_none(),
                "a daemon in its own process runs on the system clock"
            );
            // A new port each start: the old one may still be held by an engine that
            // inherited nothing, but a kernel may keep it a moment after a SIGKILL.
            self.setup.config.addr = free_loopback_addr();
            let dir = self
                .setup
                .config
                .runtime_dir
                .parent()
                .unwrap_or_else(|| panic!("the runtime directory has a parent"))
                .to_path_buf();
            let (process, base) = DaemonProcess::start(&self.setup.config, &dir, &self.http).await;
            self.process = Some(process);
            self.base = base;
            return;
        }
        let clock: SharedClock = match &self.clock {
            Some(manual) => Arc::new(manual.clone()),
            None => Arc::new(SystemClock),
        };
        let (daemon, _report) =
            Daemon::start_with_gpus(&self.setup.config, clock, self.gpus.clone())
                .await
                .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
        self.base = format!("http://{}", daemon.addr());
        self.daemon = Some(daemon);
    }

    /// The daemon's manual clock; fails the step when it runs on the system clock.
    pub fn clock(&self) -> &ManualClock {
        self.clock.as_ref().unwrap_or_else(|| {
            panic!("the daemon runs on the system clock: start it with `Given a running daemon on a manual clock`")
        })
    }

    /// The configuration the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.setup.config
    }

    /// Shuts the daemon down (its engines keep running) and starts it again over the same
    /// journal and runtime directory, on a new port.
    pub async fn restart(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown("restarted by the scenario").await;
        }
        if let Some(process) = self.process.take() {
            process.terminate().await;
        }
        assert_journal_released(&self.setup.config.journal_dir).await;
        self.boot().await;
    }

    /// Whether a daemon runs (in this process or as its own).
    pub fn is_running(&self) -> bool {
        self.daemon.is_some() || self.process.is_some()
    }

    /// Kills the daemon's process with SIGKILL, as a crash would: nothing is shut down, the
    /// engines keep running. Fails the step for an in-process daemon.
    pub fn kill_hard(&mut self) {
        let process = self.process.take().unwrap_or_else(|| {
            panic!("only a daemon in its own process can be killed: start it with `Given a running daemon in its own process`")
        });
        process.kill_hard();
    }

    /// Starts the daemon again over the same journal and runtime directory, after
    /// [`kill_hard`](Self::kill_hard).
    pub async fn start_again(&mut self) {
        assert!(!self.is_running(), "the daemon is still running");
        self.boot().await;
    }

    /// Stops the daemon's process with SIGTERM (the clean shutdown of `serve`); returns its
    /// exit status (`None`: it had to be killed). Fails the step for an in-process daemon.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let process = self.process.take().unwrap_or_else(|| {
            panic!("only a daemon in its own process gets signals: start it with `Given a running daemon in its own process`")
        });
        process.terminate().await
    }

    /// The registry the in-process daemon publishes now (node-level facts that no route
    /// shows, such as the last rejected handoff).
    pub fn state(&self) -> Arc<pool_managerd::core::State> {
        let daemon = self.daemon.as_ref().unwrap_or_else(|| {
            panic!("the registry is read from an in-process daemon: start it with `Given a running daemon`")
        });
        daemon.handle().registry().load().state.clone()
    }

    /// What the daemon's process wrote to its standard error (its log), all starts together.
    /// Fails the step for an in-process daemon (its log goes to the test's output).
    pub fn process_log(&self) -> String {
        crate::daemon_process::read_log(&self.setup.config.runtime_dir)
    }

    /// The API's base URL (`http://127.0.0.1:PORT`), for clients of their own (the event
    /// stream).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client of the scenario.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(&self, method: Method, path: &str, body: Body) -> Answer {
        let request_text = format!("{method} {path}");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        match body {
            Body::Empty => {}
            Body::Json(value) => {
                request = request
                    .header("content-type", "application/json")
                    .body(value.to_string());
            }
            Body::Raw(text) => {
                request = request
                    .header("content-type", "application/json")
                    .body(text);
            }
        }
        let started = Instant::now();
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{request_text}: {e}"));
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{request_text}: reading the answer: {e}"));
        let elapsed = started.elapsed();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            request: request_text,
            status,
            body,
            retry_after,
            elapsed,
        }
    }

    /// Removes every pool, shuts the daemon down and kills any engine it spawned that still
    /// runs. Returns what went wrong (an engine that had to be killed, a pool that could not
    /// be removed), for the run's output.
    pub async fn clean_up(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.is_running() {
            self.remove_all_pools(&mut problems).await;
        }
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown("scenario finished").await;
        }
        if let Some(process) = self.process.take() {
            let tail = process.log_tail();
            match process.terminate().await {
                Some(status) if status.success() => {}
                ended => problems.push(format!(
                    "the daemon process did not end cleanly on SIGTERM ({ended:?}):\n{tail}"
                )),
            }
        }
        assert_journal_released(&self.setup.config.journal_dir).await;
        for engine in spawned_engines(&self.setup.config.journal_dir, &mut problems) {
            if engine.signal_group(nix::sys::signal::Signal::SIGKILL) {
                problems.push(format!(
                    "engine pid {} was still running after the daemon shut down with its pools removed: killed",
                    engine.pid
                ));
                let deadline = Instant::now() + KILL_WAIT;
                while engine.is_running() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        problems
    }

    async fn remove_all_pools(&self, problems: &mut Vec<String>) {
        let list = self.call(Method::GET, "/v2/pools", Body::Empty).await;
        let pools: Vec<String> = list
            .body
            .as_array()
            .map(|pools| {
                pools
                    .iter()
                    .filter_map(|p| p["pool_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for pool in pools {
            let deadline = Instant::now() + REMOVE_RETRY;
            loop {
                let answer = self
                    .call(Method::DELETE, &format!("/v2/pools/{pool}"), Body::Empty)
                    .await;
                // 409: a start or a stop is under way; it ends within the scenario's bounds.
                if answer.status == 409 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                if answer.status != 200 && answer.status != 404 {
                    problems.push(format!(
                        "removing pool '{pool}': {} {}",
                        answer.status, answer.body
                    ));
                }
                break;
            }
        }
    }
}

/// Asserts that nothing holds the journal directory's locks (the journal's own `LOCK` and
/// sled's `db`, both `flock`s): `Daemon::shutdown` returns only once the journal is released,
/// so that a daemon can start again at once over the same directory.
///
/// One wait is allowed, bounded: scenarios run in parallel in this one process, and a child
/// that another scenario's daemon forks (to spawn an engine) inherits every descriptor of the
/// process, with their `flock`s, until it execs (milliseconds; more under load). A lock seen
/// for that long is not the daemon's.
async fn assert_journal_released(journal_dir: &Path) {
    for name in JOURNAL_LOCK_FILES {
        let path = journal_dir.join(name);
        let deadline = Instant::now() + FORK_EXEC_WINDOW_MAX;
        while is_locked(&path) {
            assert!(
                Instant::now() < deadline,
                "{} is still locked {FORK_EXEC_WINDOW_MAX:?} after the daemon shut down",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Whether someone holds a `flock` on `path` (a missing file is not locked).
fn is_locked(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a valid fd we own; no memory is passed. Closing the file releases the
    // lock if we got it.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    rc != 0
}

/// Every engine recorded as spawned in the journal at `journal_dir` (read after shut-down).
fn spawned_engines(journal_dir: &Path, problems: &mut Vec<String>) -> Vec<EngineProcess> {
    if !journal_dir.exists() {
        return Vec::new();
    }
    let (journal, _) = match PoolJournal::open(pool_journal::JournalConfig::new(journal_dir)) {
        Ok(opened) => opened,
        Err(e) => {
            problems.push(format!(
                "cannot read the journal to find leftover engines: {e}"
            ));
            return Vec::new();
        }
    };
    let mut engines = Vec::new();
    for envelope in journal.read_from(1) {
        match envelope {
            Ok(envelope) => {
                if let Event::EngineSpawned {
                    pid, start_time, ..
                } = envelope.event
                {
                    engines.push(EngineProcess { pid, start_time });
                }
            }
            Err(e) => {
                problems.push(format!("reading the journal: {e}"));
                break;
            }
        }
    }
    let _ = journal.close();
    engines
}
