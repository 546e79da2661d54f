//! Each recorded event that matters to a pool's story, in words (one step of the chain).
//!
//! Owns: which events are steps, and their sentences. Routine events (leases, VRAM readings,
//! recovered probes, spawns and health passes of starts that go on) are not steps.
//! Never: reads anything but the event and the pool as it was before it; never panics.

use crate::event::{
    DrainOutcome, Event, ReloadStage, StartFailure, StartPurpose, StopReason, StormClass,
};
use crate::state::Pool;

use super::text::{cut, duration, rfc3339};

/// The step of a pool event, or `None` for a routine one; `before` is the pool as it was.
pub(super) fn pool_step(before: Option<&Pool>, event: &Event) -> Option<String> {
    start_step(before, event)
        .or_else(|| failure_step(event))
        .or_else(|| supervision_step(event))
        .or_else(|| operation_step(before, event))
        .or_else(|| placement_step(event))
        .or_else(|| super::surge::surge_step(before, event))
}

/// The step of a node event that bears on pools, or `None`.
pub(super) fn node_step(event: &Event) -> Option<String> {
    Some(match event {
        Event::DaemonStarted { version, pid } => {
            format!("the daemon started (version {}, pid {pid})", cut(version))
        }
        Event::DaemonStopped { reason } => format!("the daemon stopped ({})", cut(reason)),
        Event::GpuQuarantined { gpu_uuid, faults } => format!(
            "GPU {} quarantined after {faults} hardware fault(s)",
            cut(gpu_uuid)
        ),
        Event::GpuUnquarantined { gpu_uuid, by } => format!(
            "GPU {} taken out of quarantine by {}",
            cut(gpu_uuid),
            cut(by)
        ),
        Event::JournalLossAccepted {
            from_seq,
            to_seq,
            reason,
        } => format!(
            "journal events {from_seq}..={to_seq} were lost and the loss accepted ({}): \
             what they recorded is missing from this story",
            cut(reason)
        ),
        _ => return None,
    })
}

fn start_step(before: Option<&Pool>, event: &Event) -> Option<String> {
    Some(match event {
        Event::PreloadRequested { engine } => format!(
            "preload requested: {} with {} on port {}",
            engine.engine_name(),
            cut(&engine.model_path),
            engine.port
        ),
        Event::PreloadRejected { code, reason } => {
            format!("preload refused: {}: {}", cut(code), cut(reason))
        }
        Event::EngineStartRequested {
            attempt, purpose, ..
        } => match purpose {
            StartPurpose::Restart => format!("restart attempt {attempt} started"),
            StartPurpose::Trial => String::from("half-open breaker: the trial start began"),
            StartPurpose::Reload => String::from("the reload's new engine is being started"),
            StartPurpose::Rollback => {
                String::from("rolling back: the old engine is being started again")
            }
        },
        Event::PoolReady { .. } => {
            let after = before
                .and_then(|p| p.process.as_ref())
                .map_or(String::new(), |p| format!(" (engine pid {})", p.pid));
            format!("ready: the engine answered healthy and serves{after}")
        }
        Event::HandoffRegistered { handoff, path } => format!(
            "registered from a handoff ({}): an engine started elsewhere serves {}; it cannot \
             be restarted by this daemon",
            cut(path),
            cut(&handoff.model.path)
        ),
        Event::EngineAdopted { pid } => {
            format!("after the daemon's restart, engine pid {pid} was found alive and adopted")
        }
        Event::EngineLost { pid } => format!(
            "after the daemon's restart, engine pid {pid} was gone (lost while the daemon was \
             down): counted as a failure"
        ),
        _ => return None,
    })
}

fn start_failure_name(failure: StartFailure) -> &'static str {
    match failure {
        StartFailure::SpawnFailed => "the spawn failed",
        StartFailure::HealthTimeout => "no healthy answer before the preload deadline",
        StartFailure::EngineExited => "the engine exited while starting",
        StartFailure::GpuFault => "a GPU fault hit the engine while starting",
        StartFailure::HandoffFailed => "the handoff file could not be written",
        StartFailure::CpuSpillover => "the engine is not on the GPUs of its mask (CPU spillover)",
        StartFailure::PortInUse => "the engine's port is held by another process",
    }
}

