//! `evolve`: the fold of one event into the registry.
//!
//! Owns: how each recorded fact changes [`State`].
//! Never: fails, panics, reads a clock or decides anything. It applies facts as recorded;
//! validation happened in `decide` before they were journaled. An event that cannot apply (a
//! pool event for an unknown pool, or without a valid pool id) is counted in
//! `State::anomalies` and otherwise ignored.

use crate::engine::SLOTS_MAX;
use crate::event::{
    Event, ExitReason, FailureClass, ReloadStage, ReloadStrategy, Scope, Stamp, StartPurpose,
    StopReason,
};
use crate::gpu::{is_hardware_xid, GPU_FAULTS_MAX, MIG_DEVICES_MAX};
use crate::ids::{LeaseId, PoolId};
use crate::policy::RESTART_WINDOW_CAP;
use crate::state::{
    Activity, Breaker, Drain, EngineProcess, Node, Pool, Quarantine, Reload, RestartMark,
    StartKind, State,
};
use crate::status::BreakerState;

/// The most GPUs kept from an inventory event.
pub const GPUS_MAX: usize = 64;

/// Folds `event` (stamped with `stamp`) into `state`. Always sets `state.last_seq = stamp.seq`.
pub fn evolve(mut state: State, stamp: Stamp<'_>, event: &Event) -> State {
    evolve_in_place(&mut state, stamp, event);
    state
}

/// [`evolve`] on a borrowed state: the same fold, for callers that keep the state in place.
pub fn evolve_in_place(state: &mut State, stamp: Stamp<'_>, event: &Event) {
    // Events are folded in journal order: a seq never goes back (a replay from a snapshot
    // starts after the snapshot's seq).
    debug_assert!(
        stamp.seq > state.last_seq || (stamp.seq == 0 && state.last_seq == 0),
        "event seq {} folded after seq {}",
        stamp.seq,
        state.last_seq
    );
    state.last_seq = stamp.seq;
    match event.scope() {
        Scope::Node => apply_node(state, stamp, event),
        Scope::Pool => {
            let Some(id) = stamp.pool_id else {
                anomaly(state, stamp.seq);
                return;
            };
            let applied = match state.pools.get_mut(id) {
                Some(pool) if !matches!(event, Event::PoolRemoved) => {
                    evolve_existing_pool(pool, stamp, event)
                }
                _ => {
                    let mut slot = state.pools.remove(id);
                    let applied = evolve_pool_slot(&mut slot, stamp, event);
                    if let Some(pool) = slot {
                        state.pools.insert(pool.id.clone(), pool);
                    }
                    applied
                }
            };
            if !applied {
                anomaly(state, stamp.seq);
            }
        }
    }
}

/// Folds a pool event into one pool's slot (`None`: no such pool), as [`evolve`] does for the
/// pool named by `stamp.pool_id`: creates the pool on `PreloadRequested` / `HandoffRegistered`,
/// empties the slot on `PoolRemoved`. Returns false for an event that cannot apply (an anomaly
/// to the caller). `decide` uses this to fold its facts into copies of the pools they touch,
/// without copying the registry.
pub(crate) fn evolve_pool_slot(slot: &mut Option<Pool>, stamp: Stamp<'_>, event: &Event) -> bool {
    if matches!(event, Event::PoolRemoved) {
        return slot.take().is_some();
    }
    if slot.is_none()
        && matches!(
            event,
            Event::PreloadRequested { .. } | Event::HandoffRegistered { .. }
        )
    {
        // Only here is an id built (and validated): lookups go by `&str`.
        match stamp.pool_id.map(PoolId::new) {
            Some(Ok(id)) => *slot = Some(Pool::new(id)),
            _ => return false,
        }
    }
    match slot.as_mut() {
        Some(pool) => evolve_existing_pool(pool, stamp, event),
        None => false,
    }
}

fn evolve_existing_pool(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    pool.last_seq = stamp.seq;
    apply_pool(pool, stamp, event)
}

fn anomaly(state: &mut State, seq: u64) {
    state.anomalies = state.anomalies.saturating_add(1);
    state.last_anomaly_seq = Some(seq);
}

