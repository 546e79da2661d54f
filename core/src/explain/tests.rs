//! Unit tests of the explanations over small recorded histories.

use super::*;
use crate::engine::PreparedEngine;
use crate::event::{ExitReason, StartFailure, StartPurpose, StormClass};

const T0: u64 = 1_772_503_200_000;

/// seq, ts, pool, cause, event.
type Entry = (u64, u64, Option<&'static str>, Option<u64>, Event);

struct History {
    events: Vec<Entry>,
}

impl History {
    fn new() -> History {
        History { events: Vec::new() }
    }

    fn pool(&mut self, ts: u64, cause: Option<u64>, event: Event) -> u64 {
        let seq = self.events.len() as u64 + 1;
        self.events.push((seq, T0 + ts, Some("p1"), cause, event));
        seq
    }

    fn node(&mut self, ts: u64, event: Event) -> u64 {
        let seq = self.events.len() as u64 + 1;
        self.events.push((seq, T0 + ts, None, None, event));
        seq
    }

    fn explain(&self, at: Option<u64>) -> Explanation {
        let recs = self
            .events
            .iter()
            .map(|(seq, ts, pool, cause, event)| Recorded {
                seq: *seq,
                ts_ms: *ts,
                pool_id: *pool,
                cause: *cause,
                event,
            });
        explain(recs, "p1", at).expect("the pool exists")
    }
}

fn engine() -> PreparedEngine {
    PreparedEngine {
        pool_id: "p1".into(),
        replica_id: "r0".into(),
        engine: Some("llamacpp".into()),
        engine_version: "b1".into(),
        binary_path: "/bin/llama-server".into(),
        flags: vec![],
        env: Default::default(),
        host: "127.0.0.1".into(),
        port: 8080,
        health_path: "/health".into(),
        model_path: "/m.gguf".into(),
        slots_total: Some(2),
        device_mask: Some("0".into()),
        tensor_split: None,
        vram_required_bytes: None,
        ram_required_bytes: None,
        progress: None,
    }
}

fn spawned(pid: u32) -> Event {
    Event::EngineSpawned {
        pid,
        start_time: 1,
        log_path: "l".into(),
        pid_path: "p".into(),
        attempt: 0,
        health_deadline_at_ms: T0 + 120_000,
        boot_id: None,
    }
}

fn ready() -> Event {
    Event::PoolReady {
        handoff_path: "h".into(),
        backoff_reset_at_ms: T0 + 400_000,
        breaker_close_at_ms: None,
    }
}

fn exited(pid: u32, reason: ExitReason) -> Event {
    Event::EngineExited {
        pid,
        exit_code: Some(1),
        signal: None,
        reason,
        detail: "CUDA error: an illegal memory access".into(),
    }
}

fn crash_loop_to_open_breaker() -> History {
    let mut h = History::new();
    h.pool(
        0,
        None,
        Event::PreloadRequested {
            engine: Box::new(engine()),
        },
    );
    h.pool(10, Some(1), spawned(100));
    h.pool(20, Some(2), ready());
    for i in 0..5u64 {
        let ts = 1_000 + i * 1_000;
        h.pool(ts, None, exited(100, ExitReason::CudaError));
        if i < 4 {
            h.pool(
                ts,
                None,
                Event::RestartScheduled {
                    attempt: i as u32 + 1,
                    delay_ms: 100,
                    not_before_ms: T0 + ts + 100,
                    reason: ExitReason::CudaError,
                },
            );
            h.pool(
                ts + 100,
                None,
                Event::EngineStartRequested {
                    engine: Box::new(engine()),
                    attempt: i as u32 + 1,
                    purpose: StartPurpose::Restart,
                },
            );
            h.pool(ts + 110, None, spawned(100));
            h.pool(ts + 200, None, ready());
        }
    }
    h.pool(
        5_000,
        None,
        Event::CircuitOpened {
            failures: 5,
            open_ms: 300_000,
            class: FailureClass::GpuFault,
            half_open_at_ms: T0 + 305_000,
        },
    );
    h
}

#[test]
fn an_open_breaker_names_its_failures_and_the_trial_time() {
    let h = crash_loop_to_open_breaker();
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::CircuitOpen);
    assert!(
        e.why.contains("5 consecutive `cuda_error` failures"),
        "{}",
        e.why
    );
    assert!(e.why.contains("seqs 4, 9, 14, 19, 24"), "{}", e.why);
    assert!(
        e.why.contains("CUDA error: an illegal memory access"),
        "{}",
        e.why
    );
    assert_eq!(e.next.first().and_then(|n| n.at_ms), Some(T0 + 305_000));
    assert!(e
        .actions
        .iter()
        .any(|a| a.request.as_deref() == Some("POST /v2/pools/p1/breaker/reset")));
    assert!(e.chain.len() <= STEPS_MAX);
    assert!(e.chain_omitted > 0);
    let text = render_text(&e);
    assert!(text.contains("half-open trial at"), "{text}");
    assert!(text.contains("POST /v2/pools/p1/breaker/reset"), "{text}");
}

