//! Every command's accepted and rejected cases, through the given/when/then helper.

mod support;

use pool_core::*;
use support::*;

fn preload(pool: &str) -> Input {
    cmd(Command::Preload {
        pool_id: id(pool),
        engine: engine(pool),
        placement: Default::default(),
    })
}

// ---- preload ----

#[test]
fn preload_of_a_new_pool_requests_a_spawn() {
    let o = given(&one_gpu())
        .when(preload("p1"))
        .then_events(&[Event::PreloadRequested {
            engine: Box::new(engine("p1")),
        }]);
    let s = o.status("p1");
    assert_eq!(s.phase, Phase::Starting);
    assert!(!s.live && !s.ready);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::Spawn {
            token: 2,
            attempt: 0,
            ..
        }
    )));
}

#[test]
fn preload_walks_spawn_health_handoff_to_ready() {
    let now = T0 + 1_000;
    let o = given(&preloaded("p1"))
        .when(obs(Observation::EngineSpawned {
            pool_id: id("p1"),
            token: 1,
            pid: 100,
            start_time: 5,
            log_path: "/l".into(),
            pid_path: "/p".into(),
            boot_id: Some(BOOT_ID.into()),
        }))
        .then_events(&[Event::EngineSpawned {
            pid: 100,
            start_time: 5,
            log_path: "/l".into(),
            pid_path: "/p".into(),
            attempt: 0,
            health_deadline_at_ms: now + 120_000,
            boot_id: Some(BOOT_ID.into()),
        }]);
    assert!(o.status("p1").live);
    assert!(!o.status("p1").ready);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::StartHealthWait {
            pid: 100,
            token: 1,
            ..
        }
    )));

    let o = o
        .and()
        .when(obs(Observation::HealthPassed {
            pool_id: id("p1"),
            pid: 100,
            after_ms: 1500,
            engine_version: Some("b9999".into()),
            slots_total: Some(8),
            exe: None,
        }))
        .then_events(&[Event::HealthCheckPassed {
            after_ms: 1500,
            engine_version: "b9999".into(),
            slots_total: 2,
            exe: None,
        }]);
    assert!(o.has_effect(|e| matches!(e, Effect::WriteHandoff { handoff, .. } if handoff.slots_total == 2 && handoff.pid == Some(100))));
    assert!(
        !o.status("p1").ready,
        "never ready before the handoff is written"
    );

    let o = o
        .and()
        .when(obs(Observation::HandoffWritten {
            pool_id: id("p1"),
            pid: 100,
            path: "/run/engines/p1-r0.json".into(),
        }))
        .then_events(&[Event::PoolReady {
            handoff_path: "/run/engines/p1-r0.json".into(),
            backoff_reset_at_ms: now + 300_000,
            breaker_close_at_ms: None,
        }]);
    let s = o.status("p1");
    assert_eq!(s.phase, Phase::Ready);
    assert!(s.ready && s.live);
    assert_eq!((s.slots_total, s.slots_free, s.active_leases), (2, 2, 0));
    assert_eq!(s.engine_version.as_deref(), Some("b9999"));
    assert_eq!(s.last_heartbeat_ms, Some(now));
    assert!(o.has_effect(|e| matches!(e, Effect::StartProbing { pid: Some(100), .. })));
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::ArmTimer {
            timer: Timer::BackoffReset,
            ..
        }
    )));
}

#[test]
fn preload_while_starting_is_busy() {
    given(&concat(&[spawned("p1", 100), one_gpu()]))
        .when(preload("p1"))
        .then_rejected("POOL_BUSY");
}

#[test]
fn preload_of_a_ready_pool_with_the_same_engine_is_a_no_op() {
    given(&concat(&[ready("p1", 100), one_gpu()]))
        .when(preload("p1"))
        .then_nothing();
}

#[test]
fn preload_of_a_ready_pool_with_another_engine_is_busy() {
    let mut other = engine("p1");
    other.port = 9999;
    given(&concat(&[ready("p1", 100), one_gpu()]))
        .when(cmd(Command::Preload {
            pool_id: id("p1"),
            engine: other,
            placement: Default::default(),
        }))
        .then_rejected("POOL_BUSY");
}