fn apply_node(state: &mut State, stamp: Stamp<'_>, event: &Event) {
    let node = &mut state.node;
    match event {
        Event::DaemonStarted { version, pid } => {
            node.daemon_version = Some(version.clone());
            node.daemon_pid = Some(*pid);
            node.started_at_ms = Some(stamp.ts_ms);
            node.stopped = None;
            node.preflight_error = None;
            // Every recorded engine must be confirmed again (EngineAdopted / EngineLost).
            for pool in state.pools.values_mut() {
                if let Some(process) = pool.process.as_mut() {
                    process.adopted = false;
                }
                if let Some(process) = pool.second.as_mut().and_then(|s| s.process.as_mut()) {
                    process.adopted = false;
                }
            }
        }
        Event::DaemonStopped { reason } => {
            node.stopped = Some((stamp.ts_ms, reason.clone()));
            node.daemon_pid = None;
        }
        Event::GpuInventoryObserved { gpus } => {
            node.gpus = gpus.iter().take(GPUS_MAX).cloned().collect();
            if !node.gpus.is_empty() {
                node.preflight_error = None;
            }
        }
        Event::MigInventoryObserved { devices } => {
            node.mig_devices = devices.iter().take(MIG_DEVICES_MAX).cloned().collect();
        }
        Event::PreflightFailed { reason } => node.preflight_error = Some(reason.clone()),
        Event::GpuXidObserved { gpu_uuid, xid } => {
            node.xid_total = node.xid_total.saturating_add(1);
            if is_hardware_xid(*xid) {
                note_gpu_fault(node, gpu_uuid, stamp.ts_ms);
            }
        }
        Event::DriverResetObserved { gpu_uuid } => {
            node.driver_reset_total = node.driver_reset_total.saturating_add(1);
            note_gpu_fault(node, gpu_uuid, stamp.ts_ms);
        }
        Event::GpuQuarantined { gpu_uuid, faults } => {
            // At most `GPUS_MAX` GPUs are quarantined (a bound, not a rule: the node has no more).
            let room = node.quarantined.len() < GPUS_MAX;
            if room || node.quarantined.contains_key(gpu_uuid) {
                let quarantine = Quarantine {
                    since_ms: stamp.ts_ms,
                    faults: *faults,
                };
                node.quarantined.insert(gpu_uuid.clone(), quarantine);
            }
        }
        Event::GpuUnquarantined { gpu_uuid, .. } => {
            node.quarantined.remove(gpu_uuid);
            node.gpu_faults.remove(gpu_uuid);
        }
        Event::HandoffRejected {
            file,
            field,
            reason,
        } => node.last_handoff_rejection = Some((file.clone(), field.clone(), reason.clone())),
        // A record of the journal's repair, not of the node: only `last_seq` (set above) moves.
        // The events it stands for are gone; the fold goes on from what was kept.
        Event::JournalLossAccepted { .. }
        | Event::UntrackedEngineStopped { .. }
        | Event::GpuMemoryReleased { .. }
        | Event::GpuMemoryStuck { .. } => {}
        _ => {}
    }
}

/// A pool's `last_error` while its restarts are held by a quarantined GPU.
pub fn restart_held_message(gpu_uuid: &str) -> String {
    format!(
        "GPU_QUARANTINED: GPU {gpu_uuid} is quarantined after repeated hardware faults, so the \
         pool is not restarted on it; preload it with a device mask without that GPU, or end \
         the quarantine (POST /v2/gpus/{gpu_uuid}/unquarantine) and preload it again"
    )
}

/// Records a hardware fault of a GPU at `at_ms` (the newest `GPU_FAULTS_MAX` are kept, for
/// at most `GPUS_MAX` GPUs).
fn note_gpu_fault(node: &mut Node, gpu_uuid: &str, at_ms: u64) {
    if !node.gpu_faults.contains_key(gpu_uuid) && node.gpu_faults.len() >= GPUS_MAX {
        return;
    }
    let times = node.gpu_faults.entry(gpu_uuid.to_string()).or_default();
    times.push(at_ms);
    if times.len() > GPU_FAULTS_MAX {
        let excess = times.len() - GPU_FAULTS_MAX;
        times.drain(..excess);
    }
}

