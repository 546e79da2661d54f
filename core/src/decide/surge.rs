//! `decide` for a reload without a gap (a surge): which strategy a reload takes, the new
//! engine's start beside the old one, the switch, the old engine's drain, and every way a
//! surge ends early (the new engine fails, the old one fails, the daemon restarts).
//!
//! Owns: what each observation about a pool's second engine means (matched by its pid or its
//! spawn token: an observation about the pool's own engine is not ours).
//! Never: stops the pool's own engine for a surge's sake: a failed surge leaves it serving.

use super::lifecycle::exit_text;
use super::placement;
use super::*;
use crate::command::{Observation, ReloadStrategyAsked};
use crate::engine::PreparedEngine;
use crate::event::{ReloadStrategy, SecondEnd, SecondStop};
use crate::gpu::PlacementInputs;
use crate::state::{Second, SecondRole};

/// What a reload asked for and what the shell found, for the strategy's choice.
pub(super) struct Ask<'a> {
    pub(super) strategy: ReloadStrategyAsked,
    pub(super) surge_port: Option<u16>,
    pub(super) placement: &'a PlacementInputs,
    pub(super) new_model_ref: &'a str,
}

/// The strategy of a reload of `pool` (serving `engine`), and why. `surge` is refused when it
/// cannot be done; `auto` falls back to `drain_first`, saying why.
pub(super) fn choose(
    d: &Decision<'_, '_>,
    pool: &Pool,
    engine: &PreparedEngine,
    ask: &Ask<'_>,
) -> Result<(ReloadStrategy, String, Option<u16>), Rejection> {
    let drain_first = |why: String| Ok((ReloadStrategy::DrainFirst, why, None));
    if ask.strategy == ReloadStrategyAsked::DrainFirst {
        return drain_first("drain_first was asked for".to_string());
    }
    let Some(port) = ask.surge_port else {
        let why = "no port of [reload] surge_ports is free (or the range is not configured) \
                   for the new engine";
        if ask.strategy == ReloadStrategyAsked::Surge {
            return Err(invalid(format!(
                "strategy surge for pool '{}': {why}; set [reload] surge_ports in the daemon's \
                 config, or ask for drain_first",
                pool.id
            )));
        }
        return drain_first(why.to_string());
    };
    match fits_beside(d, pool, engine, ask, port) {
        Ok(()) => Ok((
            ReloadStrategy::Surge,
            format!("the new engine fits beside the old one; it starts on port {port}"),
            Some(port),
        )),
        Err(rejection) if ask.strategy == ReloadStrategyAsked::Surge => Err(rejection),
        Err(rejection) => drain_first(format!(
            "the new engine does not fit beside the old one: {rejection}"
        )),
    }
}

/// The placement checks of a preload, for the new engine beside the old one: its mask
/// resolves, no quarantined GPU, the VRAM free now (the old engine's use taken) and the host
/// RAM available now hold it.
fn fits_beside(
    d: &Decision<'_, '_>,
    pool: &Pool,
    engine: &PreparedEngine,
    ask: &Ask<'_>,
    port: u16,
) -> Result<(), Rejection> {
    let next = engine
        .with_model(model_key(ask.new_model_ref))
        .with_port(port);
    let devices = placement::devices(&pool.id, &next, d.node().inventory())?;
    if let Some(gpu_uuid) = d.node().quarantined_gpu(next.device_mask.as_deref()) {
        return Err(Rejection::GpuQuarantined {
            pool_id: pool.id.to_string(),
            gpu_uuid: gpu_uuid.to_string(),
        });
    }
    placement::fit_and_plan(&pool.id, &next, devices.as_deref(), ask.placement).map(|_| ())
}

