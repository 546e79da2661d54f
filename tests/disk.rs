//! The journal on a real small file system (a size-limited tmpfs) filled while leases flow,
//! and on an ext4 image that the kernel remounts read-only after an error: every change answers 503 `JOURNAL_UNAVAILABLE` naming the journal
//! and the OS error, reads keep working, `/health` says `degraded`, an engine that dies
//! meanwhile is shown unready at once, and the daemon recovers by itself once the disk takes
//! writes again, recording what it observed meanwhile. Every lease that got a 2xx is in the
//! journal after a restart; no lease that got a 503 is.
//!
//! Needs root (mount); under `CI=true` the tests fail without it, elsewhere they are skipped.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/mount.rs"]
mod mount;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::{engine_sim_preload, pid_alive, Harness};
use serde_json::{json, Value};

/// How long a condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the lease traffic saw.
#[derive(Default, Debug)]
struct Leases {
    /// Granted with a 201 and not released with a 200.
    held: BTreeSet<String>,
    /// Granted with a 201.
    granted: BTreeSet<String>,
    /// Released with a 200.
    released: BTreeSet<String>,
    /// The first 503 answer, if any.
    refused: Option<Value>,
}

impl Leases {
    /// Takes and returns leases (keeping at most `hold` held) until an answer is 503, or
    /// `max` requests were made.
    async fn until_refused(&mut self, h: &Harness, pool: &str, hold: usize, max: usize) {
        for _ in 0..max {
            let (status, body) = if self.held.len() < hold {
                h.post(&format!("/v2/pools/{pool}/leases"), json!({})).await
            } else {
                let id = self.held.iter().next().cloned().unwrap();
                let (status, body) = h
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/v2/pools/{pool}/leases/{id}"),
                        None,
                    )
                    .await;
                if status == 200 {
                    self.held.remove(&id);
                    self.released.insert(id);
                }
                (status, body)
            };
            if status == 201 {
                let id = body["lease_id"].as_str().unwrap().to_string();
                self.held.insert(id.clone());
                self.granted.insert(id);
            } else if status == 503 {
                self.refused = Some(body);
                return;
            } else {
                assert_eq!(status, 200, "lease traffic: {status} {body}");
            }
        }
    }
}

async fn wait_for(
    h: &Harness,
    what: &str,
    mut check: impl FnMut(&Value) -> bool,
    path: &str,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, body) = h.get(path).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} not reached: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the journal, through the API (paged).
async fn all_events(h: &Harness) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut since = 1u64;
    loop {
        let (status, page) = h
            .get(&format!("/v2/events?since={since}&limit=10000"))
            .await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        since = page.last().unwrap()["seq"].as_u64().unwrap() + 1;
        out.extend(page);
    }
}

fn lease_ids(events: &[Value], kind: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["event"]["kind"] == kind)
        .map(|e| e["event"]["lease_id"].as_str().unwrap().to_string())
        .collect()
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in the scrape:\n{text}"))
}

/// Checks what a refused change says, and that reads keep working, while the journal cannot
/// take writes; returns `/health`.
async fn check_unavailable(
    h: &Harness,
    refused: &Value,
    journal_dir: &str,
    os_error: &str,
    kind: &str,
) -> Value {
    eprintln!("refused: {refused}");
    assert_eq!(refused["code"], "JOURNAL_UNAVAILABLE", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains(journal_dir), "names the journal: {error}");
    assert!(error.contains(os_error), "names the OS error: {error}");
    let (status, pools) = h.get("/v2/pools").await;
    assert_eq!(status, 200, "reads keep working: {pools}");
    let (status, _) = h.get("/v2/events?limit=5").await;
    assert_eq!(status, 200, "events keep working");
    let (status, health) = h.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["journal"]["writable"], false, "{health}");
    assert!(
        health["journal"]["error"]
            .as_str()
            .unwrap()
            .contains(os_error),
        "{health}"
    );
    let text = h.scrape().await;
    assert_eq!(sample(&text, "journal_writable "), 0.0);
    assert!(
        sample(
            &text,
            &format!("journal_write_errors_total{{kind=\"{kind}\"}} ")
        ) >= 1.0,
        "{text}"
    );
    // A second pool cannot be started while nothing can be recorded.
    let (status, body) = h
        .post(
            "/v2/pools/late/preload",
            engine_sim_preload("late", None, &[]),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("JOURNAL_UNAVAILABLE")),
        "{body}"
    );
    health
}

