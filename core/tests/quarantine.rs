//! GPU quarantine: hardware-class faults of one GPU reaching `[gpu] quarantine_after` within
//! `[gpu] quarantine_window_ms` quarantine it; its pools are stopped and never restarted onto
//! it; preloads naming it are refused; an operator ends it.

mod support;

use pool_core::*;
use support::*;

const GPU: &str = "GPU-a";

fn xid(xid: u32) -> Input {
    obs(Observation::GpuXid {
        gpu_uuid: GPU.into(),
        xid,
    })
}

fn reset() -> Input {
    obs(Observation::DriverReset {
        gpu_uuid: GPU.into(),
    })
}

fn stopped(pool: &str, pid: u32) -> Input {
    obs(Observation::EngineStopped {
        pool_id: id(pool),
        pid,
        graceful: false,
    })
}

fn preload(pool: &str, mask: Option<&str>) -> Input {
    let mut engine = engine(pool);
    engine.device_mask = mask.map(str::to_string);
    cmd(Command::Preload {
        pool_id: id(pool),
        engine,
        placement: PlacementInputs::default(),
    })
}

fn unquarantine(gpu: &str) -> Input {
    cmd(Command::UnquarantineGpu {
        gpu_uuid: gpu.into(),
        by: "ops:jun".into(),
    })
}

fn two_gpus() -> Vec<Given> {
    vec![(
        "",
        Event::GpuInventoryObserved {
            gpus: vec![gpu(0, GPU), gpu(1, "GPU-b")],
        },
    )]
}

#[test]
fn three_hardware_xids_quarantine_the_gpu_and_its_pool_is_not_restarted() {
    let mut sim = Sim::new(&concat(&[two_gpus(), ready("p1", 10)]));
    assert_eq!(
        sim.kinds(xid(79)),
        ["GpuXidObserved", "EngineStopRequested"]
    );
    assert_eq!(sim.kinds(xid(79)), ["GpuXidObserved"]);
    sim.advance(1_000);
    let facts = sim.step(xid(79));
    assert_eq!(
        facts[1].event,
        Event::GpuQuarantined {
            gpu_uuid: GPU.into(),
            faults: 3
        }
    );
    assert!(sim.state.node.quarantined.contains_key(GPU));
    // The engine stops: no restart (neither at once nor later), the pool says why.
    assert_eq!(
        sim.kinds(stopped("p1", 10)),
        ["EngineStopped", "RestartHeld"]
    );
    assert_eq!(sim.pool("p1").activity, Activity::Failed);
    let status = sim.status("p1");
    let last_error = status.last_error.unwrap_or_default();
    assert!(last_error.contains("GPU_QUARANTINED"), "{last_error}");
    assert!(
        last_error.contains("/v2/gpus/GPU-a/unquarantine"),
        "{last_error}"
    );
    // A preload naming it is refused; one on the other GPU is not.
    let refused = given_state(sim.state.clone())
        .when(preload("p1", Some("0")))
        .then_rejected("GPU_QUARANTINED");
    assert!(refused.to_string().contains("GPU-a"), "{refused}");
    // No mask means every GPU, the quarantined one included.
    given_state(sim.state.clone())
        .when(preload("p2", None))
        .then_rejected("GPU_QUARANTINED");
    given_state(sim.state.clone())
        .when(preload("p2", Some("1")))
        .then_kinds(&["PreloadRequested"]);
}

#[test]
fn application_xids_never_quarantine() {
    let mut sim = Sim::new(&concat(&[one_gpu(), ready("p1", 10)]));
    for code in [13, 43, 31, 13, 43, 13] {
        sim.step(xid(code));
    }
    assert!(sim.state.node.quarantined.is_empty());
    assert!(sim.state.node.gpu_faults.is_empty());
    // The pool is restarted as any GPU fault is.
    assert_eq!(
        sim.kinds(stopped("p1", 10)),
        ["EngineStopped", "RestartScheduled"]
    );
}

#[test]
fn faults_outside_the_window_do_not_count() {
    let mut sim = Sim::new(&one_gpu());
    sim.step(xid(79));
    sim.step(xid(48));
    sim.advance(QuarantinePolicy::default().window_ms + 1);
    assert_eq!(sim.kinds(xid(79)), ["GpuXidObserved"]);
    assert_eq!(sim.kinds(xid(64)), ["GpuXidObserved"]);
    assert_eq!(
        sim.kinds(reset()),
        ["DriverResetObserved", "GpuQuarantined"]
    );
}

#[test]
fn the_threshold_and_window_come_from_the_policy() {
    let mut sim = Sim::new(&one_gpu());
    sim.policy.quarantine = QuarantinePolicy {
        after: 1,
        window_ms: 10,
    };
    assert_eq!(sim.kinds(xid(94)), ["GpuXidObserved", "GpuQuarantined"]);
    // Already quarantined: not again.
    assert_eq!(sim.kinds(xid(94)), ["GpuXidObserved"]);
}

#[test]
fn driver_resets_quarantine_and_stop_the_running_pools() {
    let mut sim = Sim::new(&concat(&[one_gpu(), ready("p1", 10)]));
    assert_eq!(sim.kinds(reset()), ["DriverResetObserved"]);
    assert_eq!(sim.kinds(reset()), ["DriverResetObserved"]);
    assert_eq!(
        sim.kinds(reset()),
        [
            "DriverResetObserved",
            "GpuQuarantined",
            "EngineStopRequested"
        ]
    );
    assert_eq!(
        sim.kinds(stopped("p1", 10)),
        ["EngineStopped", "RestartHeld"]
    );
}

