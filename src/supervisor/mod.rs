//! The supervisor: runs the core's [`Effect`]s against the world and reports what happened as
//! [`Observation`]s to the node actor.
//!
//! Each pool has one worker task that takes its effects in order (the core's contract: a
//! `StopEngine` is finished, process reaped, before the next effect of that pool starts, so a
//! restart never races the old engine for its port). Long waits (health wait, ready probes,
//! timers, process exits, staging) run as tasks owned by the worker, replaced or aborted when a
//! newer effect supersedes them. The exit of a child is seen at once (tokio reaps on SIGCHLD;
//! engines we did not spawn are watched through a pidfd), never by polling.
//!
//! Owns: engine processes and their files, probe tasks, timers, heartbeats.
//! Never: changes the state or the journal; it only reports, and the core ignores stale
//! reports (each carries the pid or token it was given). Never kills an engine on drop or on
//! daemon exit: engines outlive the daemon.
//!
//! Readiness where a GPU is required (`require_gpu`, [`SupervisorSettings::placement`]): a
//! healthy answer is reported (`HealthPassed`) only once NVML lists the engine (its pid or a
//! process of its session) on a GPU or MIG device of its mask, polled on a blocking thread
//! every `PLACEMENT_POLL_MS` up to `[gpu] placement_timeout_ms`; otherwise, and at once when
//! the engine's log says it found no usable GPU, the start is reported as
//! `EngineNotOnGpu` (the core fails it with `CPU_SPILLOVER` and kills the engine): no engine
//! is ever ready on the CPU when a GPU is required (OC-POOL-3012).
//!
//! Submodules: [`process`] (spawn, signals, `/proc`, pidfd, exit classification), [`probe`]
//! (HTTP health and `/props`), [`files`] (runtime directory, pid and handoff files, staging),
//! [`logwatch`] (GPU fault and no-GPU lines of the engine log), [`handoff`] (engines started
//! by someone else), [`admission`] (what may be started, checked before every spawn).

pub mod admission;
pub mod cgroup;
pub mod files;
pub mod handoff;
pub mod logwatch;
pub mod probe;
pub mod process;
pub mod proof;
pub mod reconcile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use pool_core::{
    Effect, ExitReason, Observation, Policy, PoolId, PreparedEngine, StopReason, Timer,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::gpu::placement::{self, PlacementCheck};
use crate::port::{Registry, Reporter};
use files::RuntimeDirs;
use probe::{Health, Prober};
use process::ExitInfo;

/// After SIGKILL, how long a stop waits for the process to be gone before it reports anyway.
pub const KILL_WAIT_MS: u64 = 5_000;

/// What the supervisor needs from the daemon.
#[derive(Clone)]
pub struct SupervisorSettings {
    /// The runtime directory.
    pub dirs: RuntimeDirs,
    /// Intervals, timeouts, grace.
    pub policy: Policy,
    /// The clock of decisions and deadlines.
    pub clock: SharedClock,
    /// `PATH`, `HOME`, `LANG` of the daemon, passed to engines.
    pub passed_env: Vec<(String, String)>,
    /// The user engines run as (a root daemon with `engine_user`), with no new privileges.
    pub run_as: Option<process::RunAs>,
    /// With `require_gpu`: prove that a starting engine is on the GPUs of its mask before it
    /// is reported healthy, and watch its log for "no usable GPU" lines (`CPU_SPILLOVER`).
    /// `None` (the default, and a `--dev` node): readiness is the health check alone.
    pub placement: Option<PlacementCheck>,
    /// What may be started, checked again before every spawn (default: any binary, the
    /// default environment allow-list).
    pub admission: Arc<admission::Admission>,
    /// A cgroup v2 leaf per engine (`engines.cgroup`), where one could be set up.
    pub cgroups: Option<Arc<cgroup::EngineCgroups>>,
}

impl SupervisorSettings {
    /// Settings that pass `PATH`, `HOME` and `LANG` from this process's environment.
    pub fn new(dirs: RuntimeDirs, policy: Policy, clock: SharedClock) -> SupervisorSettings {
        let passed_env = process::PASSED_ENV
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
            .collect();
        SupervisorSettings {
            dirs,
            policy,
            clock,
            passed_env,
            run_as: None,
            placement: None,
            admission: Arc::new(admission::Admission::permissive()),
            cgroups: None,
        }
    }

    /// Engines run as `run_as`: their `HOME` becomes that user's home (from its passwd
    /// entry), never the daemon's, whose files an engine must not reach.
    pub fn run_engines_as(&mut self, run_as: Option<process::RunAs>) {
        self.run_as = run_as;
        if let Some(run_as) = run_as {
            let home = process::home_of(run_as.uid);
            self.passed_env.retain(|(name, _)| name != "HOME");
            self.passed_env.push(("HOME".to_string(), home));
        }
    }
}

struct Shared {
    settings: SupervisorSettings,
    prober: Prober,
    reporter: Reporter,
    registry: Registry,
}

impl Shared {
    async fn report(&self, cause: u64, observation: Observation) {
        self.reporter.report(cause, observation).await;
    }

