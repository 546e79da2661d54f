//! Reload without a gap (a surge), decided and folded: the strategy's choice, the new engine
//! beside the old one, the switch, the old engine's drain, and every early end.

mod support;

use pool_core::*;
use support::*;

const SURGE_PORT: u16 = 9_100;

fn reload(strategy: ReloadStrategyAsked, surge_port: Option<u16>) -> Input {
    cmd(Command::Reload {
        pool_id: id("p1"),
        new_model_ref: "/models/b.gguf".into(),
        digest: None,
        drain_deadline_ms: Some(30_000),
        strategy,
        surge_port,
        placement: PlacementInputs::default(),
    })
}

/// A ready pool p1 (pid 100) on the node's one GPU.
fn ready_p1() -> Vec<Given> {
    concat(&[one_gpu(), ready("p1", 100)])
}

/// A ready pool p1 (pid 100) with one lease, surging towards /models/b.gguf: staged, its new
/// engine spawned as pid 200.
fn surging() -> Sim {
    let mut sim = Sim::new(&ready_p1());
    sim.step(cmd(Command::AcquireLease {
        pool_id: id("p1"),
        lease_id: lease("old-1"),
    }));
    let facts = sim.step(reload(ReloadStrategyAsked::Auto, Some(SURGE_PORT)));
    assert!(
        matches!(
            &facts[1].event,
            Event::ReloadStrategyChosen {
                strategy: ReloadStrategy::Surge,
                surge_port: Some(SURGE_PORT),
                ..
            }
        ),
        "{facts:?}"
    );
    let token = sim.pool("p1").reload.as_ref().unwrap().token;
    let facts = sim.step(obs(Observation::ModelStaged {
        pool_id: id("p1"),
        token,
        path: "/models/b.gguf".into(),
        digest: None,
    }));
    let kinds: Vec<_> = facts.iter().map(|f| f.event.kind()).collect();
    assert_eq!(kinds, ["ModelStaged", "SurgeStartRequested"]);
    let Event::SurgeStartRequested { engine: new } = &facts[1].event else {
        unreachable!()
    };
    assert_eq!(
        (new.port, new.model_path.as_str()),
        (SURGE_PORT, "/models/b.gguf")
    );
    assert_eq!(new.flags[1], "/models/b.gguf");
    spawn_surge(&mut sim, 200);
    sim
}

/// A ready pool p1 (pid 100) whose surge to /models/b.gguf is staged: its new engine's spawn
/// is asked for, not yet reported.
fn staged_surge() -> Sim {
    let mut sim = Sim::new(&ready_p1());
    sim.step(reload(ReloadStrategyAsked::Surge, Some(SURGE_PORT)));
    let token = sim.pool("p1").reload.as_ref().unwrap().token;
    sim.step(obs(Observation::ModelStaged {
        pool_id: id("p1"),
        token,
        path: "/models/b.gguf".into(),
        digest: None,
    }));
    sim
}

fn spawn_surge(sim: &mut Sim, pid: u32) -> Vec<Fact> {
    let token = sim.pool("p1").second.as_ref().unwrap().token;
    sim.step(obs(Observation::EngineSpawned {
        pool_id: id("p1"),
        token,
        pid,
        start_time: 5_000,
        log_path: "/run/logs/p1@b.log".into(),
        pid_path: "/run/pids/p1@b.pid".into(),
        boot_id: Some(BOOT_ID.into()),
    }))
}

fn healthy_and_switched(sim: &mut Sim, pid: u32) -> Vec<Fact> {
    let facts = sim.step(obs(Observation::HealthPassed {
        pool_id: id("p1"),
        pid,
        after_ms: 300,
        engine_version: Some("b2000".into()),
        slots_total: None,
        exe: None,
    }));
    assert_eq!(facts[0].event.kind(), "SurgeHealthPassed");
    sim.step(obs(Observation::HandoffWritten {
        pool_id: id("p1"),
        pid,
        path: "/run/engines/p1-r0.json".into(),
    }))
}

fn assert_serving_old(sim: &Sim) {
    let s = sim.status("p1");
    assert!(s.ready, "the pool never leaves ready: {s:?}");
    assert_eq!(s.pid, Some(100));
    assert_eq!(s.model_ref.as_deref(), Some("/models/a.gguf"));
}

