//! `decide`: turns one input (command or observation) into facts, or a rejection.
//!
//! Owns: every rule about what may happen next (preconditions, supervision decisions).
//! Never: mutates the state it is given, reads a clock, draws randomness or does I/O. Time and
//! entropy come from [`Context`]; anything chosen with them is recorded in the events.
//!
//! Conventions (the shell relies on these):
//! - `Ok(vec![])` means "accepted, nothing to record": an idempotent repeat (preload of a pool
//!   that is ready with the same engine, reload to the current model, stop of a stopped pool,
//!   drain of a draining or stopped pool, reset of a closed breaker), a stale observation (pid
//!   or token not current), or a routine heartbeat (`ProbeSucceeded` with no failures to
//!   recover from). For `Reload`, an empty result *is* the no-op answer (`noop: true`).
//! - Follow-up facts are derived by folding each fact into a scratch copy of the state as it is
//!   emitted, so a batch is always consistent with `evolve`.

use crate::command::{Command, Context, Input, Observation};
use crate::engine::{mask_covers, validate_mask, FIELD_LEN_MAX, SLOTS_MAX};
use crate::event::{
    DrainOutcome, Event, ExitReason, Fact, ReloadStage, Scope, Stamp, StartFailure, StartPurpose,
    StopReason,
};
use crate::evolve::{evolve_in_place, evolve_pool_slot, mask_violation_message, GPUS_MAX};
use crate::ids::PoolId;
use crate::policy::{
    backoff_delay_ms, classify_storm, DEFAULT_RELOAD_DRAIN_DEADLINE_MS, OPEN_MS_MAX,
    VRAM_DELTA_MIN_BYTES,
};
use crate::rejection::Rejection;
use crate::state::{Activity, Node, Pool, StartKind, State};
use crate::status::{phase, BreakerState};

/// The longest engine log tail or detail kept in an event, in bytes (the end is kept).
pub const DETAIL_LEN_MAX: usize = 4096;

/// Decides what `input` means for `state`: the facts to journal (in order), or why not.
/// Pure: same inputs, same answer.
pub fn decide(state: &State, input: &Input, ctx: &Context<'_>) -> Result<Vec<Fact>, Rejection> {
    let mut d = Decision {
        base: state,
        scratch: Scratch::Pools(Vec::new()),
        next_seq: state.last_seq.saturating_add(1),
        facts: Vec::new(),
        ctx,
    };
    match input {
        Input::Command(command) => decide_command(&mut d, command)?,
        Input::Observation(observation) => decide_observation(&mut d, observation),
    }
    Ok(d.facts)
}

struct Decision<'a, 'c> {
    base: &'a State,
    /// The facts so far, folded into copies of only what they touch (see [`Scratch`]).
    scratch: Scratch,
    /// The seq the next fact will get (the journal numbers facts in order from here).
    next_seq: u64,
    facts: Vec<Fact>,
    ctx: &'a Context<'c>,
}

/// What a decision's facts have changed so far. Most decisions touch one pool, so copying the
/// whole registry for each of them (every lease grant) would make `decide` cost grow with the
/// number of pools; only a node-level fact (rare: daemon start, inventory) copies it all.
enum Scratch {
    /// Copies of the pools touched, with the facts folded in (`None`: removed).
    Pools(Vec<(PoolId, Option<Pool>)>),
    /// A copy of the whole state, with the facts folded in (boxed: it is the rare case).
    Full(Box<State>),
}

impl Decision<'_, '_> {
    fn node(&self) -> &Node {
        match &self.scratch {
            Scratch::Full(state) => &state.node,
            Scratch::Pools(_) => &self.base.node,
        }
    }

    fn pool(&self, id: &PoolId) -> Option<&Pool> {
        match &self.scratch {
            Scratch::Full(state) => state.pools.get(id),
            Scratch::Pools(touched) => match touched.iter().find(|(touched, _)| touched == id) {
                Some((_, slot)) => slot.as_ref(),
                None => self.base.pools.get(id),
            },
        }
    }

