//! The events: the journal's ground truth. Every lifecycle transition of a pool or of the node
//! is one [`Event`]; the registry is their fold (`evolve`).
//!
//! Owns: the event vocabulary and its serde shape (bincode in the journal, JSON in exports).
//! Never: holds behaviour beyond naming (`kind`, `is_node_event`); deciding is `decide`'s job,
//! folding is `evolve`'s.

use serde::{Deserialize, Serialize};

use crate::engine::{GpuInfo, Handoff, PreparedEngine};
use crate::gpu::MigDeviceInfo;
use crate::ids::{LeaseId, PoolId};

/// The format version of [`Event`] as encoded in the journal. Bump it (and add an upcaster in
/// the journal schema) whenever a variant or a field changes.
///
/// - 1: the first.
/// - 2: appends `MigInventoryObserved` and the start failure `CpuSpillover`.
/// - 3: appends `JournalLossAccepted` (written by `journal repair --accept-loss`) and
///   `UntrackedEngineStopped` (start-up's reconciliation of the runtime directory).
/// - 4: the engine's identity survives launchers and upgrades: `EngineSpawned` gains
///   `boot_id`, `HealthCheckPassed` gains `exe` (both reshaped: older records are upcast with
///   `None`); the start failure `PortInUse`, the exit reason `ExitReason::Stalled`, the
///   events `GpuMemoryReleased` and `GpuMemoryStuck`, and GPU quarantine's `GpuQuarantined`,
///   `GpuUnquarantined` and `RestartHeld` are appended.
/// - 5: the prepared engine gains `progress` (its declared progress probe, a last `Option`
///   field), which reshapes `PreloadRequested` and `EngineStartRequested`: older records are
///   upcast with `None`.
///
/// - 6: reload without a gap: `ReloadStrategyChosen`, `SurgeStartRequested`, `SurgeSpawned`,
///   `SurgeHealthPassed`, `SurgeSwitched`, `SecondStopRequested` and `SecondEngineEnded` are
///   appended, and so are the reload stage `ReloadStage::Surging` and the types they use.
///
/// Versions 2, 3 and 6 only appended variants; versions 4 and 5 reshaped some, so a record of an
/// older version decodes through the frozen shapes of the schema's upcaster in `src/schema.rs`.
pub const EVENT_FORMAT_VERSION: u8 = 6;

/// Why an engine process ended (SPEC section 7). The reason is kept apart from the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Exit code 0 without a stop request: not restarted.
    Graceful,
    /// Non-zero exit code.
    Crash,
    /// Death by a signal we did not send (SIGSEGV, SIGABRT, ...).
    Signal,
    /// Host OOM kill (SIGKILL not sent by us, or the cgroup's oom_kill counter moved).
    OomKilled,
    /// "CUDA error" in the engine log.
    CudaError,
    /// "out of memory" on the GPU in the engine log.
    VramOom,
    /// Xid in the log or from NVML, driver reset.
    DriverError,
    /// The engine stopped answering its health probe.
    HealthTimeout,
    /// Nothing tells.
    Unknown,
    /// The engine reported work in progress (a slot processing, requests running) while it
    /// made none for `[health] stall_after_ms`, with leases held: stopped as hung although
    /// its health route still answers. Appended in version 4.
    Stalled,
}

impl ExitReason {
    /// The breaker's failure class of this reason.
    pub fn class(self) -> FailureClass {
        match self {
            ExitReason::CudaError | ExitReason::VramOom | ExitReason::DriverError => {
                FailureClass::GpuFault
            }
            _ => FailureClass::Other,
        }
    }

    /// The snake_case name (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Graceful => "graceful",
            ExitReason::Crash => "crash",
            ExitReason::Signal => "signal",
            ExitReason::OomKilled => "oom_killed",
            ExitReason::CudaError => "cuda_error",
            ExitReason::VramOom => "vram_oom",
            ExitReason::DriverError => "driver_error",
            ExitReason::HealthTimeout => "health_timeout",
            ExitReason::Unknown => "unknown",
            ExitReason::Stalled => "stalled",
        }
    }
}

/// The breaker counts consecutive failures per class, so that GPU faults interleaved with
/// other exits still open it (SPEC section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// cuda_error, vram_oom, driver_error.
    GpuFault,
    /// Everything else.
    Other,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOutcome {
    /// Leases reached 0 before the deadline.
    Graceful,
    /// The deadline passed with leases still held.
    ForceStopped,
}

