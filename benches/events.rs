//! The live event stream and time travel, against `pool-managerd serve --dev` (the real
//! binary, a child of the benchmark):
//!
//! - *SSE fan-out*: S subscribers follow `GET /v2/events` (Accept: text/event-stream) while
//!   16 clients make E events with lease round trips (one engine-sim pool); figures: the
//!   events per second delivered over all subscribers (S x E over the time from the first
//!   lease to the last subscriber's last event), the rate the events were committed at, the
//!   slowest subscriber's lag behind the last commit (ms), and the largest lag in events any
//!   subscriber had at a sample (every 10 ms) while it ran. Then S new subscribers read the
//!   same E events, already journaled, from `?since=` (catch-up: the stream's own rate).
//! - *`?at_seq=N`*: a journal of H events (16 pools preloaded by the scripted core, then
//!   lease pairs, then the pools stopped; appended in commits of 32 events, about the
//!   daemon's own), with a snapshot every 10,000 events as the daemon
//!   takes them (`projection::save_snapshot`; the journal keeps up to `SNAPSHOTS_KEPT_MAX`,
//!   so all of them here), is served by a daemon; figures: the latency of `GET
//!   /v2/pools?at_seq=N` for N spread over the history (p50, p95, max), each a replay from
//!   the nearest snapshot at or before N.
//!
//! `cargo bench --bench events`: S = 100, E = 10,000, H = 1,000,000; `cargo test --bench
//! events` (CI): S = 10, E = 1,000, H = 30,000. `POOL_BENCH_SUBSCRIBERS`,
//! `POOL_BENCH_FANOUT_EVENTS` and `POOL_BENCH_HISTORY` override them.

#[path = "support/common.rs"]
mod common;

