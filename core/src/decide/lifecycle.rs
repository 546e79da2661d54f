//! `decide` for the lifecycle steps shared by commands and observations: stopping, what
//! follows a stop, failed starts, and the supervision policy (backoff, breaker, storms).
//!
//! Owns: the order of facts around a stop or a failure.
//! Never: reads a clock or draws randomness; delays are chosen from the context and recorded.

use super::*;

/// Asks the engine to stop for `reason`; when no process runs, the stop completes at once.
pub(super) fn stop(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: StopReason) {
    let pid = d.pool(pool_id).and_then(Pool::pid);
    d.push(
        Some(pool_id),
        Event::EngineStopRequested {
            reason: reason.clone(),
            pid,
            grace_ms: d.ctx.policy.stop.grace_ms,
        },
    );
    if pid.is_none() {
        after_stop(d, pool_id, &reason);
    }
}

/// What follows a completed stop.
pub(super) fn after_stop(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: &StopReason) {
    let now = d.now();
    match reason {
        StopReason::Requested => {}
        StopReason::Remove => d.push(Some(pool_id), Event::PoolRemoved),
        StopReason::Drained | StopReason::DrainDeadline => {
            let Some(pool) = d.pool(pool_id) else { return };
            let (duration_ms, leases_at_stop) = pool.drain.as_ref().map_or((0, 0), |drain| {
                (
                    now.saturating_sub(drain.requested_at_ms),
                    drain.leases_at_stop,
                )
            });
            let next = pool.reload.as_ref().and_then(|reload| {
                let path = reload.staged_path.as_ref()?;
                (reload.stage == ReloadStage::Draining).then(|| reload.old_engine.with_model(path))
            });
            let outcome = if *reason == StopReason::Drained {
                DrainOutcome::Graceful
            } else {
                DrainOutcome::ForceStopped
            };
            d.push(
                Some(pool_id),
                Event::DrainCompleted {
                    outcome,
                    duration_ms,
                    leases_at_stop,
                },
            );
            if let Some(engine) = next {
                if let Some(gpu_uuid) = held_by_quarantine(d, &engine) {
                    let why =
                        format!("GPU {gpu_uuid} is quarantined; the new engine is not started");
                    cancel_reload(d, pool_id, &why);
                    d.push(Some(pool_id), Event::RestartHeld { gpu_uuid });
                    return;
                }
                d.push(
                    Some(pool_id),
                    Event::EngineStartRequested {
                        engine: Box::new(engine),
                        attempt: 0,
                        purpose: StartPurpose::Reload,
                    },
                );
            }
        }
        StopReason::Failure { reason, .. } => supervise(d, pool_id, *reason),
        StopReason::ReloadFailed { .. } => {
            let old = d
                .pool(pool_id)
                .and_then(|pool| pool.reload.as_ref())
                .filter(|reload| reload.stage == ReloadStage::RollingBack)
                .map(|reload| reload.old_engine.clone());
            if let Some(engine) = old {
                start_rollback(d, pool_id, engine);
            }
        }
    }
}

/// Ends a reload in progress (the old engine is being stopped, or failed); a surge's new
/// engine is killed with it.
pub(super) fn cancel_reload(d: &mut Decision<'_, '_>, pool_id: &PoolId, why: &str) {
    super::surge::cancel_reload(d, pool_id, why);
}

/// The restart policy's answer to a failure already recorded in the (scratch) state:
/// restart with backoff, open the breaker (threshold, failed trial, storm), or nothing (a
/// handoff pool without a prepared engine, or a breaker already open).
pub(super) fn supervise(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: ExitReason) {
    let now = d.now();
    let policy = d.ctx.policy;
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.engine.is_none() {
        return;
    }
    if let Some(gpu_uuid) = d.node().quarantined_gpu(pool.device_mask()) {
        // Not restarted onto a quarantined GPU, and the breaker is left as it is.
        let gpu_uuid = gpu_uuid.to_string();
        d.push(Some(pool_id), Event::RestartHeld { gpu_uuid });
        return;
    }
    let sup = &pool.supervision;
    let class = reason.class();
    let failures = sup.failures(class);
    let open = |open_ms: u64| Event::CircuitOpened {
        failures,
        open_ms,
        class,
        half_open_at_ms: now.saturating_add(open_ms),
    };
    match sup.breaker.state {
        BreakerState::Open => {}
        BreakerState::HalfOpen => {
            let open_ms = sup
                .breaker
                .open_ms
                .max(policy.breaker.open_ms)
                .saturating_mul(2)
                .min(OPEN_MS_MAX);
            d.push(Some(pool_id), open(open_ms));
        }
        BreakerState::Closed => {
            let window_start = now.saturating_sub(policy.storm.window_ms);
            let in_window: Vec<ExitReason> =
                sup.restarts_since(window_start).map(|m| m.reason).collect();
            let restarts = u32::try_from(in_window.len()).unwrap_or(u32::MAX);
            if restarts > policy.storm.max_restarts_effective() {
                let (classification, hint) =
                    classify_storm(in_window.iter().copied().chain([reason]));
                let opened = open(policy.breaker.open_ms.min(OPEN_MS_MAX));
                d.push(
                    Some(pool_id),
                    Event::RestartStormDetected {
                        restarts,
                        window_ms: policy.storm.window_ms,
                        classification,
                        hint: hint.to_string(),
                    },
                );
                d.push(Some(pool_id), opened);
            } else if failures >= policy.breaker.failure_threshold {
                d.push(Some(pool_id), open(policy.breaker.open_ms.min(OPEN_MS_MAX)));
            } else {
                let attempt = sup.backoff_attempt.saturating_add(1);
                let delay_ms =
                    restart_delay_ms(&policy.backoff, attempt, reason, mix(d.ctx.random, pool_id));
                d.push(
                    Some(pool_id),
                    Event::RestartScheduled {
                        attempt,
                        delay_ms,
                        not_before_ms: now.saturating_add(delay_ms),
                        reason,
                    },
                );
            }
        }
    }
}