/// Records a failure: unready at once, leases dropped, counted per class.
fn note_failure(pool: &mut Pool, reason: ExitReason, detail: &str) {
    pool.ready = false;
    pool.leases.clear();
    pool.drain = None;
    pool.probe_failures = 0;
    pool.crash_count = pool.crash_count.saturating_add(1);
    let sup = &mut pool.supervision;
    match reason.class() {
        FailureClass::GpuFault => sup.gpu_failures = sup.gpu_failures.saturating_add(1),
        FailureClass::Other => sup.other_failures = sup.other_failures.saturating_add(1),
    }
    sup.last_failure_reason = Some(reason);
    pool.last_error = Some(detail.to_string());
    pool.activity = Activity::Failed;
    pool.backoff_reset_at_ms = None;
    pool.breaker_close_at_ms = None;
}

/// The engine is gone (stopped, exited, lost): forget the process.
fn engine_gone(pool: &mut Pool) {
    pool.process = None;
    pool.ready = false;
    pool.leases.clear();
    pool.vram_used_bytes = None;
    pool.probe_failures = 0;
}

fn apply_pool(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let ts = stamp.ts_ms;
    match event {
        Event::PreloadRequested { .. } => return on_preload_requested(pool, stamp, event),
        Event::PreloadRejected { code, reason } => {
            pool.last_error = Some(format!("{code}: {reason}"));
        }
        Event::EngineSpawned { .. } => return on_engine_spawned(pool, stamp, event),
        Event::HealthCheckPassed { .. } => return on_health_check_passed(pool, stamp, event),
        Event::PoolReady { .. } => return on_pool_ready(pool, stamp, event),
        Event::PreloadFailed { .. } => return on_preload_failed(pool, event),
        Event::LeaseGranted { lease_id } => {
            if pool.leases.len() < SLOTS_MAX as usize {
                pool.leases.insert(lease_id.clone());
            }
        }
        Event::LeaseReleased { lease_id } => on_lease_released(pool, lease_id),
        Event::HealthCheckFailed { consecutive } => pool.probe_failures = *consecutive,
        Event::EngineExited { .. } => return on_engine_exited(pool, event),
        Event::RestartScheduled { .. } => return on_restart_scheduled(pool, stamp, event),
        Event::CircuitOpened { .. } => return on_circuit_opened(pool, stamp, event),
        Event::CircuitHalfOpened => {
            let breaker = &mut pool.supervision.breaker;
            breaker.state = BreakerState::HalfOpen;
            breaker.half_open_at_ms = None;
        }
        Event::CircuitClosed => close_breaker(pool),
        Event::CircuitReset { .. } => return on_circuit_reset(pool, event),
        Event::RestartStormDetected { .. } => return on_restart_storm_detected(pool, event),
        Event::EngineAdopted { pid } => return on_engine_adopted(pool, *pid),
        Event::EngineLost { .. } => return on_engine_lost(pool, event),
        Event::DrainRequested { .. } => return on_drain_requested(pool, stamp, event),
        Event::DrainCompleted { .. } => {
            pool.drain = None;
            pool.ready = false;
            pool.leases.clear();
        }
        Event::EngineStopRequested { .. } => return on_engine_stop_requested(pool, event),
        Event::EngineStopped { .. } => return on_engine_stopped(pool, event),
        Event::ReloadRequested { .. } => return on_reload_requested(pool, stamp, event),
        Event::ModelStaged { .. } => return on_model_staged(pool, event),
        Event::ReloadSucceeded { new, .. } => {
            pool.model_ref = Some(new.clone());
            pool.model_digest = pool.reload.take().and_then(|r| r.digest);
        }
        Event::ReloadFailed { .. } => return on_reload_failed(pool, event),
        Event::ReloadRolledBack { .. } => return on_reload_rolled_back(pool, event),
        Event::DeviceMaskViolation { pid, gpu_uuid } => {
            pool.mask_violations = pool.mask_violations.saturating_add(1);
            pool.last_error = Some(mask_violation_message(pool, *pid, gpu_uuid));
        }
        Event::HandoffRegistered { .. } => return on_handoff_registered(pool, stamp, event),
        Event::EngineStartRequested { .. } => return on_engine_start_requested(pool, stamp, event),
        Event::HealthCheckRecovered { .. } => {
            pool.probe_failures = 0;
            pool.last_heartbeat_ms = Some(ts);
        }
        Event::BackoffReset { .. } => return on_backoff_reset(pool, event),
        Event::VramUsageObserved { used_bytes, .. } => pool.vram_used_bytes = Some(*used_bytes),
        Event::RestartHeld { gpu_uuid } => on_restart_held(pool, gpu_uuid),
        Event::ReloadStrategyChosen { .. }
        | Event::SurgeStartRequested { .. }
        | Event::SurgeSpawned { .. }
        | Event::SurgeHealthPassed { .. }
        | Event::SurgeSwitched { .. }
        | Event::SecondStopRequested { .. }
        | Event::SecondEngineEnded { .. } => return crate::surge::apply_surge(pool, stamp, event),
        // Node events and PoolRemoved never reach here.
        _ => return false,
    }
    true
}

