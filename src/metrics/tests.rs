//! Unit tests of the metrics: what each event counts, the gauges of a registry, the recorder.

use super::*;
use pool_core::{evolve, PreparedEngine, Stamp};

fn engine(pool: &str) -> PreparedEngine {
    serde_json::from_value(serde_json::json!({
        "binary_path": "/bin/engine-sim",
        "flags": [],
        "host": "127.0.0.1",
        "port": 9000,
        "model_path": "/models/m.gguf",
        "engine_version": "sim-1",
        "pool_id": pool,
        "replica_id": "r0",
    }))
    .expect("a prepared engine")
}

/// Folds `events` for pool `p1` at the given times, returning every event's updates.
fn run(events: Vec<(u64, Event)>) -> (State, Vec<Update>) {
    let mut state = State::default();
    let mut all = Vec::new();
    for (ts_ms, event) in events {
        let seq = state.last_seq() + 1;
        let stamp = Stamp {
            seq,
            ts_ms,
            pool_id: Some("p1"),
        };
        let before = Before::of(state.pool("p1"));
        state = evolve(state, stamp, &event);
        all.extend(updates(Some("p1"), ts_ms, &event, before, state.pool("p1")));
    }
    (state, all)
}

fn preload_events() -> Vec<(u64, Event)> {
    vec![
        (
            1_000,
            Event::PreloadRequested {
                engine: Box::new(engine("p1")),
            },
        ),
        (
            1_100,
            Event::EngineSpawned {
                pid: 42,
                start_time: 1,
                log_path: "l".into(),
                pid_path: "p".into(),
                attempt: 0,
                health_deadline_at_ms: 100_000,
                boot_id: None,
            },
        ),
        (
            3_000,
            Event::HealthCheckPassed {
                after_ms: 1_900,
                engine_version: "sim-1".into(),
                slots_total: 4,
                exe: None,
            },
        ),
        (
            3_500,
            Event::PoolReady {
                handoff_path: "h".into(),
                backoff_reset_at_ms: 400_000,
                breaker_close_at_ms: None,
            },
        ),
    ]
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[test]
fn a_preload_counts_a_success_and_its_duration_from_the_recorded_times() {
    let (state, updates) = run(preload_events());
    assert_eq!(
        updates,
        vec![
            Update::Count {
                name: "pool_preload_total",
                labels: labels(&[("pool_id", "p1"), ("outcome", "success")]),
                by: 1,
            },
            Update::Observe {
                name: "pool_preload_duration_seconds",
                labels: labels(&[("pool_id", "p1")]),
                value: 2.5,
            },
        ]
    );
    let text = render_gauges(&state, &[], 0.25);
    assert!(text.contains("pool_ready{pool_id=\"p1\"} 1\n"), "{text}");
    assert!(
        text.contains("pool_slots_total{pool_id=\"p1\"} 4\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE pool_slots_total untyped\n"), "{text}");
    assert!(
        text.contains("pool_slots_free{pool_id=\"p1\"} 4\n"),
        "{text}"
    );
    assert!(
        text.contains("circuit_breaker_state{pool_id=\"p1\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("journal_last_seq 4\n"), "{text}");
    assert!(
        text.contains("journal_replay_duration_seconds 0.25\n"),
        "{text}"
    );
}

#[test]
fn a_crash_counts_its_reason_then_the_restart_and_the_backoff() {
    let mut events = preload_events();
    events.push((
        10_000,
        Event::EngineExited {
            pid: 42,
            exit_code: Some(1),
            signal: None,
            reason: ExitReason::Crash,
            detail: "boom".into(),
        },
    ));
    events.push((
        10_000,
        Event::RestartScheduled {
            attempt: 1,
            delay_ms: 1_500,
            not_before_ms: 11_500,
            reason: ExitReason::Crash,
        },
    ));
    events.push((
        11_500,
        Event::EngineStartRequested {
            engine: Box::new(engine("p1")),
            attempt: 1,
            purpose: pool_core::StartPurpose::Restart,
        },
    ));
    let (state, updates) = run(events);
    let tail = &updates[2..];
    assert_eq!(
        tail,
        &[
            Update::Count {
                name: "engine_crash_total",
                labels: labels(&[("pool_id", "p1"), ("reason", "crash")]),
                by: 1,
            },
            Update::Observe {
                name: "restart_backoff_seconds",
                labels: labels(&[("pool_id", "p1")]),
                value: 1.5,
            },
            Update::Count {
                name: "engine_restart_total",
                labels: labels(&[("pool_id", "p1")]),
                by: 1,
            },
        ]
    );
    let text = render_gauges(&state, &[], 0.0);
    assert!(text.contains("pool_ready{pool_id=\"p1\"} 0\n"), "{text}");
    assert!(
        text.contains("pool_slots_free{pool_id=\"p1\"} 0\n"),
        "{text}"
    );
}

#[test]
fn a_restart_is_not_a_preload_and_a_graceful_exit_is_not_a_crash() {
    let mut events = preload_events();
    events.push((
        5_000,
        Event::EngineExited {
            pid: 42,
            exit_code: Some(0),
            signal: None,
            reason: ExitReason::Graceful,
            detail: String::new(),
        },
    ));
    let (_, updates) = run(events);
    assert_eq!(updates.len(), 2, "{updates:?}");
}

#[test]
fn drains_breakers_storms_probes_and_resets_count() {
    let event_updates = |event: &Event| updates(Some("p1"), 0, event, Before::default(), None);
    assert_eq!(
        event_updates(&Event::DrainCompleted {
            outcome: DrainOutcome::ForceStopped,
            duration_ms: 2_000,
            leases_at_stop: 1,
        }),
        vec![
            Update::Count {
                name: "pool_drain_total",
                labels: labels(&[("pool_id", "p1"), ("outcome", "force_stopped")]),
                by: 1,
            },
            Update::Observe {
                name: "pool_drain_duration_seconds",
                labels: labels(&[("pool_id", "p1")]),
                value: 2.0,
            },
        ]
    );
    for (event, name) in [
        (
            Event::CircuitOpened {
                failures: 5,
                open_ms: 1,
                class: pool_core::FailureClass::Other,
                half_open_at_ms: 1,
            },
            "circuit_breaker_open_total",
        ),
        (
            Event::RestartStormDetected {
                restarts: 11,
                window_ms: 60_000,
                classification: pool_core::StormClass::CrashStorm,
                hint: "see the log".into(),
            },
            "restart_storm_total",
        ),
        (
            Event::HealthCheckFailed { consecutive: 1 },
            "health_probe_failures_total",
        ),
    ] {
        assert_eq!(
            event_updates(&event),
            vec![Update::Count {
                name,
                labels: labels(&[("pool_id", "p1")]),
                by: 1
            }]
        );
    }
    assert_eq!(
        updates(
            None,
            0,
            &Event::DriverResetObserved {
                gpu_uuid: "GPU-1".into()
            },
            Before::default(),
            None
        ),
        vec![Update::Count {
            name: "driver_reset_total",
            labels: labels(&[("gpu", "GPU-1")]),
            by: 1
        }]
    );
}

#[test]
fn reloads_count_by_outcome() {
    let count = |name, outcome: Option<&str>| {
        let mut l = vec![("pool_id", "p1")];
        l.extend(outcome.map(|o| ("outcome", o)));
        Update::Count {
            name,
            labels: labels(&l),
            by: 1,
        }
    };
    let reloading = Before {
        reload_requested_at_ms: Some(1_000),
        ..Before::default()
    };
    let at = |event: &Event, before: Before| updates(Some("p1"), 5_000, event, before, None);
    let succeeded = Event::ReloadSucceeded {
        old: "a".into(),
        new: "b".into(),
        duration_ms: 1_500,
    };
    assert_eq!(
        at(&succeeded, reloading),
        vec![
            count("pool_reload_total", Some("success")),
            Update::Observe {
                name: "pool_reload_duration_seconds",
                labels: labels(&[("pool_id", "p1")]),
                value: 1.5,
            },
        ]
    );
    let failed = |rolling_back| Event::ReloadFailed {
        reason: "bad model".into(),
        stage: pool_core::ReloadStage::Starting,
        rolling_back,
        pid: None,
    };
    assert_eq!(
        at(&failed(false), reloading),
        vec![count("pool_reload_total", Some("failure"))]
    );
    // A failure that rolls back is counted once, by its ReloadRolledBack; one with no
    // reload in flight (replayed out of context) is not counted at all.
    assert_eq!(at(&failed(true), reloading), vec![]);
    assert_eq!(at(&failed(false), Before::default()), vec![]);
    let rolled_back = Event::ReloadRolledBack {
        model_ref: "a".into(),
        duration_ms: 900,
    };
    assert_eq!(
        at(&rolled_back, reloading),
        vec![count("pool_reload_total", Some("rolled_back"))]
    );
}

#[test]
fn a_removed_pool_has_no_gauges() {
    let mut events = preload_events();
    events.push((6_000, Event::PoolRemoved));
    let (state, _) = run(events);
    let text = render_gauges(&state, &[], 0.0);
    assert!(!text.contains("pool_id=\"p1\""), "{text}");
    assert!(!text.contains("pool_ready"), "{text}");
}

#[test]
fn two_recorders_do_not_share_series_and_render_help_and_buckets() {
    let a = NodeMetrics::new();
    let b = NodeMetrics::new();
    a.record(&[Update::Count {
        name: "pool_preload_total",
        labels: labels(&[("pool_id", "p\"1"), ("outcome", "success")]),
        by: 2,
    }]);
    a.appended(3, 0.002);
    let text = a.render(&State::default(), None);
    assert!(text.contains("# HELP pool_preload_total "), "{text}");
    assert!(text.contains("# TYPE pool_preload_total counter"), "{text}");
    assert!(text.contains("journal_events_total 3"), "{text}");
    assert!(
        text.contains("journal_append_duration_seconds_bucket{le=\"0.0025\"} 1"),
        "{text}"
    );
    let other = b.render(&State::default(), None);
    assert!(!other.contains("pool_preload_total"), "{other}");
    assert!(other.contains("journal_events_total 0\n"), "{other}");
}

#[test]
fn label_less_counters_show_0_before_anything_and_dropped_clients_count() {
    let metrics = NodeMetrics::new();
    let text = metrics.render(&State::default(), None);
    for line in [
        "# TYPE sse_clients_dropped_total counter\n",
        "sse_clients_dropped_total 0\n",
        "journal_events_total 0\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    metrics.sse_client_dropped();
    metrics.sse_client_dropped();
    let text = metrics.render(&State::default(), None);
    assert!(text.contains("sse_clients_dropped_total 2\n"), "{text}");
}

#[test]
fn an_xid_counts_by_gpu_and_code() {
    let event = Event::GpuXidObserved {
        gpu_uuid: "GPU-1".into(),
        xid: 79,
    };
    assert_eq!(
        updates(None, 0, &event, Before::default(), None),
        vec![Update::Count {
            name: "gpu_xid_total",
            labels: labels(&[("gpu", "GPU-1"), ("xid", "79")]),
            by: 1
        }]
    );
    let metrics = NodeMetrics::new();
    metrics.record(&updates(None, 0, &event, Before::default(), None));
    let text = metrics.render(&State::default(), None);
    assert!(
        text.contains("gpu_xid_total{gpu=\"GPU-1\",xid=\"79\"} 1\n"),
        "{text}"
    );
}

#[test]
fn the_phase_is_one_series_per_pool_at_1() {
    let (state, _) = run(preload_events());
    let text = render_gauges(&state, &[], 0.0);
    assert!(text.contains("# TYPE pool_phase gauge\n"), "{text}");
    assert!(
        text.contains("pool_phase{pool_id=\"p1\",phase=\"ready\"} 1\n"),
        "{text}"
    );
    assert_eq!(text.matches("pool_phase{").count(), 1, "{text}");
    let mut events = preload_events();
    events.truncate(2);
    let (state, _) = run(events);
    let text = render_gauges(&state, &[], 0.0);
    assert!(
        text.contains("pool_phase{pool_id=\"p1\",phase=\"starting\"} 1\n"),
        "{text}"
    );
}

#[test]
fn gpu_labels_and_escaping() {
    let gpu = GpuInfo {
        index: 0,
        uuid: "GPU-\"x\"".into(),
        name: "n".into(),
        compute_capability: "8.6".into(),
        vram_total_bytes: 100,
        vram_free_bytes: 40,
    };
    let text = render_gauges(&State::default(), &[gpu], 0.0);
    assert!(
        text.contains("gpu_vram_free_bytes{gpu=\"GPU-\\\"x\\\"\",index=\"0\"} 40\n"),
        "{text}"
    );
}

#[test]
fn a_quarantined_gpu_is_1_the_others_0() {
    let gpu = |index: u32, uuid: &str| GpuInfo {
        index,
        uuid: uuid.into(),
        name: "n".into(),
        compute_capability: "9.0".into(),
        vram_total_bytes: 100,
        vram_free_bytes: 40,
    };
    let mut state = State::default();
    for uuid in ["GPU-a", "GPU-gone"] {
        let quarantine = pool_core::Quarantine {
            since_ms: 1,
            faults: 3,
        };
        state.node.quarantined.insert(uuid.into(), quarantine);
    }
    let text = render_gauges(&state, &[gpu(0, "GPU-a"), gpu(1, "GPU-b")], 0.0);
    for line in [
        "gpu_quarantined{gpu=\"GPU-a\",index=\"0\"} 1\n",
        "gpu_quarantined{gpu=\"GPU-b\",index=\"1\"} 0\n",
        "gpu_quarantined{gpu=\"GPU-gone\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}