fn failure_step(event: &Event) -> Option<String> {
    Some(match event {
        Event::PreloadFailed {
            reason,
            failure,
            cause,
            ..
        } => format!(
            "start failed ({}, `{}`, counted as `{}`): {}",
            failure.code().as_str(),
            start_failure_name(*failure),
            cause.as_str(),
            cut(reason)
        ),
        Event::EngineExited {
            pid,
            reason,
            detail,
            ..
        } => match reason {
            crate::event::ExitReason::Graceful => format!(
                "engine pid {pid} exited by itself with code 0 (not restarted): {}",
                cut(detail)
            ),
            _ => format!(
                "engine pid {pid} exited: `{}`: {}",
                reason.as_str(),
                cut(detail)
            ),
        },
        Event::HealthCheckFailed { consecutive } => {
            format!("health probe failed ({consecutive} in a row)")
        }
        Event::EngineStopRequested {
            reason: StopReason::Failure { reason, detail },
            pid,
            ..
        } => format!(
            "engine{} stopped as faulty: `{}`: {}",
            pid.map_or(String::new(), |p| format!(" pid {p}")),
            reason.as_str(),
            cut(detail)
        ),
        _ => return None,
    })
}

/// The snake_case name of a storm class.
pub(super) fn storm(class: StormClass) -> &'static str {
    match class {
        StormClass::OomStorm => "oom_storm",
        StormClass::VramOomStorm => "vram_oom_storm",
        StormClass::CudaStorm => "cuda_storm",
        StormClass::DriverStorm => "driver_storm",
        StormClass::HangStorm => "hang_storm",
        StormClass::CrashStorm => "crash_storm",
    }
}

fn supervision_step(event: &Event) -> Option<String> {
    Some(match event {
        Event::RestartScheduled {
            attempt,
            delay_ms,
            not_before_ms,
            reason,
        } => format!(
            "restart attempt {attempt} scheduled after `{}`: delay {}, not before {}",
            reason.as_str(),
            duration(*delay_ms),
            rfc3339(*not_before_ms)
        ),
        Event::CircuitOpened {
            failures,
            open_ms,
            class,
            half_open_at_ms,
        } => format!(
            "breaker opened after {failures} consecutive {} failures: open for {}, half-open \
             at {}",
            class_name(*class),
            duration(*open_ms),
            rfc3339(*half_open_at_ms)
        ),
        Event::CircuitHalfOpened => String::from("breaker half-open: one trial start allowed"),
        Event::CircuitClosed => {
            String::from("breaker closed: the trial ran stable, failure counts cleared")
        }
        Event::CircuitReset { by } => format!("breaker reset by {}", cut(by)),
        Event::RestartStormDetected {
            restarts,
            window_ms,
            classification,
            hint,
        } => format!(
            "restart storm ({}): {restarts} restarts in {}; {}",
            storm(*classification),
            duration(*window_ms),
            cut(hint)
        ),
        Event::BackoffReset { previous_attempt } => format!(
            "ran stable: backoff reset (was at attempt {previous_attempt}), failure counts \
             cleared"
        ),
        Event::RestartHeld { gpu_uuid } => format!(
            "restart held: the pool's mask covers quarantined GPU {}",
            cut(gpu_uuid)
        ),
        _ => return None,
    })
}

/// The words of a failure class.
pub(super) fn class_name(class: crate::event::FailureClass) -> &'static str {
    match class {
        crate::event::FailureClass::GpuFault => "GPU-fault",
        crate::event::FailureClass::Other => "non-GPU",
    }
}

