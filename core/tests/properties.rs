//! Properties: `evolve` is total on any event sequence, `decide` is total on any state and
//! input, and replay (from scratch or from a bincode snapshot) equals the incremental state.

mod support;

use pool_core::*;
use proptest::prelude::*;
use support::*;

const POOLS: [&str; 3] = ["p1", "p2", "p3"];

fn arb_reason() -> impl Strategy<Value = ExitReason> {
    prop_oneof![
        Just(ExitReason::Graceful),
        Just(ExitReason::Crash),
        Just(ExitReason::Signal),
        Just(ExitReason::OomKilled),
        Just(ExitReason::CudaError),
        Just(ExitReason::VramOom),
        Just(ExitReason::DriverError),
        Just(ExitReason::HealthTimeout),
        Just(ExitReason::Unknown),
        Just(ExitReason::Stalled),
    ]
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z/._ ]{0,12}", any::<String>()]
}

fn arb_split() -> impl Strategy<Value = Option<TensorSplit>> {
    prop_oneof![
        Just(None),
        Just(Some(TensorSplit::Auto)),
        prop::collection::vec(any::<f64>(), 0..4).prop_map(|r| Some(TensorSplit::Ratios(r))),
        Just(Some(TensorSplit::Ratios(vec![0.5, 0.5]))),
    ]
}

fn arb_mask() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("0".to_string())),
        Just(Some("0,1".to_string())),
        Just(Some("GPU1,MIG-x".to_string())),
        Just(Some("MIG-x".to_string())),
        "[0-2GPUMIG,x -]{0,8}".prop_map(Some),
    ]
}

fn arb_engine() -> impl Strategy<Value = PreparedEngine> {
    (
        prop::sample::select(&POOLS[..]),
        any::<u16>(),
        prop::option::of(0u32..10),
        arb_text(),
        (arb_split(), arb_mask(), prop::option::of(any::<u64>())),
    )
        .prop_map(|(pool, port, slots, model, (split, mask, vram))| {
            let mut e = engine(pool);
            e.port = port;
            e.slots_total = slots;
            if !model.is_empty() {
                e.model_path = model;
            }
            e.tensor_split = split;
            if mask.is_some() {
                e.device_mask = mask;
            }
            e.vram_required_bytes = vram;
            e
        })
}

fn arb_migs() -> impl Strategy<Value = Vec<MigDeviceInfo>> {
    prop::collection::vec(
        ("MIG-[xy]", 0u32..3, any::<u64>()).prop_map(|(uuid, parent_index, free)| MigDeviceInfo {
            uuid,
            parent_index,
            name: "1g.10gb".into(),
            vram_total_bytes: free,
            vram_free_bytes: free,
        }),
        0..3,
    )
}

