//! An engine's start: admission checked again, the leftover of an earlier start killed, the
//! port found free, the spawn (cgroup leaf, pid file, the boot id), the health wait with the
//! port's owner and the placement proven, then the ready probes.
//!
//! Never: reports a start healthy before the socket on its port is proven the engine's
//! session's, nor before its placement is proven where a GPU is required.

use super::probe::Health;
use super::process::ExitInfo;
use super::worker::PoolWorker;
use super::{cgroup, files, own, port, probe, process, procfs, Shared};
use crate::gpu::placement::{self, PlacementCheck};
use nix::sys::signal::Signal;
use pool_core::{Observation, PoolId, PreparedEngine};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long an engine whose port is not its session's may take to be seen exiting: one that
/// closed its socket on the way out is an exit, not an impostor on its port.
const EXIT_SETTLE_MS: u64 = 250;

/// The wait before the first retry of a starting engine's health probe; each next one waits
/// twice as long, up to `[health] preload_interval_ms` ([`next_retry_ms`]).
pub(super) const HEALTH_RAMP_FIRST_MS: u64 = 2;

/// The wait after a failed health probe of a starting engine that waited `last_ms` before it:
/// twice that, at most `interval_ms` (the first retry waits [`HEALTH_RAMP_FIRST_MS`], or
/// `interval_ms` if less). An engine that listens a few ms after its spawn is found then, not
/// a whole interval later; one that loads for minutes is probed every interval after a few
/// retries.
pub(super) fn next_retry_ms(last_ms: Option<u64>, interval_ms: u64) -> u64 {
    let interval_ms = interval_ms.max(1);
    last_ms
        .map_or(HEALTH_RAMP_FIRST_MS, |last| last.saturating_mul(2))
        .clamp(1, interval_ms)
}

use super::exit::{Coordination, Engine, LogFrom};
use super::worker::write_blocking;

impl PoolWorker {
    pub(super) async fn spawn(
        &mut self,
        cause: u64,
        engine: &PreparedEngine,
        attempt: u32,
        token: u64,
    ) {
        self.health = None;
        self.probe = None;
        if !self.clear_to_spawn(cause, engine, token).await {
            return; // reported
        }
        let pool = self.pool_id.as_str();
        let log_path = self.dirs().log_path(pool);
        let leaf = match self.pre_spawn(engine, &log_path) {
            Ok(leaf) => leaf,
            Err(reason) => return self.spawn_failed(cause, token, reason).await,
        };
        // The log watcher starts where this start's header will be written.
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let pid_path = self.dirs().pid_path(pool);
        let env = self.env_of(engine);
        let now_ms = self.shared.now_ms();
        let join = leaf
            .as_ref()
            .map(|(leaf, required)| (leaf.procs_fd(), *required));
        let run_as = self.shared.settings.run_as;
        let spawned = match process::spawn(engine, &env, &log_path, (attempt, now_ms), run_as, join)
        {
            Ok(spawned) => spawned,
            Err(e) => {
                let reason = format!("cannot start engine '{}': {e}", engine.binary_path);
                return self.spawn_failed(cause, token, reason).await;
            }
        };
        let pid = spawned.pid;
        if let Some((leaf, _)) = &leaf {
            self.check_joined(leaf, pid);
        }
        // Read at once: an engine that dies at once is reaped by its watcher, and its `/proc`
        // entry goes with it.
        let start_time = spawned.start_time;
        // The watchers report nothing about this engine before its `EngineSpawned` is sent
        // (the core would take an exit it has not heard of for a stale one and drop it).
        let (announced, gate) = watch::channel(false);
        let spill_token = self.shared.settings.placement.is_some().then_some(token);
        let at = LogFrom {
            path: log_path.clone(),
            offset: log_offset,
            spill_token,
        };
        let engine_watch = self.watch_child(cause, spawned, at, gate, now_ms);
        if let Err(reason) = self.keep_pid_file(engine_watch, &pid_path).await {
            // Killed, but not recorded: the next start looks for a leftover again.
            self.leftover_possible = true;
            return self.spawn_failed(cause, token, reason).await;
        }
        tracing::info!(pool_id = %self.pool_id, pid, attempt, binary = %engine.binary_path, "engine spawned");
        self.shared
            .report(
                cause,
                Observation::EngineSpawned {
                    pool_id: self.pool_id.clone(),
                    token,
                    pid,
                    start_time,
                    log_path: log_path.display().to_string(),
                    pid_path: pid_path.display().to_string(),
                    boot_id: procfs::boot_id(),
                },
            )
            .await;
        let _ = announced.send(true);
    }

