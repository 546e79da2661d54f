//! Every start path obeys the breaker (preload, restart, half-open trial, reload and, through
//! it, rollback), and the refusals that have an end say when it is: `CIRCUIT_OPEN` until the
//! breaker half-opens, `POOL_UNREADY` in backoff until the restart is due. The time left is
//! computed from what the registry holds and the decision's `now` (the shell's clock).

mod support;

use pool_core::*;
use support::*;

/// The breaker of `breaker_open` half-opens at this time.
const HALF_OPEN_AT: u64 = T0 + 300_000;

fn preload(engine: PreparedEngine) -> Input {
    cmd(Command::Preload {
        pool_id: id(&engine.pool_id.clone()),
        engine,
        placement: Default::default(),
    })
}

fn acquire(pool: &str) -> Input {
    cmd(Command::AcquireLease {
        pool_id: id(pool),
        lease_id: lease("l9"),
    })
}

fn reload(pool: &str) -> Input {
    cmd(Command::Reload {
        pool_id: id(pool),
        new_model_ref: "/models/b.gguf".into(),
        digest: None,
        drain_deadline_ms: None,
        strategy: pool_core::ReloadStrategyAsked::DrainFirst,
        surge_port: None,
        placement: Default::default(),
    })
}

fn timer(pool: &str, timer: Timer, token: u64) -> Input {
    obs(Observation::TimerFired {
        pool_id: id(pool),
        timer,
        token,
    })
}

fn retry_after(rejection: &Rejection) -> Option<u64> {
    rejection.retry_after_ms()
}

#[test]
fn while_the_breaker_is_open_every_start_is_refused_until_it_half_opens() {
    let h = concat(&[breaker_open("p1", 100), one_gpu()]);
    let now = HALF_OPEN_AT - 61_500;
    for (what, input) in [
        ("preload", preload(engine("p1"))),
        ("lease", acquire("p1")),
        ("reload", reload("p1")),
    ] {
        let r = given(&h).at(now).when(input).then_rejected("CIRCUIT_OPEN");
        assert_eq!(retry_after(&r), Some(61_500), "{what}: {r}");
        assert!(r.to_string().contains("retry in 61500 ms"), "{what}: {r}");
    }
    // A restart timer of an earlier backoff starts nothing while the breaker is open.
    let token = given(&h)
        .state
        .pool("p1")
        .unwrap()
        .supervision
        .breaker
        .token;
    given(&h)
        .at(now)
        .when(timer("p1", Timer::Restart, token))
        .then_nothing();
    // A half-open timer of an earlier opening starts nothing either.
    given(&h)
        .at(HALF_OPEN_AT)
        .when(timer("p1", Timer::HalfOpen, token - 1))
        .then_nothing();
    // Its own half-open timer: one trial start.
    given(&h)
        .at(HALF_OPEN_AT)
        .when(timer("p1", Timer::HalfOpen, token))
        .then_events(&[
            Event::CircuitHalfOpened,
            Event::EngineStartRequested {
                engine: Box::new(engine("p1")),
                attempt: 1,
                purpose: StartPurpose::Trial,
            },
        ]);
}

#[test]
fn the_time_left_of_an_open_breaker_never_goes_below_zero() {
    let h = breaker_open("p1", 100);
    let at = |now: u64| {
        let r = given(&h)
            .at(now)
            .when(acquire("p1"))
            .then_rejected("CIRCUIT_OPEN");
        retry_after(&r)
    };
    assert_eq!(at(HALF_OPEN_AT - 1), Some(1));
    // The half-open timer is late (the actor is busy): still open, nothing left to wait.
    assert_eq!(at(HALF_OPEN_AT), Some(0));
    assert_eq!(at(HALF_OPEN_AT + 5_000), Some(0));
}

/// A ready pool whose engine crashed: in backoff, its restart due at the returned time.
fn in_backoff() -> (Sim, u64) {
    let mut sim = Sim::new(&concat(&[ready("p1", 100), one_gpu()]));
    assert_eq!(
        sim.exit("p1", 100, ExitReason::Crash),
        ["EngineExited", "RestartScheduled"]
    );
    let Activity::Backoff { not_before_ms, .. } = sim.pool("p1").activity else {
        panic!("not in backoff: {:?}", sim.pool("p1").activity)
    };
    (sim, not_before_ms)
}

#[test]
fn a_pool_in_backoff_is_unready_until_its_restart_is_due() {
    let (sim, due) = in_backoff();
    for (what, input) in [("lease", acquire("p1")), ("reload", reload("p1"))] {
        let r = given_state(sim.state.clone())
            .at(sim.now_ms)
            .when(input)
            .then_rejected("POOL_UNREADY");
        assert_eq!(retry_after(&r), Some(due - sim.now_ms), "{what}: {r}");
        let text = r.to_string();
        assert!(text.contains("phase backoff"), "{text}");
        assert!(
            text.contains(&format!("its restart is due in {} ms", due - sim.now_ms)),
            "{text}"
        );
    }
    // The restart timer is late: nothing left to wait.
    let r = given_state(sim.state.clone())
        .at(due + 10)
        .when(acquire("p1"))
        .then_rejected("POOL_UNREADY");
    assert_eq!(retry_after(&r), Some(0));
}

#[test]
fn an_unready_pool_with_no_restart_scheduled_says_no_time() {
    // Starting: ready once its engine answers, which nobody can foretell.
    let r = given(&spawned("p1", 100))
        .when(acquire("p1"))
        .then_rejected("POOL_UNREADY");
    assert_eq!(retry_after(&r), None);
    assert!(!r.to_string().contains("restart is due"), "{r}");
    // Other refusals carry no time either.
    let r = given(&ready("p1", 100))
        .when(cmd(Command::Reload {
            pool_id: id("p1"),
            new_model_ref: "x".repeat(5_000),
            digest: None,
            drain_deadline_ms: None,
            strategy: pool_core::ReloadStrategyAsked::DrainFirst,
            surge_port: None,
            placement: Default::default(),
        }))
        .then_rejected("INVALID_REQUEST");
    assert_eq!(retry_after(&r), None);
}
