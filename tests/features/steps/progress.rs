//! Progress, not just health: engines that report work in progress and make none (engine-sim
//! `--stall-after-ms`), on a daemon with the real clock, whose events' `ts_ms` are real times.
//!
//! An absence ("an idle engine holding a lease is not stalled") is never waited out: the
//! scenario's engine stalls by itself later, and the steps compare the times of what did
//! happen (the lease, the engine's stall time, the stop) so that a stop of the idle engine
//! would show as a stop too early.

use std::time::{Duration, Instant};

use cucumber::{then, when};
use serde_json::Value;

use crate::world::{PoolWorld, POLL};

/// How long a stall may take to be found: the engine's stall time, the stall bound and a few
/// progress probes, on a loaded machine.
const STALL_DETECTION: Duration = Duration::from_secs(20);

/// The first event of `kind` of the pool, with its envelope (`ts_ms`).
fn first_of<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"]["kind"] == kind)
}

fn ts(envelope: &Value) -> u64 {
    envelope["ts_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ts_ms in {envelope}"))
}

/// The pool's first stop asked for as a failure `stalled`, waited for.
async fn stalled_stop(world: &PoolWorld, pool: &str) -> (Vec<Value>, Value) {
    let deadline = Instant::now() + STALL_DETECTION;
    loop {
        let events = world.events(pool).await;
        if let Some(stop) = first_of(&events, "EngineStopRequested") {
            let stop = stop.clone();
            assert_eq!(
                stop["event"]["reason"]["failure"]["reason"], "stalled",
                "the first stop of pool '{pool}' is not a stall: {stop}"
            );
            return (events, stop);
        }
        assert!(
            Instant::now() < deadline,
            "pool '{pool}' was not stopped within {STALL_DETECTION:?}: {events:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[when(expr = "the engine of pool {string} is found stalled")]
async fn found_stalled(world: &mut PoolWorld, pool: String) {
    stalled_stop(world, &pool).await;
}

/// The stop came no sooner than `ms` after the pool's first `EngineSpawned`.
#[then(
    expr = "pool {string} was stopped as stalled no sooner than {int} ms after its engine was spawned"
)]
async fn stopped_no_sooner(world: &mut PoolWorld, pool: String, ms: u64) {
    let (events, stop) = stalled_stop(world, &pool).await;
    let spawned = first_of(&events, "EngineSpawned")
        .unwrap_or_else(|| panic!("pool '{pool}' has no EngineSpawned: {events:?}"));
    let after = ts(&stop).saturating_sub(ts(spawned));
    assert!(
        after >= ms,
        "pool '{pool}' was stopped {after} ms after its engine was spawned, before {ms} ms: {stop}"
    );
}

/// The lease was granted more than `idle_ms` before the engine's stall time (`stall_ms` after
/// its spawn): the engine was idle with a lease for longer than the stall bound, so that the
/// scenario proves something.
#[then(
    expr = "pool {string} held a lease for more than {int} ms before its engine stalled {int} ms after its spawn"
)]
async fn lease_held_idle(world: &mut PoolWorld, pool: String, idle_ms: u64, stall_ms: u64) {
    let events = world.events(&pool).await;
    let spawned = first_of(&events, "EngineSpawned")
        .unwrap_or_else(|| panic!("pool '{pool}' has no EngineSpawned: {events:?}"));
    let lease = first_of(&events, "LeaseGranted")
        .unwrap_or_else(|| panic!("pool '{pool}' has no LeaseGranted: {events:?}"));
    let idle = (ts(spawned) + stall_ms).saturating_sub(ts(lease));
    assert!(
        idle > idle_ms,
        "pool '{pool}' held its lease only {idle} ms before its engine stalled: the machine was \
         too slow for the scenario to prove anything"
    );
}
