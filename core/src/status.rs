//! The public view of a pool: [`PoolStatus`] (SPEC section 5) and its small [`Phase`].
//!
//! Owns: the projection from the internal [`Pool`] to what the API serves.
//! Never: stores anything; a status is recomputed from the pool on every read.

use serde::{Deserialize, Serialize};

use crate::ids::PoolId;
use crate::state::{Activity, Pool, SecondRole};

/// The public phase of a pool (SPEC section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Known, never started.
    Registered,
    /// Starting: spawn, health wait, handoff.
    Starting,
    /// Serving.
    Ready,
    /// Serving existing leases, refusing new ones, until stopped.
    Draining,
    /// Stopping on request.
    Stopping,
    /// Stopped.
    Stopped,
    /// Waiting to restart.
    Backoff,
    /// Breaker open: no restart.
    CircuitOpen,
    /// A reload is in progress (staging, draining, starting the new engine, or rolling back).
    Reloading,
    /// Failed, nothing scheduled.
    Failed,
}

impl Phase {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Registered => "registered",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Backoff => "backoff",
            Phase::CircuitOpen => "circuit_open",
            Phase::Reloading => "reloading",
            Phase::Failed => "failed",
        }
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Restarts allowed.
    Closed,
    /// No restarts until it half-opens.
    Open,
    /// One trial start allowed.
    HalfOpen,
}

/// A pool as the API shows it: exactly the SPEC section 5 fields, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool.
    pub pool_id: PoolId,
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
    /// Last recorded healthy answer.
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

/// The old engine of a surge's switch, finishing the leases it held (`PoolStatus::retiring`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringEngine {
    /// Its pid.
    pub pid: u32,
    /// Leases it still serves.
    pub leases: u32,
    /// When it is stopped even with leases held.
    pub deadline_at_ms: Option<u64>,
}

/// The retiring engine of `pool`, while one runs.
fn retiring(pool: &Pool) -> Option<RetiringEngine> {
    let second = pool
        .second
        .as_ref()
        .filter(|s| s.role == SecondRole::Retiring)?;
    Some(RetiringEngine {
        pid: second.pid()?,
        leases: second.active_leases(),
        deadline_at_ms: second.deadline_at_ms,
    })
}

/// The public phase of `pool`.
pub fn phase(pool: &Pool) -> Phase {
    if pool.reload.is_some() {
        return Phase::Reloading;
    }
    if pool.drain.is_some() {
        // Until `DrainCompleted`, whatever the engine is doing.
        return Phase::Draining;
    }
    match &pool.activity {
        Activity::Registered => Phase::Registered,
        Activity::Starting { .. } => Phase::Starting,
        Activity::Running => Phase::Ready,
        Activity::Stopping { .. } => Phase::Stopping,
        Activity::Stopped => Phase::Stopped,
        Activity::Backoff { .. } => Phase::Backoff,
        Activity::CircuitOpen => Phase::CircuitOpen,
        Activity::Failed => Phase::Failed,
    }
}

/// Projects `pool` to its status.
pub fn project(pool: &Pool) -> PoolStatus {
    let engine = pool
        .engine
        .as_ref()
        .map(|e| e.engine_name())
        .or_else(|| pool.handoff.as_ref().map(|h| h.engine.clone()));
    PoolStatus {
        pool_id: pool.id.clone(),
        phase: phase(pool),
        live: pool.process.is_some(),
        ready: pool.ready,
        draining: pool.drain.is_some(),
        pid: pool.pid(),
        engine,
        engine_version: pool.engine_version.clone(),
        model_ref: pool.model_ref.clone(),
        device_mask: pool.device_mask().map(str::to_string),
        slots_total: pool.slots_total,
        slots_free: pool.slots_free(),
        active_leases: pool.active_leases(),
        last_error: pool.last_error.clone(),
        last_heartbeat_ms: pool.last_heartbeat_ms,
        restart_count: pool.restart_count,
        crash_count: pool.crash_count,
        backoff_ms: match pool.activity {
            Activity::Backoff { .. } => pool.supervision.last_delay_ms,
            _ => 0,
        },
        breaker: pool.supervision.breaker.state,
        vram_used_bytes: pool.vram_used_bytes,
        handoff_path: pool.handoff_path.clone(),
        url: pool.url(),
        retiring: retiring(pool),
        last_seq: pool.last_seq,
    }
}