    fn now_ms(&self) -> u64 {
        self.settings.clock.now_ms()
    }

    /// The prepared engine the registry holds for `pool_id`.
    fn engine_of(&self, pool_id: &PoolId) -> Option<PreparedEngine> {
        self.registry
            .load()
            .state
            .pool(pool_id.as_str())?
            .engine
            .clone()
    }
}

/// Called once an effect has been carried out (the removal of a pool's files, for the
/// `DELETE` that waits on it).
pub type Done = Box<dyn FnOnce() + Send>;

struct Job {
    cause: u64,
    effect: Effect,
    done: Vec<Done>,
}

/// Runs effects. Cheap to share behind an `Arc`.
pub struct Supervisor {
    shared: Arc<Shared>,
    workers: Workers,
    /// Numbers the workers, so that an ending one removes its own entry only.
    next_worker: std::sync::atomic::AtomicU64,
}

/// The per-pool workers: each pool's queue and its worker's number.
type Workers = Arc<Mutex<HashMap<PoolId, (u64, mpsc::UnboundedSender<Job>)>>>;

/// Locks the workers' map. A panic while it was held (a bug) leaves the map itself whole
/// (inserts and removals only), so the lock is taken back and the effect still runs.
fn lock_workers(
    workers: &Workers,
) -> std::sync::MutexGuard<'_, HashMap<PoolId, (u64, mpsc::UnboundedSender<Job>)>> {
    workers.lock().unwrap_or_else(|poisoned| {
        tracing::error!("the supervisor's worker map was poisoned by a panic; going on with it");
        poisoned.into_inner()
    })
}