fn on_lease_released(pool: &mut Pool, lease_id: &LeaseId) {
    if !pool.leases.remove(lease_id) {
        // A lease the old engine serves after a surge's switch.
        if let Some(second) = pool.second.as_mut() {
            second.leases.remove(lease_id);
        }
    }
}

/// The pool's engine, or its second engine, was found alive and ours after a restart.
fn on_engine_adopted(pool: &mut Pool, pid: u32) -> bool {
    let second = pool.second.as_mut().and_then(|s| s.process.as_mut());
    match (pool.process.as_mut(), second) {
        (Some(process), _) if process.pid == pid => process.adopted = true,
        (_, Some(process)) if process.pid == pid => process.adopted = true,
        _ => return false,
    }
    true
}

fn on_restart_held(pool: &mut Pool, gpu_uuid: &str) {
    if pool.process.is_none() {
        pool.activity = Activity::Failed;
    }
    pool.backoff_reset_at_ms = None;
    pool.last_error = Some(restart_held_message(gpu_uuid));
}

fn on_preload_requested(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::PreloadRequested { engine } = event else {
        return false;
    };
    let ts = stamp.ts_ms;
    pool.model_ref = Some(engine.model_path.clone());
    pool.model_digest = None;
    pool.engine = Some((**engine).clone());
    pool.handoff = None;
    pool.ready = false;
    pool.start_token = stamp.seq;
    pool.activity = Activity::Starting {
        kind: StartKind::Preload,
        attempt: 0,
        health_passed: false,
        health_deadline_at_ms: None,
        requested_at_ms: ts,
    };

    true
}

fn on_engine_spawned(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::EngineSpawned {
        pid,
        start_time,
        log_path,
        pid_path,
        attempt: spawned_attempt,
        health_deadline_at_ms,
        boot_id,
    } = event
    else {
        return false;
    };
    let ts = stamp.ts_ms;
    pool.process = Some(EngineProcess {
        pid: *pid,
        start_time: *start_time,
        log_path: log_path.clone(),
        pid_path: pid_path.clone(),
        spawned_seq: stamp.seq,
        spawned_at_ms: ts,
        adopted: false,
        external: false,
        boot_id: boot_id.clone(),
        exe: None,
    });
    pool.vram_used_bytes = None;
    if let Activity::Starting {
        attempt,
        health_deadline_at_ms: deadline,
        ..
    } = &mut pool.activity
    {
        *attempt = *spawned_attempt;
        *deadline = Some(*health_deadline_at_ms);
    }

    true
}

fn on_health_check_passed(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::HealthCheckPassed {
        engine_version,
        slots_total,
        exe,
        ..
    } = event
    else {
        return false;
    };
    let ts = stamp.ts_ms;
    if let Some(process) = pool.process.as_mut() {
        process.exe = exe.clone();
    }
    pool.engine_version = Some(engine_version.clone());
    pool.slots_total = (*slots_total).min(SLOTS_MAX);
    pool.last_heartbeat_ms = Some(ts);
    if let Activity::Starting { health_passed, .. } = &mut pool.activity {
        *health_passed = true;
    }

    true
}

fn on_pool_ready(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::PoolReady {
        handoff_path,
        backoff_reset_at_ms,
        breaker_close_at_ms,
    } = event
    else {
        return false;
    };
    let ts = stamp.ts_ms;
    pool.activity = Activity::Running;
    pool.ready = true;
    pool.handoff_path = Some(handoff_path.clone());
    pool.ready_token = stamp.seq;
    pool.backoff_reset_at_ms = Some(*backoff_reset_at_ms);
    pool.breaker_close_at_ms = *breaker_close_at_ms;
    pool.last_error = None;
    pool.probe_failures = 0;
    pool.last_heartbeat_ms = Some(ts);

    true
}

