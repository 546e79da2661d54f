//! A seeded simulation of the supervision policies (backoff, breaker, restart storms) over
//! random failures, through the pure core only (`decide` + `evolve` + `effects`): no journal,
//! no process, no clock but the simulation's.
//!
//! It plays the node actor and a hostile world: engines fail to spawn, exit while loading,
//! time out, crash while ready (every `ExitReason`), hang, or run stably for a while; timers
//! fire when the simulation moves its clock to them; now and then an operator resets a breaker
//! or preloads again. Each pool's newest effect of a kind replaces the older one (as the
//! shell's worker does; the core ignores stale answers anyway).
//!
//! Checked on every event: restarts per pool (`EngineStartRequested` of a restart or a
//! half-open trial) in any sliding `storm.window_ms` never exceed the bound (`max_restarts` + 1:
//! the restart that makes "more than `max_restarts`" is the last one before the storm opens
//! the breaker; an operator's breaker reset starts the window again), and no restart is
//! spawned before its `not_before_ms`. Printed: failure events, events, and events/s of decide + evolve + effects.
//!
//! `cargo bench --bench policy` runs 1,000,000 failure events; `cargo test --bench policy`
//! (CI) runs 20,000. `POOL_SIM_FAILURES=N` and `POOL_SIM_SEED=S` override.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use pool_core::{
    decide, effects, Command, Context, Effect, Event, ExitReason, Input, Observation, Policy,
    PoolId, PreparedEngine, Stamp, StartPurpose, State, Timer,
};

const POOLS: usize = 8;
const START_MS: u64 = 1_700_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Spawn,
    Health,
    Stop,
    Timer(u8),
}

fn slot_of(effect: &Effect) -> Option<Slot> {
    Some(match effect {
        Effect::Spawn { .. } => Slot::Spawn,
        Effect::StartHealthWait { .. } => Slot::Health,
        Effect::StopEngine { .. } => Slot::Stop,
        Effect::ArmTimer { timer, .. } => Slot::Timer(*timer as u8),
        _ => return None,
    })
}

struct Sim {
    state: State,
    policy: Policy,
    now_ms: u64,
    rng: u64,
    seq: u64,
    pending: BTreeMap<(usize, Slot), Effect>,
    ids: Vec<PoolId>,
    /// Per pool: `ts_ms` of its recent `RestartScheduled` events (the storm window).
    restarts: Vec<VecDeque<u64>>,
    /// Per pool: `not_before_ms` of the restart scheduled last.
    not_before: Vec<u64>,
    events: u64,
    failures: u64,
    max_in_window: usize,
    storms: u64,
    /// The world's delays are divided by this (10: a crash loop ten times faster).
    tempo: u64,
    decide_evolve_ns: u128,
}