fn arb_stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::Requested),
        Just(StopReason::Remove),
        Just(StopReason::Drained),
        Just(StopReason::DrainDeadline),
        (arb_reason(), arb_text())
            .prop_map(|(reason, detail)| StopReason::Failure { reason, detail }),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    let pid = 0u32..4;
    let small = 0u64..5;
    prop_oneof![
        (arb_text(), any::<u32>()).prop_map(|(version, pid)| Event::DaemonStarted { version, pid }),
        arb_text().prop_map(|reason| Event::DaemonStopped { reason }),
        prop::collection::vec((0u32..3, "GPU-[ab]").prop_map(|(i, u)| gpu(i, &u)), 0..3)
            .prop_map(|gpus| Event::GpuInventoryObserved { gpus }),
        arb_text().prop_map(|reason| Event::PreflightFailed { reason }),
        arb_migs().prop_map(|devices| Event::MigInventoryObserved { devices }),
        any::<u32>().prop_map(|xid| Event::GpuXidObserved {
            gpu_uuid: "GPU-a".into(),
            xid
        }),
        arb_engine().prop_map(|engine| Event::PreloadRequested {
            engine: Box::new(engine),
        }),
        (pid.clone(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
            |(pid, start_time, attempt, at)| Event::EngineSpawned {
                pid,
                start_time,
                log_path: "l".into(),
                pid_path: "p".into(),
                attempt,
                health_deadline_at_ms: at,
                boot_id: Some(BOOT_ID.into()),
            }
        ),
        (any::<u64>(), any::<u32>()).prop_map(|(after_ms, slots_total)| Event::HealthCheckPassed {
            after_ms,
            engine_version: "v".into(),
            slots_total,
            exe: None,
        }),
        (any::<u64>(), prop::option::of(any::<u64>())).prop_map(|(a, b)| Event::PoolReady {
            handoff_path: "h".into(),
            backoff_reset_at_ms: a,
            breaker_close_at_ms: b
        }),
        (arb_reason(), prop::option::of(pid.clone())).prop_map(|(cause, pid)| {
            Event::PreloadFailed {
                reason: "r".into(),
                failure: StartFailure::SpawnFailed,
                cause,
                pid,
            }
        }),
        "[a-c]".prop_map(|l| Event::LeaseGranted {
            lease_id: lease(&l)
        }),
        "[a-c]".prop_map(|l| Event::LeaseReleased {
            lease_id: lease(&l)
        }),
        any::<u32>().prop_map(|consecutive| Event::HealthCheckFailed { consecutive }),
        (pid.clone(), arb_reason(), arb_text()).prop_map(|(pid, reason, detail)| {
            Event::EngineExited {
                pid,
                exit_code: Some(1),
                signal: None,
                reason,
                detail,
            }
        }),
        (any::<u32>(), any::<u64>(), any::<u64>(), arb_reason()).prop_map(
            |(attempt, delay_ms, not_before_ms, reason)| Event::RestartScheduled {
                attempt,
                delay_ms,
                not_before_ms,
                reason
            }
        ),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(failures, open_ms, at)| {
            Event::CircuitOpened {
                failures,
                open_ms,
                class: FailureClass::Other,
                half_open_at_ms: at,
            }
        }),
        Just(Event::CircuitHalfOpened),
        Just(Event::CircuitClosed),
        Just(Event::CircuitReset { by: "x".into() }),
        (any::<u32>(), any::<u64>()).prop_map(|(restarts, window_ms)| {
            Event::RestartStormDetected {
                restarts,
                window_ms,
                classification: StormClass::HangStorm,
                hint: "h".into(),
            }
        }),
        pid.clone().prop_map(|pid| Event::EngineAdopted { pid }),
        pid.clone().prop_map(|pid| Event::EngineLost { pid }),
        (any::<u64>(), any::<u64>()).prop_map(|(deadline_ms, deadline_at_ms)| {
            Event::DrainRequested {
                deadline_ms,
                deadline_at_ms,
            }
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(duration_ms, leases_at_stop)| {
            Event::DrainCompleted {
                outcome: DrainOutcome::Graceful,
                duration_ms,
                leases_at_stop,
            }
        }),
        (
            arb_stop_reason(),
            prop::option::of(pid.clone()),
            small.clone()
        )
            .prop_map(|(reason, pid, grace_ms)| Event::EngineStopRequested {
                reason,
                pid,
                grace_ms
            }),
        (pid.clone(), any::<bool>())
            .prop_map(|(pid, graceful)| Event::EngineStopped { pid, graceful }),
        (arb_text(), any::<u64>()).prop_map(|(m, d)| Event::ReloadRequested {
            new_model_ref: m,
            digest: None,
            drain_deadline_ms: d
        }),
        arb_text().prop_map(|path| Event::ModelStaged { path, digest: None }),
        (arb_text(), any::<u64>()).prop_map(|(new, duration_ms)| Event::ReloadSucceeded {
            old: "o".into(),
            new,
            duration_ms
        }),
        (any::<bool>(), prop::option::of(pid.clone())).prop_map(|(rolling_back, pid)| {
            Event::ReloadFailed {
                reason: "r".into(),
                stage: ReloadStage::Starting,
                rolling_back,
                pid,
            }
        }),
        arb_text().prop_map(|model_ref| Event::ReloadRolledBack {
            model_ref,
            duration_ms: 1
        }),
        pid.clone().prop_map(|pid| Event::DeviceMaskViolation {
            pid,
            gpu_uuid: "GPU-z".into()
        }),
        Just(Event::PoolRemoved),
        (0u32..6, prop::option::of(pid.clone())).prop_map(|(slots_total, pid)| {
            Event::HandoffRegistered {
                handoff: Box::new(Handoff {
                    engine: "e".into(),
                    engine_version: "v".into(),
                    url: "u".into(),
                    pool_id: "p1".into(),
                    replica_id: "r".into(),
                    model: HandoffModel { path: "m".into() },
                    flags: vec![],
                    device_mask: None,
                    slots_total,
                    pid,
                }),
                path: "f".into(),
            }
        }),
        (
            arb_engine(),
            any::<u32>(),
            prop_oneof![
                Just(StartPurpose::Restart),
                Just(StartPurpose::Trial),
                Just(StartPurpose::Reload),
                Just(StartPurpose::Rollback)
            ]
        )
            .prop_map(|(engine, attempt, purpose)| Event::EngineStartRequested {
                engine: Box::new(engine),
                attempt,
                purpose
            }),
        any::<u32>().prop_map(|after_failures| Event::HealthCheckRecovered { after_failures }),
        any::<u32>().prop_map(|previous_attempt| Event::BackoffReset { previous_attempt }),
        (pid, any::<u64>())
            .prop_map(|(pid, used_bytes)| Event::VramUsageObserved { pid, used_bytes }),
        arb_loss_marker(),
        ("GPU-[ab]", any::<u32>())
            .prop_map(|(gpu_uuid, faults)| Event::GpuQuarantined { gpu_uuid, faults }),
        "GPU-[ab]".prop_map(|gpu_uuid| Event::GpuUnquarantined {
            gpu_uuid,
            by: "ops".into()
        }),
        "GPU-[ab]".prop_map(|gpu_uuid| Event::DriverResetObserved { gpu_uuid }),
        "GPU-[ab]".prop_map(|gpu_uuid| Event::RestartHeld { gpu_uuid }),
    ]
}