/// After `ModelStaged` of a surge: the new engine starts beside the old one.
pub(super) fn start(d: &mut Decision<'_, '_>, pool_id: &PoolId, path: &str) {
    let Some(pool) = d.pool(pool_id) else { return };
    let Some(reload) = &pool.reload else { return };
    let Some(port) = reload.surge_port else {
        return;
    };
    let engine = reload.old_engine.with_model(path).with_port(port);
    if let Some(gpu_uuid) = d.node().quarantined_gpu(engine.device_mask.as_deref()) {
        let why = format!("GPU {gpu_uuid} is quarantined; the new engine is not started");
        cancel_reload(d, pool_id, &why);
        return;
    }
    d.push(
        Some(pool_id),
        Event::SurgeStartRequested {
            engine: Box::new(engine),
        },
    );
}

/// Ends a reload in progress: `ReloadFailed` (a surge's with its stage `surging`), then the
/// surge's new engine is killed (or once its spawn is known).
pub(super) fn cancel_reload(d: &mut Decision<'_, '_>, pool_id: &PoolId, why: &str) {
    let stage = d
        .pool(pool_id)
        .and_then(|p| p.reload.as_ref())
        .map(|r| r.stage);
    if let Some(stage) = stage {
        d.push(
            Some(pool_id),
            Event::ReloadFailed {
                reason: why.to_string(),
                stage,
                rolling_back: false,
                pid: None,
            },
        );
    }
    end_surge(d, pool_id, false);
}

/// Kills a surge's new engine whose reload ended. With no process yet, it is dropped when its
/// spawn is over (`spawn_over`), else killed once its `EngineSpawned` comes.
fn end_surge(d: &mut Decision<'_, '_>, pool_id: &PoolId, spawn_over: bool) {
    let Some(second) = d.pool(pool_id).and_then(|p| p.second.as_ref()) else {
        return;
    };
    if second.role != SecondRole::Surge || second.stopping {
        return;
    }
    if second.pid().is_some() || spawn_over {
        stop_second(d, pool_id, SecondStop::SurgeEnded);
    }
}

/// Asks the second engine to stop (a surge's new engine at once, the old one with the
/// stop's grace).
fn stop_second(d: &mut Decision<'_, '_>, pool_id: &PoolId, why: SecondStop) {
    let Some(second) = d.pool(pool_id).and_then(|p| p.second.as_ref()) else {
        return;
    };
    let grace_ms = match why {
        SecondStop::SurgeEnded => 0,
        SecondStop::Drained | SecondStop::DrainDeadline => d.ctx.policy.stop.grace_ms,
    };
    let event = Event::SecondStopRequested {
        pid: second.pid(),
        grace_ms,
        why,
        leases_at_stop: second.active_leases(),
    };
    d.push(Some(pool_id), event);
}

/// Stops a pool's second engine whatever it is doing (the pool is being stopped or removed).
pub(super) fn stop_any_second(d: &mut Decision<'_, '_>, pool_id: &PoolId) {
    let Some(second) = d.pool(pool_id).and_then(|p| p.second.as_ref()) else {
        return;
    };
    match second.role {
        SecondRole::Surge => end_surge(d, pool_id, false),
        SecondRole::Retiring if !second.stopping => {
            stop_second(d, pool_id, SecondStop::DrainDeadline)
        }
        SecondRole::Retiring => {}
    }
}

/// After a lease was returned: the old engine of a switch whose last lease it was stops.
pub(super) fn after_release(d: &mut Decision<'_, '_>, pool_id: &PoolId) {
    let drained = d
        .pool(pool_id)
        .and_then(|p| p.second.as_ref())
        .is_some_and(|s| s.role == SecondRole::Retiring && !s.stopping && s.leases.is_empty());
    if drained {
        stop_second(d, pool_id, SecondStop::Drained);
    }
}

/// A surge's new engine failed: the reload fails (the old engine serves on) and the new
/// engine is killed if it still runs.
fn failed(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: &str, spawn_over: bool) {
    let reason = tail(reason, DETAIL_LEN_MAX);
    if d.pool(pool_id).is_some_and(|p| p.reload.is_some()) {
        d.push(
            Some(pool_id),
            Event::ReloadFailed {
                reason: format!("the new engine failed; the old one serves on: {reason}"),
                stage: ReloadStage::Surging,
                rolling_back: false,
                pid: None,
            },
        );
    }
    end_surge(d, pool_id, spawn_over);
}