use common::free_port;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_journal::{Draft, JournalConfig};
use pool_managerd::projection;
use pool_managerd::schema::PoolJournal;
use pool_managerd::script::{cpu_engine, Scripted};
use serde_json::{json, Value};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");
/// Events between snapshots (`[journal] snapshot_every`, its default).
const SNAPSHOT_EVERY: u64 = 10_000;
/// Events per append of the time-travel history: about what the daemon's own group commits
/// hold under lease traffic (`benches/history.rs` measures about 25).
const COMMIT_RECORDS: usize = 32;
/// Pools of the time-travel history.
const HISTORY_POOLS: usize = 16;
/// Concurrent lease clients of the fan-out.
const PRODUCERS: usize = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Daemon {
    child: Child,
    base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_daemon(http: &reqwest::Client, dir: &std::path::Path) -> Daemon {
    let port = free_port();
    let child = Command::new(DAEMON)
        .args(["serve", "--dev", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--runtime-dir")
        .arg(dir.join("runtime"))
        .arg("--journal-dir")
        .arg(dir.join("journal"))
        .env("RUST_LOG", "warn")
        .env_remove("LLORCH_API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pool-managerd serve");
    let daemon = Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{}/health", daemon.base)).send().await {
            if r.status().is_success() {
                return daemon;
            }
        }
        assert!(Instant::now() < deadline, "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn journal_seq(http: &reqwest::Client, base: &str) -> u64 {
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

/// One subscriber: follows the stream from `from` until it has `events` events; publishes
/// its last seq in `last`; returns when it got the last one.
async fn subscribe(
    http: reqwest::Client,
    base: String,
    from: u64,
    events: u64,
    last: Arc<AtomicU64>,
) -> Instant {
    let mut response = http
        .get(format!("{base}/v2/events?since={from}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("subscribe");
    assert_eq!(response.status().as_u16(), 200);
    let target = from + events - 1;
    let mut buffer = String::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .expect("reading the stream")
            .expect("the stream ended early");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            assert!(
                !frame.starts_with("event: dropped") && !frame.contains("\nevent: dropped"),
                "a subscriber was dropped: {frame}"
            );
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .and_then(|id| id.parse::<u64>().ok());
            if let Some(id) = id {
                last.store(id, Ordering::Release);
                if id >= target {
                    return Instant::now();
                }
            }
        }
    }
}

async fn fan_out(http: &reqwest::Client, subscribers: usize, events: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = start_daemon(http, dir.path()).await;
    let port = free_port();
    let body = json!({"prepared": {
        "binary_path": ENGINE_SIM, "flags": ["--port", port.to_string(), "--parallel", "64"],
        "host": "127.0.0.1", "port": port, "model_path": "/m.gguf",
        "engine_version": "sim", "pool_id": "p0", "replica_id": "r0",
    }});
    let answer = http
        .post(format!("{}/v2/pools/p0/preload", daemon.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("preload");
    assert_eq!(answer.status().as_u16(), 200, "preload failed");
    let from = journal_seq(http, &daemon.base).await + 1;

    let lasts: Vec<Arc<AtomicU64>> = (0..subscribers)
        .map(|_| Arc::new(AtomicU64::new(from - 1)))
        .collect();
    let subs: Vec<_> = lasts
        .iter()
        .map(|last| {
            tokio::spawn(subscribe(
                http.clone(),
                daemon.base.clone(),
                from,
                events,
                last.clone(),
            ))
        })
        .collect();
    // Every subscriber is connected (its producer reads from `from`) before the events come:
    // a short pause, then the first lease.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The sampler: the largest lag (in events) behind the journal any subscriber had.
    let committed = Arc::new(AtomicU64::new(from - 1));
    let max_lag = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (lasts, committed, max_lag) = (lasts.clone(), committed.clone(), max_lag.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let head = committed.load(Ordering::Acquire);
                for last in &lasts {
                    let lag = head.saturating_sub(last.load(Ordering::Acquire));
                    max_lag.fetch_max(lag, Ordering::AcqRel);
                }
            }
        })
    };

    let round_trips = events / 2;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (http, base, next) = (http.clone(), daemon.base.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Instant::now();
                while next.fetch_add(1, Ordering::AcqRel) < round_trips {
                    let lease: Value = http
                        .post(format!("{base}/v2/pools/p0/leases"))
                        .send()
                        .await
                        .expect("lease")
                        .json()
                        .await
                        .expect("lease JSON");
                    let id = lease["lease_id"].as_str().expect("a lease id").to_string();
                    let answer = http
                        .delete(format!("{base}/v2/pools/p0/leases/{id}"))
                        .send()
                        .await
                        .expect("release");
                    assert_eq!(answer.status().as_u16(), 200);
                    done = Instant::now();
                }
                done
            })
        })
        .collect();
    // The head, as precisely as the API tells it, while the producers run.
    let head_watch = {
        let (http, base, committed) = (http.clone(), daemon.base.clone(), committed.clone());
        tokio::spawn(async move {
            loop {
                let seq = journal_seq(&http, &base).await;
                committed.store(seq, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut last_commit = started;
    for producer in producers {
        last_commit = last_commit.max(producer.await.expect("a producer"));
    }
    let produced = last_commit.duration_since(started);
    let mut ends = Vec::new();
    for sub in subs {
        ends.push(sub.await.expect("a subscriber"));
    }
    head_watch.abort();
    sampler.abort();
    let slowest = ends.iter().max().copied().expect("a subscriber");
    let total = slowest.duration_since(started);
    let delivered = subscribers as f64 * events as f64;
    println!(
        "SSE fan-out, live: {subscribers} subscribers x {events} events: {:.0} events/s \
         delivered ({:.2} s from the first lease to the slowest subscriber's last event); \
         events committed at {:.0}/s ({:.2} s, {PRODUCERS} lease clients); the slowest \
         subscriber got the last event {:.1} ms after its commit was answered; largest lag \
         seen {} events",
        delivered / total.as_secs_f64(),
        total.as_secs_f64(),
        events as f64 / produced.as_secs_f64(),
        produced.as_secs_f64(),
        slowest.saturating_duration_since(last_commit).as_secs_f64() * 1e3,
        max_lag.load(Ordering::Acquire),
    );
    // The same events again, already journaled: every subscriber reads them from `since`
    // (a reconnect after a long outage); the rate the stream itself can deliver.
    let started = Instant::now();
    let subs: Vec<_> = (0..subscribers)
        .map(|_| {
            tokio::spawn(subscribe(
                http.clone(),
                daemon.base.clone(),
                from,
                events,
                Arc::new(AtomicU64::new(0)),
            ))
        })
        .collect();
    let mut slowest = started;
    for sub in subs {
        slowest = slowest.max(sub.await.expect("a subscriber"));
    }
    let total = slowest.duration_since(started);
    println!(
        "SSE fan-out, catch-up: {subscribers} subscribers x the same {events} journaled events \
         from ?since=: {:.0} events/s delivered ({:.2} s to the slowest subscriber's last)",
        delivered / total.as_secs_f64(),
        total.as_secs_f64(),
    );
    let _ = http
        .delete(format!("{}/v2/pools/p0", daemon.base))
        .send()
        .await;
    drop(daemon);
}

/// Writes the time-travel history into `journal_dir`: 16 pools preloaded, `events` in all
/// (lease pairs round robin), the pools stopped at the end, a snapshot every
/// [`SNAPSHOT_EVERY`]. Returns the last seq and the snapshots' seqs.
///
/// The scripted clock starts an hour before now: the daemon's retention by age (30 days by
/// default, on the system clock) would drop an older history once a snapshot allows it, and
/// `?at_seq` before it would answer `HISTORY_EXPIRED`.
fn grow_history(journal_dir: &std::path::Path, events: u64) -> (u64, Vec<u64>) {
    let (journal, _) = PoolJournal::open(JournalConfig::new(journal_dir)).expect("journal");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("the clock is after 1970");
    let mut script = Scripted::new(now_ms - 3_600_000, 7);
    let pools: Vec<String> = (0..HISTORY_POOLS).map(|i| format!("pool-{i:02}")).collect();
    for (i, pool) in pools.iter().enumerate() {
        let engine = cpu_engine(pool, 8_000 + i as u16, "/models/m.gguf", Some(8));
        script.preload(pool, engine).expect("preload");
        script.spawn_engine(pool).expect("spawn");
        script.advance(150);
        script.pass_health(pool, 2_000, None).expect("health");
    }
    let mut snapshots = Vec::new();
    let mut next_snapshot = SNAPSHOT_EVERY;
    let mut pending: Vec<Draft<pool_managerd::core::Event>> = Vec::new();
    let flush = |script: &Scripted,
                 pending: &mut Vec<Draft<pool_managerd::core::Event>>,
                 snapshots: &mut Vec<u64>,
                 next_snapshot: &mut u64| {
        if !pending.is_empty() {
            journal
                .append_blocking(std::mem::take(pending))
                .expect("append");
        }
        if script.state().last_seq() >= *next_snapshot {
            projection::save_snapshot(&journal, script.state()).expect("snapshot");
            snapshots.push(script.state().last_seq());
            *next_snapshot += SNAPSHOT_EVERY;
        }
    };
    let mut i = 0u64;
    while script.state().last_seq() + 2 * HISTORY_POOLS as u64 <= events {
        let pool = &pools[i as usize % HISTORY_POOLS];
        let lease = format!("lease-{i}");
        script.acquire_lease(pool, &lease).expect("lease");
        script.release_lease(pool, &lease).expect("release");
        i += 1;
        pending.extend(script.take_envelopes().into_iter().map(|e| Draft {
            ts_ms: e.ts_ms,
            pool_id: e.pool_id,
            cause: e.cause,
            event: e.event,
        }));
        if pending.len() >= COMMIT_RECORDS || script.state().last_seq() >= next_snapshot {
            flush(&script, &mut pending, &mut snapshots, &mut next_snapshot);
        }
    }
    for pool in &pools {
        script.stop(pool).expect("stop");
        script.finish_stop(pool, true).expect("stopped");
    }
    pending.extend(script.take_envelopes().into_iter().map(|e| Draft {
        ts_ms: e.ts_ms,
        pool_id: e.pool_id,
        cause: e.cause,
        event: e.event,
    }));
    flush(&script, &mut pending, &mut snapshots, &mut next_snapshot);
    let last = journal.last_seq();
    journal.close().expect("close");
    (last, snapshots)
}

async fn time_travel(http: &reqwest::Client, events: u64, samples: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal_dir = dir.path().join("journal");
    let grown = Instant::now();
    let (last, snapshots) = tokio::task::spawn_blocking(move || grow_history(&journal_dir, events))
        .await
        .expect("growing the history");
    eprintln!(
        "history: {last} events, {} snapshots, written in {:.1} s",
        snapshots.len(),
        grown.elapsed().as_secs_f64()
    );
    let daemon = start_daemon(http, dir.path()).await;
    // N spread over the history, each just before the next snapshot (the most events to
    // replay: a whole gap), plus evenly spaced ones.
    let mut ns: Vec<u64> = (1..=samples as u64)
        .map(|k| (last * k / (samples as u64 + 1)).max(1))
        .collect();
    ns.extend(snapshots.iter().take(samples).map(|s| s - 1));
    // Warm up (the page cache, the connection).
    for n in ns.iter().take(3) {
        let _ = http
            .get(format!("{}/v2/pools?at_seq={n}", daemon.base))
            .send()
            .await;
    }
    let mut ms: Vec<f64> = Vec::new();
    for n in &ns {
        let started = Instant::now();
        let answer = http
            .get(format!("{}/v2/pools?at_seq={n}", daemon.base))
            .send()
            .await
            .expect("at_seq");
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.expect("JSON");
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "at_seq={n}: {body}");
        assert_eq!(
            body.as_array().map(Vec::len),
            Some(HISTORY_POOLS),
            "at_seq={n}"
        );
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "GET /v2/pools?at_seq=N on a {last}-event journal with a snapshot every {SNAPSHOT_EVERY} \
         ({} kept): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} queries (half of them \
         just before a snapshot: a whole gap replayed)",
        snapshots.len().min(pool_journal::SNAPSHOTS_KEPT_MAX),
        pct(0.5),
        pct(0.95),
        ms[ms.len() - 1],
        ms.len()
    );
    drop(daemon);
}

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let subscribers = env_or("POOL_BENCH_SUBSCRIBERS", if measured { 100 } else { 10 }) as usize;
    let events = env_or(
        "POOL_BENCH_FANOUT_EVENTS",
        if measured { 10_000 } else { 1_000 },
    );
    let history = env_or(
        "POOL_BENCH_HISTORY",
        if measured { 1_000_000 } else { 30_000 },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    runtime.block_on(fan_out(&http, subscribers, events));
    runtime.block_on(time_travel(&http, history, if measured { 50 } else { 5 }));
}