fn operation_step(before: Option<&Pool>, event: &Event) -> Option<String> {
    Some(match event {
        Event::DrainRequested { deadline_at_ms, .. } => format!(
            "drain requested with {} lease(s) held: new leases refused, deadline {}",
            before.map_or(0, Pool::active_leases),
            rfc3339(*deadline_at_ms)
        ),
        Event::DrainCompleted {
            outcome,
            duration_ms,
            leases_at_stop,
        } => match outcome {
            DrainOutcome::Graceful => format!(
                "drain completed gracefully after {}: every lease returned",
                duration(*duration_ms)
            ),
            DrainOutcome::ForceStopped => format!(
                "drain force-stopped after {}: {leases_at_stop} lease(s) still held at the \
                 deadline",
                duration(*duration_ms)
            ),
        },
        Event::EngineStopRequested { reason, pid, .. } => stop_step(before, reason, *pid)?,
        Event::EngineStopped { pid, graceful } => format!(
            "engine pid {pid} stopped{}",
            if *graceful {
                " on SIGTERM"
            } else {
                ": killed (SIGKILL) after the grace period"
            }
        ),
        Event::ReloadRequested { new_model_ref, .. } => {
            format!("reload requested to {}", cut(new_model_ref))
        }
        Event::ModelStaged { path, .. } => format!("new model staged at {}", cut(path)),
        Event::ReloadSucceeded {
            new, duration_ms, ..
        } => format!(
            "reload succeeded in {}: serving {}",
            duration(*duration_ms),
            cut(new)
        ),
        Event::ReloadFailed {
            reason,
            stage: ReloadStage::Surging,
            ..
        } => format!(
            "reload failed while starting the new engine beside the old one: {}{}",
            cut(reason),
            if reason.contains("serves on") {
                ""
            } else {
                "; the old engine never stopped and serves on"
            }
        ),
        Event::ReloadFailed {
            reason,
            stage,
            rolling_back,
            ..
        } => format!(
            "reload failed while {}: {}{}",
            stage_name(*stage),
            cut(reason),
            if *rolling_back {
                "; rolling back to the old model"
            } else {
                "; the reload is over (refused)"
            }
        ),
        Event::ReloadRolledBack { model_ref, .. } => {
            format!("rolled back: serving {} again", cut(model_ref))
        }
        _ => return None,
    })
}

fn stop_step(before: Option<&Pool>, reason: &StopReason, pid: Option<u32>) -> Option<String> {
    let engine = pid.map_or(String::from("no engine ran"), |p| format!("engine pid {p}"));
    Some(match reason {
        StopReason::Requested => format!("stop requested by an operator ({engine})"),
        StopReason::Remove => format!("removal requested by an operator ({engine})"),
        StopReason::Drained => format!("every lease returned: stopping {engine}"),
        StopReason::DrainDeadline => {
            let leases: Vec<&str> = before
                .into_iter()
                .flat_map(|p| p.leases.iter().map(|l| l.as_str()))
                .take(8)
                .collect();
            format!(
                "drain deadline passed with lease(s) {} held: stopping {engine}",
                if leases.is_empty() {
                    String::from("(none named)")
                } else {
                    leases.join(", ")
                }
            )
        }
        StopReason::ReloadFailed { detail } => {
            format!(
                "stopping the reload's failed new engine ({engine}): {}",
                cut(detail)
            )
        }
        StopReason::Failure { .. } => return None,
    })
}

/// The words of a reload stage.
pub(super) fn stage_name(stage: ReloadStage) -> &'static str {
    match stage {
        ReloadStage::Staging => "staging the new model",
        ReloadStage::Draining => "draining the old engine",
        ReloadStage::Starting => "starting the new engine",
        ReloadStage::RollingBack => "rolling back",
        ReloadStage::Surging => "starting the new engine beside the old one, which serves on",
    }
}

fn placement_step(event: &Event) -> Option<String> {
    Some(match event {
        Event::DeviceMaskViolation { pid, gpu_uuid } => format!(
            "engine pid {pid} uses GPU {} outside its device mask",
            cut(gpu_uuid)
        ),
        Event::GpuMemoryStuck {
            gpu_uuid,
            pids,
            bytes,
        } => format!(
            "GPU {} memory not released by the last engine: {} MiB still held{}",
            cut(gpu_uuid),
            bytes / (1024 * 1024),
            if pids.is_empty() {
                String::from(" (no process listed)")
            } else {
                format!(
                    " by pid(s) {}",
                    pids.iter()
                        .take(8)
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        Event::GpuMemoryReleased { after_ms } if *after_ms > 0 => format!(
            "the last engine's GPU memory was released after {}",
            duration(*after_ms)
        ),
        Event::PoolRemoved => String::from("pool removed"),
        _ => return None,
    })
}
