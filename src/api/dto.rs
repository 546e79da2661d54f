//! The API's wire types of what it answers about pools and GPUs: each is the body a handler
//! serializes and, by its `ToSchema` derive, the schema the OpenAPI document shows (one
//! definition, no copy kept equal by tests). Each is built from the type the node or the GPU
//! monitor holds by an exhaustive destructuring or `match`, so a field or variant added there
//! does not build until its wire form is decided here.
//!
//! Owns: the JSON shapes of SPEC section 5's `PoolStatus`, `Phase`, `BreakerState`, of
//! `GET /v2/gpus` and of `GET /v2/pools/{id}/explain` (`Explanation`). Never: decides anything; the request bodies (`PreparedEngine`, `Handoff`)
//! are the core's own types (see `openapi/mirrors.rs`).

use serde::Serialize;
use utoipa::ToSchema;

/// The public phase of a pool (SPEC section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Known, never started.
    Registered,
    /// Its engine is starting.
    Starting,
    /// It serves.
    Ready,
    /// No new leases; stops when the last returns or at the deadline.
    Draining,
    /// Its engine is stopping.
    Stopping,
    /// No engine, by request.
    Stopped,
    /// Waiting to restart after a failure.
    Backoff,
    /// The breaker is open: no restart until the half-open trial.
    CircuitOpen,
    /// A reload is under way.
    Reloading,
    /// Its start failed for good.
    Failed,
}

impl From<pool_core::Phase> for Phase {
    fn from(phase: pool_core::Phase) -> Phase {
        use pool_core::Phase as Core;
        match phase {
            Core::Registered => Phase::Registered,
            Core::Starting => Phase::Starting,
            Core::Ready => Phase::Ready,
            Core::Draining => Phase::Draining,
            Core::Stopping => Phase::Stopping,
            Core::Stopped => Phase::Stopped,
            Core::Backoff => Phase::Backoff,
            Core::CircuitOpen => Phase::CircuitOpen,
            Core::Reloading => Phase::Reloading,
            Core::Failed => Phase::Failed,
        }
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Restarts allowed.
    Closed,
    /// No restart until the open period ends.
    Open,
    /// One trial start allowed.
    HalfOpen,
}

impl From<pool_core::BreakerState> for BreakerState {
    fn from(state: pool_core::BreakerState) -> BreakerState {
        use pool_core::BreakerState as Core;
        match state {
            Core::Closed => BreakerState::Closed,
            Core::Open => BreakerState::Open,
            Core::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// A pool as the API shows it (SPEC section 5), every field always present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PoolStatus {
    /// The pool.
    pub pool_id: String,
    /// Public phase.
    pub phase: Phase,
    /// An engine process exists.
    pub live: bool,
    /// It serves.
    pub ready: bool,
    /// A drain is in progress.
    pub draining: bool,
    /// The engine's pid.
    pub pid: Option<u32>,
    /// Engine kind.
    pub engine: Option<String>,
    /// Engine version.
    pub engine_version: Option<String>,
    /// Model served.
    pub model_ref: Option<String>,
    /// Device mask.
    pub device_mask: Option<String>,
    /// Slots.
    pub slots_total: u32,
    /// Free slots, `0..=slots_total`.
    pub slots_free: u32,
    /// Leases held.
    pub active_leases: u32,
    /// Last failure.
    pub last_error: Option<String>,
    /// Last recorded healthy answer (ms since the Unix epoch).
    pub last_heartbeat_ms: Option<u64>,
    /// Restarts.
    pub restart_count: u32,
    /// Failures.
    pub crash_count: u32,
    /// The current backoff delay (0 unless in backoff).
    pub backoff_ms: u64,
    /// Breaker state.
    pub breaker: BreakerState,
    /// VRAM used by the engine.
    pub vram_used_bytes: Option<u64>,
    /// Handoff file.
    pub handoff_path: Option<String>,
    /// The address new leases are served at (`http://host:port`): the engine's, or the
    /// handed-off one; after a surge's switch, the new engine's.
    pub url: Option<String>,
    /// After a surge's switch, the old engine still finishing the leases it held.
    pub retiring: Option<RetiringEngine>,
    /// Seq of the last event that touched the pool.
    pub last_seq: u64,
}

impl From<pool_core::PoolStatus> for PoolStatus {
    fn from(status: pool_core::PoolStatus) -> PoolStatus {
        let pool_core::PoolStatus {
            pool_id,
            phase,
            live,
            ready,
            draining,
            pid,
            engine,
            engine_version,
            model_ref,
            device_mask,
            slots_total,
            slots_free,
            active_leases,
            last_error,
            last_heartbeat_ms,
            restart_count,
            crash_count,
            backoff_ms,
            breaker,
            vram_used_bytes,
            handoff_path,
            url,
            retiring,
            last_seq,
        } = status;
        PoolStatus {
            pool_id: pool_id.to_string(),
            phase: phase.into(),
            live,
            ready,
            draining,
            pid,
            engine,
            engine_version,
            model_ref,
            device_mask,
            slots_total,
            slots_free,
            active_leases,
            last_error,
            last_heartbeat_ms,
            restart_count,
            crash_count,
            backoff_ms,
            breaker: breaker.into(),
            vram_used_bytes,
            handoff_path,
            url,
            retiring: retiring.map(RetiringEngine::from),
            last_seq,
        }
    }
}

/// The old engine of a surge's switch, finishing the leases it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RetiringEngine {
    /// Its pid.
    pub pid: u32,
    /// Leases it still serves.
    pub leases: u32,
    /// When it is stopped even with leases held (ms since the Unix epoch).
    pub deadline_at_ms: Option<u64>,
}

impl From<pool_core::RetiringEngine> for RetiringEngine {
    fn from(engine: pool_core::RetiringEngine) -> RetiringEngine {
        let pool_core::RetiringEngine {
            pid,
            leases,
            deadline_at_ms,
        } = engine;
        RetiringEngine {
            pid,
            leases,
            deadline_at_ms,
        }
    }
}

/// How a reload replaces the engine (`strategy` of `POST /v2/pools/{id}/reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReloadStrategyAsked {
    /// `surge` when a port of `[reload] surge_ports` is free and the new engine fits beside
    /// the old one (the VRAM and RAM placement of a preload); `drain_first` otherwise.
    #[default]
    Auto,
    /// Drain the old engine, stop it, start the new one: no engine serves in between.
    DrainFirst,
    /// Start the new engine beside the old one, switch to it once healthy, then drain and
    /// stop the old one; refused (`INVALID_REQUEST`) when it cannot be done.
    Surge,
}

impl From<ReloadStrategyAsked> for pool_core::ReloadStrategyAsked {
    fn from(asked: ReloadStrategyAsked) -> pool_core::ReloadStrategyAsked {
        use pool_core::ReloadStrategyAsked as Core;
        match asked {
            ReloadStrategyAsked::Auto => Core::Auto,
            ReloadStrategyAsked::DrainFirst => Core::DrainFirst,
            ReloadStrategyAsked::Surge => Core::Surge,
        }
    }
}

/// How a reload replaced the engine (its answer's `strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReloadStrategy {
    /// Drained, stopped, started.
    DrainFirst,
    /// Started beside the old one, then switched.
    Surge,
}