#[test]
fn backoff_names_the_attempt_and_its_time() {
    let h = crash_loop_to_open_breaker();
    let e = h.explain(Some(5));
    assert_eq!(e.phase, Phase::Backoff);
    assert_eq!(e.since.as_ref().map(|m| m.seq), Some(5));
    assert!(e.why.contains("restart attempt 1"), "{}", e.why);
    assert_eq!(e.next.first().and_then(|n| n.at_ms), Some(T0 + 1_100));
}

#[test]
fn a_held_restart_points_at_the_quarantine() {
    let mut h = History::new();
    h.pool(
        0,
        None,
        Event::PreloadRequested {
            engine: Box::new(engine()),
        },
    );
    h.pool(
        5,
        None,
        Event::PreloadFailed {
            reason: "spawn failed".into(),
            failure: StartFailure::GpuFault,
            cause: ExitReason::DriverError,
            pid: None,
        },
    );
    h.node(
        6,
        Event::GpuQuarantined {
            gpu_uuid: "GPU-a".into(),
            faults: 3,
        },
    );
    h.pool(
        7,
        None,
        Event::RestartHeld {
            gpu_uuid: "GPU-a".into(),
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Failed);
    assert!(e.why.contains("GPU GPU-a is quarantined"), "{}", e.why);
    assert!(e
        .actions
        .iter()
        .any(|a| a.request.as_deref() == Some("POST /v2/gpus/GPU-a/unquarantine")));
    assert!(e.chain.iter().any(|s| s.kind == "GpuQuarantined"));
}

#[test]
fn a_forced_drain_names_the_leases() {
    let mut h = History::new();
    h.pool(
        0,
        None,
        Event::PreloadRequested {
            engine: Box::new(engine()),
        },
    );
    h.pool(10, None, spawned(100));
    h.pool(20, None, ready());
    h.pool(
        30,
        None,
        Event::LeaseGranted {
            lease_id: crate::ids::LeaseId::new("l-1").unwrap(),
        },
    );
    h.pool(
        40,
        None,
        Event::DrainRequested {
            deadline_ms: 1_000,
            deadline_at_ms: T0 + 1_040,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Draining);
    assert!(e.why.contains("l-1"), "{}", e.why);
    assert_eq!(e.next.get(1).and_then(|n| n.at_ms), Some(T0 + 1_040));
    h.pool(
        1_040,
        None,
        Event::EngineStopRequested {
            reason: crate::event::StopReason::DrainDeadline,
            pid: Some(100),
            grace_ms: 5_000,
        },
    );
    h.pool(
        6_040,
        None,
        Event::EngineStopped {
            pid: 100,
            graceful: false,
        },
    );
    h.pool(
        6_040,
        None,
        Event::DrainCompleted {
            outcome: crate::event::DrainOutcome::ForceStopped,
            duration_ms: 6_000,
            leases_at_stop: 1,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Stopped);
    assert!(e.why.contains("force-stopped"), "{}", e.why);
    assert!(e.why.contains("leases dropped: l-1"), "{}", e.why);
}

#[test]
fn an_unknown_or_removed_pool_has_no_explanation() {
    let mut h = History::new();
    assert!(explain(std::iter::empty(), "p1", None).is_none());
    h.pool(
        0,
        None,
        Event::PreloadRequested {
            engine: Box::new(engine()),
        },
    );
    h.pool(1, None, Event::PoolRemoved);
    let recs: Vec<_> = h
        .events
        .iter()
        .map(|(seq, ts, pool, cause, event)| Recorded {
            seq: *seq,
            ts_ms: *ts,
            pool_id: *pool,
            cause: *cause,
            event,
        })
        .collect();
    assert!(explain(recs.clone(), "p1", None).is_none());
    assert!(explain(recs, "p1", Some(1)).is_some());
}

fn ready_pool() -> History {
    let mut h = History::new();
    h.pool(
        0,
        None,
        Event::PreloadRequested {
            engine: Box::new(engine()),
        },
    );
    h.pool(10, Some(1), spawned(100));
    h.pool(20, Some(2), ready());
    h
}

fn reload_requested(h: &mut History, ts: u64) {
    h.pool(
        ts,
        None,
        Event::ReloadRequested {
            new_model_ref: "/m2.gguf".into(),
            digest: None,
            drain_deadline_ms: 60_000,
        },
    );
}

#[test]
fn reloads_succeeded_refused_and_rolled_back() {
    let mut h = ready_pool();
    reload_requested(&mut h, 100);
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Reloading);
    assert!(e.why.contains("reloading to /m2.gguf"), "{}", e.why);
    assert!(e.why.contains("staging the new model"), "{}", e.why);
    h.pool(
        200,
        None,
        Event::ReloadFailed {
            reason: "model not found".into(),
            stage: crate::event::ReloadStage::Staging,
            rolling_back: false,
            pid: None,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Ready);
    assert!(
        e.chain.iter().any(|s| s.text.contains("refused")),
        "{:?}",
        e.chain
    );
    reload_requested(&mut h, 300);
    h.pool(
        400,
        None,
        Event::ReloadFailed {
            reason: "new engine exited".into(),
            stage: crate::event::ReloadStage::Starting,
            rolling_back: true,
            pid: None,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Reloading);
    assert!(e.why.contains("rolling back"), "{}", e.why);
    h.pool(
        500,
        None,
        Event::ReloadRolledBack {
            model_ref: "/m.gguf".into(),
            duration_ms: 400,
        },
    );
    let e = h.explain(None);
    assert!(e
        .chain
        .iter()
        .any(|s| s.text.contains("rolled back: serving /m.gguf")));
    reload_requested(&mut h, 600);
    h.pool(
        700,
        None,
        Event::ReloadSucceeded {
            old: "/m.gguf".into(),
            new: "/m2.gguf".into(),
            duration_ms: 100,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Ready);
    assert!(e.chain.iter().any(|s| s.text.contains("reload succeeded")));
}

#[test]
fn a_storm_names_its_class_and_hint_and_a_failed_trial_reopens() {
    let mut h = crash_loop_to_open_breaker();
    h.pool(
        5_000,
        None,
        Event::RestartStormDetected {
            restarts: 11,
            window_ms: 60_000,
            classification: StormClass::CudaStorm,
            hint: StormClass::CudaStorm.hint().into(),
        },
    );
    let e = h.explain(None);
    assert!(e.why.contains("restart storm (cuda_storm"), "{}", e.why);
    assert!(
        e.actions.iter().any(|a| a.text.contains("engine build")),
        "{:?}",
        e.actions
    );
    h.pool(305_000, None, Event::CircuitHalfOpened);
    h.pool(
        305_000,
        None,
        Event::EngineStartRequested {
            engine: Box::new(engine()),
            attempt: 5,
            purpose: StartPurpose::Trial,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Starting);
    assert!(e.why.contains("trial start"), "{}", e.why);
    h.pool(305_010, None, spawned(101));
    h.pool(305_100, None, exited(101, ExitReason::CudaError));
    h.pool(
        305_100,
        None,
        Event::CircuitOpened {
            failures: 6,
            open_ms: 600_000,
            class: FailureClass::GpuFault,
            half_open_at_ms: T0 + 905_100,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::CircuitOpen);
    assert!(e.why.contains("open again"), "{}", e.why);
    assert!(e.why.contains("the half-open trial failed"), "{}", e.why);
    assert_eq!(e.next.first().and_then(|n| n.at_ms), Some(T0 + 905_100));
}

#[test]
fn a_stall_and_a_hang_are_named_as_the_faults_they_are() {
    let mut h = ready_pool();
    h.pool(
        100,
        None,
        Event::EngineStopRequested {
            reason: crate::event::StopReason::Failure {
                reason: ExitReason::Stalled,
                detail: "no progress for 120 s with 2 slots processing".into(),
            },
            pid: Some(100),
            grace_ms: 0,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Stopping);
    assert!(
        e.chain.iter().any(|s| s.text.contains("`stalled`")),
        "{:?}",
        e.chain
    );
    h.pool(
        200,
        None,
        Event::EngineStopped {
            pid: 100,
            graceful: false,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Failed);
    assert!(e.why.contains("`stalled`"), "{}", e.why);
    let mut h = ready_pool();
    h.pool(100, None, Event::HealthCheckFailed { consecutive: 2 });
    let e = h.explain(None);
    assert!(e.why.contains("probe failed 2 time(s)"), "{}", e.why);
}

#[test]
fn stopping_names_the_sigkill_time() {
    let mut h = ready_pool();
    h.pool(
        100,
        None,
        Event::EngineStopRequested {
            reason: crate::event::StopReason::Requested,
            pid: Some(100),
            grace_ms: 5_000,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Stopping);
    assert_eq!(e.next.first().and_then(|n| n.at_ms), Some(T0 + 5_100));
}

#[test]
fn adoption_loss_and_handoff_are_told() {
    let mut h = ready_pool();
    h.node(
        100,
        Event::DaemonStarted {
            version: "1".into(),
            pid: 7,
        },
    );
    h.pool(110, None, Event::EngineAdopted { pid: 100 });
    let e = h.explain(None);
    assert!(
        e.why.contains("adopted after the daemon's restart"),
        "{}",
        e.why
    );
    h.node(
        200,
        Event::DaemonStarted {
            version: "1".into(),
            pid: 8,
        },
    );
    h.pool(210, None, Event::EngineLost { pid: 100 });
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Failed);
    assert!(
        e.why.contains("lost while the daemon was down"),
        "{}",
        e.why
    );
    assert!(
        e.chain.iter().any(|s| s.kind == "DaemonStarted"),
        "{:?}",
        e.chain
    );

    let mut h = History::new();
    let handoff = crate::engine::Handoff {
        engine: "llamacpp".into(),
        engine_version: "b1".into(),
        url: "http://127.0.0.1:8080".into(),
        pool_id: "p1".into(),
        replica_id: "r0".into(),
        model: crate::engine::HandoffModel {
            path: "/m.gguf".into(),
        },
        flags: vec![],
        device_mask: None,
        slots_total: 1,
        pid: Some(9),
    };
    h.pool(
        0,
        None,
        Event::HandoffRegistered {
            handoff: Box::new(handoff),
            path: "api".into(),
        },
    );
    let e = h.explain(None);
    assert!(e.why.contains("handed off"), "{}", e.why);
}

#[test]
fn mask_violations_stuck_memory_spillover_and_loss_are_told() {
    let mut h = ready_pool();
    h.pool(
        100,
        None,
        Event::DeviceMaskViolation {
            pid: 100,
            gpu_uuid: "GPU-b".into(),
        },
    );
    let e = h.explain(None);
    assert!(e.why.contains("outside its mask"), "{}", e.why);
    assert!(!e.actions.is_empty());

    let mut h = ready_pool();
    h.pool(100, None, exited(100, ExitReason::VramOom));
    h.pool(
        200,
        None,
        Event::GpuMemoryStuck {
            gpu_uuid: "GPU-a".into(),
            pids: vec![100],
            bytes: 2 << 30,
        },
    );
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Failed);
    assert!(e.why.contains("still holds 2048 MiB"), "{}", e.why);
    assert!(e.actions.iter().any(|a| a.text.contains("free the GPU")));

    let mut h = History::new();
    h.pool(
        0,
        None,
        Event::PreloadRequested {
            engine: Box::new(engine()),
        },
    );
    h.pool(
        10,
        None,
        Event::PreloadFailed {
            reason: "not on GPU 0".into(),
            failure: StartFailure::CpuSpillover,
            cause: ExitReason::CudaError,
            pid: None,
        },
    );
    h.node(
        20,
        Event::JournalLossAccepted {
            from_seq: 3,
            to_seq: 3,
            reason: "disk".into(),
        },
    );
    let e = h.explain(None);
    assert!(
        e.chain.iter().any(|s| s.text.contains("CPU_SPILLOVER")),
        "{:?}",
        e.chain
    );
    assert!(e.why.contains("were lost"), "{}", e.why);
}

#[test]
fn a_quarantine_is_a_step_of_the_pools_on_that_gpu_only() {
    let mut h = ready_pool();
    h.node(
        100,
        Event::GpuQuarantined {
            gpu_uuid: "GPU-b".into(),
            faults: 3,
        },
    );
    h.node(
        200,
        Event::GpuQuarantined {
            gpu_uuid: "GPU-a".into(),
            faults: 3,
        },
    );
    let mut explainer = Explainer::new("p1", None);
    for (seq, ts, pool, cause, event) in &h.events {
        explainer.feed(Recorded {
            seq: *seq,
            ts_ms: *ts,
            pool_id: *pool,
            cause: *cause,
            event,
        });
    }
    let gpu = |index: u32, uuid: &str| crate::engine::GpuInfo {
        index,
        uuid: uuid.into(),
        name: "L4".into(),
        compute_capability: "8.9".into(),
        vram_total_bytes: 1,
        vram_free_bytes: 1,
    };
    let node = Node {
        gpus: vec![gpu(0, "GPU-a"), gpu(1, "GPU-b")],
        ..Node::default()
    };
    let e = explainer.explain(Some(&node)).expect("the pool exists");
    let quarantines: Vec<&str> = e
        .chain
        .iter()
        .filter(|s| s.kind == "GpuQuarantined")
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(quarantines.len(), 1, "{quarantines:?}");
    assert!(quarantines[0].contains("GPU-a"), "{quarantines:?}");
    let e = explainer.explain(None).expect("the pool exists");
    assert_eq!(
        e.chain
            .iter()
            .filter(|s| s.kind == "GpuQuarantined")
            .count(),
        2
    );
}

#[test]
fn every_start_failure_and_exit_reason_is_named() {
    let failures = [
        StartFailure::SpawnFailed,
        StartFailure::HealthTimeout,
        StartFailure::EngineExited,
        StartFailure::GpuFault,
        StartFailure::HandoffFailed,
        StartFailure::CpuSpillover,
        StartFailure::PortInUse,
    ];
    for failure in failures {
        let mut h = History::new();
        h.pool(
            0,
            None,
            Event::PreloadRequested {
                engine: Box::new(engine()),
            },
        );
        h.pool(
            10,
            None,
            Event::PreloadFailed {
                reason: "why it failed".into(),
                failure,
                cause: ExitReason::Crash,
                pid: None,
            },
        );
        let e = h.explain(None);
        let step = e.chain.last().expect("a step");
        assert!(
            step.text.contains(failure.code().as_str()),
            "{failure:?}: {}",
            step.text
        );
        assert!(e.why.contains("why it failed"), "{failure:?}: {}", e.why);
    }
    let reasons = [
        ExitReason::Crash,
        ExitReason::Signal,
        ExitReason::OomKilled,
        ExitReason::CudaError,
        ExitReason::VramOom,
        ExitReason::DriverError,
        ExitReason::HealthTimeout,
        ExitReason::Unknown,
        ExitReason::Stalled,
    ];
    for reason in reasons {
        let mut h = ready_pool();
        h.pool(100, None, exited(100, reason));
        let e = h.explain(None);
        assert_eq!(e.phase, Phase::Failed, "{reason:?}");
        let named = format!("`{}`", reason.as_str());
        assert!(e.why.contains(&named), "{reason:?}: {}", e.why);
    }
    let mut h = ready_pool();
    h.pool(100, None, exited(100, ExitReason::Graceful));
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Stopped);
    assert!(e.why.contains("exited by itself with code 0"), "{}", e.why);
}

/// A ready pool with one lease, reloading by a surge up to its new engine's health.
fn surge_to_health() -> History {
    let mut h = ready_pool();
    h.pool(
        50,
        None,
        Event::LeaseGranted {
            lease_id: crate::ids::LeaseId::new("l1").unwrap(),
        },
    );
    reload_requested(&mut h, 100);
    h.pool(
        100,
        None,
        Event::ReloadStrategyChosen {
            strategy: crate::event::ReloadStrategy::Surge,
            reason: "the new engine fits beside the old one; it starts on port 9301".into(),
            surge_port: Some(9301),
        },
    );
    let staged = Event::ModelStaged {
        path: "/m2.gguf".into(),
        digest: None,
    };
    let cause = h.pool(150, None, staged);
    let next = engine().with_model("/m2.gguf").with_port(9301);
    let requested = Event::SurgeStartRequested {
        engine: Box::new(next),
    };
    let cause = h.pool(150, Some(cause), requested);
    let spawned = Event::SurgeSpawned {
        pid: 200,
        start_time: 2,
        log_path: "l@b".into(),
        pid_path: "p@b".into(),
        health_deadline_at_ms: T0 + 120_000,
        boot_id: None,
    };
    h.pool(160, Some(cause), spawned);
    h
}

#[test]
fn a_surge_is_told_from_its_choice_to_the_old_engines_stop() {
    let mut h = surge_to_health();
    let e = h.explain(None);
    assert!(e.why.contains("beside the old one"), "{}", e.why);
    let health = Event::SurgeHealthPassed {
        after_ms: 40,
        engine_version: "b2".into(),
        slots_total: 2,
        exe: None,
    };
    h.pool(200, None, health);
    let switched = Event::SurgeSwitched {
        new_pid: 200,
        old_pid: Some(100),
        handoff_path: "h".into(),
        leases_on_old: 1,
        drain_deadline_at_ms: T0 + 60_200,
        backoff_reset_at_ms: T0 + 900_000,
    };
    h.pool(210, None, switched);
    let done = Event::ReloadSucceeded {
        old: "/m.gguf".into(),
        new: "/m2.gguf".into(),
        duration_ms: 110,
    };
    h.pool(210, None, done);
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Ready);
    let chain: Vec<&str> = e.chain.iter().map(|s| s.text.as_str()).collect();
    for words in [
        "reload strategy surge: the new engine fits beside the old one",
        "on port 9301",
        "spawned beside the old one: pid 200",
        "answered healthy after",
        "switched new leases from pid 100 to pid 200; 1 lease(s) left on the old engine",
    ] {
        assert!(
            chain.iter().any(|t| t.contains(words)),
            "{words}: {chain:?}"
        );
    }
    let next = e
        .next
        .iter()
        .find(|n| n.text.contains("old engine (pid 100)"));
    assert_eq!(
        next.and_then(|n| n.at_ms),
        Some(T0 + 60_200),
        "{:?}",
        e.next
    );
    let stop = Event::SecondStopRequested {
        pid: Some(100),
        grace_ms: 5_000,
        why: crate::event::SecondStop::DrainDeadline,
        leases_at_stop: 1,
    };
    h.pool(60_200, None, stop);
    let ended = Event::SecondEngineEnded {
        pid: 100,
        how: crate::event::SecondEnd::Stopped { graceful: true },
        leases_dropped: 1,
    };
    h.pool(60_300, None, ended);
    let e = h.explain(None);
    let chain: Vec<&str> = e.chain.iter().map(|s| s.text.as_str()).collect();
    for words in [
        "stopping the old engine (pid 100) at its deadline: 1 lease(s)",
        "the old engine (pid 100) stopped on SIGTERM; 1 lease(s) dropped",
    ] {
        assert!(
            chain.iter().any(|t| t.contains(words)),
            "{words}: {chain:?}"
        );
    }
    assert!(!e.next.iter().any(|n| n.text.contains("old engine")));
}

#[test]
fn a_failed_surge_says_the_old_engine_serves_on() {
    let mut h = surge_to_health();
    let failed = Event::ReloadFailed {
        reason: "the new engine failed; the old one serves on: exit code 1".into(),
        stage: crate::event::ReloadStage::Surging,
        rolling_back: false,
        pid: None,
    };
    h.pool(300, None, failed);
    let stop = Event::SecondStopRequested {
        pid: Some(200),
        grace_ms: 0,
        why: crate::event::SecondStop::SurgeEnded,
        leases_at_stop: 0,
    };
    h.pool(300, None, stop);
    let ended = Event::SecondEngineEnded {
        pid: 200,
        how: crate::event::SecondEnd::Stopped { graceful: false },
        leases_dropped: 0,
    };
    h.pool(310, None, ended);
    let e = h.explain(None);
    assert_eq!(e.phase, Phase::Ready);
    let chain: Vec<&str> = e.chain.iter().map(|s| s.text.as_str()).collect();
    for words in [
        "reload failed while starting the new engine beside the old one",
        "the old one serves on: exit code 1",
        "stopping the surge's new engine (pid 200)",
        "the surge's new engine (pid 200) killed (SIGKILL)",
    ] {
        assert!(
            chain.iter().any(|t| t.contains(words)),
            "{words}: {chain:?}"
        );
    }
}
