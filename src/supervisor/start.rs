//! An engine's start: admission checked again, the leftover of an earlier start killed, the
//! last engine's GPU memory awaited (not for a surge's new engine: the old one still serves),
//! the port found free, the spawn in the worker's lane (its cgroup leaf, pid file and log, the
//! boot id), then (`health.rs`) the health wait and the ready probes.
//!
//! Never: spawns without the checks before it, or into another lane's files.

use super::probe::Health;
use super::worker::PoolWorker;
use super::{cgroup, files, own, port, process, procfs};
use nix::sys::signal::Signal;
use pool_core::{Observation, PreparedEngine};
use std::time::Duration;
use tokio::sync::watch;

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

use super::exit::{Engine, LogFrom};
use super::worker::write_blocking;

impl PoolWorker {
    /// Spawns `engine` (start `attempt`, `token`) in this worker's lane; `surge`: a surge's
    /// new engine beside the pool's running one.
    pub(super) async fn spawn(
        &mut self,
        cause: u64,
        engine: &PreparedEngine,
        (attempt, token): (u32, u64),
        surge: bool,
    ) {
        self.health = None;
        self.probe = None;
        if !self.clear_to_spawn(cause, engine, token, surge).await {
            return; // reported
        }
        let log_path = self.log_path();
        let leaf = match self.pre_spawn(engine, &log_path) {
            Ok(leaf) => leaf,
            Err(reason) => return self.spawn_failed(cause, token, reason).await,
        };
        self.rotate_log(&log_path).await;
        // The log watcher starts where this start's header will be written.
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let pid_path = self.pid_path();
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
        tracing::info!(pool_id = %self.pool_id, lane = ?self.lane, pid, attempt, surge, binary = %engine.binary_path, "engine spawned");
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
    /// GPU memory is back (not awaited for a `surge`'s new engine: the old engine still serves
    /// and holds its memory by right), nothing listens on the port. `false`: the start failed
    /// (reported).
    async fn clear_to_spawn(
        &mut self,
        cause: u64,
        engine: &PreparedEngine,
        token: u64,
        surge: bool,
    ) -> bool {
        if self.leftover_possible {
            self.kill_leftover(engine).await;
            self.leftover_possible = false;
        }
        if !surge && !self.await_gpu_release(cause, engine, token).await {
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

    /// Rotates the engine log before a start's header when it is over `[logs] max_bytes`
    /// (`logrotate.rs`); a failure is logged and the start goes on (its log only grows).
    async fn rotate_log(&self, log_path: &std::path::Path) {
        let (path, limits, now_ms) = (
            log_path.to_path_buf(),
            self.shared.settings.logs,
            self.shared.now_ms(),
        );
        let rotated = tokio::task::spawn_blocking(move || {
            super::logrotate::rotate_if_over(&path, limits, now_ms)
        })
        .await;
        match rotated {
            Ok(Ok(true)) => {
                tracing::info!(pool_id = %self.pool_id, path = %log_path.display(), "engine log rotated before a start");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(pool_id = %self.pool_id, "{e}"),
            Err(e) => tracing::warn!(pool_id = %self.pool_id, "log rotation failed: {e}"),
        }
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
        match cgroups.prepare(self.pool_id.as_str(), self.lane, engine.ram_required_bytes) {
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

    pub(super) fn start_probing(&mut self, cause: u64, pid: Option<u32>) {
        let shared = self.shared.clone();
        let (pool_id, lane) = (self.pool_id.clone(), self.lane);
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
                // Ends once the pool's engine is another (a restart, or a surge's switch:
                // the new engine's lane probes it then).
                if !pool.serving() || pool.lane != lane || (pid.is_some() && current != pid) {
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