#[test]
fn auto_drains_first_without_a_surge_port_and_surge_is_then_refused() {
    given(&ready_p1())
        .when(reload(ReloadStrategyAsked::Auto, None))
        .then_kinds(&["ReloadRequested", "ReloadStrategyChosen"]);
    let refused = given(&ready_p1())
        .when(reload(ReloadStrategyAsked::Surge, None))
        .then_rejected("INVALID_REQUEST");
    assert!(refused.to_string().contains("surge_ports"), "{refused}");
}

#[test]
fn drain_first_asked_for_is_recorded_with_its_reason() {
    let out = given(&ready_p1())
        .when(reload(ReloadStrategyAsked::DrainFirst, Some(SURGE_PORT)))
        .then_ok();
    assert!(matches!(
        &out.facts[1].event,
        Event::ReloadStrategyChosen { strategy: ReloadStrategy::DrainFirst, reason, .. }
            if reason.contains("drain_first")
    ));
}

#[test]
fn a_new_engine_that_does_not_fit_beside_the_old_one_drains_first_or_is_refused() {
    let mut big = engine("p1");
    big.vram_required_bytes = Some(30 << 30); // the GPU has 20 GiB free
    let history = concat(&[
        one_gpu(),
        vec![(
            "p1",
            Event::PreloadRequested {
                engine: Box::new(big),
            },
        )],
        ready("p1", 100).split_off(1),
    ]);
    let out = given(&history)
        .when(reload(ReloadStrategyAsked::Auto, Some(SURGE_PORT)))
        .then_ok();
    assert!(matches!(
        &out.facts[1].event,
        Event::ReloadStrategyChosen { strategy: ReloadStrategy::DrainFirst, reason, .. }
            if reason.contains("does not fit")
    ));
    given(&history)
        .when(reload(ReloadStrategyAsked::Surge, Some(SURGE_PORT)))
        .then_rejected("INSUFFICIENT_VRAM");
}

#[test]
fn surge_switches_atomically_and_the_old_engine_finishes_its_lease() {
    let mut sim = surging();
    assert_serving_old(&sim);
    let spawn = given_state(sim.state.clone()).when(obs(Observation::HealthPassed {
        pool_id: id("p1"),
        pid: 200,
        after_ms: 1,
        engine_version: None,
        slots_total: None,
        exe: None,
    }));
    let out = spawn.then_ok();
    assert!(out.has_effect(|e| matches!(
        e,
        Effect::WriteHandoff { pid: 200, lane: Lane::B, handoff, .. }
            if handoff.url == format!("http://127.0.0.1:{SURGE_PORT}")
    )));
    // Leases still go to the old engine before the switch.
    sim.step(cmd(Command::AcquireLease {
        pool_id: id("p1"),
        lease_id: lease("old-2"),
    }));
    let facts = healthy_and_switched(&mut sim, 200);
    let kinds: Vec<_> = facts.iter().map(|f| f.event.kind()).collect();
    assert_eq!(kinds, ["SurgeSwitched", "ReloadSucceeded"]);
    assert!(matches!(
        facts[0].event,
        Event::SurgeSwitched {
            new_pid: 200,
            old_pid: Some(100),
            leases_on_old: 2,
            ..
        }
    ));
    let s = sim.status("p1");
    assert_eq!((s.ready, s.pid, s.active_leases), (true, Some(200), 0));
    assert_eq!(s.model_ref.as_deref(), Some("/models/b.gguf"));
    assert_eq!(
        sim.pool("p1").url().as_deref(),
        Some("http://127.0.0.1:9100")
    );
    let pool = sim.pool("p1");
    assert_eq!(pool.lane, Lane::B);
    let old = pool.second.as_ref().unwrap();
    assert_eq!(
        (old.role, old.pid(), old.active_leases()),
        (SecondRole::Retiring, Some(100), 2)
    );
    // New leases go to the new engine; the old one stops once its last lease is back.
    sim.step(cmd(Command::AcquireLease {
        pool_id: id("p1"),
        lease_id: lease("new-1"),
    }));
    let kinds = sim.kinds(cmd(Command::ReleaseLease {
        pool_id: id("p1"),
        lease_id: lease("old-1"),
    }));
    assert_eq!(kinds, ["LeaseReleased"]);
    let facts = sim.step(cmd(Command::ReleaseLease {
        pool_id: id("p1"),
        lease_id: lease("old-2"),
    }));
    assert!(matches!(
        facts[1].event,
        Event::SecondStopRequested {
            pid: Some(100),
            why: SecondStop::Drained,
            ..
        }
    ));
    let facts = sim.step(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 100,
        graceful: true,
    }));
    assert_eq!(facts[0].event.kind(), "SecondEngineEnded");
    let pool = sim.pool("p1");
    assert!(pool.second.is_none());
    assert_eq!((pool.active_leases(), pool.pid()), (1, Some(200)));
    assert!(!pool.busy(), "the pool takes new operations again");
}

