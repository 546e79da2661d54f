//! Journal benchmarks (figures and how to read them: `BENCHMARKS.md`).
//!
//! - `append/one_writer`: one writer, one durable append per event, awaited one after another.
//! - `append/64_writers`: 64 tokio tasks, each appending one event at a time in a loop, sharing
//!   the journal's group commit. Also measures every append's ack latency (p50/p99: criterion
//!   has no percentiles).
//! - `replay/journal`: `PoolJournal::open` on a journal of 1,000,000 events without a snapshot
//!   and fold every record into the registry (`projection::replay`): the sealed segments and
//!   the live store's unsealed tail, read as one history. `replay/bare_sled`: the baseline, a
//!   plain sled database of its own holding the same record bytes keyed by seq (built beside
//!   the journal by the fixture builder, from the journal's own segment files and live
//!   store), opened and iterated with the CRC check and the bincode decode, no fold. Closing
//!   (drop) is outside the timing of both. Also the peak RSS of one replay of each, each run
//!   in a fresh child process.
//! - `startup/snapshot`: `PoolJournal::open` + `projection::replay` on the same journal with a
//!   snapshot at its last seq.
//!
//! Every append is durable (`Journal::append` returns after flush + fdatasync). The event data
//! is produced by driving the pure core through `pool_managerd::script::Scripted` (64 pools:
//! leases, VRAM samples, crashes with backoff and restart, crash loops that open the breaker,
//! drains), so it is valid by construction; the replay checks that it folds without anomaly.
//!
//! Environment:
//! - `POOL_BENCH_EVENTS`: events in the replay journal (default 1,000,000), for quick checks.
//! - `POOL_BENCH_DIR`: where the journals are created (default `<target>/bench-data`). It must
//!   be on the disk under test: fsync on a tmpfs costs nothing.
//! - `POOL_BENCH_KEEP=1`: keep the journals after the run (their directory is printed), e.g.
//!   to profile one replay: `POOL_BENCH_RSS_PROBE=journal POOL_BENCH_RSS_DIR=<dir>/replay-plain
//!   target/release/deps/journal-<hash>` runs one replay and prints its peak RSS.
//!
//! The figures criterion cannot give (ack percentiles, peak RSS, fixture build time) are
//! printed and written to `<target>/bench-data/journal-figures.json`. Nothing here asserts
//! anything about time; it asserts only that the data is what it claims to be.

#[path = "support/common.rs"]
mod common;

use common::target_dir;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, SamplingMode, Throughput};
use pool_journal::{decode_payload, Draft, Envelope, JournalConfig, RECORD_HEADER_BYTES};
use pool_managerd::core::{
    Activity, BreakerState, Effect, Event, ExitReason, Observation, PoolId, PreparedEngine, State,
    Timer,
};
use pool_managerd::projection::{self, ReplayLimit};
use pool_managerd::schema::{PoolEnvelope, PoolJournal};
use pool_managerd::script::{cpu_engine, Scripted};
use serde_json::json;

/// Events in the replay journal unless `POOL_BENCH_EVENTS` says otherwise.
const DEFAULT_EVENTS: u64 = 1_000_000;
/// Pools in the scripted node.
const POOLS: usize = 64;
/// Slots per engine (the most leases a pool grants at once).
const SLOTS: u32 = 8;
/// Concurrent writers of `append/64_writers`.
const WRITERS: usize = 64;
/// Records per durable append of the replay fixture: about what the daemon's group commits
/// hold under lease traffic (`benches/history.rs` measures it), rather than the journal's
/// limit (1,024).
const FIXTURE_COMMIT_RECORDS: usize = 32;
/// Drafts pre-generated for the append benchmarks (cycled).
const APPEND_DRAFTS: usize = 20_000;
/// 2025-01-01T00:00:00Z: the scripted clock's start. Retention by age would call this
/// history expired, so the journals here are opened with `retain_ms` = `u64::MAX` (see
/// [`bench_config`]): what is measured never depends on the date of the run.
const START_MS: u64 = 1_735_689_600_000;
const MODELS: [&str; 4] = [
    "/models/llama-3.1-8b-instruct-q4_k_m.gguf",
    "/models/qwen2.5-14b-instruct-q5_k_m.gguf",
    "/models/mistral-7b-instruct-v0.3-q8_0.gguf",
    "/models/phi-3.5-mini-instruct-q6_k.gguf",
];

// ---- event data ---------------------------------------------------------------------------