    /// What must hold before a spawn: no leftover of an earlier life runs, the last engine's
    /// GPU memory is back, nothing listens on the port. `false`: the start failed (reported).
    async fn clear_to_spawn(&mut self, cause: u64, engine: &PreparedEngine, token: u64) -> bool {
        if self.leftover_possible {
            self.kill_leftover(engine).await;
            self.leftover_possible = false;
        }
        if !self.await_gpu_release(cause, engine, token).await {
            return false; // reported: the last engine's GPU memory is still held
        }
        if let Err(detail) = port::check_free(engine.port) {
            self.port_in_use(cause, token, None, detail).await;
            return false;
        }
        true
    }

    /// The engine's environment: its own `env`, and the variables of the daemon's that are
    /// passed to engines.
    fn env_of(&self, engine: &PreparedEngine) -> Vec<(String, String)> {
        process::engine_env(engine, |name| {
            self.shared
                .settings
                .passed_env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    /// Writes the pid file of the engine just spawned and keeps watching it. Without a pid
    /// file the engine could not be found by operators' tools: it is killed (its exit then
    /// reported by the start's failure) and `Err` says why.
    async fn keep_pid_file(
        &mut self,
        engine: Engine,
        pid_path: &std::path::Path,
    ) -> Result<(), String> {
        let pid = engine.pid;
        let written = write_blocking(pid_path, move |path| files::write_pid_file(path, pid)).await;
        let result = written.map_err(|e| {
            engine.watch.note_kill();
            engine.watch.begin_stop();
            let _ = process::signal_group(pid, Signal::SIGKILL);
            format!("cannot write the pid file: {e}")
        });
        self.engine = Some(engine);
        result
    }

    /// What must hold before a spawn: the engine admitted (again: the allow-lists may have
    /// changed since its preload), its log prepared, its cgroup leaf ready. `Err`: the reason.
    pub(super) fn pre_spawn(
        &self,
        engine: &PreparedEngine,
        log_path: &std::path::Path,
    ) -> Result<Option<(cgroup::Leaf, bool)>, String> {
        self.shared
            .settings
            .admission
            .check(engine)
            .map_err(|refused| format!("{}: {}", refused.code, refused.message))?;
        self.dirs()
            .prepare_log(log_path)
            .map_err(|e| format!("cannot prepare the engine log: {e}"))?;
        self.leaf(engine)
    }

    /// Logs when a spawned engine is not in its cgroup leaf (it then runs without limits).
    pub(super) fn check_joined(&self, leaf: &cgroup::Leaf, pid: u32) {
        if !leaf.holds(pid) && !process::is_gone(pid) {
            tracing::warn!(pool_id = %self.pool_id, pid, cgroup = %leaf.dir.display(), "the engine did not join its cgroup; it runs without its memory.max and pids.max");
        }
    }

    /// Logs and reports a start that failed on its port (`pid`: the engine, once spawned).
    pub(super) async fn port_in_use(
        &self,
        cause: u64,
        token: u64,
        pid: Option<u32>,
        detail: String,
    ) {
        tracing::warn!(pool_id = %self.pool_id, ?pid, "engine start fails (PORT_IN_USE): {detail}");
        let observation = Observation::PortInUse {
            pool_id: self.pool_id.clone(),
            token,
            pid,
            detail,
        };
        self.shared.report(cause, observation).await;
    }

    /// Logs and reports a start that did not happen.
    pub(super) async fn spawn_failed(&self, cause: u64, token: u64, reason: String) {
        tracing::warn!(pool_id = %self.pool_id, "engine not started: {reason}");
        let observation = Observation::SpawnFailed {
            pool_id: self.pool_id.clone(),
            token,
            reason,
        };
        self.shared.report(cause, observation).await;
    }

    /// The engine's cgroup leaf, prepared (with whether joining it is required). `Ok(None)`
    /// without cgroups, or when one cannot be prepared and it is not required (logged);
    /// `Err` (the reason) when it is required.
    pub(super) fn leaf(
        &self,
        engine: &PreparedEngine,
    ) -> Result<Option<(cgroup::Leaf, bool)>, String> {
        let Some(cgroups) = &self.shared.settings.cgroups else {
            return Ok(None);
        };
        match cgroups.prepare(self.pool_id.as_str(), engine.ram_required_bytes) {
            Ok(leaf) => Ok(Some((leaf, cgroups.required))),
            Err(e) if cgroups.required => Err(format!(
                "cannot prepare the engine's cgroup (engines.cgroup = \"required\"): {e}"
            )),
            Err(e) => {
                tracing::warn!(pool_id = %self.pool_id, "the engine starts without a cgroup of its own: {e}");
                Ok(None)
            }
        }
    }

    pub(super) fn start_health_wait(
        &mut self,
        cause: u64,
        pid: u32,
        token: u64,
        deadline_at_ms: u64,
    ) {
        let (exited, spawned_at_ms, watch) = match &self.engine {
            Some(engine) if engine.pid == pid => (
                engine.exited.clone(),
                engine.spawned_at_ms,
                engine.watch.clone(),
            ),
            _ => {
                // Not ours to watch (after a restart the adoption's watcher covers it).
                let (_tx, rx) = watch::channel(None);
                (rx, self.shared.now_ms(), Arc::new(Coordination::default()))
            }
        };
        let wait = HealthWait {
            shared: self.shared.clone(),
            pool_id: self.pool_id.clone(),
            cause,
            pid,
            token,
            deadline_at_ms,
            spawned_at_ms,
            exited,
            watch,
        };
        self.probe = None;
        self.health = Some(own(wait.run()));
    }

    pub(super) fn start_probing(&mut self, cause: u64, pid: Option<u32>) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        self.health = None;
        let progress = super::progress::watch(shared.clone(), pool_id.clone(), cause, pid);
        let health = async move {
            let interval_ms = shared.settings.policy.health.ready_interval_ms.max(1);
            let interval = Duration::from_millis(interval_ms);
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let published = shared.registry.load();
                let Some(pool) = published.state.pool(pool_id.as_str()) else {
                    return;
                };
                let current = pool.pid();
                if !pool.serving() || (pid.is_some() && current != pid) {
                    return;
                }
                // Our engine's health route, or a handed-off engine's `/health`.
                let url = match (&pool.engine, &pool.handoff) {
                    (Some(engine), _) => format!("{}{}", engine.url(), engine.health_path),
                    (None, Some(handoff)) => {
                        format!("{}/health", handoff.url.trim_end_matches('/'))
                    }
                    (None, None) => return,
                };
                // A handoff without a pid is probed as pid 0 (the core matches it so).
                let current = current.or(pid).unwrap_or(0);
                drop(published);
                // A probe never outlasts the interval: a hung engine is found in
                // `failures_to_crash` intervals.
                let health = shared.prober.health_url(&url, interval_ms).await;
                let observation = if health == Health::Healthy {
                    shared.registry.heartbeat(pool_id.as_str(), shared.now_ms());
                    Observation::ProbeSucceeded {
                        pool_id: pool_id.clone(),
                        pid: current,
                    }
                } else {
                    Observation::ProbeFailed {
                        pool_id: pool_id.clone(),
                        pid: current,
                        error: health.describe(),
                    }
                };
                shared.report(cause, observation).await;
            }
        };
        // The health probes and, beside them, the progress probes (`progress.rs`).
        self.probe = Some(own(async move {
            tokio::join!(health, progress);
        }));
    }
}

/// The wait for a starting engine to answer healthy (and, where a GPU is required, to be
/// seen on its GPUs) before its deadline; it reports one of `HealthPassed`,
/// `EngineNotOnGpu` or `PreloadTimedOut`, or nothing when the engine exits meanwhile (its
/// exit watcher reports) or the log watcher reports a spillover.
struct HealthWait {
    shared: Arc<Shared>,
    pool_id: PoolId,
    cause: u64,
    pid: u32,
    token: u64,
    deadline_at_ms: u64,
    spawned_at_ms: u64,
    exited: watch::Receiver<Option<ExitInfo>>,
    watch: Arc<Coordination>,
}

impl HealthWait {
    async fn run(mut self) {
        let Some(engine) = self.shared.engine_of(&self.pool_id) else {
            return;
        };
        let interval_ms = self.shared.settings.policy.health.preload_interval_ms;
        let mut retry_ms = None;
        let mut last_probe = String::new();
        loop {
            if self.exited.borrow().is_some() {
                return; // the exit watcher reports
            }
            if self.shared.now_ms() >= self.deadline_at_ms {
                break;
            }
            let health = self
                .shared
                .prober
                .health(&engine, probe::PROBE_TIMEOUT_MS)
                .await;
            if health == Health::Healthy {
                return self.healthy(&engine).await;
            }
            last_probe = health.describe();
            let wait_ms = next_retry_ms(retry_ms, interval_ms);
            retry_ms = Some(wait_ms);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                () = self.shared.settings.clock.sleep_until(self.deadline_at_ms) => break,
                _ = self.exited.changed() => return,
            }
        }
        if self.exited.borrow().is_some() {
            return;
        }
        let observation = Observation::PreloadTimedOut {
            pool_id: self.pool_id,
            pid: self.pid,
            last_probe,
        };
        self.shared.report(self.cause, observation).await;
    }

