//! Supervision (SPEC section 7) through the given/when/then helper: crash, backoff, restart,
//! breaker (thresholds per class, half-open trials), storms, health, GPU faults, adoption,
//! and stale observations.

mod support;

use pool_core::*;
use support::*;

fn crashed(pool: &'static str, pid: u32, reason: ExitReason) -> Input {
    obs(Observation::EngineExited {
        pool_id: id(pool),
        pid,
        exit_code: Some(1),
        signal: None,
        reason,
        detail: "tail".into(),
    })
}

#[test]
fn crash_then_backoff_then_restart() {
    let now = T0 + 1_000;
    let h = concat(&[
        ready("p1", 100),
        vec![(
            "p1",
            Event::LeaseGranted {
                lease_id: lease("l1"),
            },
        )],
    ]);
    let o = given(&h)
        .when(crashed("p1", 100, ExitReason::Crash))
        .then_kinds(&["EngineExited", "RestartScheduled"]);
    let Event::RestartScheduled {
        attempt,
        delay_ms,
        not_before_ms,
        reason,
    } = o.facts[1].event.clone()
    else {
        panic!()
    };
    // A one-off crash restarts at once: backoff applies from the second crash.
    assert_eq!((attempt, reason, delay_ms), (1, ExitReason::Crash, 0));
    assert_eq!(not_before_ms, now);
    let s = o.status("p1");
    assert_eq!(
        (s.phase, s.ready, s.live, s.active_leases, s.crash_count),
        (Phase::Backoff, false, false, 0, 1)
    );
    assert_eq!(s.backoff_ms, delay_ms);
    let token = o.after.last_seq();
    assert!(o.has_effect(|e| *e
        == Effect::ArmTimer {
            pool_id: id("p1"),
            timer: Timer::Restart,
            token,
            at_ms: not_before_ms
        }));
    let o = o
        .and()
        .at(not_before_ms)
        .when(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::Restart,
            token,
        }))
        .then_events(&[Event::EngineStartRequested {
            engine: Box::new(engine("p1")),
            attempt: 1,
            purpose: StartPurpose::Restart,
        }]);
    assert_eq!(o.status("p1").restart_count, 1);
    assert_eq!(o.status("p1").phase, Phase::Starting);
    assert!(o.has_effect(|e| matches!(e, Effect::Spawn { attempt: 1, .. })));
}

#[test]
fn the_delay_depends_only_on_recorded_random() {
    let a = given(&ready("p1", 100))
        .with_random(1)
        .when(crashed("p1", 100, ExitReason::Crash))
        .then_ok();
    let b = given(&ready("p1", 100))
        .with_random(1)
        .when(crashed("p1", 100, ExitReason::Crash))
        .then_ok();
    assert_eq!(a.facts, b.facts);
}

/// A ready pool whose engine 100 crashed with `reason`, was restarted at once as 101 and is
/// ready again, still within the reset window.
fn restarted_once(reason: ExitReason) -> Sim {
    let mut sim = Sim::new(&ready("p1", 100));
    assert_eq!(
        sim.exit("p1", 100, reason),
        ["EngineExited", "RestartScheduled"]
    );
    sim.restart_and_spawn("p1", 101);
    sim.become_ready("p1", 101);
    sim.advance(10_000);
    sim
}

/// The delay of the `RestartScheduled` among `facts`.
fn scheduled_delay(facts: &[Fact]) -> (u32, u64) {
    facts
        .iter()
        .find_map(|f| match f.event {
            Event::RestartScheduled {
                attempt, delay_ms, ..
            } => Some((attempt, delay_ms)),
            _ => None,
        })
        .expect("a RestartScheduled")
}

#[test]
fn a_second_crash_within_the_reset_window_backs_off() {
    let mut sim = restarted_once(ExitReason::Crash);
    let facts = sim.step(crashed("p1", 101, ExitReason::Crash));
    let (attempt, delay_ms) = scheduled_delay(&facts);
    assert_eq!(attempt, 2);
    assert!((900..=1100).contains(&delay_ms), "{delay_ms}");
    assert_eq!(sim.status("p1").backoff_ms, delay_ms);
}

#[test]
fn gpu_faults_back_off_longer() {
    let mut sim = restarted_once(ExitReason::CudaError);
    let facts = sim.step(crashed("p1", 101, ExitReason::CudaError));
    let (attempt, delay_ms) = scheduled_delay(&facts);
    assert_eq!(attempt, 2);
    assert!((1800..=2200).contains(&delay_ms), "{delay_ms}");
}