/// A scripted node of 64 pools living a long, ordinary life: the source of every event here.
///
/// Each step moves the clock 20-80 ms, fires the timers that are due (restart backoff, breaker
/// half-open and close, drain deadlines, backoff reset), then advances one random pool: a
/// starting engine spawns or passes its health check, a stopping one stops, a stopped one is
/// preloaded again, a ready one mostly takes or returns a lease (96.65%), sometimes reports
/// VRAM use (3%), crashes (0.3%; one crash in eight starts a crash loop that fails the next
/// 2-7 starts, which can open the breaker) or is drained (0.05%, 30 s deadline). About 18 hours
/// of scripted clock per million events.
struct History {
    script: Scripted,
    pools: Vec<String>,
    engines: Vec<PreparedEngine>,
    /// Starts still to fail per pool (a crash loop in progress).
    crash_loop: Vec<u32>,
    random: u64,
}

impl History {
    fn new(seed: u64) -> History {
        let pools: Vec<String> = (0..POOLS).map(|i| format!("pool-{i:02}")).collect();
        let engines: Vec<PreparedEngine> = pools
            .iter()
            .enumerate()
            .map(|(i, pool)| {
                let port = 8_000 + u16::try_from(i).expect("port");
                cpu_engine(pool, port, MODELS[i % MODELS.len()], Some(SLOTS))
            })
            .collect();
        let mut history = History {
            script: Scripted::new(START_MS, seed),
            pools,
            engines,
            crash_loop: vec![0; POOLS],
            random: seed ^ 0x5851_f42d_4c95_7f2d,
        };
        for i in 0..POOLS {
            let (pool, engine) = (history.pools[i].clone(), history.engines[i].clone());
            history.script.preload(&pool, engine).expect("preload");
            history.script.spawn_engine(&pool).expect("spawn");
            history.script.advance(150);
            history
                .script
                .pass_health(&pool, 2_000, None)
                .expect("health");
        }
        history
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.random = self.random.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Appends at least `min` more envelopes to `out`.
    fn fill(&mut self, out: &mut VecDeque<PoolEnvelope>, min: usize) {
        out.extend(self.script.take_envelopes());
        while out.len() < min {
            self.step();
            out.extend(self.script.take_envelopes());
        }
    }

    /// Fires every timer that is due. `Scripted::fire_timer` answers the newest pending timer
    /// of a kind for a pool, so a pair is fired only when its newest timer is due (the older
    /// ones are stale by then and fire as no-ops later).
    fn fire_due_timers(&mut self) {
        let now = self.script.now_ms();
        loop {
            let any_due = self.script.pending().iter().any(
                |(_, effect)| matches!(effect, Effect::ArmTimer { at_ms, .. } if *at_ms <= now),
            );
            if !any_due {
                return;
            }
            let mut newest_seen: HashSet<(&PoolId, Timer)> = HashSet::new();
            let mut due = None;
            for (_, effect) in self.script.pending().iter().rev() {
                if let Effect::ArmTimer {
                    pool_id,
                    timer,
                    at_ms,
                    ..
                } = effect
                {
                    if !newest_seen.insert((pool_id, *timer)) {
                        continue;
                    }
                    if *at_ms <= now {
                        due = Some((pool_id.to_string(), *timer));
                        break;
                    }
                }
            }
            let Some((pool, timer)) = due else { return };
            self.script.fire_timer(&pool, timer).expect("fire timer");
        }
    }

    fn step(&mut self) {
        let advance = 20 + self.below(60);
        self.script.advance(advance);
        self.fire_due_timers();
        let index = self.below(POOLS as u64) as usize;
        let roll = self.below(10_000);
        let pick = self.next();
        let pool_name = self.pools[index].clone();
        let pool = self
            .script
            .state()
            .pool(&pool_name)
            .expect("every pool exists");
        let activity = pool.activity.clone();
        let has_process = pool.process.is_some();
        let serving = pool.serving();
        let draining = pool.drain.is_some();
        let breaker_open = pool.supervision.breaker.state != BreakerState::Closed;
        let leases: Vec<String> = pool.leases.iter().map(|l| l.to_string()).collect();
        let slots_total = pool.slots_total as usize;
        let pid = pool.pid();
        let script = &mut self.script;
        let p = pool_name.as_str();
        match activity {
            Activity::Starting { .. } if !has_process => {
                if roll < 50 {
                    script
                        .fail_spawn(p, "llama-server: cannot bind 127.0.0.1: address in use")
                        .expect("fail spawn");
                } else {
                    script.spawn_engine(p).expect("spawn");
                }
            }
            Activity::Starting { .. } => {
                if self.crash_loop[index] > 0 {
                    self.crash_loop[index] -= 1;
                    script
                        .exit_engine(
                            p,
                            Some(1),
                            None,
                            ExitReason::CudaError,
                            "CUDA error: an illegal memory access was encountered",
                        )
                        .expect("crash while starting");
                } else {
                    script
                        .pass_health(p, 1_500 + pick % 4_000, None)
                        .expect("health");
                }
            }
            Activity::Stopping { .. } => script.finish_stop(p, roll >= 500).expect("stop"),
            Activity::Stopped | Activity::Registered => {
                script
                    .preload(p, self.engines[index].clone())
                    .expect("preload again");
            }
            Activity::Failed if breaker_open => {
                script.reset_breaker(p, "operator").expect("reset");
            }
            Activity::Failed => {
                script
                    .preload(p, self.engines[index].clone())
                    .expect("preload after failure");
            }
            // Timers move these on.
            Activity::Backoff { .. } | Activity::CircuitOpen => {}
            Activity::Running if draining => {
                if let Some(lease) = leases.first() {
                    script.release_lease(p, lease).expect("release in drain");
                }
            }
            Activity::Running if !serving => {}
            Activity::Running => {
                if roll >= 335 {
                    let acquire =
                        leases.len() < slots_total && (leases.is_empty() || pick & 1 == 0);
                    if acquire {
                        let lease = format!("lease-{:016x}", pick >> 1);
                        script.acquire_lease(p, &lease).expect("acquire");
                    } else {
                        let lease = &leases[(pick >> 1) as usize % leases.len()];
                        script.release_lease(p, lease).expect("release");
                    }
                } else if roll >= 35 {
                    let used_bytes = (4 + pick % 20) << 30;
                    script
                        .submit(Observation::VramObserved {
                            pool_id: PoolId::new(p).expect("pool id"),
                            pid: pid.expect("running engine"),
                            used_bytes,
                        })
                        .expect("vram");
                } else if roll >= 5 {
                    let (exit_code, signal, reason, detail) = match pick % 4 {
                        0 => (
                            Some(139),
                            None,
                            ExitReason::Crash,
                            "segmentation fault in llama_decode",
                        ),
                        1 => (None, Some(9), ExitReason::OomKilled, "oom-kill: anon-rss"),
                        2 => (
                            Some(1),
                            None,
                            ExitReason::CudaError,
                            "CUDA error: out of memory",
                        ),
                        _ => (None, Some(6), ExitReason::Signal, "abort()"),
                    };
                    if pick % 8 == 5 {
                        self.crash_loop[index] = 2 + (pick >> 8) as u32 % 6;
                    }
                    script
                        .exit_engine(p, exit_code, signal, reason, detail)
                        .expect("crash");
                } else {
                    script.drain(p, 30_000).expect("drain");
                }
            }
        }
    }
}

fn to_draft(envelope: PoolEnvelope) -> Draft<Event> {
    Draft {
        ts_ms: envelope.ts_ms,
        pool_id: envelope.pool_id,
        cause: envelope.cause,
        event: envelope.event,
    }
}

// ---- set-up ---------------------------------------------------------------------------------

fn events_wanted() -> u64 {
    match std::env::var("POOL_BENCH_EVENTS") {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("POOL_BENCH_EVENTS={text:?}: want a positive integer")),
        Err(_) => DEFAULT_EVENTS,
    }
}

