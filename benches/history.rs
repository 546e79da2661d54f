//! The journal over a long history and under sustained traffic, against `pool-managerd serve
//! --dev` (the real binary, a child of the benchmark; the bench profile builds it in release).
//! Figures and how to read them: `BENCHMARKS.md`, section "The journal over a long history".
//!
//! **The history.** Pure lease traffic, which is what dominates a real journal: 16 pools
//! (llama.cpp engines, 8 slots each) preloaded and ready, then `LeaseGranted` /
//! `LeaseReleased` pairs round robin over the pools (lease ids as the daemon makes them,
//! `lease-{n:016x}`), one event every 10 ms of event time (50 leases/s), then the pools
//! stopped (so that a daemon started over it has no engine to adopt or restart). Every event
//! comes from the pure core driven by `pool_managerd::script::Scripted` (valid by
//! construction) and is written with the journal's own API in durable appends of 32 records
//! (about the size of the daemon's own group commits under lease traffic: see
//! [`COMMIT_RECORDS`]); a snapshot of the folded registry is saved with `projection::save_snapshot`
//! whenever the history crosses a multiple of 10,000 events, exactly as the daemon does with
//! its default `snapshot_every` (the daemon's rule: after a commit whose last seq crosses a
//! multiple, the registry after that commit). The fixture's journal is written with
//! `retain_bytes` = 100 GiB and no retention by age, and the daemon runs with the same (a
//! config file), so that the history really is that long.
//!
//! Each history size is built once and cached under `<target>/bench-data/history-v1-<size>`
//! (reruns reuse it; delete the directory to rebuild); every daemon runs on a clone of it
//! (segment and snapshot files hard-linked, since the journal never modifies them in place;
//! the live store, manifest and witness copied), so the cache is never changed.
//!
//! - `startup/<size>` (criterion): exec of `serve` over the history to the first `GET /health`
//!   answer, 200 (the daemon binds its socket before it opens the journal, so one request
//!   sent at once is answered when it serves). Also the daemon's RSS (`VmRSS` of
//!   `/proc/<pid>/status`) at that answer, and its peak (`VmHWM`), for every start. Each
//!   iteration ends with SIGTERM (a clean stop), so each start is a clean one.
//! - `at_seq/<size>` (criterion): `GET /v2/pools?at_seq=N` on one daemon, N taken in turn
//!   from 50 values spread evenly over the history and 50 values just before a snapshot (a
//!   whole gap of 10,000 events replayed from the snapshot before); the latency of every
//!   measured query, for percentiles.
//! - `live` (a measurement loop): a daemon on a fresh journal with the default configuration,
//!   one engine-sim pool (256 slots), 64 concurrent HTTP clients taking and returning leases
//!   until `POOL_BENCH_LIVE_EVENTS` lease events (default 1,000,000) are journaled; the
//!   daemon's RSS sampled every 250 ms; figure: the RSS when a quarter of the events were
//!   made against the highest RSS after it and at the end.
//! - `day` (a measurement loop): the same lease traffic for one simulated day at 50 leases/s
//!   (8,640,000 events over 24 h of event time), written with the journal API into a journal
//!   with the default retention (1 GiB, 30 days) whose clock (`JournalConfig::clock`) is the
//!   simulated time, snapshots every 10,000 events; figures: the directory's size at the end,
//!   the bytes per lease event (segments, live store and witness), the segments and the
//!   retained range.
//!
//! Environment:
//! - `POOL_BENCH_HISTORY_SIZES`: the history sizes (default `100000,1000000,10000000` under
//!   `cargo bench`, `2000,20000` in test mode).
//! - `POOL_BENCH_HISTORY_PARTS`: which parts run (default `startup,at_seq,live,day`;
//!   `fixtures` only builds the histories that are not cached yet).
//! - `POOL_BENCH_LIVE_EVENTS`, `POOL_BENCH_LIVE_CLIENTS`: the live part (default 1,000,000
//!   events and 64 clients; 2,000 events in test mode).
//! - `POOL_BENCH_DAY_EVENTS`: the simulated day (default 8,640,000; 20,000 in test mode).
//! - `POOL_BENCH_DAEMON`: the daemon binary to run (default: the one cargo built,
//!   `CARGO_BIN_EXE_pool-managerd`).
//! - `POOL_BENCH_DIR`: where fixtures and run directories go (default `<target>/bench-data`;
//!   it must be on the disk under test).
//!
//! Test mode (`cargo test --bench history`): each criterion benchmark runs once, the loops on
//! small sizes. The figures criterion cannot give are printed and, under `cargo bench`,
//! written to `<target>/bench-data/history-figures.json`. Nothing here asserts anything about
//! time; it asserts only that the data is what it claims (the history's length and snapshots,
//! every answer 200 with the pools it should have, every lease event journaled).

