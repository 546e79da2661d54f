//! `effects`: what the shell must do after an event is durable and folded, and
//! `resume_effects`: what it must do after a replay at start-up.
//!
//! Owns: the mapping from facts to side effects ([`Effect`]) and the [`Timer`] kinds.
//! Never: performs them. Replay runs `evolve` only, never `effects`.
//!
//! Contract with the shell:
//! - `effects(state, stamp, event)` takes the state **after** `evolve` folded the event.
//! - A pool's effects run in order; a `StopEngine` completes (process reaped) before the next
//!   effect of the same pool starts (so a restart never races the old engine for its port).
//! - Every effect's result comes back as an `Observation` carrying the `pid` or `token` it was
//!   given; `decide` ignores stale ones.

use serde::{Deserialize, Serialize};

use crate::engine::{Handoff, HandoffModel, PreparedEngine};
use crate::event::{Event, ReloadStage, Stamp, StopReason};
use crate::gpu::engine_for_spawn;
use crate::ids::PoolId;
use crate::state::{Activity, Lane, Pool, State};
use crate::status::BreakerState;

/// The timers a pool arms. Each fires `Observation::TimerFired{timer, token}` with the token
/// it was armed with (the seq of the event that armed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// Backoff over: restart (token = seq of `RestartScheduled`).
    Restart,
    /// Breaker open time over: half-open (token = seq of `CircuitOpened`).
    HalfOpen,
    /// Drain deadline: force stop (token = seq of `DrainRequested`).
    DrainDeadline,
    /// Stable running: reset backoff (token = seq of `PoolReady`).
    BackoffReset,
    /// Trial stable: close the breaker (token = seq of `PoolReady`).
    BreakerClose,
    /// The old engine after a surge's switch: its drain deadline (token = seq of
    /// `SurgeSwitched`).
    RetireDeadline,
}

/// A side effect for the shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// Spawn the engine (own process group, log, pid file); report `EngineSpawned` or
    /// `SpawnFailed` with `token`.
    Spawn {
        /// The pool.
        pool_id: PoolId,
        /// What to spawn: the recorded engine with its planned split appended to its flags
        /// (`--tensor-split r0,r1,...`, see `gpu::engine_for_spawn`).
        engine: PreparedEngine,
        /// 0 for a preload, n for the n-th restart.
        attempt: u32,
        /// The start's token.
        token: u64,
        /// The lane it runs in.
        lane: Lane,
        /// A surge's new engine, beside the pool's running one: no wait for the last
        /// engine's GPU memory (it still serves).
        surge: bool,
    },
    /// Poll health until healthy (`HealthPassed`), exit, or the deadline (`PreloadTimedOut`).
    StartHealthWait {
        /// The pool.
        pool_id: PoolId,
        /// The engine.
        pid: u32,
        /// The start's token.
        token: u64,
        /// Give up at.
        deadline_at_ms: u64,
        /// The engine's lane.
        lane: Lane,
    },
    /// Probe a ready engine every `health.ready_interval_ms` (report failures, and the first
    /// success after failures) until the pool is no longer ready with this pid.
    StartProbing {
        /// The pool.
        pool_id: PoolId,
        /// The engine, when known.
        pid: Option<u32>,
        /// The engine's lane.
        lane: Lane,
    },
    /// Watch a process we did not spawn in this daemon's life (adopted, handoff) via a pidfd.
    WatchProcess {
        /// The pool.
        pool_id: PoolId,
        /// The engine.
        pid: u32,
        /// The engine's lane.
        lane: Lane,
    },
    /// After a replay: check that `pid` is still our engine (same start time, same boot) and
    /// report `EngineAdopted` or `EngineLost`; an executable other than the one recorded is
    /// logged, not refused (a launcher's `exec`, an upgrade retargeting a symlink).
    VerifyEngine {
        /// The pool.
        pool_id: PoolId,
        /// The recorded pid.
        pid: u32,
        /// The recorded start time ticks (0 = unknown).
        start_time: u64,
        /// The recorded binary, if we spawned it.
        binary_path: Option<String>,
        /// The recorded boot id (`None`: unknown, as in records before format version 4).
        boot_id: Option<String>,
        /// The executable it ran once it served, if recorded.
        exe: Option<String>,
        /// The engine's lane.
        lane: Lane,
    },
    /// SIGTERM the process group, wait `grace_ms`, SIGKILL; report `EngineStopped`.
    StopEngine {
        /// The pool.
        pool_id: PoolId,
        /// The engine.
        pid: u32,
        /// Grace (0 = SIGKILL at once).
        grace_ms: u64,
        /// Why (for logs).
        reason: StopReason,
        /// The engine's lane.
        lane: Lane,
    },
    /// Write the handoff file; report `HandoffWritten` or `HandoffWriteFailed`.
    WriteHandoff {
        /// The pool.
        pool_id: PoolId,
        /// The engine.
        pid: u32,
        /// The document.
        handoff: Handoff,
        /// The engine's lane.
        lane: Lane,
    },
    /// Remove the pid file of the pool's lane.
    RemovePidFile {
        /// The pool.
        pool_id: PoolId,
        /// The lane.
        lane: Lane,
    },
    /// The pool is gone: remove its pid file and our handoff file, drop its probes and timers.
    RemovePoolFiles {
        /// The pool.
        pool_id: PoolId,
    },
    /// Arm a timer; report `TimerFired{timer, token}` at `at_ms` (or at once if past).
    ArmTimer {
        /// The pool.
        pool_id: PoolId,
        /// Which.
        timer: Timer,
        /// Its token.
        token: u64,
        /// When.
        at_ms: u64,
    },
    /// Stage a model (exists, readable, digest); report `ModelStaged` or `StagingFailed`.
    StageModel {
        /// The pool.
        pool_id: PoolId,
        /// Path or `file:` URI.
        model_ref: String,
        /// Expected digest.
        digest: Option<String>,
        /// The staging token.
        token: u64,
    },
}

