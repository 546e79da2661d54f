//! The fold of a surge's events (see the module above).

use crate::event::{Event, ReloadStage, Stamp};
use crate::state::{Activity, EngineProcess, Pool, Second, SecondRole};

/// Folds a surge event into `pool`; false when it cannot apply (an anomaly), or when `event`
/// is no surge event.
pub(crate) fn apply_surge(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    match event {
        Event::ReloadStrategyChosen {
            strategy,
            surge_port,
            ..
        } => match pool.reload.as_mut() {
            Some(reload) => {
                reload.strategy = *strategy;
                reload.surge_port = *surge_port;
            }
            None => return false,
        },
        Event::SurgeStartRequested { engine } => {
            let Some(reload) = pool.reload.as_mut() else {
                return false;
            };
            reload.stage = ReloadStage::Surging;
            pool.second = Some(Second::surge((**engine).clone(), stamp.seq, stamp.ts_ms));
        }
        Event::SurgeSpawned { .. } => return on_surge_spawned(pool, stamp, event),
        Event::SurgeHealthPassed {
            engine_version,
            slots_total,
            exe,
            ..
        } => {
            let Some(second) = surge_mut(pool) else {
                return false;
            };
            second.health_passed = true;
            second.slots_total = (*slots_total).min(crate::engine::SLOTS_MAX);
            second.engine_version = Some(engine_version.clone());
            if let Some(process) = second.process.as_mut() {
                process.exe = exe.clone();
            }
        }
        Event::SurgeSwitched { .. } => return on_surge_switched(pool, stamp, event),
        Event::SecondStopRequested { pid, grace_ms, .. } => {
            let Some(second) = pool.second.as_mut() else {
                return false;
            };
            if pid.is_none() || second.pid().is_none() {
                pool.second = None;
            } else {
                second.stopping = true;
                second.stop_grace_ms = *grace_ms;
                second.leases.clear();
            }
        }
        Event::SecondEngineEnded { pid, .. } => {
            if !pool.is_second(*pid) {
                return false;
            }
            pool.second = None;
        }
        _ => return false,
    }
    true
}

fn surge_mut(pool: &mut Pool) -> Option<&mut Second> {
    pool.second
        .as_mut()
        .filter(|second| second.role == SecondRole::Surge)
}

fn on_surge_spawned(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::SurgeSpawned {
        pid,
        start_time,
        log_path,
        pid_path,
        health_deadline_at_ms,
        boot_id,
    } = event
    else {
        return false;
    };
    let Some(second) = surge_mut(pool) else {
        return false;
    };
    second.process = Some(EngineProcess {
        pid: *pid,
        start_time: *start_time,
        log_path: log_path.clone(),
        pid_path: pid_path.clone(),
        spawned_seq: stamp.seq,
        spawned_at_ms: stamp.ts_ms,
        adopted: false,
        external: false,
        boot_id: boot_id.clone(),
        exe: None,
    });
    second.health_deadline_at_ms = Some(*health_deadline_at_ms);
    true
}

/// The switch: the surge's engine becomes the pool's, the old one its second (retiring) with
/// the leases it held. The pool stays ready throughout.
fn on_surge_switched(pool: &mut Pool, stamp: Stamp<'_>, event: &Event) -> bool {
    let Event::SurgeSwitched {
        new_pid,
        handoff_path,
        drain_deadline_at_ms,
        backoff_reset_at_ms,
        ..
    } = event
    else {
        return false;
    };
    let Some(new) = pool.second.take() else {
        return false;
    };
    if new.role != SecondRole::Surge || new.pid() != Some(*new_pid) {
        pool.second = Some(new);
        return false;
    }
    let old_process = pool.process.take();
    let old_engine = pool.engine.take();
    let leases = std::mem::take(&mut pool.leases);
    pool.second = match (old_process, old_engine) {
        (Some(process), Some(engine)) => Some(Second {
            role: SecondRole::Retiring,
            engine,
            token: stamp.seq,
            process: Some(process),
            health_deadline_at_ms: None,
            health_passed: true,
            slots_total: pool.slots_total,
            engine_version: pool.engine_version.clone(),
            stopping: false,
            stop_grace_ms: 0,
            cancelled: false,
            leases,
            deadline_at_ms: Some(*drain_deadline_at_ms),
            since_ms: stamp.ts_ms,
        }),
        _ => None,
    };
    pool.lane = pool.lane.other();
    pool.engine = Some(new.engine);
    pool.process = new.process;
    pool.slots_total = new.slots_total;
    pool.engine_version = new.engine_version;
    pool.activity = Activity::Running;
    pool.ready = true;
    pool.handoff_path = Some(handoff_path.clone());
    pool.ready_token = stamp.seq;
    pool.backoff_reset_at_ms = Some(*backoff_reset_at_ms);
    pool.breaker_close_at_ms = None;
    pool.probe_failures = 0;
    pool.vram_used_bytes = None;
    pool.last_error = None;
    pool.last_heartbeat_ms = Some(stamp.ts_ms);
    true
}
