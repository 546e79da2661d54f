//! The scrape's text: the gauges of the published registry and the GPU reading, the journal's
//! health and sizes, and the engines' memory, in the Prometheus text exposition format.
//!
//! Never: records anything (gauges are a function of what is published at the scrape).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pool_core::{BreakerState, GpuInfo, State};

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One family of gauges: name, type, help, samples (label text, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: "gauge",
            help,
            samples: Vec::new(),
        }
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", self.name, value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", self.name, labels, value);
            }
        }
    }
}

fn breaker_value(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    }
}

/// The gauges of `state` (every pool it holds, no other), of `gpus`, and the start-up
/// replay's duration, in the text format. Pure.
pub fn render_gauges(state: &State, gpus: &[GpuInfo], replay_seconds: f64) -> String {
    let mut last_seq = Family::new(
        "journal_last_seq",
        "Seq of the last event in the journal (as published).",
    );
    last_seq
        .samples
        .push((String::new(), state.last_seq() as f64));
    let mut replay = Family::new(
        "journal_replay_duration_seconds",
        "How long this process's start-up replay of the journal took.",
    );
    replay.samples.push((String::new(), replay_seconds));
    let mut out = String::new();
    let families = pool_families(state)
        .into_iter()
        .chain(gpu_families(gpus))
        .chain([quarantine_family(state, gpus), last_seq, replay]);
    for family in families {
        if !family.samples.is_empty() {
            family.write(&mut out);
            out.push('\n');
        }
    }
    out
}

/// The per-pool gauges: ready, phase, slots, leases, breaker, VRAM.
fn pool_families(state: &State) -> [Family; 7] {
    let mut ready = Family::new("pool_ready", "Whether the pool serves (1) or not (0).");
    let mut phase = Family::new(
        "pool_phase",
        "The pool's public phase: one series per pool, 1, labelled with its current phase.",
    );
    let mut slots_total = Family::new(
        "pool_slots_total",
        "Slots of the pool's engine (a gauge; untyped because of its SPEC name).",
    );
    slots_total.kind = "untyped";
    let mut slots_free = Family::new(
        "pool_slots_free",
        "Free slots (0 while the pool is not ready).",
    );
    let mut leases = Family::new("pool_active_leases", "Leases held.");
    let mut breaker = Family::new(
        "circuit_breaker_state",
        "Circuit breaker: 0 closed, 1 open, 2 half-open.",
    );
    let mut vram = Family::new(
        "pool_vram_used_bytes",
        "VRAM used by the pool's engine over all GPUs, as last observed.",
    );
    for (id, pool) in &state.pools {
        let labels = format!("pool_id=\"{}\"", escape(id.as_str()));
        let ready_value = if pool.ready { 1.0 } else { 0.0 };
        ready.samples.push((labels.clone(), ready_value));
        let phase_labels = format!(
            "{labels},phase=\"{}\"",
            pool_core::status::phase(pool).as_str()
        );
        phase.samples.push((phase_labels, 1.0));
        let total = f64::from(pool.slots_total);
        slots_total.samples.push((labels.clone(), total));
        let free = f64::from(pool.slots_free());
        slots_free.samples.push((labels.clone(), free));
        let held = f64::from(pool.active_leases());
        leases.samples.push((labels.clone(), held));
        let state = breaker_value(pool.supervision.breaker.state);
        breaker.samples.push((labels.clone(), state));
        if let Some(bytes) = pool.vram_used_bytes {
            vram.samples.push((labels, bytes as f64));
        }
    }
    [ready, phase, slots_total, slots_free, leases, breaker, vram]
}

/// The per-GPU gauges (total and free VRAM), by index then UUID.
fn gpu_families(gpus: &[GpuInfo]) -> [Family; 2] {
    let mut vram_total = Family::new("gpu_vram_total_bytes", "Total VRAM of a GPU.");
    let mut vram_free = Family::new(
        "gpu_vram_free_bytes",
        "Free VRAM of a GPU at the last reading.",
    );
    let mut by_index: BTreeMap<(u32, &str), &GpuInfo> = BTreeMap::new();
    for gpu in gpus {
        by_index.insert((gpu.index, gpu.uuid.as_str()), gpu);
    }
    for gpu in by_index.values() {
        let labels = format!("gpu=\"{}\",index=\"{}\"", escape(&gpu.uuid), gpu.index);
        vram_total
            .samples
            .push((labels.clone(), gpu.vram_total_bytes as f64));
        vram_free.samples.push((labels, gpu.vram_free_bytes as f64));
    }
    [vram_total, vram_free]
}

