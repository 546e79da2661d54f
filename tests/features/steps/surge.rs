//! Reload without a gap (a surge): a daemon with a surge port, reloads with a strategy, where
//! the pool serves after the switch, and whether it stayed ready throughout (the pool's events
//! folded by the core's own `evolve`, event by event: a poll could miss a short gap).

use cucumber::{given, then};
use pool_core::{Event, Stamp, State};
use serde_json::{json, Map, Value};

use crate::world::PoolWorld;

#[given(
    expr = "a running daemon with a surge port on a node whose NVIDIA driver lists {int} GPU(s)"
)]
async fn daemon_with_surge_port(world: &mut PoolWorld, gpus: u32) {
    let port = crate::engines::free_port();
    world.surge_port = Some(port);
    world.setup_mut().gpus = Some(gpus);
    world
        .setup_mut()
        .set("reload.surge_ports", &format!("{port}-{port}"));
    world.start_daemon().await;
}

#[then(expr = "pool {string} serves at the surge port")]
async fn serves_at_surge_port(world: &mut PoolWorld, pool: String) {
    let port = world.surge_port.expect("the daemon has a surge port");
    let status = world.status(&pool).await;
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://127.0.0.1:{port}").as_str()),
        "{status:?}"
    );
    let engine = world.engine_of(&pool).await;
    assert!(
        engine.cmdline().contains(&port.to_string()),
        "the new engine's --port follows the surge port: {:?}",
        engine.cmdline()
    );
}

/// An exported event (`{"kind": "K", ...fields}`) as the core's event.
fn core_event(exported: &Value) -> Event {
    let mut fields: Map<String, Value> = exported.as_object().cloned().unwrap_or_default();
    let kind = fields
        .remove("kind")
        .and_then(|k| k.as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("an event without its kind: {exported}"));
    let tagged = if fields.is_empty() {
        serde_json::from_value(json!(kind))
    } else {
        serde_json::from_value(json!({ kind.clone(): fields }))
    };
    tagged.unwrap_or_else(|e| panic!("{kind}: {e} ({exported})"))
}

/// The pool's events folded one by one from its first; `ready` after each event from the last
/// `ReloadRequested` on must hold.
#[then(expr = "pool {string} stayed ready from its last reload request on")]
async fn stayed_ready(world: &mut PoolWorld, pool: String) {
    let events = world.events(&pool).await;
    let from = events
        .iter()
        .rposition(|e| e["event"]["kind"] == "ReloadRequested")
        .unwrap_or_else(|| panic!("pool '{pool}' has no reload"));
    let mut state = State::default();
    for (index, envelope) in events.iter().enumerate() {
        let event = core_event(&envelope["event"]);
        let stamp = Stamp {
            seq: envelope["seq"].as_u64().unwrap_or(0),
            ts_ms: envelope["ts_ms"].as_u64().unwrap_or(0),
            pool_id: Some(&pool),
        };
        state.apply_mut(stamp, &event);
        if index >= from {
            let ready = state.pool(&pool).is_some_and(|p| p.ready);
            assert!(
                ready,
                "pool '{pool}' was not ready after seq {} ({}):\n{}",
                envelope["seq"],
                event.kind(),
                events
                    .iter()
                    .map(|e| format!("{} {}", e["seq"], e["event"]["kind"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