    /// Whether the engine is ending, after its port was found not to be its session's: an
    /// engine that exits right after answering closes its socket before its exit is reaped,
    /// so the exit (awaited up to [`EXIT_SETTLE_MS`]) is the failure, not the port.
    async fn ends_meanwhile(&mut self, pid: u32) -> bool {
        let ended = |exited: &watch::Receiver<Option<ExitInfo>>| {
            exited.borrow().is_some() || procfs::stat(pid).is_none_or(|stat| stat.ended())
        };
        if ended(&self.exited) || self.watch.spilled() {
            return true;
        }
        let settle = tokio::time::sleep(Duration::from_millis(EXIT_SETTLE_MS));
        tokio::select! {
            () = settle => {}
            _ = self.exited.changed() => {}
        }
        ended(&self.exited) || self.watch.spilled()
    }

    /// The engine answered healthy: the socket on its port must be its session's (else
    /// someone else answered: `PortInUse`); with a GPU required, its placement is proven.
    async fn healthy(mut self, engine: &PreparedEngine) {
        let after_ms = self.shared.now_ms().saturating_sub(self.spawned_at_ms);
        let (pool_id, pid) = (self.pool_id.clone(), self.pid);
        if let Err(detail) = port::check_owned(engine.port, pid) {
            if self.ends_meanwhile(pid).await {
                return; // the exit or log watcher reports
            }
            tracing::warn!(pool_id = %pool_id, pid, "engine start fails (PORT_IN_USE): {detail}");
            let (pid, token) = (Some(pid), self.token);
            let observation = Observation::PortInUse {
                pool_id,
                token,
                pid,
                detail,
            };
            return self.shared.report(self.cause, observation).await;
        }
        if let Some(check) = &self.shared.settings.placement {
            let mask = engine.device_mask.as_deref();
            match prove_placement(check, pid, mask, &mut self.exited).await {
                Proof::Placed(device) => {
                    tracing::info!(pool_id = %pool_id, pid, %device, "engine seen on its GPU");
                }
                Proof::Exited => return, // the exit watcher reports
                Proof::NotSeen(seen) => {
                    let detail = not_on_gpu(check, pid, mask, &seen);
                    tracing::warn!(pool_id = %pool_id, pid, "{detail}");
                    let token = self.token;
                    let observation = Observation::EngineNotOnGpu {
                        pool_id,
                        token,
                        pid,
                        detail,
                    };
                    return self.shared.report(self.cause, observation).await;
                }
            }
            if self.watch.spilled() {
                return; // its log said "no usable GPU": the log watcher reports
            }
        }
        let observation = health_passed(&self.shared, engine, pool_id, pid, after_ms).await;
        self.shared.report(self.cause, observation).await;
    }
}

