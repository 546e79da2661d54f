//! The node actor: the one task that owns the registry state.
//!
//! Every input (an API command, a supervisor observation, a timer) arrives through one bounded
//! channel. The actor takes what is queued (up to [`BATCH_INPUTS_MAX`] inputs), decides each
//! against the state as the earlier ones of the batch left it, appends all their facts to the
//! journal in one durable append (group commit), and only then makes that state current,
//! answers the callers, publishes the registry and hands the effects to the supervisor. If the
//! append fails nothing of the batch happened: callers get the error, the state is unchanged,
//! and the node refuses further changes (a journal that failed to sync cannot be trusted).
//!
//! At start-up the journal is replayed (snapshot + tail) without running effects; then
//! `resume_effects` re-attaches the world (verify recorded engines, re-arm timers).
//!
//! Owns: the `State`, the journal writer, the waiters of preloads and removals.
//! Never: does I/O other than the journal (the supervisor does), never publishes or answers
//! before the flush, never panics on an input.

mod degraded;
mod placement;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    decide, effects, resume_effects, Command, Context, Effect, Event, Input, LeaseId, Observation,
    Policy, PoolId, PreparedEngine, Rejection, Stamp, State, StopReason,
};
use pool_journal::{Draft, JournalConfig, JournalError};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::projection::{self, ReplayLimit};
use crate::schema::{PoolEnvelope, PoolJournal};
use crate::supervisor::files::RuntimeDirs;
use crate::supervisor::{Supervisor, SupervisorSettings};

pub use crate::port::{
    Committed, GpuSummary, Inbox, JournalReport, JournalView, NodeError, PreloadOutcome, Published,
    Registry, ReloadOutcome, Reporter,
};
use crate::port::{NodeInput, Submission, Waiter};

/// While the journal cannot take writes, how often the actor checks whether it can again.
pub const JOURNAL_RECOVERY_POLL_MS: u64 = 200;

/// Inputs the actor takes per batch (one journal append for all of them).
pub const BATCH_INPUTS_MAX: usize = 256;
/// Capacity of the actor's inbox; senders wait when it is full.
pub const INBOX_CAPACITY: usize = 1_024;
/// Waiters (preloads with `wait`, removals) per pool.
pub const WAITERS_PER_POOL_MAX: usize = 64;
/// Extra time a waiting preload allows beyond the health timeout (spawn, stop of a failed
/// engine).
pub const PRELOAD_WAIT_MARGIN_MS: u64 = 30_000;

/// How long a shutdown waits for the last clones of the journal to go.
pub const JOURNAL_RELEASE_WAIT_MS: u64 = 10_000;

/// Start-up's reconciliation of the runtime directory with `/proc` (`supervisor::reconcile`):
/// engines of ours that the registry does not know are adopted (a handoff file names them) or
/// stopped and recorded, so that none is left running unknown (after an accepted journal loss,
/// or a daemon that died between starting an engine and recording it).
async fn reconcile_runtime(handle: &NodeHandle, dirs: &RuntimeDirs) {
    use crate::supervisor::reconcile::{self, Found};
    let state = handle.registry().load().state.clone();
    for found in reconcile::scan(&state, dirs) {
        match found {
            Found::Stale { pid_file, why } => {
                tracing::info!(pid_file = %pid_file.display(), why = %why, "stale pid file removed");
                let _ = crate::supervisor::files::remove_if_exists(&pid_file);
            }
            Found::Adopt {
                pool_id,
                handoff,
                path,
            } => {
                tracing::warn!(pool_id = %pool_id, pid = ?handoff.pid, file = %path.display(), "an engine of ours ran unknown to the journal: adopting it from its handoff file");
                let Ok(id) = PoolId::new(&pool_id) else {
                    continue;
                };
                let command = Command::RegisterHandoff {
                    pool_id: id,
                    handoff,
                    path: path.display().to_string(),
                };
                if let Err(e) = handle.submit(command).await {
                    tracing::error!(pool_id = %pool_id, error = %e, "cannot adopt the engine from its handoff file");
                }
            }
            Found::Stop {
                pool_id,
                pid,
                pid_file,
            } => {
                tracing::warn!(pool_id = %pool_id, pid, "an engine of ours ran unknown to the journal and no handoff file names it: stopping it");
                let gone =
                    crate::supervisor::reconcile::stop(pid, handle.policy().stop.grace_ms).await;
                if gone {
                    let _ = crate::supervisor::files::remove_if_exists(&pid_file);
                }
                let reason = format!(
                    "engine {pid} (pid file {}) ran unknown to the journal; {}",
                    pid_file.display(),
                    if gone {
                        "stopped"
                    } else {
                        "still present after SIGKILL"
                    }
                );
                let observation = Observation::UntrackedEngineStopped {
                    pool_id,
                    pid,
                    reason,
                };
                if let Err(e) = handle.submit(observation).await {
                    if !matches!(e, NodeError::JournalUnavailable(_)) {
                        tracing::error!(pid, error = %e, "cannot record the stop of an untracked engine");
                    }
                }
            }
        }
    }
}

/// A start-up replay that needs events retention dropped: no snapshot of this build's state
/// version covers them (snapshots written by another version are ignored).
fn explain_replay_error(journal: &PoolJournal, error: JournalError) -> JournalError {
    match error {
        JournalError::HistoryExpired { earliest, .. } => JournalError::InvalidArgument {
            what: format!(
                "the registry cannot be rebuilt: retention dropped the events before seq \
                 {earliest} and no snapshot of this build's state version ({}) covers them \
                 (snapshots at seqs {:?} are of another version, or damaged). Run the version of \
                 pool-managerd that wrote them, or restore the journal directory from a backup",
                pool_core::STATE_SNAPSHOT_VERSION,
                journal.snapshot_seqs()
            ),
        },
        other => other,
    }
}

/// A start-up observation refused because the journal cannot take writes is kept by the actor
/// (recorded once it can): not a failed start.
fn queued_while_unavailable(error: NodeError) -> Result<Committed, NodeError> {
    match error {
        NodeError::JournalUnavailable(_) => Ok(Committed {
            envelopes: Vec::new(),
            state: Arc::new(State::default()),
        }),
        other => Err(other),
    }
}

/// The journal's options from the node's settings: retention and segment size from
/// `[journal]`, retention's clock the node's decision clock.
fn journal_config(settings: &NodeSettings) -> JournalConfig {
    let mut config = JournalConfig::new(&settings.journal_dir);
    config.retain_bytes = settings.journal.retain_bytes;
    config.retain_ms = settings.journal.retain_ms;
    config.segment_records = usize::try_from(settings.journal.segment_records)
        .unwrap_or(pool_journal::config::DEFAULT_SEGMENT_RECORDS)
        .max(1);
    let clock = settings.clock.clone();
    config.clock = pool_journal::JournalClock(Arc::new(move || clock.now_ms()));
    config
}

/// Whether nobody (in this process or another) holds the journal at `dir`: both its `LOCK`
/// file and sled's `db` file can be locked (and are unlocked again at once).
fn journal_released(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd as _;
    [
        dir.join(pool_journal::LOCK_FILE_NAME),
        pool_journal::live_store_dir(dir).join("db"),
    ]
    .iter()
    .all(|path| match std::fs::File::open(path) {
        // SAFETY: flock on a valid fd we own for the duration of the call; closing the
        // file (end of this arm) drops the lock.
        Ok(file) => unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 },
        Err(_) => true,
    })
}

