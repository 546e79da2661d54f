//! The wire types of `api/dto.rs` as readers see them: the JSON of each equals the JSON of the
//! type the node or the GPU monitor holds (`pool-managerd status` and the demo read the API's
//! answers back into those types; `pool-managerd explain` reads an explanation back into the
//! core's), and the document lists exactly their fields.

use super::document;
use crate::api::dto;
use serde_json::Value;

/// The property names of the document's schema `name`.
fn properties(name: &str) -> Vec<String> {
    let doc = document();
    let mut keys: Vec<String> = doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn sample_status() -> pool_core::PoolStatus {
    pool_core::PoolStatus {
        pool_id: pool_core::PoolId::new("p1").unwrap(),
        phase: pool_core::Phase::CircuitOpen,
        live: true,
        ready: false,
        draining: false,
        pid: Some(42),
        engine: Some("llamacpp".into()),
        engine_version: Some("b1".into()),
        model_ref: Some("/m.gguf".into()),
        device_mask: Some("0".into()),
        slots_total: 4,
        slots_free: 0,
        active_leases: 1,
        last_error: Some("exit code 3".into()),
        last_heartbeat_ms: Some(7),
        restart_count: 2,
        crash_count: 3,
        backoff_ms: 400,
        breaker: pool_core::BreakerState::HalfOpen,
        vram_used_bytes: Some(1 << 30),
        handoff_path: None,
        url: Some("http://127.0.0.1:9301".into()),
        retiring: Some(pool_core::RetiringEngine {
            pid: 41,
            leases: 1,
            deadline_at_ms: Some(8),
        }),
        last_seq: 9,
    }
}

#[test]
fn the_wire_status_reads_back_as_the_nodes_status() {
    let status = sample_status();
    let wire = serde_json::to_value(dto::PoolStatus::from(status.clone())).unwrap();
    assert_eq!(wire, serde_json::to_value(&status).unwrap());
    let read: pool_core::PoolStatus = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(read, status);
    assert_eq!(keys(&wire), properties("PoolStatus"));
}

#[test]
fn every_phase_and_breaker_state_is_spelled_as_the_core_spells_it() {
    use pool_core::{BreakerState as B, Phase as P};
    let phases = [
        P::Registered,
        P::Starting,
        P::Ready,
        P::Draining,
        P::Stopping,
        P::Stopped,
        P::Backoff,
        P::CircuitOpen,
        P::Reloading,
        P::Failed,
    ];
    for p in phases {
        let wire = serde_json::to_value(dto::Phase::from(p)).unwrap();
        assert_eq!(wire, serde_json::to_value(p).unwrap());
        assert_eq!(wire, p.as_str());
    }
    for b in [B::Closed, B::Open, B::HalfOpen] {
        let wire = serde_json::to_value(dto::BreakerState::from(b)).unwrap();
        assert_eq!(wire, serde_json::to_value(b).unwrap());
    }
    let doc = document();
    let listed = doc["components"]["schemas"]["Phase"]["enum"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, phases.len());
}

#[test]
fn the_wire_gpu_reads_back_as_the_monitors_gpu() {
    let process = |pid, pool: Option<&str>| crate::gpu::GpuProcess {
        pid,
        used_bytes: 512,
        pool_id: pool.map(str::to_string),
    };
    let gpu = crate::gpu::Gpu {
        info: pool_core::GpuInfo {
            index: 0,
            uuid: "GPU-0".into(),
            name: "H200".into(),
            compute_capability: "9.0".into(),
            vram_total_bytes: 1 << 40,
            vram_free_bytes: 1 << 39,
        },
        mig_devices: vec![crate::gpu::MigDevice {
            info: pool_core::MigDeviceInfo {
                uuid: "MIG-1".into(),
                parent_index: 0,
                name: "1g.18gb".into(),
                vram_total_bytes: 1 << 34,
                vram_free_bytes: 1 << 33,
            },
            processes: vec![process(7, None)],
        }],
        processes: vec![process(42, Some("p1"))],
    };
    let wire = serde_json::to_value(dto::Gpu::from(gpu.clone())).unwrap();
    // The wire adds the registry's quarantine (set by the handler) to the monitor's GPU.
    let mut monitor_part = wire.clone();
    let object = monitor_part.as_object_mut().unwrap();
    assert_eq!(object.remove("quarantined"), Some(serde_json::json!(false)));
    assert_eq!(
        object.remove("quarantined_since_ms"),
        Some(serde_json::Value::Null)
    );
    assert_eq!(monitor_part, serde_json::to_value(&gpu).unwrap());
    let read: crate::gpu::Gpu = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(read, gpu);
    assert_eq!(keys(&wire), properties("Gpu"));
    assert_eq!(keys(&wire["mig_devices"][0]), properties("MigDevice"));
    assert_eq!(keys(&wire["processes"][0]), properties("GpuProcess"));
}

fn sample_explanation() -> pool_core::Explanation {
    use pool_core::explain::{Action, Mark, Next, Step};
    pool_core::Explanation {
        pool_id: "p1".into(),
        as_of_seq: 41,
        phase: pool_core::Phase::CircuitOpen,
        since: Some(Mark {
            seq: 41,
            ts_ms: 1_000,
            at: "1970-01-01T00:00:01.000Z".into(),
        }),
        why: "circuit open since 00:00:01 (seq 41) because 5 consecutive failures".into(),
        chain: vec![Step {
            seq: 41,
            ts_ms: 1_000,
            kind: "CircuitOpened".into(),
            cause: Some(40),
            text: "breaker opened".into(),
        }],
        chain_omitted: 3,
        next: vec![Next {
            at_ms: Some(301_000),
            at: Some("1970-01-01T00:05:01.000Z".into()),
            text: "half-open trial".into(),
        }],
        actions: vec![Action {
            text: "reset the breaker".into(),
            request: Some("POST /v2/pools/p1/breaker/reset".into()),
        }],
        last_error: Some("exit code 3".into()),
    }
}

#[test]
fn the_wire_explanation_reads_back_as_the_cores_explanation() {
    let explanation = sample_explanation();
    let wire = serde_json::to_value(dto::Explanation::from(explanation.clone())).unwrap();
    assert_eq!(wire, serde_json::to_value(&explanation).unwrap());
    let read: pool_core::Explanation = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(read, explanation);
    assert_eq!(keys(&wire), properties("Explanation"));
    assert_eq!(keys(&wire["since"]), properties("HistoryMark"));
    assert_eq!(keys(&wire["chain"][0]), properties("ExplainStep"));
    assert_eq!(keys(&wire["next"][0]), properties("ExplainNext"));
    assert_eq!(keys(&wire["actions"][0]), properties("ExplainAction"));
}

#[test]
fn reload_strategies_are_spelled_as_the_core_spells_them() {
    use pool_core::{ReloadStrategy as Chosen, ReloadStrategyAsked as Asked};
    for asked in [Asked::Auto, Asked::DrainFirst, Asked::Surge] {
        let text = serde_json::to_value(asked).unwrap();
        let wire: dto::ReloadStrategyAsked = serde_json::from_value(text).unwrap();
        assert_eq!(pool_core::ReloadStrategyAsked::from(wire), asked);
    }
    for chosen in [Chosen::DrainFirst, Chosen::Surge] {
        let wire = serde_json::to_value(dto::ReloadStrategy::from(chosen)).unwrap();
        assert_eq!(wire, serde_json::json!(chosen.as_str()));
    }
    assert!(serde_json::from_value::<dto::ReloadStrategyAsked>(serde_json::json!("fast")).is_err());
}