/// `journal verify` and `journal stats` on the journal while its disk refuses writes, beside
/// the running daemon: they copy the live store elsewhere and write nothing.
fn read_only_tools_work(journal_dir: &std::path::Path) {
    let bin = env!("CARGO_BIN_EXE_pool-managerd");
    for args in [["journal", "verify"], ["journal", "stats"]] {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--journal-dir")
            .arg(journal_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Kills the engine of `pool` and checks that it is shown unready at once, with why.
async fn kill_engine_while_unavailable(h: &Harness, pool: &str) -> u64 {
    let (_, status) = h.get(&format!("/v2/pools/{pool}")).await;
    let pid = status["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let path = format!("/v2/pools/{pool}/health");
    let health = wait_for(
        h,
        "the dead engine shown unready",
        |b| b["ready"] == false,
        &path,
    )
    .await;
    let why = health["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("not yet journaled"), "{health}");
    let deadline = Instant::now() + DEADLINE;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "engine {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pid
}

/// After recovery: the journal holds every acknowledged lease change and none that was
/// refused, and the exit observed meanwhile, stamped with its time.
async fn check_recorded(h: &Harness, leases: &Leases) {
    let events = all_events(h).await;
    // This test is the only client: the journal holds exactly the lease changes that were
    // answered 2xx (none that was refused).
    assert_eq!(lease_ids(&events, "LeaseGranted"), leases.granted, "grants");
    assert_eq!(
        lease_ids(&events, "LeaseReleased"),
        leases.released,
        "releases"
    );
    assert!(
        events.iter().any(|e| e["event"]["kind"] == "EngineExited"),
        "the exit observed while the disk was full is journaled"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap-free");
}

/// A daemon whose journal is at `journal_dir` (on a test file system), with a ready pool
/// `p1` of engine-sim.
async fn ready_daemon_on(journal_dir: &std::path::Path) -> Harness {
    let jd = journal_dir.to_path_buf();
    let mut h = Harness::start_with(move |c| c.journal_dir = jd).await;
    h.wait = DEADLINE;
    let (status, body) = h
        .post("/v2/pools/p1/preload", engine_sim_preload("p1", None, &[]))
        .await;
    assert_eq!(status, 200, "{body}");
    h
}

/// Once the disk takes writes again: the daemon recovers by itself, the pool serves again,
/// the journal holds exactly the acknowledged lease changes, and a restart replays it all.
async fn recovers_and_survives_a_restart(mut h: Harness, leases: &Leases) {
    wait_for(
        &h,
        "the journal writable again",
        |b| b["status"] == "ok",
        "/health",
    )
    .await;
    h.wait_pool("p1", "restarted and ready", |s| s["ready"] == true)
        .await;
    check_recorded(&h, leases).await;
    let before = all_events(&h).await;
    h.restart().await;
    let after = all_events(&h).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "the history survives the restart"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_changes_keeps_reads_and_recovers_by_itself() {
    let Some(fs) = mount::Tmpfs::mount("8m") else {
        return;
    };
    let journal_dir = fs.path().join("journal");
    let h = ready_daemon_on(&journal_dir).await;
    let mut leases = Leases::default();
    leases.until_refused(&h, "p1", 2, 200).await;
    assert!(leases.refused.is_none(), "the disk is not full yet");

    let filler = fs.fill();
    leases.until_refused(&h, "p1", 2, 50_000).await;
    let refused = leases
        .refused
        .clone()
        .expect("the full disk refuses a change");
    read_only_tools_work(&journal_dir);
    let health = check_unavailable(
        &h,
        &refused,
        &journal_dir.display().to_string(),
        "No space left on device",
        "enospc",
    )
    .await;
    assert_eq!(health["journal"]["kind"], "enospc");
    kill_engine_while_unavailable(&h, "p1").await;

    std::fs::remove_file(&filler).unwrap();
    recovers_and_survives_a_restart(h, &leases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_remount_refuses_changes_and_recovers_when_writable_again() {
    let Some(fs) = mount::Ext4Image::mount(64) else {
        return;
    };
    let journal_dir = fs.path().join("journal");
    let h = ready_daemon_on(&journal_dir).await;
    let mut leases = Leases::default();
    leases.until_refused(&h, "p1", 2, 100).await;
    assert!(leases.refused.is_none());

    fs.fail();
    leases.until_refused(&h, "p1", 2, 1_000).await;
    let refused = leases
        .refused
        .clone()
        .expect("a read-only file system refuses a change");
    read_only_tools_work(&journal_dir);
    check_unavailable(
        &h,
        &refused,
        &journal_dir.display().to_string(),
        "Read-only file system",
        "erofs",
    )
    .await;
    kill_engine_while_unavailable(&h, "p1").await;

    fs.remount_writable();
    recovers_and_survives_a_restart(h, &leases).await;
}

/// Takes and returns leases of `p1` until the journal refuses one (`JOURNAL_UNAVAILABLE`);
/// returns how many changes were accepted first (0 when the node started unavailable).
async fn writes_until_refused(h: &Harness) -> u32 {
    for accepted in 0..4_096 {
        let (status, body) = h.post("/v2/pools/p1/leases", json!({})).await;
        match (status, body["code"].as_str()) {
            (503, Some("JOURNAL_UNAVAILABLE")) => return accepted,
            (201, _) => {
                let lease = body["lease_id"].as_str().unwrap().to_string();
                let path = format!("/v2/pools/p1/leases/{lease}");
                let (status, body) = h.call(reqwest::Method::DELETE, &path, None).await;
                if status == 503 && body["code"] == "JOURNAL_UNAVAILABLE" {
                    return accepted;
                }
                assert_eq!(status, 200, "{body}");
            }
            _ => panic!("a lease on a full disk answered {status}: {body}"),
        }
    }
    panic!("4096 lease changes fit on a full disk: the disk is not full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_on_a_full_disk_serves_reads_and_recovers_by_itself() {
    let Some(fs) = mount::Tmpfs::mount("8m") else {
        return;
    };
    let journal_dir = fs.path().join("journal");
    let mut h = ready_daemon_on(&journal_dir).await;
    let before = all_events(&h).await;
    h.daemon
        .take()
        .unwrap()
        .shutdown("test: restart on a full disk")
        .await;
    let filler = fs.fill();

    let (daemon, _) = pool_managerd::daemon::Daemon::start(
        &h.config,
        std::sync::Arc::new(pool_managerd::clock::SystemClock),
    )
    .await
    .expect("a full disk does not stop the daemon from starting");
    h.base = format!("http://{}", daemon.addr());
    h.daemon = Some(daemon);
    // The store may still hold room of its own that it reuses (space it freed before the
    // disk filled): then the first appends fit, and the disk refuses a later one. Either
    // way the node must end up refusing changes with the journal named, never failing.
    let writes = writes_until_refused(&h).await;
    let (status, health) = h.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(
        health["status"], "degraded",
        "{health} (after {writes} writes)"
    );
    assert_eq!(health["journal"]["writable"], false, "{health}");
    let history = all_events(&h).await;
    assert_eq!(history[..before.len()], before[..], "the history is served");
    let (status, body) = h.post("/v2/pools/p1/leases", json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("JOURNAL_UNAVAILABLE")),
        "{body}"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_for(
        &h,
        "the journal writable again",
        |b| b["status"] == "ok",
        "/health",
    )
    .await;
    let events = all_events(&h).await;
    assert!(
        events[before.len()..]
            .iter()
            .any(|e| e["event"]["kind"] == "DaemonStarted"),
        "the start, kept while the disk was full, is journaled"
    );
    h.stop().await;
}