impl From<pool_core::ReloadStrategy> for ReloadStrategy {
    fn from(strategy: pool_core::ReloadStrategy) -> ReloadStrategy {
        match strategy {
            pool_core::ReloadStrategy::DrainFirst => ReloadStrategy::DrainFirst,
            pool_core::ReloadStrategy::Surge => ReloadStrategy::Surge,
        }
    }
}

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct GpuProcess {
    /// Its pid.
    pub pid: u32,
    /// VRAM it uses.
    pub used_bytes: u64,
    /// The pool whose engine it is, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
}

impl From<crate::gpu::GpuProcess> for GpuProcess {
    fn from(process: crate::gpu::GpuProcess) -> GpuProcess {
        let crate::gpu::GpuProcess {
            pid,
            used_bytes,
            pool_id,
        } = process;
        GpuProcess {
            pid,
            used_bytes,
            pool_id,
        }
    }
}

/// A MIG device (a slice of a GPU with MIG mode on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MigDevice {
    /// Its UUID (`MIG-...`).
    pub uuid: String,
    /// The index of its GPU.
    pub parent_index: u32,
    /// Its profile's name.
    pub name: String,
    /// Its VRAM.
    pub vram_total_bytes: u64,
    /// Its free VRAM at the reading.
    pub vram_free_bytes: u64,
    /// Compute processes on it.
    pub processes: Vec<GpuProcess>,
}

impl From<crate::gpu::MigDevice> for MigDevice {
    fn from(device: crate::gpu::MigDevice) -> MigDevice {
        let crate::gpu::MigDevice { info, processes } = device;
        let pool_core::MigDeviceInfo {
            uuid,
            parent_index,
            name,
            vram_total_bytes,
            vram_free_bytes,
        } = info;
        MigDevice {
            uuid,
            parent_index,
            name,
            vram_total_bytes,
            vram_free_bytes,
            processes: processes.into_iter().map(GpuProcess::from).collect(),
        }
    }
}

/// One GPU of the last reading (SPEC section 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Gpu {
    /// Its NVML index.
    pub index: u32,
    /// Its UUID.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// `major.minor`.
    pub compute_capability: String,
    /// Its VRAM.
    pub vram_total_bytes: u64,
    /// Its free VRAM at the reading.
    pub vram_free_bytes: u64,
    /// Its MIG devices (MIG mode on).
    pub mig_devices: Vec<MigDevice>,
    /// Compute processes on the whole GPU.
    pub processes: Vec<GpuProcess>,
    /// Quarantined after repeated hardware faults (`GpuQuarantined`): no engine starts on it
    /// until `POST /v2/gpus/{uuid}/unquarantine`.
    pub quarantined: bool,
    /// Since when (ms since the epoch), while quarantined.
    pub quarantined_since_ms: Option<u64>,
}

