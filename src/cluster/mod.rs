//! The journal published to NATS JetStream (`[cluster]`): every event, in seq order, to the
//! stream `[cluster] stream` on the subject `pool.events.<node>.<pool>` (node events on
//! `pool.events.<node>._node`), with `Nats-Msg-Id = <node>:<seq>` so that the server drops a
//! duplicate. The journal is the outbox: a durable cursor (the last seq the server
//! acknowledged, in `<runtime>/cluster-<stream>.cursor`) lets publishing resume right after it
//! after a daemon crash or a NATS outage.
//!
//! Owns: the connection, the stream's creation, the cursor, the subject encoding (ids may hold
//! `.`, NATS's separator: it becomes `~`, which no id may hold).
//! Never: blocks the node actor or refuses a change because NATS is away (it reads the journal
//! on its own task and keeps a backlog); never advances the cursor past an unacknowledged seq.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use pool_journal::{JournalError, RetentionHold};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod connect;
pub mod fleet;
pub mod kv;
pub mod read;

use crate::config::ClusterSettings;
use crate::metrics::SharedMetrics;
use crate::port::Registry;
use crate::schema::{PoolEnvelope, PoolJournal};

/// Events read from the journal and published per round (their acks awaited together).
pub const BATCH_EVENTS_MAX: usize = 256;
/// The longest wait between two tries while the server is away.
pub const RETRY_MAX_MS: u64 = 5_000;
/// How long an ack (or a JetStream API call) is awaited before the round is tried again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server keeps message ids to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What the publisher needs.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// `[cluster] nats_url`.
    pub nats_url: String,
    /// This node's id (`[cluster] node_id`, else the host name).
    pub node_id: String,
    /// `[cluster] stream`.
    pub stream: String,
    /// `[cluster] replicas`.
    pub replicas: usize,
    /// The durable cursor's file.
    pub cursor: PathBuf,
    /// The credentials and TLS files.
    pub access: connect::Access,
    /// The key-value buckets' names and the heartbeat.
    pub mirror: kv::MirrorSettings,
}

impl PublishSettings {
    /// The settings `[cluster]` gives, with the cursor under `runtime_dir`.
    pub fn of(cluster: &ClusterSettings, runtime_dir: &Path) -> PublishSettings {
        let node_id = if cluster.node_id.is_empty() {
            default_node_id()
        } else {
            cluster.node_id.clone()
        };
        let replicas = usize::try_from(cluster.replicas).unwrap_or(1);
        PublishSettings {
            nats_url: cluster.nats_url.clone(),
            stream: cluster.stream.clone(),
            replicas,
            cursor: runtime_dir.join(format!("cluster-{}.cursor", cluster.stream)),
            access: connect::Access::of(cluster),
            mirror: kv::MirrorSettings {
                node_id: node_id.clone(),
                registry_bucket: cluster.registry_bucket.clone(),
                nodes_bucket: cluster.nodes_bucket.clone(),
                replicas,
                heartbeat: Duration::from_millis(cluster.heartbeat_ms),
                registry_every: Duration::from_millis(cluster.registry_every_ms),
            },
            node_id,
        }
    }
}

/// `id` as one subject token: `.` becomes `~` (pool and node ids never hold `~`).
pub fn token(id: &str) -> String {
    id.replace('.', "~")
}

/// The subject of an event of `pool` (`None`: a node event) on `node`.
pub fn subject(node: &str, pool: Option<&str>) -> String {
    let pool = pool.map_or_else(|| "_node".to_string(), token);
    format!("pool.events.{}.{pool}", token(node))
}