/// Everything the node needs to start.
#[derive(Clone)]
pub struct NodeSettings {
    /// The journal directory.
    pub journal_dir: PathBuf,
    /// The runtime directory (logs, pids, handoff files).
    pub runtime_dir: PathBuf,
    /// Supervision policy.
    pub policy: Policy,
    /// Snapshot of the state every this many events.
    pub snapshot_every: u64,
    /// Retention and segment size (`[journal]`).
    pub journal: crate::config::JournalSettings,
    /// The clock of decisions.
    pub clock: SharedClock,
    /// What the GPU preflight found; `required` with `available == false` refuses preloads.
    pub gpu: GpuSummary,
    /// The daemon's version (for `DaemonStarted`).
    pub version: String,
    /// The user engines run as (resolved `engine_user`), if any.
    pub run_as: Option<crate::supervisor::process::RunAs>,
    /// With `require_gpu`: the proof that a starting engine is on its GPUs before it is ready
    /// (`CPU_SPILLOVER` otherwise); `None` on a `--dev` node.
    pub placement_check: Option<crate::gpu::placement::PlacementCheck>,
    /// `[gpu] allow_sharing`: two pools may claim the same GPU.
    pub allow_gpu_sharing: bool,
    /// What may be started (`allowed_binaries`, `[engines] env_allow`), checked again before
    /// every spawn.
    pub admission: Arc<crate::supervisor::admission::Admission>,
    /// A cgroup v2 leaf per engine (`engines.cgroup`), where one could be set up.
    pub cgroups: Option<Arc<crate::supervisor::cgroup::EngineCgroups>>,
    /// The group that may read the engine logs (`engines.logs_group`), resolved.
    pub logs_gid: Option<u32>,
}

/// Why the node could not start; the message names the directory or what was being recorded.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The runtime directory could not be created or tightened.
    #[error(transparent)]
    RuntimeDir(#[from] std::io::Error),
    /// The journal could not be opened or replayed.
    #[error("cannot open the journal at {}", dir.display())]
    Journal {
        /// The journal directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// The blocking task that opens the journal did not finish (it panicked).
    #[error("the journal's start-up task failed: {0}")]
    Task(String),
    /// A start-up fact could not be journaled.
    #[error("cannot record {what} in the journal")]
    Record {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: NodeError,
    },
}

/// What start-up found.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// Seq the replay ended at.
    pub replayed_to_seq: u64,
    /// Events folded (after the snapshot, if one was used).
    pub events_folded: u64,
    /// The snapshot used, if any.
    pub from_snapshot_seq: Option<u64>,
    /// Wall time of the replay.
    pub replay_ms: u64,
    /// Pools known after the replay.
    pub pools: usize,
    /// Damaged tail records quarantined by the journal's recovery.
    pub quarantined: u64,
}

/// A handle on the running node (cheap to clone).
#[derive(Clone)]
pub struct NodeHandle {
    inbox: Inbox,
    journal: PoolJournal,
    clock: SharedClock,
    policy: Arc<Policy>,
    allow_gpu_sharing: bool,
    /// How long a start may wait after its health passed for the proof that the engine is on
    /// its GPUs (`[gpu] placement_timeout_ms` with `require_gpu`, else 0): added to the
    /// preload and reload waits.
    placement_wait_ms: u64,
    /// This node's metrics (its own recorder: `crate::metrics`).
    metrics: crate::metrics::SharedMetrics,
    /// The engines' cgroup leaves, where they exist (for their memory at each scrape).
    cgroups: Option<Arc<crate::supervisor::cgroup::EngineCgroups>>,
    /// The runtime directory, created (and its modes set) once at start.
    dirs: RuntimeDirs,
}

/// The running node: its handle and its actor task.
pub struct Node {
    handle: NodeHandle,
    task: JoinHandle<()>,
}

impl Node {
    /// Opens the journal, replays it, starts the actor and the supervisor, journals
    /// `DaemonStarted` (and the preflight's verdict), then resumes the recorded engines.
    pub async fn start(settings: NodeSettings) -> Result<(Node, StartReport), StartError> {
        let dirs = RuntimeDirs::create_sharing_logs(&settings.runtime_dir, settings.logs_gid)?;
        let started = std::time::Instant::now();
        let (journal, open_report, replayed, max_batch_records) =
            open_and_replay(&settings).await?;
        let report = StartReport {
            replayed_to_seq: replayed.state.last_seq(),
            events_folded: replayed.events_folded,
            from_snapshot_seq: replayed.from_snapshot_seq,
            replay_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            pools: replayed.state.pools.len(),
            quarantined: open_report.quarantined.len() as u64,
        };
        let metrics = Arc::new(crate::metrics::NodeMetrics::new());
        metrics.set_replay_seconds(started.elapsed().as_secs_f64());
        let state = Arc::new(replayed.state);
        let registry = Registry::new(Published::durable(state.clone(), settings.gpu.clone()));
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let supervisor = supervisor_of(
            &settings,
            dirs.clone(),
            Reporter::new(tx.clone()),
            &registry,
        );
        let handle = NodeHandle {
            inbox: Inbox::new(tx, registry.clone()),
            journal: journal.clone(),
            clock: settings.clock.clone(),
            policy: Arc::new(settings.policy.clone()),
            allow_gpu_sharing: settings.allow_gpu_sharing,
            placement_wait_ms: settings
                .placement_check
                .as_ref()
                .map_or(0, |check| check.timeout_ms),
            metrics: metrics.clone(),
            cgroups: settings.cgroups.clone(),
            dirs: dirs.clone(),
        };
        let actor = Actor {
            state,
            journal,
            registry,
            supervisor,
            policy: settings.policy.clone(),
            clock: settings.clock.clone(),
            gpu: settings.gpu.clone(),
            waiters: HashMap::new(),
            snapshot_every: settings.snapshot_every.max(1),
            max_batch_records: max_batch_records.max(1),
            journal_failure: None,
            degraded: open_report.unavailable.as_ref().map(|error| {
                tracing::error!(error = %error, "the daemon starts with a journal that cannot take writes: reads work, changes are refused (JOURNAL_UNAVAILABLE) until it can");
                degraded::Degraded::new(
                    format!(
                        "journal {} cannot take writes: {error}; the daemon retries by itself",
                        settings.journal_dir.display()
                    ),
                    handle
                        .journal
                        .health()
                        .kind
                        .unwrap_or(pool_journal::WriteErrorKind::Other)
                        .as_str(),
                    settings.clock.now_ms(),
                )
            }),
            metrics,
        };
        let resume = resume_effects(&actor.state);
        let task = tokio::spawn(actor.run(rx));
        let rest = record_start(&handle, &settings, resume).await?;
        reconcile_runtime(&handle, &dirs).await;
        handle.resume(rest).await;
        Ok((Node { handle, task }, report))
    }

