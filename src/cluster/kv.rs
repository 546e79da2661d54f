//! The registry in NATS key-value buckets: each pool's current status under
//! `<node>.<pool>` in `[cluster] registry_bucket` (`POOL_REGISTRY`), and this node's heartbeat
//! under `<node>` in `[cluster] nodes_bucket` (`POOL_NODES`), whose keys expire 3 heartbeats
//! after the last one, so that a node that stops heartbeating drops out of it by itself.
//!
//! Owns: the buckets' creation, the key encoding (a `.` in an id becomes `=`: KV keys allow
//! `.` only as a separator and no `~`), the values' form ([`PoolEntry`], [`NodeBeat`]), and
//! the mirror task that follows the registry. Never: runs on the node actor or blocks it (it
//! reads the published registry), writes a pool whose status did not change (a status is a
//! pure projection of its events: an unchanged `last_seq` is an unchanged status), writes more
//! than one round of puts per `[cluster] registry_every_ms` (a busy pool is put once per round,
//! at its last seq: the bucket's write rate is bounded by pools, not by leases), or keeps a key
//! of a pool this node no longer has.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use pool_core::PoolStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::port::Registry;

/// The heartbeat's key lives this many heartbeats.
pub const HEARTBEAT_LIVES: u32 = 3;
/// The largest value a bucket accepts (a pool's status is well under it).
pub const VALUE_BYTES_MAX: i32 = 64 * 1024;

/// `id` as one KV key token.
pub fn key_token(id: &str) -> String {
    id.replace('.', "=")
}

/// The registry bucket's key of `pool` on `node`.
pub fn pool_key(node: &str, pool: &str) -> String {
    format!("{}.{}", key_token(node), key_token(pool))
}

/// A pool's value in the registry bucket: its node and its status (with its seq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// The node that runs the pool.
    pub node: String,
    /// The seq of the last event that touched the pool (the status's `last_seq`).
    pub seq: u64,
    /// The pool's status as the node's registry holds it at that seq.
    pub status: PoolStatus,
}

/// A node's value in the nodes bucket, put at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeBeat {
    /// The node.
    pub node: String,
    /// Its journal's last seq.
    pub last_seq: u64,
    /// The last seq the stream acknowledged.
    pub published: u64,
    /// Its pools.
    pub pools: usize,
    /// Its heartbeat period (the key expires after [`HEARTBEAT_LIVES`] of them).
    pub heartbeat_ms: u64,
}

/// What the mirror needs.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// This node's id.
    pub node_id: String,
    /// `[cluster] registry_bucket`.
    pub registry_bucket: String,
    /// `[cluster] nodes_bucket`.
    pub nodes_bucket: String,
    /// `[cluster] replicas`.
    pub replicas: usize,
    /// `[cluster] heartbeat_ms`.
    pub heartbeat: Duration,
    /// `[cluster] registry_every_ms`: the least time between two rounds of puts.
    pub registry_every: Duration,
}