/// The pool's second engine, if `pid` is its process.
fn second_of<'d>(d: &'d Decision<'_, '_>, pool_id: &PoolId, pid: u32) -> Option<&'d Second> {
    d.pool(pool_id)
        .and_then(|p| p.second.as_ref())
        .filter(|s| s.pid() == Some(pid))
}

/// The pool's surge, if `token` is its spawn's and it has no process yet.
fn awaiting_spawn<'d>(d: &'d Decision<'_, '_>, pool_id: &PoolId, token: u64) -> Option<&'d Second> {
    d.pool(pool_id)
        .and_then(|p| p.second.as_ref())
        .filter(|s| s.role == SecondRole::Surge && s.token == token && s.process.is_none())
}

/// The pool's surge, starting (not failed, not stopping), if `pid` is its engine.
fn starting(d: &Decision<'_, '_>, pool_id: &PoolId, pid: u32) -> bool {
    second_of(d, pool_id, pid)
        .is_some_and(|s| s.role == SecondRole::Surge && !s.stopping && !s.cancelled)
}

/// Decides an observation about a pool's second engine; `false` when it is about none (the
/// caller decides it as about the pool's own engine).
pub(super) fn observe(d: &mut Decision<'_, '_>, observation: &Observation) -> bool {
    match observation {
        Observation::EngineSpawned { .. } => spawned(d, observation),
        Observation::SpawnFailed {
            pool_id,
            token,
            reason,
        } => {
            if awaiting_spawn(d, pool_id, *token).is_none() {
                return false;
            }
            failed(d, pool_id, &format!("spawn failed: {reason}"), true);
            true
        }
        Observation::PortInUse {
            pool_id,
            token,
            pid,
            detail,
        } => start_refused(d, pool_id, *token, *pid, detail),
        Observation::EngineNotOnGpu {
            pool_id,
            token,
            pid,
            detail,
        } => start_refused(d, pool_id, *token, Some(*pid), detail),
        _ => observe_engine(d, observation),
    }
}

fn spawned(d: &mut Decision<'_, '_>, observation: &Observation) -> bool {
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
        return false;
    };
    let Some(second) = awaiting_spawn(d, pool_id, *token) else {
        return false;
    };
    let cancelled = second.cancelled;
    let deadline = d
        .now()
        .saturating_add(d.ctx.policy.health.preload_timeout_ms);
    d.push(
        Some(pool_id),
        Event::SurgeSpawned {
            pid: *pid,
            start_time: *start_time,
            log_path: log_path.clone(),
            pid_path: pid_path.clone(),
            health_deadline_at_ms: deadline,
            boot_id: boot_id.clone(),
        },
    );
    if cancelled {
        stop_second(d, pool_id, SecondStop::SurgeEnded);
    }
    true
}

/// The surge's start refused by its port or its placement (before or after its spawn).
fn start_refused(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    token: u64,
    pid: Option<u32>,
    detail: &str,
) -> bool {
    let ours = d
        .pool(pool_id)
        .and_then(|p| p.second.as_ref())
        .is_some_and(|s| s.role == SecondRole::Surge && s.token == token && s.pid() == pid);
    if !ours {
        return false;
    }
    if !d
        .pool(pool_id)
        .and_then(|p| p.second.as_ref())
        .is_some_and(|s| s.stopping || s.cancelled)
    {
        failed(d, pool_id, detail, pid.is_none());
    }
    true
}