#[test]
fn preload_without_a_usable_gpu_is_refused() {
    let r = given(&[(
        "",
        Event::PreflightFailed {
            reason: "no NVIDIA driver".into(),
        },
    )])
    .when(preload("p1"))
    .then_rejected("GPU_REQUIRED");
    assert!(r.to_string().contains("no NVIDIA driver"));
    // an inventory with GPUs lifts it
    given(&[
        (
            "",
            Event::PreflightFailed {
                reason: "no NVIDIA driver".into(),
            },
        ),
        (
            "",
            Event::GpuInventoryObserved {
                gpus: vec![gpu(0, "GPU-a")],
            },
        ),
    ])
    .when(preload("p1"))
    .then_kinds(&["PreloadRequested"]);
}

#[test]
fn preload_with_a_mask_outside_the_inventory_is_refused() {
    let mut e = engine("p1");
    e.device_mask = Some("0,3".into());
    given(&[(
        "",
        Event::GpuInventoryObserved {
            gpus: vec![gpu(0, "GPU-a")],
        },
    )])
    .when(cmd(Command::Preload {
        pool_id: id("p1"),
        engine: e,
        placement: Default::default(),
    }))
    .then_rejected("INVALID_DEVICE_MASK");
}

#[test]
fn preload_with_invalid_fields_is_an_invalid_request() {
    let mut e = engine("p2");
    given(&[])
        .when(cmd(Command::Preload {
            pool_id: id("p1"),
            engine: e.clone(),
            placement: Default::default(),
        }))
        .then_rejected("INVALID_REQUEST");
    e.pool_id = "p1".into();
    e.port = 0;
    given(&[])
        .when(cmd(Command::Preload {
            pool_id: id("p1"),
            engine: e,
            placement: Default::default(),
        }))
        .then_rejected("INVALID_REQUEST");
}

#[test]
fn preload_timeout_fails_kills_and_schedules_a_restart() {
    let o = given(&spawned("p1", 100))
        .when(obs(Observation::PreloadTimedOut {
            pool_id: id("p1"),
            pid: 100,
            last_probe: "503 loading".into(),
        }))
        .then_kinds(&["PreloadFailed"]);
    match &o.facts[0].event {
        Event::PreloadFailed {
            failure,
            cause,
            pid,
            ..
        } => {
            assert_eq!(*failure, StartFailure::HealthTimeout);
            assert_eq!(*cause, ExitReason::HealthTimeout);
            assert_eq!(*pid, Some(100));
        }
        other => panic!("{other:?}"),
    }
    // The hung engine is killed first: unready, still live until it is reaped, and no restart
    // is scheduled while it may still hold its port and GPU memory.
    let s = o.status("p1");
    assert_eq!(s.phase, Phase::Stopping);
    assert!(!s.ready && s.live);
    assert!(s.last_error.unwrap().contains("no healthy answer"));
    assert_eq!(s.crash_count, 1);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::StopEngine {
            pid: 100,
            grace_ms: 0,
            ..
        }
    )));
    assert!(!o.has_effect(|e| matches!(e, Effect::ArmTimer { .. })));

    // Once it is gone, the restart policy answers (the failure is not counted twice).
    let o = o
        .and()
        .when(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: false,
        }))
        .then_kinds(&["EngineStopped", "RestartScheduled"]);
    let s = o.status("p1");
    assert_eq!(s.phase, Phase::Backoff);
    assert!(!s.ready && !s.live);
    assert_eq!(s.crash_count, 1);
    assert!(o.has_effect(|e| matches!(e, Effect::RemovePidFile { .. })));
    assert!(o.has_effect(|e| matches!(e, Effect::ArmTimer { .. })));
}