#[test]
fn exit_zero_without_a_stop_request_is_graceful_and_not_restarted() {
    let o = given(&ready("p1", 100))
        .when(obs(Observation::EngineExited {
            pool_id: id("p1"),
            pid: 100,
            exit_code: Some(0),
            signal: None,
            reason: ExitReason::Unknown,
            detail: String::new(),
        }))
        .then_kinds(&["EngineExited"]);
    assert!(matches!(
        o.facts[0].event,
        Event::EngineExited {
            reason: ExitReason::Graceful,
            ..
        }
    ));
    let s = o.status("p1");
    assert_eq!((s.phase, s.crash_count), (Phase::Stopped, 0));
}

#[test]
fn exit_after_our_stop_request_is_a_stop() {
    let h = concat(&[
        ready("p1", 100),
        vec![(
            "p1",
            Event::EngineStopRequested {
                reason: StopReason::Requested,
                pid: Some(100),
                grace_ms: 5000,
            },
        )],
    ]);
    let o = given(&h)
        .when(obs(Observation::EngineExited {
            pool_id: id("p1"),
            pid: 100,
            exit_code: None,
            signal: Some(15),
            reason: ExitReason::Signal,
            detail: String::new(),
        }))
        .then_events(&[Event::EngineStopped {
            pid: 100,
            graceful: true,
        }]);
    assert_eq!(o.status("p1").crash_count, 0);
}

#[test]
fn stale_observations_are_ignored() {
    let h = ready("p1", 100);
    given(&h)
        .when(crashed("p1", 999, ExitReason::Crash))
        .then_nothing();
    given(&h)
        .when(crashed("nope", 100, ExitReason::Crash))
        .then_nothing();
    given(&h)
        .when(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::Restart,
            token: 3,
        }))
        .then_nothing();
    given(&h)
        .when(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: true,
        }))
        .then_nothing();
    given(&h)
        .when(obs(Observation::HealthPassed {
            pool_id: id("p1"),
            pid: 100,
            after_ms: 1,
            engine_version: None,
            slots_total: None,
            exe: None,
        }))
        .then_nothing();
    given(&preloaded("p1"))
        .when(obs(Observation::EngineSpawned {
            pool_id: id("p1"),
            token: 42,
            pid: 1,
            start_time: 1,
            log_path: "l".into(),
            pid_path: "p".into(),
            boot_id: Some(BOOT_ID.into()),
        }))
        .then_nothing();
    given(&spawned("p1", 100))
        .when(obs(Observation::PreloadTimedOut {
            pool_id: id("p1"),
            pid: 7,
            last_probe: String::new(),
        }))
        .then_nothing();
    given(&h)
        .when(obs(Observation::ProbeFailed {
            pool_id: id("p1"),
            pid: 7,
            error: "x".into(),
        }))
        .then_nothing();
}

#[test]
fn breaker_opens_after_the_threshold_of_consecutive_failures() {
    let mut sim = Sim::new(&ready("p1", 100));
    assert_eq!(
        sim.exit("p1", 100, ExitReason::Crash),
        ["EngineExited", "RestartScheduled"]
    );
    for n in 2..=4u32 {
        sim.restart_and_spawn("p1", 100 + n);
        assert_eq!(
            sim.exit("p1", 100 + n, ExitReason::Crash),
            ["PreloadFailed", "RestartScheduled"],
            "failure {n}"
        );
    }
    sim.restart_and_spawn("p1", 105);
    let facts = sim.step(crashed("p1", 105, ExitReason::Crash));
    assert!(
        matches!(
            facts[1].event,
            Event::CircuitOpened {
                failures: 5,
                open_ms: 300_000,
                class: FailureClass::Other,
                ..
            }
        ),
        "{facts:?}"
    );
    let s = sim.status("p1");
    assert_eq!(
        (s.phase, s.breaker, s.crash_count, s.restart_count),
        (Phase::CircuitOpen, BreakerState::Open, 5, 4)
    );
    // A CPU engine (no mask): the node of this history lists no GPU.
    let mut cpu = engine("p1");
    cpu.device_mask = None;
    let r = given_state(sim.state.clone())
        .at(sim.now_ms + 1_000)
        .when(cmd(Command::Preload {
            pool_id: id("p1"),
            engine: cpu,
            placement: Default::default(),
        }))
        .then_rejected("CIRCUIT_OPEN");
    assert!(matches!(
        r,
        Rejection::CircuitOpen {
            retry_after_ms: 299_000,
            ..
        }
    ));
}

