//! The supervisor: runs the core's [`Effect`]s against the world and reports what happened as
//! [`Observation`]s to the node actor.
//!
//! Each pool has one worker task per [`Lane`] in use that takes that lane's effects in order
//! (the core's contract: a `StopEngine` is finished, process reaped, before the next effect of
//! that pool's lane starts, so a restart never races the old engine for its port). A pool runs
//! its engine in lane A (its files: `pids/<pool>.pid`, `logs/<pool>.log`, the cgroup leaf
//! `pool-<pool>`) until a surge (reload without a gap) starts the new engine beside it in the
//! other lane (`<pool>@b`): the two engines never share a pid file, a log, a cgroup leaf or a
//! worker, and one's stop never waits behind the other's effects. The pool's timers and
//! staging run on lane A's worker; its removal reaches every lane's worker, and each ends. Long waits (health wait, ready probes,
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
//! (HTTP health and `/props`), [`progress`] (while leases are held, whether work in progress
//! advances: `/slots`, `/metrics`), [`files`] (runtime directory, pid and handoff files, staging),
//! [`logrotate`] (engine logs bounded by copy-truncate, before each spawn and every few
//! seconds), [`logtail`] (an engine log's last lines and new ones, for people), [`logwatch`] (GPU fault and no-GPU lines of the engine log), [`admission`] (what may be
//! started, checked before every spawn), [`cgroup`] (an engine's cgroup leaf), [`proof`]
//! (whether a pid may be signalled), [`port`] (the engine's port is free before a spawn and
//! held by the engine's session before it is ready), [`reconcile`] (the runtime directory against `/proc`
//! at start-up). The rooms of the worker: `worker.rs` (a pool's lane's queue of effects), `start.rs`
//! (spawn, ready probes), `health.rs` (a starting engine's health wait and proofs), `leftover.rs` (an unrecorded engine of an earlier
//! start), `exit.rs` (the exit and log watchers), `session.rs` (what an engine leaves of its
//! session, killed before its end is published), `release.rs` (the wait for the last
//! engine's GPU memory before the next start on its GPUs), `stop.rs`.

pub mod admission;
pub mod cgroup;
pub mod files;
pub mod logrotate;
pub mod logtail;
pub mod logwatch;
pub mod port;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod progress;
pub mod proof;
pub mod reconcile;
pub mod sockdiag;

mod exit;
mod health;
mod leftover;
mod release;
mod session;
mod start;
mod stop;
#[cfg(test)]
pub(crate) mod tests;
mod worker;

pub use stop::{verify_engine, Recorded};
use worker::PoolWorker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pool_core::{Effect, Lane, Observation, Policy, PoolId, PreparedEngine};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::gpu::placement::PlacementCheck;
use crate::gpu::release::ReleaseCheck;
use crate::port::{Registry, Reporter};
use files::RuntimeDirs;
use probe::Prober;

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
    /// Where the node has a GPU inventory: before a restart, trial or reload, the wait for the
    /// last engine's GPU memory (`release.rs`). `None`: no wait (the session sweep alone).
    pub release: Option<ReleaseCheck>,
    /// What may be started, checked again before every spawn (default: any binary, the
    /// default environment allow-list).
    pub admission: Arc<admission::Admission>,
    /// A cgroup v2 leaf per engine (`engines.cgroup`), where one could be set up.
    pub cgroups: Option<Arc<cgroup::EngineCgroups>>,
    /// `[logs]`: when an engine log is rotated, and how many parts are kept
    /// ([`logrotate`]).
    pub logs: crate::config::LogsSettings,
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
            release: None,
            admission: Arc::new(admission::Admission::permissive()),
            cgroups: None,
            logs: crate::config::LogsSettings::default(),
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

    /// The prepared engine the registry holds for `pool_id`'s `lane`: the pool's engine in the
    /// pool's lane, its second engine (a surge's new one, or the old one retiring) in the
    /// other.
    fn engine_in(&self, pool_id: &PoolId, lane: Lane) -> Option<PreparedEngine> {
        let published = self.registry.load();
        let pool = published.state.pool(pool_id.as_str())?;
        if lane == pool.lane {
            pool.engine.clone()
        } else {
            pool.second.as_ref().map(|second| second.engine.clone())
        }
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
    /// The runtime directory's log rotation task ([`logrotate::spawn_rotation_task`]), ended
    /// with the supervisor; `None` outside a runtime.
    _rotation: Option<(Owned, Arc<()>)>,
}

/// The workers, one per pool and lane.
type Workers = Arc<Mutex<HashMap<(PoolId, Lane), WorkerEntry>>>;

/// A pool's lane's worker in the map: its number and its queue.
struct WorkerEntry {
    /// Distinguishes it from a later worker of the same pool id.
    number: u64,
    /// Its queue of jobs.
    queue: mpsc::UnboundedSender<Job>,
}