/// A loss marker as `journal repair --accept-loss` writes it (any range, even a reversed one:
/// evolve must not care).
fn arb_loss_marker() -> impl Strategy<Value = Event> {
    (any::<u64>(), any::<u64>(), arb_text()).prop_map(|(from_seq, to_seq, reason)| {
        Event::JournalLossAccepted {
            from_seq,
            to_seq,
            reason,
        }
    })
}

fn arb_pool_ref() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("p1")),
        Just(Some("p2")),
        Just(Some("p3")),
        Just(Some("not a valid id!"))
    ]
}

/// Up to `max` stamped events in journal order: each seq after the one before (with gaps, as
/// retention and snapshots leave them), any time, any pool reference, any event.
fn arb_journal(max: usize) -> impl Strategy<Value = Vec<(u64, u64, Option<&'static str>, Event)>> {
    prop::collection::vec(
        (1u64..1_000, any::<u64>(), arb_pool_ref(), arb_event()),
        0..max,
    )
    .prop_map(|stamped| {
        let mut seq = 0u64;
        stamped
            .into_iter()
            .map(|(gap, ts, pool, event)| {
                seq += gap;
                (seq, ts, pool, event)
            })
            .collect()
    })
}

/// An abstract action resolved against the current state, so that random drives reach deep
/// states (spawn results carry the right token, exits the right pid, timers the right token).
fn arb_action() -> impl Strategy<Value = (u8, usize, u64, ExitReason)> {
    (0u8..57, 0usize..3, any::<u64>(), arb_reason())
}