/// A ready engine is faulty: stop it as a failure (unready and counted at once); the restart
/// policy answers once it has stopped.
pub(super) fn fail_running(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    reason: ExitReason,
    detail: String,
) {
    cancel_reload(d, pool_id, "the engine failed during the reload");
    stop(
        d,
        pool_id,
        StopReason::Failure {
            reason,
            detail: tail(&detail, DETAIL_LEN_MAX),
        },
    );
}

/// A start failed: a reload's new engine rolls back, a rollback ends the reload, anything else
/// is a failed preload/restart handed to the restart policy.
pub(super) fn start_failed(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    failure: StartFailure,
    cause: ExitReason,
    reason: String,
    pid: Option<u32>,
) {
    let reason = tail(&reason, DETAIL_LEN_MAX);
    let Some(pool) = d.pool(pool_id) else { return };
    let kind = match pool.activity {
        Activity::Starting { kind, .. } => kind,
        _ => return,
    };
    match kind {
        StartKind::Again(StartPurpose::Reload) => {
            let old = pool.reload.as_ref().map(|r| r.old_engine.clone());
            let alive = pid.is_some() && pool.pid() == pid;
            d.push(
                Some(pool_id),
                Event::ReloadFailed {
                    reason,
                    stage: ReloadStage::Starting,
                    rolling_back: old.is_some(),
                    pid,
                },
            );
            if let Some(engine) = old.filter(|_| !alive) {
                start_rollback(d, pool_id, engine);
            }
        }
        StartKind::Again(StartPurpose::Rollback) => {
            if pool.reload.is_some() {
                d.push(
                    Some(pool_id),
                    Event::ReloadFailed {
                        reason: format!("rollback failed: {reason}"),
                        stage: ReloadStage::RollingBack,
                        rolling_back: false,
                        pid: None,
                    },
                );
            }
            fail_start(d, pool_id, reason, failure, cause, pid);
        }
        _ => {
            fail_start(d, pool_id, reason, failure, cause, pid);
        }
    }
}

/// Records a failed start. An engine that is still alive (hung, or its handoff failed) is
/// killed first (`PreloadFailed` with its pid puts the pool in `Stopping`); the restart policy
/// answers its `EngineStopped`, so a restart can never race the old engine for its port or GPU.
/// An engine that is gone (never spawned, exited) goes to the restart policy at once.
pub(super) fn fail_start(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    reason: String,
    failure: StartFailure,
    cause: ExitReason,
    pid: Option<u32>,
) {
    let alive = pid.is_some() && d.pool(pool_id).and_then(Pool::pid) == pid;
    d.push(
        Some(pool_id),
        Event::PreloadFailed {
            reason,
            failure,
            cause,
            pid,
        },
    );
    if !alive {
        supervise(d, pool_id, cause);
    }
}

pub(super) fn exit_text(
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: ExitReason,
    detail: &str,
) -> String {
    let how = match (exit_code, signal) {
        (_, Some(signal)) => format!("killed by signal {signal}"),
        (Some(code), None) => format!("exit code {code}"),
        (None, None) => "no exit status".to_string(),
    };
    let detail = detail.trim();
    if detail.is_empty() {
        format!("engine exited ({how}, {})", reason.as_str())
    } else {
        format!("engine exited ({how}, {}): {detail}", reason.as_str())
    }
}

/// The quarantined GPU that `engine`'s mask covers, if any: it must not be started.
fn held_by_quarantine(
    d: &Decision<'_, '_>,
    engine: &crate::engine::PreparedEngine,
) -> Option<String> {
    d.node()
        .quarantined_gpu(engine.device_mask.as_deref())
        .map(str::to_string)
}

/// Starts the old engine again after a failed reload (unless its GPU is quarantined: then
/// the reload ends and the pool is held).
fn start_rollback(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    engine: crate::engine::PreparedEngine,
) {
    if let Some(gpu_uuid) = held_by_quarantine(d, &engine) {
        d.push(
            Some(pool_id),
            Event::ReloadFailed {
                reason: format!("no rollback: GPU {gpu_uuid} is quarantined"),
                stage: ReloadStage::RollingBack,
                rolling_back: false,
                pid: None,
            },
        );
        d.push(Some(pool_id), Event::RestartHeld { gpu_uuid });
        return;
    }
    d.push(
        Some(pool_id),
        Event::EngineStartRequested {
            engine: Box::new(engine),
            attempt: 0,
            purpose: StartPurpose::Rollback,
        },
    );
}
