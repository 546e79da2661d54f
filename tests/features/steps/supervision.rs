//! Supervision: crashes of every kind, backoff, the circuit breaker and restart storms, on a
//! daemon whose clock the scenario moves (`Given a running daemon on a manual clock`).
//!
//! Time: the daemon's restart, half-open, backoff-reset and breaker-close timers wait on its
//! clock, and every event is stamped with it; a step moves the clock (`When 1 second
//! passes`, `When the clock reaches the restart time of pool "p1"`) and then awaits the effect
//! over HTTP. Engines run in real time: a crash-looping engine-sim crashes as soon as it
//! starts, so that the restarts the clock lets through fail again at once.
//!
//! Checks read `GET /v2/pools/{id}` (phase, counts, breaker) and the pool's history
//! (`GET /v2/pools/{id}/events`), whose envelopes carry `seq`, `ts_ms` and the event.

use std::time::{Duration, Instant};

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use reqwest::Method;
use serde_json::Value;

use crate::engines;
use crate::live::Body;
use crate::steps::params::{at, list, Json};
use crate::world::{PoolWorld, EVENTUALLY, POLL};

/// Where a scenario's manual clock starts (2023-11-14, ms since the epoch).
const MANUAL_START_MS: u64 = 1_700_000_000_000;
/// How long a step watches for something that must *not* happen (a spawn before its time).
const QUIET: Duration = Duration::from_millis(150);
/// How long a hung engine may take to be found out: three probes that each time out after
/// the prober's fixed 2 s, plus the stop.
const HANG_DETECTION: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ the daemon and its clock

/// A table of `| key | value |` rows set before the daemon starts (a Background's policy).
#[given("the daemon is configured with:")]
fn daemon_configured(world: &mut PoolWorld, step: &Step) {
    let table = step
        .table
        .as_ref()
        .unwrap_or_else(|| panic!("the step needs a table of | key | value |"));
    for row in &table.rows {
        let [key, value] = row.as_slice() else {
            panic!("each row is | key | value |, got {row:?}");
        };
        world.setup_mut().set(key, value);
    }
}

#[given("a running daemon on a manual clock")]
async fn daemon_on_manual_clock(world: &mut PoolWorld) {
    world.setup_mut().manual_clock_at_ms = Some(MANUAL_START_MS);
    world.start_daemon().await;
}

/// A table of `| key | value |` rows, TOML keys with their table (`backoff.initial_ms`).
#[given("a running daemon on a manual clock, configured with:")]
async fn daemon_on_manual_clock_configured(world: &mut PoolWorld, step: &Step) {
    daemon_configured(world, step);
    daemon_on_manual_clock(world).await;
}

fn now_ms(world: &PoolWorld) -> u64 {
    pool_managerd::clock::Clock::now_ms(world.daemon().clock())
}

#[when(expr = "{int} ms pass(es)")]
fn ms_pass(world: &mut PoolWorld, ms: u64) {
    world.daemon().clock().advance(ms);
}

#[when(expr = "{int} second(s) pass(es)")]
fn seconds_pass(world: &mut PoolWorld, seconds: u64) {
    world
        .daemon()
        .clock()
        .advance(seconds.saturating_mul(1_000));
}

/// Moves the clock to `at_ms`, which must not be in the past.
fn clock_to(world: &PoolWorld, at_ms: u64, what: &str) {
    let now = now_ms(world);
    assert!(
        at_ms >= now,
        "{what} ({at_ms}) is already past: the clock reads {now}"
    );
    world.daemon().clock().set(at_ms);
}

// ------------------------------------------------------------------ the pool's history

/// The pool's events of `kind`, oldest first.
async fn events_of(world: &PoolWorld, pool: &str, kind: &str) -> Vec<Value> {
    world
        .events(pool)
        .await
        .into_iter()
        .filter(|e| e["event"]["kind"] == kind)
        .collect()
}

