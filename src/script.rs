//! A deterministic driver of the pure core that plays both the node actor and the world, with
//! no I/O: inputs go through `decide`, the facts become envelopes (seq from 1, `ts_ms` = the
//! script's clock, `cause` = the seq of the event whose effect an observation answers), each is
//! folded with `evolve`, and the effects wait until the script answers them as the world would
//! (an engine spawns, passes its health check, crashes; a timer fires).
//!
//! It produces the journals under `replay-tests/`, the data of the benchmarks and the histories
//! of the feature suite: journals that are valid by construction, never typed by hand.
//!
//! Owns: an in-memory journal (`Vec<PoolEnvelope>`), the state, a manual clock and a seeded
//! pseudo-random sequence for jitter.
//! Never: touches a process, a file, a socket or the system clock.

use pool_core::{
    decide, effects, evolve, Command, Context, Effect, ExitReason, Input, LeaseId, Observation,
    PlacementInputs, Policy, PoolId, PreparedEngine, Rejection, Stamp, State, Timer,
};
use pool_journal::{Draft, Envelope};

use crate::schema::PoolEnvelope;

/// What went wrong in a script: the core refused an input, or the script asked the world to
/// answer an effect that nobody asked for.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The core rejected the input.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// No pending effect of that kind for the pool.
    #[error("pool '{pool_id}': no pending {what} effect to answer (pending: {pending})")]
    NoPendingEffect {
        /// The pool.
        pool_id: String,
        /// The effect looked for.
        what: &'static str,
        /// The pending effects, for the message.
        pending: String,
    },
    /// An id in the script is not valid.
    #[error("invalid id in the script: {0}")]
    InvalidId(String),
}

/// The first pid a scripted engine gets; each spawn takes the next one.
const FIRST_PID: u32 = 4_000;

/// The scripted node: state, journal, clock and pending effects.
#[derive(Debug, Clone)]
pub struct Scripted {
    state: State,
    policy: Policy,
    now_ms: u64,
    random: u64,
    envelopes: Vec<PoolEnvelope>,
    /// Effects not yet answered, each with the seq of the event that asked for it.
    pending: Vec<(u64, Effect)>,
    next_pid: u32,
    /// What the shell tells a preload about placement (GPU sharing, sizes).
    placement: PlacementInputs,
}

impl Scripted {
    /// A node with an empty journal whose clock starts at `start_ms`; `seed` drives the jitter.
    pub fn new(start_ms: u64, seed: u64) -> Scripted {
        Scripted {
            state: State::default(),
            policy: Policy::default(),
            now_ms: start_ms,
            random: seed,
            envelopes: Vec::new(),
            pending: Vec::new(),
            next_pid: FIRST_PID,
            placement: PlacementInputs::default(),
        }
    }

    /// Uses `policy` for every later decision.
    pub fn with_policy(mut self, policy: Policy) -> Scripted {
        self.policy = policy;
        self
    }

    /// Gives every later preload these placement inputs (default: no GPU sharing, sizes
    /// unknown).
    pub fn with_placement(mut self, placement: PlacementInputs) -> Scripted {
        self.placement = placement;
        self
    }

    /// The registry now.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Every envelope recorded so far, oldest first.
    pub fn envelopes(&self) -> &[PoolEnvelope] {
        &self.envelopes
    }

    /// Takes the envelopes recorded so far (later ones continue the seq).
    pub fn take_envelopes(&mut self) -> Vec<PoolEnvelope> {
        std::mem::take(&mut self.envelopes)
    }