#[test]
fn gpu_faults_are_counted_apart_and_open_the_breaker_when_interleaved() {
    let mut sim = Sim::new(&ready("p1", 100));
    let mut pid = 100;
    let reasons = [
        ExitReason::CudaError,
        ExitReason::Crash,
        ExitReason::VramOom,
        ExitReason::Signal,
        ExitReason::CudaError,
        ExitReason::Crash,
        ExitReason::DriverError,
        ExitReason::OomKilled,
    ];
    for (i, reason) in reasons.iter().enumerate() {
        if i > 0 {
            pid += 1;
            sim.restart_and_spawn("p1", pid);
        }
        let kinds = sim.exit("p1", pid, *reason);
        assert_eq!(
            kinds.last(),
            Some(&"RestartScheduled"),
            "failure {i}: {kinds:?}"
        );
    }
    // 4 GPU faults and 4 others so far; the 5th GPU fault opens it.
    pid += 1;
    sim.restart_and_spawn("p1", pid);
    let facts = sim.step(crashed("p1", pid, ExitReason::CudaError));
    assert!(
        matches!(
            facts.last().unwrap().event,
            Event::CircuitOpened {
                failures: 5,
                class: FailureClass::GpuFault,
                ..
            }
        ),
        "{facts:?}"
    );
    assert_eq!(
        sim.pool("p1").supervision.breaker.class,
        Some(FailureClass::GpuFault)
    );
}

fn open_breaker() -> Sim {
    let h = breaker_open("p1", 100);
    Sim::new(&h)
}

#[test]
fn half_open_trial_that_runs_stable_closes_the_breaker() {
    let mut sim = open_breaker();
    let token = sim.pool("p1").supervision.breaker.token;
    sim.now_ms = T0 + 300_000;
    assert_eq!(
        sim.kinds(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::HalfOpen,
            token: token + 1
        })),
        Vec::<&str>::new()
    );
    let facts = sim.step(obs(Observation::TimerFired {
        pool_id: id("p1"),
        timer: Timer::HalfOpen,
        token,
    }));
    assert_eq!(facts[0].event, Event::CircuitHalfOpened);
    assert!(matches!(
        facts[1].event,
        Event::EngineStartRequested {
            purpose: StartPurpose::Trial,
            ..
        }
    ));
    assert_eq!(sim.status("p1").breaker, BreakerState::HalfOpen);
    sim.spawn("p1", 200);
    let facts = sim.become_ready("p1", 200);
    assert!(
        matches!(facts[0].event, Event::PoolReady { breaker_close_at_ms: Some(at), .. } if at == sim.now_ms + 60_000)
    );
    let ready_token = sim.pool("p1").ready_token;
    sim.advance(60_000);
    assert_eq!(
        sim.kinds(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::BreakerClose,
            token: ready_token
        })),
        ["CircuitClosed"]
    );
    let s = sim.status("p1");
    assert_eq!((s.breaker, s.phase), (BreakerState::Closed, Phase::Ready));
    assert_eq!(sim.pool("p1").supervision.other_failures, 0);
}

#[test]
fn half_open_trial_that_fails_reopens_with_twice_the_open_time() {
    let mut sim = open_breaker();
    let token = sim.pool("p1").supervision.breaker.token;
    sim.now_ms = T0 + 300_000;
    sim.step(obs(Observation::TimerFired {
        pool_id: id("p1"),
        timer: Timer::HalfOpen,
        token,
    }));
    sim.spawn("p1", 200);
    let facts = sim.step(crashed("p1", 200, ExitReason::Crash));
    assert_eq!(facts[0].event.kind(), "PreloadFailed");
    assert!(
        matches!(
            facts[1].event,
            Event::CircuitOpened {
                open_ms: 600_000,
                ..
            }
        ),
        "{facts:?}"
    );
    assert_eq!(sim.status("p1").breaker, BreakerState::Open);
}

