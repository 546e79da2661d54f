//! The registry projection: [`State`], the fold of every event (`evolve`).
//!
//! Owns: the fine-grained internal state of each pool (systemd-style: which operation is in
//! flight, which attempt, the engine process record, supervision counters) and the node facts.
//! Never: changes itself outside `evolve`, reads a clock, or holds anything that is not
//! rebuilt from events (it is snapshotted with bincode: BTreeMap only, no skipped fields).
//!
//! *Invariant:* everything here is a pure function of the journal's events; a snapshot
//! round-tripped through bincode and folded further equals the state folded directly.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::engine::{GpuInfo, Handoff, PreparedEngine};
use crate::event::{
    ExitReason, FailureClass, ReloadStage, ReloadStrategy, StartPurpose, StopReason,
};
use crate::gpu::{Inventory, MigDeviceInfo};
use crate::ids::{LeaseId, PoolId};
use crate::status::{BreakerState, PoolStatus};

/// The format version of [`State`] snapshots; bump it when `State` changes shape (an old
/// snapshot is then ignored and the journal replayed in full).
/// 2: `Node::mig_devices`. 3: `EngineProcess::boot_id` and `exe`. 4: `Node::gpu_faults` and
/// `quarantined`. 5: `PreparedEngine::progress`. 6: `Pool::lane` and `second`, `Reload::strategy`.
pub const STATE_SNAPSHOT_VERSION: u8 = 6;

/// The registry: all pools plus node-level facts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    /// Every known pool, by id (sorted: statuses come out sorted).
    pub pools: BTreeMap<PoolId, Pool>,
    /// Node-level facts.
    pub node: Node,
    /// The seq of the last event folded.
    pub last_seq: u64,
    /// Events that could not apply (a pool event for an unknown pool or without a valid pool
    /// id, a node event stamped with a pool). Counted, never fatal.
    pub anomalies: u64,
    /// The seq of the last anomaly, to find it in the journal.
    pub last_anomaly_seq: Option<u64>,
}

/// Facts about the node and the daemon.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Node {
    /// Version of the running daemon (from `DaemonStarted`).
    pub daemon_version: Option<String>,
    /// Pid of the running daemon.
    pub daemon_pid: Option<u32>,
    /// When it started.
    pub started_at_ms: Option<u64>,
    /// When it last stopped, and why (cleared by `DaemonStarted`).
    pub stopped: Option<(u64, String)>,
    /// The last GPU inventory.
    pub gpus: Vec<GpuInfo>,
    /// The last MIG device inventory (`MigInventoryObserved`).
    pub mig_devices: Vec<MigDeviceInfo>,
    /// Why no GPU is usable, when a GPU is required: preloads answer `GPU_REQUIRED`.
    pub preflight_error: Option<String>,
    /// Xid events seen.
    pub xid_total: u64,
    /// Driver resets seen.
    pub driver_reset_total: u64,
    /// The last invalid handoff: (file, field, reason).
    pub last_handoff_rejection: Option<(String, String, String)>,
    /// Per GPU UUID: when its recent hardware-class faults (hardware Xids, driver resets) were
    /// recorded, oldest first, at most `gpu::GPU_FAULTS_MAX`; emptied by `GpuUnquarantined`.
    pub gpu_faults: BTreeMap<String, Vec<u64>>,
    /// Quarantined GPUs, by UUID.
    pub quarantined: BTreeMap<String, Quarantine>,
}

/// A GPU taken out of service (`GpuQuarantined`) until an operator ends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// When.
    pub since_ms: u64,
    /// The hardware faults within the window that caused it.
    pub faults: u32,
}

impl Node {
    /// The GPUs and MIG devices, as masks resolve against them.
    pub fn inventory(&self) -> Inventory<'_> {
        Inventory {
            gpus: &self.gpus,
            mig_devices: &self.mig_devices,
        }
    }

    /// Hardware faults of `gpu_uuid` recorded at or after `since_ms`.
    pub fn gpu_faults_since(&self, gpu_uuid: &str, since_ms: u64) -> u32 {
        let count = self.gpu_faults.get(gpu_uuid).map_or(0, |times| {
            times.iter().filter(|&&at| at >= since_ms).count()
        });
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// The first quarantined GPU that a pool with `mask` may be using (no mask: every GPU).
    pub fn quarantined_gpu(&self, mask: Option<&str>) -> Option<&str> {
        self.quarantined
            .keys()
            .find(|uuid| crate::gpu::mask_covers_in(mask, uuid, self.inventory()))
            .map(String::as_str)
    }
}

