//! `decide` for observations (what the shell saw: processes, probes, timers, GPUs): stale
//! ones are ignored, current ones become facts.
//!
//! Owns: how each `Observation` is matched to the pool's current engine, start or timer.
//! Never: trusts a pid or token that is not the current one.

use super::lifecycle::{
    after_stop, cancel_reload, exit_text, fail_running, start_failed, stop, supervise,
};
use super::*;
use crate::command::Observation;

pub(super) fn decide_observation(d: &mut Decision<'_, '_>, observation: &Observation) {
    if super::surge::observe(d, observation) {
        return; // about a pool's second engine
    }
    match observation {
        Observation::DaemonStarted { .. } => daemon_started(d, observation),
        Observation::DaemonStopping { .. } => daemon_stopping(d, observation),
        Observation::GpuInventory { .. } => gpu_inventory(d, observation),
        Observation::MigInventory { .. } => mig_inventory(d, observation),
        Observation::PreflightFailed { .. } => preflight_failed(d, observation),
        Observation::EngineSpawned { .. } => engine_spawned(d, observation),
        Observation::SpawnFailed { .. } => spawn_failed(d, observation),
        Observation::HealthPassed { .. } => health_passed(d, observation),
        Observation::PreloadTimedOut { .. } => preload_timed_out(d, observation),
        Observation::HandoffWritten { .. } => handoff_written(d, observation),
        Observation::HandoffWriteFailed { .. } => handoff_write_failed(d, observation),
        Observation::ProbeFailed { .. } => probe_failed(d, observation),
        Observation::ProbeSucceeded { .. } => probe_succeeded(d, observation),
        Observation::EngineExited { .. } => engine_exited(d, observation),
        Observation::EngineLogFault { .. } => engine_log_fault(d, observation),
        Observation::EngineNotOnGpu { .. } => engine_not_on_gpu(d, observation),
        Observation::EngineStopped { .. } => engine_stopped(d, observation),
        Observation::TimerFired {
            pool_id,
            timer,
            token,
        } => timer_fired(d, pool_id, *timer, *token),
        Observation::ModelStaged { .. } => model_staged(d, observation),
        Observation::StagingFailed { .. } => staging_failed(d, observation),
        Observation::EngineAdopted { .. } => engine_adopted(d, observation),
        Observation::EngineLost { .. } => engine_lost(d, observation),
        Observation::GpuXid { .. } => gpu_xid(d, observation),
        Observation::DriverReset { .. } => driver_reset(d, observation),
        Observation::DeviceMaskViolation { .. } => device_mask_violation(d, observation),
        Observation::VramObserved { .. } => vram_observed(d, observation),
        Observation::PreloadRefused { .. } => preload_refused(d, observation),
        Observation::HandoffInvalid { .. } => handoff_invalid(d, observation),
        Observation::UntrackedEngineStopped { .. } => untracked_engine_stopped(d, observation),
        Observation::EngineStalled { .. } => engine_stalled(d, observation),
        Observation::PortInUse { .. } => port_in_use(d, observation),
        Observation::GpuMemoryReleased { .. } => release::gpu_memory_released(d, observation),
        Observation::GpuMemoryStuck { .. } => release::gpu_memory_stuck(d, observation),
    }
}

fn daemon_started(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::DaemonStarted { version, pid } = observation else {
        return;
    };
    d.push(
        None,
        Event::DaemonStarted {
            version: version.clone(),
            pid: *pid,
        },
    );
    super::surge::after_daemon_started(d);
}

fn daemon_stopping(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::DaemonStopping { reason } = observation else {
        return;
    };
    d.push(
        None,
        Event::DaemonStopped {
            reason: reason.clone(),
        },
    );
}

fn gpu_inventory(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::GpuInventory { gpus } = observation else {
        return;
    };
    let gpus: Vec<_> = gpus.iter().take(GPUS_MAX).cloned().collect();
    let node = &d.node();
    let clears = node.preflight_error.is_some() && !gpus.is_empty();
    if gpus != node.gpus || clears {
        d.push(None, Event::GpuInventoryObserved { gpus });
    }
}