#[test]
fn the_old_engine_is_stopped_at_the_drain_deadline_with_its_leases() {
    let mut sim = surging();
    healthy_and_switched(&mut sim, 200);
    let token = sim.pool("p1").second.as_ref().unwrap().token;
    sim.advance(30_000);
    let facts = sim.step(obs(Observation::TimerFired {
        pool_id: id("p1"),
        timer: Timer::RetireDeadline,
        token,
    }));
    assert!(matches!(
        facts[..],
        [Fact {
            event: Event::SecondStopRequested {
                pid: Some(100),
                why: SecondStop::DrainDeadline,
                leases_at_stop: 1,
                ..
            },
            ..
        }]
    ));
}

#[test]
fn a_new_engine_that_never_answers_is_killed_and_the_old_one_serves_on() {
    let mut sim = surging();
    let facts = sim.step(obs(Observation::PreloadTimedOut {
        pool_id: id("p1"),
        pid: 200,
        last_probe: "503 loading".into(),
    }));
    let kinds: Vec<_> = facts.iter().map(|f| f.event.kind()).collect();
    assert_eq!(kinds, ["ReloadFailed", "SecondStopRequested"]);
    assert!(matches!(
        facts[0].event,
        Event::ReloadFailed {
            stage: ReloadStage::Surging,
            rolling_back: false,
            pid: None,
            ..
        }
    ));
    assert_serving_old(&sim);
    assert_eq!(sim.status("p1").phase, Phase::Ready);
    assert_eq!(sim.status("p1").crash_count, 0);
    let kinds = sim.kinds(obs(Observation::EngineStopped {
        pool_id: id("p1"),
        pid: 200,
        graceful: false,
    }));
    assert_eq!(kinds, ["SecondEngineEnded"]);
    assert!(sim.pool("p1").second.is_none());
    assert_serving_old(&sim);
}

#[test]
fn a_new_engine_that_exits_fails_the_surge() {
    let mut sim = surging();
    let kinds = sim.kinds(obs(Observation::EngineExited {
        pool_id: id("p1"),
        pid: 200,
        exit_code: Some(1),
        signal: None,
        reason: ExitReason::Crash,
        detail: "unknown model architecture".into(),
    }));
    assert_eq!(kinds, ["SecondEngineEnded", "ReloadFailed"]);
    assert!(sim.pool("p1").second.is_none());
    assert_serving_old(&sim);
}

#[test]
fn a_surge_port_taken_before_the_spawn_fails_the_surge() {
    let mut sim = staged_surge();
    let token = sim.pool("p1").second.as_ref().unwrap().token;
    let kinds = sim.kinds(obs(Observation::PortInUse {
        pool_id: id("p1"),
        token,
        pid: None,
        detail: "port 9100 is held by pid 7".into(),
    }));
    assert_eq!(kinds, ["ReloadFailed", "SecondStopRequested"]);
    assert!(sim.pool("p1").second.is_none());
    assert_serving_old(&sim);
}

#[test]
fn the_old_engine_failing_during_the_surge_ends_it() {
    let mut sim = surging();
    let kinds = sim.exit("p1", 100, ExitReason::Crash);
    assert_eq!(
        kinds,
        [
            "ReloadFailed",
            "SecondStopRequested",
            "EngineExited",
            "RestartScheduled"
        ]
    );
    assert!(sim.pool("p1").second.as_ref().unwrap().stopping);
}

