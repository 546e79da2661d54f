//! Prometheus metrics (SPEC section 11): the mapping from journaled events to series, the
//! per-daemon recorder, and `GET /metrics`.
//!
//! Owns: the series' names, labels, help texts and histogram buckets; [`updates`], the pure
//! map from one applied event (with the pool as it was before and after it) to counter
//! increments and histogram observations; [`render_gauges`], the pure map from a registry to
//! its gauges; [`NodeMetrics`], the recorder one node records through; the scrape handler.
//! Never: reads a clock for a duration of the core (durations come from the events' recorded
//! `ts_ms` and `duration_ms`; only the journal's own append and replay times are measured by
//! the shell), records anything during the start-up replay, decides anything, or installs a
//! global recorder.
//!
//! **Counters and histograms** are recorded by the node actor for the events it appends,
//! after the append is durable (the updates are computed while the batch is decided, against
//! the scratch state each fact is applied to, and dropped if the append fails). The start-up
//! replay folds the journal without the actor, so it records nothing: counters count what
//! happened since this process started and restart from zero with it (Prometheus' `rate()`
//! and `increase()` treat that as a counter reset).
//!
//! **Gauges** are never recorded: they are a function of the published registry (plus the
//! GPU monitor's last reading), computed at each scrape by [`render_gauges`]. They are
//! therefore right after every durable batch and right after a restart (the published
//! registry is the replayed one), and a removed pool's or a vanished GPU's gauges are simply
//! absent (no stale `pool_ready{pool_id="gone"} 1`).
//!
//! **One recorder per node, no global.** Each [`NodeMetrics`] owns a
//! `metrics_exporter_prometheus::PrometheusRecorder` (built with `build_recorder`, so no HTTP
//! listener and no global installation) and records through it explicitly with
//! `Recorder::register_counter` / `register_histogram`. Nothing goes through the `metrics`
//! crate's global or thread-local recorder, so several daemons in one process (the tests, the
//! feature suite's concurrent scenarios) each see exactly their own series, whatever thread
//! or task records or scrapes.
//!
//! **Counters at 0 from the first scrape.** The label-less counters (`journal_events_total`,
//! `sse_clients_dropped_total`) are registered when the recorder is built, so they are
//! exposed at 0 before anything happened and `rate()` / `increase()` see their first
//! increment. A labelled counter (by pool, GPU, reason, Xid) appears with its first increment:
//! its label values are not known before; the alerting rules
//! (`packaging/prometheus/pool-managerd.rules.yml`) catch a series' first sample with
//! `unless ... offset` where one increment matters (`gpu_xid_total`, `restart_storm_total`).
//!
//! `pool_phase{pool_id,phase}` is a state set: one series per pool, 1, labelled with its
//! current public phase (`Phase::as_str`); the other phases of the pool have no series.
//!
//! `pool_slots_total` is a gauge by meaning, but a gauge whose name ends in `_total` is a
//! `promtool check metrics` finding; SPEC names the series and requires a clean check, so it
//! is exposed as `untyped` (which the linter accepts for any name).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use pool_core::state::StartKind;
use pool_core::{Activity, DrainOutcome, Event, ExitReason, GpuInfo, Pool, State};

mod render;

pub use render::{render_engine_memory, render_gauges, render_journal};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram observations between two upkeeps of the recorder (which moves buffered samples
/// into the buckets; a scrape does it too), so that a node nobody scrapes stays bounded.
const UPKEEP_EVERY: u64 = 1_024;

/// Counters: name, help.
const COUNTERS: &[(&str, &str)] = &[
    (
        "pool_preload_total",
        "Preloads that ended, by outcome (success, failure, rejected).",
    ),
    (
        "pool_drain_total",
        "Drains that completed, by outcome (graceful, force_stopped).",
    ),
    (
        "pool_reload_total",
        "Reloads that ended, by outcome (success, failure, rolled_back).",
    ),
    (
        "engine_crash_total",
        "Engine failures (crashes, failed starts, hangs, lost engines), by reason.",
    ),
    (
        "engine_restart_total",
        "Engine restarts after a failure (half-open trials included).",
    ),
    (
        "circuit_breaker_open_total",
        "Times the circuit breaker opened.",
    ),
    ("restart_storm_total", "Restart storms detected."),
    (
        "health_probe_failures_total",
        "Failed health probes of ready engines.",
    ),
    ("driver_reset_total", "GPU driver resets observed, by GPU."),
    (
        "gpu_xid_total",
        "Xid errors NVML reported, by GPU and Xid code.",
    ),
    (
        "sse_clients_dropped_total",
        "Clients of the live event stream (GET /v2/events) dropped for reading too slowly.",
    ),
    (
        "journal_events_total",
        "Events appended to the journal by this process.",
    ),
    (
        "api_connections_refused_total",
        "API connections the HTTP layer's cap closed (evicted: idle, to make room) or refused \
         (overloaded: answered 503; dropped: closed unanswered, no refusal slot free), by reason.",
    ),
];

/// The label-less counters, registered at 0 when the recorder is built.
const PRESET_COUNTERS: [&str; 2] = ["journal_events_total", "sse_clients_dropped_total"];

/// Histograms: name, help, buckets (seconds).
const HISTOGRAMS: &[(&str, &str, &[f64])] = &[
    (
        "pool_preload_duration_seconds",
        "Time from a preload's request to the pool being ready (successful preloads).",
        LONG_BUCKETS,
    ),
    (
        "pool_drain_duration_seconds",
        "Time from a drain's request to its completion.",
        LONG_BUCKETS,
    ),
    (
        "pool_reload_duration_seconds",
        "Time from a reload's request to the new engine being ready (successful reloads).",
        LONG_BUCKETS,
    ),
    (
        "restart_backoff_seconds",
        "Backoff delays chosen before restarts (jitter included).",
        &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0],
    ),
    (
        "journal_append_duration_seconds",
        "Durable journal appends (one per batch of the node), including the fdatasync.",
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ],
    ),
];

