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
//! Files: `start.rs` (opening, replay, the start recorded, reconciliation), `handle.rs` (what
//! callers ask), `actor.rs` (the loop and its batch), `waiters.rs` (waits answered by events),
//! `degraded.rs` (a journal that cannot take writes), `log.rs` (a line per fact),
//! `placement.rs` (what a preload's fit check reads).
//!
//! Owns: the `State`, the journal writer, the waiters of preloads and removals.
//! Never: touches an engine, a file of the runtime directory or a socket (the supervisor does);
//! its own I/O is the journal and, for a preload's fit check, two reads (`placement.rs`: the
//! model file's size, `/proc/meminfo`). Never publishes or answers before the flush, never
//! panics on an input.

mod actor;
mod degraded;
mod handle;
mod log;
mod placement;
mod start;
mod surge_port;
#[cfg(test)]
mod tests;
mod waiters;

use actor::Actor;
use start::{open_and_replay, reconcile_runtime, record_start, supervisor_of};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{resume_effects, Policy};
use pool_journal::JournalError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::schema::PoolJournal;
use crate::supervisor::files::RuntimeDirs;

pub use crate::port::{
    Committed, GpuSummary, Inbox, JournalReport, JournalView, NodeError, PreloadOutcome, Published,
    Registry, ReloadOutcome, Reporter,
};

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
    /// Where the node has a GPU inventory: before a restart, trial or reload on the GPUs of a
    /// pool's last engine, the wait for its memory (`[gpu] release_timeout_ms`).
    pub release_check: Option<crate::gpu::release::ReleaseCheck>,
    /// `[gpu] allow_sharing`: two pools may claim the same GPU.
    pub allow_gpu_sharing: bool,
    /// What may be started (`allowed_binaries`, `[engines] env_allow`), checked again before
    /// every spawn.
    pub admission: Arc<crate::supervisor::admission::Admission>,
    /// A cgroup v2 leaf per engine (`engines.cgroup`), where one could be set up.
    pub cgroups: Option<Arc<crate::supervisor::cgroup::EngineCgroups>>,
    /// The group that may read the engine logs (`engines.logs_group`), resolved.
    pub logs_gid: Option<u32>,
    /// What retention keeps for the cluster publisher (the events NATS has not acknowledged,
    /// up to `[cluster] unpublished_bytes_max`); `None` without `[cluster] nats_url`.
    pub retention_hold: Option<pool_journal::RetentionHold>,
    /// `[reload] surge_ports`: the ports a surge's new engine may listen on; `None`: no surge.
    pub surge_ports: Option<std::ops::RangeInclusive<u16>>,
    /// `[logs]`: engine log rotation.
    pub logs: crate::config::LogsSettings,
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
    /// `[reload] surge_ports` (see [`surge_port`]).
    surge_ports: Option<std::ops::RangeInclusive<u16>>,
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
            surge_ports: settings.surge_ports.clone(),
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
        self.shutdown_then(reason, async {}).await;
    }

    /// [`Node::shutdown`], running `before_close` once the actor recorded its stop and ended,
    /// before the journal is closed (the cluster publisher publishes the last events then).
    pub async fn shutdown_then(
        self,
        reason: &str,
        before_close: impl std::future::Future<Output = ()>,
    ) {
        self.handle.registry().announce_stopping();
        self.handle.inbox.shutdown(reason.to_string()).await;
        let _ = self.task.await;
        before_close.await;
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