/// The journal's defaults but retention by age, which the scripted clock (starting on
/// [`START_MS`]) would otherwise trigger as soon as a snapshot allows it.
fn bench_config(dir: &Path) -> JournalConfig {
    let mut config = JournalConfig::new(dir);
    config.retain_ms = u64::MAX;
    config
}

fn open_journal(dir: &Path) -> PoolJournal {
    PoolJournal::open(bench_config(dir))
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
        .0
}

/// Copies a (closed) journal directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read journal dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy journal file");
        }
    }
}

/// The replay journals, built on first use.
struct Fixture {
    /// `events` scripted events, no snapshot.
    plain: PathBuf,
    /// A copy of `plain` with a snapshot at its last seq.
    snapshotted: PathBuf,
    /// A plain sled database (tree `records`, key = seq big-endian) holding the same record
    /// bytes as `plain`: the baseline's data.
    bare: PathBuf,
    events: u64,
    /// The registry after every event (folded once, outside any timing).
    state: State,
    build_s: f64,
}

struct Setup {
    root: tempfile::TempDir,
    figures_path: PathBuf,
    events: u64,
    fixture: Option<Fixture>,
    figures: serde_json::Map<String, serde_json::Value>,
}

impl Setup {
    fn new() -> Setup {
        let base = std::env::var_os("POOL_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("bench-data"));
        std::fs::create_dir_all(&base).expect("create bench dir");
        let root = tempfile::Builder::new()
            .prefix("journal-bench-")
            .tempdir_in(&base)
            .expect("bench temp dir");
        Setup {
            root,
            figures_path: target_dir().join("bench-data").join("journal-figures.json"),
            events: events_wanted(),
            fixture: None,
            figures: serde_json::Map::new(),
        }
    }

    fn fresh_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        assert!(!dir.exists(), "{} exists", dir.display());
        dir
    }