fn on_preload_failed(pool: &mut Pool, event: &Event) -> bool {
    let Event::PreloadFailed {
        reason, cause, pid, ..
    } = event
    else {
        return false;
    };
    let still_running = pid.is_some() && pool.pid() == *pid;
    note_failure(pool, *cause, reason);
    if still_running {
        // The engine is alive (hung, or its handoff failed) and is being killed: the
        // restart policy answers its `EngineStopped`, so no new engine can race it.
        pool.activity = Activity::Stopping {
            reason: StopReason::Failure {
                reason: *cause,
                detail: reason.clone(),
            },
            grace_ms: 0,
        };
    } else {
        engine_gone(pool);
    }
    if pool
        .reload
        .as_ref()
        .is_some_and(|r| r.stage == ReloadStage::RollingBack)
    {
        pool.reload = None;
    }

    true
}

fn on_engine_exited(pool: &mut Pool, event: &Event) -> bool {
    let Event::EngineExited { reason, detail, .. } = event else {
        return false;
    };
    engine_gone(pool);
    if *reason == ExitReason::Graceful {
        pool.drain = None;
        pool.activity = Activity::Stopped;
        pool.last_error = Some(detail.clone());
    } else {
        note_failure(pool, *reason, detail);
    }

    true
}

fn on_restart_scheduled(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::RestartScheduled {
        attempt,
        delay_ms,
        not_before_ms,
        reason,
    } = event
    else {
        return false;
    };
    pool.supervision.backoff_attempt = *attempt;
    pool.supervision.last_delay_ms = *delay_ms;
    pool.activity = Activity::Backoff {
        attempt: *attempt,
        not_before_ms: *not_before_ms,
        reason: *reason,
        token: stamp.seq,
    };

    true
}

fn on_circuit_opened(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::CircuitOpened {
        open_ms,
        class,
        half_open_at_ms,
        ..
    } = event
    else {
        return false;
    };
    let breaker = &mut pool.supervision.breaker;
    breaker.state = BreakerState::Open;
    breaker.class = Some(*class);
    breaker.open_ms = *open_ms;
    breaker.half_open_at_ms = Some(*half_open_at_ms);
    breaker.token = stamp.seq;
    breaker.opened_total = breaker.opened_total.saturating_add(1);
    pool.breaker_close_at_ms = None;
    if pool.process.is_none() {
        pool.activity = Activity::CircuitOpen;
    }

    true
}

fn on_circuit_reset(pool: &mut Pool, event: &Event) -> bool {
    let Event::CircuitReset { .. } = event else {
        return false;
    };
    close_breaker(pool);
    pool.supervision.backoff_attempt = 0;
    if matches!(pool.activity, Activity::CircuitOpen) {
        pool.activity = Activity::Failed;
    }

    true
}

fn on_restart_storm_detected(pool: &mut Pool, event: &Event) -> bool {
    let Event::RestartStormDetected {
        restarts,
        window_ms,
        classification,
        hint,
    } = event
    else {
        return false;
    };
    let class = serde_name(classification);
    pool.last_error = Some(format!(
        "restart storm ({class}): {restarts} restarts in {window_ms} ms; {hint}"
    ));

    true
}

fn on_engine_lost(pool: &mut Pool, event: &Event) -> bool {
    let Event::EngineLost { pid } = event else {
        return false;
    };
    if pool.pid() != Some(*pid) {
        return false;
    }
    engine_gone(pool);
    let detail = format!("engine pid {pid} is gone (lost while the daemon was down)");
    note_failure(pool, ExitReason::Unknown, &detail);

    true
}

fn on_drain_requested(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::DrainRequested { deadline_at_ms, .. } = event else {
        return false;
    };
    let ts = stamp.ts_ms;
    pool.drain = Some(Drain {
        requested_at_ms: ts,
        deadline_at_ms: *deadline_at_ms,
        token: stamp.seq,
        leases_at_stop: 0,
    });
    if let Some(reload) = pool.reload.as_mut() {
        reload.stage = ReloadStage::Draining;
    }

    true
}

