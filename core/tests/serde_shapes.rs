//! Serde shapes: every event round-trips through bincode (journal) and JSON (export), has a
//! flattenable shape, and `PoolStatus` JSON has exactly the SPEC field names in order.

mod support;

use pool_core::*;
use support::*;

pub fn one_of_each() -> Vec<Event> {
    let mut e = engine("p1");
    e.tensor_split = Some(TensorSplit::Ratios(vec![0.25, 0.75]));
    vec![
        Event::DaemonStarted {
            version: "0.1.0".into(),
            pid: 1,
        },
        Event::DaemonStopped {
            reason: "SIGTERM".into(),
        },
        Event::GpuInventoryObserved {
            gpus: vec![gpu(0, "GPU-a")],
        },
        Event::PreflightFailed {
            reason: "no GPU".into(),
        },
        Event::GpuXidObserved {
            gpu_uuid: "GPU-a".into(),
            xid: 79,
        },
        Event::DriverResetObserved {
            gpu_uuid: "GPU-a".into(),
        },
        Event::PreloadRequested {
            engine: Box::new(e),
        },
        Event::PreloadRejected {
            code: "BINARY_NOT_ALLOWED".into(),
            reason: "x".into(),
        },
        Event::EngineSpawned {
            pid: 1,
            start_time: 2,
            log_path: "l".into(),
            pid_path: "p".into(),
            attempt: 0,
            health_deadline_at_ms: 3,
            boot_id: Some(BOOT_ID.into()),
        },
        Event::HealthCheckPassed {
            after_ms: 1,
            engine_version: "b1".into(),
            slots_total: 2,
            exe: Some("/opt/llama/bin/llama-server".into()),
        },
        Event::PoolReady {
            handoff_path: "h".into(),
            backoff_reset_at_ms: 1,
            breaker_close_at_ms: Some(2),
        },
        Event::PreloadFailed {
            reason: "r".into(),
            failure: StartFailure::HealthTimeout,
            cause: ExitReason::HealthTimeout,
            pid: Some(1),
        },
        Event::LeaseGranted {
            lease_id: lease("l1"),
        },
        Event::LeaseReleased {
            lease_id: lease("l1"),
        },
        Event::HealthCheckFailed { consecutive: 1 },
        Event::EngineExited {
            pid: 1,
            exit_code: Some(1),
            signal: None,
            reason: ExitReason::Crash,
            detail: "d".into(),
        },
        Event::RestartScheduled {
            attempt: 1,
            delay_ms: 1000,
            not_before_ms: 2000,
            reason: ExitReason::Crash,
        },
        Event::CircuitOpened {
            failures: 5,
            open_ms: 1,
            class: FailureClass::GpuFault,
            half_open_at_ms: 2,
        },
        Event::CircuitHalfOpened,
        Event::CircuitClosed,
        Event::CircuitReset { by: "op".into() },
        Event::RestartStormDetected {
            restarts: 11,
            window_ms: 60_000,
            classification: StormClass::CrashStorm,
            hint: "h".into(),
        },
        Event::EngineAdopted { pid: 1 },
        Event::EngineLost { pid: 1 },
        Event::DrainRequested {
            deadline_ms: 1,
            deadline_at_ms: 2,
        },
        Event::DrainCompleted {
            outcome: DrainOutcome::ForceStopped,
            duration_ms: 1,
            leases_at_stop: 2,
        },
        Event::EngineStopRequested {
            reason: StopReason::Failure {
                reason: ExitReason::HealthTimeout,
                detail: "d".into(),
            },
            pid: Some(1),
            grace_ms: 5000,
        },
        Event::EngineStopped {
            pid: 1,
            graceful: true,
        },
        Event::ReloadRequested {
            new_model_ref: "m".into(),
            digest: Some("sha256:00".into()),
            drain_deadline_ms: 1,
        },
        Event::ModelStaged {
            path: "m".into(),
            digest: None,
        },
        Event::ReloadSucceeded {
            old: "a".into(),
            new: "b".into(),
            duration_ms: 1,
        },
        Event::ReloadFailed {
            reason: "r".into(),
            stage: ReloadStage::Starting,
            rolling_back: true,
            pid: None,
        },
        Event::ReloadRolledBack {
            model_ref: "a".into(),
            duration_ms: 1,
        },
        Event::DeviceMaskViolation {
            pid: 1,
            gpu_uuid: "GPU-b".into(),
        },
        Event::PoolRemoved,
        Event::HandoffRegistered {
            handoff: Box::new(Handoff {
                engine: "llamacpp".into(),
                engine_version: "b1".into(),
                url: "http://127.0.0.1:1".into(),
                pool_id: "p1".into(),
                replica_id: "r".into(),
                model: HandoffModel { path: "m".into() },
                flags: vec![],
                device_mask: None,
                slots_total: 1,
                pid: None,
            }),
            path: "f".into(),
        },
        Event::HandoffRejected {
            file: "f".into(),
            field: "slots_total".into(),
            reason: "r".into(),
        },
        Event::EngineStartRequested {
            engine: Box::new(engine("p1")),
            attempt: 1,
            purpose: StartPurpose::Trial,
        },
        Event::HealthCheckRecovered { after_failures: 1 },
        Event::BackoffReset {
            previous_attempt: 3,
        },
        Event::VramUsageObserved {
            pid: 1,
            used_bytes: 1 << 30,
        },
        Event::MigInventoryObserved {
            devices: vec![MigDeviceInfo {
                uuid: "MIG-x".into(),
                parent_index: 0,
                name: "1g.10gb".into(),
                vram_total_bytes: 10 << 30,
                vram_free_bytes: 9 << 30,
            }],
        },
        Event::JournalLossAccepted {
            from_seq: 8,
            to_seq: 10,
            reason: "disk replaced".into(),
        },
        Event::UntrackedEngineStopped {
            pool_id: "p1".into(),
            pid: 4242,
            reason: "engine 4242 ran unknown to the journal; stopped".into(),
        },
    ]
}