impl Effect {
    /// The pool the effect is about (every effect is about one pool).
    pub fn pool_id(&self) -> &PoolId {
        match self {
            Effect::Spawn { pool_id, .. }
            | Effect::StartHealthWait { pool_id, .. }
            | Effect::StartProbing { pool_id, .. }
            | Effect::WatchProcess { pool_id, .. }
            | Effect::VerifyEngine { pool_id, .. }
            | Effect::StopEngine { pool_id, .. }
            | Effect::WriteHandoff { pool_id, .. }
            | Effect::RemovePidFile { pool_id, .. }
            | Effect::RemovePoolFiles { pool_id }
            | Effect::ArmTimer { pool_id, .. }
            | Effect::StageModel { pool_id, .. } => pool_id,
        }
    }

    /// The lane whose worker runs it: the engine's for effects about an engine, `A` for the
    /// pool's timers, staging and files (`RemovePoolFiles` is for every lane: the shell gives
    /// it to each lane's worker).
    pub fn lane(&self) -> Lane {
        match self {
            Effect::Spawn { lane, .. }
            | Effect::StartHealthWait { lane, .. }
            | Effect::StartProbing { lane, .. }
            | Effect::WatchProcess { lane, .. }
            | Effect::VerifyEngine { lane, .. }
            | Effect::StopEngine { lane, .. }
            | Effect::WriteHandoff { lane, .. }
            | Effect::RemovePidFile { lane, .. } => *lane,
            Effect::RemovePoolFiles { .. }
            | Effect::ArmTimer { .. }
            | Effect::StageModel { .. } => Lane::A,
        }
    }
}

/// The handoff document of a pool whose engine passed health.
pub fn handoff_of(pool: &Pool, engine: &PreparedEngine, pid: Option<u32>) -> Handoff {
    handoff_of_engine(
        pool,
        engine,
        pool.engine_version.as_deref(),
        pool.slots_total,
        pid,
    )
}