/// Why a start is under way (an internal superset of [`StartPurpose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartKind {
    /// `PreloadRequested`.
    Preload,
    /// `EngineStartRequested` with this purpose.
    Again(StartPurpose),
}

/// What a pool is doing: the fine-grained state behind the public phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Activity {
    /// Known, never started.
    Registered,
    /// A start is in flight: before `EngineSpawned` (`Pool::process` is `None`), then waiting
    /// for health, then (`health_passed`) for the handoff file.
    Starting {
        /// Why.
        kind: StartKind,
        /// Restart number (0 for a preload or reload start).
        attempt: u32,
        /// Health has passed; waiting for `HandoffWritten`.
        health_passed: bool,
        /// When the health wait gives up (from `EngineSpawned`).
        health_deadline_at_ms: Option<u64>,
        /// When the start was requested (for durations).
        requested_at_ms: u64,
    },
    /// Ready and serving (possibly draining: see `Pool::drain`).
    Running,
    /// We asked the engine to stop and wait for it.
    Stopping {
        /// What happens once stopped.
        reason: StopReason,
        /// SIGTERM grace asked for (to re-issue the stop after a daemon restart).
        grace_ms: u64,
    },
    /// Stopped on request (or by a drain, or a graceful exit).
    Stopped,
    /// Waiting for a restart.
    Backoff {
        /// The restart number it will be.
        attempt: u32,
        /// Not before this time.
        not_before_ms: u64,
        /// The failure that caused it.
        reason: ExitReason,
        /// Seq of its `RestartScheduled` (the timer's token).
        token: u64,
    },
    /// The breaker is open (or half-open without an engine to try).
    CircuitOpen,
    /// The last start or run failed and nothing is scheduled.
    Failed,
}

/// The engine process we believe runs for the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineProcess {
    /// Its pid.
    pub pid: u32,
    /// `/proc` start time ticks (0 = unknown, for handoff engines).
    pub start_time: u64,
    /// Log file ("" for handoff engines).
    pub log_path: String,
    /// Pid file ("" for handoff engines).
    pub pid_path: String,
    /// Seq of `EngineSpawned` (or of the event that registered it).
    pub spawned_seq: u64,
    /// When it was spawned.
    pub spawned_at_ms: u64,
    /// Confirmed alive after a daemon restart (`EngineAdopted`).
    pub adopted: bool,
    /// Not started by us (handoff): we watch it but never restart it.
    pub external: bool,
    /// The boot it was spawned in (`EngineSpawned::boot_id`); `None` when unknown (handoff
    /// engines, records before format version 4).
    pub boot_id: Option<String>,
    /// The executable it ran once it served (`HealthCheckPassed::exe`); `None` until then,
    /// or when unknown.
    pub exe: Option<String>,
}

/// A drain in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// When it was requested.
    pub requested_at_ms: u64,
    /// The absolute deadline.
    pub deadline_at_ms: u64,
    /// Seq of `DrainRequested` (the deadline timer's token).
    pub token: u64,
    /// Leases held when the stop was requested.
    pub leases_at_stop: u32,
}

/// A reload in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// Target model.
    pub new_model_ref: String,
    /// Its digest, if given.
    pub digest: Option<String>,
    /// Drain deadline for the old engine (relative).
    pub drain_deadline_ms: u64,
    /// When it was requested.
    pub requested_at_ms: u64,
    /// Seq of `ReloadRequested` (the staging token).
    pub token: u64,
    /// Where it is.
    pub stage: ReloadStage,
    /// The staged model path (after `ModelStaged`).
    pub staged_path: Option<String>,
    /// The engine to roll back to.
    pub old_engine: PreparedEngine,
    /// The model ref to roll back to.
    pub old_model_ref: String,
    /// Its digest.
    pub old_digest: Option<String>,
    /// How the engine is replaced (`ReloadStrategyChosen`; `drain_first` without one).
    pub strategy: ReloadStrategy,
    /// A surge's port.
    pub surge_port: Option<u16>,
}