fn resolve(state: &State, (kind, pool, x, reason): (u8, usize, u64, ExitReason)) -> Input {
    let name = POOLS.get(pool).copied().unwrap_or("p1");
    let pool_id = id(name);
    let p = state.pool(name);
    let pid = p.and_then(Pool::pid).unwrap_or((x % 3) as u32);
    let token = p.map_or(x % 8, |p| p.start_token);
    let lease_id = lease(["a", "b", "c"][(x % 3) as usize]);
    // 30..45: extra weight on progress (spawn, health, handoff, acquire, release).
    let kind = match kind {
        30..=32 => 10,
        33..=35 => 13,
        36..=38 => 15,
        39..=41 => 2,
        42..=44 => 4,
        45..=47 => 23,
        k => k,
    };
    match kind {
        0 | 1 => {
            // On a node without GPUs, a CPU engine (a mask would be refused there).
            let mut e = engine(name);
            if state.node.inventory().is_empty() {
                e.device_mask = None;
            }
            cmd(Command::Preload {
                pool_id,
                engine: e,
                placement: Default::default(),
            })
        }
        2 | 3 => cmd(Command::AcquireLease { pool_id, lease_id }),
        4 => {
            let held: Vec<LeaseId> = p
                .map(|p| p.leases.iter().cloned().collect())
                .unwrap_or_default();
            let lease_id = if held.is_empty() {
                lease_id
            } else {
                held[(x as usize) % held.len()].clone()
            };
            cmd(Command::ReleaseLease { pool_id, lease_id })
        }
        5 => cmd(Command::Drain {
            pool_id,
            deadline_ms: x % 10_000,
        }),
        6 => cmd(Command::Reload {
            pool_id,
            new_model_ref: format!("/m/{}", x % 3),
            digest: None,
            drain_deadline_ms: Some(x % 5000),
            strategy: match x % 3 {
                0 => pool_core::ReloadStrategyAsked::Auto,
                1 => pool_core::ReloadStrategyAsked::DrainFirst,
                _ => pool_core::ReloadStrategyAsked::Surge,
            },
            surge_port: (x % 2 == 0).then_some(9000),
            placement: Default::default(),
        }),
        7 => cmd(Command::Stop { pool_id }),
        8 => cmd(Command::ResetBreaker {
            pool_id,
            by: "t".into(),
        }),
        9 => cmd(Command::Remove { pool_id }),
        10 | 11 => obs(Observation::EngineSpawned {
            pool_id,
            token,
            pid: 100 + (x % 50) as u32,
            start_time: x,
            log_path: "l".into(),
            pid_path: "p".into(),
            boot_id: Some(BOOT_ID.into()),
        }),
        12 => obs(Observation::SpawnFailed {
            pool_id,
            token,
            reason: "e".into(),
        }),
        13 | 14 => obs(Observation::HealthPassed {
            pool_id,
            pid,
            after_ms: x % 1000,
            engine_version: None,
            slots_total: Some((x % 4) as u32),
            exe: None,
        }),
        15 | 16 => obs(Observation::HandoffWritten {
            pool_id,
            pid,
            path: "h".into(),
        }),
        17 => obs(Observation::EngineExited {
            pool_id,
            pid,
            exit_code: Some((x % 2) as i32),
            signal: None,
            reason,
            detail: "t".into(),
        }),
        18 => obs(Observation::EngineStopped {
            pool_id,
            pid,
            graceful: x % 2 == 0,
        }),
        19 => obs(Observation::ProbeFailed {
            pool_id,
            pid,
            error: "e".into(),
        }),
        20 => obs(Observation::PreloadTimedOut {
            pool_id,
            pid,
            last_probe: "503".into(),
        }),
        21 | 22 => {
            let (timer, token) = match p {
                Some(p) => match (&p.activity, x % 5) {
                    (Activity::Backoff { token, .. }, _) => (Timer::Restart, *token),
                    (_, 0) => (Timer::HalfOpen, p.supervision.breaker.token),
                    (_, 1) => (
                        Timer::DrainDeadline,
                        p.drain.as_ref().map_or(0, |d| d.token),
                    ),
                    (_, 2) => (Timer::BackoffReset, p.ready_token),
                    _ => (Timer::BreakerClose, p.ready_token),
                },
                None => (Timer::Restart, x),
            };
            obs(Observation::TimerFired {
                pool_id,
                timer,
                token,
            })
        }
        23 => {
            let token = p.and_then(|p| p.reload.as_ref()).map_or(x, |r| r.token);
            if x % 4 != 0 {
                obs(Observation::ModelStaged {
                    pool_id,
                    token,
                    path: format!("/m/{}", x % 3),
                    digest: None,
                })
            } else {
                obs(Observation::StagingFailed {
                    pool_id,
                    token,
                    reason: "e".into(),
                })
            }
        }
        24 => obs(Observation::EngineLost { pool_id, pid }),
        25 => obs(Observation::EngineAdopted { pool_id, pid }),
        26 => obs(Observation::GpuXid {
            gpu_uuid: "GPU-a".into(),
            xid: (x % 100) as u32,
        }),
        27 => obs(Observation::ProbeSucceeded { pool_id, pid }),
        29 => obs(Observation::EngineLogFault {
            pool_id,
            pid,
            reason,
            line: "CUDA error".into(),
        }),
        48 => obs(Observation::GpuInventory {
            gpus: (0..x % 3)
                .map(|i| {
                    let mut g = gpu(i as u32, ["GPU-a", "GPU-b", "GPU-c"][i as usize]);
                    g.vram_free_bytes = (x >> (8 * i)) % (64 << 30);
                    g
                })
                .collect(),
        }),
        49 => obs(Observation::MigInventory {
            devices: (0..x % 3)
                .map(|i| MigDeviceInfo {
                    uuid: ["MIG-x", "MIG-y", "MIG-x"][i as usize].into(),
                    parent_index: (x >> i) as u32 % 2,
                    name: "1g.10gb".into(),
                    vram_total_bytes: 10 << 30,
                    vram_free_bytes: (x >> (4 * i)) % (10 << 30),
                })
                .collect(),
        }),
        50..=52 => {
            let mut e = engine(name);
            e.device_mask = [None, Some("0"), Some("1"), Some("0,1"), Some("MIG-x")]
                [(x % 5) as usize]
                .map(str::to_string);
            e.tensor_split = [None, Some(TensorSplit::Auto)][((x >> 3) % 2) as usize].clone();
            e.vram_required_bytes = [None, Some(x % (80 << 30))][((x >> 4) % 2) as usize];
            e.ram_required_bytes = Some(x % 1000);
            cmd(Command::Preload {
                pool_id,
                engine: e,
                placement: PlacementInputs {
                    allow_gpu_sharing: x % 7 == 0,
                    model_file_bytes: Some(x % (40 << 30)),
                    ram_available_bytes: Some((x >> 5) % 1000),
                },
            })
        }
        53 => obs(Observation::EngineNotOnGpu {
            pool_id,
            token: if x % 4 == 0 { x % 8 } else { token },
            pid,
            detail: "not on its GPUs".into(),
        }),
        54 => obs(Observation::EngineStalled {
            pool_id,
            pid: if x % 4 == 0 { (x % 3) as u32 } else { pid },
            detail: "slot 0 processing, nothing moved".into(),
        }),
        55 => obs(Observation::DriverReset {
            gpu_uuid: ["GPU-a", "GPU-b"][(x % 2) as usize].into(),
        }),
        56 => cmd(Command::UnquarantineGpu {
            gpu_uuid: ["GPU-a", "GPU-b"][(x % 2) as usize].into(),
            by: "ops".into(),
        }),
        28 => obs(Observation::DaemonStarted {
            version: "v".into(),
            pid: 1,
        }),
        _ => obs(Observation::VramObserved {
            pool_id,
            pid,
            used_bytes: x,
        }),
    }
}

