//! The effects of a surge's events (see the module above).

use crate::effect::{handoff_of_engine, running_effects, Effect, Timer};
use crate::engine::PreparedEngine;
use crate::event::{Event, ReloadStage, SecondStop, StopReason};
use crate::gpu::engine_for_spawn;
use crate::state::{Pool, Second, SecondRole};

use super::second_lane;

/// What the shell must do after a surge event (or a `ReloadFailed` of a surge), folded into
/// `pool`.
pub(crate) fn surge_effects(pool: &Pool, seq: u64, event: &Event, out: &mut Vec<Effect>) {
    let pool_id = pool.id.clone();
    let lane = second_lane(pool);
    let second = pool.second.as_ref();
    match event {
        Event::SurgeStartRequested { engine } => out.push(Effect::Spawn {
            pool_id,
            engine: engine_for_spawn(engine),
            attempt: 0,
            token: seq,
            lane,
            surge: true,
        }),
        Event::SurgeSpawned {
            pid,
            health_deadline_at_ms,
            ..
        } => out.push(Effect::StartHealthWait {
            pool_id,
            pid: *pid,
            token: second.map_or(0, |s| s.token),
            deadline_at_ms: *health_deadline_at_ms,
            lane,
        }),
        Event::SurgeHealthPassed { .. } => {
            if let Some(second) = second {
                push_second_handoff(pool, second, out);
            }
        }
        Event::SurgeSwitched { .. } => {
            running_effects(pool, out);
            if let Some(second) = second {
                retire_deadline(pool, second, out);
            }
        }
        Event::SecondStopRequested {
            pid, grace_ms, why, ..
        } => match (pid, second) {
            (Some(pid), Some(_)) => out.push(Effect::StopEngine {
                pool_id,
                pid: *pid,
                grace_ms: *grace_ms,
                reason: stop_reason(*why),
                lane,
            }),
            _ => out.push(Effect::RemovePidFile { pool_id, lane }),
        },
        Event::SecondEngineEnded { .. } => out.push(Effect::RemovePidFile { pool_id, lane }),
        Event::ReloadFailed {
            stage: ReloadStage::Surging,
            ..
        } => {
            // The handoff file may name the new engine already: it names the old one again.
            if let (Some(engine), Some(pid)) = (&pool.engine, pool.pid()) {
                if pool.serving() {
                    out.push(Effect::WriteHandoff {
                        pool_id,
                        pid,
                        handoff: crate::effect::handoff_of(pool, engine, Some(pid)),
                        lane: pool.lane,
                    });
                }
            }
        }
        _ => {}
    }
}

/// After a daemon restart, effects that carry on with a second engine found alive (adopted):
/// its stop again, or the retiring engine's drain deadline. A surge's new engine is not
/// carried on: `decide` ends its surge.
pub(crate) fn second_continue_effects(pool: &Pool, out: &mut Vec<Effect>) {
    let Some(second) = &pool.second else { return };
    let Some(pid) = second.pid() else { return };
    if second.stopping {
        out.push(Effect::StopEngine {
            pool_id: pool.id.clone(),
            pid,
            grace_ms: second.stop_grace_ms,
            reason: match second.role {
                SecondRole::Surge => stop_reason(SecondStop::SurgeEnded),
                SecondRole::Retiring => stop_reason(SecondStop::Drained),
            },
            lane: second_lane(pool),
        });
    } else if second.role == SecondRole::Retiring {
        retire_deadline(pool, second, out);
    }
}

fn retire_deadline(pool: &Pool, second: &Second, out: &mut Vec<Effect>) {
    if second.role != SecondRole::Retiring || second.stopping {
        return;
    }
    if let Some(at_ms) = second.deadline_at_ms {
        out.push(Effect::ArmTimer {
            pool_id: pool.id.clone(),
            timer: Timer::RetireDeadline,
            token: second.token,
            at_ms,
        });
    }
}

fn push_second_handoff(pool: &Pool, second: &Second, out: &mut Vec<Effect>) {
    let Some(pid) = second.pid() else { return };
    let engine: &PreparedEngine = &second.engine;
    out.push(Effect::WriteHandoff {
        pool_id: pool.id.clone(),
        pid,
        handoff: handoff_of_engine(
            pool,
            engine,
            second.engine_version.as_deref(),
            second.slots_total,
            Some(pid),
        ),
        lane: second_lane(pool),
    });
}

fn stop_reason(why: SecondStop) -> StopReason {
    match why {
        SecondStop::Drained => StopReason::Drained,
        SecondStop::DrainDeadline => StopReason::DrainDeadline,
        SecondStop::SurgeEnded => StopReason::ReloadFailed {
            detail: "the surge's new engine is not used".to_string(),
        },
    }
}