/// Which set of files an engine of a pool uses: its pid file, log and cgroup leaf, and the
/// shell's worker that spawns, watches and stops it. A pool's engine runs in its lane
/// (`Pool::lane`, `A` until a surge switches); a surge's new engine starts in the other one,
/// so the two never share a file, a leaf or a worker.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// The pool's original files (`<pool>.pid`, `<pool>.log`).
    #[default]
    A,
    /// The other files (`<pool>@b.pid`, `<pool>@b.log`).
    B,
}

impl Lane {
    /// The other lane.
    pub fn other(self) -> Lane {
        match self {
            Lane::A => Lane::B,
            Lane::B => Lane::A,
        }
    }

    /// The suffix of its file names after the pool id: `""` or `"@b"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Lane::A => "",
            Lane::B => "@b",
        }
    }
}

/// What a pool's second engine is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecondRole {
    /// A surge's new engine, starting beside the pool's engine (before the switch).
    Surge,
    /// The old engine after a surge's switch, finishing the leases it held.
    Retiring,
}

/// A pool's second engine: a surge's new one before the switch, the old one after it. It
/// always runs in the lane other than the pool's (`Pool::lane.other()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// What it is for.
    pub role: SecondRole,
    /// The engine it runs.
    pub engine: PreparedEngine,
    /// Surge: the seq of `SurgeStartRequested` (the spawn token). Retiring: the seq of
    /// `SurgeSwitched` (the drain deadline timer's token).
    pub token: u64,
    /// Its process, once spawned (surge) or as it was (retiring).
    pub process: Option<EngineProcess>,
    /// Surge: when its health wait gives up.
    pub health_deadline_at_ms: Option<u64>,
    /// Surge: health passed, waiting for the handoff file.
    pub health_passed: bool,
    /// Its slots (0 until known).
    pub slots_total: u32,
    /// Its version, once reported.
    pub engine_version: Option<String>,
    /// A stop was requested (`SecondStopRequested`); waiting for `SecondEngineEnded`.
    pub stopping: bool,
    /// The stop's SIGTERM grace (to issue it again after a daemon restart).
    pub stop_grace_ms: u64,
    /// Surge: its reload ended while its spawn was in flight: killed once it is spawned.
    pub cancelled: bool,
    /// Retiring: the leases it serves until they are returned.
    pub leases: BTreeSet<LeaseId>,
    /// Retiring: when it is stopped even with leases held.
    pub deadline_at_ms: Option<u64>,
    /// When it was requested (surge) or retired (retiring).
    pub since_ms: u64,
}

impl Second {
    /// A surge's new engine as `SurgeStartRequested` (seq `token`, at `since_ms`) records it:
    /// not spawned yet, nothing known of it.
    pub fn surge(engine: PreparedEngine, token: u64, since_ms: u64) -> Second {
        Second {
            role: SecondRole::Surge,
            engine,
            token,
            process: None,
            health_deadline_at_ms: None,
            health_passed: false,
            slots_total: 0,
            engine_version: None,
            stopping: false,
            stop_grace_ms: 0,
            cancelled: false,
            leases: BTreeSet::new(),
            deadline_at_ms: None,
            since_ms,
        }
    }

    /// Its pid, while a process is known.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Leases it holds.
    pub fn active_leases(&self) -> u32 {
        u32::try_from(self.leases.len()).unwrap_or(u32::MAX)
    }
}

/// One restart in the storm window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartMark {
    /// When.
    pub at_ms: u64,
    /// The failure that caused it.
    pub reason: ExitReason,
}

/// The circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// closed / open / half_open.
    pub state: BreakerState,
    /// The class that opened it.
    pub class: Option<FailureClass>,
    /// How long it was opened for (doubles when a trial fails).
    pub open_ms: u64,
    /// When it half-opens (while open).
    pub half_open_at_ms: Option<u64>,
    /// Seq of `CircuitOpened` (the half-open timer's token).
    pub token: u64,
    /// How often it opened.
    pub opened_total: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            class: None,
            open_ms: 0,
            half_open_at_ms: None,
            token: 0,
            opened_total: 0,
        }
    }
}