#[test]
fn every_event_round_trips_through_bincode_and_json() {
    let events = one_of_each();
    let mut kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), events.len(), "one of each, no duplicates");
    assert_eq!(events.len(), 44, "update one_of_each when adding an event");
    for event in &events {
        let bytes = bincode::serialize(event).unwrap();
        assert_eq!(
            &bincode::deserialize::<Event>(&bytes).unwrap(),
            event,
            "bincode {}",
            event.kind()
        );
        let json = serde_json::to_value(event).unwrap();
        assert_eq!(
            &serde_json::from_value::<Event>(json.clone()).unwrap(),
            event,
            "json {}",
            event.kind()
        );
        // externally tagged: a unit variant is its name, a struct variant {name: {fields}}
        match &json {
            serde_json::Value::String(name) => assert_eq!(name, event.kind()),
            serde_json::Value::Object(map) => {
                assert_eq!(map.len(), 1);
                let fields = map.get(event.kind()).unwrap();
                assert!(
                    fields.is_object(),
                    "{} must be a struct variant",
                    event.kind()
                );
                assert!(fields.get("kind").is_none(), "no field named kind");
            }
            other => panic!("{other}"),
        }
    }
}

/// The loss marker of `journal repair --accept-loss` (format version 3): the last variant
/// (bincode index 42, after `MigInventoryObserved`), a node event, and its JSON names its range.
#[test]
fn the_loss_marker_is_the_last_variant_and_a_node_event() {
    let event = Event::JournalLossAccepted {
        from_seq: 8,
        to_seq: 10,
        reason: "disk replaced".into(),
    };
    assert_eq!(event.kind(), "JournalLossAccepted");
    assert_eq!(event.scope(), Scope::Node);
    assert!(event.is_node_event());
    let bytes = bincode::serialize(&event).unwrap();
    assert_eq!(
        bytes[..4],
        42u32.to_le_bytes(),
        "appended after MigInventoryObserved"
    );
    let mig = bincode::serialize(&Event::MigInventoryObserved { devices: vec![] }).unwrap();
    assert_eq!(mig[..4], 41u32.to_le_bytes());
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        serde_json::json!({
            "JournalLossAccepted": {"from_seq": 8, "to_seq": 10, "reason": "disk replaced"}
        })
    );
    let untracked = Event::UntrackedEngineStopped {
        pool_id: "p1".into(),
        pid: 7,
        reason: "stopped".into(),
    };
    assert_eq!(
        bincode::serialize(&untracked).unwrap()[..4],
        43u32.to_le_bytes()
    );
    assert_eq!(untracked.scope(), Scope::Node);
}