/// How a placement proof ended.
pub(super) enum Proof {
    /// Listed on this device (of its mask).
    Placed(String),
    /// Not listed within the wait: what the last reading showed instead.
    NotSeen(String),
    /// The engine exited meanwhile (its exit watcher reports).
    Exited,
}

/// Reads the inventory (on a blocking thread) at once and every `check.poll_ms` until the
/// engine `pid` or a process of its session is listed on a device of `mask`, it exits, or
/// `check.timeout_ms` has passed.
pub(super) async fn prove_placement(
    check: &PlacementCheck,
    pid: u32,
    mask: Option<&str>,
    exited: &mut watch::Receiver<Option<ExitInfo>>,
) -> Proof {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(check.timeout_ms);
    let poll = Duration::from_millis(check.poll_ms.max(1));
    loop {
        let inventory = check.inventory.clone();
        let owned_mask = mask.map(str::to_string);
        let verdict =
            tokio::task::spawn_blocking(move || match inventory.observe_for_placement() {
                Ok(snapshot) => {
                    placement::placement(&snapshot, pid, owned_mask.as_deref(), process::session_id)
                }
                Err(no_gpu) => Err(format!("no usable GPU ({})", no_gpu.reason)),
            })
            .await
            .unwrap_or_else(|e| Err(format!("no reading (the GPU reading failed: {e})")));
        let seen = match verdict {
            Ok(device) => return Proof::Placed(device),
            Err(seen) => seen,
        };
        if exited.borrow().is_some() {
            return Proof::Exited;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Proof::NotSeen(seen);
        }
        tokio::select! {
            () = tokio::time::sleep_until((now + poll).min(deadline)) => {}
            // A closed channel (an engine not watched here) only disables this branch.
            Ok(()) = exited.changed() => {}
        }
    }
}