fn on_engine_stop_requested(pool: &mut Pool, event: &Event) -> bool {
    let Event::EngineStopRequested {
        reason,
        pid,
        grace_ms,
    } = event
    else {
        return false;
    };
    pool.ready = false;
    pool.probe_failures = 0;
    match reason {
        StopReason::DrainDeadline => {
            let held = pool.active_leases();
            if let Some(drain) = pool.drain.as_mut() {
                drain.leases_at_stop = held;
            }
        }
        StopReason::Requested | StopReason::Remove => {
            pool.drain = None;
            pool.reload = None;
        }
        StopReason::Drained | StopReason::ReloadFailed { .. } => {}
        StopReason::Failure { reason, detail } => note_failure(pool, *reason, detail),
    }
    pool.leases.clear();
    if pid.is_none() {
        engine_gone(pool);
        pool.activity = match reason {
            StopReason::Failure { .. } => Activity::Failed,
            _ => Activity::Stopped,
        };
    } else {
        pool.activity = Activity::Stopping {
            reason: reason.clone(),
            grace_ms: *grace_ms,
        };
    }

    true
}

fn on_engine_stopped(pool: &mut Pool, event: &Event) -> bool {
    let Event::EngineStopped { .. } = event else {
        return false;
    };
    engine_gone(pool);
    pool.activity = match &pool.activity {
        Activity::Stopping {
            reason: StopReason::Failure { .. },
            ..
        } => Activity::Failed,
        _ => Activity::Stopped,
    };

    true
}

fn on_reload_requested(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::ReloadRequested {
        new_model_ref,
        digest,
        drain_deadline_ms,
    } = event
    else {
        return false;
    };
    let ts = stamp.ts_ms;
    let Some(old_engine) = pool.engine.clone() else {
        return false;
    };
    pool.reload = Some(Reload {
        new_model_ref: new_model_ref.clone(),
        digest: digest.clone(),
        drain_deadline_ms: *drain_deadline_ms,
        requested_at_ms: ts,
        token: stamp.seq,
        stage: ReloadStage::Staging,
        staged_path: None,
        old_model_ref: pool
            .model_ref
            .clone()
            .unwrap_or_else(|| old_engine.model_path.clone()),
        old_digest: pool.model_digest.clone(),
        old_engine,
        strategy: ReloadStrategy::DrainFirst,
        surge_port: None,
    });

    true
}

fn on_model_staged(pool: &mut Pool, event: &Event) -> bool {
    let Event::ModelStaged { path, digest } = event else {
        return false;
    };
    let Some(reload) = pool.reload.as_mut() else {
        return false;
    };
    reload.staged_path = Some(path.clone());
    if digest.is_some() {
        reload.digest = digest.clone();
    }

    true
}

fn on_reload_failed(pool: &mut Pool, event: &Event) -> bool {
    let Event::ReloadFailed {
        reason,
        stage,
        rolling_back,
        pid,
    } = event
    else {
        return false;
    };
    pool.last_error = Some(format!(
        "reload failed while {}: {reason}",
        serde_name(stage)
    ));
    if *stage == ReloadStage::Surging {
        // The old engine never stopped; the new one is killed (`SecondStopRequested`), or
        // once its spawn is known.
        if let Some(second) = pool.second.as_mut() {
            second.cancelled = true;
        }
        pool.reload = None;
        return true;
    }
    let still_running = pid.is_some() && pool.pid() == *pid;
    if *rolling_back && still_running {
        // The failed new engine is killed first; the rollback starts on its
        // `EngineStopped`, so it can never race the old engine for the port or GPU.
        pool.ready = false;
        pool.leases.clear();
        pool.activity = Activity::Stopping {
            reason: StopReason::ReloadFailed {
                detail: reason.clone(),
            },
            grace_ms: 0,
        };
    } else if still_running {
        engine_gone(pool);
    }
    if *rolling_back {
        if !still_running {
            engine_gone(pool);
        }
        if let Some(reload) = pool.reload.as_mut() {
            reload.stage = ReloadStage::RollingBack;
            pool.engine = Some(reload.old_engine.clone());
        }
    } else {
        pool.reload = None;
    }

    true
}