fn mig_inventory(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::MigInventory { devices } = observation else {
        return;
    };
    let devices: Vec<_> = devices.iter().take(MIG_DEVICES_MAX).cloned().collect();
    if devices != d.node().mig_devices {
        d.push(None, Event::MigInventoryObserved { devices });
    }
}

fn preflight_failed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::PreflightFailed { reason } = observation else {
        return;
    };
    if d.node().preflight_error.as_ref() != Some(reason) {
        d.push(
            None,
            Event::PreflightFailed {
                reason: reason.clone(),
            },
        );
    }
}

fn engine_spawned(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineSpawned {
        pool_id,
        token,
        pid,
        start_time,
        log_path,
        pid_path,
        boot_id,
    } = observation
    else {
        return;
    };
    let now = d.now();
    let policy = d.ctx.policy;
    let Some(pool) = d.pool(pool_id) else { return };
    let Activity::Starting { attempt, .. } = pool.activity else {
        return;
    };
    if pool.process.is_some() || pool.start_token != *token {
        return;
    }
    d.push(
        Some(pool_id),
        Event::EngineSpawned {
            pid: *pid,
            start_time: *start_time,
            log_path: log_path.clone(),
            pid_path: pid_path.clone(),
            attempt,
            health_deadline_at_ms: now.saturating_add(policy.health.preload_timeout_ms),
            boot_id: boot_id.clone(),
        },
    );
}

fn spawn_failed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::SpawnFailed {
        pool_id,
        token,
        reason,
    } = observation
    else {
        return;
    };
    if !release::awaiting_spawn(d, pool_id, *token) {
        return;
    }
    start_failed(
        d,
        pool_id,
        StartFailure::SpawnFailed,
        ExitReason::Unknown,
        format!("spawn failed: {reason}"),
        None,
    );
}

fn health_passed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::HealthPassed {
        pool_id,
        pid,
        after_ms,
        engine_version,
        slots_total,
        exe,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.starting_engine(pool_id, *pid, false) else {
        return;
    };
    if let Some(gpu_uuid) = d.node().quarantined_gpu(pool.device_mask()) {
        // The GPU was quarantined while this engine was being spawned.
        let detail = format!("GPU {gpu_uuid} was quarantined while the engine started");
        let failure = StartFailure::GpuFault;
        start_failed(
            d,
            pool_id,
            failure,
            ExitReason::DriverError,
            detail,
            Some(*pid),
        );
        return;
    }
    let prepared = pool.engine.as_ref();
    let (slots, version) =
        reported_slots_and_version(prepared, *slots_total, engine_version.as_ref());
    d.push(
        Some(pool_id),
        Event::HealthCheckPassed {
            after_ms: *after_ms,
            engine_version: version,
            slots_total: slots,
            exe: exe.as_ref().map(|exe| tail(exe, 4096)),
        },
    );
}

fn preload_timed_out(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::PreloadTimedOut {
        pool_id,
        pid,
        last_probe,
    } = observation
    else {
        return;
    };
    let policy = d.ctx.policy;
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.pid() != Some(*pid) || !matches!(pool.activity, Activity::Starting { .. }) {
        return;
    }
    start_failed(
        d,
        pool_id,
        StartFailure::HealthTimeout,
        ExitReason::HealthTimeout,
        if last_probe.trim().is_empty() {
            format!(
                "no healthy answer within {} ms",
                policy.health.preload_timeout_ms
            )
        } else {
            format!(
                "no healthy answer within {} ms; last probe: {}",
                policy.health.preload_timeout_ms,
                tail(last_probe, 512)
            )
        },
        Some(*pid),
    );
}