impl Supervisor {
    /// A supervisor reporting to `reporter` and reading `registry`.
    pub fn new(settings: SupervisorSettings, reporter: Reporter, registry: Registry) -> Supervisor {
        Supervisor {
            shared: Arc::new(Shared {
                settings,
                prober: Prober::new(),
                reporter,
                registry,
            }),
            workers: Arc::new(Mutex::new(HashMap::new())),
            next_worker: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Queues `effect` (asked for by the event `cause`) on its pool's worker. Never blocks: the
    /// actor must never wait on the shell, which may itself be waiting to report to the actor.
    /// The queue is unbounded by type but bounded in practice by the actor's bounded inbox
    /// (each input yields a handful of effects).
    pub fn dispatch(&self, cause: u64, effect: Effect) {
        self.dispatch_then(cause, effect, Vec::new());
    }

    /// [`dispatch`](Self::dispatch), calling each of `done` once the effect is carried out.
    pub fn dispatch_then(&self, cause: u64, effect: Effect, done: Vec<Done>) {
        let pool_id = effect.pool_id().clone();
        let mut workers = lock_workers(&self.workers);
        let job = Job {
            cause,
            effect,
            done,
        };
        let job = match workers.get(&pool_id) {
            Some((_, tx)) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let number = self
            .next_worker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A fresh channel's receiver is alive: this send cannot fail.
        let sent = tx.send(job);
        debug_assert!(sent.is_ok(), "a new worker's queue refused its first job");
        workers.insert(pool_id.clone(), (number, tx));
        let worker = PoolWorker::new(self.shared.clone(), pool_id);
        tokio::spawn(worker.run(rx, (self.workers.clone(), number)));
    }

    /// How many pools have a worker now (a removed pool's worker ends with it).
    pub fn workers(&self) -> usize {
        lock_workers(&self.workers).len()
    }
}

/// A task aborted when its handle is dropped or replaced.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn own(future: impl std::future::Future<Output = ()> + Send + 'static) -> Owned {
    Owned(tokio::spawn(future))
}

/// The engine process a worker watches.
struct Engine {
    pid: u32,
    /// `Some` once it has ended.
    exited: watch::Receiver<Option<ExitInfo>>,
    /// A stop is under way: the exit is reported by the stop, not by the exit watcher.
    stopping: Arc<AtomicBool>,
    /// We sent SIGKILL (so a SIGKILL death is not an OOM kill).
    killed: Arc<AtomicBool>,
    /// When it was spawned (for `after_ms`), by the decision clock.
    spawned_at_ms: u64,
    /// The first "no usable GPU" line its log showed while a GPU is required (the health
    /// wait then leaves the report to the log watcher).
    spilled: Spilled,
    /// Spawned by this daemon in its life (its child): signalled without a proof. An engine
    /// handed off or adopted is signalled only once [`proof::prove`] holds.
    ours: bool,
}

/// The first GPU fault line the log watcher found, shared with the exit watcher.
type Fault = Arc<Mutex<Option<(ExitReason, String)>>>;
/// The first "no usable GPU" line the log watcher found, shared with the health wait.
type Spilled = Arc<Mutex<Option<String>>>;

struct PoolWorker {
    shared: Arc<Shared>,
    pool_id: PoolId,
    engine: Option<Engine>,
    health: Option<Owned>,
    probe: Option<Owned>,
    timers: HashMap<Timer, Owned>,
    staging: Option<Owned>,
    handoff_path: Option<PathBuf>,
}

impl PoolWorker {
    fn new(shared: Arc<Shared>, pool_id: PoolId) -> PoolWorker {
        PoolWorker {
            shared,
            pool_id,
            engine: None,
            health: None,
            probe: None,
            timers: HashMap::new(),
            staging: None,
            handoff_path: None,
        }
    }

    /// Runs the pool's jobs in order. Once the pool's files are removed (its last effect) and
    /// nothing else is queued, the worker leaves the map and ends; a later effect of the same
    /// pool id starts a new one. The map's lock is held while the queue is found empty, so no
    /// job can arrive between that check and the removal.
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Job>,
        (workers, number): (Workers, u64),
    ) {
        while let Some(job) = rx.recv().await {
            let last = matches!(job.effect, Effect::RemovePoolFiles { .. });
            self.run_effect(job.cause, job.effect).await;
            for done in job.done {
                done();
            }
            if last {
                let mut map = lock_workers(&workers);
                if rx.is_empty() && map.get(&self.pool_id).is_some_and(|(n, _)| *n == number) {
                    map.remove(&self.pool_id);
                    return;
                }
            }
        }
    }

    fn dirs(&self) -> &RuntimeDirs {
        &self.shared.settings.dirs
    }

    async fn run_effect(&mut self, cause: u64, effect: Effect) {
        // Remember the pool's handoff file while the pool exists (also one written before a
        // daemon restart), so that its removal can take the file with it.
        if let Some(path) = self
            .shared
            .registry
            .load()
            .state
            .pool(self.pool_id.as_str())
            .and_then(|pool| pool.handoff_path.clone())
        {
            self.handoff_path = Some(PathBuf::from(path));
        }
        tracing::debug!(pool_id = %self.pool_id, ?effect, cause, "effect");
        match effect {
            Effect::Spawn {
                engine,
                attempt,
                token,
                ..
            } => self.spawn(cause, &engine, attempt, token).await,
            Effect::StartHealthWait {
                pid,
                token,
                deadline_at_ms,
                ..
            } => self.start_health_wait(cause, pid, token, deadline_at_ms),
            Effect::StartProbing { pid, .. } => self.start_probing(cause, pid),
            Effect::WatchProcess { pid, .. } => self.watch_foreign(cause, pid),
            Effect::VerifyEngine {
                pid,
                start_time,
                binary_path,
                ..
            } => self.verify(cause, pid, start_time, binary_path).await,
            Effect::StopEngine {
                pid,
                grace_ms,
                reason,
                ..
            } => self.stop(cause, pid, grace_ms, &reason).await,
            Effect::WriteHandoff { pid, handoff, .. } => {
                self.write_handoff(cause, pid, handoff).await
            }
            Effect::RemovePidFile { .. } => {
                let path = self.dirs().pid_path(self.pool_id.as_str());
                if let Err(e) = files::remove_if_exists(&path) {
                    tracing::warn!(pool_id = %self.pool_id, "{e}");
                }
            }
            Effect::RemovePoolFiles { .. } => self.remove_pool_files(),
            Effect::ArmTimer {
                timer,
                token,
                at_ms,
                ..
            } => self.arm_timer(cause, timer, token, at_ms),
            Effect::StageModel {
                model_ref,
                digest,
                token,
                ..
            } => self.stage_model(cause, model_ref, digest, token),
        }
    }

    /// Writes the pool's handoff file (ours: not re-ingested) and reports how it went.
    async fn write_handoff(&mut self, cause: u64, pid: u32, handoff: pool_core::Handoff) {
        let observation = match self.dirs().handoff_path(self.pool_id.as_str(), &handoff.replica_id) {
            None => Observation::HandoffWriteFailed {
                pool_id: self.pool_id.clone(),
                pid,
                reason: format!(
                    "replica_id {:?} cannot be part of a file name (letters, digits, '.', '_', '-')",
                    handoff.replica_id
                ),
            },
            Some(path) => match write_blocking(&path, move |path| {
                files::write_handoff(path, &handoff)
            })
            .await
            {
                Ok(()) => {
                    self.handoff_path = Some(path.clone());
                    Observation::HandoffWritten {
                        pool_id: self.pool_id.clone(),
                        pid,
                        path: path.display().to_string(),
                    }
                }
                Err(e) => Observation::HandoffWriteFailed {
                    pool_id: self.pool_id.clone(),
                    pid,
                    reason: format!("cannot write the handoff file: {e}"),
                },
            },
        };
        self.shared.report(cause, observation).await;
    }

    /// The pool is gone: its probes, timers and staging stop; its pid file, our handoff file
    /// and its cgroup leaf go.
    fn remove_pool_files(&mut self) {
        self.health = None;
        self.probe = None;
        self.timers.clear();
        self.staging = None;
        self.shared.registry.forget_heartbeat(self.pool_id.as_str());
        let pid_path = self.dirs().pid_path(self.pool_id.as_str());
        let mut paths = vec![pid_path];
        // Only a file in our engines folder: a handoff registered through the API
        // records the path "api", which is no file of ours.
        let engines = self.dirs().engines.clone();
        paths.extend(self.handoff_path.take().filter(|p| p.starts_with(&engines)));
        for path in paths {
            if let Err(e) = files::remove_if_exists(&path) {
                tracing::warn!(pool_id = %self.pool_id, "{e}");
            }
        }
        if let Some(cgroups) = &self.shared.settings.cgroups {
            if let Err(e) = cgroups.remove(self.pool_id.as_str()) {
                tracing::warn!(pool_id = %self.pool_id, "the engine's cgroup stays: {e}; remove it once it is empty");
            }
        }
    }

    /// Reports `TimerFired` at `at_ms` (a timer of the same kind armed before is replaced).
    fn arm_timer(&mut self, cause: u64, timer: Timer, token: u64, at_ms: u64) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        let task = own(async move {
            shared.settings.clock.sleep_until(at_ms).await;
            shared
                .report(
                    cause,
                    Observation::TimerFired {
                        pool_id,
                        timer,
                        token,
                    },
                )
                .await;
        });
        self.timers.insert(timer, task);
    }