/// `gpu_quarantined`: 1 for a quarantined GPU, 0 for the others of the reading (a
/// quarantined GPU missing from the reading is listed without its index).
fn quarantine_family(state: &State, gpus: &[GpuInfo]) -> Family {
    let mut family = Family::new(
        "gpu_quarantined",
        "Whether a GPU is quarantined after repeated hardware faults (1) or not (0).",
    );
    let quarantined = &state.node.quarantined;
    let mut by_index: BTreeMap<(u32, &str), &GpuInfo> = BTreeMap::new();
    for gpu in gpus {
        by_index.insert((gpu.index, gpu.uuid.as_str()), gpu);
    }
    for gpu in by_index.values() {
        let labels = format!("gpu=\"{}\",index=\"{}\"", escape(&gpu.uuid), gpu.index);
        let value = if quarantined.contains_key(&gpu.uuid) {
            1.0
        } else {
            0.0
        };
        family.samples.push((labels, value));
    }
    for uuid in quarantined.keys() {
        if !gpus.iter().any(|gpu| gpu.uuid == *uuid) {
            family
                .samples
                .push((format!("gpu=\"{}\"", escape(uuid)), 1.0));
        }
    }
    family
}

/// The journal's own series, from its health and usage (read at each scrape). Pure.
pub fn render_journal(
    health: &pool_journal::JournalHealth,
    usage: &pool_journal::Usage,
    queued_observations: usize,
) -> String {
    let mut writable = Family::new(
        "journal_writable",
        "Whether the journal takes writes (1) or not (0: a full, read-only or failing disk; \
         changes answer JOURNAL_UNAVAILABLE).",
    );
    writable
        .samples
        .push((String::new(), if health.writable { 1.0 } else { 0.0 }));
    let mut errors = Family::new(
        "journal_write_errors_total",
        "Journal writes that failed since the daemon started, by kind (enospc, erofs, eio, other).",
    );
    errors.kind = "counter";
    for kind in pool_journal::WriteErrorKind::ALL {
        let count = health.write_errors.get(&kind).copied().unwrap_or(0);
        errors
            .samples
            .push((format!("kind=\"{}\"", kind.as_str()), count as f64));
    }
    let mut segments = Family::new("journal_segments", "Sealed segment files of the journal.");
    segments
        .samples
        .push((String::new(), usage.segments as f64));
    let mut bytes = Family::new(
        "journal_bytes",
        "Bytes the journal keeps on disk: sealed segments, the live store and snapshots.",
    );
    bytes
        .samples
        .push((String::new(), usage.total_bytes() as f64));
    let mut first = Family::new(
        "journal_first_seq",
        "The earliest seq the journal still holds (retention drops older ones).",
    );
    first.samples.push((String::new(), usage.first_seq as f64));
    let mut queued = Family::new(
        "journal_queued_observations",
        "Observations kept in memory until the journal takes writes again.",
    );
    queued
        .samples
        .push((String::new(), queued_observations as f64));
    let mut damaged = Family::new(
        "journal_damaged_segments",
        "Sealed segments the background scrub found damaged since the daemon started (see \
         /health's journal.damage for the way out).",
    );
    damaged
        .samples
        .push((String::new(), health.damage.len() as f64));
    let mut out = String::new();
    for family in [writable, errors, segments, bytes, first, queued, damaged] {
        family.write(&mut out);
        out.push('\n');
    }
    out
}

/// `pool_engine_memory_bytes`: the memory each engine's cgroup leaf is charged (resident
/// and page cache), from `(pool id, bytes)`. Empty without samples. Pure.
pub fn render_engine_memory(samples: &[(String, u64)]) -> String {
    let mut family = Family::new(
        "pool_engine_memory_bytes",
        "Memory charged to the engine's own cgroup (memory.current: resident and page cache).",
    );
    for (pool_id, bytes) in samples {
        family
            .samples
            .push((format!("pool_id=\"{}\"", escape(pool_id)), *bytes as f64));
    }
    let mut out = String::new();
    if !family.samples.is_empty() {
        family.write(&mut out);
        out.push('\n');
    }
    out
}

/// The cluster publisher's gauges: whether its connection to NATS is up, and how many
/// journaled events the server has not acknowledged yet, how many rounds of publishing
/// failed (each is tried again), and how many events were dropped before they were published.
pub fn render_cluster(connected: bool, lag_events: u64, failures: u64, dropped: u64) -> String {
    let mut connected_family = Family::new(
        "cluster_connected",
        "Whether the connection to NATS is up (1) or not (0).",
    );
    connected_family
        .samples
        .push((String::new(), if connected { 1.0 } else { 0.0 }));
    let mut lag = Family::new(
        "cluster_publish_lag_events",
        "Journaled events NATS has not acknowledged yet.",
    );
    lag.samples.push((String::new(), lag_events as f64));
    let mut failed = Family::new(
        "cluster_publish_failures_total",
        "Rounds of publishing to NATS that failed and were tried again after a backoff.",
    );
    failed.kind = "counter";
    failed.samples.push((String::new(), failures as f64));
    let mut lost = Family::new(
        "cluster_unpublished_dropped_events_total",
        "Events dropped from the journal before NATS acknowledged them (the stream has a gap \
         there). Each seq is counted once: by retention as it drops it (past [cluster] \
         unpublished_bytes_max), else by the publisher when it finds the gap (a loss from \
         before this start).",
    );
    lost.kind = "counter";
    lost.samples.push((String::new(), dropped as f64));
    let mut out = String::new();
    for family in [connected_family, lag, failed, lost] {
        family.write(&mut out);
        out.push('\n');
    }
    out
}