fn handoff_written(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::HandoffWritten { pool_id, pid, path } = observation else {
        return;
    };
    let now = d.now();
    let policy = d.ctx.policy;
    let Some(pool) = d.starting_engine(pool_id, *pid, true) else {
        return;
    };
    let Activity::Starting { kind, .. } = pool.activity else {
        return;
    };
    let breaker_close_at_ms = (pool.supervision.breaker.state == BreakerState::HalfOpen)
        .then(|| now.saturating_add(policy.breaker.close_after_stable_ms));
    let reload = pool.reload.clone();
    d.push(
        Some(pool_id),
        Event::PoolReady {
            handoff_path: path.clone(),
            backoff_reset_at_ms: now.saturating_add(policy.backoff.reset_after_ms),
            breaker_close_at_ms,
        },
    );
    if let Some(reload) = reload {
        let duration_ms = now.saturating_sub(reload.requested_at_ms);
        match kind {
            StartKind::Again(StartPurpose::Reload) => d.push(
                Some(pool_id),
                Event::ReloadSucceeded {
                    old: reload.old_model_ref,
                    new: reload.new_model_ref,
                    duration_ms,
                },
            ),
            StartKind::Again(StartPurpose::Rollback) => d.push(
                Some(pool_id),
                Event::ReloadRolledBack {
                    model_ref: reload.old_model_ref,
                    duration_ms,
                },
            ),
            _ => {}
        }
    }
}

fn handoff_write_failed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::HandoffWriteFailed {
        pool_id,
        pid,
        reason,
    } = observation
    else {
        return;
    };
    if d.starting_engine(pool_id, *pid, true).is_none() {
        return;
    }
    start_failed(
        d,
        pool_id,
        StartFailure::HandoffFailed,
        ExitReason::Unknown,
        format!("writing the handoff file failed: {reason}"),
        Some(*pid),
    );
}

fn probe_failed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::ProbeFailed {
        pool_id,
        pid,
        error,
    } = observation
    else {
        return;
    };
    let policy = d.ctx.policy;
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.pid().unwrap_or(0) != *pid || !pool.serving() {
        return;
    }
    let consecutive = pool.probe_failures.saturating_add(1);
    d.push(Some(pool_id), Event::HealthCheckFailed { consecutive });
    if consecutive >= policy.health.failures_to_crash {
        let detail = format!(
            "{consecutive} consecutive health probes failed: {}",
            tail(error, 512)
        );
        fail_running(d, pool_id, ExitReason::HealthTimeout, detail);
    }
}

fn probe_succeeded(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::ProbeSucceeded { pool_id, pid } = observation else {
        return;
    };
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.pid().unwrap_or(0) != *pid || !pool.serving() || pool.probe_failures == 0 {
        return; // routine heartbeats are not journaled
    }
    let after_failures = pool.probe_failures;
    d.push(
        Some(pool_id),
        Event::HealthCheckRecovered { after_failures },
    );
}