/// Format version 4: `EngineSpawned` and `HealthCheckPassed` keep their indexes and gain their
/// last field (`boot_id`, `exe`: an `Option`, one byte `0` when absent); the start failure
/// `PortInUse` is appended (index 6, after `CpuSpillover`) and answers `PORT_IN_USE`.
#[test]
fn version_4_appends_the_engine_identity_fields_and_port_in_use() {
    const { assert!(EVENT_FORMAT_VERSION >= 4) };
    let spawned = |boot_id: Option<String>| Event::EngineSpawned {
        pid: 1,
        start_time: 2,
        log_path: "l".into(),
        pid_path: "p".into(),
        attempt: 0,
        health_deadline_at_ms: 3,
        boot_id,
    };
    let without = bincode::serialize(&spawned(None)).unwrap();
    assert_eq!(without[..4], 8u32.to_le_bytes());
    assert_eq!(without.last(), Some(&0u8), "None is the last byte");
    let with = bincode::serialize(&spawned(Some(BOOT_ID.into()))).unwrap();
    assert_eq!(with[..without.len() - 1], without[..without.len() - 1]);
    assert!(with.ends_with(BOOT_ID.as_bytes()));
    let passed = Event::HealthCheckPassed {
        after_ms: 1,
        engine_version: "v".into(),
        slots_total: 1,
        exe: None,
    };
    let bytes = bincode::serialize(&passed).unwrap();
    assert_eq!(bytes[..4], 9u32.to_le_bytes());
    assert_eq!(bytes.last(), Some(&0u8));
    assert_eq!(
        bincode::serialize(&StartFailure::PortInUse).unwrap(),
        6u32.to_le_bytes()
    );
    assert_eq!(StartFailure::PortInUse.code().as_str(), "PORT_IN_USE");
    assert_eq!(
        serde_json::to_value(StartFailure::PortInUse).unwrap(),
        "port_in_use"
    );
}

/// Format version 5: the prepared engine gains its last field, `progress` (an `Option`, one
/// byte `0` when absent), so `PreloadRequested`, which holds only the engine, ends with it.
#[test]
fn version_5_gives_the_prepared_engine_its_declared_progress_request() {
    const { assert!(EVENT_FORMAT_VERSION >= 5) };
    let mut engine = support::engine("p1");
    engine.progress = None;
    let preload = |engine: &pool_core::PreparedEngine| Event::PreloadRequested {
        engine: Box::new(engine.clone()),
    };
    let without = bincode::serialize(&preload(&engine)).unwrap();
    assert_eq!(without[..4], 6u32.to_le_bytes());
    assert_eq!(without.last(), Some(&0u8), "None is the last byte");
    engine.progress = Some(Box::new(pool_core::ProgressRequest {
        path: "/completion".into(),
        method: "POST".into(),
        body: None,
        expect_status: 200,
    }));
    let with = bincode::serialize(&preload(&engine)).unwrap();
    assert_eq!(with[..without.len() - 1], without[..without.len() - 1]);
    assert_eq!(with[without.len() - 1], 1, "Some");
}