#[test]
fn a_pool_in_backoff_is_held_and_its_timer_starts_nothing() {
    let mut sim = Sim::new(&concat(&[one_gpu(), ready("p1", 10)]));
    sim.exit("p1", 10, ExitReason::Crash);
    let Activity::Backoff { token, .. } = sim.pool("p1").activity else {
        panic!("not in backoff: {:?}", sim.pool("p1").activity);
    };
    sim.step(xid(79));
    sim.step(xid(79));
    assert_eq!(
        sim.kinds(xid(79)),
        ["GpuXidObserved", "GpuQuarantined", "RestartHeld"]
    );
    sim.advance(600_000);
    let fired = sim.step(obs(Observation::TimerFired {
        pool_id: id("p1"),
        timer: Timer::Restart,
        token,
    }));
    assert!(fired.is_empty(), "{fired:?}");
}

#[test]
fn an_open_breaker_half_opens_without_a_trial() {
    let mut sim = Sim::new(&concat(&[one_gpu(), breaker_open("p1", 10)]));
    let token = sim.pool("p1").supervision.breaker.token;
    for _ in 0..3 {
        sim.step(reset());
    }
    assert!(sim.state.node.quarantined.contains_key(GPU));
    sim.advance(3_600_000);
    let kinds = sim.kinds(obs(Observation::TimerFired {
        pool_id: id("p1"),
        timer: Timer::HalfOpen,
        token,
    }));
    assert_eq!(kinds, ["CircuitHalfOpened", "RestartHeld"]);
    // A reset of the breaker restarts nothing either.
    let mut sim2 = Sim::new(&concat(&[one_gpu(), breaker_open("p1", 10)]));
    for _ in 0..3 {
        sim2.step(reset());
    }
    let kinds = sim2.kinds(cmd(Command::ResetBreaker {
        pool_id: id("p1"),
        by: "ops".into(),
    }));
    assert_eq!(kinds, ["CircuitReset", "RestartHeld"]);
}

#[test]
fn a_start_under_way_fails_at_its_health_check() {
    let mut sim = Sim::new(&concat(&[one_gpu(), spawned("p1", 10)]));
    sim.policy.quarantine.after = 1;
    // The fault fails the starting engine; a start of another engine would be caught later.
    sim.step(reset());
    assert!(sim.state.node.quarantined.contains_key(GPU));
    let mut sim = Sim::new(&concat(&[one_gpu(), spawned("p1", 10)]));
    sim.state.node.quarantined.insert(
        GPU.into(),
        Quarantine {
            since_ms: T0,
            faults: 3,
        },
    );
    let kinds = sim.kinds(obs(Observation::HealthPassed {
        pool_id: id("p1"),
        pid: 10,
        after_ms: 100,
        engine_version: None,
        slots_total: None,
        exe: None,
    }));
    assert_eq!(kinds, ["PreloadFailed"]);
    assert_eq!(
        sim.kinds(stopped("p1", 10)),
        ["EngineStopped", "RestartHeld"]
    );
}

#[test]
fn unquarantine_ends_it_and_a_preload_works_again() {
    let mut sim = Sim::new(&concat(&[one_gpu(), ready("p1", 10)]));
    for _ in 0..3 {
        sim.step(xid(79));
    }
    sim.step(stopped("p1", 10));
    let facts = sim.step(unquarantine("gpu-A"));
    assert_eq!(
        facts.iter().map(|f| &f.event).collect::<Vec<_>>(),
        [&Event::GpuUnquarantined {
            gpu_uuid: GPU.into(),
            by: "ops:jun".into()
        }]
    );
    assert!(sim.state.node.quarantined.is_empty());
    assert!(
        sim.state.node.gpu_faults.is_empty(),
        "the count starts again"
    );
    // Again: nothing to end. An unknown GPU is named.
    assert!(sim.step(unquarantine(GPU)).is_empty());
    let refused = given_state(sim.state.clone())
        .when(unquarantine("GPU-zzz"))
        .then_rejected("INVALID_REQUEST");
    assert!(refused.to_string().contains("GPU-zzz"), "{refused}");
    assert_eq!(sim.kinds(preload("p1", Some("0"))), ["PreloadRequested"]);
    // One new fault does not quarantine it again.
    assert_eq!(sim.kinds(xid(79)), ["GpuXidObserved"]);
}

#[test]
fn the_quarantine_is_rebuilt_by_replay() {
    let mut sim = Sim::new(&concat(&[one_gpu(), ready("p1", 10)]));
    let mut facts = Vec::new();
    for _ in 0..3 {
        facts.extend(sim.step(xid(79)));
    }
    facts.extend(sim.step(stopped("p1", 10)));
    let replayed = fold(
        given(&concat(&[one_gpu(), ready("p1", 10)])).state,
        &facts,
        sim.now_ms,
    );
    assert_eq!(replayed.node.quarantined, sim.state.node.quarantined);
    assert_eq!(replayed.pool("p1"), sim.state.pool("p1"));
}