#[test]
fn engine_exit_during_preload_fails_with_the_log_tail() {
    let o = given(&spawned("p1", 100))
        .when(obs(Observation::EngineExited {
            pool_id: id("p1"),
            pid: 100,
            exit_code: Some(1),
            signal: None,
            reason: ExitReason::CudaError,
            detail: "CUDA error: out of resources".into(),
        }))
        .then_kinds(&["PreloadFailed", "RestartScheduled"]);
    match &o.facts[0].event {
        Event::PreloadFailed {
            failure,
            cause,
            pid,
            reason,
        } => {
            assert_eq!(failure.code().as_str(), "ENGINE_EXITED");
            assert_eq!(*cause, ExitReason::CudaError);
            assert_eq!(*pid, None);
            assert!(reason.contains("CUDA error: out of resources"));
        }
        other => panic!("{other:?}"),
    }
    assert!(o.status("p1").last_error.unwrap().contains("CUDA error"));
}

#[test]
fn spawn_failure_fails_the_preload() {
    given(&preloaded("p1"))
        .when(obs(Observation::SpawnFailed {
            pool_id: id("p1"),
            token: 1,
            reason: "ENOENT".into(),
        }))
        .then_kinds(&["PreloadFailed", "RestartScheduled"]);
}

// ---- leases ----

#[test]
fn lease_granted_on_a_ready_pool() {
    let o = given(&ready("p1", 100))
        .when(cmd(Command::AcquireLease {
            pool_id: id("p1"),
            lease_id: lease("l1"),
        }))
        .then_events(&[Event::LeaseGranted {
            lease_id: lease("l1"),
        }]);
    let s = o.status("p1");
    assert_eq!((s.active_leases, s.slots_free), (1, 1));
}

#[test]
fn lease_refused_when_slots_are_exhausted() {
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
                "p1",
                Event::LeaseGranted {
                    lease_id: lease("l2"),
                },
            ),
        ],
    ]);
    given(&h)
        .when(cmd(Command::AcquireLease {
            pool_id: id("p1"),
            lease_id: lease("l3"),
        }))
        .then_rejected("SLOTS_EXHAUSTED");
}

#[test]
fn lease_refused_on_unknown_draining_and_unready_pools() {
    given(&[])
        .when(cmd(Command::AcquireLease {
            pool_id: id("nope"),
            lease_id: lease("l1"),
        }))
        .then_rejected("POOL_NOT_FOUND");
    assert_eq!(State::default().active_leases("nope"), 0);
    let draining = concat(&[
        ready("p1", 100),
        vec![
            (
                "p1",
                Event::LeaseGranted {
                    lease_id: lease("l1"),
                },
            ),
            (
                "p1",
                Event::DrainRequested {
                    deadline_ms: 10_000,
                    deadline_at_ms: T0 + 10_000,
                },
            ),
        ],
    ]);
    given(&draining)
        .when(cmd(Command::AcquireLease {
            pool_id: id("p1"),
            lease_id: lease("l2"),
        }))
        .then_rejected("POOL_DRAINING");
    given(&spawned("p1", 100))
        .when(cmd(Command::AcquireLease {
            pool_id: id("p1"),
            lease_id: lease("l2"),
        }))
        .then_rejected("POOL_UNREADY");
}

#[test]
fn lease_release_and_unknown_lease() {
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
        .when(cmd(Command::ReleaseLease {
            pool_id: id("p1"),
            lease_id: lease("l1"),
        }))
        .then_events(&[Event::LeaseReleased {
            lease_id: lease("l1"),
        }]);
    assert_eq!(o.status("p1").active_leases, 0);
    given(&h)
        .when(cmd(Command::ReleaseLease {
            pool_id: id("p1"),
            lease_id: lease("zz"),
        }))
        .then_rejected("LEASE_NOT_FOUND");
    given(&h)
        .when(cmd(Command::ReleaseLease {
            pool_id: id("p9"),
            lease_id: lease("l1"),
        }))
        .then_rejected("POOL_NOT_FOUND");
}

// ---- drain ----