    /// Stages the model of a reload off the worker and reports the outcome.
    fn stage_model(&mut self, cause: u64, model_ref: String, digest: Option<String>, token: u64) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        self.staging = Some(own(async move {
            let staged = tokio::task::spawn_blocking(move || {
                files::stage_model(&model_ref, digest.as_deref())
            })
            .await
            .unwrap_or_else(|e| Err(format!("staging task failed: {e}")));
            let observation = match staged {
                Ok((path, digest)) => Observation::ModelStaged {
                    pool_id,
                    token,
                    path,
                    digest,
                },
                Err(reason) => Observation::StagingFailed {
                    pool_id,
                    token,
                    reason,
                },
            };
            shared.report(cause, observation).await;
        }));
    }

    async fn spawn(&mut self, cause: u64, engine: &PreparedEngine, attempt: u32, token: u64) {
        self.health = None;
        self.probe = None;
        self.kill_leftover(engine).await;
        let pool = self.pool_id.as_str();
        let log_path = self.dirs().log_path(pool);
        let leaf = match self.pre_spawn(engine, &log_path) {
            Ok(leaf) => leaf,
            Err(reason) => return self.spawn_failed(cause, token, reason).await,
        };
        // The log watcher starts where this start's header will be written.
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let pid_path = self.dirs().pid_path(pool);
        let env = process::engine_env(engine, |name| {
            self.shared
                .settings
                .passed_env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        });
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
        let at = (log_path.clone(), log_offset, spill_token);
        let engine_watch = self.watch_child(cause, spawned, at, gate, now_ms);
        let written = write_blocking(&pid_path, move |path| files::write_pid_file(path, pid)).await;
        if let Err(e) = written {
            // Without a pid file the engine could not be found by operators' tools: give up.
            engine_watch.killed.store(true, Ordering::SeqCst);
            engine_watch.stopping.store(true, Ordering::SeqCst);
            let _ = process::signal_group(pid, Signal::SIGKILL);
            self.engine = Some(engine_watch);
            let reason = format!("cannot write the pid file: {e}");
            return self.spawn_failed(cause, token, reason).await;
        }
        self.engine = Some(engine_watch);
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
                },
            )
            .await;
        let _ = announced.send(true);
    }

    /// What must hold before a spawn: the engine admitted (again: the allow-lists may have
    /// changed since its preload), its log prepared, its cgroup leaf ready. `Err`: the reason.
    fn pre_spawn(
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
    fn check_joined(&self, leaf: &cgroup::Leaf, pid: u32) {
        if !leaf.holds(pid) && !process::is_gone(pid) {
            tracing::warn!(pool_id = %self.pool_id, pid, cgroup = %leaf.dir.display(), "the engine did not join its cgroup; it runs without its memory.max and pids.max");
        }
    }

    /// Logs and reports a start that did not happen.
    async fn spawn_failed(&self, cause: u64, token: u64, reason: String) {
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
    fn leaf(&self, engine: &PreparedEngine) -> Result<Option<(cgroup::Leaf, bool)>, String> {
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

    /// A daemon killed between spawning an engine and journaling `EngineSpawned` leaves an
    /// engine the journal does not know, holding the pool's port. It is found by its pid file
    /// (if the daemon got to write it) or by its exact command line (binary and flags, which
    /// hold its port), leading its own session as our engines do: its group is killed before
    /// another start, so that a pool never has two engines. Anything else is left alone.
    async fn kill_leftover(&self, engine: &PreparedEngine) {
        let pid_path = self.dirs().pid_path(self.pool_id.as_str());
        let argv: Vec<String> = std::iter::once(engine.binary_path.clone())
            .chain(engine.flags.iter().cloned())
            .collect();
        let mut suspects = process::session_leaders_running(&argv);
        if let Ok(pid) = files::read_pid_file(&pid_path) {
            let same_binary = match (
                process::exe(pid),
                process::resolve_binary(&engine.binary_path),
            ) {
                (Some(exe), Some(binary)) => {
                    let exe = exe.display().to_string();
                    exe.strip_suffix(" (deleted)").unwrap_or(&exe) == binary.display().to_string()
                }
                _ => false,
            };
            if same_binary && process::session_id(pid) == Some(pid) && !process::is_gone(pid) {
                suspects.push(pid);
            }
        }
        suspects.sort_unstable();
        suspects.dedup();
        let tracked = self
            .engine
            .as_ref()
            .filter(|e| e.exited.borrow().is_none())
            .map(|e| e.pid);
        for pid in suspects.into_iter().filter(|pid| Some(*pid) != tracked) {
            tracing::warn!(
                pool_id = %self.pool_id,
                pid,
                "an engine the journal never recorded (started just before the daemon died) still runs; killing it before the new start"
            );
            let _ = process::signal_group(pid, Signal::SIGKILL);
            let gone = tokio::time::timeout(
                Duration::from_millis(KILL_WAIT_MS),
                process::wait_foreign(pid),
            )
            .await;
            if gone.is_err() {
                tracing::error!(pool_id = %self.pool_id, pid, "the leftover engine is still present {KILL_WAIT_MS} ms after SIGKILL");
            }
        }
    }

    /// Starts the exit watcher of a child we spawned: it owns the child and reaps it.
    fn watch_child(
        &self,
        cause: u64,
        spawned: process::Spawned,
        at: (PathBuf, u64, Option<u64>),
        gate: watch::Receiver<bool>,
        spawned_at_ms: u64,
    ) -> Engine {
        let mut child = spawned.child;
        // The memory cgroup's OOM-kill count before, to tell a host OOM kill at exit.
        let oom = process::oom_kill_counter(spawned.pid);
        let mut engine = self.watch_exit(cause, spawned.pid, at, gate, spawned_at_ms, async move {
            let mut info = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    ExitInfo {
                        code: status.code(),
                        signal: status.signal(),
                        oom_killed: false,
                    }
                }
                Err(_) => ExitInfo::default(),
            };
            if let (Some((file, before)), Some(9)) = (oom, info.signal) {
                info.oom_killed = process::read_oom_kills(&file).is_some_and(|now| now > before);
            }
            info
        });
        engine.ours = true;
        engine
    }

    /// Watches an engine we did not spawn in this daemon's life (adopted or handed off)
    /// through a pidfd; its exit status is not ours to read.
    fn watch_foreign(&mut self, cause: u64, pid: u32) {
        if self.engine.as_ref().is_some_and(|e| e.pid == pid) {
            return;
        }
        let log_path = self.dirs().log_path(self.pool_id.as_str());
        // Only what it writes from now on: its earlier lines were read by the daemon before.
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        // An adopted engine may still be starting: its start's token, for "no usable GPU".
        let spill_token = self.shared.settings.placement.as_ref().and_then(|_| {
            let published = self.shared.registry.load();
            published
                .state
                .pool(self.pool_id.as_str())
                .map(|pool| pool.start_token)
        });
        let at = (log_path, log_offset, spill_token);
        // Already known to the core (adopted or handed off): nothing to wait for.
        let (_, gate) = watch::channel(true);
        let engine = self.watch_exit(cause, pid, at, gate, self.shared.now_ms(), async move {
            process::wait_foreign(pid).await;
            ExitInfo::default()
        });
        self.engine = Some(engine);
    }

    /// Runs `exit` in a detached task (it must see the end even if the worker goes away) that
    /// publishes the exit to the returned [`Engine`] and reports it, unless a stop is under
    /// way (the stop reports it then). A second task follows the engine's log from the given
    /// offset and reports the first GPU fault line while the engine runs; with a start token
    /// (a GPU is required), also the first "no usable GPU" line, as `EngineNotOnGpu`.
    fn watch_exit(
        &self,
        cause: u64,
        pid: u32,
        (log_path, log_offset, spill_token): (PathBuf, u64, Option<u64>),
        gate: watch::Receiver<bool>,
        spawned_at_ms: u64,
        exit: impl std::future::Future<Output = ExitInfo> + Send + 'static,
    ) -> Engine {
        let (tx, rx) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let fault: Fault = Arc::new(Mutex::new(None));
        let spilled: Spilled = Arc::new(Mutex::new(None));
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        let (stop_flag, kill_flag) = (stopping.clone(), killed.clone());
        let (found, path) = (fault.clone(), log_path.clone());
        let mut exit_gate = gate.clone();
        tokio::spawn(async move {
            let info = exit.await;
            let _ = tx.send(Some(info));
            // An error means the start was given up (its sender dropped): the stop flag says.
            let _ = exit_gate.wait_for(|announced| *announced).await;
            if stop_flag.load(Ordering::SeqCst) {
                return;
            }
            let we_sent_kill = kill_flag.load(Ordering::SeqCst);
            let fault = found.lock().ok().and_then(|f| f.clone());
            let at = (log_path.as_path(), log_offset, fault);
            report_exit(&shared, cause, pool_id, pid, info, at, we_sent_kill).await;
        });
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        let stop_flag = stopping.clone();
        let exited = rx.clone();
        let spill_slot = spilled.clone();
        tokio::spawn(async move {
            let mut follower = logwatch::LogFollower::new(path, log_offset, spill_token.is_some());
            let mut following = exited.clone();
            let mut gate = gate;
            let mut spill_reported = false;
            let (reason, line) = loop {
                match follower.next(&mut following).await {
                    None => return,
                    Some(logwatch::LogFinding::Fault(reason, line)) => break (reason, line),
                    Some(logwatch::LogFinding::Spillover(line)) => {
                        let Some(token) = spill_token.filter(|_| !spill_reported) else {
                            continue;
                        };
                        spill_reported = true;
                        if let Ok(mut slot) = spill_slot.lock() {
                            slot.get_or_insert_with(|| line.clone());
                        }
                        let _ = gate.wait_for(|announced| *announced).await;
                        if exited.borrow().is_some() || stop_flag.load(Ordering::SeqCst) {
                            continue;
                        }
                        report_spillover(&shared, cause, &pool_id, (pid, token), &line).await;
                    }
                }
            };
            if let Ok(mut slot) = fault.lock() {
                *slot = Some((reason, line.clone()));
            }
            let _ = gate.wait_for(|announced| *announced).await;
            if exited.borrow().is_some() || stop_flag.load(Ordering::SeqCst) {
                return; // the exit (or the stop) reports it, with this fault
            }
            tracing::warn!(pool_id = %pool_id, pid, reason = reason.as_str(), %line, "GPU fault in the engine log");
            let observation = Observation::EngineLogFault {
                pool_id,
                pid,
                reason,
                line,
            };
            shared.report(cause, observation).await;
        });
        Engine {
            pid,
            exited: rx,
            stopping,
            killed,
            spawned_at_ms,
            spilled,
            ours: false,
        }
    }

    fn start_health_wait(&mut self, cause: u64, pid: u32, token: u64, deadline_at_ms: u64) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        let (mut exited, spawned_at_ms, spilled) = match &self.engine {
            Some(engine) if engine.pid == pid => (
                engine.exited.clone(),
                engine.spawned_at_ms,
                engine.spilled.clone(),
            ),
            _ => {
                // Not ours to watch (after a restart the adoption's watcher covers it).
                let (_tx, rx) = watch::channel(None);
                (rx, shared.now_ms(), Spilled::default())
            }
        };
        self.probe = None;
        self.health = Some(own(async move {
            let Some(engine) = shared.engine_of(&pool_id) else {
                return;
            };
            let interval =
                Duration::from_millis(shared.settings.policy.health.preload_interval_ms.max(1));
            let mut last_probe = String::new();
            loop {
                if exited.borrow().is_some() {
                    return; // the exit watcher reports
                }
                if shared.now_ms() >= deadline_at_ms {
                    break;
                }
                let health = shared.prober.health(&engine, probe::PROBE_TIMEOUT_MS).await;
                if health == Health::Healthy {
                    let after_ms = shared.now_ms().saturating_sub(spawned_at_ms);
                    if let Some(check) = &shared.settings.placement {
                        let mask = engine.device_mask.as_deref();
                        match prove_placement(check, pid, mask, &mut exited).await {
                            Proof::Placed(device) => {
                                tracing::info!(pool_id = %pool_id, pid, %device, "engine seen on its GPU");
                            }
                            Proof::Exited => return, // the exit watcher reports
                            Proof::NotSeen(seen) => {
                                let detail = not_on_gpu(check, pid, mask, &seen);
                                tracing::warn!(pool_id = %pool_id, pid, "{detail}");
                                let observation = Observation::EngineNotOnGpu {
                                    pool_id,
                                    token,
                                    pid,
                                    detail,
                                };
                                shared.report(cause, observation).await;
                                return;
                            }
                        }
                        if spilled.lock().is_ok_and(|line| line.is_some()) {
                            return; // its log said "no usable GPU": the log watcher reports
                        }
                    }
                    let observation = health_passed(&shared, &engine, pool_id, pid, after_ms).await;
                    shared.report(cause, observation).await;
                    return;
                }
                last_probe = health.describe();
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shared.settings.clock.sleep_until(deadline_at_ms) => break,
                    _ = exited.changed() => return,
                }
            }
            if exited.borrow().is_some() {
                return;
            }
            shared
                .report(
                    cause,
                    Observation::PreloadTimedOut {
                        pool_id,
                        pid,
                        last_probe,
                    },
                )
                .await;
        }));
    }

    fn start_probing(&mut self, cause: u64, pid: Option<u32>) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        self.health = None;
        self.probe = Some(own(async move {
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
        }));
    }

    async fn verify(&mut self, cause: u64, pid: u32, start_time: u64, binary_path: Option<String>) {
        let observation = verify_engine(&self.pool_id, pid, start_time, binary_path.as_deref());
        self.shared.report(cause, observation).await;
    }

    async fn stop(&mut self, cause: u64, pid: u32, grace_ms: u64, reason: &StopReason) {
        self.health = None;
        self.probe = None;
        if self.engine.as_ref().is_none_or(|e| e.pid != pid) {
            // Not watched yet (an engine adopted and stopped at once): watch it now.
            self.watch_foreign(cause, pid);
        }
        let Some(engine) = &self.engine else { return };
        engine.stopping.store(true, Ordering::SeqCst);
        let (mut exited, killed, ours) =
            (engine.exited.clone(), engine.killed.clone(), engine.ours);
        if !self.may_signal(cause, pid, ours).await {
            return;
        }
        tracing::info!(pool_id = %self.pool_id, pid, grace_ms, ?reason, "stopping engine");
        let first = if grace_ms == 0 {
            killed.store(true, Ordering::SeqCst);
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let mut graceful = grace_ms > 0;
        match process::signal_engine(pid, first) {
            Ok(_) => {}
            Err(e) => tracing::warn!(pool_id = %self.pool_id, pid, "cannot signal the engine: {e}"),
        }
        let ended = wait_exit(&mut exited, grace_ms).await;
        if !ended {
            graceful = false;
            killed.store(true, Ordering::SeqCst);
            tracing::warn!(pool_id = %self.pool_id, pid, grace_ms, "engine did not stop within its grace period: SIGKILL");
            if !self.may_signal(cause, pid, ours).await {
                return;
            }
            let _ = process::signal_engine(pid, Signal::SIGKILL);
            if !wait_exit(&mut exited, KILL_WAIT_MS).await {
                tracing::error!(pool_id = %self.pool_id, pid, "engine still present {KILL_WAIT_MS} ms after SIGKILL (uninterruptible sleep?)");
            }
        }
        self.report_stopped(cause, pid, graceful).await;
    }
}