/// Why we asked an engine to stop. Decides what happens once it has stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `Command::Stop`: the pool stays, phase `stopped`.
    Requested,
    /// `Command::Remove`: `PoolRemoved` follows.
    Remove,
    /// A drain whose leases reached 0: `DrainCompleted{graceful}` follows.
    Drained,
    /// A drain whose deadline passed: `DrainCompleted{force_stopped}` follows.
    DrainDeadline,
    /// The engine is faulty (hung, Xid): counted as a failure at once, restart policy follows.
    Failure {
        /// The failure's reason (`health_timeout`, `driver_error`).
        reason: ExitReason,
        /// Human detail for `last_error`.
        detail: String,
    },
    /// A reload's new engine failed but still runs: once it is gone, the old engine starts
    /// again (the rollback), so the two never run at once. (Appended: variants keep their
    /// order.)
    ReloadFailed {
        /// Human detail for `last_error`.
        detail: String,
    },
}

/// Why an engine is being started (`EngineStartRequested`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPurpose {
    /// A restart after a failure and its backoff (or a manual breaker reset).
    Restart,
    /// The breaker's half-open trial start.
    Trial,
    /// A reload's new engine.
    Reload,
    /// A failed reload's old engine, started again.
    Rollback,
}

/// Why a start failed (the HTTP error code a waiting preload answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFailure {
    /// The process could not be spawned (`SPAWN_FAILED`).
    SpawnFailed,
    /// No healthy answer before the preload deadline (`HEALTH_TIMEOUT`).
    HealthTimeout,
    /// The engine exited or vanished while starting (`ENGINE_EXITED`).
    EngineExited,
    /// A GPU fault (Xid) hit the engine while starting (`ENGINE_EXITED`).
    GpuFault,
    /// The handoff file could not be written (`SPAWN_FAILED`).
    HandoffFailed,
    /// With a GPU required, the engine is not on the GPUs of its mask (`CPU_SPILLOVER`): NVML
    /// did not list it (its pid or a process of its session) on a GPU or MIG device of its mask
    /// within `[gpu] placement_timeout_ms` after its health passed, or its log said that it
    /// found no usable GPU ("no CUDA-capable device is detected", "no usable GPU found") while
    /// it started. A CUDA build of llama-server with no visible device serves on the CPU with
    /// `/health` 200 (OC-POOL-3012). Appended: variants keep their order (bincode encodes the
    /// index).
    ///
    /// Its breaker cause is [`ExitReason::CudaError`] (class [`FailureClass::GpuFault`]): a
    /// placement fault is a GPU fault (the engine's CUDA runtime saw no usable device: a mask
    /// naming no usable device, `CUDA_VISIBLE_DEVICES`, a CPU-only build) that restarting
    /// rarely cures, so it takes the GPU faults' backoff multiplier, counts towards opening
    /// the breaker with them, and a storm of them is a `cuda_storm` whose hint names the
    /// engine build. Not `driver_error` (an Xid or a reset: the GPU itself failed) and not
    /// `unknown` (it would hide among ordinary crashes).
    CpuSpillover,
    /// The engine's port is held by another process (`PORT_IN_USE`): before the spawn a
    /// process not of this pool listened on it, or once the engine answered healthy the
    /// listening socket on its port did not belong to the engine's session (someone else
    /// answered for it). The answer names the holder's pid and command line. Its breaker
    /// cause is [`ExitReason::Crash`] (class [`FailureClass::Other`]): the port may be freed,
    /// so the restart policy tries again with its backoff. Appended (format version 4).
    PortInUse,
}

impl StartFailure {
    /// The SPEC section 5 error code.
    pub fn code(self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            StartFailure::SpawnFailed | StartFailure::HandoffFailed => ErrorCode::SpawnFailed,
            StartFailure::HealthTimeout => ErrorCode::HealthTimeout,
            StartFailure::EngineExited | StartFailure::GpuFault => ErrorCode::EngineExited,
            StartFailure::CpuSpillover => ErrorCode::CpuSpillover,
            StartFailure::PortInUse => ErrorCode::PortInUse,
        }
    }
}

/// Where a reload was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadStage {
    /// Staging the new model; the old engine untouched.
    Staging,
    /// Draining the old engine.
    Draining,
    /// Starting the new engine.
    Starting,
    /// Starting the old engine again.
    RollingBack,
    /// Starting the new engine beside the old one, which still serves (a surge). Appended
    /// (format version 6).
    Surging,
}

/// How a reload replaces the engine (format version 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadStrategy {
    /// Drain the old engine, stop it, start the new one: the pool serves nothing in between.
    DrainFirst,
    /// Start the new engine beside the old one on a port of `[reload] surge_ports`, switch to
    /// it once it is healthy and proven, then let the old one finish its leases.
    Surge,
}