fn observe_engine(d: &mut Decision<'_, '_>, observation: &Observation) -> bool {
    match observation {
        Observation::HealthPassed { .. } => health_passed(d, observation),
        Observation::PreloadTimedOut {
            pool_id,
            pid,
            last_probe,
        } => {
            if second_of(d, pool_id, *pid).is_none() {
                return false;
            }
            if starting(d, pool_id, *pid) {
                let ms = d.ctx.policy.health.preload_timeout_ms;
                let why = format!("no healthy answer within {ms} ms; last probe: {last_probe}");
                failed(d, pool_id, &why, false);
            }
            true
        }
        Observation::HandoffWritten { pool_id, pid, path } => {
            if second_of(d, pool_id, *pid).is_none() {
                return false;
            }
            switch(d, pool_id, *pid, path);
            true
        }
        Observation::HandoffWriteFailed {
            pool_id,
            pid,
            reason,
        } => {
            if second_of(d, pool_id, *pid).is_none() {
                return false;
            }
            if starting(d, pool_id, *pid) {
                failed(
                    d,
                    pool_id,
                    &format!("writing the handoff file failed: {reason}"),
                    false,
                );
            }
            true
        }
        Observation::EngineLogFault {
            pool_id, pid, line, ..
        } => {
            if second_of(d, pool_id, *pid).is_none() {
                return false;
            }
            if starting(d, pool_id, *pid) {
                failed(
                    d,
                    pool_id,
                    &format!("engine log: {}", tail(line.trim(), 512)),
                    false,
                );
            }
            true
        }
        _ => observe_end(d, observation),
    }
}

fn health_passed(d: &mut Decision<'_, '_>, observation: &Observation) -> bool {
    let Observation::HealthPassed {
        pool_id,
        pid,
        after_ms,
        engine_version,
        slots_total,
        exe,
    } = observation
    else {
        return false;
    };
    let Some(second) = second_of(d, pool_id, *pid) else {
        return false;
    };
    if !starting(d, pool_id, *pid) || second.health_passed {
        return true;
    }
    let prepared = &second.engine;
    let (slots, version) =
        reported_slots_and_version(Some(prepared), *slots_total, engine_version.as_ref());
    if let Some(gpu_uuid) = d.node().quarantined_gpu(prepared.device_mask.as_deref()) {
        let why = format!("GPU {gpu_uuid} was quarantined while the new engine started");
        failed(d, pool_id, &why, false);
        return true;
    }
    d.push(
        Some(pool_id),
        Event::SurgeHealthPassed {
            after_ms: *after_ms,
            engine_version: version,
            slots_total: slots,
            exe: exe.as_ref().map(|exe| tail(exe, 4096)),
        },
    );
    true
}

/// The handoff file names the new engine: the switch, the reload's success, and the old
/// engine's stop when it holds no lease.
fn switch(d: &mut Decision<'_, '_>, pool_id: &PoolId, pid: u32, path: &str) {
    let now = d.now();
    let policy = d.ctx.policy;
    let Some(pool) = d.pool(pool_id) else { return };
    let ready = pool.second.as_ref().is_some_and(|s| s.health_passed);
    let Some(reload) = pool.reload.clone() else {
        return;
    };
    if !starting(d, pool_id, pid) || !ready {
        return;
    }
    if !pool.serving() {
        // Not reached while the old engine fails (that ends the surge first); kept so that a
        // surge can never switch to a pool that does not serve.
        failed(
            d,
            pool_id,
            "the old engine stopped serving during the surge",
            false,
        );
        return;
    }
    let old_pid = pool.pid();
    let leases_on_old = pool.active_leases();
    d.push(
        Some(pool_id),
        Event::SurgeSwitched {
            new_pid: pid,
            old_pid,
            handoff_path: path.to_string(),
            leases_on_old,
            drain_deadline_at_ms: now.saturating_add(reload.drain_deadline_ms),
            backoff_reset_at_ms: now.saturating_add(policy.backoff.reset_after_ms),
        },
    );
    d.push(
        Some(pool_id),
        Event::ReloadSucceeded {
            old: reload.old_model_ref,
            new: reload.new_model_ref,
            duration_ms: now.saturating_sub(reload.requested_at_ms),
        },
    );
    after_release(d, pool_id);
}

