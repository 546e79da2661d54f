//! Each mirror in `openapi/mirrors.rs` equals its core type: every field and variant, at
//! compile time (exhaustive destructuring) and at run time (the same JSON).

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
        "progress": {"path": "/completion", "method": "POST", "body": "{}", "expect_status": 200},
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
        progress,
    } = full.clone();
    let pool_core::ProgressRequest {
        path,
        method,
        body,
        expect_status,
    } = *progress.clone().unwrap();
    let _ = (path, method, body, expect_status);
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
        progress,
    );
    let real = serde_json::to_value(&full).unwrap();
    assert_eq!(keys(&real), properties("PreparedEngine"));
    assert_eq!(keys(&real["progress"]), properties("ProgressRequest"));
    assert_eq!(
        required("ProgressRequest"),
        vec!["path".to_string()],
        "only the path is needed"
    );
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
