//! Waiters: preloads with `wait`, removals and reloads answered when the journal records the
//! end they wait for.
//!
//! Owns: each pool's bounded list of waiters and the mapping of an ending event to an answer.
//! Never: answers before the event that ends the wait is durable.

use pool_core::{ErrorCode, Event, PoolId, Rejection};

use crate::port::Waiter;
use crate::schema::PoolEnvelope;

use super::actor::Actor;
use super::WAITERS_PER_POOL_MAX;
use crate::port::{ChosenStrategy, NodeError, PreloadOutcome, ReloadOutcome};

impl Actor {
    pub(super) fn register_waiter(&mut self, pool_id: &PoolId, waiter: Waiter, no_op: bool) {
        if no_op {
            // Nothing happened: answer from the state as it is.
            match waiter {
                Waiter::Preload { reply, .. } => {
                    let result = match self.state.pool(pool_id.as_str()) {
                        Some(pool) if pool.serving() => Ok(PreloadOutcome {
                            status: pool.status(),
                            ready_ms: 0,
                        }),
                        Some(pool) => Err(NodeError::Rejected(Rejection::PoolBusy {
                            pool_id: pool_id.to_string(),
                            operation: format!("phase {}", pool.status().phase.as_str()),
                        })),
                        None => Err(NodeError::Rejected(Rejection::PoolNotFound {
                            pool_id: pool_id.to_string(),
                        })),
                    };
                    let _ = reply.send(result);
                }
                Waiter::Removed { reply } => {
                    let _ = reply.send(Ok(()));
                }
                Waiter::Reload { reply, .. } => {
                    let result = self
                        .state
                        .status(pool_id.as_str())
                        .map(|status| ReloadOutcome {
                            status,
                            duration_ms: 0,
                            noop: true,
                            chosen: None,
                        })
                        .ok_or_else(|| {
                            NodeError::Rejected(Rejection::PoolNotFound {
                                pool_id: pool_id.to_string(),
                            })
                        });
                    let _ = reply.send(result);
                }
            }
            return;
        }
        let list = self.waiters.entry(pool_id.clone()).or_default();
        if list.len() >= WAITERS_PER_POOL_MAX {
            answer_waiter(
                waiter,
                Err(NodeError::Timeout(format!(
                    "pool '{pool_id}': more than {WAITERS_PER_POOL_MAX} requests wait on it; poll GET /v2/pools/{pool_id} instead"
                ))),
            );
            return;
        }
        list.push(waiter);
    }

    /// The `DELETE`s waiting on `pool_id`, as callbacks for the supervisor to call once the
    /// pool's files are removed.
    pub(super) fn take_removal_waiters(
        &mut self,
        pool_id: &PoolId,
    ) -> Vec<crate::supervisor::Done> {
        let Some(list) = self.waiters.remove(pool_id) else {
            return Vec::new();
        };
        let mut done: Vec<crate::supervisor::Done> = Vec::new();
        let mut kept = Vec::new();
        for waiter in list {
            match waiter {
                Waiter::Removed { reply } => done.push(Box::new(move || {
                    let _ = reply.send(Ok(()));
                })),
                other => kept.push(other),
            }
        }
        if !kept.is_empty() {
            self.waiters.insert(pool_id.clone(), kept);
        }
        done
    }