    fn fixture(&mut self) -> &Fixture {
        if self.fixture.is_none() {
            let plain = self.fresh_dir("replay-plain");
            let snapshotted = self.fresh_dir("replay-snapshot");
            let bare = self.fresh_dir("replay-bare-sled");
            let fixture = build_fixture(plain, snapshotted, bare, self.events);
            self.figures.insert(
                "fixture".into(),
                json!({
                    "events": fixture.events,
                    "build_s": fixture.build_s,
                    "journal_bytes_on_disk": pool_journal::layout::dir_bytes(&fixture.plain),
                    "journal_segments_bytes": pool_journal::layout::dir_bytes(&fixture.plain.join("segments")),
                    "journal_live_bytes": pool_journal::layout::dir_bytes(&pool_journal::live_store_dir(&fixture.plain)),
                    "bare_sled_bytes_on_disk": pool_journal::layout::dir_bytes(&fixture.bare),
                }),
            );
            self.fixture = Some(fixture);
        }
        self.fixture.as_ref().expect("just built")
    }
}

/// Writes `events` scripted events to a fresh journal at `plain` in batches of
/// [`FIXTURE_COMMIT_RECORDS`] (each one durable group commit), folds it once to check it and to get
/// the registry, then copies it to `snapshotted` and stores a snapshot there, and writes the
/// same record bytes into a plain sled database at `bare` (the baseline's data).
fn build_fixture(plain: PathBuf, snapshotted: PathBuf, bare: PathBuf, events: u64) -> Fixture {
    let started = Instant::now();
    eprintln!(
        "building the replay journal: {events} scripted events in {}",
        plain.display()
    );
    let journal = open_journal(&plain);
    let max_batch = FIXTURE_COMMIT_RECORDS;
    let mut history = History::new(1);
    let mut queue = VecDeque::new();
    let mut written = 0u64;
    let (mut script_time, mut append_time) = (Duration::ZERO, Duration::ZERO);
    while written < events {
        let take = max_batch.min(usize::try_from(events - written).expect("batch size"));
        let scripting = Instant::now();
        history.fill(&mut queue, take);
        let drafts: Vec<Draft<Event>> = queue.drain(..take).map(to_draft).collect();
        script_time += scripting.elapsed();
        let first = written + 1;
        let appending = Instant::now();
        let appended = journal
            .append_blocking(drafts)
            .expect("append fixture batch");
        append_time += appending.elapsed();
        assert_eq!(appended.first().map(|e| e.seq), Some(first));
        written += appended.len() as u64;
    }
    drop(journal);
    eprintln!(
        "scripted in {:.1} s, appended in {:.1} s",
        script_time.as_secs_f64(),
        append_time.as_secs_f64()
    );

    let journal = open_journal(&plain);
    let replayed = projection::replay(&journal, ReplayLimit::NONE).expect("replay fixture");
    assert_eq!(replayed.events_folded, events);
    assert_eq!(replayed.from_snapshot_seq, None);
    assert_eq!(
        replayed.state.anomalies, 0,
        "the scripted journal folds without anomaly"
    );
    drop(journal);

    copy_dir(&plain, &snapshotted);
    let journal = open_journal(&snapshotted);
    projection::save_snapshot(&journal, &replayed.state).expect("save snapshot");
    drop(journal);

    let copied = build_bare_sled(&plain, &bare);
    assert_eq!(copied, events, "the bare sled database holds every record");

    let build_s = started.elapsed().as_secs_f64();
    let counts = summary(&replayed.state);
    eprintln!("built in {build_s:.1} s; final registry: {counts}");
    Fixture {
        plain,
        snapshotted,
        bare,
        events,
        state: replayed.state,
        build_s,
    }
}