#[test]
fn drain_without_leases_stops_at_once() {
    let now = T0 + 1_000;
    let o = given(&ready("p1", 100))
        .when(cmd(Command::Drain {
            pool_id: id("p1"),
            deadline_ms: 30_000,
        }))
        .then_events(&[
            Event::DrainRequested {
                deadline_ms: 30_000,
                deadline_at_ms: now + 30_000,
            },
            Event::EngineStopRequested {
                reason: StopReason::Drained,
                pid: Some(100),
                grace_ms: 5_000,
            },
        ]);
    assert!(!o.status("p1").ready, "unready once the stop is requested");
    assert!(o.status("p1").draining);
    let o = o
        .and()
        .at(now + 2_000)
        .when(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: true,
        }))
        .then_events(&[
            Event::EngineStopped {
                pid: 100,
                graceful: true,
            },
            Event::DrainCompleted {
                outcome: DrainOutcome::Graceful,
                duration_ms: 2_000,
                leases_at_stop: 0,
            },
        ]);
    let s = o.status("p1");
    assert_eq!(s.phase, Phase::Stopped);
    assert!(!s.draining && !s.ready && !s.live);
}

#[test]
fn drain_with_leases_waits_for_the_last_release() {
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
        .when(cmd(Command::Drain {
            pool_id: id("p1"),
            deadline_ms: 30_000,
        }))
        .then_kinds(&["DrainRequested"]);
    assert_eq!(o.status("p1").phase, Phase::Draining);
    assert!(o.status("p1").ready);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::ArmTimer {
            timer: Timer::DrainDeadline,
            ..
        }
    )));
    o.and()
        .when(cmd(Command::ReleaseLease {
            pool_id: id("p1"),
            lease_id: lease("l1"),
        }))
        .then_events(&[
            Event::LeaseReleased {
                lease_id: lease("l1"),
            },
            Event::EngineStopRequested {
                reason: StopReason::Drained,
                pid: Some(100),
                grace_ms: 5_000,
            },
        ]);
}

#[test]
fn drain_deadline_force_stops() {
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
                "p1",
                Event::DrainRequested {
                    deadline_ms: 10_000,
                    deadline_at_ms: T0 + 10_000,
                },
            ),
        ],
    ]);
    let token = 6; // seq of DrainRequested
    given(&h)
        .when(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::DrainDeadline,
            token: 99,
        }))
        .then_nothing();
    let o = given(&h)
        .at(T0 + 10_000)
        .when(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::DrainDeadline,
            token,
        }))
        .then_events(&[Event::EngineStopRequested {
            reason: StopReason::DrainDeadline,
            pid: Some(100),
            grace_ms: 5_000,
        }]);
    o.and()
        .at(T0 + 15_000)
        .when(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: false,
        }))
        .then_events(&[
            Event::EngineStopped {
                pid: 100,
                graceful: false,
            },
            Event::DrainCompleted {
                outcome: DrainOutcome::ForceStopped,
                duration_ms: 15_000,
                leases_at_stop: 1,
            },
        ]);
}

#[test]
fn drain_of_unknown_and_stopped_pools() {
    given(&[])
        .when(cmd(Command::Drain {
            pool_id: id("p1"),
            deadline_ms: 1,
        }))
        .then_rejected("POOL_NOT_FOUND");
    let stopped = concat(&[
        ready("p1", 100),
        vec![
            (
                "p1",
                Event::EngineStopRequested {
                    reason: StopReason::Requested,
                    pid: Some(100),
                    grace_ms: 5000,
                },
            ),
            (
                "p1",
                Event::EngineStopped {
                    pid: 100,
                    graceful: true,
                },
            ),
        ],
    ]);
    given(&stopped)
        .when(cmd(Command::Drain {
            pool_id: id("p1"),
            deadline_ms: 1,
        }))
        .then_nothing();
}

// ---- stop / remove ----

#[test]
fn stop_then_stopped() {
    let o = given(&ready("p1", 100))
        .when(cmd(Command::Stop { pool_id: id("p1") }))
        .then_events(&[Event::EngineStopRequested {
            reason: StopReason::Requested,
            pid: Some(100),
            grace_ms: 5_000,
        }]);
    assert_eq!(o.status("p1").phase, Phase::Stopping);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::StopEngine {
            pid: 100,
            grace_ms: 5_000,
            ..
        }
    )));
    let o = o
        .and()
        .when(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: true,
        }))
        .then_events(&[Event::EngineStopped {
            pid: 100,
            graceful: true,
        }]);
    assert_eq!(o.status("p1").phase, Phase::Stopped);
    assert_eq!(o.status("p1").crash_count, 0);
    o.and()
        .when(cmd(Command::Stop { pool_id: id("p1") }))
        .then_nothing();
    given(&[])
        .when(cmd(Command::Stop { pool_id: id("p1") }))
        .then_rejected("POOL_NOT_FOUND");
    given(&preloaded("p1"))
        .when(cmd(Command::Stop { pool_id: id("p1") }))
        .then_rejected("POOL_BUSY");
}

