//! The port a surge's new engine listens on: the first port of `[reload] surge_ports` that no
//! pool's engine uses (its own, its second engine's, or a reload's pick not yet spawned) and
//! that nothing listens on now.
//!
//! Owns: that pick, with the bind test run on a blocking thread.
//! Never: holds the port (the core decides, and the spawn proves the port free again), or
//! fails a reload by itself: no free port is `None`, and the core says what that means.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use pool_core::State;

/// Ports of the range tested at most, so that a wide range of taken ports bounds the work.
pub const PORTS_TESTED_MAX: usize = 256;

/// The first port of `range` that no pool of `state` uses and that binds free now; `None`
/// without a range or when none is free.
pub async fn pick(range: Option<RangeInclusive<u16>>, state: &State) -> Option<u16> {
    let range = range?;
    let used = used_ports(state);
    let test = move || {
        first_free(range, &used, |port| {
            crate::supervisor::port::check_free(port).is_ok()
        })
    };
    match tokio::task::spawn_blocking(test).await {
        Ok(port) => port,
        Err(e) => {
            tracing::warn!("testing the ports of [reload] surge_ports failed: {e}");
            None
        }
    }
}

/// The ports the pools' engines use or are about to: each engine's, each second engine's and
/// each reload's surge port.
fn used_ports(state: &State) -> BTreeSet<u16> {
    let mut used = BTreeSet::new();
    for pool in state.pools.values() {
        used.extend(pool.engine.as_ref().map(|e| e.port));
        used.extend(pool.second.as_ref().map(|s| s.engine.port));
        used.extend(pool.reload.as_ref().and_then(|r| r.surge_port));
    }
    used
}

/// The first port of `range` not in `used` for which `free` holds, testing at most
/// [`PORTS_TESTED_MAX`] ports.
fn first_free(
    range: RangeInclusive<u16>,
    used: &BTreeSet<u16>,
    free: impl Fn(u16) -> bool,
) -> Option<u16> {
    range
        .filter(|port| !used.contains(port))
        .take(PORTS_TESTED_MAX)
        .find(|port| free(*port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_core::{Pool, PoolId, PreparedEngine};

    fn engine_on(port: u16) -> PreparedEngine {
        serde_json::from_value(serde_json::json!({
            "binary_path": "/bin/true",
            "host": "127.0.0.1",
            "port": port,
            "model_path": "/m.gguf",
            "engine_version": "1",
            "pool_id": "a",
            "replica_id": "r0",
        }))
        .unwrap()
    }

    #[test]
    fn ports_used_by_the_registry_are_skipped() {
        let mut state = State::default();
        let id = PoolId::new("a").unwrap();
        let mut pool = Pool::new(id.clone());
        pool.engine = Some(engine_on(9301));
        state.pools.insert(id, pool);
        let used = used_ports(&state);
        assert_eq!(used, BTreeSet::from([9301]));
        assert_eq!(first_free(9301..=9303, &used, |_| true), Some(9302));
        assert_eq!(first_free(9301..=9301, &used, |_| true), None);
    }

    #[test]
    fn a_port_a_listener_holds_is_skipped() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let held = listener.local_addr().unwrap().port();
        let free = |port| crate::supervisor::port::check_free(port).is_ok();
        let picked = first_free(held..=held.saturating_add(20), &BTreeSet::new(), free);
        assert!(picked.is_some_and(|port| port != held), "{picked:?}");
        assert_eq!(first_free(held..=held, &BTreeSet::new(), free), None);
    }

    #[tokio::test]
    async fn no_range_picks_nothing() {
        assert_eq!(pick(None, &State::default()).await, None);
    }
}