#[test]
fn restart_storm_opens_the_breaker_with_a_classification() {
    let mut sim = Sim::new(&ready("p1", 100));
    sim.policy.storm.max_restarts = 3;
    sim.policy.breaker.failure_threshold = 100;
    sim.policy.backoff.initial_ms = 10;
    sim.policy.backoff.min_ms = 10;
    sim.policy.backoff.max_ms = 10;
    let mut pid = 100;
    sim.exit("p1", pid, ExitReason::VramOom);
    for _ in 0..3 {
        pid += 1;
        sim.restart_and_spawn("p1", pid);
        let kinds = sim.exit("p1", pid, ExitReason::VramOom);
        assert_eq!(kinds, ["PreloadFailed", "RestartScheduled"]);
    }
    pid += 1;
    sim.restart_and_spawn("p1", pid);
    let facts = sim.step(crashed("p1", pid, ExitReason::VramOom));
    match &facts[1].event {
        Event::RestartStormDetected {
            restarts: 4,
            window_ms: 60_000,
            classification: StormClass::VramOomStorm,
            hint,
        } => {
            assert!(hint.contains("VRAM OOM"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        facts[2].event,
        Event::CircuitOpened {
            class: FailureClass::GpuFault,
            ..
        }
    ));
    assert!(sim
        .status("p1")
        .last_error
        .unwrap()
        .contains("vram_oom_storm"));
    // The window is in the state: a replay (daemon restart) sees the same storm.
    assert_eq!(sim.pool("p1").supervision.restarts.len(), 4);
}

#[test]
fn failed_probes_while_ready_stop_the_engine_as_a_hang() {
    let mut sim = Sim::new(&ready("p1", 100));
    let probe = || {
        obs(Observation::ProbeFailed {
            pool_id: id("p1"),
            pid: 100,
            error: "timeout".into(),
        })
    };
    assert_eq!(
        sim.step(probe())[0].event,
        Event::HealthCheckFailed { consecutive: 1 }
    );
    // a success after a failure resets the count (journaled once); routine ones are not
    assert_eq!(
        sim.kinds(obs(Observation::ProbeSucceeded {
            pool_id: id("p1"),
            pid: 100
        })),
        ["HealthCheckRecovered"]
    );
    assert!(sim
        .kinds(obs(Observation::ProbeSucceeded {
            pool_id: id("p1"),
            pid: 100
        }))
        .is_empty());
    sim.step(probe());
    sim.step(probe());
    let facts = sim.step(probe());
    assert_eq!(facts[0].event, Event::HealthCheckFailed { consecutive: 3 });
    assert!(matches!(
        &facts[1].event,
        Event::EngineStopRequested {
            reason: StopReason::Failure {
                reason: ExitReason::HealthTimeout,
                ..
            },
            pid: Some(100),
            ..
        }
    ));
    let s = sim.status("p1");
    assert!(!s.ready, "unready at once");
    assert_eq!(s.crash_count, 1);
    let kinds = sim.kinds(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 100,
        graceful: false,
    }));
    assert_eq!(kinds, ["EngineStopped", "RestartScheduled"]);
    assert!(matches!(
        sim.pool("p1").activity,
        Activity::Backoff {
            reason: ExitReason::HealthTimeout,
            ..
        }
    ));
}

#[test]
fn backoff_resets_after_stable_running() {
    let mut sim = Sim::new(&ready("p1", 100));
    sim.exit("p1", 100, ExitReason::Crash);
    sim.restart_and_spawn("p1", 101);
    let facts = sim.become_ready("p1", 101);
    let Event::PoolReady {
        backoff_reset_at_ms,
        ..
    } = facts[0].event
    else {
        panic!()
    };
    assert_eq!(backoff_reset_at_ms, sim.now_ms + 300_000);
    assert_eq!(sim.pool("p1").supervision.backoff_attempt, 1);
    let token = sim.pool("p1").ready_token;
    sim.now_ms = backoff_reset_at_ms;
    assert_eq!(
        sim.step(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::BackoffReset,
            token
        }))[0]
            .event,
        Event::BackoffReset {
            previous_attempt: 1
        }
    );
    assert_eq!(sim.pool("p1").supervision.backoff_attempt, 0);
    // the next crash starts from the first delay again
    let facts = sim.step(crashed("p1", 101, ExitReason::Crash));
    assert!(matches!(
        facts[1].event,
        Event::RestartScheduled { attempt: 1, .. }
    ));
}