/// The handoff document of `engine` of `pool` (the pool's engine, or a surge's new one), with
/// the version and slots its health check reported.
pub fn handoff_of_engine(
    pool: &Pool,
    engine: &PreparedEngine,
    engine_version: Option<&str>,
    slots_total: u32,
    pid: Option<u32>,
) -> Handoff {
    Handoff {
        engine: engine.engine_name(),
        engine_version: engine_version
            .map_or_else(|| engine.engine_version.clone(), str::to_string),
        url: engine.url(),
        pool_id: pool.id.to_string(),
        replica_id: engine.replica_id.clone(),
        model: HandoffModel {
            path: engine.model_path.clone(),
        },
        flags: engine_for_spawn(engine).flags,
        device_mask: engine.device_mask.clone(),
        slots_total,
        pid,
    }
}

/// What the shell must do after `event` (stamped `stamp`) is durable and folded into `state`
/// (the state **after** the event).
pub fn effects(state: &State, stamp: Stamp<'_>, event: &Event) -> Vec<Effect> {
    let Some(pool_id) = stamp.pool_id.and_then(|id| PoolId::new(id).ok()) else {
        return Vec::new();
    };
    if matches!(event, Event::PoolRemoved) {
        return vec![Effect::RemovePoolFiles { pool_id }];
    }
    let Some(pool) = state.pools.get(&pool_id) else {
        return Vec::new();
    };
    let seq = stamp.seq;
    let mut out = Vec::new();
    start_effects(pool, &pool_id, seq, event, &mut out);
    control_effects(pool, &pool_id, seq, event, &mut out);
    crate::surge::surge_effects(pool, seq, event, &mut out);
    out
}

/// Effects of a start, its outcome and an engine's end: spawn, health wait, handoff file,
/// kill of an engine whose start or reload failed, pid file removal.
fn start_effects(pool: &Pool, pool_id: &PoolId, seq: u64, event: &Event, out: &mut Vec<Effect>) {
    let pool_id = pool_id.clone();
    let lane = pool.lane;
    match event {
        Event::PreloadRequested { engine } => out.push(Effect::Spawn {
            pool_id,
            engine: engine_for_spawn(engine),
            attempt: 0,
            token: seq,
            lane,
            surge: false,
        }),
        Event::EngineStartRequested {
            engine, attempt, ..
        } => out.push(Effect::Spawn {
            pool_id,
            engine: engine_for_spawn(engine),
            attempt: *attempt,
            token: seq,
            lane,
            surge: false,
        }),
        Event::EngineSpawned {
            pid,
            health_deadline_at_ms,
            ..
        } => out.push(Effect::StartHealthWait {
            pool_id,
            pid: *pid,
            token: pool.start_token,
            deadline_at_ms: *health_deadline_at_ms,
            lane,
        }),
        Event::HealthCheckPassed { .. } => {
            if let (Some(engine), Some(pid)) = (&pool.engine, pool.pid()) {
                out.push(Effect::WriteHandoff {
                    handoff: handoff_of(pool, engine, Some(pid)),
                    pool_id,
                    pid,
                    lane,
                });
            }
        }
        Event::PoolReady { .. } => running_effects(pool, out),
        Event::PreloadFailed {
            pid, reason, cause, ..
        } => {
            match pid {
                // Still alive: kill it; its pid file goes with its `EngineStopped`.
                Some(pid) => out.push(Effect::StopEngine {
                    pool_id,
                    pid: *pid,
                    grace_ms: 0,
                    reason: StopReason::Failure {
                        reason: *cause,
                        detail: reason.clone(),
                    },
                    lane,
                }),
                None => out.push(Effect::RemovePidFile { pool_id, lane }),
            }
        }
        Event::ReloadFailed {
            pid: Some(pid),
            reason,
            ..
        } => out.push(kill_after_failed_reload(pool_id, *pid, reason, lane)),
        Event::EngineExited { .. } | Event::EngineLost { .. } | Event::EngineStopped { .. } => {
            out.push(Effect::RemovePidFile { pool_id, lane })
        }
        _ => {}
    }
}

