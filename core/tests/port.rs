//! `Observation::PortInUse` (`PORT_IN_USE`): the engine's port is held by another process,
//! found before the spawn (no engine: the start fails at once) or once the engine answered
//! healthy (someone else answered for it: the start fails and the engine is killed). A stale
//! report (another start's token, another pid, a pool not starting) changes nothing.

mod support;

use pool_core::*;
use support::*;

fn port_in_use(pool: &str, token: u64, pid: Option<u32>) -> Input {
    obs(Observation::PortInUse {
        pool_id: id(pool),
        token,
        pid,
        detail: "port 8080 is held by pid 4242 (python3 -m http.server 8080)".into(),
    })
}

fn preload_failed(facts: &[Fact]) -> (&str, StartFailure, ExitReason, Option<u32>) {
    match facts.first().map(|f| &f.event) {
        Some(Event::PreloadFailed {
            reason,
            failure,
            cause,
            pid,
        }) => (reason.as_str(), *failure, *cause, *pid),
        other => panic!("{other:?} in {facts:?}"),
    }
}

#[test]
fn a_port_held_before_the_spawn_fails_the_start_with_no_engine_to_kill() {
    let mut sim = Sim::new(&preloaded("p1"));
    let token = sim.pool("p1").start_token;
    // Another start's report changes nothing.
    assert!(sim.step(port_in_use("p1", token + 1, None)).is_empty());
    let facts = sim.step(port_in_use("p1", token, None));
    let (reason, failure, cause, pid) = preload_failed(&facts);
    assert_eq!(failure, StartFailure::PortInUse);
    assert_eq!(failure.code(), ErrorCode::PortInUse);
    assert_eq!(cause, ExitReason::Crash);
    assert_eq!(pid, None);
    assert!(
        reason.contains("PORT_IN_USE") && reason.contains("pid 4242"),
        "{reason}"
    );
    let status = sim.status("p1");
    assert!(!status.ready);
    assert!(status
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("python3 -m http.server")));
}

#[test]
fn someone_else_answering_for_a_healthy_engine_fails_the_start_and_kills_it() {
    let history = spawned("p1", 100);
    let mut sim = Sim::new(&history);
    let token = sim.pool("p1").start_token;
    // Reported as before a spawn while an engine runs, or about another pid: stale.
    assert!(sim.step(port_in_use("p1", token, None)).is_empty());
    assert!(sim.step(port_in_use("p1", token, Some(101))).is_empty());
    let o = given(&history)
        .when(port_in_use("p1", token, Some(100)))
        .then_kinds(&["PreloadFailed"]);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::StopEngine {
            pid: 100,
            grace_ms: 0,
            ..
        }
    )));
    let facts = sim.step(port_in_use("p1", token, Some(100)));
    assert_eq!(preload_failed(&facts).3, Some(100));
}

#[test]
fn a_ready_pool_ignores_a_late_report() {
    let history = ready("p1", 100);
    let token = Sim::new(&history).pool("p1").start_token;
    given(&history)
        .when(port_in_use("p1", token, Some(100)))
        .then_nothing();
}