#[path = "support/common.rs"]
mod common;

use common::serve::{Serve, ServeCommand};
use common::{free_port, target_dir};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use pool_journal::{Draft, JournalClock, JournalConfig};
use pool_managerd::core::{Event, State};
use pool_managerd::projection;
use pool_managerd::schema::{PoolEnvelope, PoolJournal};
use pool_managerd::script::{cpu_engine, Scripted};
use serde_json::{json, Value};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");
/// Events between snapshots (`[journal] snapshot_every`, its default).
const SNAPSHOT_EVERY: u64 = 10_000;
/// Pools of the history.
const POOLS: usize = 16;
/// Event time between two events of the history: 100 events/s = 50 leases/s.
const EVENT_STEP_MS: u64 = 10;
/// Records per durable append of the history: about what the daemon's group commits hold
/// under lease traffic (its node actor appends what its clients queued meanwhile; the `live`
/// part measures it), rather than the journal's limit (1,024).
const COMMIT_RECORDS: usize = 32;
/// The history writer stops (rather than exhaust the machine's memory) past this RSS.
const WRITER_RSS_LIMIT_KIB: u64 = 12 << 20;
/// Retention of the history fixtures and of the daemons over them: keep everything.
const HISTORY_RETAIN_BYTES: u64 = 100 << 30;
/// About ten years: no retention by age.
const HISTORY_RETAIN_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// 2026-01-01T00:00:00Z: the simulated day's start.
const DAY_START_MS: u64 = 1_767_225_600_000;
/// Changes when the fixture's content changes (the cache key, with the event format).
const FIXTURE_VERSION: u32 = 2;
/// at_seq: evenly spread values, and values just before a snapshot.
const AT_SEQ_SPREAD: usize = 50;

fn bench_dir() -> PathBuf {
    std::env::var_os("POOL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("bench-data"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?}: want an integer")),
        Err(_) => default,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `100k`, `1M`, `10M`, `2k`.