type Journal = Vec<(u64, u64, Option<PoolId>, Event)>;

fn replay(journal: &[(u64, u64, Option<PoolId>, Event)], mut state: State) -> State {
    for (seq, ts, pool, event) in journal {
        state = evolve(
            state,
            Stamp {
                seq: *seq,
                ts_ms: *ts,
                pool_id: pool.as_ref().map(PoolId::as_str),
            },
            event,
        );
    }
    state
}

/// Drives `decide` with resolved actions; returns the journal and the state after each event.
/// An action, the time step before it, and the entropy for its decision.
type Step = ((u8, usize, u64, ExitReason), u64, u64);

/// Every start path obeys the breaker: no start (preload, restart, half-open trial, reload,
/// rollback) is requested while the pool's breaker is open, as the facts before it in its
/// batch left it (a trial follows its `CircuitHalfOpened`, a reset's restart its
/// `CircuitReset`).
fn assert_breaker_obeyed(state: &State, fact: &Fact) {
    let starts = matches!(
        fact.event,
        Event::PreloadRequested { .. } | Event::EngineStartRequested { .. }
    );
    let pool = fact.pool_id.as_ref().and_then(|id| state.pool(id.as_str()));
    if let (true, Some(pool)) = (starts, pool) {
        assert_ne!(
            pool.supervision.breaker.state,
            BreakerState::Open,
            "{:?} while the breaker of pool '{}' is open",
            fact.event,
            pool.id
        );
    }
}

/// Nothing starts on a quarantined GPU: no preload or start of any purpose is requested for
/// an engine whose mask covers one, as the facts before it in its batch left the node.
fn assert_quarantine_obeyed(state: &State, fact: &Fact) {
    let engine = match &fact.event {
        Event::PreloadRequested { engine } | Event::EngineStartRequested { engine, .. } => engine,
        _ => return,
    };
    assert_eq!(
        state.node.quarantined_gpu(engine.device_mask.as_deref()),
        None,
        "{:?} of pool {:?} on a quarantined GPU",
        fact.event.kind(),
        fact.pool_id
    );
}