#[test]
fn remove_stops_then_forgets() {
    let o = given(&ready("p1", 100))
        .when(cmd(Command::Remove { pool_id: id("p1") }))
        .then_kinds(&["EngineStopRequested"]);
    let o = o
        .and()
        .when(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: true,
        }))
        .then_events(&[
            Event::EngineStopped {
                pid: 100,
                graceful: true,
            },
            Event::PoolRemoved,
        ]);
    assert!(o.after.pool("p1").is_none());
    assert!(o.after.statuses().is_empty());
    assert!(o.has_effect(|e| matches!(e, Effect::RemovePoolFiles { .. })));
    given(&[])
        .when(cmd(Command::Remove { pool_id: id("p1") }))
        .then_rejected("POOL_NOT_FOUND");
}

#[test]
fn remove_of_a_pool_without_engine_is_immediate() {
    let h = concat(&[
        spawned("p1", 100),
        vec![(
            "p1",
            Event::PreloadFailed {
                reason: "x".into(),
                failure: StartFailure::HealthTimeout,
                cause: ExitReason::HealthTimeout,
                pid: None,
            },
        )],
    ]);
    given(&h)
        .when(cmd(Command::Remove { pool_id: id("p1") }))
        .then_events(&[Event::PoolRemoved]);
}

// ---- breaker reset ----

#[test]
fn breaker_reset_closes_and_restarts() {
    let h = breaker_open("p1", 100);
    let s = given(&h).state.status("p1").unwrap();
    assert_eq!(
        (s.phase, s.breaker),
        (Phase::CircuitOpen, BreakerState::Open)
    );
    given(&concat(&[h.clone(), one_gpu()]))
        .when(preload("p1"))
        .then_rejected("CIRCUIT_OPEN");
    let o = given(&h)
        .when(cmd(Command::ResetBreaker {
            pool_id: id("p1"),
            by: "alice".into(),
        }))
        .then_events(&[
            Event::CircuitReset { by: "alice".into() },
            Event::EngineStartRequested {
                engine: Box::new(engine("p1")),
                attempt: 1,
                purpose: StartPurpose::Restart,
            },
        ]);
    assert_eq!(o.status("p1").breaker, BreakerState::Closed);
    assert_eq!(o.status("p1").phase, Phase::Starting);
    given(&ready("p1", 100))
        .when(cmd(Command::ResetBreaker {
            pool_id: id("p1"),
            by: "a".into(),
        }))
        .then_nothing();
    given(&[])
        .when(cmd(Command::ResetBreaker {
            pool_id: id("p1"),
            by: "a".into(),
        }))
        .then_rejected("POOL_NOT_FOUND");
}

// ---- reload ----

fn reload_cmd(model: &str) -> Input {
    cmd(Command::Reload {
        pool_id: id("p1"),
        new_model_ref: model.into(),
        digest: None,
        drain_deadline_ms: Some(30_000),
        strategy: pool_core::ReloadStrategyAsked::DrainFirst,
        surge_port: None,
        placement: Default::default(),
    })
}

#[test]
fn reload_to_the_current_model_is_a_no_op() {
    given(&ready("p1", 100))
        .when(reload_cmd("/models/a.gguf"))
        .then_nothing();
    given(&ready("p1", 100))
        .when(reload_cmd("file:/models/a.gguf"))
        .then_nothing();
}

#[test]
fn reload_rejections() {
    given(&[])
        .when(reload_cmd("/m/b.gguf"))
        .then_rejected("POOL_NOT_FOUND");
    given(&spawned("p1", 100))
        .when(reload_cmd("/m/b.gguf"))
        .then_rejected("POOL_BUSY");
    given(&ready("p1", 100))
        .when(cmd(Command::Reload {
            pool_id: id("p1"),
            new_model_ref: "/m/b".into(),
            digest: Some("md5:x".into()),
            drain_deadline_ms: None,
            strategy: pool_core::ReloadStrategyAsked::DrainFirst,
            surge_port: None,
            placement: Default::default(),
        }))
        .then_rejected("INVALID_REQUEST");
}