fn label(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary_ms(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    json!({
        "n": values.len(),
        "min_ms": values.first().copied().unwrap_or(0.0),
        "p50_ms": percentile(values, 50.0),
        "p90_ms": percentile(values, 90.0),
        "p99_ms": percentile(values, 99.0),
        "max_ms": values.last().copied().unwrap_or(0.0),
        "mean_ms": mean,
    })
}

// ---- the history --------------------------------------------------------------------------

/// One durable append of the history, and the registry to snapshot after it (the daemon's
/// rule: the commit's last seq crossed a multiple of [`SNAPSHOT_EVERY`]).
struct Batch {
    drafts: Vec<Draft<Event>>,
    snapshot: Option<State>,
}

fn draft(envelope: PoolEnvelope) -> Draft<Event> {
    Draft {
        ts_ms: envelope.ts_ms,
        pool_id: envelope.pool_id,
        cause: envelope.cause,
        event: envelope.event,
    }
}

/// Generates the lease history of about `events` events, the first at `start_ms`, into `tx`.
/// Returns the seq after which every pool exists (the end of the preloads).
fn generate(events: u64, start_ms: u64, tx: mpsc::SyncSender<Batch>) -> u64 {
    let mut script = Scripted::new(start_ms, 11);
    let pools: Vec<String> = (0..POOLS).map(|i| format!("pool-{i:02}")).collect();
    let mut pending: Vec<Draft<Event>> = Vec::with_capacity(COMMIT_RECORDS + 8);
    let mut committed = 0u64;
    // After each decision (one request of the daemon): cut the batch where the daemon would
    // snapshot, or where it is full.
    let mut after_call = |script: &mut Scripted, pending: &mut Vec<Draft<Event>>| {
        pending.extend(script.take_envelopes().into_iter().map(draft));
        let last = script.state().last_seq();
        let snapshot = last / SNAPSHOT_EVERY > committed / SNAPSHOT_EVERY;
        if snapshot || pending.len() >= COMMIT_RECORDS {
            committed = last;
            tx.send(Batch {
                drafts: std::mem::take(pending),
                snapshot: snapshot.then(|| script.state().clone()),
            })
            .expect("the writer is gone");
        }
    };
    for (i, pool) in pools.iter().enumerate() {
        let port = 8_000 + u16::try_from(i).expect("port");
        let engine = cpu_engine(
            pool,
            port,
            "/models/llama-3.1-8b-instruct-q4_k_m.gguf",
            Some(8),
        );
        script.preload(pool, engine).expect("preload");
        script.spawn_engine(pool).expect("spawn");
        script.advance(150);
        script.pass_health(pool, 2_000, None).expect("health");
        after_call(&mut script, &mut pending);
    }
    let preloaded = script.state().last_seq();
    // Stopping the pools at the end takes 2 events each (EngineStopRequested, EngineStopped).
    let stop_events = 2 * POOLS as u64;
    let mut i = 0u64;
    while script.state().last_seq() + 2 + stop_events <= events {
        let pool = &pools[i as usize % POOLS];
        let lease = format!("lease-{i:016x}");
        script.advance(EVENT_STEP_MS);
        script.acquire_lease(pool, &lease).expect("acquire");
        after_call(&mut script, &mut pending);
        script.advance(EVENT_STEP_MS);
        script.release_lease(pool, &lease).expect("release");
        after_call(&mut script, &mut pending);
        i += 1;
    }
    for pool in &pools {
        script.advance(EVENT_STEP_MS);
        script.stop(pool).expect("stop");
        script.finish_stop(pool, true).expect("stopped");
        after_call(&mut script, &mut pending);
    }
    pending.extend(script.take_envelopes().into_iter().map(draft));
    if !pending.is_empty() {
        tx.send(Batch {
            drafts: pending,
            snapshot: None,
        })
        .expect("the writer is gone");
    }
    preloaded
}

/// What writing a history produced.
struct Written {
    last_seq: u64,
    preloaded: u64,
    snapshots: u64,
    seconds: f64,
    /// The writing process's largest RSS seen (every 65,536 events).
    writer_rss_mib: f64,
}

/// Writes the history of about `events` events (first event at `start_ms`) into `journal`
/// (the generator runs on a thread of its own, the appends here). Before each append,
/// `clock` (if any) is set to the batch's last event time; after it, `each_batch` is called.
fn write_history(
    journal: &PoolJournal,
    events: u64,
    start_ms: u64,
    clock: Option<&AtomicU64>,
    mut each_batch: impl FnMut(&PoolJournal),
) -> Written {
    let started = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Batch>(16);
    let generator = std::thread::spawn(move || generate(events, start_ms, tx));
    let mut snapshots = 0u64;
    let mut peak_rss_kib = 0u64;
    for batch in rx {
        let first = journal.last_seq() + 1;
        let n = batch.drafts.len() as u64;
        if let (Some(clock), Some(last)) = (clock, batch.drafts.last()) {
            clock.store(last.ts_ms, Ordering::Release);
        }
        let appended = journal.append_blocking(batch.drafts).expect("append");
        assert_eq!(appended.first().map(|e| e.seq), Some(first));
        assert_eq!(appended.len() as u64, n);
        if let Some(state) = batch.snapshot {
            assert_eq!(
                state.last_seq(),
                journal.last_seq(),
                "snapshot of this commit"
            );
            projection::save_snapshot(journal, &state).expect("save snapshot");
            snapshots += 1;
        }
        each_batch(journal);
        if journal.last_seq() % 65_536 < n {
            let rss = self_rss_kib();
            assert!(
                rss < WRITER_RSS_LIMIT_KIB,
                "the history writer's RSS reached {} MiB at seq {}: stopped",
                rss / 1024,
                journal.last_seq()
            );
            peak_rss_kib = peak_rss_kib.max(rss);
        }
    }
    peak_rss_kib = peak_rss_kib.max(self_rss_kib());
    let preloaded = generator.join().expect("the generator panicked");
    Written {
        last_seq: journal.last_seq(),
        preloaded,
        snapshots,
        seconds: started.elapsed().as_secs_f64(),
        writer_rss_mib: peak_rss_kib as f64 / 1024.0,
    }
}

/// This process's `VmRSS`, in KiB.
fn self_rss_kib() -> u64 {
    rss_kib(std::process::id()).0
}

// ---- history fixtures ---------------------------------------------------------------------

/// A cached history.
#[derive(Clone)]
struct Fixture {
    events: u64,
    /// `<fixture>/journal`.
    journal: PathBuf,
    last_seq: u64,
    preloaded: u64,
    meta: Value,
}

fn history_config(dir: &Path) -> JournalConfig {
    let mut config = JournalConfig::new(dir);
    config.retain_bytes = HISTORY_RETAIN_BYTES;
    config.retain_ms = HISTORY_RETAIN_MS;
    config
}

/// The history of `events` events, from the cache or built now.
fn fixture(events: u64) -> Fixture {
    let root = bench_dir().join(format!(
        "history-v{FIXTURE_VERSION}-f{}-{events}",
        pool_managerd::core::EVENT_FORMAT_VERSION
    ));
    let marker = root.join("fixture.json");
    let journal_dir = root.join("journal");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let meta: Value = serde_json::from_str(&text).expect("fixture.json");
        eprintln!(
            "history of {} events: cached in {}",
            meta["last_seq"],
            root.display()
        );
        return Fixture {
            events,
            journal: journal_dir,
            last_seq: meta["last_seq"].as_u64().expect("last_seq"),
            preloaded: meta["preloaded_seq"].as_u64().expect("preloaded_seq"),
            meta,
        };
    }
    // Absent or interrupted: build it again from nothing.
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("fixture dir");
    eprintln!(
        "building a history of {events} lease events in {} (cached for later runs)",
        root.display()
    );
    let (journal, _) = PoolJournal::open(history_config(&journal_dir)).expect("open");
    let start_ms = now_ms().saturating_sub(events * EVENT_STEP_MS);
    let mut reported = Instant::now();
    let written = write_history(&journal, events, start_ms, None, |journal| {
        if reported.elapsed() > Duration::from_secs(30) {
            reported = Instant::now();
            eprintln!(
                "  ... {} events (writer RSS {:.0} MiB, live store {:.0} MiB)",
                journal.last_seq(),
                self_rss_kib() as f64 / 1024.0,
                mib(pool_journal::layout::dir_bytes(&journal.dir().join("live")))
            );
        }
    });
    // Everything the daemon will find: the whole history, the snapshots it takes.
    let usage = journal.usage();
    assert_eq!(usage.first_seq, 1, "nothing expired");
    assert_eq!(usage.last_seq, written.last_seq);
    let snapshot_seqs = journal.snapshot_seqs();
    assert_eq!(
        snapshot_seqs.len() as u64,
        written.snapshots,
        "every snapshot kept"
    );
    journal.close().expect("close");
    drop(journal);
    let meta = json!({
        "events_asked": events,
        "last_seq": written.last_seq,
        "preloaded_seq": written.preloaded,
        "snapshots": written.snapshots,
        "newest_snapshot": snapshot_seqs.first(),
        "build_s": written.seconds,
        "commit_records": COMMIT_RECORDS,
        "writer_rss_mib": written.writer_rss_mib,
        "segments": usage.segments,
        "segment_bytes": usage.segment_bytes,
        "live_bytes": pool_journal::layout::dir_bytes(&journal_dir.join("live")),
        "snapshot_bytes": pool_journal::layout::dir_bytes(&journal_dir.join("snapshots")),
        "dir_bytes": pool_journal::layout::dir_bytes(&journal_dir),
        "built_at_ms": now_ms(),
    });
    eprintln!("built: {meta}");
    std::fs::write(&marker, format!("{meta}\n")).expect("fixture.json");
    Fixture {
        events,
        journal: journal_dir,
        last_seq: written.last_seq,
        preloaded: written.preloaded,
        meta,
    }
}