/// Every record of the (closed) journal at `journal_dir`, as the bytes it stores: the sealed
/// segments' entries (in the manifest's order), then the live store's unsealed records.
fn journal_record_bytes(journal_dir: &Path, mut each: impl FnMut(u64, &[u8])) {
    use pool_journal::layout::Layout;
    use pool_journal::segment::{SegmentFile, HEADER_BYTES};
    use pool_journal::Store as _;
    let layout = Layout::new(journal_dir);
    let manifest = pool_journal::manifest::read(&layout.manifest())
        .expect("read the manifest")
        .expect("a valid manifest")
        .unwrap_or_default();
    let mut next = manifest.first_retained();
    assert_eq!(next, 1, "the fixture keeps its whole history");
    for meta in &manifest.segments {
        let file = SegmentFile::open(&layout.segment_file(meta.first_seq, meta.last_seq))
            .unwrap_or_else(|f| panic!("segment {}..{}: {f:?}", meta.first_seq, meta.last_seq));
        for entry in file.cursor(HEADER_BYTES).expect("segment cursor") {
            let (seq, value) = entry.expect("segment entry");
            assert_eq!(seq, next, "segments hold consecutive seqs");
            each(seq, &value);
            next += 1;
        }
    }
    let live = pool_journal::SledStore::open(
        &pool_journal::live_store_dir(journal_dir),
        JournalConfig::new(journal_dir).cache_capacity_bytes,
    )
    .expect("open the live store");
    for item in live.iter_from(next) {
        let (seq, value) = item.expect("live store read");
        assert_eq!(seq, next, "the live store continues the segments");
        each(seq, value.as_ref());
        next += 1;
    }
}

