//! The one given/when/then helper for the core (cqrs-es style), plus fixtures.
//!
//! `given(&[("p1", event), ("", node_event)])` folds history (seq 1.., ts `T0`);
//! `.when(input).at(now).with_random(r)` decides; `.then_events(&[..])`,
//! `.then_nothing()` or `.then_rejected(code)` assert, and the returned [`Outcome`] gives the
//! state after the facts (invariants checked) and their effects.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pool_core::*;

/// The time the given history happened at.
pub const T0: u64 = 1_700_000_000_000;
/// A random value that gives zero jitter is not guaranteed (pool ids are mixed in); tests
/// that need exact delays compute them with `backoff_delay_ms` and the same mix.
pub const RANDOM: u64 = 42;
/// The boot id the scripted engines are spawned in.
pub const BOOT_ID: &str = "3f1c9a52-7d0e-4b8a-9c61-2e5d7f8a0b14";

pub fn pid(n: u32) -> u32 {
    n
}

pub fn id(s: &str) -> PoolId {
    PoolId::new(s).unwrap()
}

pub fn lease(s: &str) -> LeaseId {
    LeaseId::new(s).unwrap()
}

pub fn engine(pool: &str) -> PreparedEngine {
    PreparedEngine {
        binary_path: "/opt/llama/llama-server".into(),
        flags: vec![
            "-m".into(),
            "/models/a.gguf".into(),
            "--parallel".into(),
            "2".into(),
        ],
        host: "127.0.0.1".into(),
        port: 8081,
        model_path: "/models/a.gguf".into(),
        engine_version: "b1234".into(),
        pool_id: pool.into(),
        replica_id: "r0".into(),
        device_mask: Some("0".into()),
        engine: Some("llamacpp".into()),
        env: Default::default(),
        health_path: "/health".into(),
        slots_total: Some(2),
        vram_required_bytes: None,
        ram_required_bytes: None,
        tensor_split: None,
        progress: None,
    }
}

pub fn gpu(index: u32, uuid: &str) -> GpuInfo {
    GpuInfo {
        index,
        uuid: uuid.into(),
        name: "NVIDIA Test".into(),
        compute_capability: "8.6".into(),
        vram_total_bytes: 24 << 30,
        vram_free_bytes: 20 << 30,
    }
}