#[test]
fn pool_status_json_has_the_spec_fields_in_order() {
    let state = given(&ready("p1", 100)).state;
    let json = serde_json::to_string(&state.status("p1").unwrap()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let spec = [
        "pool_id",
        "phase",
        "live",
        "ready",
        "draining",
        "pid",
        "engine",
        "engine_version",
        "model_ref",
        "device_mask",
        "slots_total",
        "slots_free",
        "active_leases",
        "last_error",
        "last_heartbeat_ms",
        "restart_count",
        "crash_count",
        "backoff_ms",
        "breaker",
        "vram_used_bytes",
        "handoff_path",
        "url",
        "retiring",
        "last_seq",
    ];
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), spec.len());
    let mut last = 0;
    for key in spec {
        let at = json
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("missing {key}"));
        assert!(at >= last, "{key} out of order");
        last = at;
    }
    assert_eq!(value["phase"], "ready");
    assert_eq!(value["breaker"], "closed");
    assert_eq!(value["pool_id"], "p1");
}

#[test]
fn state_snapshot_round_trips_through_bincode() {
    let mut state = given(&ready("p1", 100)).state;
    state = fold(
        state,
        &[Fact {
            pool_id: Some(id("p1")),
            event: Event::LeaseGranted {
                lease_id: lease("l1"),
            },
        }],
        T0,
    );
    let bytes = bincode::serialize(&state).unwrap();
    assert_eq!(bincode::deserialize::<State>(&bytes).unwrap(), state);
    let _ = STATE_SNAPSHOT_VERSION;
}

#[test]
fn enums_are_snake_case() {
    assert_eq!(
        serde_json::to_value(Phase::CircuitOpen).unwrap(),
        "circuit_open"
    );
    assert_eq!(
        serde_json::to_value(ExitReason::OomKilled).unwrap(),
        "oom_killed"
    );
    assert_eq!(
        serde_json::to_value(BreakerState::HalfOpen).unwrap(),
        "half_open"
    );
    assert_eq!(
        serde_json::to_value(DrainOutcome::ForceStopped).unwrap(),
        "force_stopped"
    );
    assert_eq!(
        serde_json::to_value(FailureClass::GpuFault).unwrap(),
        "gpu_fault"
    );
}

#[test]
fn rejection_codes_and_messages() {
    let r = Rejection::PoolNotFound {
        pool_id: "p1".into(),
    };
    assert_eq!(r.code().as_str(), "POOL_NOT_FOUND");
    assert!(r.to_string().contains("'p1'"));
    let r = Rejection::CircuitOpen {
        pool_id: "p1".into(),
        retry_after_ms: 5,
    };
    assert_eq!(r.code().as_str(), "CIRCUIT_OPEN");
    assert!(r.to_string().contains("breaker/reset"));
}

/// `Stalled` was appended to `ExitReason`: bincode index 9 (after `Unknown`, 8), so the
/// reasons of older records keep their meaning; JSON `"stalled"`.
#[test]
fn the_stalled_reason_is_appended() {
    assert_eq!(
        bincode::serialize(&ExitReason::Unknown).unwrap(),
        [8, 0, 0, 0]
    );
    assert_eq!(
        bincode::serialize(&ExitReason::Stalled).unwrap(),
        [9, 0, 0, 0]
    );
    assert_eq!(
        serde_json::to_value(ExitReason::Stalled).unwrap(),
        "stalled"
    );
}

/// Format version 6 appends the surge's events after `RestartHeld` (index 48), and the reload
/// stage `Surging` after `RollingBack`: the indices bincode writes.
#[test]
fn version_6_appends_the_surge_events_and_stage() {
    assert_eq!(EVENT_FORMAT_VERSION, 6);
    let index = |event: &Event| {
        u32::from_le_bytes(bincode::serialize(event).unwrap()[..4].try_into().unwrap())
    };
    assert_eq!(
        index(&Event::RestartHeld {
            gpu_uuid: "g".into()
        }),
        48
    );
    let chosen = Event::ReloadStrategyChosen {
        strategy: ReloadStrategy::Surge,
        reason: String::new(),
        surge_port: None,
    };
    assert_eq!(index(&chosen), 49);
    let ended = Event::SecondEngineEnded {
        pid: 1,
        how: SecondEnd::Lost,
        leases_dropped: 0,
    };
    assert_eq!(index(&ended), 55);
    assert_eq!(
        bincode::serialize(&ReloadStage::Surging).unwrap(),
        4u32.to_le_bytes()
    );
}