/// A clone of the journal `from` at `to` that a daemon may write: segment and snapshot files
/// hard-linked (the journal never changes them in place: new ones are renamed in, old ones
/// unlinked), everything else (the live store, the manifest, the witness) copied.
fn clone_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("clone dir");
    for entry in std::fs::read_dir(from).expect("read journal dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let text = name.to_string_lossy();
        let target = to.join(&name);
        if entry.file_type().expect("file type").is_dir() {
            clone_journal(&entry.path(), &target);
        } else if text.ends_with(".seg") || text.ends_with(".snap") {
            std::fs::hard_link(entry.path(), &target).expect("hard link");
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

// ---- the daemon ---------------------------------------------------------------------------

/// The daemon binary: `POOL_BENCH_DAEMON`, else the one cargo built for this benchmark
/// (a copy keeps a long run on one build while `target/release` is rebuilt).
fn daemon_exe() -> PathBuf {
    std::env::var_os("POOL_BENCH_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DAEMON))
}

struct Daemon {
    serve: Serve,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts `serve --dev` over `dir/journal` (runtime in `dir/runtime`), with `config`.
    fn spawn(dir: &Path, config: Option<&Path>) -> Daemon {
        let mut command = ServeCommand::new(daemon_exe(), dir)
            .dev()
            .env("RUST_LOG", "warn");
        if let Some(config) = config {
            command = command.config(config);
        }
        let serve = command.spawn();
        let (port, log) = (serve.port, serve.log.clone());
        Daemon { serve, port, log }
    }

    fn pid(&self) -> u32 {
        self.serve.pid()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends one `GET /health` as soon as the socket accepts and waits for its answer;
    /// returns its status. Panics if the daemon exits first.
    fn wait_health(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = http_status(self.port, "/health") {
                return status;
            }
            if let Ok(Some(exit)) = self.serve.guard.0.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("the daemon exited ({exit}) before answering: {log}");
            }
            assert!(Instant::now() < deadline, "the daemon did not answer");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 20 s).
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.serve.guard.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("the daemon did not stop within 20 s of SIGTERM: killed");
        let _ = self.serve.guard.0.kill();
        let _ = self.serve.guard.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.serve.guard.0.try_wait() {
            let _ = self.serve.guard.0.kill();
            let _ = self.serve.guard.0.wait();
        }
    }
}

/// One plain HTTP/1.1 GET on a fresh connection; `None` if the connection is refused or
/// closed without an answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let status = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Some(status)
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A run directory (journal clone and runtime dir), removed at the end.
fn run_dir(name: &str) -> tempfile::TempDir {
    let base = bench_dir();
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::Builder::new()
        .prefix(&format!("history-run-{name}-"))
        .tempdir_in(&base)
        .expect("run dir")
}

/// The config file of the daemons over a history: keep everything.
fn history_daemon_config(dir: &Path) -> PathBuf {
    let path = dir.join("pool-managerd.toml");
    std::fs::write(
        &path,
        format!(
            "[journal]\nretain_bytes = {HISTORY_RETAIN_BYTES}\nretain_ms = {HISTORY_RETAIN_MS}\n"
        ),
    )
    .expect("config file");
    path
}

// ---- startup ------------------------------------------------------------------------------

#[derive(Default)]
struct StartSample {
    ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn bench_startup(
    c: &mut Criterion,
    fixtures: &[Fixture],
    figures: &mut serde_json::Map<String, Value>,
) {
    let mut group = c.benchmark_group("startup");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    for fixture in fixtures {
        let run = run_dir(&format!("startup-{}", label(fixture.events)));
        clone_journal(&fixture.journal, &run.path().join("journal"));
        let config = history_daemon_config(run.path());
        let samples: Mutex<Vec<Vec<StartSample>>> = Mutex::default();
        group.bench_function(label(fixture.events), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut call = Vec::new();
                for _ in 0..iters {
                    let exec = Instant::now();
                    let mut daemon = Daemon::spawn(run.path(), Some(&config));
                    let status = daemon.wait_health();
                    let took = exec.elapsed();
                    let (rss, hwm) = rss_kib(daemon.pid());
                    assert_eq!(status, 200, "GET /health");
                    total += took;
                    call.push(StartSample {
                        ms: took.as_secs_f64() * 1e3,
                        rss_kib: rss,
                        hwm_kib: hwm,
                    });
                    daemon.stop();
                }
                samples.lock().expect("lock").push(call);
                total
            })
        });
        // The journal the daemons ran over is the history (plus their own few events).
        let (journal, _) = PoolJournal::open_read_only(history_config(&run.path().join("journal")))
            .expect("open the clone");
        assert_eq!(journal.first_seq(), 1, "the whole history retained");
        assert!(
            journal.last_seq() > fixture.last_seq,
            "the daemon started over it"
        );
        let added = journal.last_seq() - fixture.last_seq;
        drop(journal);
        let calls = samples.into_inner().expect("lock");
        // Criterion calls once to warm up, then once per sample: the last 10 are measured.
        let measured: Vec<&StartSample> = calls
            .iter()
            .skip(calls.len().saturating_sub(10))
            .flatten()
            .collect();
        let mut ms: Vec<f64> = measured.iter().map(|s| s.ms).collect();
        let mut rss: Vec<f64> = measured.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
        let mut hwm: Vec<f64> = measured.iter().map(|s| s.hwm_kib as f64 / 1024.0).collect();
        rss.sort_by(f64::total_cmp);
        hwm.sort_by(f64::total_cmp);
        let figure = json!({
            "history_events": fixture.last_seq,
            "segments": fixture.meta["segments"],
            "snapshots": fixture.meta["snapshots"],
            "journal_bytes": fixture.meta["dir_bytes"],
            "starts": ms.len(),
            "exec_to_health": summary_ms(&mut ms),
            "rss_mib_at_health": { "min": rss.first(), "median": percentile(&rss, 50.0), "max": rss.last() },
            "peak_rss_mib_vmhwm": { "min": hwm.first(), "median": percentile(&hwm, 50.0), "max": hwm.last() },
            "events_added_by_the_starts": added,
        });
        eprintln!("startup/{}: {figure}", label(fixture.events));
        figures.insert(format!("startup_{}", label(fixture.events)), figure);
    }
    group.finish();
}