    /// The handle.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Journals `DaemonStopped{reason}`, stops the actor and closes the journal. Engines keep
    /// running (they outlive the daemon).
    pub async fn shutdown(self, reason: &str) {
        self.handle.registry().announce_stopping();
        self.handle.inbox.shutdown(reason.to_string()).await;
        let _ = self.task.await;
        let journal = self.handle.journal.clone();
        let dir = journal.dir().to_path_buf();
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        drop(self.handle);
        // Other clones of the journal (a connection task dropping its router, a snapshot
        // being written) go away on their own within moments; return only once the journal's
        // locks are free, so that the next start (an in-process restart, a test) can open it.
        let deadline = std::time::Instant::now() + Duration::from_millis(JOURNAL_RELEASE_WAIT_MS);
        while !journal_released(&dir) {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    journal = %dir.display(),
                    "the journal is still held {JOURNAL_RELEASE_WAIT_MS} ms after shutdown"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Opens the journal and replays it (snapshot + tail) on a blocking thread.
async fn open_and_replay(
    settings: &NodeSettings,
) -> Result<
    (
        PoolJournal,
        pool_journal::OpenReport,
        projection::Replayed,
        usize,
    ),
    StartError,
> {
    let journal_config = journal_config(settings);
    tokio::task::spawn_blocking(move || {
        let config = journal_config;
        let max_batch = config.max_batch_records;
        let (journal, report) = PoolJournal::open(config)?;
        let replayed = projection::replay(&journal, ReplayLimit::default())
            .map_err(|e| explain_replay_error(&journal, e))?;
        Ok::<_, JournalError>((journal, report, replayed, max_batch))
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))?
    .map_err(|source| StartError::Journal {
        dir: settings.journal_dir.clone(),
        source,
    })
}

/// The supervisor of a node with `settings`, reporting through `reporter`.
fn supervisor_of(
    settings: &NodeSettings,
    dirs: RuntimeDirs,
    reporter: Reporter,
    registry: &Registry,
) -> Supervisor {
    let mut supervisor_settings =
        SupervisorSettings::new(dirs, settings.policy.clone(), settings.clock.clone());
    supervisor_settings.run_engines_as(settings.run_as);
    supervisor_settings.admission = settings.admission.clone();
    supervisor_settings.placement = settings.placement_check.clone();
    supervisor_settings.cgroups = settings.cgroups.clone();
    Supervisor::new(supervisor_settings, reporter, registry.clone())
}

/// Journals a start-up observation; one refused because the journal cannot take writes now
/// is kept by the actor (not a failed start).
async fn record(
    handle: &NodeHandle,
    observation: Observation,
    what: &'static str,
) -> Result<(), StartError> {
    handle
        .submit(observation)
        .await
        .or_else(queued_while_unavailable)
        .map(drop)
        .map_err(|source| StartError::Record { what, source })
}

/// Journals the start (`DaemonStarted`, the preflight's verdict) and verifies the recorded
/// engines before the node serves anyone (so the API never shows a ready engine that is
/// gone). Returns the other resume effects, for the actor once the runtime is reconciled.
async fn record_start(
    handle: &NodeHandle,
    settings: &NodeSettings,
    resume: Vec<Effect>,
) -> Result<Vec<Effect>, StartError> {
    let started = Observation::DaemonStarted {
        version: settings.version.clone(),
        pid: std::process::id(),
    };
    record(handle, started, "the daemon's start").await?;
    if settings.gpu.required && !settings.gpu.available {
        let reason = settings
            .gpu
            .reason
            .clone()
            .unwrap_or_else(|| "no usable GPU".to_string());
        let failed = Observation::PreflightFailed { reason };
        record(handle, failed, "the GPU preflight").await?;
    }
    // Recorded engines are verified before the node serves anyone, so the API never
    // shows an engine as ready that is gone (a quick `/proc` check per engine).
    let (verify, rest): (Vec<_>, Vec<_>) = resume
        .into_iter()
        .partition(|e| matches!(e, Effect::VerifyEngine { .. }));
    for effect in verify {
        if let Effect::VerifyEngine {
            pool_id,
            pid,
            start_time,
            binary_path,
        } = effect
        {
            let observation =
                crate::supervisor::verify_engine(&pool_id, pid, start_time, binary_path.as_deref());
            record(handle, observation, "the engines found at start-up").await?;
        }
    }
    Ok(rest)
}

impl NodeHandle {
    /// The published registry.
    pub fn registry(&self) -> &Registry {
        self.inbox.registry()
    }

    /// The node's inbox, for a watcher (it submits inputs and reads the registry, no more).
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// The decision clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The supervision policy the node runs with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The runtime directory (logs, pids, handoff files) as start-up created it.
    pub fn dirs(&self) -> &RuntimeDirs {
        &self.dirs
    }

    /// The engines' cgroup leaves (`engines.cgroup`), where they could be set up.
    pub fn cgroups(&self) -> Option<&crate::supervisor::cgroup::EngineCgroups> {
        self.cgroups.as_deref()
    }

    /// This node's metrics (`GET /metrics`).
    pub fn metrics(&self) -> &crate::metrics::NodeMetrics {
        &self.metrics
    }

    /// This node's metrics, shared (the HTTP layer counts its refusals there).
    pub fn shared_metrics(&self) -> crate::metrics::SharedMetrics {
        self.metrics.clone()
    }

    /// Decides on `input`, appends its events durably, and answers with them.
    pub async fn submit(&self, input: impl Into<Input>) -> Result<Committed, NodeError> {
        self.inbox.submit(input).await
    }

    async fn send(&self, input: Input, waiter: Option<Waiter>) -> Result<Committed, NodeError> {
        self.inbox.send(input, waiter).await
    }

    /// Hands the start-up's resume effects to the actor, which dispatches them in order
    /// after the start-up events.
    async fn resume(&self, effects: Vec<Effect>) {
        self.inbox.resume(effects).await;
    }

    /// Preloads `engine` into `pool_id`. With `wait`, answers once the pool is ready or the
    /// start failed (bounded by the health timeout, the placement wait and a margin); without,
    /// once accepted.
    /// What the core's placement needs from the world (the model file's size, the host's
    /// available memory) is read here first, off the actor (`placement::inputs`).
    pub async fn preload(
        &self,
        pool_id: PoolId,
        engine: PreparedEngine,
        wait: bool,
    ) -> Result<PreloadOutcome, NodeError> {
        let since_ms = self.clock.now_ms();
        let placement = placement::inputs(&engine, self.allow_gpu_sharing).await;
        let input = Input::Command(Command::Preload {
            pool_id: pool_id.clone(),
            engine,
            placement,
        });
        if !wait {
            let committed = self.send(input, None).await?;
            let status = committed.state.status(pool_id.as_str()).ok_or_else(|| {
                NodeError::Rejected(Rejection::PoolNotFound {
                    pool_id: pool_id.to_string(),
                })
            })?;
            return Ok(PreloadOutcome {
                status,
                ready_ms: 0,
            });
        }
        let (reply, outcome) = oneshot::channel();
        self.send(
            input,
            Some(Waiter::Preload {
                reply,
                since_ms,
                failed: None,
            }),
        )
        .await?;
        let limit_ms = self
            .policy
            .health
            .preload_timeout_ms
            .saturating_add(self.placement_wait_ms)
            .saturating_add(self.policy.stop.grace_ms)
            .saturating_add(PRELOAD_WAIT_MARGIN_MS);
        match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(format!(
                "pool '{pool_id}': no outcome within {limit_ms} ms; the preload goes on, see GET /v2/pools/{pool_id}"
            ))),
        }
    }

    /// Takes one slot of `pool_id` under a new lease id.
    pub async fn acquire_lease(&self, pool_id: PoolId) -> Result<(LeaseId, Arc<State>), NodeError> {
        let lease_id = new_lease_id();
        let committed = self
            .submit(Command::AcquireLease {
                pool_id,
                lease_id: lease_id.clone(),
            })
            .await?;
        Ok((lease_id, committed.state))
    }

    /// Reloads `pool_id` onto `new_model_ref`: answers once the new engine is ready, or the
    /// reload failed (rolled back or not), bounded by the drain deadline, the health timeout
    /// (twice: the new engine, then the old one again) and a margin.
    pub async fn reload(
        &self,
        pool_id: PoolId,
        new_model_ref: String,
        digest: Option<String>,
        drain_deadline_ms: Option<u64>,
    ) -> Result<ReloadOutcome, NodeError> {
        let (reply, outcome) = oneshot::channel();
        let drain_ms =
            drain_deadline_ms.unwrap_or(pool_core::policy::DEFAULT_RELOAD_DRAIN_DEADLINE_MS);
        self.send(
            Input::Command(Command::Reload {
                pool_id: pool_id.clone(),
                new_model_ref,
                digest,
                drain_deadline_ms,
            }),
            Some(Waiter::Reload {
                reply,
                failed: None,
            }),
        )
        .await?;
        let limit_ms = drain_ms
            .saturating_add(self.policy.health.preload_timeout_ms.saturating_mul(2))
            .saturating_add(self.placement_wait_ms.saturating_mul(2))
            .saturating_add(self.policy.stop.grace_ms.saturating_mul(2))
            .saturating_add(PRELOAD_WAIT_MARGIN_MS);
        match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(format!(
                "pool '{pool_id}': the reload has not ended after {limit_ms} ms; it goes on, see GET /v2/pools/{pool_id}"
            ))),
        }
    }

    /// Stops and forgets `pool_id`; answers once it is gone (bounded by the stop grace plus a
    /// margin).
    pub async fn remove(&self, pool_id: PoolId) -> Result<(), NodeError> {
        let (reply, outcome) = oneshot::channel();
        let committed = self
            .send(
                Input::Command(Command::Remove {
                    pool_id: pool_id.clone(),
                }),
                Some(Waiter::Removed { reply }),
            )
            .await?;
        if committed.state.pool(pool_id.as_str()).is_none() {
            return Ok(());
        }
        let limit_ms = self
            .policy
            .stop
            .grace_ms
            .saturating_add(crate::supervisor::KILL_WAIT_MS)
            .saturating_add(PRELOAD_WAIT_MARGIN_MS);
        match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(format!(
                "pool '{pool_id}': still stopping after {limit_ms} ms; see GET /v2/pools/{pool_id}"
            ))),
        }
    }

    /// The registry as it was right after event `seq` (a bounded replay from the nearest
    /// snapshot at or before it; `INVALID_REQUEST` beyond the journal's end).
    pub async fn state_at(&self, seq: u64) -> Result<Arc<State>, NodeError> {
        let current = self.registry().load().state.clone();
        if seq >= current.last_seq() {
            if seq > current.last_seq() {
                return Err(NodeError::Rejected(Rejection::InvalidRequest {
                    what: format!(
                        "at_seq {seq} is beyond the journal's last event ({})",
                        current.last_seq()
                    ),
                }));
            }
            return Ok(current);
        }
        let earliest = self.journal.time_travel_from();
        if seq < earliest {
            return Err(NodeError::HistoryExpired {
                requested: seq,
                earliest,
            });
        }
        let journal = self.journal.clone();
        let replayed = tokio::task::spawn_blocking(move || {
            projection::replay(
                &journal,
                ReplayLimit {
                    until_seq: Some(seq),
                    until_ts_ms: None,
                },
            )
        })
        .await
        .map_err(|e| NodeError::Journal(e.to_string()))?
        .map_err(NodeError::of_read)?;
        Ok(Arc::new(replayed.state))
    }

    /// The journal's events, oldest first, from `from` (seq, inclusive; 0 reads as 1), at most
    /// `limit`, up to the last durable event (`GET /v2/events`, its live stream).
    pub async fn journal_events(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<PoolEnvelope>, NodeError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            journal
                .read_from(from)
                .take(limit)
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| NodeError::Journal(e.to_string()))?
        .map_err(NodeError::of_read)
    }

    /// The seq of the journal's last durable event (0 when empty).
    pub fn journal_last_seq(&self) -> u64 {
        self.journal.last_seq()
    }

    /// The earliest seq the journal still holds (retention drops older ones).
    pub fn journal_first_seq(&self) -> u64 {
        self.journal.first_seq()
    }

    /// The journal's health and sizes, now (metrics, `/health`).
    pub fn journal_report(&self) -> JournalReport {
        JournalReport {
            health: self.journal.health(),
            usage: self.journal.usage(),
        }
    }

    /// The pool's events, oldest first, from `since` (seq, inclusive), at most `limit`.
    pub async fn pool_events(
        &self,
        pool_id: PoolId,
        since: u64,
        limit: usize,
    ) -> Result<Vec<PoolEnvelope>, NodeError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.read_pool(pool_id.as_str(), since, limit))
            .await
            .map_err(|e| NodeError::Journal(e.to_string()))?
            .map_err(NodeError::of_read)
    }
}

