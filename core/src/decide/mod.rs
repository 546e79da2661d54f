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

mod command;
mod lifecycle;
mod observation;
mod placement;
mod release;
mod surge;

use self::command::decide_command;
use self::observation::decide_observation;
use crate::command::{Context, Input};
use crate::engine::{FIELD_LEN_MAX, SLOTS_MAX};
use crate::event::{
    DrainOutcome, Event, ExitReason, Fact, ReloadStage, Scope, Stamp, StartFailure, StartPurpose,
    StopReason,
};
use crate::evolve::{evolve_in_place, evolve_pool_slot, mask_violation_message, GPUS_MAX};
use crate::gpu::{mask_covers_in, MIG_DEVICES_MAX};
use crate::ids::PoolId;
use crate::policy::{
    classify_storm, restart_delay_ms, DEFAULT_RELOAD_DRAIN_DEADLINE_MS, OPEN_MS_MAX,
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

pub(super) struct Decision<'a, 'c> {
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
    pub(super) fn node(&self) -> &Node {
        match &self.scratch {
            Scratch::Full(state) => &state.node,
            Scratch::Pools(_) => &self.base.node,
        }
    }

    /// The pool `id` while `pid` is its current engine: an observation about any other pid
    /// is stale.
    pub(super) fn pool_running(&self, id: &PoolId, pid: u32) -> Option<&Pool> {
        self.pool(id).filter(|pool| pool.pid() == Some(pid))
    }

    pub(super) fn pool(&self, id: &PoolId) -> Option<&Pool> {
        match &self.scratch {
            Scratch::Full(state) => state.pools.get(id),
            Scratch::Pools(touched) => match touched.iter().find(|(touched, _)| touched == id) {
                Some((_, slot)) => slot.as_ref(),
                None => self.base.pools.get(id),
            },
        }
    }

    /// The pool, if `pid` is its engine and it is starting, before (`health_passed: false`) or
    /// after (`true`) its health check: the test an answer to a start's effects must pass to
    /// be current rather than stale.
    pub(super) fn starting_engine(
        &self,
        id: &PoolId,
        pid: u32,
        health_passed: bool,
    ) -> Option<&Pool> {
        self.pool(id).filter(|pool| {
            pool.pid() == Some(pid)
                && matches!(
                    pool.activity,
                    Activity::Starting { health_passed: passed, .. } if passed == health_passed
                )
        })
    }

    /// Every pool, as the facts so far left them (by id).
    pub(super) fn pools(&self) -> Vec<&Pool> {
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

    pub(super) fn now(&self) -> u64 {
        self.ctx.now_ms
    }

    pub(super) fn push(&mut self, pool_id: Option<&PoolId>, event: Event) {
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

pub(super) fn not_found(id: &PoolId) -> Rejection {
    Rejection::PoolNotFound {
        pool_id: id.to_string(),
    }
}

pub(super) fn busy(pool: &Pool) -> Rejection {
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

/// `POOL_UNREADY`; in backoff, with the time left until the restart is due.
pub(super) fn unready(pool: &Pool, now: u64) -> Rejection {
    let retry_after_ms = match pool.activity {
        Activity::Backoff { not_before_ms, .. } => Some(not_before_ms.saturating_sub(now)),
        _ => None,
    };
    Rejection::PoolUnready {
        pool_id: pool.id.to_string(),
        phase: phase(pool).as_str().to_string(),
        retry_after_ms,
    }
}

pub(super) fn circuit_open(pool: &Pool, now: u64) -> Option<Rejection> {
    let breaker = &pool.supervision.breaker;
    (breaker.state == BreakerState::Open).then(|| Rejection::CircuitOpen {
        pool_id: pool.id.to_string(),
        retry_after_ms: breaker.half_open_at_ms.unwrap_or(now).saturating_sub(now),
    })
}

pub(super) fn invalid(what: impl Into<String>) -> Rejection {
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

/// What a healthy engine is recorded with: its slots (prepared, else reported by `/props`, else
/// 1, at most `SLOTS_MAX`) and its version (reported, else prepared, else empty).
pub(super) fn reported_slots_and_version(
    prepared: Option<&crate::engine::PreparedEngine>,
    slots_total: Option<u32>,
    engine_version: Option<&String>,
) -> (u32, String) {
    let slots = prepared
        .and_then(|e| e.slots_total)
        .or(slots_total)
        .unwrap_or(1)
        .clamp(1, SLOTS_MAX);
    let version = match engine_version {
        Some(v) if !v.trim().is_empty() => tail(v, 256),
        _ => prepared
            .map(|e| e.engine_version.clone())
            .unwrap_or_default(),
    };
    (slots, version)
}

pub(super) fn model_key(model_ref: &str) -> &str {
    model_ref
        .strip_prefix("file://")
        .or_else(|| model_ref.strip_prefix("file:"))
        .unwrap_or(model_ref)
}

pub(super) fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Mixes the shell's entropy with the pool id, so that pools failing together get different
/// jitter (splitmix64 over random ^ fnv1a(id)).
pub(super) fn mix(random: u64, id: &PoolId) -> u64 {
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