/// The registry bucket's configuration (one value per key, kept until deleted).
pub fn registry_bucket_config(name: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: "pool-managerd: each pool's current status, <node>.<pool>".to_string(),
        history: 1,
        max_value_size: VALUE_BYTES_MAX,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The nodes bucket's configuration (a key expires [`HEARTBEAT_LIVES`] heartbeats after its
/// last put).
pub fn nodes_bucket_config(name: &str, replicas: usize, heartbeat: Duration) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: "pool-managerd: each node's last heartbeat, <node>".to_string(),
        history: 1,
        max_age: heartbeat * HEARTBEAT_LIVES,
        max_value_size: VALUE_BYTES_MAX,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The buckets, created if missing.
async fn buckets(
    js: &jetstream::Context,
    settings: &MirrorSettings,
) -> Result<(kv::Store, kv::Store), String> {
    let registry = registry_bucket_config(&settings.registry_bucket, settings.replicas);
    let registry = match js.get_key_value(&settings.registry_bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(registry)
            .await
            .map_err(|e| format!("cannot create the bucket {}: {e}", settings.registry_bucket))?,
    };
    let nodes = nodes_bucket_config(
        &settings.nodes_bucket,
        settings.replicas,
        settings.heartbeat,
    );
    let nodes = match js.get_key_value(&settings.nodes_bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(nodes)
            .await
            .map_err(|e| format!("cannot create the bucket {}: {e}", settings.nodes_bucket))?,
    };
    Ok((registry, nodes))
}

/// The mirror's task: keeps this node's keys equal to the registry, and heartbeats.
pub(super) struct Mirror {
    pub(super) js: jetstream::Context,
    pub(super) settings: MirrorSettings,
    pub(super) registry: Registry,
    pub(super) published: watch::Receiver<u64>,
    pub(super) stopped: watch::Receiver<bool>,
}

/// What the bucket holds of this node, as far as the mirror knows: key → the seq written
/// (`None`: a key found at start whose value is not known, rewritten or deleted).
type Written = BTreeMap<String, Option<u64>>;

impl Mirror {
    /// Runs until stopped; a failure is logged once per outage and the round tried again.
    pub(super) async fn run(mut self) {
        let Some((registry, nodes)) = self.open().await else {
            return;
        };
        let mut written = self.existing_keys(&registry).await;
        let mut changes = self.registry.subscribe();
        let mut beat = tokio::time::interval(self.settings.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let synced = self.sync(&registry, &mut written).await;
            let report = |failing: &mut bool, result: Result<(), String>| match result {
                Ok(()) if *failing => {
                    *failing = false;
                    tracing::info!("the key-value buckets are written again");
                }
                Err(why) if !*failing => {
                    *failing = true;
                    tracing::warn!("cannot write the key-value buckets, retrying: {why}");
                }
                _ => {}
            };
            report(&mut failing, synced);
            let next_sync = tokio::time::Instant::now() + self.settings.registry_every;
            tokio::select! {
                _ = changes.changed() => {
                    // At most one round of puts per `registry_every`: the changes meanwhile
                    // are written together (each pool once, at its last seq).
                    tokio::select! {
                        () = tokio::time::sleep_until(next_sync) => {}
                        _ = self.stopped.changed() => break,
                    }
                }
                _ = beat.tick() => {
                    let beat = self.heartbeat(&nodes).await;
                    report(&mut failing, beat);
                }
                _ = self.stopped.changed() => break,
            }
        }
        // A clean stop: the node leaves the nodes bucket now rather than at expiry.
        let key = key_token(&self.settings.node_id);
        let _ = tokio::time::timeout(Duration::from_secs(2), nodes.delete(key)).await;
    }

    /// The buckets, tried again with a bounded backoff until they answer; `None` once stopped.
    async fn open(&mut self) -> Option<(kv::Store, kv::Store)> {
        let mut retry_ms = 100;
        loop {
            match buckets(&self.js, &self.settings).await {
                Ok(stores) => return Some(stores),
                Err(why) => tracing::warn!("{why}; retrying in {retry_ms} ms"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
                _ = self.stopped.changed() => return None,
            }
            retry_ms = (retry_ms * 2).min(super::RETRY_MAX_MS);
        }
    }

    /// This node's keys already in the bucket (a previous run's), to be rewritten or deleted.
    async fn existing_keys(&self, registry: &kv::Store) -> Written {
        use futures_util::TryStreamExt as _;
        let prefix = format!("{}.", key_token(&self.settings.node_id));
        let keys = async {
            registry
                .keys()
                .await
                .map_err(|e| e.to_string())?
                .try_collect::<Vec<String>>()
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(super::ACK_TIMEOUT, keys).await {
            Ok(Ok(keys)) => keys
                .into_iter()
                .filter(|key| key.starts_with(&prefix))
                .map(|key| (key, None))
                .collect(),
            Ok(Err(why)) => {
                tracing::warn!("cannot list the registry bucket's keys (stale keys of this node may stay): {why}");
                Written::new()
            }
            Err(_) => Written::new(),
        }
    }

    /// Puts every pool whose seq changed and deletes the keys of pools that are gone.
    async fn sync(&self, registry: &kv::Store, written: &mut Written) -> Result<(), String> {
        let statuses = self.registry.load().state.statuses();
        let mut present = std::collections::BTreeSet::new();
        for status in statuses {
            let key = pool_key(&self.settings.node_id, status.pool_id.as_str());
            present.insert(key.clone());
            if written.get(&key) == Some(&Some(status.last_seq)) {
                continue;
            }
            let seq = status.last_seq;
            let entry = PoolEntry {
                node: self.settings.node_id.clone(),
                seq,
                status,
            };
            let value = serde_json::to_vec(&entry).map_err(|e| format!("{key}: {e}"))?;
            registry
                .put(&key, value.into())
                .await
                .map_err(|e| format!("put {key}: {e}"))?;
            written.insert(key, Some(seq));
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            registry
                .delete(&key)
                .await
                .map_err(|e| format!("delete {key}: {e}"))?;
            written.remove(&key);
        }
        Ok(())
    }

    /// Puts this node's heartbeat.
    async fn heartbeat(&self, nodes: &kv::Store) -> Result<(), String> {
        let state = self.registry.load().state.clone();
        let beat = NodeBeat {
            node: self.settings.node_id.clone(),
            last_seq: state.last_seq(),
            published: *self.published.borrow(),
            pools: state.statuses().len(),
            heartbeat_ms: u64::try_from(self.settings.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        let key = key_token(&self.settings.node_id);
        let value = serde_json::to_vec(&beat).map_err(|e| format!("{key}: {e}"))?;
        nodes
            .put(&key, value.into())
            .await
            .map(drop)
            .map_err(|e| format!("put {key} in {}: {e}", self.settings.nodes_bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_dots_as_equals_signs() {
        assert_eq!(pool_key("gpu-7.rack2", "chat.a"), "gpu-7=rack2.chat=a");
        assert_eq!(key_token("n1"), "n1");
    }

    #[test]
    fn a_heartbeat_key_lives_three_heartbeats() {
        let config = nodes_bucket_config("N", 3, Duration::from_secs(5));
        assert_eq!(config.max_age, Duration::from_secs(15));
        assert_eq!(config.num_replicas, 3);
        assert_eq!(registry_bucket_config("R", 1).max_age, Duration::ZERO);
    }
}