/// Restart policy state, rebuilt from events (a daemon restart does not reset it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Supervision {
    /// Restarts since the last backoff reset.
    pub backoff_attempt: u32,
    /// The last delay chosen.
    pub last_delay_ms: u64,
    /// Consecutive GPU-fault failures.
    pub gpu_failures: u32,
    /// Consecutive other failures.
    pub other_failures: u32,
    /// The last failure's reason.
    pub last_failure_reason: Option<ExitReason>,
    /// The breaker.
    pub breaker: Breaker,
    /// Recent restarts, oldest first, at most `RESTART_WINDOW_CAP`.
    pub restarts: Vec<RestartMark>,
}

impl Supervision {
    /// Consecutive failures of `class`.
    pub fn failures(&self, class: FailureClass) -> u32 {
        match class {
            FailureClass::GpuFault => self.gpu_failures,
            FailureClass::Other => self.other_failures,
        }
    }

    /// Restarts at or after `since_ms`.
    pub fn restarts_since(&self, since_ms: u64) -> impl Iterator<Item = &RestartMark> {
        self.restarts.iter().filter(move |m| m.at_ms >= since_ms)
    }
}

/// One pool: internal details behind its [`PoolStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Its id.
    pub id: PoolId,
    /// What it is doing.
    pub activity: Activity,
    /// The prepared engine it (re)starts; `None` for handoff-only pools (not restartable).
    pub engine: Option<PreparedEngine>,
    /// The handoff it was registered from, for external engines.
    pub handoff: Option<Handoff>,
    /// The engine process, while one runs (or we believe so).
    pub process: Option<EngineProcess>,
    /// Seq of the event that requested the current (or last) start: the spawn token.
    pub start_token: u64,
    /// Whether it serves (health passed and the handoff written, or registered by handoff).
    pub ready: bool,
    /// Engine version from the last health check / handoff.
    pub engine_version: Option<String>,
    /// The model it serves (a path or `file:` URI).
    pub model_ref: Option<String>,
    /// That model's digest, when known.
    pub model_digest: Option<String>,
    /// Slots of the engine (0 until known).
    pub slots_total: u32,
    /// Active leases (never more than `SLOTS_MAX`: grants need a free slot).
    pub leases: BTreeSet<LeaseId>,
    /// A drain in progress.
    pub drain: Option<Drain>,
    /// A reload in progress.
    pub reload: Option<Reload>,
    /// The last failure's description.
    pub last_error: Option<String>,
    /// Time of the last recorded healthy answer (ready, adopted, recovered, handoff).
    pub last_heartbeat_ms: Option<u64>,
    /// Restarts done (starts after a failure, trials included).
    pub restart_count: u32,
    /// Failures (crashes, failed starts, hangs, lost engines).
    pub crash_count: u32,
    /// Consecutive failed probes while ready.
    pub probe_failures: u32,
    /// Seq of the event that made it ready (the stability timers' token).
    pub ready_token: u64,
    /// When the backoff attempt resets if still running (from `PoolReady`).
    pub backoff_reset_at_ms: Option<u64>,
    /// When a half-open breaker closes if still running (from `PoolReady`).
    pub breaker_close_at_ms: Option<u64>,
    /// Restart policy state.
    pub supervision: Supervision,
    /// The handoff file.
    pub handoff_path: Option<String>,
    /// VRAM used by the engine, as last journaled.
    pub vram_used_bytes: Option<u64>,
    /// Device mask violations seen.
    pub mask_violations: u32,
    /// Seq of the last event that touched it.
    pub last_seq: u64,
    /// The lane its engine runs in (see [`Lane`]).
    pub lane: Lane,
    /// A second engine: a surge's new one before the switch, or the old one finishing its
    /// leases after it.
    pub second: Option<Second>,
}

