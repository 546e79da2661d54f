//! The world's side of a script: the answers an engine, a timer or a probe would give to the
//! effects the core asked for (a spawn succeeds or fails, a health check passes or times out,
//! an engine exits, a stop ends, a model is staged, a probe fails).
//!
//! Never: answers an effect nobody asked for (that is a [`ScriptError`]).

use pool_core::{Effect, ExitReason, Observation, Timer};

use super::{pool_id, ScriptError, Scripted};
use crate::schema::PoolEnvelope;

/// The boot id of a script's engines (`EngineSpawned::boot_id`).
pub const SCRIPTED_BOOT_ID: &str = "9d2f6c1e-4a7b-4e05-8b3c-51f0e2a6d7c8";

impl Scripted {
    /// The pool's pending spawn succeeds; returns the new engine's pid.
    pub fn spawn_engine(&mut self, pool: &str) -> Result<u32, ScriptError> {
        let (cause, effect) =
            self.take_pending(pool, "Spawn", |e| matches!(e, Effect::Spawn { .. }))?;
        let Effect::Spawn { token, lane, .. } = effect else {
            return Err(self.unexpected(pool, "Spawn"));
        };
        let lane = lane.suffix();
        let pid = self.next_pid;
        self.next_pid = self.next_pid.saturating_add(1);
        self.submit_caused(
            Observation::EngineSpawned {
                pool_id: pool_id(pool)?,
                token,
                pid,
                start_time: u64::from(pid).saturating_mul(100),
                log_path: format!(".runtime/logs/{pool}{lane}.log"),
                pid_path: format!(".runtime/pids/{pool}{lane}.pid"),
                boot_id: Some(SCRIPTED_BOOT_ID.to_string()),
            }
            .into(),
            Some(cause),
        )?;
        Ok(pid)
    }

    /// The pool's pending spawn fails (binary missing, ...).
    pub fn fail_spawn(&mut self, pool: &str, reason: &str) -> Result<(), ScriptError> {
        let (cause, effect) =
            self.take_pending(pool, "Spawn", |e| matches!(e, Effect::Spawn { .. }))?;
        let Effect::Spawn { token, .. } = effect else {
            return Err(self.unexpected(pool, "Spawn"));
        };
        self.submit_caused(
            Observation::SpawnFailed {
                pool_id: pool_id(pool)?,
                token,
                reason: reason.to_string(),
            }
            .into(),
            Some(cause),
        )?;
        Ok(())
    }

    /// The engine answers its health check after `after_ms` (the clock moves that far), with
    /// `slots_total` from its `/props` if given, and the handoff file is written: the
    /// [`health_passed`](Self::health_passed) and [`write_handoff`](Self::write_handoff)
    /// steps in one.
    pub fn pass_health(
        &mut self,
        pool: &str,
        after_ms: u64,
        slots_total: Option<u32>,
    ) -> Result<(), ScriptError> {
        self.health_passed(pool, after_ms, slots_total)?;
        self.write_handoff(pool)?;
        Ok(())
    }

    /// The engine answers its health check after `after_ms` (the clock moves that far), with
    /// `slots_total` from its `/props` if given; the handoff file is not written yet (the
    /// pool stays starting until [`write_handoff`](Self::write_handoff)).
    pub fn health_passed(
        &mut self,
        pool: &str,
        after_ms: u64,
        slots_total: Option<u32>,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let (cause, effect) = self.take_pending(pool, "StartHealthWait", |e| {
            matches!(e, Effect::StartHealthWait { .. })
        })?;
        let Effect::StartHealthWait { pid, .. } = effect else {
            return Err(self.unexpected(pool, "StartHealthWait"));
        };
        self.advance(after_ms);
        // The engine runs its prepared binary (no launcher in a script).
        let exe = self
            .state()
            .pool(pool)
            .and_then(|p| p.engine.as_ref())
            .map(|engine| engine.binary_path.clone());
        self.submit_caused(
            Observation::HealthPassed {
                pool_id: pool_id(pool)?,
                pid,
                after_ms,
                engine_version: None,
                slots_total,
                exe,
            }
            .into(),
            Some(cause),
        )
    }