/// Kills the new engine of a reload that failed (its pid file goes with its `EngineStopped`).
fn kill_after_failed_reload(pool_id: PoolId, pid: u32, reason: &str, lane: Lane) -> Effect {
    Effect::StopEngine {
        pool_id,
        pid,
        grace_ms: 0,
        reason: StopReason::ReloadFailed {
            detail: reason.to_string(),
        },
        lane,
    }
}

/// Effects of control events: timers, stop requests, staging, watching a handed-off or
/// adopted engine.
fn control_effects(pool: &Pool, pool_id: &PoolId, seq: u64, event: &Event, out: &mut Vec<Effect>) {
    let pool_id = pool_id.clone();
    let lane = pool.lane;
    match event {
        Event::RestartScheduled { not_before_ms, .. } => out.push(Effect::ArmTimer {
            pool_id,
            timer: Timer::Restart,
            token: seq,
            at_ms: *not_before_ms,
        }),
        Event::CircuitOpened {
            half_open_at_ms, ..
        } => out.push(Effect::ArmTimer {
            pool_id,
            timer: Timer::HalfOpen,
            token: seq,
            at_ms: *half_open_at_ms,
        }),
        Event::DrainRequested { deadline_at_ms, .. } => out.push(Effect::ArmTimer {
            pool_id,
            timer: Timer::DrainDeadline,
            token: seq,
            at_ms: *deadline_at_ms,
        }),
        Event::EngineStopRequested {
            reason,
            pid: Some(pid),
            grace_ms,
        } => out.push(Effect::StopEngine {
            pool_id,
            pid: *pid,
            grace_ms: *grace_ms,
            reason: reason.clone(),
            lane,
        }),
        Event::ReloadRequested {
            new_model_ref,
            digest,
            ..
        } => out.push(Effect::StageModel {
            pool_id,
            model_ref: new_model_ref.clone(),
            digest: digest.clone(),
            token: seq,
        }),
        Event::HandoffRegistered { handoff, .. } => {
            if let Some(pid) = handoff.pid {
                out.push(Effect::WatchProcess {
                    pool_id: pool_id.clone(),
                    pid,
                    lane,
                });
            }
            out.push(Effect::StartProbing {
                pool_id,
                pid: handoff.pid,
                lane,
            });
        }
        Event::EngineAdopted { pid } if pool.is_second(*pid) => {
            out.push(Effect::WatchProcess {
                pool_id: pool_id.clone(),
                pid: *pid,
                lane: lane.other(),
            });
            crate::surge::second_continue_effects(pool, out);
        }
        Event::EngineAdopted { pid } => {
            out.push(Effect::WatchProcess {
                pool_id: pool_id.clone(),
                pid: *pid,
                lane,
            });
            continue_effects(pool, out);
        }
        _ => {}
    }
}

/// Effects of a ready pool: probe it, arm its stability timers and its drain deadline.
pub(crate) fn running_effects(pool: &Pool, out: &mut Vec<Effect>) {
    let pool_id = pool.id.clone();
    out.push(Effect::StartProbing {
        pool_id: pool_id.clone(),
        pid: pool.pid(),
        lane: pool.lane,
    });
    if let Some(at_ms) = pool.backoff_reset_at_ms {
        out.push(Effect::ArmTimer {
            pool_id: pool_id.clone(),
            timer: Timer::BackoffReset,
            token: pool.ready_token,
            at_ms,
        });
    }
    if let Some(at_ms) = pool.breaker_close_at_ms {
        if pool.supervision.breaker.state == BreakerState::HalfOpen {
            out.push(Effect::ArmTimer {
                pool_id: pool_id.clone(),
                timer: Timer::BreakerClose,
                token: pool.ready_token,
                at_ms,
            });
        }
    }
    if let Some(drain) = &pool.drain {
        out.push(Effect::ArmTimer {
            pool_id,
            timer: Timer::DrainDeadline,
            token: drain.token,
            at_ms: drain.deadline_at_ms,
        });
    }
}