    /// The script's clock.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms = self.now_ms.saturating_add(ms);
    }

    /// The effects that wait for an answer, with the seq of the event that asked for each.
    pub fn pending(&self) -> &[(u64, Effect)] {
        &self.pending
    }

    /// Decides on `input` (a command or an observation with no cause) and records the facts.
    pub fn submit(&mut self, input: impl Into<Input>) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit_caused(input.into(), None)
    }

    fn submit_caused(
        &mut self,
        input: Input,
        cause: Option<u64>,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let ctx = Context {
            now_ms: self.now_ms,
            random: self.next_random(),
            policy: &self.policy,
        };
        let facts = decide(&self.state, &input, &ctx)?;
        let mut recorded = Vec::with_capacity(facts.len());
        for fact in facts {
            let seq = self.state.last_seq() + 1;
            let envelope: Envelope<_> = Draft {
                ts_ms: self.now_ms,
                pool_id: fact.pool_id.map(|id| id.to_string()),
                cause,
                event: fact.event,
            }
            .into_envelope(seq);
            let stamp = Stamp {
                seq,
                ts_ms: envelope.ts_ms,
                pool_id: envelope.pool_id.as_deref(),
            };
            let state = std::mem::take(&mut self.state);
            self.state = evolve(state, stamp, &envelope.event);
            for effect in effects(&self.state, stamp, &envelope.event) {
                if answerable(&effect) {
                    self.pending.push((seq, effect));
                }
            }
            recorded.push(envelope.clone());
            self.envelopes.push(envelope);
        }
        Ok(recorded)
    }

    /// A 64-bit LCG (Knuth's MMIX constants): deterministic entropy for jitter.
    fn next_random(&mut self) -> u64 {
        self.random = self
            .random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.random
    }

    /// Removes and returns the newest pending effect for `pool` that `matches`.
    fn take_pending(
        &mut self,
        pool: &str,
        what: &'static str,
        matches: impl Fn(&Effect) -> bool,
    ) -> Result<(u64, Effect), ScriptError> {
        let position = self
            .pending
            .iter()
            .rposition(|(_, effect)| effect.pool_id().as_str() == pool && matches(effect));
        match position {
            Some(index) => Ok(self.pending.remove(index)),
            None => Err(ScriptError::NoPendingEffect {
                pool_id: pool.to_string(),
                what,
                pending: format!(
                    "{:?}",
                    self.pending.iter().map(|(_, e)| e).collect::<Vec<_>>()
                ),
            }),
        }
    }

    // ---- commands -------------------------------------------------------------------------

    /// The orchestrator asks for a preload.
    pub fn preload(
        &mut self,
        pool: &str,
        engine: PreparedEngine,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::Preload {
            pool_id: pool_id(pool)?,
            engine,
            placement: self.placement,
        })
    }

    /// The orchestrator takes a lease.
    pub fn acquire_lease(
        &mut self,
        pool: &str,
        lease: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::AcquireLease {
            pool_id: pool_id(pool)?,
            lease_id: lease_id(lease)?,
        })
    }

    /// The orchestrator returns a lease.
    pub fn release_lease(
        &mut self,
        pool: &str,
        lease: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::ReleaseLease {
            pool_id: pool_id(pool)?,
            lease_id: lease_id(lease)?,
        })
    }

    /// The orchestrator asks for a drain.
    pub fn drain(
        &mut self,
        pool: &str,
        deadline_ms: u64,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::Drain {
            pool_id: pool_id(pool)?,
            deadline_ms,
        })
    }

    /// An operator resets the circuit breaker.
    pub fn reset_breaker(
        &mut self,
        pool: &str,
        by: &str,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::ResetBreaker {
            pool_id: pool_id(pool)?,
            by: by.to_string(),
        })
    }

    // ---- the world ------------------------------------------------------------------------

    /// The pool's pending spawn succeeds; returns the new engine's pid.
    pub fn spawn_engine(&mut self, pool: &str) -> Result<u32, ScriptError> {
        let (cause, effect) =
            self.take_pending(pool, "Spawn", |e| matches!(e, Effect::Spawn { .. }))?;
        let Effect::Spawn { token, .. } = effect else {
            return Err(self.unexpected(pool, "Spawn"));
        };
        let pid = self.next_pid;
        self.next_pid = self.next_pid.saturating_add(1);
        self.submit_caused(
            Observation::EngineSpawned {
                pool_id: pool_id(pool)?,
                token,
                pid,
                start_time: u64::from(pid).saturating_mul(100),
                log_path: format!(".runtime/logs/{pool}.log"),
                pid_path: format!(".runtime/pids/{pool}.pid"),
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
        self.submit_caused(
            Observation::HealthPassed {
                pool_id: pool_id(pool)?,
                pid,
                after_ms,
                engine_version: None,
                slots_total,
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
}

/// Effects that the world answers with an observation (the others need no answer in a script).
fn answerable(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::Spawn { .. }
            | Effect::StartHealthWait { .. }
            | Effect::WriteHandoff { .. }
            | Effect::StopEngine { .. }
            | Effect::ArmTimer { .. }
            | Effect::StageModel { .. }
            | Effect::VerifyEngine { .. }
    )
}

fn pool_id(pool: &str) -> Result<PoolId, ScriptError> {
    PoolId::new(pool).map_err(|e| ScriptError::InvalidId(e.to_string()))
}

fn lease_id(lease: &str) -> Result<LeaseId, ScriptError> {
    LeaseId::new(lease).map_err(|e| ScriptError::InvalidId(e.to_string()))
}

/// A prepared engine for scripts: llama.cpp's server on loopback, serving `model_path`.
pub fn sample_engine(
    pool: &str,
    port: u16,
    model_path: &str,
    slots: Option<u32>,
) -> PreparedEngine {
    PreparedEngine {
        binary_path: "/opt/llama.cpp/bin/llama-server".into(),
        flags: vec![
            "--model".into(),
            model_path.into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--parallel".into(),
            slots.unwrap_or(1).to_string(),
        ],
        host: "127.0.0.1".into(),
        port,
        model_path: model_path.into(),
        engine_version: "llamacpp-b4000".into(),
        pool_id: pool.into(),
        replica_id: "r0".into(),
        device_mask: Some("0".into()),
        engine: Some("llamacpp".into()),
        env: Default::default(),
        health_path: "/health".into(),
        slots_total: slots,
        vram_required_bytes: None,
        ram_required_bytes: None,
        tensor_split: None,
    }
}

/// More commands and answers of the world, for scripts that go beyond preload, leases, drain
/// and crashes (reloads, probes, stops, handoffs): the journals of `tests/formats.rs` and
/// `tests/replay.rs`.
impl Scripted {
    /// The orchestrator asks to stop the pool's engine (the pool stays).
    pub fn stop(&mut self, pool: &str) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::Stop {
            pool_id: pool_id(pool)?,
        })
    }

    /// The orchestrator removes the pool.
    pub fn remove(&mut self, pool: &str) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::Remove {
            pool_id: pool_id(pool)?,
        })
    }

    /// The orchestrator asks for a reload to `new_model_ref`.
    pub fn reload(
        &mut self,
        pool: &str,
        new_model_ref: &str,
        digest: Option<&str>,
        drain_deadline_ms: Option<u64>,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        self.submit(Command::Reload {
            pool_id: pool_id(pool)?,
            new_model_ref: new_model_ref.to_string(),
            digest: digest.map(str::to_string),
            drain_deadline_ms,
        })
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