impl Sim {
    fn new(seed: u64, policy: Policy) -> Sim {
        Sim {
            state: State::default(),
            policy,
            now_ms: START_MS,
            rng: seed,
            seq: 0,
            pending: BTreeMap::new(),
            ids: (0..POOLS)
                .map(|i| PoolId::new(&format!("p{i}")).unwrap())
                .collect(),
            restarts: vec![VecDeque::new(); POOLS],
            not_before: vec![0; POOLS],
            events: 0,
            failures: 0,
            max_in_window: 0,
            storms: 0,
            tempo: 1,
            decide_evolve_ns: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.rng >> 11
    }

    fn submit(&mut self, input: Input) {
        let started = Instant::now();
        let ctx = Context {
            now_ms: self.now_ms,
            random: self.next(),
            policy: &self.policy,
        };
        let Ok(facts) = decide(&self.state, &input, &ctx) else {
            self.decide_evolve_ns += started.elapsed().as_nanos();
            return;
        };
        let mut produced = Vec::new();
        for fact in facts {
            self.seq += 1;
            let pool = fact.pool_id.map(|id| id.to_string());
            let stamp = Stamp {
                seq: self.seq,
                ts_ms: self.now_ms,
                pool_id: pool.as_deref(),
            };
            self.state.apply_mut(stamp, &fact.event);
            let effects = effects(&self.state, stamp, &fact.event);
            produced.push((pool, fact.event, effects));
        }
        self.decide_evolve_ns += started.elapsed().as_nanos();
        for (pool, event, effects) in produced {
            self.events += 1;
            let index = pool
                .as_deref()
                .and_then(|p| p.strip_prefix('p'))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(index) = index {
                self.check(index, &event);
            }
            for effect in effects {
                if let (Some(index), Some(slot)) = (index, slot_of(&effect)) {
                    self.pending.insert((index, slot), effect);
                }
            }
        }
    }

    /// The invariants, on every event.
    fn check(&mut self, pool: usize, event: &Event) {
        match event {
            Event::RestartScheduled { not_before_ms, .. } => self.not_before[pool] = *not_before_ms,
            // An operator's reset overrides the policy (it may restart at once): the bound
            // holds for what the policy decides, so the window starts again.
            Event::CircuitReset { .. } => self.restarts[pool].clear(),
            Event::EngineStartRequested { purpose, .. }
                if matches!(purpose, StartPurpose::Restart | StartPurpose::Trial) =>
            {
                if *purpose == StartPurpose::Restart {
                    assert!(
                        self.now_ms >= self.not_before[pool],
                        "pool p{pool}: restarted at {} before its not_before_ms {}",
                        self.now_ms,
                        self.not_before[pool]
                    );
                }
                let window = &mut self.restarts[pool];
                window.push_back(self.now_ms);
                let since = self.now_ms.saturating_sub(self.policy.storm.window_ms);
                while window.front().is_some_and(|t| *t < since) {
                    window.pop_front();
                }
                let bound = self.policy.storm.max_restarts_effective() as usize + 1;
                assert!(
                    window.len() <= bound,
                    "pool p{pool}: {} restarts within {} ms (bound {bound}) at {}",
                    window.len(),
                    self.policy.storm.window_ms,
                    self.now_ms
                );
                self.max_in_window = self.max_in_window.max(window.len());
            }
            Event::EngineExited { reason, .. } if *reason != ExitReason::Graceful => {
                self.failures += 1
            }
            Event::PreloadFailed { .. } => self.failures += 1,
            Event::RestartStormDetected { .. } => self.storms += 1,
            _ => {}
        }
    }

    /// A random delay of 1..=`max_ms`, at the world's tempo.
    fn delay(&mut self, max_ms: u64) -> u64 {
        1 + self.next() % (max_ms / self.tempo).max(1)
    }

    fn take(&mut self, pool: usize, slot: Slot) -> Option<Effect> {
        self.pending.remove(&(pool, slot))
    }

    fn reason(&mut self) -> ExitReason {
        const REASONS: [ExitReason; 8] = [
            ExitReason::Crash,
            ExitReason::Signal,
            ExitReason::OomKilled,
            ExitReason::CudaError,
            ExitReason::VramOom,
            ExitReason::DriverError,
            ExitReason::Crash,
            ExitReason::Unknown,
        ];
        REASONS[(self.next() % REASONS.len() as u64) as usize]
    }

    /// One move of the world for one pool.
    fn step(&mut self, pool: usize) {
        let id = self.ids[pool].clone();
        let roll = self.next() % 1000;
        if let Some(Effect::Spawn { token, .. }) = self.take(pool, Slot::Spawn) {
            self.now_ms += self.delay(50);
            let input = if roll < 100 {
                Observation::SpawnFailed {
                    pool_id: id,
                    token,
                    reason: "ENOENT".into(),
                }
            } else {
                Observation::EngineSpawned {
                    pool_id: id,
                    token,
                    pid: 1 + (self.next() % 4_000_000) as u32,
                    start_time: self.now_ms,
                    log_path: "l".into(),
                    pid_path: "p".into(),
                    boot_id: None,
                }
            };
            return self.submit(input.into());
        }
        if let Some(Effect::StartHealthWait {
            pid,
            deadline_at_ms,
            ..
        }) = self.take(pool, Slot::Health)
        {
            let input = match roll {
                0..=99 => {
                    self.now_ms = self.now_ms.max(deadline_at_ms);
                    Observation::PreloadTimedOut {
                        pool_id: id,
                        pid,
                        last_probe: "503".into(),
                    }
                }
                100..=299 => {
                    self.now_ms += self.delay(2_000);
                    let reason = self.reason();
                    Observation::EngineExited {
                        pool_id: id,
                        pid,
                        exit_code: Some(1),
                        signal: None,
                        reason,
                        detail: "x".into(),
                    }
                }
                _ => {
                    self.now_ms += self.delay(3_000);
                    Observation::HealthPassed {
                        pool_id: id,
                        pid,
                        after_ms: 500,
                        engine_version: None,
                        slots_total: Some(4),
                        exe: None,
                    }
                }
            };
            return self.submit(input.into());
        }
        if let Some(Effect::StopEngine { pid, .. }) = self.take(pool, Slot::Stop) {
            self.now_ms += self.delay(500);
            return self.submit(
                Observation::EngineStopped {
                    pool_id: id,
                    pid,
                    graceful: roll < 800,
                }
                .into(),
            );
        }
        let pool_state = self.state.pool(id.as_str());
        let handoff_pid = pool_state.and_then(|p| {
            matches!(
                p.activity,
                pool_core::Activity::Starting {
                    health_passed: true,
                    ..
                }
            )
            .then(|| p.pid())
            .flatten()
        });
        if let Some(pid) = handoff_pid {
            return self.submit(
                Observation::HandoffWritten {
                    pool_id: id,
                    pid,
                    path: "h".into(),
                }
                .into(),
            );
        }
        let running = pool_state.filter(|p| p.serving()).and_then(|p| p.pid());
        if let Some(pid) = running {
            // A ready engine: crash soon (a crash loop), hang, or run stably for minutes.
            // (A fast world never runs stably: a crash loop.)
            self.now_ms += if roll < 700 || self.tempo > 1 {
                self.delay(5_000)
            } else {
                self.delay(600_000)
            };
            self.fire_due_timers(pool);
            let input = if roll < 900 {
                let reason = self.reason();
                Observation::EngineExited {
                    pool_id: id,
                    pid,
                    exit_code: None,
                    signal: Some(11),
                    reason,
                    detail: "x".into(),
                }
            } else {
                Observation::ProbeFailed {
                    pool_id: id,
                    pid,
                    error: "timeout".into(),
                }
            };
            return self.submit(input.into());
        }
        // Nothing in flight: a timer, an operator, or a new preload.
        let timers: Vec<(Slot, u64)> = self
            .pending
            .range((pool, Slot::Timer(0))..=(pool, Slot::Timer(u8::MAX)))
            .filter_map(|(&(_, slot), e)| match e {
                Effect::ArmTimer { at_ms, .. } => Some((slot, *at_ms)),
                _ => None,
            })
            .collect();
        if let Some(&(slot, at_ms)) = timers.iter().min_by_key(|(_, at)| *at) {
            if roll < 950 {
                self.now_ms = self.now_ms.max(at_ms);
                return self.fire(pool, slot);
            }
        }
        let command = if roll < 975 && pool_state.is_some() {
            Command::ResetBreaker {
                pool_id: id,
                by: "sim".into(),
            }
        } else {
            Command::Preload {
                pool_id: id.clone(),
                engine: engine(id.as_str()),
                placement: Default::default(),
            }
        };
        self.submit(command.into());
    }

    fn fire(&mut self, pool: usize, slot: Slot) {
        if let Some(Effect::ArmTimer { timer, token, .. }) = self.take(pool, slot) {
            self.submit(
                Observation::TimerFired {
                    pool_id: self.ids[pool].clone(),
                    timer,
                    token,
                }
                .into(),
            );
        }
    }

    /// Fires the pool's timers that are due by now (stable-run resets, breaker close).
    fn fire_due_timers(&mut self, pool: usize) {
        let due: Vec<Slot> = self
            .pending
            .range((pool, Slot::Timer(0))..=(pool, Slot::Timer(u8::MAX)))
            .filter_map(|(&(_, slot), e)| match e {
                Effect::ArmTimer { at_ms, timer, .. }
                    if *at_ms <= self.now_ms && *timer != Timer::Restart =>
                {
                    Some(slot)
                }
                _ => None,
            })
            .collect();
        for slot in due {
            self.fire(pool, slot);
        }
    }
}

fn engine(pool: &str) -> PreparedEngine {
    serde_json::from_value(serde_json::json!({
        "binary_path": "/usr/bin/llama-server", "flags": ["-m", "/m.gguf"], "host": "127.0.0.1",
        "port": 8080, "model_path": "/m.gguf", "engine_version": "b1", "pool_id": pool,
        "replica_id": "r0",
    }))
    .expect("a valid engine")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The default policy at the world's normal tempo, and one where storms, not the breaker's
/// failure count, bound the restarts: a flat 500 ms backoff, a breaker that needs 1,000 failures, a 3 s health timeout,
/// and a world forty times faster (engines crash within 125 ms of being ready).
fn policies() -> [(&'static str, Policy, u64); 2] {
    let mut storm_prone = Policy::default();
    storm_prone.backoff.factor = 1.0;
    storm_prone.backoff.initial_ms = 500;
    storm_prone.backoff.max_ms = 500;
    storm_prone.breaker.failure_threshold = 1_000;
    // Health timeouts jump the clock to their deadline: keep them short in a fast world.
    storm_prone.health.preload_timeout_ms = 3_000;
    storm_prone
        .validate()
        .expect("the storm-prone policy is valid");
    [
        ("default", Policy::default(), 1),
        ("storm-prone", storm_prone, 40),
    ]
}

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let failures = env_u64(
        "POOL_SIM_FAILURES",
        if measured { 1_000_000 } else { 20_000 },
    );
    let seed = env_u64("POOL_SIM_SEED", 42);
    for (name, policy, tempo) in policies() {
        run(name, policy, tempo, failures / 2, seed);
    }
}

fn run(name: &str, policy: Policy, tempo: u64, failures: u64, seed: u64) {
    let mut sim = Sim::new(seed, policy);
    sim.tempo = tempo;
    for pool in 0..POOLS {
        let id = sim.ids[pool].clone();
        sim.submit(
            Command::Preload {
                engine: engine(id.as_str()),
                pool_id: id,
                placement: Default::default(),
            }
            .into(),
        );
    }
    let started = Instant::now();
    let mut steps: u64 = 0;
    while sim.failures < failures {
        let pool = (sim.next() % POOLS as u64) as usize;
        sim.step(pool);
        steps += 1;
        assert!(
            steps < failures * 100,
            "the simulation stopped producing failures"
        );
    }
    let wall = started.elapsed();
    let core_s = sim.decide_evolve_ns as f64 / 1e9;
    let storms = sim.storms;
    println!(
        "{name} policy (seed {seed}, {POOLS} pools): {} failure events, {} events, {} world steps, {:.1} simulated days, {storms} storms",
        sim.failures,
        sim.events,
        steps,
        (sim.now_ms - START_MS) as f64 / 86_400_000.0
    );
    println!(
        "  restarts per {} ms window: at most {} seen (bound: max_restarts {} + 1); no restart before its not_before_ms",
        sim.policy.storm.window_ms,
        sim.max_in_window,
        sim.policy.storm.max_restarts_effective()
    );
    println!(
        "  decide + evolve + effects: {:.2} s for {} events = {:.0} events/s (whole simulation {:.2} s)",
        core_s,
        sim.events,
        sim.events as f64 / core_s,
        wall.as_secs_f64()
    );
}