/// Locks the workers' map. A panic while it was held (a bug) leaves the map itself whole
/// (inserts and removals only), so the lock is taken back and the effect still runs.
fn lock_workers(
    workers: &Workers,
) -> std::sync::MutexGuard<'_, HashMap<(PoolId, Lane), WorkerEntry>> {
    workers.lock().unwrap_or_else(|poisoned| {
        tracing::error!("the supervisor's worker map was poisoned by a panic; going on with it");
        poisoned.into_inner()
    })
}

impl Supervisor {
    /// A supervisor reporting to `reporter` and reading `registry`.
    pub fn new(settings: SupervisorSettings, reporter: Reporter, registry: Registry) -> Supervisor {
        let _rotation = tokio::runtime::Handle::try_current().ok().map(|_| {
            let alive = Arc::new(());
            let clock = settings.clock.clone();
            let task = logrotate::spawn_rotation_task(
                settings.dirs.logs.clone(),
                settings.logs,
                move || clock.now_ms(),
                Arc::downgrade(&alive),
            );
            (Owned(task), alive)
        });
        Supervisor {
            shared: Arc::new(Shared {
                settings,
                prober: Prober::new(),
                reporter,
                registry,
            }),
            workers: Arc::new(Mutex::new(HashMap::new())),
            next_worker: std::sync::atomic::AtomicU64::new(0),
            _rotation,
        }
    }

    /// Queues `effect` (asked for by the event `cause`) on the worker of its pool and lane
    /// ([`Effect::lane`]; `RemovePoolFiles` on every lane's worker there is, and lane A's at
    /// least, so that each ends with the pool). Never blocks: the
    /// actor must never wait on the shell, which may itself be waiting to report to the actor.
    /// The queue is unbounded by type but bounded in practice by the actor's bounded inbox
    /// (each input yields a handful of effects).
    pub fn dispatch(&self, cause: u64, effect: Effect) {
        self.dispatch_then(cause, effect, Vec::new());
    }

    /// [`dispatch`](Self::dispatch), calling each of `done` once the effect is carried out (by
    /// every worker it went to).
    pub fn dispatch_then(&self, cause: u64, effect: Effect, done: Vec<Done>) {
        let pool_id = effect.pool_id().clone();
        let mut workers = lock_workers(&self.workers);
        if !matches!(effect, Effect::RemovePoolFiles { .. }) {
            let key = (pool_id, effect.lane());
            let job = Job {
                cause,
                effect,
                done,
            };
            return self.queue(&mut workers, key, job);
        }
        // The pool is gone: every lane's worker removes its lane's files and ends.
        let mut lanes: Vec<Lane> = workers
            .keys()
            .filter(|(id, _)| *id == pool_id)
            .map(|(_, lane)| *lane)
            .chain(std::iter::once(Lane::A))
            .collect();
        lanes.sort_unstable();
        lanes.dedup();
        let mut dones = split_done(done, lanes.len()).into_iter();
        for lane in lanes {
            let job = Job {
                cause,
                effect: effect.clone(),
                done: dones.next().unwrap_or_default(),
            };
            self.queue(&mut workers, (pool_id.clone(), lane), job);
        }
    }

    /// Queues `job` on the worker of `key`, started if there is none (or it has ended).
    fn queue(
        &self,
        workers: &mut HashMap<(PoolId, Lane), WorkerEntry>,
        key: (PoolId, Lane),
        job: Job,
    ) {
        let job = match workers.get(&key) {
            Some(entry) => match entry.queue.send(job) {
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
        let (pool_id, lane) = key.clone();
        workers.insert(key, WorkerEntry { number, queue: tx });
        let worker = PoolWorker::new(self.shared.clone(), pool_id, lane);
        tokio::spawn(worker.run(rx, self.workers.clone(), number));
    }

    /// How many workers there are now, one per pool and lane in use (a removed pool's workers
    /// end with it).
    pub fn workers(&self) -> usize {
        lock_workers(&self.workers).len()
    }
}

/// `done` split for `parts` jobs: each part's call counts down, and the last one calls every
/// one of `done` (each is called once, after all parts ran). No parts are empty callbacks
/// when `done` is.
fn split_done(done: Vec<Done>, parts: usize) -> Vec<Vec<Done>> {
    if done.is_empty() || parts <= 1 {
        let mut out: Vec<Vec<Done>> = (1..parts).map(|_| Vec::new()).collect();
        out.insert(0, done);
        return out;
    }
    let left = Arc::new(Mutex::new((parts, done)));
    (0..parts)
        .map(|_| {
            let left = left.clone();
            let part: Done = Box::new(move || {
                let ready = {
                    let mut guard = left.lock().unwrap_or_else(|p| p.into_inner());
                    guard.0 -= 1;
                    if guard.0 == 0 {
                        std::mem::take(&mut guard.1)
                    } else {
                        Vec::new()
                    }
                };
                for done in ready {
                    done();
                }
            });
            vec![part]
        })
        .collect()
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