fn engine_exited(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineExited {
        pool_id,
        pid,
        exit_code,
        signal,
        reason,
        detail,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool_running(pool_id, *pid) else {
        return; // stale: another engine, or no pool
    };
    let reason = match (*exit_code, *signal, *reason) {
        (Some(0), None, ExitReason::Graceful | ExitReason::Crash | ExitReason::Unknown) => {
            ExitReason::Graceful
        }
        (_, Some(_), ExitReason::Graceful) => ExitReason::Signal,
        (_, _, ExitReason::Graceful) => ExitReason::Crash,
        (_, _, other) => other,
    };
    let detail = tail(detail, DETAIL_LEN_MAX);
    match pool.activity.clone() {
        Activity::Stopping {
            reason: stop_reason,
            ..
        } => {
            let graceful = *exit_code == Some(0) || *signal == Some(15);
            d.push(
                Some(pool_id),
                Event::EngineStopped {
                    pid: *pid,
                    graceful,
                },
            );
            after_stop(d, pool_id, &stop_reason);
        }
        Activity::Starting { .. } => {
            let cause = if reason == ExitReason::Graceful {
                ExitReason::Crash
            } else {
                reason
            };
            start_failed(
                d,
                pool_id,
                StartFailure::EngineExited,
                cause,
                exit_text(*exit_code, *signal, cause, &detail),
                None,
            );
        }
        _ => {
            cancel_reload(d, pool_id, "the engine exited during the reload");
            d.push(
                Some(pool_id),
                Event::EngineExited {
                    pid: *pid,
                    exit_code: *exit_code,
                    signal: *signal,
                    reason,
                    detail: if reason == ExitReason::Graceful {
                        "engine exited with code 0 without a stop request".to_string()
                    } else {
                        exit_text(*exit_code, *signal, reason, &detail)
                    },
                },
            );
            if reason != ExitReason::Graceful {
                supervise(d, pool_id, reason);
            }
        }
    }
}

fn engine_log_fault(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineLogFault {
        pool_id,
        pid,
        reason,
        line,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool_running(pool_id, *pid) else {
        return; // stale: another engine, or no pool
    };
    let detail = format!("engine log: {}", tail(line.trim(), 512));
    match pool.activity {
        Activity::Starting { .. } => start_failed(
            d,
            pool_id,
            StartFailure::GpuFault,
            *reason,
            detail,
            Some(*pid),
        ),
        Activity::Running => fail_running(d, pool_id, *reason, detail),
        // Stopping, or already handled: the exit will tell the rest.
        _ => {}
    }
}

/// A ready engine holding leases made no progress on the work it reports: stopped as a
/// failure `stalled` (unready at once; the restart policy answers its stop). Stale when the
/// engine is another, not running, or the pool's leases were returned meanwhile (an engine
/// without leases is not watched).
fn engine_stalled(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineStalled {
        pool_id,
        pid,
        detail,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool_running(pool_id, *pid) else {
        return; // stale: another engine, or no pool
    };
    if pool.activity != Activity::Running || !pool.serving() || pool.leases.is_empty() {
        return;
    }
    let detail = format!("engine stalled: {}", tail(detail, 1024));
    fail_running(d, pool_id, ExitReason::Stalled, detail);
}

fn engine_not_on_gpu(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineNotOnGpu {
        pool_id,
        token,
        pid,
        detail,
    } = observation
    else {
        return;
    };
    // Only the start it was taken for: the same start (token) and engine (pid), still
    // starting (before or after its health check; not yet ready).
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.pid() != Some(*pid)
        || pool.start_token != *token
        || !matches!(pool.activity, Activity::Starting { .. })
    {
        return;
    }
    // A GPU placement fault: counted with the GPU faults (`cuda_error`: the CUDA
    // runtime of the engine saw no usable device), see `StartFailure::CpuSpillover`.
    start_failed(
        d,
        pool_id,
        StartFailure::CpuSpillover,
        ExitReason::CudaError,
        format!("not running on its GPUs (CPU_SPILLOVER): {}", detail.trim()),
        Some(*pid),
    );
}

fn port_in_use(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::PortInUse {
        pool_id,
        token,
        pid,
        detail,
    } = observation
    else {
        return;
    };
    // Only the start it was taken for: before the spawn no engine is recorded; after it, the
    // same engine, still starting (not yet ready).
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.pid() != *pid
        || pool.start_token != *token
        || !matches!(pool.activity, Activity::Starting { .. })
    {
        return;
    }
    start_failed(
        d,
        pool_id,
        StartFailure::PortInUse,
        ExitReason::Crash,
        format!("port in use (PORT_IN_USE): {}", detail.trim()),
        *pid,
    );
}

fn engine_stopped(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineStopped {
        pool_id,
        pid,
        graceful,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool(pool_id) else { return };
    let Activity::Stopping { reason, .. } = pool.activity.clone() else {
        return;
    };
    if pool.pid() != Some(*pid) {
        return;
    }
    d.push(
        Some(pool_id),
        Event::EngineStopped {
            pid: *pid,
            graceful: *graceful,
        },
    );
    after_stop(d, pool_id, &reason);
}

fn model_staged(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::ModelStaged {
        pool_id,
        token,
        path,
        digest,
    } = observation
    else {
        return;
    };
    let now = d.now();
    let Some(pool) = d.pool(pool_id) else { return };
    let Some(reload) = &pool.reload else { return };
    if reload.token != *token
        || reload.stage != ReloadStage::Staging
        || reload.staged_path.is_some()
        || !pool.serving()
    {
        return;
    }
    if let (Some(want), Some(got)) = (&reload.digest, digest) {
        if want != got {
            let reason = format!("digest mismatch: expected {want}, staged {got}");
            cancel_reload(d, pool_id, &reason);
            return;
        }
    }
    let deadline_ms = reload.drain_deadline_ms;
    let idle = pool.leases.is_empty();
    let surge = reload.strategy == crate::event::ReloadStrategy::Surge;
    d.push(
        Some(pool_id),
        Event::ModelStaged {
            path: path.clone(),
            digest: digest.clone(),
        },
    );
    if surge {
        super::surge::start(d, pool_id, path);
        return;
    }
    d.push(
        Some(pool_id),
        Event::DrainRequested {
            deadline_ms,
            deadline_at_ms: now.saturating_add(deadline_ms),
        },
    );
    if idle {
        stop(d, pool_id, StopReason::Drained);
    }
}

fn staging_failed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::StagingFailed {
        pool_id,
        token,
        reason,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool(pool_id) else { return };
    let Some(reload) = &pool.reload else { return };
    if reload.token != *token || reload.stage != ReloadStage::Staging {
        return;
    }
    cancel_reload(
        d,
        pool_id,
        &format!("staging failed: {}", tail(reason, 1024)),
    );
}

fn engine_adopted(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineAdopted { pool_id, pid } = observation else {
        return;
    };
    let Some(pool) = d.pool(pool_id) else { return };
    match &pool.process {
        Some(process) if process.pid == *pid && !process.adopted => {
            d.push(Some(pool_id), Event::EngineAdopted { pid: *pid })
        }
        _ => {}
    }
}

fn engine_lost(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::EngineLost { pool_id, pid } = observation else {
        return;
    };
    let Some(pool) = d.pool_running(pool_id, *pid) else {
        return; // stale: another engine, or no pool
    };
    match pool.activity.clone() {
        Activity::Stopping { reason, .. } => {
            d.push(
                Some(pool_id),
                Event::EngineStopped {
                    pid: *pid,
                    graceful: false,
                },
            );
            after_stop(d, pool_id, &reason);
        }
        Activity::Starting { .. } => start_failed(
            d,
            pool_id,
            StartFailure::EngineExited,
            ExitReason::Unknown,
            format!("engine pid {pid} is gone (lost while the daemon was down)"),
            None,
        ),
        _ => {
            cancel_reload(d, pool_id, "the engine was lost during the reload");
            d.push(Some(pool_id), Event::EngineLost { pid: *pid });
            supervise(d, pool_id, ExitReason::Unknown);
        }
    }
}

fn gpu_xid(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::GpuXid { gpu_uuid, xid } = observation else {
        return;
    };
    let gpu_uuid = tail(gpu_uuid, 256);
    d.push(
        None,
        Event::GpuXidObserved {
            gpu_uuid: gpu_uuid.clone(),
            xid: *xid,
        },
    );
    quarantine_if_due(d, &gpu_uuid);
    fail_pools_on(d, &gpu_uuid, &format!("NVML Xid {xid} on GPU {gpu_uuid}"));
}

/// Fails the engines (starting or ready) of every pool whose mask covers `gpu_uuid`.
fn fail_pools_on(d: &mut Decision<'_, '_>, gpu_uuid: &str, detail: &str) {
    let inventory = d.node().inventory();
    let hit: Vec<(PoolId, bool)> = d
        .pools()
        .into_iter()
        .filter(|p| p.process.is_some() && mask_covers_in(p.device_mask(), gpu_uuid, inventory))
        .filter_map(|p| match p.activity {
            Activity::Starting { .. } => Some((p.id.clone(), true)),
            Activity::Running => Some((p.id.clone(), false)),
            _ => None,
        })
        .collect();
    for (pool_id, starting) in hit {
        let detail = detail.to_string();
        if starting {
            let pid = d.pool(&pool_id).and_then(Pool::pid);
            start_failed(
                d,
                &pool_id,
                StartFailure::GpuFault,
                ExitReason::DriverError,
                detail,
                pid,
            );
        } else {
            fail_running(d, &pool_id, ExitReason::DriverError, detail);
        }
    }
}

/// Quarantines `gpu_uuid` when its hardware faults within `[gpu] quarantine_window_ms` (the
/// fault just recorded included) reach `[gpu] quarantine_after`, and holds the restarts of
/// the pools on it that wait for one (backoff, open breaker, failed). Returns whether it was
/// quarantined now. Their running engines are the caller's to fail.
fn quarantine_if_due(d: &mut Decision<'_, '_>, gpu_uuid: &str) -> bool {
    let policy = &d.ctx.policy.quarantine;
    let since = d.now().saturating_sub(policy.window_ms);
    let node = d.node();
    let faults = node.gpu_faults_since(gpu_uuid, since);
    if faults < policy.after || node.quarantined.contains_key(gpu_uuid) {
        return false;
    }
    let gpu_uuid = gpu_uuid.to_string();
    d.push(
        None,
        Event::GpuQuarantined {
            gpu_uuid: gpu_uuid.clone(),
            faults,
        },
    );
    let inventory = d.node().inventory();
    let waiting: Vec<PoolId> = d
        .pools()
        .into_iter()
        .filter(|p| p.engine.is_some() && p.process.is_none())
        .filter(|p| {
            matches!(
                p.activity,
                Activity::Backoff { .. } | Activity::CircuitOpen | Activity::Failed
            )
        })
        .filter(|p| mask_covers_in(p.device_mask(), &gpu_uuid, inventory))
        .map(|p| p.id.clone())
        .collect();
    for pool_id in waiting {
        let held = Event::RestartHeld {
            gpu_uuid: gpu_uuid.clone(),
        };
        d.push(Some(&pool_id), held);
    }
    true
}

fn driver_reset(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::DriverReset { gpu_uuid } = observation else {
        return;
    };
    let gpu_uuid = tail(gpu_uuid, 256);
    d.push(
        None,
        Event::DriverResetObserved {
            gpu_uuid: gpu_uuid.clone(),
        },
    );
    if quarantine_if_due(d, &gpu_uuid) {
        let detail = format!("driver reset of GPU {gpu_uuid}, now quarantined");
        fail_pools_on(d, &gpu_uuid, &detail);
    }
}

fn device_mask_violation(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::DeviceMaskViolation {
        pool_id,
        pid,
        gpu_uuid,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool_running(pool_id, *pid) else {
        return; // stale: another engine, or no pool
    };
    let gpu_uuid = tail(gpu_uuid, 256);
    if pool.last_error.as_deref() == Some(&mask_violation_message(pool, *pid, &gpu_uuid)) {
        return; // already recorded
    }
    d.push(
        Some(pool_id),
        Event::DeviceMaskViolation {
            pid: *pid,
            gpu_uuid,
        },
    );
}

fn vram_observed(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::VramObserved {
        pool_id,
        pid,
        used_bytes,
    } = observation
    else {
        return;
    };
    let Some(pool) = d.pool_running(pool_id, *pid) else {
        return; // stale: another engine, or no pool
    };
    let moved = pool
        .vram_used_bytes
        .is_none_or(|old| old.abs_diff(*used_bytes) >= VRAM_DELTA_MIN_BYTES);
    if moved {
        d.push(
            Some(pool_id),
            Event::VramUsageObserved {
                pid: *pid,
                used_bytes: *used_bytes,
            },
        );
    }
}

fn preload_refused(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::PreloadRefused {
        pool_id,
        code,
        reason,
    } = observation
    else {
        return;
    };
    if d.pool(pool_id).is_some() {
        d.push(
            Some(pool_id),
            Event::PreloadRejected {
                code: code.as_str().to_string(),
                reason: tail(reason, 1024),
            },
        );
    }
}

fn handoff_invalid(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::HandoffInvalid {
        file,
        field,
        reason,
    } = observation
    else {
        return;
    };
    let record = (tail(file, 1024), tail(field, 256), tail(reason, 1024));
    if d.node().last_handoff_rejection.as_ref() != Some(&record) {
        d.push(
            None,
            Event::HandoffRejected {
                file: record.0,
                field: record.1,
                reason: record.2,
            },
        );
    }
}

fn untracked_engine_stopped(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::UntrackedEngineStopped {
        pool_id,
        pid,
        reason,
    } = observation
    else {
        return;
    };
    d.push(
        None,
        Event::UntrackedEngineStopped {
            pool_id: tail(pool_id, 256),
            pid: *pid,
            reason: tail(reason, 1024),
        },
    );
}

pub(super) fn timer_fired(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    timer: crate::effect::Timer,
    token: u64,
) {
    use crate::effect::Timer;
    let Some(pool) = d.pool(pool_id) else { return };
    match timer {
        Timer::Restart => restart_due(d, pool_id, token),
        Timer::HalfOpen => half_open_due(d, pool_id, token),
        Timer::DrainDeadline => {
            let Some(drain) = &pool.drain else { return };
            if drain.token != token || !matches!(pool.activity, Activity::Running) {
                return;
            }
            stop(d, pool_id, StopReason::DrainDeadline);
        }
        Timer::BackoffReset => {
            let sup = &pool.supervision;
            let dirty = sup.backoff_attempt > 0 || sup.gpu_failures > 0 || sup.other_failures > 0;
            if pool.ready_token != token || !pool.serving() || !dirty {
                return;
            }
            let previous_attempt = sup.backoff_attempt;
            d.push(Some(pool_id), Event::BackoffReset { previous_attempt });
        }
        Timer::RetireDeadline => {} // decided with the second engine (`surge.rs`)
        Timer::BreakerClose => {
            if pool.ready_token != token
                || !pool.serving()
                || pool.supervision.breaker.state != BreakerState::HalfOpen
            {
                return;
            }
            d.push(Some(pool_id), Event::CircuitClosed);
        }
    }
}

/// The restart timer of the backoff armed with `token`: the engine starts again, unless the
/// backoff was superseded or the breaker opened meanwhile.
fn restart_due(d: &mut Decision<'_, '_>, pool_id: &PoolId, token: u64) {
    let Some(pool) = d.pool(pool_id) else { return };
    let Activity::Backoff {
        attempt,
        token: armed,
        ..
    } = pool.activity
    else {
        return;
    };
    if armed != token || pool.supervision.breaker.state == BreakerState::Open {
        return;
    }
    let Some(engine) = pool.engine.clone() else {
        return;
    };
    if let Some(gpu_uuid) = d.node().quarantined_gpu(pool.device_mask()) {
        let gpu_uuid = gpu_uuid.to_string();
        d.push(Some(pool_id), Event::RestartHeld { gpu_uuid });
        return;
    }
    d.push(
        Some(pool_id),
        Event::EngineStartRequested {
            engine: Box::new(engine),
            attempt,
            purpose: StartPurpose::Restart,
        },
    );
}

/// The breaker's open period armed with `token` is over: half-open, and a trial start when
/// the pool has an engine to try.
fn half_open_due(d: &mut Decision<'_, '_>, pool_id: &PoolId, token: u64) {
    let Some(pool) = d.pool(pool_id) else { return };
    let breaker = &pool.supervision.breaker;
    if breaker.state != BreakerState::Open || breaker.token != token {
        return;
    }
    let trial = match (&pool.activity, &pool.engine) {
        (Activity::CircuitOpen | Activity::Failed, Some(engine)) => Some(engine.clone()),
        _ => None,
    };
    let attempt = pool.supervision.backoff_attempt.saturating_add(1);
    let held = trial
        .as_ref()
        .and_then(|_| d.node().quarantined_gpu(pool.device_mask()))
        .map(str::to_string);
    d.push(Some(pool_id), Event::CircuitHalfOpened);
    if let Some(gpu_uuid) = held {
        // No trial on a quarantined GPU: half-open, the pool waits for a preload.
        d.push(Some(pool_id), Event::RestartHeld { gpu_uuid });
        return;
    }
    if let Some(engine) = trial {
        d.push(
            Some(pool_id),
            Event::EngineStartRequested {
                engine: Box::new(engine),
                attempt,
                purpose: StartPurpose::Trial,
            },
        );
    }
}