/// Writes every record of the journal at `journal_dir` into a new plain sled database at
/// `bare` (tree `records`, key = seq big-endian, value = the record's bytes as the journal
/// stores them), durably; returns the records written.
fn build_bare_sled(journal_dir: &Path, bare: &Path) -> u64 {
    let started = Instant::now();
    let db = sled::Config::new()
        .path(bare)
        .cache_capacity(JournalConfig::new(bare).cache_capacity_bytes)
        .open()
        .expect("create the bare sled database");
    let records = db.open_tree("records").expect("records tree");
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    let mut count = 0u64;
    journal_record_bytes(journal_dir, |seq, value| {
        batch.insert(&seq.to_be_bytes(), value);
        in_batch += 1;
        count += 1;
        if in_batch == 1024 {
            records
                .apply_batch(std::mem::take(&mut batch))
                .expect("bare sled write");
            in_batch = 0;
        }
    });
    records.apply_batch(batch).expect("bare sled write");
    db.flush().expect("bare sled flush");
    drop(records);
    drop(db);
    eprintln!(
        "bare sled copy of {count} records written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    count
}

/// A one-line summary of the registry, for the log.
fn summary(state: &State) -> String {
    let pools = state.pools.values();
    let ready = state.pools.values().filter(|p| p.serving()).count();
    let restarts: u64 = pools.map(|p| u64::from(p.restart_count)).sum();
    let opened: u64 = state
        .pools
        .values()
        .map(|p| u64::from(p.supervision.breaker.opened_total))
        .sum();
    format!(
        "{} pools, {ready} ready, {restarts} restarts, breaker opened {opened} times, last seq {}",
        state.pools.len(),
        state.last_seq
    )
}

// ---- measurements outside criterion -------------------------------------------------------

/// Ack latencies of one `iter_custom` call, in ns, and the distinct `last_seq` values seen at
/// ack time (one per group commit that acknowledged a measured append, near enough).
#[derive(Default)]
struct CallLatencies {
    ns: Vec<u64>,
    commits: usize,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises the latencies of the calls criterion measured: it calls `iter_custom` for the
/// warm-up first, then once per sample, so the last `samples` calls are the measured ones.
fn latency_summary(calls: &[CallLatencies], samples: usize) -> serde_json::Value {
    let measured = &calls[calls.len().saturating_sub(samples)..];
    let mut all: Vec<u64> = measured.iter().flat_map(|c| c.ns.iter().copied()).collect();
    all.sort_unstable();
    let commits: usize = measured.iter().map(|c| c.commits).sum();
    let ms = |ns: u64| ns as f64 / 1e6;
    let mean = if all.is_empty() {
        0.0
    } else {
        all.iter().sum::<u64>() as f64 / all.len() as f64 / 1e6
    };
    json!({
        "appends": all.len(),
        "p50_ms": ms(percentile(&all, 50.0)),
        "p90_ms": ms(percentile(&all, 90.0)),
        "p99_ms": ms(percentile(&all, 99.0)),
        "p999_ms": ms(percentile(&all, 99.9)),
        "max_ms": ms(all.last().copied().unwrap_or(0)),
        "mean_ms": mean,
        "approx_commits": commits,
        "approx_records_per_commit": if commits == 0 { 0.0 } else { all.len() as f64 / commits as f64 },
    })
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Set in the environment of a child process that runs one replay and reports its peak RSS.
const RSS_PROBE_ENV: &str = "POOL_BENCH_RSS_PROBE";

/// Runs one replay of `dir` (`journal` or `bare_sled`) in a fresh child process (this binary
/// with [`RSS_PROBE_ENV`] set), so that the peak RSS is the replay's alone, not that of the
/// fixture build and the append benchmarks that ran before in this process.
fn peak_rss_in_child(mode: &str, dir: &Path) -> serde_json::Value {
    let exe = std::env::current_exe().expect("current exe");
    let output = std::process::Command::new(exe)
        .env(RSS_PROBE_ENV, mode)
        .env("POOL_BENCH_RSS_DIR", dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run the RSS probe");
    assert!(
        output.status.success(),
        "RSS probe failed: {}",
        output.status
    );
    serde_json::from_slice(&output.stdout).expect("RSS probe output")
}

/// The child's side of [`peak_rss_in_child`].
fn rss_probe(mode: &str) {
    let dir = PathBuf::from(std::env::var_os("POOL_BENCH_RSS_DIR").expect("probe dir"));
    let cache = JournalConfig::new(&dir).cache_capacity_bytes;
    let figures = match mode {
        "journal" => peak_rss(|| {
            black_box(journal_replay(&dir));
        }),
        "bare_sled" => peak_rss(|| {
            black_box(bare_sled_replay(&dir, cache));
        }),
        other => panic!("unknown probe {other}"),
    };
    println!("{figures}");
}

/// Runs `f` once with the RSS high-water mark reset first; returns the RSS before, the peak
/// during, and the time it took.
fn peak_rss(f: impl FnOnce()) -> serde_json::Value {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = proc_status_kib("VmRSS");
    let started = Instant::now();
    f();
    let took = started.elapsed();
    let peak = proc_status_kib("VmHWM");
    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    json!({
        "hwm_reset": reset,
        "rss_before_mib": mib(before),
        "peak_rss_mib": mib(peak),
        "seconds": took.as_secs_f64(),
    })
}

// ---- (a), (b): durable appends ------------------------------------------------------------

fn bench_append(c: &mut Criterion, setup: &mut Setup) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut history = History::new(2);
    let mut queue = VecDeque::new();
    history.fill(&mut queue, APPEND_DRAFTS);
    let drafts: Arc<Vec<Draft<Event>>> = Arc::new(queue.into_iter().map(to_draft).collect());

    const SAMPLES: usize = 10;
    let mut group = c.benchmark_group("append");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(1));

    let one_dir = setup.fresh_dir("append-one");
    let journal = open_journal(&one_dir);
    let one_calls: Mutex<Vec<CallLatencies>> = Mutex::default();
    group.bench_function("one_writer", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (journal, drafts, calls) = (&journal, &drafts, &one_calls);
            async move {
                let mut ns = Vec::with_capacity(iters as usize);
                let started = Instant::now();
                for i in 0..iters as usize {
                    let draft = drafts[i % drafts.len()].clone();
                    let sent = Instant::now();
                    journal.append(vec![draft]).await.expect("append");
                    ns.push(sent.elapsed().as_nanos() as u64);
                }
                let elapsed = started.elapsed();
                let commits = ns.len();
                calls
                    .lock()
                    .expect("lock")
                    .push(CallLatencies { ns, commits });
                elapsed
            }
        })
    });
    drop(journal);

    let many_dir = setup.fresh_dir("append-64");
    let journal = open_journal(&many_dir);
    let many_calls: Mutex<Vec<CallLatencies>> = Mutex::default();
    group.bench_function("64_writers", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (journal, drafts, calls) = (&journal, &drafts, &many_calls);
            async move {
                let started = Instant::now();
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|writer| {
                        let count = iters / WRITERS as u64
                            + u64::from((writer as u64) < iters % WRITERS as u64);
                        let (journal, drafts) = (journal.clone(), Arc::clone(drafts));
                        tokio::spawn(async move {
                            let mut ns = Vec::with_capacity(count as usize);
                            let mut acked_at = Vec::with_capacity(count as usize);
                            for i in 0..count as usize {
                                let draft = drafts[(writer * 997 + i) % drafts.len()].clone();
                                let sent = Instant::now();
                                journal.append(vec![draft]).await.expect("append");
                                ns.push(sent.elapsed().as_nanos() as u64);
                                acked_at.push(journal.last_seq());
                            }
                            (ns, acked_at)
                        })
                    })
                    .collect();
                let mut ns = Vec::with_capacity(iters as usize);
                let mut commits = HashSet::new();
                for task in tasks {
                    let (task_ns, acked_at) = task.await.expect("writer task");
                    ns.extend(task_ns);
                    commits.extend(acked_at);
                }
                let elapsed = started.elapsed();
                calls.lock().expect("lock").push(CallLatencies {
                    ns,
                    commits: commits.len(),
                });
                elapsed
            }
        })
    });
    drop(journal);
    group.finish();

    for (name, calls) in [
        ("one_writer", one_calls.into_inner().expect("lock")),
        ("64_writers", many_calls.into_inner().expect("lock")),
    ] {
        if calls.is_empty() {
            continue; // filtered out
        }
        let summary = latency_summary(&calls, SAMPLES);
        eprintln!("append/{name} ack latency: {summary}");
        setup.figures.insert(format!("append_{name}"), summary);
    }
}