#[test]
fn reload_stages_drains_swaps_and_succeeds() {
    let mut sim = Sim::new(&ready("p1", 100));
    let facts = sim.step(reload_cmd("/models/b.gguf"));
    assert_eq!(
        facts[0].event,
        Event::ReloadRequested {
            new_model_ref: "/models/b.gguf".into(),
            digest: None,
            drain_deadline_ms: 30_000
        }
    );
    assert_eq!(sim.status("p1").phase, Phase::Reloading);
    assert!(
        sim.status("p1").ready,
        "the old engine serves while the model is staged"
    );
    let token = sim.pool("p1").reload.as_ref().unwrap().token;
    let kinds = sim.kinds(obs(Observation::ModelStaged {
        pool_id: id("p1"),
        token,
        path: "/models/b.gguf".into(),
        digest: None,
    }));
    assert_eq!(
        kinds,
        ["ModelStaged", "DrainRequested", "EngineStopRequested"]
    );
    sim.advance(1_000);
    let facts = sim.step(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 100,
        graceful: true,
    }));
    let kinds: Vec<_> = facts.iter().map(|f| f.event.kind()).collect();
    assert_eq!(
        kinds,
        ["EngineStopped", "DrainCompleted", "EngineStartRequested"]
    );
    match &facts[2].event {
        Event::EngineStartRequested {
            engine: e,
            purpose: StartPurpose::Reload,
            ..
        } => {
            assert_eq!(e.model_path, "/models/b.gguf");
            assert_eq!(e.flags[1], "/models/b.gguf", "equal flags replaced");
            assert_eq!(e.device_mask.as_deref(), Some("0"));
            assert_eq!(e.replica_id, "r0");
            assert_eq!(e.pool_id, "p1");
        }
        other => panic!("{other:?}"),
    }
    sim.spawn("p1", 200);
    sim.advance(1_000);
    let facts = sim.become_ready("p1", 200);
    assert_eq!(
        facts[1].event,
        Event::ReloadSucceeded {
            old: "/models/a.gguf".into(),
            new: "/models/b.gguf".into(),
            duration_ms: 2_000
        }
    );
    let s = sim.status("p1");
    assert_eq!(s.phase, Phase::Ready);
    assert_eq!(s.model_ref.as_deref(), Some("/models/b.gguf"));
    assert_eq!(s.pid, Some(200));
    assert_eq!(s.device_mask.as_deref(), Some("0"));
}

#[test]
fn reload_staging_failure_touches_nothing() {
    let mut sim = Sim::new(&ready("p1", 100));
    sim.step(reload_cmd("/models/b.gguf"));
    let token = sim.pool("p1").reload.as_ref().unwrap().token;
    let facts = sim.step(obs(Observation::StagingFailed {
        pool_id: id("p1"),
        token,
        reason: "no such file".into(),
    }));
    assert!(matches!(
        &facts[..],
        [Fact {
            event: Event::ReloadFailed {
                stage: ReloadStage::Staging,
                rolling_back: false,
                ..
            },
            ..
        }]
    ));
    let s = sim.status("p1");
    assert_eq!((s.phase, s.ready, s.pid), (Phase::Ready, true, Some(100)));
    assert_eq!(s.model_ref.as_deref(), Some("/models/a.gguf"));
}