fn on_reload_rolled_back(pool: &mut Pool, event: &Event) -> bool {
    let Event::ReloadRolledBack { model_ref, .. } = event else {
        return false;
    };
    pool.model_ref = Some(model_ref.clone());
    if let Some(reload) = pool.reload.take() {
        pool.model_digest = reload.old_digest;
    }

    true
}

fn on_handoff_registered(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::HandoffRegistered { handoff, path } = event else {
        return false;
    };
    let ts = stamp.ts_ms;
    pool.engine = None;
    pool.process = handoff.pid.map(|pid| EngineProcess {
        pid,
        start_time: 0,
        log_path: String::new(),
        pid_path: String::new(),
        spawned_seq: stamp.seq,
        spawned_at_ms: ts,
        adopted: true,
        external: true,
        boot_id: None,
        exe: None,
    });
    pool.activity = Activity::Running;
    pool.ready = true;
    pool.slots_total = handoff.slots_total.min(SLOTS_MAX);
    pool.engine_version = Some(handoff.engine_version.clone());
    pool.model_ref = Some(handoff.model.path.clone());
    pool.model_digest = None;
    pool.last_error = None;
    pool.last_heartbeat_ms = Some(ts);
    pool.handoff_path = Some(path.clone());
    pool.handoff = Some((**handoff).clone());
    pool.probe_failures = 0;
    pool.ready_token = stamp.seq;
    pool.backoff_reset_at_ms = None;
    pool.breaker_close_at_ms = None;
    pool.drain = None;
    pool.reload = None;
    pool.vram_used_bytes = None;

    true
}

fn on_engine_start_requested(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::EngineStartRequested {
        engine,
        attempt,
        purpose,
    } = event
    else {
        return false;
    };
    let ts = stamp.ts_ms;
    pool.engine = Some((**engine).clone());
    pool.handoff = None;
    pool.ready = false;
    pool.start_token = stamp.seq;
    pool.activity = Activity::Starting {
        kind: StartKind::Again(*purpose),
        attempt: *attempt,
        health_passed: false,
        health_deadline_at_ms: None,
        requested_at_ms: ts,
    };
    match purpose {
        StartPurpose::Restart | StartPurpose::Trial => {
            pool.restart_count = pool.restart_count.saturating_add(1);
            let reason = pool
                .supervision
                .last_failure_reason
                .unwrap_or(ExitReason::Unknown);
            let window = &mut pool.supervision.restarts;
            window.push(RestartMark { at_ms: ts, reason });
            if window.len() > RESTART_WINDOW_CAP {
                let excess = window.len().saturating_sub(RESTART_WINDOW_CAP);
                window.drain(..excess);
            }
        }
        StartPurpose::Reload => {
            if let Some(reload) = pool.reload.as_mut() {
                reload.stage = ReloadStage::Starting;
            }
        }
        StartPurpose::Rollback => {
            if let Some(reload) = pool.reload.as_mut() {
                reload.stage = ReloadStage::RollingBack;
            }
        }
    }

    true
}

fn on_backoff_reset(pool: &mut Pool, event: &Event) -> bool {
    let Event::BackoffReset { .. } = event else {
        return false;
    };
    pool.supervision.backoff_attempt = 0;
    pool.supervision.gpu_failures = 0;
    pool.supervision.other_failures = 0;
    pool.backoff_reset_at_ms = None;

    true
}

fn close_breaker(pool: &mut Pool) {
    let opened_total = pool.supervision.breaker.opened_total;
    pool.supervision.breaker = Breaker {
        opened_total,
        ..Breaker::default()
    };
    pool.supervision.gpu_failures = 0;
    pool.supervision.other_failures = 0;
    pool.breaker_close_at_ms = None;
}

/// The snake_case serde name of a unit enum value (for messages).
fn serde_name<T: std::fmt::Debug>(value: &T) -> String {
    let debug = format!("{value:?}");
    let mut out = String::with_capacity(debug.len().saturating_add(4));
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `last_error` recorded for a device mask violation (also used by `decide` to skip
/// repeats of the same violation).
pub fn mask_violation_message(pool: &Pool, pid: u32, gpu_uuid: &str) -> String {
    let mask = pool.device_mask().unwrap_or("(none)");
    format!("engine pid {pid} uses GPU {gpu_uuid} outside its device mask {mask}")
}