const LONG_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// One metric update derived from an applied event.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Add `by` to a counter.
    Count {
        /// The series' name.
        name: &'static str,
        /// Its labels.
        labels: Vec<(&'static str, String)>,
        /// The increment.
        by: u64,
    },
    /// Observe `value` (seconds) in a histogram.
    Observe {
        /// The series' name.
        name: &'static str,
        /// Its labels.
        labels: Vec<(&'static str, String)>,
        /// The observation.
        value: f64,
    },
}

/// What [`updates`] needs of a pool as it was before an event: a few copied fields, so the
/// actor never clones a pool to compute metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Before {
    /// The start in flight: its kind and when it was requested.
    pub starting: Option<(StartKind, u64)>,
    /// When the reload in flight was requested.
    pub reload_requested_at_ms: Option<u64>,
    /// `Pool::crash_count`.
    pub crash_count: u32,
    /// `Pool::restart_count`.
    pub restart_count: u32,
}

impl Before {
    /// The fields of `pool` (a pool that does not exist yet is all zeros).
    pub fn of(pool: Option<&Pool>) -> Before {
        let Some(pool) = pool else {
            return Before::default();
        };
        Before {
            starting: match &pool.activity {
                Activity::Starting {
                    kind,
                    requested_at_ms,
                    ..
                } => Some((*kind, *requested_at_ms)),
                _ => None,
            },
            reload_requested_at_ms: pool.reload.as_ref().map(|r| r.requested_at_ms),
            crash_count: pool.crash_count,
            restart_count: pool.restart_count,
        }
    }
}

fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

/// The counter increments and histogram observations of one applied event: `pool_id` and
/// `ts_ms` are its envelope's, `before` the pool as it was before it, `after` the pool as
/// it left it (`None` for node events and a removed pool). Pure.
pub fn updates(
    pool_id: Option<&str>,
    ts_ms: u64,
    event: &Event,
    before: Before,
    after: Option<&Pool>,
) -> Vec<Update> {
    let mut out = Vec::new();
    let Some(pool_id) = pool_id else {
        let (name, labels) = match event {
            Event::DriverResetObserved { gpu_uuid } => {
                ("driver_reset_total", vec![("gpu", gpu_uuid.clone())])
            }
            Event::GpuXidObserved { gpu_uuid, xid } => (
                "gpu_xid_total",
                vec![("gpu", gpu_uuid.clone()), ("xid", xid.to_string())],
            ),
            _ => return out,
        };
        out.push(Update::Count {
            name,
            labels,
            by: 1,
        });
        return out;
    };
    event_updates(pool_id, ts_ms, event, &before, &mut out);
    if let Some(after) = after {
        registry_updates(pool_id, &before, after, &mut out);
    }
    out
}