impl PoolWorker {
    /// [`proof::prove`] for this pool's engine `pid`, with what the registry knows of it.
    fn prove(&self, pid: u32) -> Result<(), String> {
        let published = self.shared.registry.load();
        let state = &published.state;
        let pool = state.pool(self.pool_id.as_str());
        let claim = proof::Claim {
            port: pool.and_then(|p| {
                p.engine.as_ref().map(|e| e.port).or_else(|| {
                    let handoff = p.handoff.as_ref()?;
                    pool_core::handoff_url_host_port(&handoff.url)
                        .ok()
                        .map(|(_, port)| port)
                })
            }),
            start_time: pool.and_then(|p| p.process.as_ref()).map(|p| p.start_time),
            other_pools: state
                .pools
                .values()
                .filter(|p| p.id != self.pool_id)
                .filter_map(|p| p.process.as_ref().map(|process| process.pid))
                .collect(),
        };
        proof::prove(pid, &claim)
    }

    /// Whether `pid` may be signalled: always when `ours` (spawned in this life), else once
    /// [`Self::prove`] holds; when it does not, the pool forgets the engine ([`Self::forget`]).
    async fn may_signal(&mut self, cause: u64, pid: u32, ours: bool) -> bool {
        if ours {
            return true;
        }
        match self.prove(pid) {
            Ok(()) => true,
            Err(why) => {
                self.forget(cause, pid, &why).await;
                false
            }
        }
    }

