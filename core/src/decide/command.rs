//! `decide` for commands (API and operator requests): preconditions, rejections, and the
//! facts that start an operation.
//!
//! Owns: what each `Command` may do in which state.
//! Never: reads a clock or does I/O; time comes from the decision's context.

use super::lifecycle::{cancel_reload, stop};
use super::placement;
use super::*;
use crate::command::Command;

pub(super) fn decide_command(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    match command {
        Command::Preload { .. } => on_preload(d, command)?,
        Command::AcquireLease { .. } => on_acquire_lease(d, command)?,
        Command::ReleaseLease { .. } => on_release_lease(d, command)?,
        Command::Drain { .. } => on_drain(d, command)?,
        Command::Reload { .. } => on_reload(d, command)?,
        Command::Stop { .. } => on_stop(d, command)?,
        Command::Remove { .. } => on_remove(d, command)?,
        Command::ResetBreaker { .. } => on_reset_breaker(d, command)?,
        Command::UnquarantineGpu { .. } => on_unquarantine_gpu(d, command)?,
        Command::RegisterHandoff { .. } => on_register_handoff(d, command)?,
    }
    Ok(())
}

fn on_preload(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::Preload {
        pool_id,
        engine,
        placement: inputs,
    } = command
    else {
        return Ok(());
    };
    let now = d.now();
    engine.validate().map_err(invalid)?;
    if engine.pool_id != pool_id.as_str() {
        return Err(invalid(format!(
            "prepared.pool_id '{}' does not match the pool '{pool_id}'",
            tail(&engine.pool_id, 80)
        )));
    }
    if let Some(reason) = &d.node().preflight_error {
        return Err(Rejection::GpuRequired {
            reason: reason.clone(),
        });
    }
    let devices = placement::devices(pool_id, engine, d.node().inventory())?;
    placement::check_split_syntax(engine, devices.as_deref())?;
    if let Some(gpu_uuid) = d.node().quarantined_gpu(engine.device_mask.as_deref()) {
        return Err(Rejection::GpuQuarantined {
            pool_id: pool_id.to_string(),
            gpu_uuid: gpu_uuid.to_string(),
        });
    }
    if let Some(pool) = d.pool(pool_id) {
        if pool.busy() {
            return Err(busy(pool));
        }
        if let Some(rejection) = circuit_open(pool, now) {
            return Err(rejection);
        }
        if matches!(pool.activity, Activity::Running) {
            if pool
                .engine
                .as_ref()
                .is_some_and(|recorded| placement::same_engine(recorded, engine))
            {
                return Ok(()); // idempotent: already ready with this engine
            }
            return Err(busy(pool));
        }
    }
    if let Some(devices) = &devices {
        placement::check_sharing(d, pool_id, engine, devices, inputs)?;
    }
    // Plans an "auto" split from the inventory now and records the plan (replay and
    // restarts must not depend on the VRAM free at their time).
    let recorded = placement::fit_and_plan(pool_id, engine, devices.as_deref(), inputs)?;
    d.push(
        Some(pool_id),
        Event::PreloadRequested {
            engine: Box::new(recorded),
        },
    );

    Ok(())
}

fn on_acquire_lease(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::AcquireLease { pool_id, lease_id } = command else {
        return Ok(());
    };
    let now = d.now();
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    if pool.drain.is_some() {
        return Err(Rejection::PoolDraining {
            pool_id: pool_id.to_string(),
        });
    }
    if !pool.serving() {
        return Err(circuit_open(pool, now).unwrap_or_else(|| unready(pool, now)));
    }
    if pool.leases.contains(lease_id) {
        return Err(invalid(format!("lease id '{lease_id}' is already granted")));
    }
    if pool.slots_free() == 0 {
        return Err(Rejection::SlotsExhausted {
            pool_id: pool_id.to_string(),
            slots_total: pool.slots_total,
        });
    }
    d.push(
        Some(pool_id),
        Event::LeaseGranted {
            lease_id: lease_id.clone(),
        },
    );

    Ok(())
}

