//! Daemon restart with running engines: `pool-managerd serve` (the real binary, a child of the
//! benchmark) with N ready engine-sim pools is killed with SIGKILL and started again; the figure
//! is the time from the new exec to every pool reading `ready: true` in `GET /v2/pools`, with
//! the same pids (adoption: no engine is restarted).
//!
//! The same again over a long history: while the daemon is down, the journal is grown to
//! `POOL_BENCH_RESTART_HISTORY` events (default 1,000,000) of lease traffic (LeaseGranted /
//! LeaseReleased pairs spread over the pools, appended with the journal's own writer in
//! commits of 32 events, about the daemon's own), then
//! the daemon starts over it, in two cases:
//! - *with a snapshot*, as the daemon keeps them (every `snapshot_every` = 10,000 events: the
//!   newest one covers the history up to the last multiple of 10,000, and start-up replays
//!   only the tail after it);
//! - *without*, as after a deleted or stale snapshot: a full replay of every event.
//!
//! `cargo bench --bench restart` runs N = 1, 16, 64 (3 rounds each), then the history cases
//! with N = 16 (1 round each: growing the journal takes far longer than the restart);
//! `cargo test --bench restart` (CI) runs N = 2 once and the history cases with 20,000
//! events. `POOL_BENCH_RESTART_POOLS=1,16` overrides the list of N;
//! `POOL_BENCH_RESTART_KEEP=1` keeps each round's directory (its path is printed).

#[path = "support/common.rs"]
mod common;

use common::free_port;
use common::serve::{Serve, ServeCommand};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pool_journal::{Draft, JournalConfig};
use pool_managerd::core::{Event, LeaseId};
use pool_managerd::projection::{self, ReplayLimit};
use pool_managerd::schema::PoolJournal;
use serde_json::{json, Value};

/// Events between the daemon's snapshots (`[journal] snapshot_every`, its default).
const SNAPSHOT_EVERY: u64 = 10_000;
/// Events per append of the history: about what the daemon's own group commits hold under
/// lease traffic (`benches/history.rs` measures about 25), rather than the journal's limit
/// (1,024).
const HISTORY_BATCH: usize = 32;

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

struct Daemon {
    serve: Serve,
    base: String,
}

fn start_daemon(dir: &std::path::Path, port: u16) -> Daemon {
    let serve = ServeCommand::on_port(DAEMON, dir, port)
        .dev()
        .env("RUST_LOG", "warn")
        .spawn();
    let base = serve.base();
    Daemon { serve, base }
}

async fn pools(http: &reqwest::Client, base: &str) -> Option<Vec<Value>> {
    let response = http.get(format!("{base}/v2/pools")).send().await.ok()?;
    response.json::<Vec<Value>>().await.ok()
}

/// The history grown while the daemon is down, and whether the daemon left a snapshot of it.
#[derive(Clone, Copy)]
struct History {
    events: u64,
    snapshot: bool,
}

/// Appends `history.events` lease events (granted/released pairs, round robin over the
/// pools) to the journal of the stopped daemon; with `history.snapshot`, stores the snapshot
/// the daemon would have taken last (at the newest multiple of [`SNAPSHOT_EVERY`]). Returns
/// the journal's last seq.
fn grow_history(journal_dir: &std::path::Path, pools: usize, history: History) -> u64 {
    let (journal, _) =
        PoolJournal::open(JournalConfig::new(journal_dir)).expect("the journal of the daemon");
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let pairs = history.events / 2;
    let mut batch = Vec::with_capacity(HISTORY_BATCH);
    for i in 0..pairs {
        let pool = format!("p{}", i as usize % pools.max(1));
        let lease_id = LeaseId::new(&format!("history-{i}")).expect("a lease id");
        batch.push(Draft {
            ts_ms,
            pool_id: Some(pool.clone()),
            cause: None,
            event: Event::LeaseGranted {
                lease_id: lease_id.clone(),
            },
        });
        batch.push(Draft {
            ts_ms,
            pool_id: Some(pool),
            cause: None,
            event: Event::LeaseReleased { lease_id },
        });
        if batch.len() + 2 > HISTORY_BATCH {
            journal
                .append_blocking(std::mem::take(&mut batch))
                .expect("appending the history");
        }
    }
    if !batch.is_empty() {
        journal
            .append_blocking(batch)
            .expect("appending the history");
    }
    let last = journal.last_seq();
    if history.snapshot {
        let covered = last - last % SNAPSHOT_EVERY;
        let limit = ReplayLimit {
            until_seq: Some(covered),
            until_ts_ms: None,
        };
        let replayed = projection::replay(&journal, limit).expect("replaying the history");
        projection::save_snapshot(&journal, &replayed.state).expect("saving the snapshot");
    }
    // Without: the daemon's own run before the history was far shorter than SNAPSHOT_EVERY
    // events, so it stored none, and the start-up replays every event.
    journal.close().expect("closing the journal");
    last
}

