//! The fleet as the key-value buckets hold it: every node's pools (`POOL_REGISTRY`) and which
//! nodes heartbeat (`POOL_NODES`), read by `pool-managerd cluster status` from any machine
//! that reaches NATS.
//!
//! Owns: reading the buckets' latest values (one ordered consumer each, last value per key)
//! and telling up nodes from down ones. Never: writes to a bucket, or waits without a bound
//! (each read is bounded by [`READ_TIMEOUT`]).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;

use super::kv::{NodeBeat, PoolEntry};

/// How long one read of a bucket may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's last heartbeat and when the server stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The heartbeat.
    pub beat: NodeBeat,
    /// When it was put (the server's clock, ms since the epoch).
    pub at_ms: u64,
}

/// The fleet: the nodes that heartbeat, and every pool in the registry bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// Nodes whose heartbeat key has not expired, by id.
    pub nodes: BTreeMap<String, Seen>,
    /// Every pool, by node then pool id.
    pub pools: Vec<PoolEntry>,
}

impl Fleet {
    /// Whether `node` heartbeats (as of `now_ms`: its last heartbeat is younger than its key's
    /// life; a read right after the server expired it has no key at all).
    pub fn is_up(&self, node: &str, now_ms: u64) -> bool {
        self.nodes.get(node).is_some_and(|seen| {
            let life = seen.beat.heartbeat_ms * u64::from(super::kv::HEARTBEAT_LIVES);
            now_ms.saturating_sub(seen.at_ms) <= life
        })
    }

    /// Every node named by a heartbeat or a pool, sorted.
    pub fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.nodes.keys().cloned().collect();
        ids.extend(self.pools.iter().map(|entry| entry.node.clone()));
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A bucket, or an error naming it and saying what creates it.
pub async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, String> {
    match tokio::time::timeout(READ_TIMEOUT, js.get_key_value(name)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(format!(
            "no key-value bucket {name}: {e} (a daemon with [cluster] nats_url creates it when it \
             starts; is --nats the cluster they publish to, and --registry-bucket/--nodes-bucket \
             their [cluster] names?)"
        )),
        Err(_) => Err(format!(
            "no answer about the bucket {name} within {READ_TIMEOUT:?}"
        )),
    }
}

/// Each key's latest value that is a put, with its time.
pub async fn latest(store: &kv::Store) -> Result<Vec<kv::Entry>, String> {
    let read = async {
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            let last = entry.delta == 0;
            if entry.operation == kv::Operation::Put {
                out.push(entry);
            }
            if last {
                break;
            }
        }
        Ok::<_, String>(out)
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(result) => result.map_err(|e| format!("reading the bucket {}: {e}", store.name)),
        Err(_) => Err(format!(
            "reading the bucket {} took more than {READ_TIMEOUT:?}",
            store.name
        )),
    }
}

/// The time an entry was put, in ms since the epoch.
pub fn entry_ms(entry: &kv::Entry) -> u64 {
    u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The fleet as the two buckets hold it now.
pub async fn read(registry: &kv::Store, nodes: &kv::Store) -> Result<Fleet, String> {
    let mut fleet = Fleet::default();
    for entry in latest(nodes).await? {
        let beat: NodeBeat = serde_json::from_slice(&entry.value)
            .map_err(|e| format!("{} key {}: {e}", nodes.name, entry.key))?;
        let at_ms = entry_ms(&entry);
        fleet.nodes.insert(beat.node.clone(), Seen { beat, at_ms });
    }
    for entry in latest(registry).await? {
        let pool: PoolEntry = serde_json::from_slice(&entry.value)
            .map_err(|e| format!("{} key {}: {e}", registry.name, entry.key))?;
        fleet.pools.push(pool);
    }
    fleet.pools.sort_by(|a, b| {
        (a.node.as_str(), a.status.pool_id.as_str())
            .cmp(&(b.node.as_str(), b.status.pool_id.as_str()))
    });
    Ok(fleet)
}

/// The two buckets, opened once for a command.
pub struct FleetReader {
    registry: kv::Store,
    nodes: kv::Store,
}

impl FleetReader {
    /// Connects to `url` and opens the buckets (each error names what to check).
    pub async fn open(
        url: &str,
        access: &super::connect::Access,
        registry_bucket: &str,
        nodes_bucket: &str,
    ) -> Result<FleetReader, String> {
        let client = super::connect::connect_command(url, access).await?;
        let js = jetstream::new(client);
        let patient = |name: &str| {
            let (js, name) = (js.clone(), name.to_string());
            super::connect::patiently(move || {
                let (js, name) = (js.clone(), name.clone());
                async move { bucket(&js, &name).await }
            })
        };
        Ok(FleetReader {
            registry: patient(registry_bucket).await?,
            nodes: patient(nodes_bucket).await?,
        })
    }

    /// The fleet now (tried again while the cluster elects a bucket's leader).
    pub async fn read(&self) -> Result<Fleet, String> {
        super::connect::patiently(|| read(&self.registry, &self.nodes)).await
    }

    /// A stream that yields once per change to either bucket (ends when the server goes).
    pub async fn changes(&self) -> Result<impl futures_util::Stream<Item = ()> + Unpin, String> {
        let registry = self.registry.watch_all().await;
        let registry = registry.map_err(|e| format!("watching {}: {e}", self.registry.name))?;
        let nodes = self.nodes.watch_all().await;
        let nodes = nodes.map_err(|e| format!("watching {}: {e}", self.nodes.name))?;
        Ok(futures_util::stream::select(
            registry.map(drop),
            nodes.map(drop),
        ))
    }
}
