//! A journal that lost acknowledged events, as an operator meets it: the daemon refuses to
//! start naming `journal repair --accept-loss`; the repair keeps what is readable and records
//! the loss; the next start reconciles the runtime directory with `/proc`, so that the engine
//! the lost events had started is adopted (a handoff file names it) or stopped and recorded,
//! never left running unknown. The live store loses its last records the way sled's recovery
//! drops them after damage (records removed from the store behind the daemon's back).

#[path = "support/daemon_harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{engine_sim_preload, pid_alive, Harness};
use pool_journal::{JournalConfig, SledStore, Store};
use pool_managerd::clock::SystemClock;
use pool_managerd::daemon::Daemon;
use pool_managerd::schema::PoolSchema;
use serde_json::{json, Value};

/// A ready pool with one lease, its engine left running by a daemon that stopped.
async fn ready_pool_then_stop() -> (Harness, u64) {
    let mut h = Harness::start_with(|c| c.stop_engines_on_shutdown = false).await;
    h.wait = Duration::from_secs(30);
    let (status, body) = h
        .post("/v2/pools/p1/preload", engine_sim_preload("p1", None, &[]))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, lease) = h.post("/v2/pools/p1/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");
    let (_, pool) = h.get("/v2/pools/p1").await;
    let pid = pool["pid"].as_u64().unwrap();
    h.daemon
        .take()
        .unwrap()
        .shutdown("test: stop, engines keep running")
        .await;
    assert!(pid_alive(pid));
    (h, pid)
}

/// The seq of the first event of `kind` in the journal at `dir`.
fn seq_of(dir: &std::path::Path, kind: &str) -> u64 {
    let (journal, _) =
        pool_managerd::schema::PoolJournal::open_read_only(JournalConfig::new(dir)).unwrap();
    let seq = journal
        .read_from(0)
        .map(|e| e.unwrap())
        .find(|e| e.event.kind() == kind)
        .map(|e| e.seq)
        .unwrap_or_else(|| panic!("no {kind}"));
    seq
}

/// Loses the records from `seq` on: drops them from the live store, as sled does with a
/// damaged log, and damages every copy of their bytes left in its file, so that nothing can
/// read them again.
fn lose_from(dir: &std::path::Path, seq: u64) {
    let (journal, _) =
        pool_managerd::schema::PoolJournal::open_read_only(JournalConfig::new(dir)).unwrap();
    let lost: Vec<Vec<u8>> = journal
        .read_from(seq)
        .map(|e| pool_journal::encode_record::<PoolSchema>(&e.unwrap()).unwrap())
        .collect();
    drop(journal);
    let live = pool_journal::live_store_dir(dir);
    let store = SledStore::open(&live, 8 << 20).unwrap();
    store.remove_from(seq).unwrap();
    store.sync().unwrap();
    drop(store);
    let db = live.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for record in &lost {
        let mut at = 0;
        while let Some(found) = bytes[at..]
            .windows(record.len())
            .position(|w| w == record.as_slice())
        {
            let start = at + found;
            bytes[start + record.len() - 2] ^= 0x5A;
            at = start + record.len();
        }
    }
    std::fs::write(&db, &bytes).unwrap();
}

async fn events(h: &Harness) -> Vec<Value> {
    let (status, body) = h.get("/v2/events?limit=10000").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

/// Refuses to start, repairs with --accept-loss, starts again.
async fn refuse_repair_restart(h: &mut Harness) {
    let journal_dir = h.config.journal_dir.clone();
    let refused = match Daemon::start(&h.config, Arc::new(SystemClock)).await {
        Ok(_) => panic!("a daemon over a journal that lost acknowledged events must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains(&format!(
            "pool-managerd journal repair --journal-dir {}",
            journal_dir.display()
        )) && refused.contains("--accept-loss"),
        "{refused}"
    );
    let report =
        pool_journal::repair_dir::<PoolSchema>(JournalConfig::new(&journal_dir), true).unwrap();
    assert_eq!(report.lost.len(), 1, "{report:?}");
    let (daemon, _) = Daemon::start(&h.config, Arc::new(SystemClock))
        .await
        .unwrap();
    h.base = format!("http://{}", daemon.addr());
    h.daemon = Some(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_of_a_pool_the_lost_events_created_is_adopted_from_its_handoff_file() {
    let (mut h, pid) = ready_pool_then_stop().await;
    let dir = h.config.journal_dir.clone();
    lose_from(&dir, seq_of(&dir, "PreloadRequested"));
    refuse_repair_restart(&mut h).await;

    let all = events(&h).await;
    assert!(
        all.iter()
            .any(|e| e["event"]["kind"] == "JournalLossAccepted"),
        "the loss is an event"
    );
    let pool = h
        .wait_pool("p1", "adopted and ready", |s| s["ready"] == true)
        .await;
    assert_eq!(
        pool["pid"].as_u64(),
        Some(pid),
        "the running engine is the pool's: {pool}"
    );
    assert!(pid_alive(pid));
    remove_and_stop(h, pid).await;
}

/// Removes the pool (its engine stops) and stops the daemon: no engine outlives the test.
async fn remove_and_stop(h: Harness, pid: u64) {
    let (status, body) = h.call(reqwest::Method::DELETE, "/v2/pools/p1", None).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "engine {pid} outlived its pool");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

/// The engine is gone and its stop recorded as `UntrackedEngineStopped`.
async fn stopped_and_recorded(h: &Harness, pid: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "engine {pid} still runs unknown to the journal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = events(h).await;
    let stopped = all
        .iter()
        .find(|e| e["event"]["kind"] == "UntrackedEngineStopped")
        .unwrap_or_else(|| panic!("the stop is recorded: {all:?}"));
    assert_eq!(stopped["event"]["pid"].as_u64(), Some(pid), "{stopped}");
    assert_eq!(stopped["event"]["pool_id"], "p1", "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_start_was_lost_is_stopped_and_recorded_and_the_start_resumes() {
    let (mut h, pid) = ready_pool_then_stop().await;
    let dir = h.config.journal_dir.clone();
    // The preload survives; the spawn and what followed are lost: start-up resumes the start
    // with a new engine, so the one that ran is stopped (one engine per pool).
    lose_from(&dir, seq_of(&dir, "EngineSpawned"));
    refuse_repair_restart(&mut h).await;
    stopped_and_recorded(&h, pid).await;
    let pool = h
        .wait_pool("p1", "started again and ready", |s| s["ready"] == true)
        .await;
    assert_ne!(pool["pid"].as_u64(), Some(pid), "{pool}");
    let new_pid = pool["pid"].as_u64().unwrap();
    remove_and_stop(h, new_pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_the_lost_events_started_and_no_handoff_names_is_stopped_and_recorded() {
    let (mut h, pid) = ready_pool_then_stop().await;
    let dir = h.config.journal_dir.clone();
    lose_from(&dir, seq_of(&dir, "PreloadRequested"));
    for entry in std::fs::read_dir(h.runtime().join("engines")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    refuse_repair_restart(&mut h).await;
    stopped_and_recorded(&h, pid).await;
    assert!(!h.runtime().join("pids").join("p1.pid").exists());
    let (status, _) = h.get("/v2/pools/p1").await;
    assert_eq!(status, 404, "the pool was lost with its events");
    h.stop().await;
}