/// Waits until the pool has at least `n` events of `kind`; returns them all.
async fn await_events(world: &PoolWorld, pool: &str, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let events = events_of(world, pool, kind).await;
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "pool '{pool}' has {} {kind} event(s), not {n}, after {EVENTUALLY:?}: {:?}",
            events.len(),
            kinds(&world.events(pool).await)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The last event of `kind`, which must exist.
async fn last_of(world: &PoolWorld, pool: &str, kind: &str) -> Value {
    await_events(world, pool, kind, 1)
        .await
        .pop()
        .unwrap_or_else(|| panic!("no {kind} for pool '{pool}'"))
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn number(envelope: &Value, path: &str) -> u64 {
    at(envelope, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} of {envelope} is not a number"))
}

/// The pool's status as JSON (the whole `PoolStatus`, as the API answers it).
async fn status_json(world: &PoolWorld, pool: &str) -> Value {
    let answer = world.peek(Method::GET, &format!("/v2/pools/{pool}")).await;
    assert_eq!(answer.status, 200, "GET /v2/pools/{pool}: {}", answer.body);
    answer.body
}

/// Waits until the pool's phase is one of `phases`; returns the status.
async fn await_phase(world: &PoolWorld, pool: &str, phases: &[&str]) -> Value {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let status = status_json(world, pool).await;
        if phases.iter().any(|p| status["phase"] == *p) {
            return status;
        }
        if Instant::now() >= deadline {
            let events: Vec<String> = world
                .events(pool)
                .await
                .iter()
                .map(|e| format!("{} {}", e["ts_ms"], e["event"]))
                .collect();
            panic!(
                "pool '{pool}' did not reach a phase of {phases:?} within {EVENTUALLY:?}: {status}\nits events:\n{}",
                events.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Exactly `n` events of `kind`: waits (bounded) for them to be there, then counts.
#[then(expr = "the events of pool {string} include {int} {string}")]
async fn events_count(world: &mut PoolWorld, pool: String, n: usize, kind: String) {
    await_events(world, &pool, &kind, n).await;
    let events = world.events(&pool).await;
    let found = events.iter().filter(|e| e["event"]["kind"] == kind).count();
    assert_eq!(
        found,
        n,
        "{kind} events of pool '{pool}': {:?}",
        kinds(&events)
    );
}

#[then(expr = "the events of pool {string} end with {string}")]
async fn events_end_with(world: &mut PoolWorld, pool: String, expected: String) {
    let expected = list(&expected);
    let recorded = kinds(&world.events(&pool).await);
    let tail = recorded
        .get(recorded.len().saturating_sub(expected.len())..)
        .unwrap_or_default();
    assert_eq!(
        tail,
        expected.as_slice(),
        "last events of pool '{pool}': {recorded:?}"
    );
}

/// A field of the last event of a kind, by dotted path into the event (`reason.failure.reason`).
#[then(expr = "the last {string} of pool {string} has {string} {json}")]
async fn last_event_has(
    world: &mut PoolWorld,
    kind: String,
    pool: String,
    path: String,
    value: Json,
) {
    let envelope = last_of(world, &pool, &kind).await;
    assert_eq!(
        at(&envelope["event"], &path),
        &value.0,
        "{path} of the last {kind} of pool '{pool}': {envelope}"
    );
}

#[then(expr = "the last {string} of pool {string} has {string} containing {string}")]
async fn last_event_mentions(
    world: &mut PoolWorld,
    kind: String,
    pool: String,
    path: String,
    text: String,
) {
    let envelope = last_of(world, &pool, &kind).await;
    let field = at(&envelope["event"], &path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} of {envelope} is not text"));
    assert!(
        field.contains(&text),
        "{path} of the last {kind} of pool '{pool}' is {field:?}, without {text:?}"
    );
}

#[then(expr = "pool {string} shows {string} {json}")]
async fn pool_shows(world: &mut PoolWorld, pool: String, field: String, value: Json) {
    let status = status_json(world, &pool).await;
    assert_eq!(
        at(&status, &field),
        &value.0,
        "{field} of pool '{pool}': {status}"
    );
}

/// "ready=false is the first thing published": the pool as it was right after the failure
/// event (`?at_seq=`) is already unready with its leases dropped, and it was ready with
/// `leases` leases right before.
#[then(
    expr = "pool {string} was ready with {int} lease(s) before its {string} and unready with none right after it"
)]
async fn unready_as_of(world: &mut PoolWorld, pool: String, leases: u64, kind: String) {
    let failure = last_of(world, &pool, &kind).await;
    let seq = number(&failure, "seq");
    let events = world.events(&pool).await;
    let before = events
        .iter()
        .rev()
        .map(|e| number(e, "seq"))
        .find(|s| *s < seq)
        .unwrap_or_else(|| panic!("no event of pool '{pool}' before {failure}"));
    let earlier = status_as_of(world, &pool, before).await;
    assert_eq!(
        (&earlier["ready"], &earlier["active_leases"]),
        (&Value::Bool(true), &Value::from(leases)),
        "pool '{pool}' before its {kind} (seq {before}): {earlier}"
    );
    let after = status_as_of(world, &pool, seq).await;
    assert_eq!(
        (
            &after["ready"],
            &after["active_leases"],
            &after["slots_free"]
        ),
        (&Value::Bool(false), &Value::from(0), &Value::from(0)),
        "pool '{pool}' right after its {kind} (seq {seq}): {after}"
    );
}

/// `GET /v2/pools/{pool}?at_seq={seq}`: the pool as it was right after event `seq`.
async fn status_as_of(world: &PoolWorld, pool: &str, seq: u64) -> Value {
    let path = format!("/v2/pools/{pool}?at_seq={seq}");
    let answer = world.peek(Method::GET, &path).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.body
}

// ------------------------------------------------------------------ engines that fail

/// Prepares `pool` with engine-sim `flags` and preloads it without waiting (202): an engine
/// that crashes while it starts fails the preload, and the restart policy takes over. The
/// step ends once that first failure is answered.
#[given(expr = "pool {string} is crash-looping with an engine-sim started with {string}")]
async fn crash_looping(world: &mut PoolWorld, pool: String, flags: String) {
    world.prepare_engine_sim(&pool, &flags);
    preload_no_wait(world, &pool).await;
}

/// Waits until the pool waits out a backoff delay (`backoff_ms` > 0) or its breaker is open:
/// the restart policy's settled answer. A first failure's restart is immediate (delay 0), so a
/// `backoff` phase with `backoff_ms` 0 is only passing through.
pub(super) async fn await_settled(world: &PoolWorld, pool: &str) -> Value {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let status = await_phase(world, pool, &["backoff", "circuit_open"]).await;
        if status["phase"] == "circuit_open" || number(&status, "backoff_ms") > 0 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "pool '{pool}' did not settle in a backoff delay or an open breaker within {EVENTUALLY:?}: {status}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An engine that fails again each time it starts: its first failure is restarted at once,
/// the next one waits out a backoff delay.
#[then(expr = "pool {string} settles in backoff")]
async fn settles_in_backoff(world: &mut PoolWorld, pool: String) {
    let status = await_settled(world, &pool).await;
    assert_eq!(status["phase"], "backoff", "pool '{pool}': {status}");
}

/// A one-off failure: restart 1 is scheduled with no delay and started at its time.
#[then(expr = "pool {string} is restarted at once")]
async fn restarted_at_once(world: &mut PoolWorld, pool: String) {
    let restarts = await_events(world, &pool, "RestartScheduled", 1).await;
    let first = &restarts[0];
    assert_eq!(
        (
            number(first, "event.attempt"),
            number(first, "event.delay_ms")
        ),
        (1, 0),
        "the first restart of pool '{pool}': {first}"
    );
    let starts = await_events(world, &pool, "EngineStartRequested", 1).await;
    let restart = starts
        .iter()
        .find(|e| e["event"]["purpose"] == "restart")
        .unwrap_or_else(|| panic!("pool '{pool}' was not restarted: {starts:?}"));
    assert_eq!(
        number(restart, "ts_ms"),
        number(first, "ts_ms"),
        "pool '{pool}' restarted at once: {restart} after {first}"
    );
}

/// Preloads without waiting (202), then waits for the restart policy's settled answer: the
/// first failure is restarted at once, the second backs off (or the breaker opens).
async fn preload_no_wait(world: &mut PoolWorld, pool: &str) {
    let answer = world
        .post_preload(pool, &format!("/v2/pools/{pool}/preload?wait=false"))
        .await
        .clone();
    assert_eq!(
        answer.status, 202,
        "preload of pool '{pool}': {}",
        answer.body
    );
    let status = await_settled(world, pool).await;
    let crashes = number(&status, "crash_count");
    assert!(
        crashes == 2 || (crashes == 1 && status["phase"] == "circuit_open"),
        "pool '{pool}' failed, was restarted at once and failed again: {status}"
    );
    let events = world.events(pool).await;
    assert!(
        events.iter().any(|e| e["event"]["kind"] == "EngineSpawned"),
        "the first engine of pool '{pool}' was never spawned: {events:?}"
    );
}

fn flags_file(world: &mut PoolWorld, pool: &str) -> std::path::PathBuf {
    world.dir().join(format!("{pool}.engine-flags"))
}

fn write_flags(world: &mut PoolWorld, pool: &str, flags: &str) {
    let file = flags_file(world, pool);
    std::fs::write(&file, flags).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// An engine whose flags are read from a file at each start (see
/// `engines::switchable_engine_sim`), preloaded without waiting.
#[given(expr = "pool {string} is crash-looping with a switchable engine-sim started with {string}")]
async fn switchable_crash_looping(world: &mut PoolWorld, pool: String, flags: String) {
    write_flags(world, &pool, &flags);
    let file = flags_file(world, &pool);
    let engine = engines::switchable_engine_sim(&pool, engines::free_port(), &file);
    world.prepared.insert(pool.clone(), engine);
    preload_no_wait(world, &pool).await;
}

#[when(expr = "the next engines of pool {string} are started with {string}")]
fn next_engines_with(world: &mut PoolWorld, pool: String, flags: String) {
    assert!(
        world.prepared_mut(&pool)["binary_path"] == "/bin/sh",
        "pool '{pool}' has no switchable engine"
    );
    write_flags(world, &pool, &flags);
}

/// The signals a step may send. Not SIGSEGV or SIGBUS: the Rust runtime of engine-sim
/// handles those (stack-overflow guard), and one sent with kill(2) is survived once.
fn signal_named(name: &str) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    match name {
        "SIGABRT" => Signal::SIGABRT,
        "SIGKILL" => Signal::SIGKILL,
        "SIGTERM" => Signal::SIGTERM,
        other => panic!("no such signal in this suite: {other}"),
    }
}

/// A signal from outside the daemon (the kernel's OOM killer sends SIGKILL).
#[when(expr = "the engine of pool {string} is killed by {word} from outside the daemon")]
async fn killed_from_outside(world: &mut PoolWorld, pool: String, signal: String) {
    let engine = world.engine_of(&pool).await;
    assert!(
        engine.signal_group(signal_named(&signal)),
        "the engine of pool '{pool}' (pid {}) was not running",
        engine.pid
    );
}

#[when(expr = "the engine of pool {string} is found hung")]
async fn found_hung(world: &mut PoolWorld, pool: String) {
    let deadline = Instant::now() + HANG_DETECTION;
    loop {
        let status = status_json(world, &pool).await;
        if status["ready"] == false {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool '{pool}' is still ready {HANG_DETECTION:?} after its engine hung: {status}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ------------------------------------------------------------------ restarts

/// The last restart the pool has scheduled.
async fn last_restart(world: &PoolWorld, pool: &str) -> Value {
    last_of(world, pool, "RestartScheduled").await
}

#[when(expr = "the clock reaches {int} ms before the restart time of pool {string}")]
async fn clock_before_restart(world: &mut PoolWorld, ms: u64, pool: String) {
    let restart = last_restart(world, &pool).await;
    let at_ms = number(&restart, "event.not_before_ms").saturating_sub(ms);
    clock_to(world, at_ms, "the time before the restart");
}

/// The `Retry-After` of the last answer is the time from the daemon's clock to the restart
/// the pool last scheduled, in whole seconds rounded up (at least 1).
#[then(expr = "the answer says to retry after the seconds left until the restart of pool {string}")]
async fn retry_after_restart(world: &mut PoolWorld, pool: String) {
    let restart = last_restart(world, &pool).await;
    let left_ms = number(&restart, "event.not_before_ms").saturating_sub(now_ms(world));
    let seconds = left_ms.div_ceil(1_000).max(1);
    let answer = world.answer();
    assert_eq!(
        answer.retry_after.as_deref(),
        Some(seconds.to_string().as_str()),
        "Retry-After of {} ({} ms to the restart {restart}): {}",
        answer.request,
        left_ms,
        answer.body
    );
}

#[when(expr = "the clock reaches the restart time of pool {string}")]
async fn clock_at_restart(world: &mut PoolWorld, pool: String) {
    let restart = last_restart(world, &pool).await;
    clock_to(
        world,
        number(&restart, "event.not_before_ms"),
        "the restart time",
    );
}

/// Lets the scheduled restart of `pool` happen (the clock moves to its time) and waits for
/// the restarted engine to fail again and the policy to answer.
async fn let_restart_fail(world: &PoolWorld, pool: &str) {
    let_restart_fail_at(world, pool, None).await;
}

/// As [`let_restart_fail`], the clock moved to `at_ms` (no earlier than the restart's time)
/// instead of the restart's time: the restart starts, and fails, at `at_ms`.
async fn let_restart_fail_at(world: &PoolWorld, pool: &str, at_ms: Option<u64>) {
    let status = await_phase(world, pool, &["backoff"]).await;
    let crashes = number(&status, "crash_count");
    let restart = last_restart(world, pool).await;
    let not_before = number(&restart, "event.not_before_ms");
    let at_ms = at_ms.unwrap_or(not_before);
    assert!(
        at_ms >= not_before,
        "the scenario lets the restart of pool '{pool}' through at {at_ms}, before its time: {restart}"
    );
    // Another pool's steps may have moved the shared clock past this restart already: then
    // it is under way, and only its failure is awaited.
    if at_ms > now_ms(world) {
        clock_to(world, at_ms, "the restart time");
    }
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let status = status_json(world, pool).await;
        let settled = status["phase"] == "backoff" || status["phase"] == "circuit_open";
        if number(&status, "crash_count") > crashes && settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restart of pool '{pool}' at {} did not fail and get an answer within {EVENTUALLY:?}: {status}",
            number(&restart, "event.not_before_ms")
        );
        tokio::time::sleep(POLL).await;
    }
}

#[when(expr = "the restarts of pool {string} are let through {int} time(s), each failing")]
async fn restarts_let_through(world: &mut PoolWorld, pool: String, times: u32) {
    for _ in 0..times {
        let_restart_fail(world, &pool).await;
    }
}

/// The time of the pool's first failure (the failure of its preload).
async fn first_failure_ms(world: &PoolWorld, pool: &str) -> u64 {
    let failures = await_events(world, pool, "PreloadFailed", 1).await;
    failures
        .first()
        .map_or(0, |failure| number(failure, "ts_ms"))
}

#[then(expr = "the first failure of pool {string} is on a multiple of {int} ms")]
async fn first_failure_on(world: &mut PoolWorld, pool: String, ms: u64) {
    let first = first_failure_ms(world, &pool).await;
    assert_eq!(
        first % ms,
        0,
        "the first failure of pool '{pool}' at {first}"
    );
}

/// Each restart in turn is let through at its offset from the pool's first failure (the
/// clock moved there), and fails at once.
#[when(
    expr = "the restarts of pool {string} are let through at {string} ms after its first failure, each failing"
)]
async fn restarts_let_through_at(world: &mut PoolWorld, pool: String, offsets: String) {
    let first = first_failure_ms(world, &pool).await;
    for offset in list(&offsets) {
        let offset: u64 = offset
            .parse()
            .unwrap_or_else(|e| panic!("{offset:?}: not a number of ms ({e})"));
        let_restart_fail_at(world, &pool, Some(first + offset)).await;
    }
}

#[when(expr = "pool {string} fails {int} time(s) in all, each restart let through at its time")]
async fn fails_in_all(world: &mut PoolWorld, pool: String, failures: u64) {
    await_phase(world, &pool, &["backoff", "circuit_open"]).await;
    loop {
        let status = status_json(world, &pool).await;
        let crashes = number(&status, "crash_count");
        if crashes >= failures {
            assert_eq!(crashes, failures, "failures of pool '{pool}': {status}");
            return;
        }
        assert_eq!(
            status["phase"], "backoff",
            "pool '{pool}' stopped restarting after {crashes} failure(s): {status}"
        );
        let_restart_fail(world, &pool).await;
    }
}

#[when(expr = "the restart of pool {string} is let through")]
async fn restart_let_through(world: &mut PoolWorld, pool: String) {
    await_phase(world, &pool, &["backoff"]).await;
    clock_at_restart(world, pool).await;
}

/// The delay a restart of `attempt` after `reason` has before jitter, by the daemon's policy:
/// 0 for the first, then `initial * factor^(attempt-2) * multiplier` capped at `max_ms`.
fn nominal_delay(world: &PoolWorld, attempt: u32, reason: &str) -> f64 {
    let backoff = &world.daemon().config().backoff;
    let multiplier = match reason {
        "cuda_error" => backoff.reason_multiplier.cuda_error,
        "vram_oom" => backoff.reason_multiplier.vram_oom,
        "driver_error" => backoff.reason_multiplier.driver_error,
        "oom_killed" => backoff.reason_multiplier.oom_killed,
        "signal" => backoff.reason_multiplier.signal,
        "health_timeout" => backoff.reason_multiplier.health_timeout,
        "unknown" => backoff.reason_multiplier.unknown,
        "stalled" => backoff.reason_multiplier.stalled,
        _ => backoff.reason_multiplier.crash,
    };
    if attempt <= 1 {
        // A first failure restarts at once.
        return 0.0;
    }
    let exponent = i32::try_from(attempt.saturating_sub(2)).unwrap_or(i32::MAX);
    let base = backoff.initial_ms as f64 * backoff.factor.powi(exponent) * multiplier;
    base.min(backoff.max_ms as f64)
}

/// Checks one `RestartScheduled` against the policy: its delay within the jitter around
/// `nominal` (capped at `max_ms`, at least `min_ms`) and `not_before_ms == ts_ms + delay_ms`.
fn check_delay(world: &PoolWorld, restart: &Value, nominal: f64) {
    let backoff = &world.daemon().config().backoff;
    let delay = number(restart, "event.delay_ms");
    if nominal == 0.0 {
        assert_eq!(delay, 0, "a first restart is immediate: {restart}");
        assert_eq!(
            number(restart, "event.not_before_ms"),
            number(restart, "ts_ms")
        );
        return;
    }
    let low =
        ((nominal * (1.0 - backoff.jitter)).floor() as u64).clamp(backoff.min_ms, backoff.max_ms);
    let high =
        ((nominal * (1.0 + backoff.jitter)).ceil() as u64).clamp(backoff.min_ms, backoff.max_ms);
    assert!(
        (low..=high).contains(&delay),
        "delay {delay} ms is not within {low}..={high} ms (nominal {nominal} ms, jitter {}): {restart}",
        backoff.jitter
    );
    assert_eq!(
        number(restart, "event.not_before_ms"),
        number(restart, "ts_ms") + delay,
        "not_before_ms is the decision time plus the delay: {restart}"
    );
}

/// The delays (before jitter) of the pool's restarts, in order: each recorded
/// `RestartScheduled` is attempt n, its delay within the jitter of what the policy gives (0 for
/// the first, then `initial * factor^(n-2) * multiplier`, capped at `max_ms`, at least `min_ms`),
/// and the scenario's figure is that policy's.
#[then(expr = "the restart delays of pool {string} were about {string} ms")]
async fn restart_delays(world: &mut PoolWorld, pool: String, nominal: String) {
    let nominal: Vec<f64> = list(&nominal)
        .iter()
        .map(|n| n.parse().unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect();
    let restarts = await_events(world, &pool, "RestartScheduled", nominal.len()).await;
    assert_eq!(
        restarts.len(),
        nominal.len(),
        "restarts of pool '{pool}': {restarts:?}"
    );
    let min_ms = world.daemon().config().backoff.min_ms as f64;
    for (i, (restart, nominal)) in restarts.iter().zip(&nominal).enumerate() {
        let attempt = u32::try_from(i + 1).unwrap_or(u32::MAX);
        assert_eq!(
            number(restart, "event.attempt"),
            u64::from(attempt),
            "attempt of restart {attempt}: {restart}"
        );
        let reason = restart["event"]["reason"].as_str().unwrap_or_default();
        let base = nominal_delay(world, attempt, reason);
        let expected = if attempt <= 1 { 0.0 } else { base.max(min_ms) };
        assert!(
            (expected - nominal).abs() < 0.5,
            "the scenario says restart {attempt} waits about {nominal} ms, the policy {expected} ms",
        );
        check_delay(world, restart, base);
    }
}

#[then(
    expr = "restart {int} of pool {string} was scheduled about {int} ms after a {string} failure"
)]
async fn restart_n_scheduled(
    world: &mut PoolWorld,
    n: usize,
    pool: String,
    nominal: u64,
    reason: String,
) {
    let restarts = await_events(world, &pool, "RestartScheduled", n).await;
    let restart = restarts
        .get(n.saturating_sub(1))
        .unwrap_or_else(|| panic!("no restart {n}"));
    assert_eq!(
        restart["event"]["reason"],
        reason.as_str(),
        "reason of restart {n} of pool '{pool}': {restart}"
    );
    let attempt = number(restart, "event.attempt");
    let policy = nominal_delay(world, u32::try_from(attempt).unwrap_or(u32::MAX), &reason);
    assert!(
        (policy - nominal as f64).abs() < 0.5,
        "the scenario says about {nominal} ms, the policy {policy} ms for attempt {attempt}"
    );
    check_delay(world, restart, nominal as f64);
}

#[then(expr = "pool {string} waits out the restart delay it shows")]
async fn waits_shown_delay(world: &mut PoolWorld, pool: String) {
    let status = await_phase(world, &pool, &["backoff"]).await;
    let restart = last_restart(world, &pool).await;
    assert_eq!(
        status["backoff_ms"], restart["event"]["delay_ms"],
        "backoff_ms of pool '{pool}' and its last RestartScheduled: {status} {restart}"
    );
}

/// Nothing starts while the clock stands still before its time: for [`QUIET`] the phase and
/// the number of engines spawned stay as they are.
#[then(expr = "pool {string} stays in phase {string} with {int} engine(s) spawned")]
async fn stays_in_phase(world: &mut PoolWorld, pool: String, phase: String, spawned: usize) {
    let until = Instant::now() + QUIET;
    loop {
        let status = status_json(world, &pool).await;
        let engines = events_of(world, &pool, "EngineSpawned").await.len();
        assert_eq!(
            (status["phase"].as_str(), engines),
            (Some(phase.as_str()), spawned),
            "(phase, engines spawned) of pool '{pool}' at clock {}: {status}",
            now_ms(world)
        );
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The n-th engine is spawned, at the restart time exactly (the clock stands there).
#[then(expr = "engine {int} of pool {string} is spawned at its restart time")]
async fn spawned_at_restart_time(world: &mut PoolWorld, n: usize, pool: String) {
    let spawned = await_events(world, &pool, "EngineSpawned", n).await;
    let spawn = spawned
        .get(n.saturating_sub(1))
        .unwrap_or_else(|| panic!("no engine {n}"));
    let restart = last_restart(world, &pool).await;
    assert_eq!(
        number(spawn, "ts_ms"),
        number(&restart, "event.not_before_ms"),
        "engine {n} of pool '{pool}' spawned at its restart time: {spawn} after {restart}"
    );
    assert_eq!(
        number(spawn, "event.attempt"),
        number(&restart, "event.attempt")
    );
}

/// Every restart started no earlier than the time its `RestartScheduled` gave.
#[then(expr = "no restart of pool {string} started before its time")]
async fn no_early_restart(world: &mut PoolWorld, pool: String) {
    let events = world.events(&pool).await;
    let mut not_before = None;
    let mut checked = 0;
    for envelope in &events {
        match envelope["event"]["kind"].as_str() {
            Some("RestartScheduled") => not_before = Some(number(envelope, "event.not_before_ms")),
            Some("EngineStartRequested") if envelope["event"]["purpose"] == "restart" => {
                let due = not_before
                    .take()
                    .unwrap_or_else(|| panic!("a restart without a schedule: {envelope}"));
                assert!(
                    number(envelope, "ts_ms") >= due,
                    "restart of pool '{pool}' at {} before {due}: {envelope}",
                    number(envelope, "ts_ms")
                );
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(
        checked > 0,
        "pool '{pool}' was never restarted: {:?}",
        kinds(&events)
    );
}

/// Two pools that crash at the same moments choose different delays (thundering herd).
#[then(expr = "pools {string} and {string} chose different restart delays")]
async fn different_delays(world: &mut PoolWorld, a: String, b: String) {
    let delays = |events: Vec<Value>| -> Vec<u64> {
        events.iter().map(|e| number(e, "event.delay_ms")).collect()
    };
    let first = delays(events_of(world, &a, "RestartScheduled").await);
    let second = delays(events_of(world, &b, "RestartScheduled").await);
    assert!(
        !first.is_empty() && first.len() == second.len(),
        "{first:?} {second:?}"
    );
    assert_ne!(first, second, "pools '{a}' and '{b}' chose the same delays");
}

#[then(expr = "the restart delays of pool {string} are not all exactly nominal")]
async fn jittered(world: &mut PoolWorld, pool: String) {
    let restarts = events_of(world, &pool, "RestartScheduled").await;
    assert!(restarts.len() >= 2, "too few restarts: {restarts:?}");
    let off = restarts.iter().any(|r| {
        let attempt = u32::try_from(number(r, "event.attempt")).unwrap_or(u32::MAX);
        let reason = r["event"]["reason"].as_str().unwrap_or_default();
        (nominal_delay(world, attempt, reason) - number(r, "event.delay_ms") as f64).abs() >= 1.0
    });
    assert!(
        off,
        "every delay of pool '{pool}' is exactly nominal: no jitter? {restarts:?}"
    );
}

// ------------------------------------------------------------------ the breaker

#[when(expr = "the clock reaches the half-open time of pool {string}")]
async fn clock_at_half_open(world: &mut PoolWorld, pool: String) {
    let opened = last_of(world, &pool, "CircuitOpened").await;
    clock_to(
        world,
        number(&opened, "event.half_open_at_ms"),
        "the half-open time",
    );
}

#[when(expr = "the clock reaches {int} ms before the half-open time of pool {string}")]
async fn clock_before_half_open(world: &mut PoolWorld, ms: u64, pool: String) {
    let opened = last_of(world, &pool, "CircuitOpened").await;
    let at_ms = number(&opened, "event.half_open_at_ms").saturating_sub(ms);
    clock_to(world, at_ms, "the time before half-open");
}

/// A stable-run timer the last `PoolReady` armed: `field` of that event.
async fn clock_at_ready_timer(world: &PoolWorld, pool: &str, field: &str, what: &str) {
    let ready = last_of(world, pool, "PoolReady").await;
    clock_to(world, number(&ready, field), what);
}

#[when(expr = "the clock reaches the breaker-close time of pool {string}")]
async fn clock_at_breaker_close(world: &mut PoolWorld, pool: String) {
    clock_at_ready_timer(
        world,
        &pool,
        "event.breaker_close_at_ms",
        "the breaker-close time",
    )
    .await;
}

#[when(expr = "the clock reaches the backoff-reset time of pool {string}")]
async fn clock_at_backoff_reset(world: &mut PoolWorld, pool: String) {
    clock_at_ready_timer(
        world,
        &pool,
        "event.backoff_reset_at_ms",
        "the backoff-reset time",
    )
    .await;
}

#[when(expr = "the breaker of pool {string} is reset")]
async fn breaker_reset(world: &mut PoolWorld, pool: String) {
    world
        .request(
            Method::POST,
            &format!("/v2/pools/{pool}/breaker/reset"),
            Body::Empty,
        )
        .await;
}

#[then(expr = "the breaker of pool {string} opened at its failure, for {int} ms")]
async fn breaker_opened_for(world: &mut PoolWorld, pool: String, open_ms: u64) {
    let opened = last_of(world, &pool, "CircuitOpened").await;
    assert_eq!(number(&opened, "event.open_ms"), open_ms, "{opened}");
    assert_eq!(
        number(&opened, "event.half_open_at_ms"),
        number(&opened, "ts_ms") + open_ms,
        "half_open_at_ms is the opening time plus open_ms: {opened}"
    );
}

/// The event of `kind` that `timer` (an event before it) armed: the last one, at the time
/// `field` of `timer` gave, caused by `timer` (a timer names the event that armed it), and the
/// pool's breaker as of that event is `breaker` (as of the event before it, something else).
async fn fired_at_armed_time(
    world: &PoolWorld,
    pool: &str,
    kind: &str,
    timer: &str,
    field: &str,
    breaker: &str,
) {
    let fired = last_of(world, pool, kind).await;
    let seq = number(&fired, "seq");
    let events = world.events(pool).await;
    let armed = events
        .iter()
        .rev()
        .filter(|e| number(e, "seq") < seq)
        .find(|e| e["event"]["kind"] == timer)
        .unwrap_or_else(|| panic!("no {timer} of pool '{pool}' before {fired}"));
    assert_eq!(
        (number(&fired, "ts_ms"), number(&fired, "cause")),
        (number(armed, field), number(armed, "seq")),
        "(ts_ms, cause) of the {kind} of pool '{pool}' against ({field}, seq) of the {timer} that armed it: {fired} after {armed}"
    );
    let before = status_as_of(world, pool, seq - 1).await;
    let after = status_as_of(world, pool, seq).await;
    assert!(
        before["breaker"] != breaker && after["breaker"] == breaker,
        "the {kind} of pool '{pool}' (seq {seq}) set its breaker to {breaker:?}: before {before}, after {after}"
    );
}

#[then(expr = "the breaker of pool {string} half-opened at the half-open time its opening set")]
async fn half_opened_on_time(world: &mut PoolWorld, pool: String) {
    let (kind, timer) = ("CircuitHalfOpened", "CircuitOpened");
    fired_at_armed_time(
        world,
        &pool,
        kind,
        timer,
        "event.half_open_at_ms",
        "half_open",
    )
    .await;
}

#[then(
    expr = "the breaker of pool {string} closed at the breaker-close time its trial's readiness set"
)]
async fn closed_on_time(world: &mut PoolWorld, pool: String) {
    let (kind, timer) = ("CircuitClosed", "PoolReady");
    fired_at_armed_time(
        world,
        &pool,
        kind,
        timer,
        "event.breaker_close_at_ms",
        "closed",
    )
    .await;
}

/// The last trial start, and the opening of the breaker it was the trial of.
#[then(expr = "the half-open trial of pool {string} started at its half-open time")]
async fn trial_at_half_open(world: &mut PoolWorld, pool: String) {
    await_events(world, &pool, "CircuitHalfOpened", 1).await;
    let events = world.events(&pool).await;
    let trial = events
        .iter()
        .rev()
        .find(|e| e["event"]["kind"] == "EngineStartRequested" && e["event"]["purpose"] == "trial")
        .unwrap_or_else(|| panic!("no trial start of pool '{pool}': {:?}", kinds(&events)));
    let opened = events
        .iter()
        .rev()
        .filter(|e| number(e, "seq") < number(trial, "seq"))
        .find(|e| e["event"]["kind"] == "CircuitOpened")
        .unwrap_or_else(|| panic!("a trial of pool '{pool}' with no breaker open before it"));
    assert_eq!(
        number(trial, "ts_ms"),
        number(opened, "event.half_open_at_ms"),
        "the trial started at the half-open time: {trial} after {opened}"
    );
}

#[then(expr = "a preload of pool {string} is refused with {int} {string}")]
async fn preload_refused(world: &mut PoolWorld, pool: String, status: u16, code: String) {
    let answer = world.preload(&pool).await.clone();
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (status, Some(code.as_str())),
        "preload of pool '{pool}': {}",
        answer.body
    );
}

/// Prepares an engine-sim for `pool` with the doc string's lines as its extra arguments,
/// one argument a line (so that an argument may hold spaces).
fn prepare_with_arguments(world: &mut PoolWorld, pool: &str, step: &Step) {
    let text = step
        .docstring
        .as_deref()
        .unwrap_or_else(|| panic!("the step needs a doc string: one argument a line"));
    world.prepare_engine_sim(pool, "");
    let flags = world.prepared_mut(pool)["flags"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("flags are a list"));
    flags.extend(
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| Value::String(line.to_string())),
    );
}

#[given(expr = "pool {string} is crash-looping with an engine-sim started with these arguments:")]
async fn crash_looping_with_arguments(world: &mut PoolWorld, pool: String, step: &Step) {
    prepare_with_arguments(world, &pool, step);
    preload_no_wait(world, &pool).await;
}

#[given(expr = "pool {string} is ready with an engine-sim started with these arguments:")]
async fn ready_with_arguments(world: &mut PoolWorld, pool: String, step: &Step) {
    prepare_with_arguments(world, &pool, step);
    world.preload_ready(&pool).await;
}

/// Constant restart delays of `ms` (the backoff's initial delay; the scenario's policy has no
/// growth and no jitter). Before the daemon starts.
#[given(expr = "the daemon's restarts are spaced {int} ms apart")]
fn restarts_spaced(world: &mut PoolWorld, ms: u64) {
    let setup = world.setup_mut();
    setup.set(
        "backoff.max_ms",
        &ms.max(setup.config.backoff.max_ms).to_string(),
    );
    setup.set("backoff.initial_ms", &ms.to_string());
    assert!(
        setup.config.backoff.factor == 1.0 && setup.config.backoff.jitter == 0.0,
        "spaced restarts need backoff.factor 1.0 and backoff.jitter 0"
    );
}