fn on_release_lease(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::ReleaseLease { pool_id, lease_id } = command else {
        return Ok(());
    };
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    // A lease the old engine still serves after a surge's switch is returned like any other.
    let on_old = pool
        .second
        .as_ref()
        .is_some_and(|s| s.leases.contains(lease_id));
    if !pool.leases.contains(lease_id) && !on_old {
        return Err(Rejection::LeaseNotFound {
            pool_id: pool_id.to_string(),
            lease_id: lease_id.to_string(),
        });
    }
    d.push(
        Some(pool_id),
        Event::LeaseReleased {
            lease_id: lease_id.clone(),
        },
    );
    super::surge::after_release(d, pool_id);
    let drained = d.pool(pool_id).is_some_and(|p| {
        p.drain.is_some() && matches!(p.activity, Activity::Running) && p.leases.is_empty()
    });
    if drained {
        stop(d, pool_id, StopReason::Drained);
    }

    Ok(())
}

fn on_drain(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::Drain {
        pool_id,
        deadline_ms,
    } = command
    else {
        return Ok(());
    };
    let now = d.now();
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    if pool.reload.is_some() {
        return Err(busy(pool));
    }
    if pool.drain.is_some() {
        return Ok(()); // already draining
    }
    let drain = Event::DrainRequested {
        deadline_ms: *deadline_ms,
        deadline_at_ms: now.saturating_add(*deadline_ms),
    };
    match pool.activity {
        Activity::Starting { .. } | Activity::Stopping { .. } => return Err(busy(pool)),
        Activity::Registered | Activity::Stopped => return Ok(()), // nothing to drain
        Activity::Running => {
            let idle = pool.leases.is_empty();
            d.push(Some(pool_id), drain);
            if idle {
                stop(d, pool_id, StopReason::Drained);
            }
        }
        Activity::Backoff { .. } | Activity::CircuitOpen | Activity::Failed => {
            // No engine serves: the drain completes at once and cancels any restart.
            d.push(Some(pool_id), drain);
            stop(d, pool_id, StopReason::Drained);
        }
    }

    Ok(())
}

fn on_reload(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::Reload {
        pool_id,
        new_model_ref,
        digest,
        drain_deadline_ms,
        strategy,
        surge_port,
        placement,
    } = command
    else {
        return Ok(());
    };
    let now = d.now();
    if new_model_ref.trim().is_empty() || new_model_ref.len() > FIELD_LEN_MAX {
        return Err(invalid("new_model_ref must be 1 to 4096 bytes"));
    }
    if digest.as_deref().is_some_and(|d| !valid_digest(d)) {
        return Err(invalid(
            "digest must be 'sha256:' followed by 64 hex digits",
        ));
    }
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    if pool.reload.is_some()
        || pool.second.is_some()
        || matches!(
            pool.activity,
            Activity::Starting { .. } | Activity::Stopping { .. }
        )
    {
        return Err(busy(pool));
    }
    if pool.drain.is_some() {
        return Err(Rejection::PoolDraining {
            pool_id: pool_id.to_string(),
        });
    }
    if let Some(rejection) = circuit_open(pool, now) {
        return Err(rejection);
    }
    if !pool.serving() {
        return Err(unready(pool, now));
    }
    let Some(engine) = &pool.engine else {
        return Err(invalid(format!(
            "pool '{pool_id}' runs an engine started by someone else (handoff); it cannot be reloaded, preload it instead"
        )));
    };
    let current = pool.model_ref.as_deref().unwrap_or(&engine.model_path);
    let same_model = model_key(current) == model_key(new_model_ref);
    let same_digest = digest.is_none() || *digest == pool.model_digest;
    if same_model && same_digest {
        return Ok(()); // no-op: already serving this model
    }
    let ask = super::surge::Ask {
        strategy: *strategy,
        surge_port: *surge_port,
        placement,
        new_model_ref,
    };
    let (strategy, reason, surge_port) = super::surge::choose(d, pool, engine, &ask)?;
    d.push(
        Some(pool_id),
        Event::ReloadRequested {
            new_model_ref: new_model_ref.clone(),
            digest: digest.clone(),
            drain_deadline_ms: drain_deadline_ms.unwrap_or(DEFAULT_RELOAD_DRAIN_DEADLINE_MS),
        },
    );
    d.push(
        Some(pool_id),
        Event::ReloadStrategyChosen {
            strategy,
            reason,
            surge_port,
        },
    );

    Ok(())
}

fn on_stop(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::Stop { pool_id } = command else {
        return Ok(());
    };
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    match pool.activity {
        Activity::Starting { .. } if pool.process.is_none() => return Err(busy(pool)),
        Activity::Stopping { .. } | Activity::Registered | Activity::Stopped => return Ok(()),
        _ => {}
    }
    cancel_reload(d, pool_id, "cancelled: the pool was stopped");
    super::surge::stop_any_second(d, pool_id);
    stop(d, pool_id, StopReason::Requested);

    Ok(())
}

