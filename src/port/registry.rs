//! The published registry: what readers (the API, probes, the demo) see of the node's state.
//!
//! Owns: the current [`Published`] view, swapped in by the actor after each durable batch
//! (`arc-swap`: readers never lock and never wait on the actor), a change signal (`watch` of
//! the last seq), heartbeats of ready engines (probe successes are not journaled, so they are
//! overlaid here), and the serialized `GET /v2/pools` body, computed at most once per change.
//! Never: changes the state; only the actor publishes, and only what is durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use pool_core::{PoolStatus, State};
use serde::Serialize;
use tokio::sync::watch;

/// The GPU verdict of a reading (`gpu::summary`), `/health`'s `gpu` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuSummary {
    /// A usable GPU was found.
    pub available: bool,
    /// How many.
    pub count: u32,
    /// Why none is usable (or how they were found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether preloads need a GPU (`require_gpu`; `--dev` turns it off).
    pub required: bool,
}

/// Whether the journal takes writes, as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalView {
    /// Changes are recorded (and so accepted).
    pub writable: bool,
    /// Why not: the journal directory and the operating system's error.
    pub error: Option<String>,
    /// `enospc`, `erofs`, `eio` or `other`.
    pub kind: Option<&'static str>,
    /// Since when (ms since the epoch, the decision clock).
    pub since_ms: Option<u64>,
    /// Observations kept in memory until they can be recorded.
    pub queued: usize,
    /// The journal failed for good (not a disk refusal): the daemon takes no more changes
    /// until restarted.
    pub failed: Option<String>,
}

impl JournalView {
    /// A journal that takes writes.
    pub fn writable() -> Self {
        JournalView {
            writable: true,
            ..JournalView::default()
        }
    }
}

/// One published view: a durable state and what goes with it.
#[derive(Debug, Clone)]
pub struct Published {
    /// The registry after the last durable event.
    pub state: Arc<State>,
    /// The GPU preflight's verdict at start-up; `/health` shows the live one of the last
    /// reading (`gpu::GpuMonitor`), which the observation loop refreshes.
    pub gpu: GpuSummary,
    /// The journal's ability to take writes.
    pub journal: JournalView,
    /// Pools that observations not yet recorded (the journal cannot take writes) show as not
    /// ready, with why: an engine that exited is never shown ready while its exit waits to be
    /// journaled.
    pub unready: Arc<std::collections::BTreeMap<String, String>>,
}

impl Published {
    /// A view of `state` with a writable journal and nothing pending.
    pub fn durable(state: Arc<State>, gpu: GpuSummary) -> Self {
        Published {
            state,
            gpu,
            journal: JournalView::writable(),
            unready: Arc::default(),
        }
    }
}

#[derive(Debug)]
struct CachedJson {
    seq: u64,
    heartbeat_gen: u64,
    publish_gen: u64,
    body: Bytes,
}

#[derive(Debug)]
struct Inner {
    current: ArcSwap<Published>,
    changed: watch::Sender<u64>,
    stopping: watch::Sender<bool>,
    heartbeats: Mutex<HashMap<String, u64>>,
    heartbeat_gen: AtomicU64,
    /// Bumped at every publish (an overlay can change without a new seq).
    publish_gen: AtomicU64,
    pools_json: ArcSwapOption<CachedJson>,
}

/// A handle on the published registry (cheap to clone).
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    pub(crate) fn new(first: Published) -> Registry {
        let seq = first.state.last_seq();
        Registry {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(first),
                changed: watch::Sender::new(seq),
                stopping: watch::Sender::new(false),
                heartbeats: Mutex::new(HashMap::new()),
                heartbeat_gen: AtomicU64::new(0),
                publish_gen: AtomicU64::new(0),
                pools_json: ArcSwapOption::empty(),
            }),
        }
    }

    /// The current view.
    pub fn load(&self) -> Arc<Published> {
        self.inner.current.load_full()
    }

    /// A receiver that changes whenever a new view is published (its value: the last seq).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// A receiver that turns `true` once the daemon begins to stop (live event streams end).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// Says that the daemon is stopping: every [`Registry::stopping`] receiver sees `true`.
    pub(crate) fn announce_stopping(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// The status of one pool, with its latest heartbeat.
    pub fn status(&self, pool_id: &str) -> Option<PoolStatus> {
        let published = self.load();
        let mut status = published.state.status(pool_id)?;
        self.overlay(&published, &mut status);
        Some(status)
    }

    /// Every pool's status, sorted by id, with heartbeats.
    pub fn statuses(&self) -> Vec<PoolStatus> {
        let published = self.load();
        let mut statuses = published.state.statuses();
        for status in &mut statuses {
            self.overlay(&published, status);
        }
        statuses
    }

    /// The body of `GET /v2/pools`, [`Registry::statuses`] as `serialize` writes them (the
    /// API's wire form): serialized once per change (a new seq or heartbeat) by whichever
    /// reader comes first, then shared.
    pub fn statuses_body(
        &self,
        serialize: impl FnOnce(Vec<PoolStatus>) -> serde_json::Result<Vec<u8>>,
    ) -> Bytes {
        let seq = self.load().state.last_seq();
        let heartbeat_gen = self.inner.heartbeat_gen.load(Ordering::Acquire);
        let publish_gen = self.inner.publish_gen.load(Ordering::Acquire);
        if let Some(cached) = self.inner.pools_json.load().as_ref() {
            if cached.seq == seq
                && cached.heartbeat_gen == heartbeat_gen
                && cached.publish_gen == publish_gen
            {
                return cached.body.clone();
            }
        }
        let body = match serialize(self.statuses()) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize the registry");
                Bytes::from_static(b"[]")
            }
        };
        self.inner.pools_json.store(Some(Arc::new(CachedJson {
            seq,
            heartbeat_gen,
            publish_gen,
            body: body.clone(),
        })));
        body
    }

    /// Records a successful probe of `pool_id` at `at_ms`.
    pub(crate) fn heartbeat(&self, pool_id: &str, at_ms: u64) {
        if let Ok(mut beats) = self.inner.heartbeats.lock() {
            beats.insert(pool_id.to_string(), at_ms);
        }
        self.inner.heartbeat_gen.fetch_add(1, Ordering::AcqRel);
    }

    fn overlay(&self, published: &Published, status: &mut PoolStatus) {
        if let Some(why) = published.unready.get(status.pool_id.as_str()) {
            status.ready = false;
            status.slots_free = 0;
            status.last_error = Some(why.clone());
        }
        if !status.live {
            return;
        }
        let beat = self
            .inner
            .heartbeats
            .lock()
            .ok()
            .and_then(|beats| beats.get(status.pool_id.as_str()).copied());
        if let Some(beat) = beat {
            status.last_heartbeat_ms = Some(status.last_heartbeat_ms.map_or(beat, |t| t.max(beat)));
        }
    }

    pub(crate) fn publish(&self, published: Published) {
        let seq = published.state.last_seq();
        debug_assert!(
            seq >= self.inner.current.load().state.last_seq(),
            "published seq {seq} is behind the one readers saw"
        );
        self.inner.current.store(Arc::new(published));
        self.inner.publish_gen.fetch_add(1, Ordering::AcqRel);
        self.inner.changed.send_replace(seq);
    }

    pub(crate) fn forget_heartbeat(&self, pool_id: &str) {
        if let Ok(mut beats) = self.inner.heartbeats.lock() {
            beats.remove(pool_id);
        }
    }
}