impl Gpu {
    /// With the quarantine the registry records for it.
    pub fn with_quarantine(mut self, node: &pool_core::state::Node) -> Gpu {
        let quarantine = node.quarantined.get(&self.uuid);
        self.quarantined = quarantine.is_some();
        self.quarantined_since_ms = quarantine.map(|q| q.since_ms);
        self
    }
}

impl From<crate::gpu::Gpu> for Gpu {
    fn from(gpu: crate::gpu::Gpu) -> Gpu {
        let crate::gpu::Gpu {
            info,
            mig_devices,
            processes,
        } = gpu;
        let pool_core::GpuInfo {
            index,
            uuid,
            name,
            compute_capability,
            vram_total_bytes,
            vram_free_bytes,
        } = info;
        Gpu {
            index,
            uuid,
            name,
            compute_capability,
            vram_total_bytes,
            vram_free_bytes,
            mig_devices: mig_devices.into_iter().map(MigDevice::from).collect(),
            processes: processes.into_iter().map(GpuProcess::from).collect(),
            quarantined: false,
            quarantined_since_ms: None,
        }
    }
}

/// A point of a pool's history: a seq and its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct HistoryMark {
    /// The event's seq.
    pub seq: u64,
    /// Its time (ms since the epoch).
    pub ts_ms: u64,
    /// The same as RFC 3339 UTC.
    pub at: String,
}

impl From<pool_core::explain::Mark> for HistoryMark {
    fn from(mark: pool_core::explain::Mark) -> HistoryMark {
        let pool_core::explain::Mark { seq, ts_ms, at } = mark;
        HistoryMark { seq, ts_ms, at }
    }
}

/// One step of an explanation's causal chain: a recorded event in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExplainStep {
    /// The event's seq.
    pub seq: u64,
    /// Its time (ms since the epoch).
    pub ts_ms: u64,
    /// The event's kind (`EngineExited`).
    pub kind: String,
    /// The seq of the event that caused it, when recorded.
    pub cause: Option<u64>,
    /// What happened, in words.
    pub text: String,
}

/// What the daemon does next, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExplainNext {
    /// When (ms since the epoch, a recorded time); `null` when it waits for something else.
    pub at_ms: Option<u64>,
    /// The same as RFC 3339 UTC.
    pub at: Option<String>,
    /// What, in words.
    pub text: String,
}

/// What an operator can do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExplainAction {
    /// What and why, in words.
    pub text: String,
    /// The API request that does it, when there is one (`POST /v2/pools/p1/breaker/reset`).
    pub request: Option<String>,
}

/// `GET /v2/pools/{id}/explain`: why the pool is in its phase, from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Explanation {
    /// The pool.
    pub pool_id: String,
    /// The seq the explanation is as of (`at_seq`, or the journal's last).
    pub as_of_seq: u64,
    /// The public phase then.
    pub phase: Phase,
    /// When the pool entered that phase, when the history shows it.
    pub since: Option<HistoryMark>,
    /// One line: why it is in that phase.
    pub why: String,
    /// The steps that led there, oldest first (at most 12).
    pub chain: Vec<ExplainStep>,
    /// Earlier steps of the same story left out of `chain`.
    pub chain_omitted: u32,
    /// What the daemon does next, and when.
    pub next: Vec<ExplainNext>,
    /// What an operator can do now.
    pub actions: Vec<ExplainAction>,
    /// The pool's last error (cut to 240 chars).
    pub last_error: Option<String>,
}

impl From<pool_core::Explanation> for Explanation {
    fn from(explanation: pool_core::Explanation) -> Explanation {
        let pool_core::Explanation {
            pool_id,
            as_of_seq,
            phase,
            since,
            why,
            chain,
            chain_omitted,
            next,
            actions,
            last_error,
        } = explanation;
        Explanation {
            pool_id,
            as_of_seq,
            phase: phase.into(),
            since: since.map(Into::into),
            why,
            chain: chain.into_iter().map(explain_step).collect(),
            chain_omitted,
            next: next.into_iter().map(explain_next).collect(),
            actions: actions.into_iter().map(explain_action).collect(),
            last_error,
        }
    }
}

fn explain_step(step: pool_core::explain::Step) -> ExplainStep {
    let pool_core::explain::Step {
        seq,
        ts_ms,
        kind,
        cause,
        text,
    } = step;
    ExplainStep {
        seq,
        ts_ms,
        kind,
        cause,
        text,
    }
}

fn explain_next(next: pool_core::explain::Next) -> ExplainNext {
    let pool_core::explain::Next { at_ms, at, text } = next;
    ExplainNext { at_ms, at, text }
}

fn explain_action(action: pool_core::explain::Action) -> ExplainAction {
    let pool_core::explain::Action { text, request } = action;
    ExplainAction { text, request }
}
