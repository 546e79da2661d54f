//! `Observation::EngineNotOnGpu` (OC-POOL-3012, `CPU_SPILLOVER`): a starting engine that is not
//! on the GPUs of its mask fails its start, is killed, and counts as a GPU fault; a stale
//! report (another start's token, another pid) or one about an engine that is not starting
//! changes nothing.

mod support;

use pool_core::*;
use support::*;

fn not_on_gpu(pool: &str, token: u64, pid: u32) -> Input {
    obs(Observation::EngineNotOnGpu {
        pool_id: id(pool),
        token,
        pid,
        detail: format!("engine pid {pid} with device mask \"0\" was not listed by NVML"),
    })
}

#[test]
fn the_code_is_cpu_spillover() {
    assert_eq!(StartFailure::CpuSpillover.code().as_str(), "CPU_SPILLOVER");
}

#[test]
fn spillover_while_starting_fails_the_start_and_kills_the_engine() {
    let mut sim = Sim::new(&spawned("p1", 100));
    let token = sim.pool("p1").start_token;
    let facts = sim.step(not_on_gpu("p1", token, 100));
    assert_eq!(facts.len(), 1, "{facts:?}");
    match &facts[0].event {
        Event::PreloadFailed {
            reason,
            failure,
            cause,
            pid,
        } => {
            assert_eq!(*failure, StartFailure::CpuSpillover);
            assert_eq!(*cause, ExitReason::CudaError, "a GPU placement fault");
            assert_eq!(*pid, Some(100), "the live engine is killed");
            assert!(reason.contains("CPU_SPILLOVER"), "{reason}");
            assert!(reason.contains("engine pid 100"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let status = sim.status("p1");
    assert!(!status.ready);
    assert!(status
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("not listed by NVML")));
    // Killed (no grace); once it has stopped, the restart policy answers with the GPU class.
    assert_eq!(
        sim.kinds(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid: 100,
            graceful: false,
        })),
        ["EngineStopped", "RestartScheduled"]
    );
    assert!(sim.pool("p1").supervision.gpu_failures >= 1);
    // A second report about the same engine, now gone, changes nothing.
    assert!(sim.step(not_on_gpu("p1", token, 100)).is_empty());
}

#[test]
fn the_kill_is_asked_for_at_once() {
    let history = spawned("p1", 100);
    let token = Sim::new(&history).pool("p1").start_token;
    let o = given(&history)
        .when(not_on_gpu("p1", token, 100))
        .then_kinds(&["PreloadFailed"]);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::StopEngine {
            pid: 100,
            grace_ms: 0,
            ..
        }
    )));
}

#[test]
fn spillover_after_the_health_check_still_fails_the_start() {
    let mut sim = Sim::new(&spawned("p1", 100));
    let token = sim.pool("p1").start_token;
    let passed = sim.step(obs(Observation::HealthPassed {
        pool_id: id("p1"),
        pid: 100,
        after_ms: 10,
        engine_version: None,
        slots_total: None,
        exe: None,
    }));
    assert_eq!(passed.len(), 1);
    assert_eq!(
        sim.kinds(not_on_gpu("p1", token, 100)),
        ["PreloadFailed"],
        "not ready yet: the start fails"
    );
}

#[test]
fn a_stale_token_or_pid_is_ignored() {
    let history = spawned("p1", 100);
    let token = Sim::new(&history).pool("p1").start_token;
    given(&history)
        .when(not_on_gpu("p1", token + 1, 100))
        .then_nothing();
    given(&history)
        .when(not_on_gpu("p1", token.saturating_sub(1), 100))
        .then_nothing();
    given(&history)
        .when(not_on_gpu("p1", token, 101))
        .then_nothing();
    given(&history)
        .when(not_on_gpu("p2", token, 100))
        .then_nothing();
}

#[test]
fn a_report_of_an_earlier_start_is_ignored_by_the_next() {
    let mut sim = Sim::new(&spawned("p1", 100));
    let first = sim.pool("p1").start_token;
    sim.exit("p1", 100, ExitReason::Crash);
    sim.restart_and_spawn("p1", 200);
    let second = sim.pool("p1").start_token;
    assert_ne!(first, second);
    assert!(sim.step(not_on_gpu("p1", first, 100)).is_empty());
    assert!(sim.step(not_on_gpu("p1", first, 200)).is_empty());
    assert_eq!(sim.kinds(not_on_gpu("p1", second, 200)), ["PreloadFailed"]);
}

#[test]
fn nothing_happens_when_the_engine_is_not_starting() {
    let history = ready("p1", 100);
    let token = Sim::new(&history).pool("p1").start_token;
    given(&history)
        .when(not_on_gpu("p1", token, 100))
        .then_nothing();
    given(&preloaded("p1"))
        .when(not_on_gpu("p1", 1, 100))
        .then_nothing();
}

#[test]
fn repeated_spillovers_open_the_breaker_as_gpu_faults() {
    let mut sim = Sim::new(&spawned("p1", 100));
    let threshold = sim.policy.breaker.failure_threshold;
    let mut pid = 100;
    for round in 1..=threshold {
        let token = sim.pool("p1").start_token;
        assert_eq!(sim.kinds(not_on_gpu("p1", token, pid)), ["PreloadFailed"]);
        let after = sim.step(obs(Observation::EngineStopped {
            pool_id: id("p1"),
            pid,
            graceful: false,
        }));
        let kinds: Vec<&str> = after.iter().map(|f| f.event.kind()).collect();
        if round < threshold {
            assert_eq!(kinds, ["EngineStopped", "RestartScheduled"]);
            pid += 1;
            sim.restart_and_spawn("p1", pid);
        } else {
            assert_eq!(kinds, ["EngineStopped", "CircuitOpened"]);
            let Event::CircuitOpened {
                class, failures, ..
            } = &after[1].event
            else {
                panic!("{after:?}")
            };
            assert_eq!((*class, *failures), (FailureClass::GpuFault, threshold));
        }
    }
    assert_eq!(sim.status("p1").breaker, BreakerState::Open);
}