pub type Given = (&'static str, Event);

/// The node's GPU inventory: one GPU, index 0 (the GPU of [`engine`]'s mask).
pub fn one_gpu() -> Vec<Given> {
    vec![(
        "",
        Event::GpuInventoryObserved {
            gpus: vec![gpu(0, "GPU-a")],
        },
    )]
}

/// A pool whose preload was requested (start token = the seq of this event in the history).
pub fn preloaded(pool: &'static str) -> Vec<Given> {
    vec![(
        pool,
        Event::PreloadRequested {
            engine: Box::new(engine(pool)),
        },
    )]
}

/// A pool whose engine is spawned with `pid`.
pub fn spawned(pool: &'static str, pid: u32) -> Vec<Given> {
    let mut h = preloaded(pool);
    h.push((
        pool,
        Event::EngineSpawned {
            pid,
            start_time: 777,
            log_path: format!("/run/logs/{pool}.log"),
            pid_path: format!("/run/pids/{pool}.pid"),
            attempt: 0,
            health_deadline_at_ms: T0 + 120_000,
            boot_id: Some(BOOT_ID.into()),
        },
    ));
    h
}

/// A ready pool with `pid` and 2 slots.
pub fn ready(pool: &'static str, pid: u32) -> Vec<Given> {
    let mut h = spawned(pool, pid);
    h.push((
        pool,
        Event::HealthCheckPassed {
            after_ms: 1500,
            engine_version: "b1234".into(),
            slots_total: 2,
            exe: None,
        },
    ));
    h.push((
        pool,
        Event::PoolReady {
            handoff_path: format!("/run/engines/{pool}-r0.json"),
            backoff_reset_at_ms: T0 + 300_000,
            breaker_close_at_ms: None,
        },
    ));
    h
}

/// A ready pool whose engine `pid` crashed and whose breaker then opened (at `T0`, for
/// `open_ms` 300 000).
pub fn breaker_open(pool: &'static str, pid: u32) -> Vec<Given> {
    let mut h = ready(pool, pid);
    h.push((
        pool,
        Event::EngineExited {
            pid,
            exit_code: Some(1),
            signal: None,
            reason: ExitReason::Crash,
            detail: "x".into(),
        },
    ));
    h.push((
        pool,
        Event::CircuitOpened {
            failures: 5,
            open_ms: 300_000,
            class: FailureClass::Other,
            half_open_at_ms: T0 + 300_000,
        },
    ));
    h
}

pub fn concat(parts: &[Vec<Given>]) -> Vec<Given> {
    parts.iter().flatten().cloned().collect()
}

/// Folds facts into `state` at `ts`, checking invariants after each.
pub fn fold(mut state: State, facts: &[Fact], ts: u64) -> State {
    for fact in facts {
        let seq = state.last_seq() + 1;
        let stamp = Stamp {
            seq,
            ts_ms: ts,
            pool_id: fact.pool_id.as_ref().map(PoolId::as_str),
        };
        state = evolve(state, stamp, &fact.event);
        check_invariants(&state);
    }
    state
}

/// Registry rules that must hold after every event.
pub fn check_invariants(state: &State) {
    let statuses = state.statuses();
    let mut ids: Vec<_> = statuses.iter().map(|s| s.pool_id.clone()).collect();
    let sorted = {
        let mut v = ids.clone();
        v.sort();
        v
    };
    assert_eq!(ids, sorted, "statuses sorted by id");
    ids.dedup();
    assert_eq!(ids.len(), statuses.len());
    for s in &statuses {
        assert!(s.slots_free <= s.slots_total, "{s:?}");
        let lendable = if s.ready {
            s.slots_total.saturating_sub(s.active_leases)
        } else {
            0
        };
        assert_eq!(
            s.slots_free, lendable,
            "an unready pool lends nothing: {s:?}"
        );
        assert!(s.active_leases <= SLOTS_MAX);
        if s.phase == Phase::Ready {
            assert!(s.ready, "phase ready implies ready: {s:?}");
        }
        if s.ready {
            assert!(
                matches!(s.phase, Phase::Ready | Phase::Draining | Phase::Reloading),
                "{s:?}"
            );
        }
        if s.draining {
            assert!(
                matches!(s.phase, Phase::Draining | Phase::Reloading),
                "{s:?}"
            );
        }
        assert!(s.last_seq <= state.last_seq());
    }
}

pub fn given(history: &[Given]) -> Scenario {
    let mut state = State::default();
    for (pool, event) in history {
        let seq = state.last_seq() + 1;
        let stamp = Stamp {
            seq,
            ts_ms: T0,
            pool_id: if pool.is_empty() { None } else { Some(pool) },
        };
        state = evolve(state, stamp, event);
    }
    assert_eq!(state.anomalies, 0, "the given history must be coherent");
    check_invariants(&state);
    Scenario {
        state,
        input: None,
        now_ms: T0 + 1_000,
        random: RANDOM,
        policy: Policy::default(),
    }
}

pub fn given_state(state: State) -> Scenario {
    Scenario {
        state,
        input: None,
        now_ms: T0 + 1_000,
        random: RANDOM,
        policy: Policy::default(),
    }
}

pub struct Scenario {
    pub state: State,
    pub input: Option<Input>,
    pub now_ms: u64,
    pub random: u64,
    pub policy: Policy,
}

pub struct Outcome {
    pub before: State,
    pub facts: Vec<Fact>,
    pub after: State,
    pub effects: Vec<Effect>,
    pub now_ms: u64,
}

impl Scenario {
    pub fn when(mut self, input: impl Into<Input>) -> Self {
        self.input = Some(input.into());
        self
    }

    pub fn at(mut self, now_ms: u64) -> Self {
        self.now_ms = now_ms;
        self
    }

    pub fn with_random(mut self, random: u64) -> Self {
        self.random = random;
        self
    }

    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn decide(&self) -> Result<Vec<Fact>, Rejection> {
        let ctx = Context {
            now_ms: self.now_ms,
            random: self.random,
            policy: &self.policy,
        };
        let input = self.input.as_ref().expect("when(..) first");
        decide(&self.state, input, &ctx)
    }

    /// Accepts whatever facts come, folds them and returns the outcome.
    pub fn then_ok(self) -> Outcome {
        let facts = match self.decide() {
            Ok(facts) => facts,
            Err(rejection) => panic!(
                "expected facts, got rejection {}: {rejection}",
                rejection.code()
            ),
        };
        let mut after = self.state.clone();
        let mut effects = Vec::new();
        for fact in &facts {
            let seq = after.last_seq() + 1;
            let stamp = Stamp {
                seq,
                ts_ms: self.now_ms,
                pool_id: fact.pool_id.as_ref().map(PoolId::as_str),
            };
            after = evolve(after, stamp, &fact.event);
            assert_eq!(
                after.anomalies, self.state.anomalies,
                "decide emitted an inapplicable {:?}",
                fact.event
            );
            check_invariants(&after);
            effects.extend(pool_core::effects(&after, stamp, &fact.event));
        }
        Outcome {
            before: self.state,
            facts,
            after,
            effects,
            now_ms: self.now_ms,
        }
    }

    pub fn then_events(self, expected: &[Event]) -> Outcome {
        let outcome = self.then_ok();
        let got: Vec<&Event> = outcome.facts.iter().map(|f| &f.event).collect();
        let want: Vec<&Event> = expected.iter().collect();
        assert_eq!(got, want, "events");
        outcome
    }

    /// The events' kinds only (for long batches whose fields other tests check).
    pub fn then_kinds(self, expected: &[&str]) -> Outcome {
        let outcome = self.then_ok();
        let got: Vec<&str> = outcome.facts.iter().map(|f| f.event.kind()).collect();
        assert_eq!(got, expected, "event kinds");
        outcome
    }

    pub fn then_nothing(self) -> Outcome {
        self.then_events(&[])
    }

    pub fn then_rejected(self, code: &str) -> Rejection {
        match self.decide() {
            Err(rejection) => {
                assert_eq!(rejection.code().as_str(), code, "{rejection}");
                rejection
            }
            Ok(facts) => panic!("expected {code}, got {facts:?}"),
        }
    }
}

impl Outcome {
    pub fn status(&self, pool: &str) -> PoolStatus {
        self.after.status(pool).expect("pool exists")
    }

    pub fn pool(&self, pool: &str) -> &Pool {
        self.after.pool(pool).expect("pool exists")
    }

    /// Goes on from the state after this outcome.
    pub fn and(self) -> Scenario {
        Scenario {
            state: self.after,
            input: None,
            now_ms: self.now_ms,
            random: RANDOM,
            policy: Policy::default(),
        }
    }

    pub fn has_effect(&self, pred: impl Fn(&Effect) -> bool) -> bool {
        self.effects.iter().any(pred)
    }
}

// Input shorthands.
pub fn cmd(c: Command) -> Input {
    Input::Command(c)
}

pub fn obs(o: Observation) -> Input {
    Input::Observation(o)
}

/// A multi-step driver: decide, fold, advance time.
pub struct Sim {
    pub state: State,
    pub now_ms: u64,
    pub random: u64,
    pub policy: Policy,
}

impl Sim {
    pub fn new(history: &[Given]) -> Sim {
        Sim {
            state: given(history).state,
            now_ms: T0 + 1_000,
            random: RANDOM,
            policy: Policy::default(),
        }
    }

    pub fn step(&mut self, input: impl Into<Input>) -> Vec<Fact> {
        let outcome = given_state(self.state.clone())
            .with_policy(self.policy.clone())
            .with_random(self.random)
            .at(self.now_ms)
            .when(input)
            .then_ok();
        self.state = outcome.after;
        self.random = self
            .random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        outcome.facts
    }

    pub fn kinds(&mut self, input: impl Into<Input>) -> Vec<&'static str> {
        self.step(input).iter().map(|f| f.event.kind()).collect()
    }

    pub fn pool(&self, pool: &str) -> &Pool {
        self.state.pool(pool).unwrap()
    }

    pub fn status(&self, pool: &str) -> PoolStatus {
        self.state.status(pool).unwrap()
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// From backoff: fire the restart timer at its time, then spawn `pid`.
    pub fn restart_and_spawn(&mut self, pool: &str, pid: u32) {
        let (token, at) = match self.pool(pool).activity {
            Activity::Backoff {
                token,
                not_before_ms,
                ..
            } => (token, not_before_ms),
            ref other => panic!("not in backoff: {other:?}"),
        };
        self.now_ms = self.now_ms.max(at);
        let facts = self.step(obs(Observation::TimerFired {
            pool_id: id(pool),
            timer: Timer::Restart,
            token,
        }));
        assert_eq!(facts.len(), 1, "{facts:?}");
        self.spawn(pool, pid);
    }

    pub fn spawn(&mut self, pool: &str, pid: u32) {
        let token = self.pool(pool).start_token;
        let facts = self.step(obs(Observation::EngineSpawned {
            pool_id: id(pool),
            token,
            pid,
            start_time: 1000 + u64::from(pid),
            log_path: format!("/run/logs/{pool}.log"),
            pid_path: format!("/run/pids/{pool}.pid"),
            boot_id: Some(BOOT_ID.into()),
        }));
        assert_eq!(facts.len(), 1, "{facts:?}");
    }

    /// Health + handoff for the spawned engine `pid`.
    pub fn become_ready(&mut self, pool: &str, pid: u32) -> Vec<Fact> {
        let f = self.step(obs(Observation::HealthPassed {
            pool_id: id(pool),
            pid,
            after_ms: 100,
            engine_version: None,
            slots_total: None,
            exe: None,
        }));
        assert_eq!(f.len(), 1, "{f:?}");
        self.step(obs(Observation::HandoffWritten {
            pool_id: id(pool),
            pid,
            path: format!("/run/engines/{pool}-r0.json"),
        }))
    }

    pub fn exit(&mut self, pool: &str, pid: u32, reason: ExitReason) -> Vec<&'static str> {
        self.kinds(obs(Observation::EngineExited {
            pool_id: id(pool),
            pid,
            exit_code: Some(1),
            signal: None,
            reason,
            detail: "log tail".into(),
        }))
    }
}