    /// The stop of an engine that cannot be proven to be this pool's: nothing is signalled,
    /// the pool lets it go (reported stopped), and the log says so.
    async fn forget(&mut self, cause: u64, pid: u32, why: &str) {
        tracing::warn!(
            pool_id = %self.pool_id,
            pid,
            "not signalling pid {pid}: {why}; the pool forgets it and the process is left as it is (stop it yourself if it is the engine)"
        );
        self.engine = None;
        self.report_stopped(cause, pid, false).await;
    }

    /// Reports the end of a stop of `pid`.
    async fn report_stopped(&self, cause: u64, pid: u32, graceful: bool) {
        self.shared
            .report(
                cause,
                Observation::EngineStopped {
                    pool_id: self.pool_id.clone(),
                    pid,
                    graceful,
                },
            )
            .await;
    }
}

/// Is `pid` still the engine the journal recorded? Alive, with the recorded start time
/// (`/proc/<pid>/stat`) and, when we spawned it, the recorded binary: `EngineAdopted`;
/// anything else (gone, a zombie, a reused pid): `EngineLost`. A recorded start time of 0
/// (unknown) never adopts: a reused pid must never be taken for our engine.
pub fn verify_engine(
    pool_id: &PoolId,
    pid: u32,
    start_time: u64,
    binary_path: Option<&str>,
) -> Observation {
    let alive_start = if process::is_gone(pid) {
        None
    } else {
        process::start_time(pid)
    };
    let same_start = matches!(alive_start, Some(actual) if start_time != 0 && actual == start_time);
    let same_binary = match binary_path {
        None => true,
        Some(recorded) => {
            let exe = process::exe(pid).map(|exe| {
                let exe = exe.display().to_string();
                exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string()
            });
            let recorded = process::resolve_binary(recorded).map(|p| p.display().to_string());
            matches!((exe, recorded), (Some(a), Some(b)) if a == b)
        }
    };
    if same_start && same_binary {
        tracing::info!(pool_id = %pool_id, pid, "engine from before the restart is alive: adopting it");
        Observation::EngineAdopted {
            pool_id: pool_id.clone(),
            pid,
        }
    } else {
        tracing::warn!(pool_id = %pool_id, pid, alive = alive_start.is_some(), same_start, same_binary, "recorded engine is gone (or its pid now belongs to another program)");
        Observation::EngineLost {
            pool_id: pool_id.clone(),
            pid,
        }
    }
}