#[test]
fn a_surge_ended_before_its_spawn_is_known_kills_the_engine_once_spawned() {
    let mut sim = staged_surge();
    let kinds = sim.exit("p1", 100, ExitReason::Crash);
    assert_eq!(kinds, ["ReloadFailed", "EngineExited", "RestartScheduled"]);
    assert!(sim.pool("p1").second.as_ref().unwrap().cancelled);
    let facts = spawn_surge(&mut sim, 200);
    let kinds: Vec<_> = facts.iter().map(|f| f.event.kind()).collect();
    assert_eq!(kinds, ["SurgeSpawned", "SecondStopRequested"]);
}

#[test]
fn after_a_daemon_restart_a_starting_surge_is_undone_and_a_switch_finished() {
    // Before the switch: the new engine is stopped, the old one serves on.
    let mut sim = surging();
    sim.step(obs(Observation::DaemonStarted {
        version: "x".into(),
        pid: 1,
    }));
    let resume = resume_effects(&sim.state);
    assert!(resume.iter().any(|e| matches!(
        e,
        Effect::VerifyEngine {
            pid: 200,
            lane: Lane::B,
            ..
        }
    )));
    assert!(resume.iter().any(|e| matches!(
        e,
        Effect::VerifyEngine {
            pid: 100,
            lane: Lane::A,
            ..
        }
    )));
    let kinds = sim.kinds(obs(Observation::EngineAdopted {
        pool_id: id("p1"),
        pid: 200,
    }));
    assert_eq!(
        kinds,
        ["EngineAdopted", "ReloadFailed", "SecondStopRequested"]
    );

    // After the switch: the old engine goes on with its lease, its deadline armed again.
    let mut sim = surging();
    healthy_and_switched(&mut sim, 200);
    sim.step(obs(Observation::DaemonStarted {
        version: "x".into(),
        pid: 1,
    }));
    let out = given_state(sim.state.clone())
        .when(obs(Observation::EngineAdopted {
            pool_id: id("p1"),
            pid: 100,
        }))
        .then_kinds(&["EngineAdopted"]);
    assert!(out.has_effect(|e| matches!(
        e,
        Effect::ArmTimer {
            timer: Timer::RetireDeadline,
            ..
        }
    )));
    assert!(out.has_effect(|e| matches!(
        e,
        Effect::WatchProcess {
            pid: 100,
            lane: Lane::A,
            ..
        }
    )));
    let kinds = sim.kinds(obs(Observation::EngineLost {
        pool_id: id("p1"),
        pid: 100,
    }));
    assert_eq!(kinds, ["SecondEngineEnded"]);
    assert_eq!(sim.status("p1").pid, Some(200));
}

#[test]
fn a_surge_whose_spawn_was_never_recorded_ends_at_the_daemon_start() {
    let mut sim = staged_surge();
    let kinds = sim.kinds(obs(Observation::DaemonStarted {
        version: "x".into(),
        pid: 1,
    }));
    assert_eq!(
        kinds,
        ["DaemonStarted", "ReloadFailed", "SecondStopRequested"]
    );
    assert!(sim.pool("p1").second.is_none());
    assert_serving_old(&sim);
}

#[test]
fn a_pool_with_a_second_engine_refuses_another_reload_and_stops_it_with_the_pool() {
    let mut sim = surging();
    healthy_and_switched(&mut sim, 200);
    given_state(sim.state.clone())
        .when(reload(ReloadStrategyAsked::Auto, Some(SURGE_PORT + 1)))
        .then_rejected("POOL_BUSY");
    let kinds = sim.kinds(cmd(Command::Stop { pool_id: id("p1") }));
    assert_eq!(kinds, ["SecondStopRequested", "EngineStopRequested"]);
}

#[test]
fn a_state_with_a_second_engine_round_trips_through_a_snapshot() {
    let sim = surging();
    let bytes = bincode::serialize(&sim.state).unwrap();
    let back: State = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, sim.state);
}