// ---- (c): full replay, and its bare-sled baseline -----------------------------------------

/// The baseline: open the plain sled database `dir` (built by [`build_bare_sled`] with the
/// journal's record bytes) with the journal's cache size, iterate the records tree, check
/// each CRC and bincode-decode each payload; no fold, no journal checks. Returns the records
/// read, and the open db for the caller to drop outside the timing.
fn bare_sled_replay(dir: &Path, cache_capacity_bytes: u64) -> (u64, sled::Db) {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity_bytes)
        .open()
        .expect("open sled");
    let records = db.open_tree("records").expect("records tree");
    let mut count = 0u64;
    for item in records.iter() {
        let (_key, value) = item.expect("sled read");
        let (header, payload) = value.split_at(RECORD_HEADER_BYTES);
        let stored = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes"));
        assert_eq!(
            crc32c::crc32c(payload),
            stored,
            "crc of record {}",
            count + 1
        );
        let envelope: Envelope<Event> = decode_payload(header[0], payload).expect("decode");
        black_box(envelope);
        count += 1;
    }
    (count, db)
}

/// `PoolJournal::open` + `projection::replay` to the end. Returns the journal for the caller
/// to drop (close) outside the timing.
fn journal_replay(dir: &Path) -> (projection::Replayed, PoolJournal) {
    let journal = open_journal(dir);
    let replayed = projection::replay(&journal, ReplayLimit::NONE).expect("replay");
    (replayed, journal)
}

/// Criterion's flat sampling: 10 samples of one replay each. The measurement time asked for
/// is an estimate from the event count (criterion says so if a run takes longer).
fn replay_measurement_time(events: u64) -> Duration {
    Duration::from_secs_f64((events as f64 * 1.5e-6 * 10.0).max(3.0))
}