    pub(super) fn resolve_waiters(&mut self, envelope: &PoolEnvelope) {
        let Some(pool_id) = envelope.pool_id.as_deref() else {
            return;
        };
        let Some(list) = self.waiters.get_mut(pool_id) else {
            return;
        };
        let pool = self.state.pool(pool_id);
        let engine_gone = pool.is_none_or(|p| p.pid().is_none());
        let mut kept = Vec::with_capacity(list.len());
        for waiter in list.drain(..) {
            match waiter {
                Waiter::Preload {
                    reply,
                    since_ms,
                    failed,
                } => {
                    let failed = failed.or_else(|| preload_failure(pool_id, &envelope.event));
                    match (&envelope.event, failed) {
                        (Event::PoolReady { .. }, _) => {
                            let status = pool.map(|p| p.status());
                            let result = status.map_or_else(
                                || {
                                    Err(NodeError::Rejected(Rejection::PoolNotFound {
                                        pool_id: pool_id.to_string(),
                                    }))
                                },
                                |status| {
                                    Ok(PreloadOutcome {
                                        status,
                                        ready_ms: envelope.ts_ms.saturating_sub(since_ms),
                                    })
                                },
                            );
                            let _ = reply.send(result);
                        }
                        (_, Some(error)) if engine_gone => {
                            let _ = reply.send(Err(error));
                        }
                        (_, failed) => kept.push(Waiter::Preload {
                            reply,
                            since_ms,
                            failed,
                        }),
                    }
                }
                // Answered once the pool's files are gone too (see `process`).
                Waiter::Removed { reply } => kept.push(Waiter::Removed { reply }),
                Waiter::Reload {
                    reply,
                    failed,
                    chosen,
                } => {
                    let chosen = chosen.or_else(|| chosen_of(&envelope.event));
                    match reload_step(pool_id, &envelope.event, failed) {
                        ReloadStep::Wait(failed) => kept.push(Waiter::Reload {
                            reply,
                            failed,
                            chosen,
                        }),
                        ReloadStep::Done(result) => {
                            let result = result.and_then(|duration_ms| {
                                reload_done(pool, pool_id, duration_ms, chosen)
                            });
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        }
        if kept.is_empty() {
            self.waiters.remove(pool_id);
        } else if let Some(list) = self.waiters.get_mut(pool_id) {
            *list = kept;
        }
    }
}

/// The answer of a reload that ended with the new model serving.
fn reload_done(
    pool: Option<&pool_core::Pool>,
    pool_id: &str,
    duration_ms: u64,
    chosen: Option<ChosenStrategy>,
) -> Result<ReloadOutcome, NodeError> {
    let pool = pool.ok_or_else(|| {
        NodeError::Rejected(Rejection::PoolNotFound {
            pool_id: pool_id.to_string(),
        })
    })?;
    Ok(ReloadOutcome {
        status: pool.status(),
        duration_ms,
        noop: false,
        chosen,
    })
}

/// The strategy a reload took, when `event` records it.
fn chosen_of(event: &Event) -> Option<ChosenStrategy> {
    match event {
        Event::ReloadStrategyChosen {
            strategy, reason, ..
        } => Some(ChosenStrategy {
            strategy: *strategy,
            reason: reason.clone(),
        }),
        _ => None,
    }
}

/// The error a waiting preload answers when `event` ends its start.
pub(super) fn preload_failure(pool_id: &str, event: &Event) -> Option<NodeError> {
    match event {
        Event::PreloadFailed {
            reason, failure, ..
        } => Some(NodeError::Failed {
            code: failure.code(),
            reason: format!("pool '{pool_id}': {reason}"),
        }),
        Event::PreloadRejected { code, reason } => Some(NodeError::Failed {
            code: recorded_code(pool_id, code),
            reason: format!("pool '{pool_id}': {reason}"),
        }),
        Event::PoolRemoved => Some(NodeError::Rejected(Rejection::PoolNotFound {
            pool_id: pool_id.to_string(),
        })),
        Event::EngineStopRequested { .. } => Some(NodeError::Rejected(Rejection::PoolBusy {
            pool_id: pool_id.to_string(),
            operation: "the engine was asked to stop while it was starting".to_string(),
        })),
        _ => None,
    }
}

/// The code a `PreloadRejected` recorded (as text, in the journal). A text that is no code of
/// this build (a journal written by a later version) answers `INTERNAL`, and says so in the
/// log.
fn recorded_code(pool_id: &str, code: &str) -> ErrorCode {
    ErrorCode::parse(code).unwrap_or_else(|| {
        tracing::warn!(
            pool_id,
            code,
            "the journal records an error code this build does not know; answering INTERNAL"
        );
        ErrorCode::Internal
    })
}

pub(super) fn answer_waiter(waiter: Waiter, error: Result<(), NodeError>) {
    let Err(error) = error else { return };
    match waiter {
        Waiter::Preload { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Waiter::Removed { reply } => {
            let _ = reply.send(Err(error));
        }
        Waiter::Reload { reply, .. } => {
            let _ = reply.send(Err(error));
        }
    }
}

pub(super) enum ReloadStep {
    /// Not over yet (with the failure to report once the rollback is done).
    Wait(Option<String>),
    /// Over: the duration of a success, or the error.
    Done(Result<u64, NodeError>),
}

/// Where a waiting reload stands after `event`.
pub(super) fn reload_step(pool_id: &str, event: &Event, failed: Option<String>) -> ReloadStep {
    match event {
        Event::ReloadSucceeded { duration_ms, .. } => ReloadStep::Done(Ok(*duration_ms)),
        Event::ReloadFailed {
            reason,
            stage: pool_core::ReloadStage::Staging,
            ..
        } => ReloadStep::Done(Err(NodeError::Failed {
            code: ErrorCode::ModelNotFound,
            reason: format!("pool '{pool_id}': {reason}; the running engine was not touched"),
        })),
        Event::ReloadFailed {
            reason,
            stage: pool_core::ReloadStage::Surging,
            ..
        } => ReloadStep::Done(Err(NodeError::ReloadFailed {
            reason: surge_failed(pool_id, reason),
            rolled_back: true,
        })),
        Event::ReloadFailed {
            reason,
            rolling_back: true,
            ..
        } => ReloadStep::Wait(Some(reason.clone())),
        Event::ReloadFailed { reason, .. } => ReloadStep::Done(Err(NodeError::ReloadFailed {
            reason: format!(
                "pool '{pool_id}': {}{reason}; the pool is not serving, see GET /v2/pools/{pool_id}",
                failed.map(|f| format!("{f}; then ")).unwrap_or_default()
            ),
            rolled_back: false,
        })),
        Event::ReloadRolledBack { model_ref, .. } => {
            ReloadStep::Done(Err(NodeError::ReloadFailed {
                reason: format!(
                    "pool '{pool_id}': {}; rolled back: '{model_ref}' serves again",
                    failed.unwrap_or_else(|| "the reload failed".to_string())
                ),
                rolled_back: true,
            }))
        }
        Event::PoolRemoved => ReloadStep::Done(Err(NodeError::Rejected(
            Rejection::PoolNotFound {
                pool_id: pool_id.to_string(),
            },
        ))),
        _ => ReloadStep::Wait(failed),
    }
}

/// The reason of a surge that failed: the old engine never stopped, the pool stayed ready.
fn surge_failed(pool_id: &str, reason: &str) -> String {
    if reason.contains("serves on") {
        format!("pool '{pool_id}': {reason}")
    } else {
        format!("pool '{pool_id}': {reason}; the old engine never stopped and serves on")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_core::{ReloadStage, ReloadStrategy};

    #[test]
    fn a_failed_surge_is_answered_rolled_back_and_names_the_old_engine() {
        let failed = Event::ReloadFailed {
            reason: "spawn failed: no such file".into(),
            stage: ReloadStage::Surging,
            rolling_back: false,
            pid: None,
        };
        let ReloadStep::Done(Err(NodeError::ReloadFailed {
            reason,
            rolled_back,
        })) = reload_step("p1", &failed, None)
        else {
            panic!("a failed surge ends the wait with RELOAD_FAILED");
        };
        assert!(rolled_back);
        assert!(reason.contains("pool 'p1'"), "{reason}");
        assert!(
            reason.contains("the old engine never stopped and serves on"),
            "{reason}"
        );
    }

    #[test]
    fn the_chosen_strategy_is_read_from_its_event() {
        let chosen = Event::ReloadStrategyChosen {
            strategy: ReloadStrategy::Surge,
            reason: "fits".into(),
            surge_port: Some(9301),
        };
        assert_eq!(
            chosen_of(&chosen),
            Some(ChosenStrategy {
                strategy: ReloadStrategy::Surge,
                reason: "fits".into(),
            })
        );
        assert!(matches!(
            reload_step("p1", &chosen, None),
            ReloadStep::Wait(None)
        ));
        assert_eq!(chosen_of(&Event::PoolRemoved), None);
    }
}