#[test]
fn reload_failure_of_the_new_engine_rolls_back() {
    let mut sim = Sim::new(&ready("p1", 100));
    sim.step(reload_cmd("/models/b.gguf"));
    let token = sim.pool("p1").reload.as_ref().unwrap().token;
    sim.step(obs(Observation::ModelStaged {
        pool_id: id("p1"),
        token,
        path: "/models/b.gguf".into(),
        digest: None,
    }));
    sim.step(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 100,
        graceful: true,
    }));
    sim.spawn("p1", 200);
    let facts = sim.step(obs(Observation::PreloadTimedOut {
        pool_id: id("p1"),
        pid: 200,
        last_probe: String::new(),
    }));
    assert_eq!(facts.len(), 1, "{facts:?}");
    assert!(matches!(
        &facts[0].event,
        Event::ReloadFailed {
            rolling_back: true,
            pid: Some(200),
            stage: ReloadStage::Starting,
            ..
        }
    ));
    // The failed new engine is killed first: the old one must not start beside it.
    let s = sim.status("p1");
    assert_eq!((s.phase, s.ready, s.live), (Phase::Reloading, false, true));
    let facts = sim.step(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 200,
        graceful: false,
    }));
    assert_eq!(facts[0].event.kind(), "EngineStopped");
    match &facts[1].event {
        Event::EngineStartRequested {
            engine: e,
            purpose: StartPurpose::Rollback,
            ..
        } => assert_eq!(e.model_path, "/models/a.gguf"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sim.status("p1").crash_count,
        0,
        "a rolled-back reload is not an engine crash"
    );
    sim.spawn("p1", 300);
    let facts = sim.become_ready("p1", 300);
    assert!(
        matches!(&facts[1].event, Event::ReloadRolledBack { model_ref, .. } if model_ref == "/models/a.gguf")
    );
    let s = sim.status("p1");
    assert_eq!((s.phase, s.ready), (Phase::Ready, true));
    assert_eq!(s.model_ref.as_deref(), Some("/models/a.gguf"));
}

// ---- handoff ----

fn handoff(pool: &str) -> Handoff {
    Handoff {
        engine: "llamacpp".into(),
        engine_version: "b7777".into(),
        url: "http://127.0.0.1:8090".into(),
        pool_id: pool.into(),
        replica_id: "r1".into(),
        model: HandoffModel {
            path: "/models/x.gguf".into(),
        },
        flags: vec![],
        device_mask: Some("1".into()),
        slots_total: 4,
        pid: Some(555),
    }
}

#[test]
fn handoff_registers_a_ready_pool_and_clears_the_error() {
    let h = concat(&[
        spawned("p1", 100),
        vec![(
            "p1",
            Event::PreloadFailed {
                reason: "boom".into(),
                failure: StartFailure::SpawnFailed,
                cause: ExitReason::Unknown,
                pid: None,
            },
        )],
    ]);
    let now = T0 + 1_000;
    let o = given(&h)
        .when(cmd(Command::RegisterHandoff {
            pool_id: id("p1"),
            handoff: handoff("p1"),
            path: "/run/engines/p1-r1.json".into(),
        }))
        .then_kinds(&["HandoffRegistered"]);
    let s = o.status("p1");
    assert!(s.ready);
    assert_eq!(
        (
            s.slots_total,
            s.device_mask.as_deref(),
            s.engine_version.as_deref()
        ),
        (4, Some("1"), Some("b7777"))
    );
    assert_eq!(s.last_error, None);
    assert_eq!(s.last_heartbeat_ms, Some(now));
    assert_eq!(s.pid, Some(555));
    // the same file again is a no-op; a crash is not restarted
    o.and()
        .when(cmd(Command::RegisterHandoff {
            pool_id: id("p1"),
            handoff: handoff("p1"),
            path: "/run/engines/p1-r1.json".into(),
        }))
        .then_nothing();
    let mut sim = Sim::new(&[]);
    sim.step(cmd(Command::RegisterHandoff {
        pool_id: id("p1"),
        handoff: handoff("p1"),
        path: "api".into(),
    }));
    assert_eq!(sim.exit("p1", 555, ExitReason::Crash), ["EngineExited"]);
    assert_eq!(sim.status("p1").phase, Phase::Failed);
    let mut bad = handoff("p1");
    bad.slots_total = 0;
    given(&[])
        .when(cmd(Command::RegisterHandoff {
            pool_id: id("p1"),
            handoff: bad,
            path: "f".into(),
        }))
        .then_rejected("INVALID_REQUEST");
    given(&ready("p1", 100))
        .when(cmd(Command::RegisterHandoff {
            pool_id: id("p1"),
            handoff: handoff("p1"),
            path: "f".into(),
        }))
        .then_rejected("POOL_BUSY");
}