    /// Every pool, as the facts so far left them (by id).
    fn pools(&self) -> Vec<&Pool> {
        match &self.scratch {
            Scratch::Full(state) => state.pools.values().collect(),
            Scratch::Pools(touched) => {
                let untouched = self
                    .base
                    .pools
                    .values()
                    .filter(|pool| touched.iter().all(|(id, _)| *id != pool.id));
                let mut all: Vec<&Pool> = untouched
                    .chain(touched.iter().filter_map(|(_, slot)| slot.as_ref()))
                    .collect();
                all.sort_by(|a, b| a.id.cmp(&b.id));
                all
            }
        }
    }

    fn now(&self) -> u64 {
        self.ctx.now_ms
    }

    fn push(&mut self, pool_id: Option<&PoolId>, event: Event) {
        let stamp = Stamp {
            seq: self.next_seq,
            ts_ms: self.ctx.now_ms,
            pool_id: pool_id.map(PoolId::as_str),
        };
        self.next_seq = self.next_seq.saturating_add(1);
        match (&mut self.scratch, pool_id, event.scope()) {
            (Scratch::Pools(touched), Some(id), Scope::Pool) => {
                let index = match touched.iter().position(|(touched, _)| touched == id) {
                    Some(index) => index,
                    None => {
                        touched.push((id.clone(), self.base.pools.get(id).cloned()));
                        touched.len() - 1
                    }
                };
                if let Some((_, slot)) = touched.get_mut(index) {
                    evolve_pool_slot(slot, stamp, &event);
                }
            }
            (Scratch::Full(state), _, _) => evolve_in_place(state, stamp, &event),
            (Scratch::Pools(touched), _, _) => {
                let mut state = self.base.clone();
                for (id, slot) in touched.drain(..) {
                    match slot {
                        Some(pool) => state.pools.insert(id, pool),
                        None => state.pools.remove(&id),
                    };
                }
                evolve_in_place(&mut state, stamp, &event);
                self.scratch = Scratch::Full(Box::new(state));
            }
        }
        self.facts.push(Fact {
            pool_id: pool_id.cloned(),
            event,
        });
    }
}

fn not_found(id: &PoolId) -> Rejection {
    Rejection::PoolNotFound {
        pool_id: id.to_string(),
    }
}

fn busy(pool: &Pool) -> Rejection {
    let operation = if let Some(reload) = &pool.reload {
        format!("a reload to '{}' is under way", reload.new_model_ref)
    } else if pool.drain.is_some() {
        "a drain is under way".to_string()
    } else {
        match &pool.activity {
            Activity::Starting { .. } => "the engine is starting".to_string(),
            Activity::Stopping { .. } => "the engine is stopping".to_string(),
            Activity::Running => {
                "the pool is ready with another engine; stop it or reload it first".to_string()
            }
            _ => "an operation is under way".to_string(),
        }
    };
    Rejection::PoolBusy {
        pool_id: pool.id.to_string(),
        operation,
    }
}

fn unready(pool: &Pool) -> Rejection {
    Rejection::PoolUnready {
        pool_id: pool.id.to_string(),
        phase: phase(pool).as_str().to_string(),
    }
}

fn circuit_open(pool: &Pool, now: u64) -> Option<Rejection> {
    let breaker = &pool.supervision.breaker;
    (breaker.state == BreakerState::Open).then(|| Rejection::CircuitOpen {
        pool_id: pool.id.to_string(),
        retry_after_ms: breaker.half_open_at_ms.unwrap_or(now).saturating_sub(now),
    })
}

fn invalid(what: impl Into<String>) -> Rejection {
    Rejection::InvalidRequest { what: what.into() }
}

/// The end of `text`, at most `max` bytes, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len().saturating_sub(max);
    while start < text.len() && !text.is_char_boundary(start) {
        start = start.saturating_add(1);
    }
    text.get(start..).unwrap_or("").to_string()
}

fn model_key(model_ref: &str) -> &str {
    model_ref
        .strip_prefix("file://")
        .or_else(|| model_ref.strip_prefix("file:"))
        .unwrap_or(model_ref)
}

fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Mixes the shell's entropy with the pool id, so that pools failing together get different
/// jitter (splitmix64 over random ^ fnv1a(id)).
fn mix(random: u64, id: &PoolId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = (random ^ hash).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------
// Commands

fn decide_command(d: &mut Decision<'_, '_>, command: &Command) -> Result<(), Rejection> {
    let now = d.now();
    match command {
        Command::Preload { pool_id, engine } => {
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
            if let Some(mask) = &engine.device_mask {
                let gpus = &d.node().gpus;
                if !gpus.is_empty() {
                    validate_mask(mask, gpus).map_err(|reason| Rejection::InvalidDeviceMask {
                        pool_id: pool_id.to_string(),
                        mask: tail(mask, 200),
                        reason,
                    })?;
                }
            }
            if let Some(pool) = d.pool(pool_id) {
                if pool.busy() {
                    return Err(busy(pool));
                }
                if let Some(rejection) = circuit_open(pool, now) {
                    return Err(rejection);
                }
                if matches!(pool.activity, Activity::Running) {
                    if pool.engine.as_ref() == Some(engine) {
                        return Ok(()); // idempotent: already ready with this engine
                    }
                    return Err(busy(pool));
                }
            }
            d.push(
                Some(pool_id),
                Event::PreloadRequested {
                    engine: Box::new(engine.clone()),
                },
            );
        }
        Command::AcquireLease { pool_id, lease_id } => {
            let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
            if pool.drain.is_some() {
                return Err(Rejection::PoolDraining {
                    pool_id: pool_id.to_string(),
                });
            }
            if !pool.serving() {
                return Err(circuit_open(pool, now).unwrap_or_else(|| unready(pool)));
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
        }
        Command::ReleaseLease { pool_id, lease_id } => {
            let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
            if !pool.leases.contains(lease_id) {
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
            let drained = d.pool(pool_id).is_some_and(|p| {
                p.drain.is_some() && matches!(p.activity, Activity::Running) && p.leases.is_empty()
            });
            if drained {
                stop(d, pool_id, StopReason::Drained);
            }
        }
        Command::Drain {
            pool_id,
            deadline_ms,
        } => {
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
        }
        Command::Reload {
            pool_id,
            new_model_ref,
            digest,
            drain_deadline_ms,
        } => {
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
                return Err(unready(pool));
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
            d.push(
                Some(pool_id),
                Event::ReloadRequested {
                    new_model_ref: new_model_ref.clone(),
                    digest: digest.clone(),
                    drain_deadline_ms: drain_deadline_ms
                        .unwrap_or(DEFAULT_RELOAD_DRAIN_DEADLINE_MS),
                },
            );
        }
        Command::Stop { pool_id } => {
            let pool = d.pool(pool_id).ok_or_else(|| not_found(pool_id))?;
            match pool.activity {
                Activity::Starting { .. } if pool.process.is_none() => return Err(busy(pool)),
                Activity::Stopping { .. } | Activity::Registered | Activity::Stopped => {
                    return Ok(())
                }
                _ => {}
            }
            cancel_reload(d, pool_id, "cancelled: the pool was stopped");
            stop(d, pool_id, StopReason::Requested);
        }
        Command::Remove { pool_id } => {
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
            if pool.process.is_some() {
                cancel_reload(d, pool_id, "cancelled: the pool was removed");
                stop(d, pool_id, StopReason::Remove);
            } else {
                d.push(Some(pool_id), Event::PoolRemoved);
            }
        }
        Command::ResetBreaker { pool_id, by } => {
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
        }
        Command::RegisterHandoff {
            pool_id,
            handoff,
            path,
        } => {
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
        }
    }
    Ok(())
}

/// Asks the engine to stop for `reason`; when no process runs, the stop completes at once.
fn stop(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: StopReason) {
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
fn after_stop(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: &StopReason) {
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
    }
}

/// Ends a reload in progress (the old engine is being stopped, or failed).
fn cancel_reload(d: &mut Decision<'_, '_>, pool_id: &PoolId, why: &str) {
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
}

/// The restart policy's answer to a failure already recorded in the (scratch) state:
/// restart with backoff, open the breaker (threshold, failed trial, storm), or nothing (a
/// handoff pool without a prepared engine, or a breaker already open).
fn supervise(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: ExitReason) {
    let now = d.now();
    let policy = d.ctx.policy;
    let Some(pool) = d.pool(pool_id) else { return };
    if pool.engine.is_none() {
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
                    backoff_delay_ms(&policy.backoff, attempt, reason, mix(d.ctx.random, pool_id));
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
fn fail_running(d: &mut Decision<'_, '_>, pool_id: &PoolId, reason: ExitReason, detail: String) {
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
fn start_failed(
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
            d.push(
                Some(pool_id),
                Event::ReloadFailed {
                    reason,
                    stage: ReloadStage::Starting,
                    rolling_back: old.is_some(),
                    pid,
                },
            );
            if let Some(engine) = old {
                d.push(
                    Some(pool_id),
                    Event::EngineStartRequested {
                        engine: Box::new(engine),
                        attempt: 0,
                        purpose: StartPurpose::Rollback,
                    },
                );
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
fn fail_start(
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

fn exit_text(
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

// ---------------------------------------------------------------------------------------
// Observations

fn decide_observation(d: &mut Decision<'_, '_>, observation: &Observation) {
    let now = d.now();
    let policy = d.ctx.policy;
    match observation {
        Observation::DaemonStarted { version, pid } => d.push(
            None,
            Event::DaemonStarted {
                version: version.clone(),
                pid: *pid,
            },
        ),
        Observation::DaemonStopping { reason } => d.push(
            None,
            Event::DaemonStopped {
                reason: reason.clone(),
            },
        ),
        Observation::GpuInventory { gpus } => {
            let gpus: Vec<_> = gpus.iter().take(GPUS_MAX).cloned().collect();
            let node = &d.node();
            let clears = node.preflight_error.is_some() && !gpus.is_empty();
            if gpus != node.gpus || clears {
                d.push(None, Event::GpuInventoryObserved { gpus });
            }
        }
        Observation::PreflightFailed { reason } => {
            if d.node().preflight_error.as_ref() != Some(reason) {
                d.push(
                    None,
                    Event::PreflightFailed {
                        reason: reason.clone(),
                    },
                );
            }
        }
        Observation::EngineSpawned {
            pool_id,
            token,
            pid,
            start_time,
            log_path,
            pid_path,
        } => {
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
                },
            );
        }
        Observation::SpawnFailed {
            pool_id,
            token,
            reason,
        } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if !matches!(pool.activity, Activity::Starting { .. })
                || pool.process.is_some()
                || pool.start_token != *token
            {
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
        Observation::HealthPassed {
            pool_id,
            pid,
            after_ms,
            engine_version,
            slots_total,
        } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid)
                || !matches!(
                    pool.activity,
                    Activity::Starting {
                        health_passed: false,
                        ..
                    }
                )
            {
                return;
            }
            let prepared = pool.engine.as_ref();
            let slots = prepared
                .and_then(|e| e.slots_total)
                .or(*slots_total)
                .unwrap_or(1)
                .clamp(1, SLOTS_MAX);
            let version = match engine_version {
                Some(v) if !v.trim().is_empty() => tail(v, 256),
                _ => prepared
                    .map(|e| e.engine_version.clone())
                    .unwrap_or_default(),
            };
            d.push(
                Some(pool_id),
                Event::HealthCheckPassed {
                    after_ms: *after_ms,
                    engine_version: version,
                    slots_total: slots,
                },
            );
        }
        Observation::PreloadTimedOut { pool_id, pid } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid) || !matches!(pool.activity, Activity::Starting { .. }) {
                return;
            }
            start_failed(
                d,
                pool_id,
                StartFailure::HealthTimeout,
                ExitReason::HealthTimeout,
                format!(
                    "no healthy answer within {} ms",
                    policy.health.preload_timeout_ms
                ),
                Some(*pid),
            );
        }
        Observation::HandoffWritten { pool_id, pid, path } => {
            let Some(pool) = d.pool(pool_id) else { return };
            let kind = match pool.activity {
                Activity::Starting {
                    kind,
                    health_passed: true,
                    ..
                } if pool.pid() == Some(*pid) => kind,
                _ => return,
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
        Observation::HandoffWriteFailed {
            pool_id,
            pid,
            reason,
        } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid)
                || !matches!(
                    pool.activity,
                    Activity::Starting {
                        health_passed: true,
                        ..
                    }
                )
            {
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
        Observation::ProbeFailed {
            pool_id,
            pid,
            error,
        } => {
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
        Observation::ProbeSucceeded { pool_id, pid } => {
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
        Observation::EngineExited {
            pool_id,
            pid,
            exit_code,
            signal,
            reason,
            detail,
        } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid) {
                return;
            }
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
        Observation::EngineStopped {
            pool_id,
            pid,
            graceful,
        } => {
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
        Observation::TimerFired {
            pool_id,
            timer,
            token,
        } => timer_fired(d, pool_id, *timer, *token),
        Observation::ModelStaged {
            pool_id,
            token,
            path,
            digest,
        } => {
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
            d.push(
                Some(pool_id),
                Event::ModelStaged {
                    path: path.clone(),
                    digest: digest.clone(),
                },
            );
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
        Observation::StagingFailed {
            pool_id,
            token,
            reason,
        } => {
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
        Observation::EngineAdopted { pool_id, pid } => {
            let Some(pool) = d.pool(pool_id) else { return };
            match &pool.process {
                Some(process) if process.pid == *pid && !process.adopted => {
                    d.push(Some(pool_id), Event::EngineAdopted { pid: *pid })
                }
                _ => {}
            }
        }
        Observation::EngineLost { pool_id, pid } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid) {
                return;
            }
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
        Observation::GpuXid { gpu_uuid, xid } => {
            let gpu_uuid = tail(gpu_uuid, 256);
            d.push(
                None,
                Event::GpuXidObserved {
                    gpu_uuid: gpu_uuid.clone(),
                    xid: *xid,
                },
            );
            let gpus = d.node().gpus.clone();
            let hit: Vec<(PoolId, bool)> = d
                .pools()
                .into_iter()
                .filter(|p| p.process.is_some() && mask_covers(p.device_mask(), &gpu_uuid, &gpus))
                .filter_map(|p| match p.activity {
                    Activity::Starting { .. } => Some((p.id.clone(), true)),
                    Activity::Running => Some((p.id.clone(), false)),
                    _ => None,
                })
                .collect();
            for (pool_id, starting) in hit {
                let detail = format!("NVML Xid {xid} on GPU {gpu_uuid}");
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
        Observation::DriverReset { gpu_uuid } => d.push(
            None,
            Event::DriverResetObserved {
                gpu_uuid: tail(gpu_uuid, 256),
            },
        ),
        Observation::DeviceMaskViolation {
            pool_id,
            pid,
            gpu_uuid,
        } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid) {
                return;
            }
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
        Observation::VramObserved {
            pool_id,
            pid,
            used_bytes,
        } => {
            let Some(pool) = d.pool(pool_id) else { return };
            if pool.pid() != Some(*pid) {
                return;
            }
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
        Observation::PreloadRefused {
            pool_id,
            code,
            reason,
        } => {
            if d.pool(pool_id).is_some() {
                d.push(
                    Some(pool_id),
                    Event::PreloadRejected {
                        code: tail(code, 64),
                        reason: tail(reason, 1024),
                    },
                );
            }
        }
        Observation::HandoffInvalid {
            file,
            field,
            reason,
        } => {
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
    }
}

fn timer_fired(
    d: &mut Decision<'_, '_>,
    pool_id: &PoolId,
    timer: crate::effect::Timer,
    token: u64,
) {
    use crate::effect::Timer;
    let Some(pool) = d.pool(pool_id) else { return };
    match timer {
        Timer::Restart => {
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
            d.push(
                Some(pool_id),
                Event::EngineStartRequested {
                    engine: Box::new(engine),
                    attempt,
                    purpose: StartPurpose::Restart,
                },
            );
        }
        Timer::HalfOpen => {
            let breaker = &pool.supervision.breaker;
            if breaker.state != BreakerState::Open || breaker.token != token {
                return;
            }
            let trial = match (&pool.activity, &pool.engine) {
                (Activity::CircuitOpen | Activity::Failed, Some(engine)) => Some(engine.clone()),
                _ => None,
            };
            let attempt = pool.supervision.backoff_attempt.saturating_add(1);
            d.push(Some(pool_id), Event::CircuitHalfOpened);
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