#[test]
fn xid_on_a_gpu_of_the_mask_is_a_driver_error() {
    let mut other = engine("p2");
    other.device_mask = Some("1".into());
    let h = concat(&[
        vec![(
            "",
            Event::GpuInventoryObserved {
                gpus: vec![gpu(0, "GPU-a"), gpu(1, "GPU-b")],
            },
        )],
        ready("p1", 100),
        vec![
            (
                "p2",
                Event::PreloadRequested {
                    engine: Box::new(other),
                },
            ),
            (
                "p2",
                Event::EngineSpawned {
                    pid: 200,
                    start_time: 1,
                    log_path: "l".into(),
                    pid_path: "p".into(),
                    attempt: 0,
                    health_deadline_at_ms: T0,
                    boot_id: Some(BOOT_ID.into()),
                },
            ),
        ],
    ]);
    let o = given(&h)
        .when(obs(Observation::GpuXid {
            gpu_uuid: "GPU-a".into(),
            xid: 79,
        }))
        .then_kinds(&["GpuXidObserved", "EngineStopRequested"]);
    assert_eq!(o.facts[1].pool_id, Some(id("p1")));
    assert!(matches!(
        &o.facts[1].event,
        Event::EngineStopRequested {
            reason: StopReason::Failure {
                reason: ExitReason::DriverError,
                ..
            },
            ..
        }
    ));
    assert_eq!(o.status("p2").phase, Phase::Starting);
    let o = given(&h)
        .when(obs(Observation::GpuXid {
            gpu_uuid: "GPU-b".into(),
            xid: 48,
        }))
        .then_kinds(&["GpuXidObserved", "PreloadFailed"]);
    assert_eq!(o.facts[1].pool_id, Some(id("p2")));
    // The starting engine is killed first; the restart is scheduled once it is gone.
    assert_eq!(o.status("p2").phase, Phase::Stopping);
    o.and()
        .when(obs(Observation::EngineStopped {
            pool_id: id("p2"),
            pid: 200,
            graceful: false,
        }))
        .then_kinds(&["EngineStopped", "RestartScheduled"]);
}

#[test]
fn adoption_keeps_leases_and_a_lost_engine_is_a_crash() {
    let h = concat(&[
        ready("p1", 100),
        vec![
            (
                "p1",
                Event::LeaseGranted {
                    lease_id: lease("l1"),
                },
            ),
            (
                "",
                Event::DaemonStopped {
                    reason: "SIGTERM".into(),
                },
            ),
            (
                "",
                Event::DaemonStarted {
                    version: "0.1.0".into(),
                    pid: 1,
                },
            ),
        ],
    ]);
    let effects = resume_effects(&given(&h).state);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::VerifyEngine {
            pid: 100,
            start_time: 777,
            ..
        }
    )));
    let o = given(&h)
        .when(obs(Observation::EngineAdopted {
            pool_id: id("p1"),
            pid: 100,
        }))
        .then_events(&[Event::EngineAdopted { pid: 100 }]);
    let s = o.status("p1");
    assert_eq!((s.ready, s.active_leases, s.phase), (true, 1, Phase::Ready));
    assert!(o.has_effect(|e| matches!(e, Effect::WatchProcess { pid: 100, .. })));
    assert!(o.has_effect(|e| matches!(e, Effect::StartProbing { .. })));
    let o = given(&h)
        .when(obs(Observation::EngineLost {
            pool_id: id("p1"),
            pid: 100,
        }))
        .then_kinds(&["EngineLost", "RestartScheduled"]);
    let s = o.status("p1");
    assert_eq!((s.ready, s.active_leases, s.crash_count), (false, 0, 1));
}

#[test]
fn resume_re_arms_timers_and_spawns() {
    let mut sim = Sim::new(&concat(&[ready("p1", 100), preloaded("p2")]));
    sim.exit("p1", 100, ExitReason::Crash);
    let effects = resume_effects(&sim.state);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::ArmTimer {
            timer: Timer::Restart,
            ..
        }
    )));
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Spawn { pool_id, .. } if pool_id.as_str() == "p2")));
}

#[test]
fn device_mask_violations_are_recorded_once() {
    let mut sim = Sim::new(&ready("p1", 100));
    let v = || {
        obs(Observation::DeviceMaskViolation {
            pool_id: id("p1"),
            pid: 100,
            gpu_uuid: "GPU-z".into(),
        })
    };
    assert_eq!(sim.kinds(v()), ["DeviceMaskViolation"]);
    assert!(sim.kinds(v()).is_empty());
    assert!(sim.status("p1").last_error.unwrap().contains("GPU-z"));
}