fn on_remove(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::Remove { pool_id } = command else {
        return Ok(());
    };
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    match &pool.activity {
        Activity::Starting { .. } if pool.process.is_none() => return Err(busy(pool)),
        Activity::Stopping {
            reason: StopReason::Remove,
            ..
        } => return Ok(()),
        Activity::Stopping { .. } => return Err(busy(pool)),
        _ => {}
    }
    let live = pool.process.is_some();
    super::surge::stop_any_second(d, pool_id);
    if live {
        cancel_reload(d, pool_id, "cancelled: the pool was removed");
        stop(d, pool_id, StopReason::Remove);
    } else {
        d.push(Some(pool_id), Event::PoolRemoved);
    }

    Ok(())
}

fn on_reset_breaker(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::ResetBreaker { pool_id, by } = command else {
        return Ok(());
    };
    if by.len() > 256 {
        return Err(invalid("by must be at most 256 bytes"));
    }
    let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
    if pool.supervision.breaker.state == BreakerState::Closed {
        return Ok(()); // already closed
    }
    d.push(Some(pool_id), Event::CircuitReset { by: by.clone() });
    let restart = d
        .pool(pool_id)
        .and_then(|p| match (&p.activity, &p.engine) {
            (Activity::Failed, Some(engine)) => Some(engine.clone()),
            _ => None,
        });
    let held = restart
        .as_ref()
        .and_then(|engine| d.node().quarantined_gpu(engine.device_mask.as_deref()))
        .map(str::to_string);
    if let Some(gpu_uuid) = held {
        d.push(Some(pool_id), Event::RestartHeld { gpu_uuid });
        return Ok(());
    }
    if let Some(engine) = restart {
        d.push(
            Some(pool_id),
            Event::EngineStartRequested {
                engine: Box::new(engine),
                attempt: 1,
                purpose: StartPurpose::Restart,
            },
        );
    }

    Ok(())
}

fn on_unquarantine_gpu(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::UnquarantineGpu { gpu_uuid, by } = command else {
        return Ok(());
    };
    if by.len() > 256 {
        return Err(invalid("by must be at most 256 bytes"));
    }
    let node = d.node();
    let Some(quarantined) = node
        .quarantined
        .keys()
        .find(|uuid| uuid.eq_ignore_ascii_case(gpu_uuid))
        .cloned()
    else {
        if node
            .gpus
            .iter()
            .any(|gpu| gpu.uuid.eq_ignore_ascii_case(gpu_uuid))
        {
            return Ok(()); // not quarantined: nothing to end
        }
        return Err(invalid(format!(
            "no GPU '{}' on this node; GET /v2/gpus lists the GPUs and their UUIDs",
            tail(gpu_uuid, 80)
        )));
    };
    d.push(
        None,
        Event::GpuUnquarantined {
            gpu_uuid: quarantined,
            by: by.clone(),
        },
    );

    Ok(())
}

fn on_register_handoff(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let Command::RegisterHandoff {
        pool_id,
        handoff,
        path,
    } = command
    else {
        return Ok(());
    };
    handoff
        .validate()
        .map_err(|(field, why)| invalid(format!("handoff.{field}: {why}")))?;
    if handoff.pool_id != pool_id.as_str() {
        return Err(invalid(format!(
            "handoff.pool_id '{}' does not match the pool '{pool_id}'",
            handoff.pool_id
        )));
    }
    if path.len() > FIELD_LEN_MAX {
        return Err(invalid("handoff path is too long"));
    }
    if let Some(pool) = d.pool(pool_id) {
        if pool.busy() {
            return Err(busy(pool));
        }
        if pool.process.as_ref().is_some_and(|p| !p.external) {
            return Err(Rejection::PoolBusy {
                pool_id: pool_id.to_string(),
                operation: "the pool runs an engine started by this daemon; stop it first"
                    .to_string(),
            });
        }
        if pool.ready
            && pool.handoff.as_ref() == Some(handoff)
            && pool.handoff_path.as_deref() == Some(path.as_str())
        {
            return Ok(()); // the same file seen again
        }
    }
    d.push(
        Some(pool_id),
        Event::HandoffRegistered {
            handoff: Box::new(handoff.clone()),
            path: path.clone(),
        },
    );

    Ok(())
}