impl ReloadStrategy {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadStrategy::DrainFirst => "drain_first",
            ReloadStrategy::Surge => "surge",
        }
    }
}

/// Why a pool's second engine is being stopped (`SecondStopRequested`, format version 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondStop {
    /// The old engine after a surge's switch: its last lease was returned.
    Drained,
    /// The old engine after a surge's switch: the drain deadline passed with leases held.
    DrainDeadline,
    /// A surge's new engine that failed, or whose reload ended before the switch: killed.
    SurgeEnded,
}

/// How a pool's second engine ended (`SecondEngineEnded`, format version 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondEnd {
    /// Stopped after our request.
    Stopped {
        /// Exited within the grace period.
        graceful: bool,
    },
    /// Exited without a stop request.
    Exited {
        /// Exit code, if it exited.
        exit_code: Option<i32>,
        /// Signal, if killed.
        signal: Option<i32>,
        /// Classified reason.
        reason: ExitReason,
        /// Log tail or other detail.
        detail: String,
    },
    /// Gone after a daemon restart (not found, or not ours any more).
    Lost,
}

/// A restart storm's dominant cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StormClass {
    /// Host OOM kills.
    OomStorm,
    /// VRAM OOMs (kept apart from host OOM, ORCH-3039).
    VramOomStorm,
    /// CUDA errors.
    CudaStorm,
    /// Driver errors / Xids.
    DriverStorm,
    /// Hung engines.
    HangStorm,
    /// Crashes, signals, unknown.
    CrashStorm,
}

impl StormClass {
    /// The classification of a storm whose dominant reason is `reason`.
    pub fn of(reason: ExitReason) -> StormClass {
        match reason {
            ExitReason::OomKilled => StormClass::OomStorm,
            ExitReason::VramOom => StormClass::VramOomStorm,
            ExitReason::CudaError => StormClass::CudaStorm,
            ExitReason::DriverError => StormClass::DriverStorm,
            ExitReason::HealthTimeout | ExitReason::Stalled => StormClass::HangStorm,
            _ => StormClass::CrashStorm,
        }
    }

    /// What an operator should do about it.
    pub fn hint(self) -> &'static str {
        match self {
            StormClass::OomStorm => {
                "host OOM: lower ram use (context, batch, mmap) or give the engine more memory"
            }
            StormClass::VramOomStorm => {
                "VRAM OOM: lower the context or the slots, or free the GPU"
            }
            StormClass::CudaStorm => {
                "CUDA errors: check the driver/CUDA versions and the engine build; the GPU may be faulty"
            }
            StormClass::DriverStorm => {
                "driver errors (Xid): check dmesg and nvidia-smi; the GPU may need a reset"
            }
            StormClass::HangStorm => {
                "engine hangs: check the engine log; raise health.failures_to_crash (or health.stall_after_ms for stalls) if it is only slow"
            }
            StormClass::CrashStorm => {
                "engine crashes: read the engine log tail in last_error; check flags and model file"
            }
        }
    }
}