impl Pool {
    /// A new pool, registered.
    pub fn new(id: PoolId) -> Pool {
        Pool {
            id,
            activity: Activity::Registered,
            engine: None,
            handoff: None,
            process: None,
            start_token: 0,
            ready: false,
            engine_version: None,
            model_ref: None,
            model_digest: None,
            slots_total: 0,
            leases: BTreeSet::new(),
            drain: None,
            reload: None,
            last_error: None,
            last_heartbeat_ms: None,
            restart_count: 0,
            crash_count: 0,
            probe_failures: 0,
            ready_token: 0,
            backoff_reset_at_ms: None,
            breaker_close_at_ms: None,
            supervision: Supervision::default(),
            handoff_path: None,
            vram_used_bytes: None,
            mask_violations: 0,
            last_seq: 0,
            lane: Lane::A,
            second: None,
        }
    }

    /// The second engine's pid, while one is known.
    pub fn second_pid(&self) -> Option<u32> {
        self.second.as_ref().and_then(Second::pid)
    }

    /// Whether `pid` is the second engine's.
    pub fn is_second(&self, pid: u32) -> bool {
        self.second_pid() == Some(pid)
    }

    /// The address new leases are served at: the engine's URL, or the handed-off one.
    pub fn url(&self) -> Option<String> {
        match (&self.engine, &self.handoff) {
            (Some(engine), _) => Some(engine.url()),
            (None, Some(handoff)) => Some(handoff.url.clone()),
            _ => None,
        }
    }

    /// The running engine's pid.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Active leases as a count.
    pub fn active_leases(&self) -> u32 {
        u32::try_from(self.leases.len()).unwrap_or(u32::MAX)
    }

    /// Free slots: `slots_total - active_leases`, clamped to `0..=slots_total`; 0 when not ready.
    pub fn slots_free(&self) -> u32 {
        // An unready pool lends nothing: it keeps `slots_total` for display, but an
        // orchestrator reading `slots_free` must never place work on it.
        if !self.ready {
            return 0;
        }
        self.slots_total.saturating_sub(self.active_leases())
    }

    /// The device mask in effect.
    pub fn device_mask(&self) -> Option<&str> {
        self.engine
            .as_ref()
            .and_then(|e| e.device_mask.as_deref())
            .or_else(|| self.handoff.as_ref().and_then(|h| h.device_mask.as_deref()))
    }

    /// Whether a start, stop, drain or reload is in flight (a conflicting operation).
    pub fn busy(&self) -> bool {
        matches!(
            self.activity,
            Activity::Starting { .. } | Activity::Stopping { .. }
        ) || self.drain.is_some()
            || self.reload.is_some()
            || self.second.is_some()
    }

    /// Whether it accepts leases now.
    pub fn serving(&self) -> bool {
        self.ready && matches!(self.activity, Activity::Running)
    }

    /// Its public status.
    pub fn status(&self) -> PoolStatus {
        crate::status::project(self)
    }
}

impl State {
    /// An empty registry.
    pub fn new() -> State {
        State::default()
    }

    /// A pool by id (an invalid id is simply not found).
    pub fn pool(&self, id: &str) -> Option<&Pool> {
        self.pools.get(id)
    }

    /// A pool's public status.
    pub fn status(&self, id: &str) -> Option<PoolStatus> {
        self.pool(id).map(Pool::status)
    }

    /// All statuses, sorted by pool id.
    pub fn statuses(&self) -> Vec<PoolStatus> {
        self.pools.values().map(Pool::status).collect()
    }

    /// The seq of the last event folded.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Active leases of a pool; an unknown pool has 0.
    pub fn active_leases(&self, id: &str) -> u32 {
        self.pool(id).map_or(0, Pool::active_leases)
    }

    /// Folds one event (same as [`crate::evolve()`]).
    pub fn apply(self, stamp: crate::event::Stamp<'_>, event: &crate::event::Event) -> State {
        crate::evolve::evolve(self, stamp, event)
    }

    /// [`evolve`](crate::evolve::evolve) in place: the same fold without moving the state in and
    /// out (replay of long journals uses this).
    pub fn apply_mut(&mut self, stamp: crate::event::Stamp<'_>, event: &crate::event::Event) {
        crate::evolve::evolve_in_place(self, stamp, event);
    }
}