/// Effects that carry on a pool's activity whose engine process is known to be alive.
fn continue_effects(pool: &Pool, out: &mut Vec<Effect>) {
    let Some(pid) = pool.pid() else { return };
    match &pool.activity {
        Activity::Running => {
            running_effects(pool, out);
            if let Some(reload) = &pool.reload {
                if reload.stage == ReloadStage::Staging {
                    out.push(Effect::StageModel {
                        pool_id: pool.id.clone(),
                        model_ref: reload.new_model_ref.clone(),
                        digest: reload.digest.clone(),
                        token: reload.token,
                    });
                }
            }
        }
        Activity::Starting {
            health_passed: false,
            health_deadline_at_ms,
            ..
        } => out.push(Effect::StartHealthWait {
            pool_id: pool.id.clone(),
            pid,
            token: pool.start_token,
            deadline_at_ms: health_deadline_at_ms.unwrap_or(0),
            lane: pool.lane,
        }),
        Activity::Starting {
            health_passed: true,
            ..
        } => {
            if let Some(engine) = &pool.engine {
                out.push(Effect::WriteHandoff {
                    pool_id: pool.id.clone(),
                    pid,
                    handoff: handoff_of(pool, engine, Some(pid)),
                    lane: pool.lane,
                });
            }
        }
        Activity::Stopping { reason, grace_ms } => out.push(Effect::StopEngine {
            pool_id: pool.id.clone(),
            pid,
            grace_ms: *grace_ms,
            reason: reason.clone(),
            lane: pool.lane,
        }),
        _ => {}
    }
}

/// What the shell must do after a start-up replay, before taking new inputs: verify every
/// recorded engine (it answers `EngineAdopted`/`EngineLost`, whose effects carry on), re-issue
/// an interrupted spawn, re-arm restart and half-open timers, re-stage an interrupted reload.
/// Pools come in id order.
pub fn resume_effects(state: &State) -> Vec<Effect> {
    let mut out = Vec::new();
    for pool in state.pools.values() {
        let pool_id = pool.id.clone();
        if let Some(second) = &pool.second {
            if let Some(process) = &second.process {
                out.push(verify(pool, process, &second.engine, pool.lane.other()));
            }
        }
        if let Some(process) = &pool.process {
            out.push(Effect::VerifyEngine {
                pool_id: pool_id.clone(),
                pid: process.pid,
                start_time: process.start_time,
                binary_path: if process.external {
                    None
                } else {
                    pool.engine.as_ref().map(|e| e.binary_path.clone())
                },
                boot_id: process.boot_id.clone(),
                exe: process.exe.clone(),
                lane: pool.lane,
            });
            continue;
        }
        match &pool.activity {
            Activity::Starting { attempt, .. } => {
                if let Some(engine) = &pool.engine {
                    out.push(Effect::Spawn {
                        pool_id: pool_id.clone(),
                        engine: engine_for_spawn(engine),
                        attempt: *attempt,
                        token: pool.start_token,
                        lane: pool.lane,
                        surge: false,
                    });
                }
            }
            Activity::Backoff {
                not_before_ms,
                token,
                ..
            } => out.push(Effect::ArmTimer {
                pool_id: pool_id.clone(),
                timer: Timer::Restart,
                token: *token,
                at_ms: *not_before_ms,
            }),
            Activity::Running => out.push(Effect::StartProbing {
                pool_id: pool_id.clone(),
                pid: None,
                lane: pool.lane,
            }),
            _ => {}
        }
        let breaker = &pool.supervision.breaker;
        if let (BreakerState::Open, Some(at_ms)) = (breaker.state, breaker.half_open_at_ms) {
            out.push(Effect::ArmTimer {
                pool_id,
                timer: Timer::HalfOpen,
                token: breaker.token,
                at_ms,
            });
        }
    }
    out
}

/// The check of a recorded second engine after a start-up replay.
fn verify(
    pool: &Pool,
    process: &crate::state::EngineProcess,
    engine: &PreparedEngine,
    lane: Lane,
) -> Effect {
    Effect::VerifyEngine {
        pool_id: pool.id.clone(),
        pid: process.pid,
        start_time: process.start_time,
        binary_path: Some(engine.binary_path.clone()),
        boot_id: process.boot_id.clone(),
        exe: process.exe.clone(),
        lane,
    }
}