#[test]
fn a_gpu_fault_in_the_log_of_a_ready_engine_stops_it_as_a_crash_of_that_reason() {
    let fault = |pid| {
        obs(Observation::EngineLogFault {
            pool_id: id("p1"),
            pid,
            reason: ExitReason::CudaError,
            line: "CUDA error: an illegal memory access was encountered".into(),
        })
    };
    given(&ready("p1", 100)).when(fault(7)).then_nothing();
    let mut sim = Sim::new(&ready("p1", 100));
    let facts = sim.step(fault(100));
    match &facts[0].event {
        Event::EngineStopRequested {
            reason: StopReason::Failure { reason, detail },
            pid: Some(100),
            ..
        } => {
            assert_eq!(*reason, ExitReason::CudaError);
            assert!(detail.contains("illegal memory access"), "{detail}");
        }
        other => panic!("expected a failure stop, got {other:?}"),
    }
    // A second fault line while it stops changes nothing.
    assert!(sim.step(fault(100)).is_empty());
}

#[test]
fn a_gpu_fault_in_the_log_while_starting_fails_the_start() {
    let o = given(&spawned("p1", 100))
        .when(obs(Observation::EngineLogFault {
            pool_id: id("p1"),
            pid: 100,
            reason: ExitReason::VramOom,
            line: "cudaMalloc failed: out of memory".into(),
        }))
        .then_kinds(&["PreloadFailed"]);
    match &o.facts[0].event {
        Event::PreloadFailed {
            failure,
            cause,
            pid,
            reason,
        } => {
            assert_eq!(*failure, StartFailure::GpuFault);
            assert_eq!(*cause, ExitReason::VramOom);
            assert_eq!(*pid, Some(100), "the live engine is killed");
            assert!(reason.contains("cudaMalloc failed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

fn stalled(pool: &'static str, pid: u32) -> Input {
    obs(Observation::EngineStalled {
        pool_id: id(pool),
        pid,
        detail: "slot 0 processing, 12 tokens decoded, nothing moved for 120000 ms".into(),
    })
}

fn ready_with_lease(pool: &'static str, pid: u32) -> Vec<Given> {
    concat(&[
        ready(pool, pid),
        vec![(
            pool,
            Event::LeaseGranted {
                lease_id: lease("l1"),
            },
        )],
    ])
}

#[test]
fn a_stalled_engine_with_leases_is_stopped_as_stalled_and_restarted_by_the_policy() {
    let mut sim = Sim::new(&ready_with_lease("p1", 100));
    let facts = sim.step(stalled("p1", 100));
    match &facts[0].event {
        Event::EngineStopRequested {
            reason: StopReason::Failure { reason, detail },
            pid: Some(100),
            ..
        } => {
            assert_eq!(*reason, ExitReason::Stalled);
            assert!(
                detail.contains("engine stalled: slot 0 processing"),
                "{detail}"
            );
        }
        other => panic!("expected a failure stop, got {other:?}"),
    }
    let s = sim.status("p1");
    assert_eq!((s.ready, s.crash_count, s.active_leases), (false, 1, 0));
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("engine stalled"),
        "{s:?}"
    );
    assert_eq!(
        sim.pool("p1").supervision.last_failure_reason,
        Some(ExitReason::Stalled)
    );
    // A second verdict while it stops changes nothing.
    assert!(sim.step(stalled("p1", 100)).is_empty());
    let kinds = sim.kinds(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 100,
        graceful: true,
    }));
    assert_eq!(kinds, ["EngineStopped", "RestartScheduled"]);
    assert!(matches!(
        sim.pool("p1").activity,
        Activity::Backoff {
            reason: ExitReason::Stalled,
            ..
        }
    ));
}

#[test]
fn a_stall_verdict_without_leases_or_for_another_engine_is_stale() {
    given(&ready("p1", 100))
        .when(stalled("p1", 100))
        .then_nothing();
    given(&ready_with_lease("p1", 100))
        .when(stalled("p1", 7))
        .then_nothing();
    given(&spawned("p1", 100))
        .when(stalled("p1", 100))
        .then_nothing();
}

#[test]
fn stalled_is_its_own_reason_a_hang_for_storms_and_other_for_the_breaker() {
    assert_eq!(ExitReason::Stalled.as_str(), "stalled");
    assert_eq!(ExitReason::Stalled.class(), FailureClass::Other);
    assert_eq!(StormClass::of(ExitReason::Stalled), StormClass::HangStorm);
    let mut policy = Policy::default();
    policy.backoff.reason_multiplier.stalled = 3.0;
    assert_eq!(
        policy.backoff.reason_multiplier.of(ExitReason::Stalled),
        3.0
    );
}