/// The counters and histograms an event itself stands for (a preload's outcome and duration,
/// a drain's, a reload's, a backoff delay, a breaker opening, a storm, a failed probe).
fn event_updates(pool_id: &str, ts_ms: u64, event: &Event, before: &Before, out: &mut Vec<Update>) {
    let pool = || vec![("pool_id", pool_id.to_string())];
    let with = |key: &'static str, value: &str| {
        vec![("pool_id", pool_id.to_string()), (key, value.to_string())]
    };
    let count = |out: &mut Vec<Update>, name, labels| {
        out.push(Update::Count {
            name,
            labels,
            by: 1,
        })
    };
    let preload_start = before
        .starting
        .filter(|(kind, _)| *kind == StartKind::Preload)
        .map(|(_, at)| at);
    match event {
        Event::PoolReady { .. } => {
            if let Some(requested_at_ms) = preload_start {
                count(out, "pool_preload_total", with("outcome", "success"));
                out.push(Update::Observe {
                    name: "pool_preload_duration_seconds",
                    labels: pool(),
                    value: seconds_between(requested_at_ms, ts_ms),
                });
            }
        }
        Event::PreloadFailed { .. } if preload_start.is_some() => {
            count(out, "pool_preload_total", with("outcome", "failure"));
        }
        Event::PreloadRejected { .. } => {
            count(out, "pool_preload_total", with("outcome", "rejected"));
        }
        Event::DrainCompleted {
            outcome,
            duration_ms,
            ..
        } => {
            let outcome = match outcome {
                DrainOutcome::Graceful => "graceful",
                DrainOutcome::ForceStopped => "force_stopped",
            };
            count(out, "pool_drain_total", with("outcome", outcome));
            out.push(Update::Observe {
                name: "pool_drain_duration_seconds",
                labels: pool(),
                value: *duration_ms as f64 / 1000.0,
            });
        }
        Event::ReloadSucceeded { duration_ms, .. } => {
            count(out, "pool_reload_total", with("outcome", "success"));
            out.push(Update::Observe {
                name: "pool_reload_duration_seconds",
                labels: pool(),
                value: *duration_ms as f64 / 1000.0,
            });
        }
        Event::ReloadFailed {
            rolling_back: false,
            ..
        } if before.reload_requested_at_ms.is_some() => {
            count(out, "pool_reload_total", with("outcome", "failure"));
        }
        Event::ReloadRolledBack { .. } => {
            count(out, "pool_reload_total", with("outcome", "rolled_back"));
        }
        Event::RestartScheduled { delay_ms, .. } => out.push(Update::Observe {
            name: "restart_backoff_seconds",
            labels: pool(),
            value: *delay_ms as f64 / 1000.0,
        }),
        Event::CircuitOpened { .. } => count(out, "circuit_breaker_open_total", pool()),
        Event::RestartStormDetected { .. } => count(out, "restart_storm_total", pool()),
        Event::HealthCheckFailed { .. } => count(out, "health_probe_failures_total", pool()),
        _ => {}
    }
}

/// Failures and restarts as the registry counts them (`crash_count`, `restart_count`),
/// whatever event recorded them.
fn registry_updates(pool_id: &str, before: &Before, after: &Pool, out: &mut Vec<Update>) {
    let pool = || vec![("pool_id", pool_id.to_string())];
    let with = |key: &'static str, value: &str| {
        vec![("pool_id", pool_id.to_string()), (key, value.to_string())]
    };
    // Failures and restarts as the registry counts them (`crash_count`,
    // `restart_count`): whatever event recorded them.
    if after.crash_count > before.crash_count {
        let reason = after
            .supervision
            .last_failure_reason
            .unwrap_or(ExitReason::Unknown);
        out.push(Update::Count {
            name: "engine_crash_total",
            labels: with("reason", reason.as_str()),
            by: u64::from(after.crash_count - before.crash_count),
        });
    }
    if after.restart_count > before.restart_count {
        out.push(Update::Count {
            name: "engine_restart_total",
            labels: pool(),
            by: u64::from(after.restart_count - before.restart_count),
        });
    }
}

/// The metrics of one node: its own recorder (see the module doc) and the start-up replay's
/// duration.
pub struct NodeMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    replay_seconds: AtomicU64,
    observations: AtomicU64,
    /// The cluster publisher's state (`[cluster] nats_url`), shown at each scrape.
    cluster: ClusterGauges,
}

/// What the cluster publisher reports of itself: whether it publishes at all, whether its
/// connection is up, the last seq the server acknowledged (the lag is the registry's last
/// seq minus it, at the scrape), and the events dropped before they were published (the count
/// its retention hold keeps).
#[derive(Debug, Default)]
pub struct ClusterGauges {
    enabled: std::sync::atomic::AtomicBool,
    connected: std::sync::atomic::AtomicBool,
    published: AtomicU64,
    failures: AtomicU64,
    hold: std::sync::OnceLock<pool_journal::RetentionHold>,
}

impl ClusterGauges {
    /// Publishing is configured (the gauges are shown from now on).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// The connection went up or down.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The server acknowledged every event up to `seq`.
    pub fn set_published(&self, seq: u64) {
        self.published.store(seq, Ordering::Relaxed);
    }