/// The second engine's end (exit, stop, loss), its adoption, its drain deadline.
fn observe_end(d: &mut Decision<'_, '_>, observation: &Observation) -> bool {
    match observation {
        Observation::EngineExited {
            pool_id,
            pid,
            exit_code,
            signal,
            reason,
            detail,
        } => {
            let Some(second) = second_of(d, pool_id, *pid) else {
                return false;
            };
            let how = if second.stopping {
                let graceful = *exit_code == Some(0) || *signal == Some(15);
                SecondEnd::Stopped { graceful }
            } else {
                SecondEnd::Exited {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: *reason,
                    detail: tail(detail, DETAIL_LEN_MAX),
                }
            };
            let text = exit_text(*exit_code, *signal, *reason, detail);
            ended(
                d,
                pool_id,
                *pid,
                how,
                &format!("the new engine exited: {text}"),
            );
            true
        }
        Observation::EngineStopped {
            pool_id,
            pid,
            graceful,
        } => {
            if second_of(d, pool_id, *pid).is_none() {
                return false;
            }
            let how = SecondEnd::Stopped {
                graceful: *graceful,
            };
            ended(d, pool_id, *pid, how, "the new engine was stopped");
            true
        }
        Observation::EngineLost { pool_id, pid } => {
            if second_of(d, pool_id, *pid).is_none() {
                return false;
            }
            let why = format!("the new engine pid {pid} was lost while the daemon was down");
            ended(d, pool_id, *pid, SecondEnd::Lost, &why);
            true
        }
        Observation::EngineAdopted { pool_id, pid } => adopted(d, pool_id, *pid),
        Observation::TimerFired {
            pool_id,
            timer: crate::effect::Timer::RetireDeadline,
            token,
        } => {
            let due = d
                .pool(pool_id)
                .and_then(|p| p.second.as_ref())
                .is_some_and(|s| {
                    s.role == SecondRole::Retiring && s.token == *token && !s.stopping
                });
            if due {
                stop_second(d, pool_id, SecondStop::DrainDeadline);
            }
            true
        }
        _ => false,
    }
}

/// The second engine is gone: recorded, and a surge still under way fails with `why`.
fn ended(d: &mut Decision<'_, '_>, pool_id: &PoolId, pid: u32, how: SecondEnd, why: &str) {
    let Some(second) = second_of(d, pool_id, pid) else {
        return;
    };
    let surging = second.role == SecondRole::Surge && !second.cancelled && !second.stopping;
    let leases_dropped = second.active_leases();
    d.push(
        Some(pool_id),
        Event::SecondEngineEnded {
            pid,
            how,
            leases_dropped,
        },
    );
    if surging {
        failed(d, pool_id, why, true);
    }
}

/// After a daemon restart, the second engine is alive and ours: a surge's new engine is not
/// trusted across the restart (its reload fails, the old engine serves on, and it is killed);
/// the old engine of a switch goes on finishing its leases.
fn adopted(d: &mut Decision<'_, '_>, pool_id: &PoolId, pid: u32) -> bool {
    let Some(second) = second_of(d, pool_id, pid) else {
        return false;
    };
    if second.process.as_ref().is_some_and(|p| p.adopted) {
        return true;
    }
    let role = second.role;
    let stopping = second.stopping;
    d.push(Some(pool_id), Event::EngineAdopted { pid });
    match role {
        SecondRole::Surge if !stopping => failed(
            d,
            pool_id,
            "the daemon restarted while the new engine was starting; it is stopped and the old \
             engine serves on",
            false,
        ),
        SecondRole::Retiring if !stopping => after_release(d, pool_id),
        _ => {}
    }
    true
}

/// After `DaemonStarted`: a surge whose new engine's spawn was never recorded ends (its
/// engine, if one was spawned, is found by the runtime directory's reconciliation or before
/// the lane's next spawn, and killed).
pub(super) fn after_daemon_started(d: &mut Decision<'_, '_>) {
    let unspawned: Vec<PoolId> = d
        .pools()
        .into_iter()
        .filter(|p| {
            p.second
                .as_ref()
                .is_some_and(|s| s.role == SecondRole::Surge && s.process.is_none())
        })
        .map(|p| p.id.clone())
        .collect();
    for pool_id in unspawned {
        let why = "the daemon restarted before the new engine's spawn was recorded";
        failed(d, &pool_id, why, true);
    }
}