    /// The pool's pending handoff file is written (after a passed health check).
    pub fn write_handoff(&mut self, pool: &str) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let (cause, effect) = self.take_pending(pool, "WriteHandoff", |e| {
            matches!(e, Effect::WriteHandoff { .. })
        })?;
        let Effect::WriteHandoff { pid, handoff, .. } = effect else {
            return Err(self.unexpected(pool, "WriteHandoff"));
        };
        self.submit_caused(
            Observation::HandoffWritten {
                pool_id: pool_id(pool)?,
                pid,
                path: format!(".runtime/engines/{pool}-{}.json", handoff.replica_id),
            }
            .into(),
            Some(cause),
        )
    }

    /// The engine never answers healthy: the clock moves to the health deadline and the wait
    /// times out.
    pub fn time_out_health(&mut self, pool: &str) -> Result<(), ScriptError> {
        let (cause, effect) = self.take_pending(pool, "StartHealthWait", |e| {
            matches!(e, Effect::StartHealthWait { .. })
        })?;
        let Effect::StartHealthWait {
            pid,
            deadline_at_ms,
            ..
        } = effect
        else {
            return Err(self.unexpected(pool, "StartHealthWait"));
        };
        self.now_ms = self.now_ms.max(deadline_at_ms);
        self.submit_caused(
            Observation::PreloadTimedOut {
                pool_id: pool_id(pool)?,
                pid,
                last_probe: "503 loading".to_string(),
            }
            .into(),
            Some(cause),
        )?;
        Ok(())
    }

    /// The pool's engine exits on its own.
    pub fn exit_engine(
        &mut self,
        pool: &str,
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: ExitReason,
        detail: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let pid = self
            .state
            .pool(pool)
            .and_then(|p| p.process.as_ref())
            .map(|process| process.pid)
            .ok_or_else(|| ScriptError::NoPendingEffect {
                pool_id: pool.to_string(),
                what: "running engine",
                pending: String::new(),
            })?;
        self.submit(Observation::EngineExited {
            pool_id: pool_id(pool)?,
            pid,
            exit_code,
            signal,
            reason,
            detail: detail.to_string(),
        })
    }

    /// The pool's pending stop completes (SIGTERM honoured when `graceful`, else SIGKILL after
    /// the grace period, which the clock then covers).
    pub fn finish_stop(&mut self, pool: &str, graceful: bool) -> Result<(), ScriptError> {
        let (cause, effect) = self.take_pending(pool, "StopEngine", |e| {
            matches!(e, Effect::StopEngine { .. })
        })?;
        let Effect::StopEngine { pid, grace_ms, .. } = effect else {
            return Err(self.unexpected(pool, "StopEngine"));
        };
        self.advance(if graceful {
            200.min(grace_ms)
        } else {
            grace_ms
        });
        self.submit_caused(
            Observation::EngineStopped {
                pool_id: pool_id(pool)?,
                pid,
                graceful,
            }
            .into(),
            Some(cause),
        )?;
        Ok(())
    }

    /// The pool's pending `timer` fires: the clock moves to its time first.
    pub fn fire_timer(&mut self, pool: &str, timer: Timer) -> Result<(), ScriptError> {
        let (cause, effect) = self.take_pending(
            pool,
            "ArmTimer",
            |e| matches!(e, Effect::ArmTimer { timer: t, .. } if *t == timer),
        )?;
        let Effect::ArmTimer { token, at_ms, .. } = effect else {
            return Err(self.unexpected(pool, "ArmTimer"));
        };
        self.now_ms = self.now_ms.max(at_ms);
        self.submit_caused(
            Observation::TimerFired {
                pool_id: pool_id(pool)?,
                timer,
                token,
            }
            .into(),
            Some(cause),
        )?;
        Ok(())
    }

    fn unexpected(&self, pool: &str, what: &'static str) -> ScriptError {
        ScriptError::NoPendingEffect {
            pool_id: pool.to_string(),
            what,
            pending: "(matched an effect of another kind)".to_string(),
        }
    }
    /// The pool's pending model staging succeeds: the model is at `path`.
    pub fn stage_model(
        &mut self,
        pool: &str,
        path: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let (cause, effect) = self.take_pending(pool, "StageModel", |e| {
            matches!(e, Effect::StageModel { .. })
        })?;
        let Effect::StageModel { token, digest, .. } = effect else {
            return Err(self.unexpected(pool, "StageModel"));
        };
        self.submit_caused(
            Observation::ModelStaged {
                pool_id: pool_id(pool)?,
                token,
                path: path.to_string(),
                digest,
            }
            .into(),
            Some(cause),
        )
    }

    /// The pool's pending model staging fails (missing file, digest mismatch, ...).
    pub fn fail_staging(
        &mut self,
        pool: &str,
        reason: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let (cause, effect) = self.take_pending(pool, "StageModel", |e| {
            matches!(e, Effect::StageModel { .. })
        })?;
        let Effect::StageModel { token, .. } = effect else {
            return Err(self.unexpected(pool, "StageModel"));
        };
        self.submit_caused(
            Observation::StagingFailed {
                pool_id: pool_id(pool)?,
                token,
                reason: reason.to_string(),
            }
            .into(),
            Some(cause),
        )
    }

    /// A health probe of the pool's ready engine fails with `error`.
    pub fn fail_probe(
        &mut self,
        pool: &str,
        error: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let pid = self.current_pid(pool)?;
        self.submit(Observation::ProbeFailed {
            pool_id: pool_id(pool)?,
            pid,
            error: error.to_string(),
        })
    }

    /// A health probe of the pool's ready engine succeeds (journaled only after failures).
    pub fn pass_probe(&mut self, pool: &str) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let pid = self.current_pid(pool)?;
        self.submit(Observation::ProbeSucceeded {
            pool_id: pool_id(pool)?,
            pid,
        })
    }

    /// The pid of the pool's engine process, or an error naming the pool when none runs.
    fn current_pid(&self, pool: &str) -> Result<u32, ScriptError> {
        self.state
            .pool(pool)
            .and_then(|p| p.process.as_ref())
            .map(|process| process.pid)
            .ok_or_else(|| ScriptError::NoPendingEffect {
                pool_id: pool.to_string(),
                what: "running engine",
                pending: String::new(),
            })
    }
}
