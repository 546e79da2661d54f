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
    decide, effects, evolve, Command, Context, Effect, Input, LeaseId, PlacementInputs, Policy,
    PoolId, PreparedEngine, Rejection, Stamp, State,
};
use pool_journal::{Draft, Envelope};

mod surge;
mod world;

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

/// [`sample_engine`] without a device mask: the engine of a script whose node lists no GPU
/// (a mask there names a GPU the node lacks, and the preload is refused).
pub fn cpu_engine(pool: &str, port: u16, model_path: &str, slots: Option<u32>) -> PreparedEngine {
    PreparedEngine {
        device_mask: None,
        ..sample_engine(pool, port, model_path, slots)
    }
}

/// A prepared engine for scripts: llama.cpp's server on loopback, serving `model_path`, on
/// GPU 0 (the node must list one: see [`cpu_engine`]).
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
        progress: None,
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
            strategy: pool_core::ReloadStrategyAsked::DrainFirst,
            surge_port: None,
            placement: pool_core::PlacementInputs::default(),
        })
    }
}