/// A random lease id: `lease-` and 16 hex digits.
fn new_lease_id() -> LeaseId {
    let n: u64 = rand::thread_rng().gen();
    LeaseId::new(&format!("lease-{n:016x}")).unwrap_or_else(|_| unreachable_lease())
}

fn unreachable_lease() -> LeaseId {
    // `lease-<hex>` is always valid; keep a total function without panicking.
    LeaseId::new("lease-0").expect("constant lease id is valid")
}

struct Actor {
    state: Arc<State>,
    journal: PoolJournal,
    registry: Registry,
    supervisor: Supervisor,
    policy: Policy,
    clock: SharedClock,
    gpu: GpuSummary,
    waiters: HashMap<PoolId, Vec<Waiter>>,
    snapshot_every: u64,
    max_batch_records: usize,
    journal_failure: Option<String>,
    /// Set while the journal cannot take writes.
    degraded: Option<degraded::Degraded>,
    /// Counters and histograms of the events it appends (never of the start-up replay).
    metrics: crate::metrics::SharedMetrics,
}

/// What a batch decided, before its append.
#[derive(Default)]
struct Batch {
    /// The state after the batch's facts (`None` while none was produced).
    next: Option<State>,
    /// The facts to append, in order.
    drafts: Vec<Draft<Event>>,
    /// Effects of the facts, by the seq of the fact that asked for them.
    effects: Vec<(u64, Effect)>,
    /// Metric updates of the facts, recorded once the append is durable.
    metrics: Vec<crate::metrics::Update>,
    /// Each submission that produced an answer to give after the append.
    decided: Vec<Decided>,
}

impl Batch {
    /// Folds `fact` into the batch's state: stamped with the next seq, its metric updates and
    /// effects noted, its draft queued.
    fn fold(&mut self, fact: pool_core::Fact, now_ms: u64, cause: Option<u64>) {
        let Some(next) = self.next.as_mut() else {
            return;
        };
        let seq = next.last_seq() + 1;
        let pool = fact.pool_id.map(|id| id.to_string());
        let stamp = Stamp {
            seq,
            ts_ms: now_ms,
            pool_id: pool.as_deref(),
        };
        let before = crate::metrics::Before::of(pool.as_deref().and_then(|id| next.pool(id)));
        next.apply_mut(stamp, &fact.event);
        self.metrics.extend(crate::metrics::updates(
            pool.as_deref(),
            now_ms,
            &fact.event,
            before,
            pool.as_deref().and_then(|id| next.pool(id)),
        ));
        for effect in effects(next, stamp, &fact.event) {
            self.effects.push((seq, effect));
        }
        self.drafts.push(Draft {
            ts_ms: now_ms,
            pool_id: pool,
            cause,
            event: fact.event,
        });
    }
}