/// A healthy engine's `HealthPassed`: its slots (as prepared, else `/props`, else
/// `--parallel`) and version, with a first heartbeat.
pub(super) async fn health_passed(
    shared: &Shared,
    engine: &PreparedEngine,
    pool_id: PoolId,
    pid: u32,
    after_ms: u64,
) -> Observation {
    let props = if engine.slots_total.is_some() {
        probe::Props::default()
    } else {
        shared.prober.props(engine).await
    };
    let slots_total = engine
        .slots_total
        .or(props.total_slots)
        .or_else(|| probe::parallel_flag(&engine.flags));
    shared.registry.heartbeat(pool_id.as_str(), shared.now_ms());
    // Read now, once it serves: a launcher has `exec`ed the engine by then.
    let exe = process::exe(pid).map(|exe| {
        let exe = exe.display().to_string();
        exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string()
    });
    Observation::HealthPassed {
        pool_id,
        pid,
        after_ms,
        engine_version: props.build_info,
        slots_total,
        exe,
    }
}

/// Reports that an engine's log says it found no usable GPU and would serve on the CPU
/// (`EngineNotOnGpu`), naming its mask and what to check.
pub(super) async fn report_spillover(
    shared: &Shared,
    cause: u64,
    pool_id: &PoolId,
    (pid, token): (u32, u64),
    line: &str,
) {
    let mask = shared.engine_of(pool_id).and_then(|e| e.device_mask);
    tracing::warn!(pool_id = %pool_id, pid, %line, "the engine found no usable GPU");
    let detail = format!(
        "engine pid {pid} with {} logged {:?} while starting: it found no usable GPU and would \
         serve on the CPU; check the device mask, CUDA_VISIBLE_DEVICES (set from the mask: \
         {:?}) and that the engine is a CUDA build, not a CPU-only one",
        placement::describe_mask(mask.as_deref()),
        line.trim(),
        mask.as_deref()
            .map(process::cuda_visible_devices)
            .unwrap_or_default(),
    );
    let observation = Observation::EngineNotOnGpu {
        pool_id: pool_id.clone(),
        token,
        pid,
        detail,
    };
    shared.report(cause, observation).await;
}

/// The `last_error` of an engine NVML never listed on its GPUs: which pid, which mask, what
/// NVML showed, and what to check.
pub(super) fn not_on_gpu(
    check: &PlacementCheck,
    pid: u32,
    mask: Option<&str>,
    seen: &str,
) -> String {
    use crate::gpu::GpuInventory as _;
    format!(
        "engine pid {pid} with {} answered healthy, but NVML ({}) did not list it or a process \
         of its session on a GPU of its mask within {} ms; NVML showed {seen}. It is probably \
         serving on the CPU: check the device mask, CUDA_VISIBLE_DEVICES (set from the mask: \
         {:?}) and that the engine is a CUDA build, not a CPU-only one",
        placement::describe_mask(mask),
        check.inventory.source(),
        check.timeout_ms,
        mask.map(process::cuda_visible_devices).unwrap_or_default(),
    )
}