fn bench_replay(c: &mut Criterion, setup: &mut Setup) {
    let cache = JournalConfig::new("unused").cache_capacity_bytes;
    let mut group = c.benchmark_group("replay");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(replay_measurement_time(setup.events))
        .throughput(Throughput::Elements(setup.events));
    let mut rss_measured = false;
    group.bench_function("journal", |b| {
        let (dir, events, expected_seq) = {
            let fixture = setup.fixture();
            (
                fixture.plain.clone(),
                fixture.events,
                fixture.state.last_seq,
            )
        };
        if !rss_measured {
            // One replay of each kind in a fresh process, for the peak RSS.
            rss_measured = true;
            let rss = peak_rss_in_child("journal", &dir);
            let baseline = peak_rss_in_child("bare_sled", &setup.fixture().bare.clone());
            eprintln!("replay/journal peak RSS: {rss}");
            eprintln!("replay/bare_sled peak RSS: {baseline}");
            setup.figures.insert(
                "replay_peak_rss".into(),
                json!({ "journal": rss, "bare_sled": baseline, "cache_capacity_bytes": cache }),
            );
        }
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (replayed, journal) = journal_replay(&dir);
                total += started.elapsed();
                drop(journal);
                assert_eq!(replayed.events_folded, events);
                assert_eq!(replayed.state.last_seq, expected_seq);
            }
            total
        })
    });
    group.bench_function("bare_sled", |b| {
        let (dir, events) = {
            let fixture = setup.fixture();
            (fixture.bare.clone(), fixture.events)
        };
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (count, db) = bare_sled_replay(&dir, cache);
                total += started.elapsed();
                drop(db);
                assert_eq!(count, events);
            }
            total
        })
    });
    group.finish();
}

// ---- (d): start-up from a snapshot --------------------------------------------------------

fn bench_startup(c: &mut Criterion, setup: &mut Setup) {
    let mut group = c.benchmark_group("startup");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut checked = false;
    group.bench_function("snapshot", |b| {
        let (dir, expected) = {
            let fixture = setup.fixture();
            (fixture.snapshotted.clone(), fixture.state.last_seq)
        };
        if !checked {
            checked = true;
            let (replayed, _journal) = journal_replay(&dir);
            assert_eq!(replayed.from_snapshot_seq, Some(expected));
            assert_eq!(replayed.events_folded, 0);
            assert!(
                replayed.state == setup.fixture().state,
                "snapshot + tail equals the full fold"
            );
        }
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (replayed, journal) = journal_replay(&dir);
                total += started.elapsed();
                drop(journal);
                assert_eq!(replayed.from_snapshot_seq, Some(expected));
            }
            total
        })
    });
    // The daemon's real start-up also records `DaemonStarted` right after the replay, durably.
    // An existing journal opens without a sync, so sled's open-time rewrite of its free
    // segments (page cache only) is flushed by this first append's fdatasync: measured here
    // so that the cost moved out of the open is not hidden.
    group.bench_function("snapshot_then_first_append", |b| {
        let (dir, expected) = {
            let fixture = setup.fixture();
            (fixture.snapshotted.clone(), fixture.state.last_seq)
        };
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (replayed, journal) = journal_replay(&dir);
                let written = journal
                    .append_blocking(vec![Draft {
                        ts_ms: replayed.as_of_ts_ms.unwrap_or(0),
                        pool_id: None,
                        cause: None,
                        event: Event::DaemonStarted {
                            version: "bench".into(),
                            pid: std::process::id(),
                        },
                    }])
                    .expect("first append");
                total += started.elapsed();
                drop(journal);
                assert_eq!(replayed.from_snapshot_seq, Some(expected));
                assert_eq!(written[0].seq, replayed.state.last_seq() + 1);
            }
            total
        })
    });
    group.finish();
}

fn main() {
    if let Ok(mode) = std::env::var(RSS_PROBE_ENV) {
        rss_probe(&mode);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let mut setup = Setup::new();
    bench_append(&mut criterion, &mut setup);
    bench_replay(&mut criterion, &mut setup);
    bench_startup(&mut criterion, &mut setup);
    criterion.final_summary();

    if std::env::var_os("POOL_BENCH_KEEP").is_some() {
        eprintln!("journals kept in {}", setup.root.keep().display());
    }
    // Only `cargo bench` (which passes `--bench`) measures; `--test`, `--list` and a run from
    // `cargo test --bench journal` run each benchmark once: no figures worth keeping.
    let args: Vec<String> = std::env::args().collect();
    let measured = args.iter().any(|arg| arg == "--bench")
        && !args.iter().any(|arg| arg == "--test" || arg == "--list");
    if !measured {
        return;
    }
    setup.figures.insert(
        "args".into(),
        json!(std::env::args().skip(1).collect::<Vec<_>>()),
    );
    let figures = serde_json::Value::Object(std::mem::take(&mut setup.figures));
    let text = serde_json::to_string_pretty(&figures).expect("json");
    if let Some(parent) = setup.figures_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&setup.figures_path, format!("{text}\n")) {
        Ok(()) => eprintln!("figures written to {}", setup.figures_path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", setup.figures_path.display()),
    }
}