// ---- at_seq -------------------------------------------------------------------------------

fn bench_at_seq(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    fixtures: &[Fixture],
    figures: &mut serde_json::Map<String, Value>,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut group = c.benchmark_group("at_seq");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for fixture in fixtures {
        let run = run_dir(&format!("at-seq-{}", label(fixture.events)));
        clone_journal(&fixture.journal, &run.path().join("journal"));
        let config = history_daemon_config(run.path());
        let snapshots = {
            let (journal, _) =
                PoolJournal::open_read_only(history_config(&run.path().join("journal")))
                    .expect("open the clone");
            let mut seqs = journal.snapshot_seqs();
            seqs.sort_unstable();
            seqs
        };
        let last = fixture.last_seq;
        let k = AT_SEQ_SPREAD as u64;
        let mut ns: Vec<u64> = (1..=k).map(|i| (last * i / (k + 1)).max(1)).collect();
        // Just before a snapshot, spread over the snapshots (skipping the first: nothing
        // before it but the history's start).
        let before: Vec<u64> = snapshots.iter().skip(1).map(|s| s - 1).collect();
        let step = (before.len() / AT_SEQ_SPREAD).max(1);
        ns.extend(before.iter().step_by(step).take(AT_SEQ_SPREAD));
        // Interleave the two kinds, so that any number of queries has both.
        let (spread, gaps) = ns.split_at(AT_SEQ_SPREAD.min(ns.len()));
        let mut order: Vec<u64> = Vec::new();
        for i in 0..spread.len().max(gaps.len()) {
            order.extend(spread.get(i));
            order.extend(gaps.get(i));
        }
        let mut daemon = Daemon::spawn(run.path(), Some(&config));
        assert_eq!(daemon.wait_health(), 200);
        let base = daemon.base();
        let next = AtomicU64::new(0);
        let calls: Mutex<Vec<Vec<f64>>> = Mutex::default();
        group.bench_function(label(fixture.events), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    let mut call = Vec::with_capacity(iters as usize);
                    for _ in 0..iters {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let n = order[i % order.len()];
                        let started = Instant::now();
                        let answer = http
                            .get(format!("{base}/v2/pools?at_seq={n}"))
                            .send()
                            .await
                            .expect("at_seq");
                        let status = answer.status().as_u16();
                        let body: Value = answer.json().await.expect("JSON");
                        let took = started.elapsed();
                        total += took;
                        call.push(took.as_secs_f64() * 1e3);
                        assert_eq!(status, 200, "at_seq={n}: {body}");
                        if n >= fixture.preloaded {
                            assert_eq!(body.as_array().map(Vec::len), Some(POOLS), "at_seq={n}");
                        }
                    }
                    calls.lock().expect("lock").push(call);
                    total
                })
            })
        });
        let (rss, hwm) = rss_kib(daemon.pid());
        daemon.stop();
        let calls = calls.into_inner().expect("lock");
        let mut ms: Vec<f64> = calls
            .iter()
            .skip(calls.len().saturating_sub(10))
            .flatten()
            .copied()
            .collect();
        let figure = json!({
            "history_events": last,
            "snapshots": snapshots.len(),
            "distinct_n": order.len(),
            "latency": summary_ms(&mut ms),
            "daemon_rss_mib_after": rss as f64 / 1024.0,
            "daemon_peak_rss_mib": hwm as f64 / 1024.0,
        });
        eprintln!("at_seq/{}: {figure}", label(fixture.events));
        figures.insert(format!("at_seq_{}", label(fixture.events)), figure);
    }
    group.finish();
}