/// Every event of the journal (SPEC section 4, plus what replay needs, marked *extra*).
///
/// **Append-only, in this order.** bincode encodes the variant *index*, so a variant is never
/// removed, reordered or reshaped; new variants go at the end. To change a shape: bump
/// [`EVENT_FORMAT_VERSION`], keep the old shape as a frozen type in the journal schema and
/// upcast it there (the core only ever sees current events).
///
/// Serde shape: externally tagged, every variant a struct or unit variant, no field named
/// `kind`, so the exporter can flatten it into `{"kind": "EngineSpawned", ...fields}`.
/// Pool events carry their pool in the envelope (`Stamp::pool_id`), not in the event.
///
/// Times: fields ending in `_at_ms` are absolute (ms since the epoch, from `Context::now_ms`
/// at decision time); other `_ms` fields are durations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    // ---- node ----
    /// The daemon started (pid = the daemon's own pid).
    DaemonStarted {
        /// Daemon version.
        version: String,
        /// Daemon pid.
        pid: u32,
    },
    /// The daemon is stopping (engines keep running).
    DaemonStopped {
        /// Why (signal, operator).
        reason: String,
    },
    /// The NVML inventory changed; a non-empty inventory clears a preflight failure.
    GpuInventoryObserved {
        /// All GPUs.
        gpus: Vec<GpuInfo>,
    },
    /// A GPU is required and none is usable: preloads answer `GPU_REQUIRED` until an inventory
    /// with GPUs is observed.
    PreflightFailed {
        /// Why.
        reason: String,
    },
    /// NVML reported an Xid on a GPU.
    GpuXidObserved {
        /// The GPU.
        gpu_uuid: String,
        /// The Xid code.
        xid: u32,
    },
    /// A GPU's driver was reset.
    DriverResetObserved {
        /// The GPU.
        gpu_uuid: String,
    },

    // ---- preload ----
    /// A preload was accepted; creates the pool if it is new. Effect: spawn.
    PreloadRequested {
        /// The whole prepared engine, so restarts and replays can spawn it again.
        engine: Box<PreparedEngine>,
    },
    /// The shell refused a preload for a known pool before spawning (binary not allowed,
    /// insufficient VRAM, invalid mask...). Sets `last_error`.
    PreloadRejected {
        /// The SPEC error code.
        code: String,
        /// Why.
        reason: String,
    },
    /// The engine process exists. Effect: wait for health until `health_deadline_at_ms`.
    EngineSpawned {
        /// Its pid.
        pid: u32,
        /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to tell a
        /// reused pid from our engine when adopting.
        start_time: u64,
        /// Its log file.
        log_path: String,
        /// Its pid file.
        pid_path: String,
        /// 0 for a preload, n for the n-th restart since the last backoff reset.
        attempt: u32,
        /// *extra*: when the health wait gives up (now + `health.preload_timeout_ms`).
        health_deadline_at_ms: u64,
        /// The boot it was spawned in (`/proc/sys/kernel/random/boot_id`): with the pid and
        /// the start time it names the engine across a daemon restart (start times restart
        /// from 0 at each boot). `None` in records of format versions before 4 (and when
        /// the file could not be read); adoption then goes by pid and start time alone, and
        /// says so. (Format version 4.)
        boot_id: Option<String>,
    },
    /// The engine answered healthy. Effect: write the handoff file.
    HealthCheckPassed {
        /// Time from spawn to healthy.
        after_ms: u64,
        /// Version the engine reports.
        engine_version: String,
        /// Slots: prepared, else `/props`, else `--parallel`, else 1 (at most `SLOTS_MAX`).
        slots_total: u32,
        /// The executable the engine runs once it serves (`/proc/<pid>/exe`, read after the
        /// health pass so that a launcher's `exec` is seen), when readable. Adoption logs an
        /// executable that changed since (an upgrade retargeting a symlink) and does not
        /// refuse it. `None` in records of format versions before 4. (Format version 4.)
        exe: Option<String>,
    },
    /// The handoff file is written: the pool is ready.
    PoolReady {
        /// The handoff file.
        handoff_path: String,
        /// *extra*: when the backoff attempt resets if the engine is still running
        /// (ready time + `backoff.reset_after_ms`).
        backoff_reset_at_ms: u64,
        /// *extra*: for a half-open breaker's trial, when it closes if still running
        /// (ready time + `breaker.close_after_stable_ms`).
        breaker_close_at_ms: Option<u64>,
    },
    /// A start failed (spawn error, health timeout, exit while starting). Counts as a failure.
    PreloadFailed {
        /// Human reason, with the engine log tail when there is one; becomes `last_error`.
        reason: String,
        /// Which failure (the code a waiting preload answers).
        failure: StartFailure,
        /// The failure's reason for the breaker's class count.
        cause: ExitReason,
        /// *extra*: a still-running engine the shell must kill (SIGKILL), if any.
        pid: Option<u32>,
    },

    // ---- leases ----
    /// One slot taken.
    LeaseGranted {
        /// Chosen by the shell.
        lease_id: LeaseId,
    },
    /// One slot given back.
    LeaseReleased {
        /// The lease.
        lease_id: LeaseId,
    },

    // ---- supervision ----
    /// A health probe of a ready engine failed.
    HealthCheckFailed {
        /// Consecutive failures so far (at `health.failures_to_crash` the engine is stopped).
        consecutive: u32,
    },
    /// The engine exited without a stop request. Unless `graceful`, counts as a failure:
    /// unready, leases dropped.
    EngineExited {
        /// The pid.
        pid: u32,
        /// Exit code, if it exited.
        exit_code: Option<i32>,
        /// Signal, if killed.
        signal: Option<i32>,
        /// Classified reason.
        reason: ExitReason,
        /// *extra*: log tail or other detail, becomes `last_error`.
        detail: String,
    },
    /// A restart is scheduled. Effect: arm the restart timer.
    RestartScheduled {
        /// The restart's number since the last backoff reset (1 = first).
        attempt: u32,
        /// The chosen delay (jitter included).
        delay_ms: u64,
        /// When the restart may happen.
        not_before_ms: u64,
        /// The failure that caused it.
        reason: ExitReason,
    },
    /// The breaker opened: no restart until it half-opens. Effect: arm the half-open timer.
    CircuitOpened {
        /// Consecutive failures of `class`.
        failures: u32,
        /// How long it stays open.
        open_ms: u64,
        /// The class that opened it.
        class: FailureClass,
        /// *extra*: when it half-opens (now + open_ms).
        half_open_at_ms: u64,
    },
    /// The breaker allows one trial start.
    CircuitHalfOpened,
    /// The trial ran stable: the breaker is closed, failure counts cleared.
    CircuitClosed,
    /// An operator closed the breaker.
    CircuitReset {
        /// Who (from the API).
        by: String,
    },
    /// Too many restarts in the window: the breaker opens (a `CircuitOpened` follows).
    RestartStormDetected {
        /// Restarts in the window.
        restarts: u32,
        /// The window.
        window_ms: u64,
        /// Dominant cause.
        classification: StormClass,
        /// Remediation hint.
        hint: String,
    },
    /// After a daemon restart, the recorded engine is alive and ours: keep it, its leases and
    /// its readiness.
    EngineAdopted {
        /// The pid.
        pid: u32,
    },
    /// After a daemon restart, the recorded engine is gone: handled as a crash.
    EngineLost {
        /// The pid.
        pid: u32,
    },

    // ---- drain / reload ----
    /// Drain started: new leases refused. Effect: arm the deadline timer.
    DrainRequested {
        /// The deadline as requested, relative (ms from the request).
        deadline_ms: u64,
        /// The absolute deadline.
        deadline_at_ms: u64,
    },
    /// Drain finished: engine stopped, pool unready, phase `stopped`.
    DrainCompleted {
        /// Graceful or forced.
        outcome: DrainOutcome,
        /// From `DrainRequested` to now.
        duration_ms: u64,
        /// Leases still held when the engine was stopped.
        leases_at_stop: u32,
    },
    /// We asked the engine to stop. Effect: SIGTERM, wait `grace_ms`, SIGKILL.
    EngineStopRequested {
        /// What happens once stopped.
        reason: StopReason,
        /// *extra*: the engine; `None` when no process runs (the stop completes at once).
        pid: Option<u32>,
        /// *extra*: SIGTERM grace.
        grace_ms: u64,
    },
    /// The engine stopped after our request.
    EngineStopped {
        /// The pid.
        pid: u32,
        /// Exited within the grace period.
        graceful: bool,
    },
    /// A reload was accepted. Effect: stage the model.
    ReloadRequested {
        /// Path or `file:` URI.
        new_model_ref: String,
        /// Optional `sha256:` digest.
        digest: Option<String>,
        /// *extra*: drain deadline for the old engine, relative.
        drain_deadline_ms: u64,
    },
    /// The new model is staged; a drain follows.
    ModelStaged {
        /// Local path of the staged model.
        path: String,
        /// Digest verified, if any.
        digest: Option<String>,
    },
    /// The new engine is ready.
    ReloadSucceeded {
        /// Old model ref.
        old: String,
        /// New model ref.
        new: String,
        /// From `ReloadRequested` to ready.
        duration_ms: u64,
    },
    /// The reload failed at `stage`.
    ReloadFailed {
        /// Why.
        reason: String,
        /// Where.
        stage: ReloadStage,
        /// Whether the old engine is being started again (a `ReloadRolledBack` follows when
        /// it is ready); `false` ends the reload here.
        rolling_back: bool,
        /// *extra*: a still-running new engine the shell must kill, if any.
        pid: Option<u32>,
    },
    /// The old engine is ready again after a failed reload.
    ReloadRolledBack {
        /// The model ref serving again.
        model_ref: String,
        /// From `ReloadRequested` to ready again.
        duration_ms: u64,
    },

    // ---- placement ----
    /// The engine uses a GPU outside its mask (OC-POOL-3020). Sets `last_error`.
    DeviceMaskViolation {
        /// The engine.
        pid: u32,
        /// The GPU outside the mask.
        gpu_uuid: String,
    },
    /// The pool is forgotten.
    PoolRemoved,

    // ---- extra ----
    /// *extra*: an engine started by someone else was announced by a handoff file and found
    /// healthy: the pool is ready with the handoff's slots, mask and version, without a prepared
    /// engine (it cannot be restarted).
    HandoffRegistered {
        /// The document.
        handoff: Box<Handoff>,
        /// The file it came from (or `api`).
        path: String,
    },
    /// *extra*: a handoff file was invalid; no pool is touched.
    HandoffRejected {
        /// The file.
        file: String,
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// *extra*: an engine is being started again (restart, breaker trial, reload's new engine,
    /// rollback's old engine). Effect: spawn.
    EngineStartRequested {
        /// The engine to start (recorded whole for replay).
        engine: Box<PreparedEngine>,
        /// Restart number (0 for a reload/rollback start).
        attempt: u32,
        /// Why.
        purpose: StartPurpose,
    },
    /// *extra*: a ready engine answered again after failed probes; clears the count and sets
    /// the heartbeat. (Routine successful probes are not journaled.)
    HealthCheckRecovered {
        /// The failures it recovered from.
        after_failures: u32,
    },
    /// *extra*: the engine ran stable for `backoff.reset_after_ms`: backoff attempt and
    /// consecutive failure counts reset.
    BackoffReset {
        /// The attempt that was reset.
        previous_attempt: u32,
    },
    /// *extra*: the engine's VRAM use moved by at least `VRAM_DELTA_MIN_BYTES`.
    VramUsageObserved {
        /// The engine.
        pid: u32,
        /// VRAM used by it over all GPUs.
        used_bytes: u64,
    },
    /// *extra*, node: the node's MIG devices (journaled when they changed). Appended last:
    /// `GpuInfo` inside `GpuInventoryObserved` keeps its shape, MIG slices come here; device
    /// masks naming `MIG-...` UUIDs resolve against them.
    MigInventoryObserved {
        /// All MIG devices (at most `gpu::MIG_DEVICES_MAX` kept).
        devices: Vec<MigDeviceInfo>,
    },
    /// *extra*, node: events `from_seq..=to_seq` of the journal were lost (unreadable after
    /// damage) and an operator accepted it with `journal repair --accept-loss`; this event
    /// takes seq `to_seq`. Written by the repair, never decided; it changes no pool or node
    /// field (the lost events are gone from the fold). Appended last (format version 3).
    JournalLossAccepted {
        /// The first lost seq.
        from_seq: u64,
        /// The last lost seq: the seq of this event.
        to_seq: u64,
        /// Why the operator accepted the loss (`--accept-loss`'s reason).
        reason: String,
    },
    /// *extra*, node: at start-up, a pid file named a running engine that the registry does
    /// not know (its events were lost, or the daemon died between starting it and recording
    /// it) and that could not be adopted (no handoff file names it): it was stopped. Node-level
    /// because its pool may be unknown. Appended last (format version 3).
    UntrackedEngineStopped {
        /// The pool its pid file belongs to.
        pool_id: String,
        /// The engine.
        pid: u32,
        /// What was found and done.
        reason: String,
    },
    /// Before a restart, trial or reload on the GPUs of the pool's last engine, NVML listed
    /// none of that engine's session's processes on them and their memory was free again.
    /// Appended (format version 4).
    GpuMemoryReleased {
        /// How long the wait took from the start's request (0: nothing was held).
        after_ms: u64,
    },
    /// At `[gpu] release_timeout_ms` the pool's last engine still held memory of a GPU of
    /// the mask: the start fails naming it (not an out-of-memory of the new engine).
    /// Appended (format version 4).
    GpuMemoryStuck {
        /// The GPU.
        gpu_uuid: String,
        /// The processes of the last engine's session NVML still lists on it (may be empty:
        /// the memory is not back although no process is listed).
        pids: Vec<u32>,
        /// The memory not back, in bytes.
        bytes: u64,
    },
    /// *extra*, node: hardware-class faults of a GPU (see `gpu::is_hardware_xid`, driver
    /// resets) reached `[gpu] quarantine_after` within `[gpu] quarantine_window_ms`: no pool
    /// whose mask covers it starts until `GpuUnquarantined`. Appended (format version 4).
    GpuQuarantined {
        /// The GPU.
        gpu_uuid: String,
        /// Its hardware faults within the window.
        faults: u32,
    },
    /// *extra*, node: an operator ended a GPU's quarantine (`POST
    /// /v2/gpus/{uuid}/unquarantine`); its fault count starts again from zero. Appended
    /// (format version 4).
    GpuUnquarantined {
        /// The GPU.
        gpu_uuid: String,
        /// Who (from the API).
        by: String,
    },
    /// *extra*: the pool's failure is not restarted (nor a breaker trial started) because its
    /// mask covers a quarantined GPU; the pool is failed, `last_error` says why, until a
    /// preload after the GPU's `GpuUnquarantined`. Appended (format version 4).
    RestartHeld {
        /// The quarantined GPU.
        gpu_uuid: String,
    },
    /// Follows `ReloadRequested`: how the reload replaces the engine, and why (an `auto`
    /// request says which one it chose). Without it (journals before format version 6) a
    /// reload is `drain_first`. Appended (format version 6).
    ReloadStrategyChosen {
        /// The strategy.
        strategy: ReloadStrategy,
        /// Why, in words (the answer's `strategy_reason`).
        reason: String,
        /// A surge's port (from `[reload] surge_ports`).
        surge_port: Option<u16>,
    },
    /// A surge's new engine is to start beside the old one, in the pool's other lane (its
    /// own pid file, log and cgroup leaf). Effect: spawn. Appended (format version 6).
    SurgeStartRequested {
        /// The new engine (the staged model, the surge port), recorded whole.
        engine: Box<PreparedEngine>,
    },
    /// The surge's new engine process exists. Effect: wait for its health. Appended (format
    /// version 6).
    SurgeSpawned {
        /// Its pid.
        pid: u32,
        /// Its `/proc` start time ticks.
        start_time: u64,
        /// Its log file.
        log_path: String,
        /// Its pid file.
        pid_path: String,
        /// When its health wait gives up.
        health_deadline_at_ms: u64,
        /// The boot it was spawned in.
        boot_id: Option<String>,
    },
    /// The surge's new engine answered healthy, its port's owner and placement proven.
    /// Effect: write the pool's handoff file with its address. Appended (format version 6).
    SurgeHealthPassed {
        /// Time from spawn to healthy.
        after_ms: u64,
        /// Version the engine reports.
        engine_version: String,
        /// Its slots.
        slots_total: u32,
        /// Its executable once it serves, when readable.
        exe: Option<String>,
    },
    /// The atomic switch of a surge: the new engine is the pool's engine (new leases go to
    /// it, the status and the handoff file carry its address); the old one becomes the second
    /// engine and finishes the leases it held, until they are returned or the drain deadline.
    /// The pool never stops being ready. Appended (format version 6).
    SurgeSwitched {
        /// The new engine.
        new_pid: u32,
        /// The old engine (`None`: it was no process of ours).
        old_pid: Option<u32>,
        /// The handoff file, now naming the new engine.
        handoff_path: String,
        /// Leases the old engine still serves.
        leases_on_old: u32,
        /// When the old engine is stopped even with leases held.
        drain_deadline_at_ms: u64,
        /// When the new engine's backoff attempt resets if still running.
        backoff_reset_at_ms: u64,
    },
    /// The second engine (a surge's new one, or the old one after the switch) is asked to
    /// stop. Effect: SIGTERM, wait `grace_ms`, SIGKILL (0: SIGKILL at once). Appended (format
    /// version 6).
    SecondStopRequested {
        /// The engine; `None` when no process runs (the second engine ends at once).
        pid: Option<u32>,
        /// SIGTERM grace.
        grace_ms: u64,
        /// Why.
        why: SecondStop,
        /// Leases it still held (dropped).
        leases_at_stop: u32,
    },
    /// The second engine is gone. Appended (format version 6).
    SecondEngineEnded {
        /// The engine.
        pid: u32,
        /// How.
        how: SecondEnd,
        /// Leases it still held, dropped with it.
        leases_dropped: u32,
    },
}