/// The node id when `[cluster] node_id` is empty: the host name.
pub fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// The last seq the server acknowledged, as the cursor file says (0 when there is none).
pub fn read_cursor(path: &Path) -> Result<u64, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|e| {
            format!(
                "{}: {e} (it holds the last published seq; delete it to publish everything again, \
                 the server drops what it already has)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A running publisher; [`Publisher::stop`] ends it.
pub struct Publisher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    published: watch::Receiver<u64>,
}

impl Publisher {
    /// Publishes `journal` from its cursor on, following the registry's change signal;
    /// advances `hold` (what the journal's retention keeps for it) as NATS acknowledges, and
    /// counts in it the events it finds dropped before they were published.
    pub fn spawn(
        settings: PublishSettings,
        journal: PoolJournal,
        registry: Registry,
        metrics: SharedMetrics,
        hold: Option<RetentionHold>,
    ) -> Publisher {
        let hold = hold.unwrap_or_else(|| RetentionHold::new(0, u64::MAX));
        metrics.cluster().enable();
        metrics.cluster().count_dropped_in(hold.clone());
        let (stop, stopped) = watch::channel(false);
        let (advanced, published) = watch::channel(0);
        let task = tokio::spawn(async move {
            let mut run = Run {
                settings,
                journal,
                registry,
                stopped,
                advanced,
                metrics,
                hold,
            };
            run.run().await;
        });
        Publisher {
            stop,
            task,
            published,
        }
    }

    /// The last seq the server acknowledged, as it changes.
    pub fn published(&self) -> watch::Receiver<u64> {
        self.published.clone()
    }

    /// Waits until the server acknowledged `last` (at most `within`: NATS may be away, the
    /// rest is published at the next start), then stops.
    pub async fn drain_and_stop(self, last: u64, within: Duration) {
        let mut published = self.published.clone();
        if tokio::time::timeout(within, published.wait_for(|seq| *seq >= last))
            .await
            .is_err()
        {
            let now = *published.borrow();
            tracing::info!(published = now, last, "stopping before NATS acknowledged the last events; they are published at the next start");
        }
        self.stop().await;
    }

    /// Stops publishing (what is acknowledged is in the cursor) and waits, bounded.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The publisher's task.
struct Run {
    settings: PublishSettings,
    journal: PoolJournal,
    registry: Registry,
    stopped: watch::Receiver<bool>,
    advanced: watch::Sender<u64>,
    metrics: SharedMetrics,
    hold: RetentionHold,
}

/// Why a round published nothing.
enum Failed {
    /// Retention dropped the events from the one asked for up to `earliest` (excluded).
    Expired { earliest: u64 },
    /// Anything else: the round is tried again.
    Other(String),
}

impl From<String> for Failed {
    fn from(why: String) -> Self {
        Failed::Other(why)
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Expired { earliest } => write!(f, "the journal starts at seq {earliest}"),
            Failed::Other(why) => f.write_str(why),
        }
    }
}

impl Run {
    async fn run(&mut self) {
        let published = match read_cursor(&self.settings.cursor) {
            Ok(seq) => seq,
            Err(why) => {
                tracing::error!("cannot read the cluster cursor, publishing nothing: {why}");
                return;
            }
        };
        self.advanced.send_replace(published);
        self.metrics.cluster().set_published(published);
        let Some(js) = self.connect().await else {
            return;
        };
        let mirror = kv::Mirror {
            js: js.clone(),
            settings: self.settings.mirror.clone(),
            registry: self.registry.clone(),
            published: self.advanced.subscribe(),
            stopped: self.stopped.clone(),
        };
        let mut mirror = tokio::spawn(mirror.run());
        self.publish_from(&js, published).await;
        if tokio::time::timeout(Duration::from_secs(3), &mut mirror)
            .await
            .is_err()
        {
            mirror.abort();
        }
    }

    /// Publishes from `published` on until stopped.
    async fn publish_from(&mut self, js: &jetstream::Context, mut published: u64) {
        let mut changes = self.registry.subscribe();
        let mut retry_ms = 100;
        loop {
            if *self.stopped.borrow() {
                return;
            }
            if published >= self.journal.last_seq() {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = self.stopped.changed() => return,
                }
                continue;
            }
            match self.publish_batch(js, published).await {
                Ok(through) => {
                    published = through;
                    retry_ms = 100;
                    self.save(published).await;
                }
                Err(Failed::Expired { earliest }) if earliest > published.saturating_add(1) => {
                    published = self.skip_lost(published, earliest).await;
                    retry_ms = 100;
                }
                Err(why) => {
                    self.metrics.cluster().count_failure();
                    let lag = self.journal.last_seq().saturating_sub(published);
                    tracing::warn!(
                        published,
                        lag,
                        "publishing to NATS failed, retrying in {retry_ms} ms: {why}"
                    );
                    if self.pause(retry_ms).await {
                        return;
                    }
                    retry_ms = (retry_ms * 2).min(RETRY_MAX_MS);
                }
            }
        }
    }

    /// Connects (the client reconnects by itself from then on) and makes sure the stream
    /// exists; `None` once stopped.
    async fn connect(&mut self) -> Option<jetstream::Context> {
        let metrics = self.metrics.clone();
        let options = match self.settings.access.options().await {
            Ok(options) => options,
            Err(why) => {
                tracing::error!("publishing nothing to NATS: {why}");
                return None;
            }
        };
        let client = options
            .name(format!("pool-managerd {}", self.settings.node_id))
            .event_callback(move |event| {
                let metrics = metrics.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => metrics.cluster().set_connected(true),
                        async_nats::Event::Disconnected => metrics.cluster().set_connected(false),
                        _ => {}
                    }
                }
            })
            .retry_on_initial_connect();
        let client = match connect::server_addrs(&self.settings.nats_url) {
            Ok(addrs) => client.connect(addrs).await,
            Err(why) => {
                tracing::error!("cannot use [cluster] nats_url, publishing nothing: {why}");
                return None;
            }
        };
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(url = %self.settings.nats_url, "cannot use [cluster] nats_url, publishing nothing: {e}");
                return None;
            }
        };
        let mut js = jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        let mut retry_ms = 100;
        loop {
            match js.get_or_create_stream(self.stream_config()).await {
                Ok(_) => return Some(js),
                Err(e) => {
                    let stream = &self.settings.stream;
                    tracing::warn!(stream, "cannot create or find the JetStream stream, retrying in {retry_ms} ms: {e}");
                    if self.pause(retry_ms).await {
                        return None;
                    }
                    retry_ms = (retry_ms * 2).min(RETRY_MAX_MS);
                }
            }
        }
    }

    fn stream_config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.settings.stream.clone(),
            subjects: vec!["pool.events.>".to_string()],
            num_replicas: self.settings.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Publishes the events after `published` (at most [`BATCH_EVENTS_MAX`]) and awaits their
    /// acks in order; the seq acknowledged last.
    async fn publish_batch(&self, js: &jetstream::Context, published: u64) -> Result<u64, Failed> {
        let batch = self.read(published + 1).await?;
        let mut acks = Vec::with_capacity(batch.len());
        for envelope in &batch {
            let payload = pool_journal::envelope_to_json(envelope)
                .map_err(|e| format!("event seq {}: {e}", envelope.seq))?;
            let mut headers = async_nats::HeaderMap::new();
            let id = format!("{}:{}", self.settings.node_id, envelope.seq);
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let subject = subject(&self.settings.node_id, envelope.pool_id.as_deref());
            let ack = js
                .publish_with_headers(subject, headers, payload.to_string().into())
                .await
                .map_err(|e| format!("event seq {}: {e}", envelope.seq))?;
            acks.push((envelope.seq, ack));
        }
        let mut through = published;
        for (seq, ack) in acks {
            ack.await.map_err(|e| format!("event seq {seq}: {e}"))?;
            through = seq;
        }
        Ok(through)
    }

    /// Up to [`BATCH_EVENTS_MAX`] events from `from`, read on a blocking thread.
    async fn read(&self, from: u64) -> Result<Vec<PoolEnvelope>, Failed> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            journal
                .read_from(from)
                .take(BATCH_EVENTS_MAX)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| match e {
                    JournalError::HistoryExpired { earliest, .. } => Failed::Expired { earliest },
                    e => Failed::Other(format!("reading the journal from seq {from}: {e}")),
                })
        })
        .await
        .map_err(|e| Failed::Other(format!("the journal's reader failed: {e}")))?
    }

    /// Retention dropped the events after `published` up to `earliest` (excluded) before NATS
    /// acknowledged them: they are counted (unless retention counted them as it dropped
    /// them) and logged, and publishing goes on from `earliest` rather than retrying forever;
    /// the new cursor.
    async fn skip_lost(&self, published: u64, earliest: u64) -> u64 {
        let (from, to) = (published + 1, earliest - 1);
        let counted = self.hold.count_dropped(from, to);
        tracing::error!(
            stream = %self.settings.stream,
            from_seq = from,
            to_seq = to,
            newly_counted = counted,
            "events {from}..={to} were dropped from this node's journal by retention before NATS \
             acknowledged them: the stream has a gap there, and the node's journal no longer has \
             them (keep NATS reachable, or raise [cluster] unpublished_bytes_max); publishing \
             goes on from seq {earliest}"
        );
        self.save(to).await;
        to
    }

    /// Writes the cursor (atomically, durably); a failure is logged, and publishing goes on
    /// (the server drops what a restart publishes again within its duplicate window).
    async fn save(&self, published: u64) {
        self.hold.advance(published);
        self.advanced.send_replace(published);
        self.metrics.cluster().set_published(published);
        let path = self.settings.cursor.clone();
        let written = tokio::task::spawn_blocking(move || {
            crate::supervisor::files::write_atomic(&path, format!("{published}\n").as_bytes())
        })
        .await;
        let failed = match written {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(published, "cannot write the cluster cursor: {failed}");
    }

    /// Waits `ms`; `true` when stopped meanwhile.
    async fn pause(&mut self, ms: u64) -> bool {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => *self.stopped.borrow(),
            _ = self.stopped.changed() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_dots_become_one_token_each() {
        assert_eq!(
            subject("gpu-7.rack2", Some("chat.a")),
            "pool.events.gpu-7~rack2.chat~a"
        );
        assert_eq!(subject("n1", None), "pool.events.n1._node");
        // `_node` cannot be a pool: pool ids start with a letter or digit.
        assert!(pool_core::PoolId::new("_node").is_err());
    }

    #[test]
    fn a_missing_cursor_is_zero_and_a_bad_one_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.cursor");
        assert_eq!(read_cursor(&path), Ok(0));
        std::fs::write(&path, "12\n").unwrap();
        assert_eq!(read_cursor(&path), Ok(12));
        std::fs::write(&path, "x").unwrap();
        let why = read_cursor(&path).unwrap_err();
        assert!(why.contains("c.cursor"), "{why}");
    }
}