/// One decided input of a batch, waiting for the append.
struct Decided {
    reply: Option<oneshot::Sender<Result<Committed, NodeError>>>,
    waiter: Option<Waiter>,
    pool_id: Option<PoolId>,
    /// Range of this input's drafts in the batch.
    range: std::ops::Range<usize>,
    /// An observation, kept to be queued again if the append finds the journal unavailable.
    retry: Option<degraded::Queued>,
}

/// Why an append failed.
enum AppendFailure {
    /// The disk refuses writes for now (`JOURNAL_UNAVAILABLE`): the node keeps observations and
    /// recovers by itself.
    Unavailable { error: String, kind: &'static str },
    /// Anything else: the node takes no more changes.
    Fatal(String),
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<NodeInput>) {
        let mut batch = Vec::with_capacity(BATCH_INPUTS_MAX);
        loop {
            let received = if self.degraded.is_some() {
                let poll = Duration::from_millis(JOURNAL_RECOVERY_POLL_MS);
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH_INPUTS_MAX) => n,
                    () = tokio::time::sleep(poll) => {
                        self.flush_queued().await;
                        continue;
                    }
                }
            } else {
                rx.recv_many(&mut batch, BATCH_INPUTS_MAX).await
            };
            if received == 0 {
                return;
            }
            let mut shutdown = None;
            let mut submissions = Vec::with_capacity(batch.len());
            for input in batch.drain(..) {
                match input {
                    NodeInput::Submit(submission) if shutdown.is_none() => {
                        submissions.push(submission)
                    }
                    NodeInput::Submit(submission) => {
                        if let Some(reply) = submission.reply {
                            let _ = reply.send(Err(NodeError::ShuttingDown));
                        }
                    }
                    NodeInput::Resume { effects } => {
                        // Submissions queued before it are decided first, so effects stay
                        // in order with the events that came before them.
                        self.process(std::mem::take(&mut submissions)).await;
                        if let Some(degraded) = self.degraded.as_mut() {
                            // Nothing may start that the journal does not know: the resume
                            // effects wait for it.
                            degraded.held_effects.extend(effects);
                            continue;
                        }
                        let cause = self.state.last_seq();
                        for effect in effects {
                            self.supervisor.dispatch(cause, effect);
                        }
                    }
                    NodeInput::Shutdown { reason, reply } => {
                        if shutdown.is_none() {
                            shutdown = Some((reason, reply));
                        }
                    }
                }
            }
            if self.degraded.is_some() {
                self.flush_queued().await;
            }
            self.process(submissions).await;
            if let Some((reason, reply)) = shutdown {
                self.process(vec![Submission {
                    input: Input::Observation(Observation::DaemonStopping { reason }),
                    cause: None,
                    reply: None,
                    waiter: None,
                    observed_ms: None,
                }])
                .await;
                for (_, waiters) in self.waiters.drain() {
                    for waiter in waiters {
                        answer_waiter(waiter, Err(NodeError::ShuttingDown));
                    }
                }
                let _ = reply.send(());
                return;
            }
        }
    }

    async fn process(&mut self, submissions: Vec<Submission>) {
        if submissions.is_empty() {
            return;
        }
        if let Some(failure) = &self.journal_failure {
            for submission in submissions {
                if let Some(reply) = submission.reply {
                    let _ = reply.send(Err(NodeError::Journal(failure.clone())));
                }
            }
            return;
        }
        if self.degraded.is_some() {
            self.hold(submissions);
            return;
        }
        self.process_batch(submissions).await;
    }

    /// Decides, appends and applies one batch (the journal taking writes, as far as known).
    async fn process_batch(&mut self, submissions: Vec<Submission>) {
        let batch = self.decide_batch(submissions);
        let envelopes = if batch.drafts.is_empty() {
            Vec::new()
        } else {
            match self.append(batch.drafts).await {
                Ok(envelopes) => envelopes,
                Err(AppendFailure::Unavailable { error, kind }) => {
                    self.enter_degraded(error, kind, batch.decided);
                    return;
                }
                Err(AppendFailure::Fatal(failure)) => {
                    self.fail_for_good(failure, batch.decided);
                    return;
                }
            }
        };
        self.metrics.record(&batch.metrics);
        let previous_seq = self.state.last_seq();
        let before = self.state.clone();
        if let Some(next) = batch.next {
            self.state = Arc::new(next);
            self.publish();
        }
        for (i, envelope) in envelopes.iter().enumerate() {
            log_event(envelope, &self.state);
            if let Event::EngineStopRequested {
                reason: StopReason::DrainDeadline,
                ..
            } = &envelope.event
            {
                warn_drain_deadline(&before, &envelopes[..i], envelope);
            }
        }
        self.answer(batch.decided, &envelopes);
        for (seq, effect) in batch.effects {
            if let Effect::RemovePoolFiles { pool_id } = &effect {
                let done = self.take_removal_waiters(pool_id);
                self.supervisor.dispatch_then(seq, effect, done);
            } else {
                self.supervisor.dispatch(seq, effect);
            }
        }
        self.snapshot_if_due(previous_seq);
    }

    /// Decides each submission against the state the batch's earlier ones left (a private
    /// copy, made only once an input produces facts: reads, rejections and no-ops never copy
    /// the registry), and answers the rejected ones at once.
    fn decide_batch(&self, submissions: Vec<Submission>) -> Batch {
        let batch_now_ms = self.clock.now_ms();
        let mut batch = Batch::default();
        batch.decided.reserve(submissions.len());
        for submission in submissions {
            let now_ms = submission.observed_ms.unwrap_or(batch_now_ms);
            let retry = match &submission.input {
                Input::Observation(_) => Some(degraded::Queued {
                    input: submission.input.clone(),
                    cause: submission.cause,
                    observed_ms: now_ms,
                }),
                Input::Command(_) => None,
            };
            let ctx = Context {
                now_ms,
                random: rand::thread_rng().gen(),
                policy: &self.policy,
            };
            let pool_id = input_pool(&submission.input);
            let view: &State = batch.next.as_ref().unwrap_or(&self.state);
            let facts = match decide(view, &submission.input, &ctx) {
                Ok(facts) => facts,
                Err(rejection) => {
                    if let Some(reply) = submission.reply {
                        let _ = reply.send(Err(NodeError::Rejected(rejection)));
                    }
                    continue;
                }
            };
            let start = batch.drafts.len();
            if !facts.is_empty() && batch.next.is_none() {
                batch.next = Some((*self.state).clone());
            }
            for fact in facts {
                batch.fold(fact, now_ms, submission.cause);
            }
            batch.decided.push(Decided {
                reply: submission.reply,
                waiter: submission.waiter,
                pool_id,
                range: start..batch.drafts.len(),
                retry,
            });
        }
        batch
    }

    /// The journal failed for good: every caller of the batch gets the failure, and the node
    /// refuses changes until restarted (`/health` says `journal_failed`).
    fn fail_for_good(&mut self, failure: String, decided: Vec<Decided>) {
        tracing::error!("{failure}; the daemon refuses further changes until it is restarted");
        self.journal_failure = Some(failure.clone());
        self.publish();
        for d in decided {
            if let Some(reply) = d.reply {
                let _ = reply.send(Err(NodeError::Journal(failure.clone())));
            }
            if let Some(waiter) = d.waiter {
                answer_waiter(waiter, Err(NodeError::Journal(failure.clone())));
            }
        }
    }

    /// Answers the batch's callers with their own envelopes, registers their waiters, and
    /// resolves the waiters the new events settle.
    fn answer(&mut self, decided: Vec<Decided>, envelopes: &[PoolEnvelope]) {
        for d in decided {
            let own = envelopes[d.range.clone()].to_vec();
            if let (Some(waiter), Some(pool_id)) = (d.waiter, &d.pool_id) {
                self.register_waiter(pool_id, waiter, own.is_empty());
            }
            if let Some(reply) = d.reply {
                let _ = reply.send(Ok(Committed {
                    envelopes: own,
                    state: self.state.clone(),
                }));
            }
        }
        for envelope in envelopes {
            self.resolve_waiters(envelope);
        }
    }

    /// Saves a snapshot (off the actor) when the state crossed a multiple of `snapshot_every`
    /// since `previous_seq`.
    fn snapshot_if_due(&self, previous_seq: u64) {
        let last = self.state.last_seq();
        if last / self.snapshot_every > previous_seq / self.snapshot_every {
            let journal = self.journal.clone();
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = projection::save_snapshot(&journal, &state) {
                    tracing::warn!(
                        "cannot save a snapshot at seq {}: {e}; start-up will replay more",
                        state.last_seq()
                    );
                }
            });
        }
    }

    async fn append(&self, drafts: Vec<Draft<Event>>) -> Result<Vec<PoolEnvelope>, AppendFailure> {
        let expected_first = self.state.last_seq() + 1;
        let mut out = Vec::with_capacity(drafts.len());
        let started = std::time::Instant::now();
        let mut drafts = drafts.into_iter().peekable();
        while drafts.peek().is_some() {
            let chunk: Vec<_> = drafts.by_ref().take(self.max_batch_records).collect();
            match self.journal.append(chunk).await {
                Ok(envelopes) => out.extend(envelopes),
                // Nothing of this batch is acknowledged: a chunk appended before the failure is
                // quarantined by the journal's recovery (the node never evolved it).
                Err(JournalError::Unavailable { kind, .. }) if out.is_empty() => {
                    return Err(AppendFailure::Unavailable {
                        error: self.journal_error_text(),
                        kind: kind.as_str(),
                    })
                }
                Err(e) => return Err(AppendFailure::Fatal(e.to_string())),
            }
        }
        self.metrics
            .appended(out.len(), started.elapsed().as_secs_f64());
        if out.first().map(|e| e.seq) != Some(expected_first) {
            return Err(AppendFailure::Fatal(format!(
                "the journal assigned seq {:?} where the node expected {expected_first}: another writer?",
                out.first().map(|e| e.seq)
            )));
        }
        Ok(out)
    }

    /// The journal's current error, naming its directory and what to do.
    fn journal_error_text(&self) -> String {
        let health = self.journal.health();
        let kind = health.kind.unwrap_or(pool_journal::WriteErrorKind::Other);
        format!(
            "journal {} cannot take writes: {}; nothing was recorded. Reads keep working and the \
             daemon retries by itself: {}",
            self.journal.dir().display(),
            health.error.unwrap_or_else(|| "unknown error".into()),
            kind.remedy()
        )
    }

    /// Publishes the durable state with the journal's view and the readiness overlay.
    fn publish(&self) {
        let journal = match (&self.journal_failure, &self.degraded) {
            (Some(failure), _) => JournalView {
                writable: false,
                error: Some(failure.clone()),
                failed: Some(failure.clone()),
                ..JournalView::default()
            },
            (None, Some(d)) => JournalView {
                writable: false,
                error: Some(d.error.clone()),
                kind: Some(d.kind),
                since_ms: Some(d.since_ms),
                queued: d.queue.len(),
                failed: None,
            },
            (None, None) => JournalView::writable(),
        };
        let unready = self
            .degraded
            .as_ref()
            .map(|d| Arc::new(d.unready.clone()))
            .unwrap_or_default();
        self.registry.publish(Published {
            state: self.state.clone(),
            gpu: self.gpu.clone(),
            journal,
            unready,
        });
    }

    /// The journal refused the batch `decided`: answer its callers, keep its observations,
    /// and refuse changes until the journal takes writes again.
    fn enter_degraded(&mut self, error: String, kind: &'static str, decided: Vec<Decided>) {
        if self.degraded.is_none() {
            tracing::error!(
                error = %error,
                "the journal cannot take writes: changes are refused (JOURNAL_UNAVAILABLE) and \
                 observations are kept in memory until it can again"
            );
            self.degraded = Some(degraded::Degraded::new(
                error.clone(),
                kind,
                self.clock.now_ms(),
            ));
        }
        for d in decided {
            if let Some(reply) = d.reply {
                let _ = reply.send(Err(NodeError::JournalUnavailable(error.clone())));
            }
            if let Some(waiter) = d.waiter {
                answer_waiter(waiter, Err(NodeError::JournalUnavailable(error.clone())));
            }
            if let (Some(queued), Some(degraded)) = (d.retry, self.degraded.as_mut()) {
                degraded.keep(queued, &self.state, &self.policy);
            }
        }
        self.publish();
    }

    /// While degraded: keeps observations, refuses commands.
    fn hold(&mut self, submissions: Vec<Submission>) {
        let now_ms = self.clock.now_ms();
        let Some(degraded) = self.degraded.as_mut() else {
            return;
        };
        let error = degraded.error.clone();
        for submission in submissions {
            if let Input::Observation(_) = &submission.input {
                let queued = degraded::Queued {
                    input: submission.input.clone(),
                    cause: submission.cause,
                    observed_ms: submission.observed_ms.unwrap_or(now_ms),
                };
                degraded.keep(queued, &self.state, &self.policy);
            }
            if let Some(reply) = submission.reply {
                let _ = reply.send(Err(NodeError::JournalUnavailable(error.clone())));
            }
            if let Some(waiter) = submission.waiter {
                answer_waiter(waiter, Err(NodeError::JournalUnavailable(error.clone())));
            }
        }
        self.publish();
    }

    /// Once the journal takes writes again: records the kept observations, in order, with
    /// their observed times, and leaves the degraded state.
    async fn flush_queued(&mut self) {
        if !self.journal.health().writable {
            return;
        }
        let Some(mut degraded) = self.degraded.take() else {
            return;
        };
        let queued: Vec<Submission> = degraded
            .queue
            .drain(..)
            .map(|q| Submission {
                input: q.input,
                cause: q.cause,
                reply: None,
                waiter: None,
                observed_ms: Some(q.observed_ms),
            })
            .collect();
        let count = queued.len();
        let mut queued = queued.into_iter().peekable();
        while queued.peek().is_some() {
            let chunk: Vec<Submission> = queued.by_ref().take(BATCH_INPUTS_MAX).collect();
            self.process_batch(chunk).await;
            if let Some(again) = self.degraded.as_mut() {
                // Unavailable again: what was not recorded waits, in order, before anything
                // kept meanwhile.
                let rest: Vec<degraded::Queued> = queued
                    .map(|s| degraded::Queued {
                        input: s.input,
                        cause: s.cause,
                        observed_ms: s.observed_ms.unwrap_or(degraded.since_ms),
                    })
                    .collect();
                for q in rest.into_iter().rev() {
                    again.queue.push_front(q);
                }
                return;
            }
        }
        let cause = self.state.last_seq();
        for effect in degraded.held_effects.drain(..) {
            self.supervisor.dispatch(cause, effect);
        }
        tracing::warn!(
            queued = count,
            dropped = degraded.dropped,
            down_ms = self.clock.now_ms().saturating_sub(degraded.since_ms),
            "the journal takes writes again; the observations kept meanwhile were recorded"
        );
        self.publish();
    }

    fn register_waiter(&mut self, pool_id: &PoolId, waiter: Waiter, no_op: bool) {
        if no_op {
            // Nothing happened: answer from the state as it is.
            match waiter {
                Waiter::Preload { reply, .. } => {
                    let result = match self.state.pool(pool_id.as_str()) {
                        Some(pool) if pool.serving() => Ok(PreloadOutcome {
                            status: pool.status(),
                            ready_ms: 0,
                        }),
                        Some(pool) => Err(NodeError::Rejected(Rejection::PoolBusy {
                            pool_id: pool_id.to_string(),
                            operation: format!("phase {}", pool.status().phase.as_str()),
                        })),
                        None => Err(NodeError::Rejected(Rejection::PoolNotFound {
                            pool_id: pool_id.to_string(),
                        })),
                    };
                    let _ = reply.send(result);
                }
                Waiter::Removed { reply } => {
                    let _ = reply.send(Ok(()));
                }
                Waiter::Reload { reply, .. } => {
                    let result = self
                        .state
                        .status(pool_id.as_str())
                        .map(|status| ReloadOutcome {
                            status,
                            duration_ms: 0,
                            noop: true,
                        })
                        .ok_or_else(|| {
                            NodeError::Rejected(Rejection::PoolNotFound {
                                pool_id: pool_id.to_string(),
                            })
                        });
                    let _ = reply.send(result);
                }
            }
            return;
        }
        let list = self.waiters.entry(pool_id.clone()).or_default();
        if list.len() >= WAITERS_PER_POOL_MAX {
            answer_waiter(
                waiter,
                Err(NodeError::Timeout(format!(
                    "pool '{pool_id}': more than {WAITERS_PER_POOL_MAX} requests wait on it; poll GET /v2/pools/{pool_id} instead"
                ))),
            );
            return;
        }
        list.push(waiter);
    }

    /// The `DELETE`s waiting on `pool_id`, as callbacks for the supervisor to call once the
    /// pool's files are removed.
    fn take_removal_waiters(&mut self, pool_id: &PoolId) -> Vec<crate::supervisor::Done> {
        let Some(list) = self.waiters.remove(pool_id) else {
            return Vec::new();
        };
        let mut done: Vec<crate::supervisor::Done> = Vec::new();
        let mut kept = Vec::new();
        for waiter in list {
            match waiter {
                Waiter::Removed { reply } => done.push(Box::new(move || {
                    let _ = reply.send(Ok(()));
                })),
                other => kept.push(other),
            }
        }
        if !kept.is_empty() {
            self.waiters.insert(pool_id.clone(), kept);
        }
        done
    }

    fn resolve_waiters(&mut self, envelope: &PoolEnvelope) {
        let Some(pool_id) = envelope.pool_id.as_deref() else {
            return;
        };
        let Some(list) = self.waiters.get_mut(pool_id) else {
            return;
        };
        let pool = self.state.pool(pool_id);
        let engine_gone = pool.is_none_or(|p| p.pid().is_none());
        let mut kept = Vec::with_capacity(list.len());
        for waiter in list.drain(..) {
            match waiter {
                Waiter::Preload {
                    reply,
                    since_ms,
                    failed,
                } => {
                    let failed = failed.or_else(|| preload_failure(pool_id, &envelope.event));
                    match (&envelope.event, failed) {
                        (Event::PoolReady { .. }, _) => {
                            let status = pool.map(|p| p.status());
                            let result = status.map_or_else(
                                || {
                                    Err(NodeError::Rejected(Rejection::PoolNotFound {
                                        pool_id: pool_id.to_string(),
                                    }))
                                },
                                |status| {
                                    Ok(PreloadOutcome {
                                        status,
                                        ready_ms: envelope.ts_ms.saturating_sub(since_ms),
                                    })
                                },
                            );
                            let _ = reply.send(result);
                        }
                        (_, Some(error)) if engine_gone => {
                            let _ = reply.send(Err(error));
                        }
                        (_, failed) => kept.push(Waiter::Preload {
                            reply,
                            since_ms,
                            failed,
                        }),
                    }
                }
                // Answered once the pool's files are gone too (see `process`).
                Waiter::Removed { reply } => kept.push(Waiter::Removed { reply }),
                Waiter::Reload { reply, failed } => {
                    match reload_step(pool_id, &envelope.event, failed) {
                        ReloadStep::Wait(failed) => kept.push(Waiter::Reload { reply, failed }),
                        ReloadStep::Done(result) => {
                            let result = result.and_then(|duration_ms| {
                                pool.map(|p| ReloadOutcome {
                                    status: p.status(),
                                    duration_ms,
                                    noop: false,
                                })
                                .ok_or_else(|| {
                                    NodeError::Rejected(Rejection::PoolNotFound {
                                        pool_id: pool_id.to_string(),
                                    })
                                })
                            });
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        }
        if kept.is_empty() {
            self.waiters.remove(pool_id);
        } else if let Some(list) = self.waiters.get_mut(pool_id) {
            *list = kept;
        }
    }
}

/// The error a waiting preload answers when `event` ends its start.
fn preload_failure(pool_id: &str, event: &Event) -> Option<NodeError> {
    match event {
        Event::PreloadFailed {
            reason, failure, ..
        } => Some(NodeError::Failed {
            code: failure.code(),
            reason: format!("pool '{pool_id}': {reason}"),
        }),
        Event::PreloadRejected { code, reason } => Some(NodeError::Failed {
            code: static_code(code),
            reason: format!("pool '{pool_id}': {reason}"),
        }),
        Event::PoolRemoved => Some(NodeError::Rejected(Rejection::PoolNotFound {
            pool_id: pool_id.to_string(),
        })),
        Event::EngineStopRequested { .. } => Some(NodeError::Rejected(Rejection::PoolBusy {
            pool_id: pool_id.to_string(),
            operation: "the engine was asked to stop while it was starting".to_string(),
        })),
        _ => None,
    }
}

/// Maps a recorded code to its static form (unknown codes become `INTERNAL`).
fn static_code(code: &str) -> &'static str {
    const CODES: [&str; 20] = [
        "INVALID_REQUEST",
        "UNAUTHORIZED",
        "BINARY_NOT_ALLOWED",
        "POOL_NOT_FOUND",
        "LEASE_NOT_FOUND",
        "POOL_BUSY",
        "POOL_DRAINING",
        "MODEL_NOT_FOUND",
        "INVALID_DEVICE_MASK",
        "SLOTS_EXHAUSTED",
        "SPAWN_FAILED",
        "HEALTH_TIMEOUT",
        "ENGINE_EXITED",
        "RELOAD_FAILED",
        "CPU_SPILLOVER",
        "POOL_UNREADY",
        "GPU_REQUIRED",
        "INSUFFICIENT_VRAM",
        "JOURNAL_UNAVAILABLE",
        "HISTORY_EXPIRED",
    ];
    CODES
        .iter()
        .copied()
        .chain(["CIRCUIT_OPEN"])
        .find(|c| *c == code)
        .unwrap_or("INTERNAL")
}

fn answer_waiter(waiter: Waiter, error: Result<(), NodeError>) {
    let Err(error) = error else { return };
    match waiter {
        Waiter::Preload { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Waiter::Removed { reply } => {
            let _ = reply.send(Err(error));
        }
        Waiter::Reload { reply, .. } => {
            let _ = reply.send(Err(error));
        }
    }
}

enum ReloadStep {
    /// Not over yet (with the failure to report once the rollback is done).
    Wait(Option<String>),
    /// Over: the duration of a success, or the error.
    Done(Result<u64, NodeError>),
}

/// Where a waiting reload stands after `event`.
fn reload_step(pool_id: &str, event: &Event, failed: Option<String>) -> ReloadStep {
    match event {
        Event::ReloadSucceeded { duration_ms, .. } => ReloadStep::Done(Ok(*duration_ms)),
        Event::ReloadFailed {
            reason,
            stage: pool_core::ReloadStage::Staging,
            ..
        } => ReloadStep::Done(Err(NodeError::Failed {
            code: "MODEL_NOT_FOUND",
            reason: format!("pool '{pool_id}': {reason}; the running engine was not touched"),
        })),
        Event::ReloadFailed {
            reason,
            rolling_back: true,
            ..
        } => ReloadStep::Wait(Some(reason.clone())),
        Event::ReloadFailed { reason, .. } => ReloadStep::Done(Err(NodeError::ReloadFailed {
            reason: format!(
                "pool '{pool_id}': {}{reason}; the pool is not serving, see GET /v2/pools/{pool_id}",
                failed.map(|f| format!("{f}; then ")).unwrap_or_default()
            ),
            rolled_back: false,
        })),
        Event::ReloadRolledBack { model_ref, .. } => {
            ReloadStep::Done(Err(NodeError::ReloadFailed {
                reason: format!(
                    "pool '{pool_id}': {}; rolled back: '{model_ref}' serves again",
                    failed.unwrap_or_else(|| "the reload failed".to_string())
                ),
                rolled_back: true,
            }))
        }
        Event::PoolRemoved => ReloadStep::Done(Err(NodeError::Rejected(
            Rejection::PoolNotFound {
                pool_id: pool_id.to_string(),
            },
        ))),
        _ => ReloadStep::Wait(failed),
    }
}

/// The pool an input is about, for waiters.
fn input_pool(input: &Input) -> Option<PoolId> {
    match input {
        Input::Command(
            Command::Preload { pool_id, .. }
            | Command::Remove { pool_id }
            | Command::AcquireLease { pool_id, .. }
            | Command::ReleaseLease { pool_id, .. }
            | Command::Drain { pool_id, .. }
            | Command::Reload { pool_id, .. }
            | Command::Stop { pool_id }
            | Command::ResetBreaker { pool_id, .. }
            | Command::RegisterHandoff { pool_id, .. },
        ) => Some(pool_id.clone()),
        Input::Observation(_) => None,
    }
}

/// The warning of a drain that reached its deadline: the leases still held, by id (their
/// requests are cut short). `before` is the registry before the batch that holds `stop`, and
/// `earlier` the events of that batch before it (a lease released there is not held).
fn warn_drain_deadline(before: &State, earlier: &[PoolEnvelope], stop: &PoolEnvelope) {
    let Some(pool_id) = stop.pool_id.as_deref() else {
        return;
    };
    let released: Vec<&str> = earlier
        .iter()
        .filter(|e| e.pool_id.as_deref() == Some(pool_id))
        .filter_map(|e| match &e.event {
            Event::LeaseReleased { lease_id } => Some(lease_id.as_str()),
            _ => None,
        })
        .collect();
    let held: Vec<&str> = before
        .pool(pool_id)
        .map(|pool| {
            pool.leases
                .iter()
                .map(|lease| lease.as_str())
                .filter(|lease| !released.contains(lease))
                .collect()
        })
        .unwrap_or_default();
    tracing::warn!(
        seq = stop.seq,
        pool_id,
        leases_held = held.len(),
        "drain deadline reached with {} lease(s) still held ({}): force-stopping the engine; \
         requests on those leases are cut short",
        held.len(),
        held.join(", ")
    );
}

/// Every journaled event is logged once, at a level that fits (a crash, a failed preload:
/// warn; the breaker opening, a restart storm: error; the rest: info), with the pool's
/// `engine, engine_version, device_mask, model_id, restart_count, backoff_ms, last_error` as
/// structured fields where the registry after the batch (`state`) knows them.
fn log_event(envelope: &PoolEnvelope, state: &State) {
    let pool_id = envelope.pool_id.as_deref().unwrap_or("-");
    let kind = envelope.event.kind();
    let seq = envelope.seq;
    // The event's own fields (the delay chosen, the reason, a storm's remediation hint), as
    // the journal exports them; the engine of a preload is left out (it is long, and in the
    // journal).
    let fields = match &envelope.event {
        Event::PreloadRequested { .. } | Event::EngineStartRequested { .. } => String::new(),
        event => pool_journal::event_to_json(event)
            .map(|value| value.to_string())
            .unwrap_or_default(),
    };
    let status = envelope.pool_id.as_deref().and_then(|id| state.status(id));
    let status = status.as_ref();
    let engine = status.and_then(|s| s.engine.as_deref());
    let engine_version = status.and_then(|s| s.engine_version.as_deref());
    let device_mask = status.and_then(|s| s.device_mask.as_deref());
    let model_id = status.and_then(|s| s.model_ref.as_deref());
    let restart_count = status.map(|s| s.restart_count);
    // The delay of this event if it chose one, else the pool's while it waits in backoff.
    let backoff_ms = match &envelope.event {
        Event::RestartScheduled { delay_ms, .. } => Some(*delay_ms),
        _ => status.map(|s| s.backoff_ms).filter(|ms| *ms > 0),
    };
    let last_error = match &envelope.event {
        Event::PreloadFailed { reason, .. } => Some(reason.as_str()),
        _ => status.and_then(|s| s.last_error.as_deref()),
    };
    let reason = match &envelope.event {
        Event::EngineExited { reason, .. } | Event::RestartScheduled { reason, .. } => {
            Some(reason.as_str())
        }
        _ => None,
    };
    let hint = match &envelope.event {
        Event::RestartStormDetected { hint, .. } => Some(hint.as_str()),
        _ => None,
    };
    let level = match &envelope.event {
        Event::EngineExited { reason, .. } if *reason != pool_core::ExitReason::Graceful => {
            tracing::Level::WARN
        }
        Event::PreloadFailed { .. } => tracing::Level::WARN,
        Event::CircuitOpened { .. } | Event::RestartStormDetected { .. } => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                $level,
                seq,
                pool_id,
                kind,
                engine,
                engine_version,
                device_mask,
                model_id,
                restart_count,
                backoff_ms,
                last_error,
                reason,
                hint,
                %fields,
                "event"
            )
        };
    }
    match level {
        tracing::Level::ERROR => emit!(tracing::Level::ERROR),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        _ => emit!(tracing::Level::INFO),
    }
}