// ---- live traffic -------------------------------------------------------------------------

async fn live_rss(events: u64, clients: usize) -> Value {
    let run = run_dir("live");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut daemon = Daemon::spawn(run.path(), None);
    assert_eq!(daemon.wait_health(), 200);
    let base = daemon.base();
    let engine_port = free_port();
    let body = json!({"prepared": {
        "binary_path": ENGINE_SIM,
        "flags": ["--port", engine_port.to_string(), "--parallel", "256"],
        "host": "127.0.0.1", "port": engine_port, "model_path": "/m.gguf",
        "engine_version": "sim", "pool_id": "p0", "replica_id": "r0",
    }});
    let answer = http
        .post(format!("{base}/v2/pools/p0/preload"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("preload");
    assert_eq!(answer.status().as_u16(), 200, "preload failed");
    let seq_before = health_seq(&http, &base).await;
    let metrics_before = journal_metrics(&http, &base).await;
    let pid = daemon.pid();
    let rss_at_start = rss_kib(pid).0;

    let round_trips = events / 2;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let started = Instant::now();
    let sampler = {
        let (done, samples) = (done.clone(), samples.clone());
        tokio::spawn(async move {
            loop {
                let rss = rss_kib(pid).0;
                samples.lock().expect("lock").push((
                    started.elapsed().as_secs_f64(),
                    2 * done.load(Ordering::Acquire),
                    rss,
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, base, next, done) = (http.clone(), base.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::AcqRel) < round_trips {
                    let answer = http
                        .post(format!("{base}/v2/pools/p0/leases"))
                        .send()
                        .await
                        .expect("lease");
                    assert_eq!(answer.status().as_u16(), 201, "lease");
                    let lease: Value = answer.json().await.expect("lease JSON");
                    let id = lease["lease_id"].as_str().expect("a lease id").to_string();
                    let answer = http
                        .delete(format!("{base}/v2/pools/p0/leases/{id}"))
                        .send()
                        .await
                        .expect("release");
                    assert_eq!(answer.status().as_u16(), 200, "release");
                    done.fetch_add(1, Ordering::AcqRel);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    sampler.abort();
    let (rss_end, hwm_end) = rss_kib(pid);
    let seq_after = health_seq(&http, &base).await;
    let metrics_after = journal_metrics(&http, &base).await;
    let appends = metrics_after.1 - metrics_before.1;
    let events_per_append = (metrics_after.0 - metrics_before.0) / appends.max(1.0);
    assert!(
        seq_after - seq_before >= 2 * round_trips,
        "every lease event journaled: {seq_before} -> {seq_after}"
    );
    let journal_dir = run.path().join("journal");
    let segments = std::fs::read_dir(journal_dir.join("segments"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .count()
        })
        .unwrap_or(0);
    let figure_journal = json!({
        "dir_mib": mib(pool_journal::layout::dir_bytes(&journal_dir)),
        "segments": segments,
        "segments_mib": mib(pool_journal::layout::dir_bytes(&journal_dir.join("segments"))),
        "live_mib": mib(pool_journal::layout::dir_bytes(&journal_dir.join("live"))),
        "snapshots_mib": mib(pool_journal::layout::dir_bytes(&journal_dir.join("snapshots"))),
    });
    let _ = http.delete(format!("{base}/v2/pools/p0")).send().await;
    daemon.stop();

    let samples = samples.lock().expect("lock").clone();
    let quarter = samples
        .iter()
        .find(|(_, made, _)| *made >= events / 4)
        .map(|s| s.2)
        .unwrap_or(rss_at_start);
    let after_quarter_max = samples
        .iter()
        .filter(|(_, made, _)| *made >= events / 4)
        .map(|s| s.2)
        .chain([rss_end])
        .max()
        .unwrap_or(rss_end);
    let series: Vec<Value> = samples
        .iter()
        .step_by((samples.len() / 20).max(1))
        .map(|(t, made, rss)| json!([(t * 10.0).round() / 10.0, made, rss / 1024]))
        .collect();
    json!({
        "lease_events": 2 * round_trips,
        "clients": clients,
        "seconds": elapsed,
        "lease_events_per_s": 2.0 * round_trips as f64 / elapsed,
        "journal_appends": appends,
        "events_per_append": events_per_append,
        "rss_mib_after_preload": rss_at_start as f64 / 1024.0,
        "rss_mib_at_first_quarter": quarter as f64 / 1024.0,
        "rss_mib_max_after_first_quarter": after_quarter_max as f64 / 1024.0,
        "rss_mib_at_end": rss_end as f64 / 1024.0,
        "peak_rss_mib_vmhwm": hwm_end as f64 / 1024.0,
        "max_after_quarter_over_quarter": after_quarter_max as f64 / quarter.max(1) as f64,
        "end_over_quarter": rss_end as f64 / quarter.max(1) as f64,
        "journal": figure_journal,
        "samples_every_250ms": samples.len(),
        "series_s_events_rss_mib": series,
    })
}

/// `journal_events_total` and `journal_append_duration_seconds_count` from `GET /metrics`.
async fn journal_metrics(http: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    (
        value("journal_events_total "),
        value("journal_append_duration_seconds_count "),
    )
}

async fn health_seq(http: &reqwest::Client, base: &str) -> u64 {
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON");
    health["journal_seq"].as_u64().expect("journal_seq")
}

// ---- one simulated day --------------------------------------------------------------------

fn simulated_day(events: u64) -> Value {
    let run = run_dir("day");
    let dir = run.path().join("journal");
    let clock = Arc::new(AtomicU64::new(DAY_START_MS));
    let mut config = JournalConfig::new(&dir);
    let clock_read = clock.clone();
    config.clock = JournalClock(Arc::new(move || clock_read.load(Ordering::Acquire)));
    let defaults = (
        config.retain_bytes,
        config.retain_ms,
        config.segment_records,
    );
    let (journal, _) = PoolJournal::open(config).expect("open");
    let mut first_drop: Option<(u64, f64)> = None;
    let mut worst_dir = 0u64;
    let mut checks = 0u64;
    let written = write_history(&journal, events, DAY_START_MS, Some(&clock), |journal| {
        if first_drop.is_none() && journal.first_seq() > 1 {
            let hours = (clock.load(Ordering::Acquire) - DAY_START_MS) as f64 / 3.6e6;
            first_drop = Some((journal.last_seq(), hours));
        }
        checks += 1;
        if checks % 64 == 0 {
            worst_dir = worst_dir.max(pool_journal::layout::dir_bytes(&dir));
        }
    });
    // Retention as the maintenance thread would run it next, at the day's end.
    journal.apply_retention_now().expect("retention");
    let usage = journal.usage();
    let time_travel_from = journal.time_travel_from();
    let snapshots_kept = journal.snapshot_seqs().len();
    journal.close().expect("close");
    drop(journal);
    let segments = pool_journal::layout::dir_bytes(&dir.join("segments"));
    let live = pool_journal::layout::dir_bytes(&dir.join("live"));
    let witness = std::fs::metadata(dir.join("witness"))
        .map(|m| m.len())
        .unwrap_or(0);
    let snapshots = pool_journal::layout::dir_bytes(&dir.join("snapshots"));
    let total = pool_journal::layout::dir_bytes(&dir);
    worst_dir = worst_dir.max(total);
    let retained = usage.last_seq + 1 - usage.first_seq;
    let hours = (events * EVENT_STEP_MS) as f64 / 3.6e6;
    json!({
        "events": written.last_seq,
        "simulated_hours": hours,
        "write_s": written.seconds,
        "commit_records": COMMIT_RECORDS,
        "writer_rss_mib": written.writer_rss_mib,
        "events_per_s_written": written.last_seq as f64 / written.seconds,
        "retain_bytes": defaults.0,
        "retain_ms": defaults.1,
        "segment_records": defaults.2,
        "dir_bytes_at_end": total,
        "dir_mib_at_end": mib(total),
        "dir_mib_largest_seen": mib(worst_dir),
        "segments_bytes": segments,
        "live_bytes": live,
        "witness_bytes": witness,
        "snapshot_bytes": snapshots,
        "snapshots_kept": snapshots_kept,
        "segments": usage.segments,
        "first_seq": usage.first_seq,
        "last_seq": usage.last_seq,
        "expired_through": usage.expired_through,
        "time_travel_from": time_travel_from,
        "retained_events": retained,
        "bytes_per_lease_event": (segments + live + witness) as f64 / retained as f64,
        "bytes_per_lease_event_with_snapshots": (segments + live + witness + snapshots) as f64 / retained as f64,
        "first_retention_drop": first_drop.map(|(seq, h)| json!({"at_seq": seq, "simulated_hour": h})),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let measured =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u64> = std::env::var("POOL_BENCH_HISTORY_SIZES")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|n| {
                    n.replace('_', "")
                        .trim()
                        .parse()
                        .expect("POOL_BENCH_HISTORY_SIZES")
                })
                .collect()
        })
        .unwrap_or_else(|| {
            if measured {
                vec![100_000, 1_000_000, 10_000_000]
            } else {
                vec![2_000, 20_000]
            }
        });
    let parts: Vec<String> = std::env::var("POOL_BENCH_HISTORY_PARTS")
        .unwrap_or_else(|_| "startup,at_seq,live,day".into())
        .split(',')
        .map(|p| p.trim().to_string())
        .collect();
    let wants = |part: &str| parts.iter().any(|p| p == part);
    let mut figures = serde_json::Map::new();
    figures.insert("daemon".into(), json!(daemon_exe()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut criterion = Criterion::default().configure_from_args();
    if wants("startup") || wants("at_seq") || wants("fixtures") {
        let fixtures: Vec<Fixture> = sizes.iter().map(|n| fixture(*n)).collect();
        for f in &fixtures {
            figures.insert(format!("fixture_{}", label(f.events)), f.meta.clone());
        }
        if wants("startup") {
            bench_startup(&mut criterion, &fixtures, &mut figures);
        }
        if wants("at_seq") {
            bench_at_seq(&mut criterion, &rt, &fixtures, &mut figures);
        }
    }
    criterion.final_summary();
    if wants("live") {
        let events = env_u64(
            "POOL_BENCH_LIVE_EVENTS",
            if measured { 1_000_000 } else { 2_000 },
        );
        let clients = env_u64("POOL_BENCH_LIVE_CLIENTS", 64) as usize;
        let figure = rt.block_on(live_rss(events, clients));
        eprintln!("live: {figure}");
        figures.insert("live".into(), figure);
    }
    if wants("day") {
        let events = env_u64(
            "POOL_BENCH_DAY_EVENTS",
            if measured { 8_640_000 } else { 20_000 },
        );
        let figure = simulated_day(events);
        eprintln!("day: {figure}");
        figures.insert("day".into(), figure);
    }
    if !measured {
        return;
    }
    figures.insert(
        "args".into(),
        json!(args.iter().skip(1).collect::<Vec<_>>()),
    );
    let path = target_dir().join("bench-data").join("history-figures.json");
    let _ = std::fs::create_dir_all(path.parent().expect("parent"));
    let text = serde_json::to_string_pretty(&Value::Object(figures)).expect("json");
    match std::fs::write(&path, format!("{text}\n")) {
        Ok(()) => eprintln!("figures written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