fn drive(actions: &[Step]) -> (Journal, Vec<State>) {
    let policy = Policy::default();
    let mut state = State::default();
    let mut now = T0;
    let mut journal = Vec::new();
    let mut states = vec![state.clone()];
    for (action, dt, random) in actions {
        now += dt;
        let input = resolve(&state, *action);
        let ctx = Context {
            now_ms: now,
            random: *random,
            policy: &policy,
        };
        if let Ok(facts) = decide(&state, &input, &ctx) {
            for fact in facts {
                assert!(
                    !matches!(fact.event, Event::JournalLossAccepted { .. }),
                    "decide produced a loss marker: only `journal repair` writes one"
                );
                assert_breaker_obeyed(&state, &fact);
                assert_quarantine_obeyed(&state, &fact);
                let seq = state.last_seq() + 1;
                let stamp = Stamp {
                    seq,
                    ts_ms: now,
                    pool_id: fact.pool_id.as_ref().map(PoolId::as_str),
                };
                let _ = effects(&state, stamp, &fact.event);
                let anomalies = state.anomalies;
                state = evolve(state, stamp, &fact.event);
                assert_eq!(
                    state.anomalies, anomalies,
                    "decide emitted an inapplicable {:?}",
                    fact.event
                );
                let _ = effects(&state, stamp, &fact.event);
                check_invariants(&state);
                journal.push((seq, now, fact.pool_id.clone(), fact.event));
                states.push(state.clone());
            }
        }
    }
    (journal, states)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn evolve_never_panics(events in arb_journal(60)) {
        let mut state = State::default();
        for (seq, ts, pool, event) in &events {
            state = evolve(state, Stamp { seq: *seq, ts_ms: *ts, pool_id: *pool }, event);
            prop_assert_eq!(state.last_seq(), *seq);
            for s in state.statuses() {
                prop_assert!(s.slots_free <= s.slots_total);
            }
            let _ = resume_effects(&state);
        }
    }

    #[test]
    fn explain_never_panics_and_agrees_with_the_fold(events in arb_journal(60)) {
        let mut state = State::default();
        let mut explainers: Vec<Explainer> =
            POOLS.iter().map(|p| Explainer::new(p, None)).collect();
        for (i, (seq, ts, pool, event)) in events.iter().enumerate() {
            state = evolve(state, Stamp { seq: *seq, ts_ms: *ts, pool_id: *pool }, event);
            let cause = (i % 3 == 0).then(|| seq.saturating_sub(1));
            let rec = Recorded { seq: *seq, ts_ms: *ts, pool_id: *pool, cause, event };
            for (explainer, id) in explainers.iter_mut().zip(POOLS) {
                explainer.feed(rec);
                let explained = explainer.explain(Some(&state.node));
                prop_assert_eq!(explained.is_some(), state.pool(id).is_some());
                if let (Some(e), Some(status)) = (explained, state.status(id)) {
                    prop_assert_eq!(e.phase, status.phase);
                    prop_assert!(e.chain.len() <= explain::STEPS_MAX);
                    prop_assert!(e.why.chars().count() <= explain::WHY_MAX + 3);
                    prop_assert!(!render_text(&e).is_empty());
                    let json = serde_json::to_string(&e).expect("an explanation serializes");
                    prop_assert!(json.len() < 64 * 1024);
                }
            }
        }
    }

    #[test]
    fn explain_of_driven_histories_agrees_with_the_fold(
        actions in prop::collection::vec((arb_action(), 0u64..70_000, any::<u64>()), 0..120),
    ) {
        let (journal, states) = drive(&actions);
        let mut explainers: Vec<Explainer> =
            POOLS.iter().map(|p| Explainer::new(p, None)).collect();
        for ((seq, ts, pool, event), state) in journal.iter().zip(states.iter().skip(1)) {
            let pool_id = pool.as_ref().map(PoolId::as_str);
            let rec = Recorded { seq: *seq, ts_ms: *ts, pool_id, cause: None, event };
            for (explainer, id) in explainers.iter_mut().zip(POOLS) {
                explainer.feed(rec);
                let explained = explainer.explain(Some(&state.node));
                prop_assert_eq!(explained.is_some(), state.pool(id).is_some());
                if let (Some(e), Some(status)) = (explained, state.status(id)) {
                    prop_assert_eq!(e.phase, status.phase);
                    prop_assert!(!e.why.is_empty(), "no why for {:?}", e.phase);
                    prop_assert!(e.chain.len() <= explain::STEPS_MAX);
                    for next in &e.next {
                        prop_assert!(next.at_ms.is_none() || next.at.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn decide_never_panics_on_arbitrary_states(
        events in arb_journal(40),
        actions in prop::collection::vec((arb_action(), any::<u64>(), any::<u64>()), 1..10),
    ) {
        let mut state = State::default();
        for (seq, ts, pool, event) in &events {
            state = evolve(state, Stamp { seq: *seq, ts_ms: *ts, pool_id: *pool }, event);
        }
        let policy = Policy::default();
        for (action, now, random) in actions {
            let input = resolve(&state, action);
            let ctx = Context { now_ms: now, random, policy: &policy };
            if let Ok(facts) = decide(&state, &input, &ctx) {
                for fact in facts {
                    prop_assert!(
                        !matches!(fact.event, Event::JournalLossAccepted { .. }),
                        "decide produced a loss marker"
                    );
                    let stamp = Stamp { seq: state.last_seq().wrapping_add(1), ts_ms: now, pool_id: fact.pool_id.as_ref().map(PoolId::as_str) };
                    state = evolve(state, stamp, &fact.event);
                    let _ = effects(&state, stamp, &fact.event);
                }
            }
        }
    }

    #[test]
    fn replay_of_any_prefix_equals_the_incremental_state(
        actions in prop::collection::vec((arb_action(), 0u64..70_000, any::<u64>()), 0..80),
        cut in any::<prop::sample::Index>(),
    ) {
        let (journal, states) = drive(&actions);
        for (n, expected) in states.iter().enumerate() {
            let replayed = replay(&journal[..n], State::default());
            prop_assert_eq!(&replayed, expected, "prefix of {} events", n);
        }
        // snapshot at any point (bincode), then fold the rest
        let at = cut.index(states.len());
        let bytes = bincode::serialize(&states[at]).unwrap();
        let snapshot: State = bincode::deserialize(&bytes).unwrap();
        prop_assert_eq!(&snapshot, &states[at]);
        let resumed = replay(&journal[at..], snapshot);
        prop_assert_eq!(&resumed, states.last().unwrap());
        // and the journal itself survives bincode
        for (_, _, _, event) in &journal {
            let bytes = bincode::serialize(event).unwrap();
            prop_assert_eq!(&bincode::deserialize::<Event>(&bytes).unwrap(), event);
        }
    }

    /// A loss marker (`JournalLossAccepted`, written by `journal repair --accept-loss`) is a
    /// node event that moves the state's `last_seq` and nothing else, on any state, and has
    /// no effects.
    #[test]
    fn a_loss_marker_changes_only_last_seq(
        events in arb_journal(40),
        marker in arb_loss_marker(),
        gap in 1u64..1_000,
        ts in any::<u64>(),
    ) {
        let mut state = State::default();
        for (seq, ts, pool, event) in &events {
            state = evolve(state, Stamp { seq: *seq, ts_ms: *ts, pool_id: *pool }, event);
        }
        prop_assert!(marker.is_node_event());
        let seq = state.last_seq() + gap;
        let stamp = Stamp { seq, ts_ms: ts, pool_id: None };
        let after = evolve(state.clone(), stamp, &marker);
        let mut expected = state.clone();
        expected.last_seq = seq;
        prop_assert_eq!(&after, &expected);
        prop_assert!(effects(&state, stamp, &marker).is_empty());
        prop_assert!(effects(&after, stamp, &marker).is_empty());
    }

    #[test]
    fn backoff_delay_is_total_and_bounded(attempt in any::<u32>(), random in any::<u64>(), reason in arb_reason()) {
        let p = BackoffPolicy::default();
        let d = backoff_delay_ms(&p, attempt, reason, random);
        prop_assert!((p.min_ms..=p.max_ms).contains(&d));
    }
}

#[test]
fn random_drives_reach_deep_states() {
    // A sanity check that the resolver is not trivially stale: a scripted drive gets ready.
    let a = |k: u8| ((k, 0usize, 0u64, ExitReason::Crash), 10u64, 1u64);
    let (journal, states) = drive(&[a(0), a(10), a(13), a(15), a(2)]);
    let kinds: Vec<_> = journal.iter().map(|j| j.3.kind()).collect();
    assert_eq!(
        kinds,
        [
            "PreloadRequested",
            "EngineSpawned",
            "HealthCheckPassed",
            "PoolReady",
            "LeaseGranted"
        ]
    );
    assert!(states.last().unwrap().status("p1").unwrap().ready);
}

#[test]
fn long_random_drive_covers_the_lifecycle() {
    let mut x: u64 = 0x1234_5678;
    let mut next = || {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let reasons = [
        ExitReason::Crash,
        ExitReason::CudaError,
        ExitReason::VramOom,
        ExitReason::Graceful,
        ExitReason::HealthTimeout,
    ];
    let actions: Vec<_> = (0..6000)
        .map(|_| {
            let kind = (next() % 48) as u8;
            let pool = (next() % 3) as usize;
            let param = next();
            let reason = reasons[(next() % 5) as usize];
            ((kind, pool, param, reason), next() % 400_000, next())
        })
        .collect();
    let (journal, states) = drive(&actions);
    let mut kinds: Vec<&str> = journal.iter().map(|j| j.3.kind()).collect();
    kinds.sort();
    kinds.dedup();
    for want in [
        "PreloadRequested",
        "EngineSpawned",
        "HealthCheckPassed",
        "PoolReady",
        "LeaseGranted",
        "LeaseReleased",
        "EngineExited",
        "RestartScheduled",
        "EngineStartRequested",
        "DrainRequested",
        "DrainCompleted",
        "EngineStopRequested",
        "EngineStopped",
        "ReloadRequested",
        "PreloadFailed",
        "CircuitOpened",
        "PoolRemoved",
    ] {
        assert!(
            kinds.contains(&want),
            "{want} never reached; reached {kinds:?}"
        );
    }
    assert_eq!(replay(&journal, State::default()), *states.last().unwrap());
}

#[test]
fn scripted_drive_reaches_reload_staging() {
    let a = |k: u8, x: u64| ((k, 0usize, x, ExitReason::Crash), 10u64, 1u64);
    let (journal, _) = drive(&[a(0, 0), a(10, 0), a(13, 0), a(15, 0), a(6, 1), a(23, 1)]);
    let kinds: Vec<_> = journal.iter().map(|j| j.3.kind()).collect();
    assert_eq!(
        kinds,
        [
            "PreloadRequested",
            "EngineSpawned",
            "HealthCheckPassed",
            "PoolReady",
            "ReloadRequested",
            "ReloadStrategyChosen",
            "ModelStaged",
            "DrainRequested",
            "EngineStopRequested"
        ]
    );
}

#[test]
fn a_crash_loop_starts_nothing_while_its_breaker_is_open() {
    // Spawn, crash, then every way to start again (preload, reload, a timer: the restart in
    // backoff, else the half-open one when x % 5 == 0): `drive` checks each start against
    // the breaker.
    let a = |k: u8, x: u64| ((k, 0usize, x, ExitReason::Crash), 1_000u64, x);
    let mut actions = vec![a(0, 0)];
    for i in 0..60 {
        actions.extend([a(10, i), a(17, i), a(0, i), a(6, i), a(21, i)]);
    }
    let (journal, _) = drive(&actions);
    let kinds: Vec<&str> = journal.iter().map(|j| j.3.kind()).collect();
    for want in ["CircuitOpened", "CircuitHalfOpened", "EngineStartRequested"] {
        assert!(kinds.contains(&want), "{want} never reached: {kinds:?}");
    }
}

#[test]
fn a_drive_with_failing_gpus_starts_nothing_on_a_quarantined_one() {
    // Lifecycle actions mixed with driver resets, Xids and unquarantines, seconds apart: GPUs
    // are quarantined and released again while pools start, fail and restart on them; every
    // step checks that no start is requested on a quarantined GPU.
    let mut x: u64 = 0x0bad_6e00;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let kinds = [
        48, 50, 51, 52, 0, 10, 13, 15, 17, 18, 21, 22, 8, 6, 23, 26, 55, 55, 55, 56,
    ];
    let actions: Vec<_> = (0..4000)
        .map(|_| {
            let kind = kinds[(next() % kinds.len() as u64) as usize];
            let pool = (next() % 3) as usize;
            (
                (kind, pool, next(), ExitReason::Crash),
                next() % 20_000,
                next(),
            )
        })
        .collect();
    let (journal, states) = drive(&actions);
    let reached: Vec<&str> = journal.iter().map(|j| j.3.kind()).collect();
    for want in [
        "GpuQuarantined",
        "RestartHeld",
        "GpuUnquarantined",
        "PoolReady",
    ] {
        assert!(reached.contains(&want), "{want} never reached");
    }
    assert_eq!(replay(&journal, State::default()), *states.last().unwrap());
}