/// How a placement proof ended.
enum Proof {
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
async fn prove_placement(
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
async fn health_passed(
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
    Observation::HealthPassed {
        pool_id,
        pid,
        after_ms,
        engine_version: props.build_info,
        slots_total,
    }
}

/// Reports that an engine's log says it found no usable GPU and would serve on the CPU
/// (`EngineNotOnGpu`), naming its mask and what to check.
async fn report_spillover(
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
fn not_on_gpu(check: &PlacementCheck, pid: u32, mask: Option<&str>, seen: &str) -> String {
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

/// Runs a file write (which fsyncs) on a blocking thread, off the runtime's workers.
async fn write_blocking(
    path: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Waits up to `ms` for the process to end; `true` when it did.
async fn wait_exit(exited: &mut watch::Receiver<Option<ExitInfo>>, ms: u64) -> bool {
    if ms == 0 {
        return exited.borrow().is_some();
    }
    tokio::time::timeout(Duration::from_millis(ms), exited.wait_for(Option::is_some))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn report_exit(
    shared: &Shared,
    cause: u64,
    pool_id: PoolId,
    pid: u32,
    info: ExitInfo,
    (log_path, log_offset, fault): (&std::path::Path, u64, Option<(ExitReason, String)>),
    we_sent_kill: bool,
) {
    // Only this engine's output: the log is appended across starts.
    let tail = files::log_tail_since(log_path, log_offset, files::LOG_TAIL_BYTES);
    let reason = match (fault, info.code.is_none() && info.signal.is_none()) {
        // A GPU fault the log watcher saw names the exit, even if later output pushed it out
        // of the tail.
        (Some((reason, _)), _) => reason,
        (None, true) => process::classify_log(&tail).unwrap_or(ExitReason::Unknown),
        (None, false) => process::classify(info, we_sent_kill, &tail),
    };
    let detail = if tail.is_empty() {
        format!("engine {}; its log is empty", info.describe())
    } else {
        format!("engine {}; log tail:\n{tail}", info.describe())
    };
    tracing::warn!(pool_id = %pool_id, pid, exit = %info.describe(), reason = reason.as_str(), "engine exited");
    shared
        .report(
            cause,
            Observation::EngineExited {
                pool_id,
                pid,
                exit_code: info.code,
                signal: info.signal,
                reason,
                detail,
            },
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{GpuSummary, Published};

    fn supervisor(dir: &std::path::Path) -> Supervisor {
        let dirs = RuntimeDirs::create(dir).unwrap();
        let clock: SharedClock = Arc::new(crate::clock::ManualClock::new(0));
        let settings = SupervisorSettings::new(dirs, Policy::default(), clock);
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let gpu = GpuSummary {
            available: false,
            count: 0,
            reason: None,
            required: false,
        };
        let registry = Registry::new(Published::durable(Arc::new(Default::default()), gpu));
        Supervisor::new(settings, Reporter::new(tx), registry)
    }

    async fn workers_become(supervisor: &Supervisor, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while supervisor.workers() != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "workers: {}",
                supervisor.workers()
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_pools_worker_ends_with_its_files_and_a_new_one_serves_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor(dir.path());
        let a = PoolId::new("a").unwrap();
        let b = PoolId::new("b").unwrap();
        supervisor.dispatch(1, Effect::RemovePidFile { pool_id: a.clone() });
        supervisor.dispatch(2, Effect::RemovePidFile { pool_id: b.clone() });
        assert_eq!(supervisor.workers(), 2);
        supervisor.dispatch(3, Effect::RemovePoolFiles { pool_id: a.clone() });
        workers_become(&supervisor, 1).await;
        // The same id again: a new worker runs its effects (here: the pid file goes).
        let pid_file = supervisor.shared.settings.dirs.pid_path("a");
        std::fs::write(&pid_file, "1\n").unwrap();
        let (done, ran) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move || {
            let _ = done.send(());
        });
        supervisor.dispatch_then(4, Effect::RemovePidFile { pool_id: a }, vec![done]);
        ran.await.unwrap();
        assert!(!pid_file.exists());
        supervisor.dispatch(5, Effect::RemovePoolFiles { pool_id: b });
        workers_become(&supervisor, 1).await;
    }
}
