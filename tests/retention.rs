//! A long run: one million lease events flow through a daemon (its node, in this process,
//! with 64 concurrent callers: the group commit batches them as an orchestrator's traffic
//! would). Retention keeps the journal directory within `retain_bytes` plus the live store
//! (and the newest segment and the snapshots), the history stays readable from the earliest
//! retained seq, older seqs answer `HISTORY_EXPIRED`, a pool whose preload was dropped is still
//! explained (from the oldest snapshot), and the process's resident memory stays flat (within
//! 10 % between the first quarter and the end).
//!
//! `POOL_TEST_LEASE_EVENTS` overrides the number of events (default 1,000,000).

#[path = "support/daemon_harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{engine_sim_preload, Harness};
use pool_core::{Command, PoolId};

const RETAIN_BYTES: u64 = 4 * 1024 * 1024;
const SEGMENT_RECORDS: u64 = 4_096;
const CALLERS: usize = 64;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The biggest file in `dir`.
fn largest_file(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_journal_and_memory_stays_flat_over_a_million_lease_events() {
    let events: u64 = std::env::var("POOL_TEST_LEASE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut h = Harness::start_with(|c| {
        c.journal.retain_bytes = RETAIN_BYTES;
        c.journal.segment_records = SEGMENT_RECORDS;
        c.journal.snapshot_every = 2_000;
    })
    .await;
    h.wait = Duration::from_secs(30);
    let body = engine_sim_preload("p1", None, &["--parallel", "256"]);
    let (status, answer) = h.post("/v2/pools/p1/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let node = h.daemon.as_ref().unwrap().handle();
    let journal_dir = h.config.journal_dir.clone();
    let started = Instant::now();
    let per_caller = events / 2 / CALLERS as u64;
    let quarter = per_caller / 4;
    let (rss_tx, mut rss_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let node = node.clone();
        let rss_tx = rss_tx.clone();
        tasks.push(tokio::spawn(async move {
            let pool = PoolId::new("p1").unwrap();
            for i in 0..per_caller {
                let (lease, _) = node.acquire_lease(pool.clone()).await.expect("lease");
                node.submit(Command::ReleaseLease {
                    pool_id: pool.clone(),
                    lease_id: lease,
                })
                .await
                .expect("release");
                if caller == 0 && i % quarter.max(1) == 0 {
                    let _ = rss_tx.send((i / quarter.max(1), rss_kib()));
                }
            }
        }));
    }
    drop(rss_tx);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let journal_dir = journal_dir.clone();
        tokio::spawn(async move {
            // (sealed history bytes, live store bytes then, largest segment then), at its worst.
            let mut worst = (0u64, 0u64, 0u64);
            loop {
                let live = dir_bytes(&journal_dir.join("live"));
                let history = dir_bytes(&journal_dir.join("segments"))
                    + dir_bytes(&journal_dir.join("snapshots"));
                let newest = largest_file(&journal_dir.join("segments"));
                if history > worst.0 {
                    worst = (history, live, newest);
                }
                tokio::select! {
                    _ = &mut stop_rx => return worst,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    let mut samples = Vec::new();
    while let Some(sample) = rss_rx.recv().await {
        samples.push(sample);
    }
    samples.push((4, rss_kib()));
    let _ = stop_tx.send(());
    let (history_max, live_at_max, segment_max) = watcher.await.unwrap();
    let elapsed = started.elapsed();
    let report = node.journal_report();
    eprintln!(
        "{events} lease events in {elapsed:?}; journal first seq {}, last {}; segments {} ({} bytes); \
         worst sealed history {history_max} bytes (live store then {live_at_max}, newest segment \
         {segment_max}); RSS samples (quarter, KiB): {samples:?}",
        report.usage.first_seq, report.usage.last_seq, report.usage.segments, report.usage.segment_bytes
    );
    assert!(history_max > 0, "the journal sealed segments");
    assert!(
        report.usage.last_seq >= per_caller * CALLERS as u64 * 2,
        "every lease event was journaled: {:?}",
        report.usage
    );
    // Retention: the sealed history (segments and snapshots) stays within retain_bytes, plus the
    // newest segment (sealed before the retention pass that follows it) and the snapshots kept.
    assert!(
        history_max <= RETAIN_BYTES + 2 * segment_max + 512 * 1024,
        "sealed history {history_max} bytes with retain_bytes {RETAIN_BYTES}"
    );
    assert!(
        report.usage.first_seq > 1,
        "retention dropped the oldest seqs: {:?}",
        report.usage
    );
    // What retention dropped answers HISTORY_EXPIRED; what it keeps reads back whole.
    let (status, body) = h.get("/v2/events?since=1&limit=10").await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "HISTORY_EXPIRED");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("starts at seq {}", report.usage.first_seq)),
        "{body}"
    );
    let (status, body) = h
        .get(&format!(
            "/v2/events?since={}&limit=10",
            report.usage.first_seq
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.get("/v2/pools?at_seq=5").await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "HISTORY_EXPIRED", "{body}");
    // The command line, beside the running daemon: the same words, a non-zero exit.
    let bin = env!("CARGO_BIN_EXE_pool-managerd");
    let dir = journal_dir.to_str().unwrap();
    let replay = std::process::Command::new(bin)
        .args(["replay", "--journal-dir", dir, "--until-seq", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(!replay.status.success(), "{stderr}");
    assert!(stderr.contains("no longer retained"), "{stderr}");
    let stats = std::process::Command::new(bin)
        .args(["journal", "stats", "--journal-dir", dir])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "retained:     from seq {}",
            report.usage.first_seq
        )),
        "{stdout}"
    );
    assert!(stdout.contains("segments:"), "{stdout}");
    // Memory: flat from the first quarter to the end.
    let first = samples.iter().find(|(q, _)| *q == 1).map(|s| s.1).unwrap();
    let last = samples.iter().map(|s| s.1).max().unwrap();
    assert!(
        last as f64 <= first as f64 * 1.10,
        "RSS grew from {first} KiB (first quarter) to {last} KiB: {samples:?}"
    );
    // The pool's explanation, although retention dropped its preload: the oldest snapshot
    // seeds it; a seq before what is kept answers HISTORY_EXPIRED; offline the same.
    let (status, body) = h.get("/v2/pools/p1/explain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "ready", "{body}");
    let (status, body) = h.get("/v2/pools/p1/explain?at_seq=5").await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "HISTORY_EXPIRED", "{body}");
    let explain = std::process::Command::new(bin)
        .args(["explain", "p1", "--journal-dir", dir])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "{stdout}");
    assert!(stdout.starts_with("pool p1: ready"), "{stdout}");
    let (status, _) = h.call(reqwest::Method::DELETE, "/v2/pools/p1", None).await;
    assert_eq!(status, 200);
    h.stop().await;
}