/// One round: N ready pools, SIGKILL, exec again; the ms from exec to all ready again.
async fn round(http: &reqwest::Client, n: usize) -> f64 {
    round_with(http, n, None).await
}

/// [`round`], with `history` appended to the journal while the daemon is down.
async fn round_with(http: &reqwest::Client, n: usize, history: Option<History>) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("POOL_BENCH_RESTART_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("kept: {}", kept.display());
        return round_in(http, n, history, &kept).await;
    }
    round_in(http, n, history, dir.path()).await
}

/// [`round_with`] in `dir`.
async fn round_in(
    http: &reqwest::Client,
    n: usize,
    history: Option<History>,
    dir: &std::path::Path,
) -> f64 {
    let port = free_port();
    let mut daemon = start_daemon(dir, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pools(http, &daemon.base).await.is_none() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ports = common::free_ports(n);
    let preloads = (0..n).map(|i| {
        let engine_port = ports[i];
        let body = json!({"prepared": {
            "binary_path": ENGINE_SIM, "flags": ["--port", engine_port.to_string()],
            "host": "127.0.0.1", "port": engine_port, "model_path": "/m.gguf",
            "engine_version": "sim", "pool_id": format!("p{i}"), "replica_id": "r0",
        }});
        let request = http
            .post(format!("{}/v2/pools/p{i}/preload", daemon.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        }
    });
    for answer in futures::future::join_all(preloads).await {
        let (status, body) = answer.expect("a preload answer");
        assert_eq!(status, 200, "a preload failed: {body}");
    }
    let before: BTreeMap<String, Value> = pools(http, &daemon.base)
        .await
        .expect("pools")
        .into_iter()
        .map(|p| {
            (
                p["pool_id"].as_str().unwrap_or("").to_string(),
                p["pid"].clone(),
            )
        })
        .collect();
    daemon.serve.guard.0.kill().expect("SIGKILL");
    let _ = daemon.serve.guard.0.wait();
    if let Some(history) = history {
        let journal_dir = dir.join("journal");
        tokio::task::spawn_blocking(move || grow_history(&journal_dir, n, history))
            .await
            .expect("growing the history");
    }

    let exec = Instant::now();
    let mut daemon = start_daemon(dir, port);
    let elapsed = loop {
        if let Some(after) = pools(http, &daemon.base).await {
            let all_ready = after.len() == n
                && after.iter().all(|p| {
                    p["ready"] == true
                        && before.get(p["pool_id"].as_str().unwrap_or("")) == Some(&p["pid"])
                });
            if all_ready {
                break exec.elapsed();
            }
        }
        assert!(
            exec.elapsed() < Duration::from_secs(60),
            "pools not all ready again with the same pids"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // Clean up: every engine stopped with its pool, then the daemon.
    let removals = (0..n).map(|i| http.delete(format!("{}/v2/pools/p{i}", daemon.base)).send());
    for removal in futures::future::join_all(removals).await {
        assert_eq!(removal.map(|r| r.status().as_u16()).ok(), Some(200));
    }
    let _ = daemon.serve.guard.0.kill();
    let _ = daemon.serve.guard.0.wait();
    elapsed.as_secs_f64() * 1e3
}

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let sizes: Vec<usize> = std::env::var("POOL_BENCH_RESTART_POOLS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| if measured { vec![1, 16, 64] } else { vec![2] });
    let rounds = if measured { 3 } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for n in sizes {
        let mut samples: Vec<f64> = (0..rounds)
            .map(|_| runtime.block_on(round(&http, n)))
            .collect();
        samples.sort_by(f64::total_cmp);
        println!(
            "restart with {n} ready engines: exec to all ready again (same pids) in {:.0} ms median of {rounds} (min {:.0}, max {:.0})",
            samples[samples.len() / 2],
            samples[0],
            samples[samples.len() - 1]
        );
    }
    let events: u64 = std::env::var("POOL_BENCH_RESTART_HISTORY")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(if measured { 1_000_000 } else { 20_000 });
    let n = if measured { 16 } else { 2 };
    for snapshot in [true, false] {
        let history = History { events, snapshot };
        let ms = runtime.block_on(round_with(&http, n, Some(history)));
        let how = if snapshot {
            "from its newest snapshot"
        } else {
            "no snapshot: full replay"
        };
        println!(
            "restart with {n} ready engines over a journal of {events} more events ({how}): exec to all ready again (same pids) in {ms:.0} ms"
        );
    }
}