/// Whether an event belongs to the node (no pool id in its envelope) or to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Node-level.
    Node,
    /// Pool-level.
    Pool,
}

impl Event {
    /// The variant name (`"EngineSpawned"`), as in exports.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DaemonStarted { .. } => "DaemonStarted",
            Event::DaemonStopped { .. } => "DaemonStopped",
            Event::GpuInventoryObserved { .. } => "GpuInventoryObserved",
            Event::PreflightFailed { .. } => "PreflightFailed",
            Event::GpuXidObserved { .. } => "GpuXidObserved",
            Event::DriverResetObserved { .. } => "DriverResetObserved",
            Event::PreloadRequested { .. } => "PreloadRequested",
            Event::PreloadRejected { .. } => "PreloadRejected",
            Event::EngineSpawned { .. } => "EngineSpawned",
            Event::HealthCheckPassed { .. } => "HealthCheckPassed",
            Event::PoolReady { .. } => "PoolReady",
            Event::PreloadFailed { .. } => "PreloadFailed",
            Event::LeaseGranted { .. } => "LeaseGranted",
            Event::LeaseReleased { .. } => "LeaseReleased",
            Event::HealthCheckFailed { .. } => "HealthCheckFailed",
            Event::EngineExited { .. } => "EngineExited",
            Event::RestartScheduled { .. } => "RestartScheduled",
            Event::CircuitOpened { .. } => "CircuitOpened",
            Event::CircuitHalfOpened => "CircuitHalfOpened",
            Event::CircuitClosed => "CircuitClosed",
            Event::CircuitReset { .. } => "CircuitReset",
            Event::RestartStormDetected { .. } => "RestartStormDetected",
            Event::EngineAdopted { .. } => "EngineAdopted",
            Event::EngineLost { .. } => "EngineLost",
            Event::DrainRequested { .. } => "DrainRequested",
            Event::DrainCompleted { .. } => "DrainCompleted",
            Event::EngineStopRequested { .. } => "EngineStopRequested",
            Event::EngineStopped { .. } => "EngineStopped",
            Event::ReloadRequested { .. } => "ReloadRequested",
            Event::ModelStaged { .. } => "ModelStaged",
            Event::ReloadSucceeded { .. } => "ReloadSucceeded",
            Event::ReloadFailed { .. } => "ReloadFailed",
            Event::ReloadRolledBack { .. } => "ReloadRolledBack",
            Event::DeviceMaskViolation { .. } => "DeviceMaskViolation",
            Event::PoolRemoved => "PoolRemoved",
            Event::HandoffRegistered { .. } => "HandoffRegistered",
            Event::HandoffRejected { .. } => "HandoffRejected",
            Event::EngineStartRequested { .. } => "EngineStartRequested",
            Event::HealthCheckRecovered { .. } => "HealthCheckRecovered",
            Event::BackoffReset { .. } => "BackoffReset",
            Event::VramUsageObserved { .. } => "VramUsageObserved",
            Event::MigInventoryObserved { .. } => "MigInventoryObserved",
            Event::JournalLossAccepted { .. } => "JournalLossAccepted",
            Event::UntrackedEngineStopped { .. } => "UntrackedEngineStopped",
            Event::GpuMemoryReleased { .. } => "GpuMemoryReleased",
            Event::GpuMemoryStuck { .. } => "GpuMemoryStuck",
            Event::GpuQuarantined { .. } => "GpuQuarantined",
            Event::GpuUnquarantined { .. } => "GpuUnquarantined",
            Event::RestartHeld { .. } => "RestartHeld",
            Event::ReloadStrategyChosen { .. } => "ReloadStrategyChosen",
            Event::SurgeStartRequested { .. } => "SurgeStartRequested",
            Event::SurgeSpawned { .. } => "SurgeSpawned",
            Event::SurgeHealthPassed { .. } => "SurgeHealthPassed",
            Event::SurgeSwitched { .. } => "SurgeSwitched",
            Event::SecondStopRequested { .. } => "SecondStopRequested",
            Event::SecondEngineEnded { .. } => "SecondEngineEnded",
        }
    }

    /// Node-level events have no pool id in their envelope; all others need one.
    pub fn scope(&self) -> Scope {
        match self {
            Event::DaemonStarted { .. }
            | Event::DaemonStopped { .. }
            | Event::GpuInventoryObserved { .. }
            | Event::MigInventoryObserved { .. }
            | Event::JournalLossAccepted { .. }
            | Event::UntrackedEngineStopped { .. }
            | Event::GpuQuarantined { .. }
            | Event::GpuUnquarantined { .. }
            | Event::PreflightFailed { .. }
            | Event::GpuXidObserved { .. }
            | Event::DriverResetObserved { .. }
            | Event::HandoffRejected { .. } => Scope::Node,
            _ => Scope::Pool,
        }
    }

    /// Shorthand for `scope() == Scope::Node`.
    pub fn is_node_event(&self) -> bool {
        self.scope() == Scope::Node
    }
}

/// What `decide` returns: an event and the pool it belongs to (`None` for node events). The
/// shell wraps each in a journal draft stamped with `Context::now_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// The pool, for pool events.
    pub pool_id: Option<PoolId>,
    /// The event.
    pub event: Event,
}

impl Fact {
    /// A node-level fact.
    pub fn node(event: Event) -> Fact {
        Fact {
            pool_id: None,
            event,
        }
    }

    /// A pool fact.
    pub fn pool(pool_id: &PoolId, event: Event) -> Fact {
        Fact {
            pool_id: Some(pool_id.clone()),
            event,
        }
    }
}

/// The journal envelope's metadata, as `evolve` and `effects` need it (the core does not
/// depend on the journal crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// The event's sequence number (gap-free, from 1).
    pub seq: u64,
    /// Wall-clock time it was decided at (ms since the epoch).
    pub ts_ms: u64,
    /// The pool, for pool events.
    pub pool_id: Option<&'a str>,
}
