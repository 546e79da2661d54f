//! Each mirror in `openapi/mirrors.rs` equals its core type: every field and variant, at
//! compile time (exhaustive destructuring) and at run time (the same JSON).

use super::super::*;
use super::document;
use serde_json::Value;

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn properties(schema: &str) -> Vec<String> {
    let doc = document();
    keys(&doc["components"]["schemas"][schema]["properties"])
}

fn required(schema: &str) -> Vec<String> {
    let doc = document();
    let mut out: Vec<String> = doc["components"]["schemas"][schema]["required"]
        .as_array()
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn phase(phase: pool_core::Phase) -> PhaseSchema {
    use pool_core::Phase as P;
    match phase {
        P::Registered => PhaseSchema::Registered,
        P::Starting => PhaseSchema::Starting,
        P::Ready => PhaseSchema::Ready,
        P::Draining => PhaseSchema::Draining,
        P::Stopping => PhaseSchema::Stopping,
        P::Stopped => PhaseSchema::Stopped,
        P::Backoff => PhaseSchema::Backoff,
        P::CircuitOpen => PhaseSchema::CircuitOpen,
        P::Reloading => PhaseSchema::Reloading,
        P::Failed => PhaseSchema::Failed,
    }
}

fn breaker(state: pool_core::BreakerState) -> BreakerStateSchema {
    use pool_core::BreakerState as B;
    match state {
        B::Closed => BreakerStateSchema::Closed,
        B::Open => BreakerStateSchema::Open,
        B::HalfOpen => BreakerStateSchema::HalfOpen,
    }
}

#[test]
fn enums_equal_the_core() {
    use pool_core::{BreakerState as B, Phase as P};
    for p in [
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
    ] {
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::to_value(phase(p)).unwrap()
        );
    }
    for b in [B::Closed, B::Open, B::HalfOpen] {
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            serde_json::to_value(breaker(b)).unwrap()
        );
    }
    let doc = document();
    assert_eq!(
        doc["components"]["schemas"]["Phase"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn pool_status_equals_the_core() {
    let status = pool_core::PoolStatus {
        pool_id: pool_core::PoolId::new("p1").unwrap(),
        phase: pool_core::Phase::Ready,
        live: true,
        ready: true,
        draining: false,
        pid: Some(42),
        engine: Some("llamacpp".into()),
        engine_version: Some("b1".into()),
        model_ref: Some("/m.gguf".into()),
        device_mask: Some("0".into()),
        slots_total: 4,
        slots_free: 3,
        active_leases: 1,
        last_error: None,
        last_heartbeat_ms: Some(7),
        restart_count: 0,
        crash_count: 0,
        backoff_ms: 0,
        breaker: pool_core::BreakerState::Closed,
        vram_used_bytes: None,
        handoff_path: None,
        last_seq: 9,
    };
    // Exhaustive: a field added to the core's PoolStatus fails to build here.
    let pool_core::PoolStatus {
        pool_id,
        phase: p,
        live,
        ready,
        draining,
        pid,
        engine,
        engine_version,
        model_ref,
        device_mask,
        slots_total,
        slots_free,
        active_leases,
        last_error,
        last_heartbeat_ms,
        restart_count,
        crash_count,
        backoff_ms,
        breaker: b,
        vram_used_bytes,
        handoff_path,
        last_seq,
    } = status.clone();
    let mirror = PoolStatusSchema {
        pool_id: pool_id.to_string(),
        phase: phase(p),
        live,
        ready,
        draining,
        pid,
        engine,
        engine_version,
        model_ref,
        device_mask,
        slots_total,
        slots_free,
        active_leases,
        last_error,
        last_heartbeat_ms,
        restart_count,
        crash_count,
        backoff_ms,
        breaker: breaker(b),
        vram_used_bytes,
        handoff_path,
        last_seq,
    };
    let real = serde_json::to_value(&status).unwrap();
    assert_eq!(real, serde_json::to_value(&mirror).unwrap());
    assert_eq!(keys(&real), properties("PoolStatus"));
}

#[test]
fn prepared_engine_equals_the_core() {
    let full: pool_core::PreparedEngine = serde_json::from_value(serde_json::json!({
        "binary_path": "/usr/bin/llama-server",
        "flags": ["--parallel", "2"],
        "host": "127.0.0.1",
        "port": 8080,
        "model_path": "/m.gguf",
        "engine_version": "b1",
        "pool_id": "p1",
        "replica_id": "r0",
        "device_mask": "0",
        "engine": "llamacpp",
        "env": {"A": "1"},
        "health_path": "/health",
        "slots_total": 2,
        "vram_required_bytes": 1,
        "ram_required_bytes": 2,
        "tensor_split": "auto",
    }))
    .unwrap();
    let pool_core::PreparedEngine {
        binary_path,
        flags,
        host,
        port,
        model_path,
        engine_version,
        pool_id,
        replica_id,
        device_mask,
        engine,
        env,
        health_path,
        slots_total,
        vram_required_bytes,
        ram_required_bytes,
        tensor_split,
    } = full.clone();
    let _ = (
        binary_path,
        flags,
        host,
        port,
        model_path,
        engine_version,
        pool_id,
        replica_id,
        device_mask,
        engine,
        env,
        health_path,
        slots_total,
        vram_required_bytes,
        ram_required_bytes,
        tensor_split,
    );
    let real = serde_json::to_value(&full).unwrap();
    assert_eq!(keys(&real), properties("PreparedEngine"));
    // Exactly the schema's required fields are needed.
    let required = required("PreparedEngine");
    let minimal: serde_json::Map<String, Value> = required
        .iter()
        .map(|k| (k.clone(), real[k].clone()))
        .collect();
    serde_json::from_value::<pool_core::PreparedEngine>(Value::Object(minimal.clone()))
        .expect("the schema's required fields suffice");
    for k in &required {
        let mut less = minimal.clone();
        less.remove(k);
        assert!(
            serde_json::from_value::<pool_core::PreparedEngine>(Value::Object(less)).is_err(),
            "{k} is required by the schema but not by the type"
        );
    }
    let doc = document();
    assert_eq!(
        doc["components"]["schemas"]["PreparedEngine"]["additionalProperties"],
        false
    );
}

#[test]
fn handoff_equals_the_core() {
    let full: pool_core::Handoff = serde_json::from_value(serde_json::json!({
        "engine": "llamacpp",
        "engine_version": "b1",
        "url": "http://127.0.0.1:8080",
        "pool_id": "p1",
        "replica_id": "r0",
        "model": {"path": "/m.gguf"},
        "flags": [],
        "device_mask": "0",
        "slots_total": 1,
        "pid": 7,
    }))
    .unwrap();
    let pool_core::Handoff {
        engine,
        engine_version,
        url,
        pool_id,
        replica_id,
        model: pool_core::HandoffModel { path },
        flags,
        device_mask,
        slots_total,
        pid,
    } = full.clone();
    let _ = (
        engine,
        engine_version,
        url,
        pool_id,
        replica_id,
        path,
        flags,
        device_mask,
        slots_total,
        pid,
    );
    let real = serde_json::to_value(&full).unwrap();
    assert_eq!(keys(&real), properties("Handoff"));
    assert_eq!(keys(&real["model"]), properties("HandoffModel"));
    let required = required("Handoff");
    let minimal: serde_json::Map<String, Value> = required
        .iter()
        .map(|k| (k.clone(), real[k].clone()))
        .collect();
    serde_json::from_value::<pool_core::Handoff>(Value::Object(minimal.clone()))
        .expect("the schema's required fields suffice");
    for k in &required {
        let mut less = minimal.clone();
        less.remove(k);
        assert!(
            serde_json::from_value::<pool_core::Handoff>(Value::Object(less)).is_err(),
            "{k} is required by the schema but not by the type"
        );
    }
}

#[test]
fn gpu_equals_the_shell() {
    let process = crate::gpu::GpuProcess {
        pid: 1,
        used_bytes: 2,
        pool_id: Some("p1".into()),
    };
    let gpu = crate::gpu::Gpu {
        info: pool_core::GpuInfo {
            index: 0,
            uuid: "GPU-1".into(),
            name: "A100".into(),
            compute_capability: "8.0".into(),
            vram_total_bytes: 10,
            vram_free_bytes: 5,
        },
        mig_devices: vec![crate::gpu::MigDevice {
            info: pool_core::MigDeviceInfo {
                uuid: "MIG-1".into(),
                parent_index: 0,
                name: "1g.10gb".into(),
                vram_total_bytes: 1,
                vram_free_bytes: 1,
            },
            processes: vec![process.clone()],
        }],
        processes: vec![process],
    };
    // Exhaustive destructurings: a field added to these types fails to build here.
    let crate::gpu::Gpu {
        info:
            pool_core::GpuInfo {
                index,
                uuid,
                name,
                compute_capability,
                vram_total_bytes,
                vram_free_bytes,
            },
        mig_devices,
        processes,
    } = gpu.clone();
    let process_mirror = |p: crate::gpu::GpuProcess| {
        let crate::gpu::GpuProcess {
            pid,
            used_bytes,
            pool_id,
        } = p;
        GpuProcessSchema {
            pid,
            used_bytes,
            pool_id,
        }
    };
    let mirror = GpuSchema {
        index,
        uuid,
        name,
        compute_capability,
        vram_total_bytes,
        vram_free_bytes,
        mig_devices: mig_devices
            .into_iter()
            .map(|m| {
                let crate::gpu::MigDevice {
                    info:
                        pool_core::MigDeviceInfo {
                            uuid,
                            parent_index,
                            name,
                            vram_total_bytes,
                            vram_free_bytes,
                        },
                    processes,
                } = m;
                MigDeviceSchema {
                    uuid,
                    parent_index,
                    name,
                    vram_total_bytes,
                    vram_free_bytes,
                    processes: processes.into_iter().map(process_mirror).collect(),
                }
            })
            .collect(),
        processes: processes.into_iter().map(process_mirror).collect(),
    };
    assert_eq!(
        serde_json::to_value(&gpu).unwrap(),
        serde_json::to_value(&mirror).unwrap()
    );
    assert_eq!(
        keys(&serde_json::to_value(&gpu).unwrap()),
        properties("Gpu")
    );
}

#[test]
fn envelope_equals_the_journal_form() {
    let envelope = pool_journal::Envelope {
        seq: 3,
        ts_ms: 4,
        pool_id: Some("p1".to_string()),
        cause: Some(2),
        event: pool_core::Event::DaemonStarted {
            version: "0".into(),
            pid: 1,
        },
    };
    let json = pool_journal::envelope_to_json(&envelope);
    let Ok(json) = json else { panic!("{json:?}") };
    assert_eq!(keys(&json), properties("Envelope"));
    assert!(json["event"]["kind"].is_string());
}
