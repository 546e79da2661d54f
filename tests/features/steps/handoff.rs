//! Engines started by someone else (OC-POOL-3101/3102): an engine-sim started by the scenario
//! itself, outside the daemon, and the handoff file that announces it in the daemon's
//! `<runtime>/engines/` folder, which the daemon watches.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use serde_json::json;

use crate::engines::{free_port, ENGINE_SIM};
use crate::steps::params::Json;
use crate::world::PoolWorld;

/// External engines by pool: (process, port, slots). Killed and reaped when dropped.
#[derive(Debug, Default)]
pub struct ExternalEngines(BTreeMap<String, (Child, u16, u32)>);

impl Drop for ExternalEngines {
    fn drop(&mut self) {
        for (child, _, _) in self.0.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[given(expr = "an engine-sim runs outside the daemon for pool {string} with {int} slot(s)")]
async fn external_engine(world: &mut PoolWorld, pool: String, slots: u32) {
    let port = free_port();
    let child = Command::new(ENGINE_SIM)
        .args([
            "--port",
            &port.to_string(),
            "--parallel",
            &slots.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("engine-sim: {e}"));
    world.external.0.insert(pool.clone(), (child, port, slots));
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let healthy = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200);
        if healthy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the external engine of '{pool}' never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_handoff(world: &mut PoolWorld, pool: &str, complete: bool) {
    write_handoff_with(world, pool, complete, None);
}

/// Writes the handoff file of `pool` (atomically: a temporary file renamed into place), with
/// one field replaced when `replace` says so.
fn write_handoff_with(
    world: &mut PoolWorld,
    pool: &str,
    complete: bool,
    replace: Option<(&str, serde_json::Value)>,
) {
    let (child, port, slots) = world
        .external
        .0
        .get(pool)
        .map(|(c, p, s)| (c.id(), *p, *s))
        .unwrap_or_else(|| panic!("pool '{pool}' has no external engine"));
    let mut doc = json!({
        "engine": "engine-sim",
        "engine_version": "ext-7",
        "url": format!("http://127.0.0.1:{port}"),
        "pool_id": pool,
        "replica_id": "r0",
        "model": {"path": "/models/external.gguf"},
        "slots_total": slots,
    });
    if complete {
        doc["flags"] = json!(["--port", port.to_string()]);
        doc["device_mask"] = json!("0,1");
        doc["pid"] = json!(child);
    }
    if let Some((field, value)) = replace {
        doc[field] = value;
    }
    let text = serde_json::to_vec_pretty(&doc).expect("json");
    put_in_engines_folder(world, &format!("{pool}-r0.json"), &text);
}

/// Puts `bytes` into the daemon's `<runtime>/engines/` as `name`, atomically.
fn put_in_engines_folder(world: &mut PoolWorld, name: &str, bytes: &[u8]) {
    let dir = world.runtime_dir().join("engines");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[when(expr = "its provisioner writes a handoff file for pool {string} whose {string} is {json}")]
fn handoff_with_field(world: &mut PoolWorld, pool: String, field: String, value: Json) {
    write_handoff_with(world, &pool, true, Some((&field, value.0)));
}

#[when(expr = "a file {string} that is not JSON appears in the daemon's engines folder")]
fn not_json_handoff(world: &mut PoolWorld, name: String) {
    put_in_engines_folder(world, &name, b"{ this is not JSON");
}

/// The journal's `HandoffRejected`, as the registry keeps the last one (node-level: no pool
/// has it in its history).
#[then(expr = "the daemon records a rejected handoff of the file {string} for the field {string}")]
async fn handoff_rejected(world: &mut PoolWorld, name: String, field: String) {
    let deadline = Instant::now() + crate::world::EVENTUALLY;
    loop {
        let state = world.daemon().state();
        if let Some((file, rejected_field, reason)) = &state.node.last_handoff_rejection {
            if file.ends_with(&format!("/{name}")) && *rejected_field == field {
                assert!(!reason.is_empty(), "the rejection says why");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no HandoffRejected of {name} for the field {field}; the last: {:?}",
            state.node.last_handoff_rejection
        );
        tokio::time::sleep(crate::world::POLL).await;
    }
}

#[when(expr = "its provisioner writes a handoff file for pool {string}")]
fn complete_handoff(world: &mut PoolWorld, pool: String) {
    write_handoff(world, &pool, true);
}

#[when(expr = "its provisioner writes a minimal handoff file for pool {string}")]
fn minimal_handoff(world: &mut PoolWorld, pool: String) {
    write_handoff(world, &pool, false);
}

#[then(expr = "pool {string} runs the external engine")]
async fn runs_external(world: &mut PoolWorld, pool: String) {
    let pid = world
        .external
        .0
        .get(&pool)
        .map(|(c, _, _)| c.id())
        .unwrap_or_else(|| panic!("pool '{pool}' has no external engine"));
    let status = world.status(&pool).await;
    assert_eq!(status.pid, Some(pid), "{status:?}");
}

#[then(expr = "pool {string} has a heartbeat")]
async fn has_heartbeat(world: &mut PoolWorld, pool: String) {
    let status = world.status(&pool).await;
    assert!(status.last_heartbeat_ms.is_some(), "{status:?}");
}
