//! What the actor logs for each recorded event (one line per fact, its level by its weight),
//! and the warning of a drain cut short with the leases it cut.
//!
//! Never: logs a fact that is not durable.

use pool_core::{Event, State};

use crate::schema::PoolEnvelope;

/// The warning of a drain that reached its deadline: the leases still held, by id (their
/// requests are cut short). `before` is the registry before the batch that holds `stop`, and
/// `earlier` the events of that batch before it (a lease released there is not held).
pub(super) fn warn_drain_deadline(before: &State, earlier: &[PoolEnvelope], stop: &PoolEnvelope) {
    let Some(pool_id) = stop.pool_id.as_deref() else {
        return;
    };
    let released: Vec<&str> = earlier
        .iter()
        .filter(|e| e.pool_id.as_deref() == Some(pool_id))
        .filter_map(|e| match &e.event {
            Event::LeaseReleased { lease_id } => Some(lease_id.as_str()),
            _ => None,
        })
        .collect();
    let held: Vec<&str> = before
        .pool(pool_id)
        .map(|pool| {
            pool.leases
                .iter()
                .map(|lease| lease.as_str())
                .filter(|lease| !released.contains(lease))
                .collect()
        })
        .unwrap_or_default();
    tracing::warn!(
        seq = stop.seq,
        pool_id,
        leases_held = held.len(),
        "drain deadline reached with {} lease(s) still held ({}): force-stopping the engine; \
         requests on those leases are cut short",
        held.len(),
        held.join(", ")
    );
}

/// Every journaled event is logged once, at a level that fits (a crash, a failed preload:
/// warn; the breaker opening, a restart storm: error; the rest: info), with the pool's
/// `engine, engine_version, device_mask, model_id, restart_count, backoff_ms, last_error` as
/// structured fields where the registry after the batch (`state`) knows them.
pub(super) fn log_event(envelope: &PoolEnvelope, state: &State) {
    let pool_id = envelope.pool_id.as_deref().unwrap_or("-");
    let kind = envelope.event.kind();
    let seq = envelope.seq;
    // The event's own fields (the delay chosen, the reason, a storm's remediation hint), as
    // the journal exports them; the engine of a preload is left out (it is long, and in the
    // journal).
    let fields = match &envelope.event {
        Event::PreloadRequested { .. } | Event::EngineStartRequested { .. } => String::new(),
        event => pool_journal::event_to_json(event)
            .map(|value| value.to_string())
            .unwrap_or_default(),
    };
    let status = envelope.pool_id.as_deref().and_then(|id| state.status(id));
    let status = status.as_ref();
    let engine = status.and_then(|s| s.engine.as_deref());
    let engine_version = status.and_then(|s| s.engine_version.as_deref());
    let device_mask = status.and_then(|s| s.device_mask.as_deref());
    let model_id = status.and_then(|s| s.model_ref.as_deref());
    let restart_count = status.map(|s| s.restart_count);
    // The delay of this event if it chose one, else the pool's while it waits in backoff.
    let backoff_ms = match &envelope.event {
        Event::RestartScheduled { delay_ms, .. } => Some(*delay_ms),
        _ => status.map(|s| s.backoff_ms).filter(|ms| *ms > 0),
    };
    let last_error = match &envelope.event {
        Event::PreloadFailed { reason, .. } => Some(reason.as_str()),
        _ => status.and_then(|s| s.last_error.as_deref()),
    };
    let reason = match &envelope.event {
        Event::EngineExited { reason, .. } | Event::RestartScheduled { reason, .. } => {
            Some(reason.as_str())
        }
        _ => None,
    };
    let hint = match &envelope.event {
        Event::RestartStormDetected { hint, .. } => Some(hint.as_str()),
        _ => None,
    };
    let level = match &envelope.event {
        Event::EngineExited { reason, .. } if *reason != pool_core::ExitReason::Graceful => {
            tracing::Level::WARN
        }
        Event::PreloadFailed { .. } => tracing::Level::WARN,
        Event::CircuitOpened { .. } | Event::RestartStormDetected { .. } => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                $level,
                seq,
                pool_id,
                kind,
                engine,
                engine_version,
                device_mask,
                model_id,
                restart_count,
                backoff_ms,
                last_error,
                reason,
                hint,
                %fields,
                "event"
            )
        };
    }
    match level {
        tracing::Level::ERROR => emit!(tracing::Level::ERROR),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        _ => emit!(tracing::Level::INFO),
    }
}