    /// A round of publishing failed (it is tried again after a backoff).
    pub fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// `cluster_unpublished_dropped_events_total` is `hold`'s count of events dropped
    /// unpublished (retention and the publisher both count into it, each seq once).
    pub fn count_dropped_in(&self, hold: pool_journal::RetentionHold) {
        let _ = self.hold.set(hold);
    }
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::new()
    }
}

impl NodeMetrics {
    /// A recorder with the series described and the histograms' buckets set.
    pub fn new() -> NodeMetrics {
        let mut builder = PrometheusBuilder::new();
        for (name, _, buckets) in HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)
                .expect("the buckets are not empty");
        }
        let recorder = builder.build_recorder();
        for (name, help) in COUNTERS {
            recorder.describe_counter((*name).into(), None, SharedString::const_str(help));
        }
        for (name, help, _) in HISTOGRAMS {
            recorder.describe_histogram(
                (*name).into(),
                Some(Unit::Seconds),
                SharedString::const_str(help),
            );
        }
        for name in PRESET_COUNTERS {
            // The registry keeps the series (at 0); the handle is not needed.
            let _ = recorder.register_counter(&Key::from_static_name(name), &Self::metadata());
        }
        let handle = recorder.handle();
        NodeMetrics {
            recorder,
            handle,
            replay_seconds: AtomicU64::new(0f64.to_bits()),
            observations: AtomicU64::new(0),
            cluster: ClusterGauges::default(),
        }
    }

    fn metadata() -> Metadata<'static> {
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
    }

    fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        Key::from_parts(name, labels)
    }

    /// Records `updates` (of events now durable).
    pub fn record(&self, updates: &[Update]) {
        for update in updates {
            match update {
                Update::Count { name, labels, by } => self
                    .recorder
                    .register_counter(&Self::key(name, labels), &Self::metadata())
                    .increment(*by),
                Update::Observe {
                    name,
                    labels,
                    value,
                } => self.observe(Self::key(name, labels), *value),
            }
        }
    }

    fn observe(&self, key: Key, value: f64) {
        self.recorder
            .register_histogram(&key, &Self::metadata())
            .record(value);
        if self.observations.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.handle.run_upkeep();
        }
    }

    /// One durable append of `events` events that took `seconds`.
    pub fn appended(&self, events: usize, seconds: f64) {
        self.recorder
            .register_counter(
                &Key::from_static_name("journal_events_total"),
                &Self::metadata(),
            )
            .increment(events as u64);
        self.observe(
            Key::from_static_name("journal_append_duration_seconds"),
            seconds,
        );
    }

    /// The HTTP layer's cap closed or refused a connection (`evicted`, `overloaded`,
    /// `dropped`).
    pub fn connection_refused(&self, reason: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "api_connections_refused_total",
                    vec![Label::new("reason", reason)],
                ),
                &Self::metadata(),
            )
            .increment(1);
    }

    /// A client of the live event stream was dropped for reading too slowly (not a stream
    /// the daemon's shutdown ended).
    pub fn sse_client_dropped(&self) {
        self.recorder
            .register_counter(
                &Key::from_static_name("sse_clients_dropped_total"),
                &Self::metadata(),
            )
            .increment(1);
    }

    /// The start-up replay took `seconds`.
    pub fn set_replay_seconds(&self, seconds: f64) {
        self.replay_seconds
            .store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// The whole exposition: counters and histograms from the recorder, gauges from `state`
    /// and `gpus` (the GPU monitor's last reading, else the registry's inventory).
    pub fn render(&self, state: &State, gpus: Option<&[GpuInfo]>) -> String {
        let mut out = self.handle.render();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&render_gauges(
            state,
            gpus.unwrap_or(&state.node.gpus),
            f64::from_bits(self.replay_seconds.load(Ordering::Relaxed)),
        ));
        if self.cluster.enabled.load(Ordering::Relaxed) {
            let connected = self.cluster.connected.load(Ordering::Relaxed);
            let published = self.cluster.published.load(Ordering::Relaxed);
            let lag = state.last_seq().saturating_sub(published);
            let failures = self.cluster.failures.load(Ordering::Relaxed);
            let dropped = self
                .cluster
                .hold
                .get()
                .map_or(0, pool_journal::RetentionHold::dropped_events);
            out.push_str(&render::render_cluster(connected, lag, failures, dropped));
        }
        out
    }

    /// The cluster publisher's gauges, for it to set.
    pub fn cluster(&self) -> &ClusterGauges {
        &self.cluster
    }
}

/// Shared by the actor (records) and the handle (renders).
pub type SharedMetrics = Arc<NodeMetrics>;

#[cfg(test)]
mod tests;
