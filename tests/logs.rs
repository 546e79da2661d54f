//! Engine logs end to end: a real daemon, real engine-sim children writing their logs, the
//! rotation (`[logs] max_bytes`, `keep`) across an engine's restart and the daemon's, `GET
//! /v2/pools/{id}/logs` (tail and follow) over a real socket, and `pool-managerd logs`.
//!
//! Waits poll with a bounded deadline; nothing sleeps hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{engine_sim_preload, pid_alive, Harness};
use pool_managerd::config::LogsSettings;
use serde_json::{json, Value};

const MAX_BYTES: u64 = 64 * 1024;

/// Polls `check` every 50 ms for up to `secs`; fails naming `what`.
async fn await_that(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn part(log: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", log.display()))
}

/// The highest `engine-sim: log line N` of a file (0 when none).
fn last_spam_line(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("engine-sim: log line "))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The live log is bounded and has no hole: what it holds is allocated.
fn assert_bounded(log: &Path) {
    let meta = std::fs::metadata(log).unwrap();
    assert!(
        meta.len() <= 4 * MAX_BYTES,
        "{} is {} bytes, over 4 x max_bytes",
        log.display(),
        meta.len()
    );
    assert!(
        meta.blocks() * 512 + 8192 >= meta.len(),
        "{} is sparse: {} bytes, {} blocks",
        log.display(),
        meta.len(),
        meta.blocks()
    );
}

fn assert_keeps_two(log: &Path) {
    assert!(part(log, 1).exists() && part(log, 2).exists());
    assert!(
        !part(log, 3).exists(),
        "keep = 2: no {}",
        part(log, 3).display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_engines_log_is_rotated_across_restarts_of_the_engine_and_the_daemon() {
    let mut h = Harness::start_with(|c| {
        c.logs = LogsSettings {
            max_bytes: MAX_BYTES,
            keep: 2,
        };
        c.stop_engines_on_shutdown = false;
    })
    .await;
    let body = engine_sim_preload("p1", None, &["--log-spam-bytes-per-sec", "20000"]);
    let (status, answer) = h.post("/v2/pools/p1/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().expect("a pid");
    let log = h.runtime().join("logs/p1.log");

    await_that("two rotated parts", 30, || part(&log, 2).exists()).await;
    assert_keeps_two(&log);
    assert_bounded(&log);
    let rotated = std::fs::read_to_string(&log).unwrap();
    assert!(
        rotated.contains("log rotated at"),
        "the mark of ours is in the fresh log"
    );
    // The engine goes on writing into the live log, after what the rotation copied.
    let copied = last_spam_line(&part(&log, 1));
    await_that("new engine lines in the live log", 10, || {
        last_spam_line(&log) > copied
    })
    .await;

    // SIGKILL: the daemon starts it again, into the same log (its header after a rotation
    // when the log is over the limit).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    h.wait = Duration::from_secs(20);
    let pool = h
        .wait_pool("p1", "restarted after the kill", |p| {
            p["ready"] == json!(true) && p["pid"].as_u64().is_some_and(|p| p != pid)
        })
        .await;
    let second = pool["pid"].as_u64().unwrap();
    let first_part = std::fs::read(part(&log, 1)).unwrap();
    await_that("a rotation while the second engine runs", 30, || {
        std::fs::read(part(&log, 1)).unwrap_or_default() != first_part && last_spam_line(&log) > 0
    })
    .await;
    assert_keeps_two(&log);
    assert_bounded(&log);

    // The daemon restarts; the engine runs on, adopted, and its log is still rotated.
    h.config.stop_engines_on_shutdown = true;
    h.restart().await;
    h.wait_pool("p1", "adopted", |p| {
        p["ready"] == json!(true) && p["pid"].as_u64() == Some(second)
    })
    .await;
    let before = std::fs::read(part(&log, 1)).unwrap();
    await_that("a rotation after the daemon's restart", 30, || {
        std::fs::read(part(&log, 1)).unwrap_or_default() != before
    })
    .await;
    assert_keeps_two(&log);
    assert_bounded(&log);
    assert!(
        pid_alive(second),
        "the engine survived the daemon's restart"
    );
    h.stop().await;
}

fn append(log: &Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

/// A quiet engine-sim in pool `p1`, with ten numbered lines appended to its log.
async fn pool_with_lines(h: &Harness) -> PathBuf {
    let (status, answer) = h
        .post("/v2/pools/p1/preload", engine_sim_preload("p1", None, &[]))
        .await;
    assert_eq!(status, 200, "{answer}");
    let log = h.runtime().join("logs/p1.log");
    let lines: Vec<String> = (0..10).map(|i| format!("numbered line {i}")).collect();
    append(&log, &lines);
    log
}

#[tokio::test]
async fn the_api_gives_the_last_lines_marked_by_their_writer() {
    let h = Harness::start().await;
    let log = pool_with_lines(&h).await;
    let (status, body) = h.get("/v2/pools/p1/logs?tail=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pool_id"], "p1");
    assert_eq!(body["path"], log.display().to_string());
    assert_eq!(body["truncated"], true);
    let lines = body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(
        lines[2],
        json!({"source": "engine", "text": "numbered line 9"})
    );

    let (_, all) = h.get("/v2/pools/p1/logs").await;
    assert_eq!(all["truncated"], false, "{all}");
    let lines = all["lines"].as_array().unwrap();
    assert_eq!(lines[0]["source"], "daemon", "{all}");
    assert!(lines[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("==== pool-managerd: starting "));
    assert!(
        lines.iter().skip(1).all(|l| l["source"] == "engine"),
        "{all}"
    );

    let (status, body) = h.get("/v2/pools/nope/logs").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "POOL_NOT_FOUND");
    let (status, body) = h.get("/v2/pools/p1/logs?tail=-1").await;
    assert_eq!(status, 400, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn the_route_needs_the_token() {
    let h = Harness::start_with(|c| c.api_token = Some("s3cret".into())).await;
    let url = format!("{}/v2/pools/p1/logs", h.base);
    let bare = h.http.get(&url).send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    let with = h.http.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(
        with.status().as_u16(),
        404,
        "no pool p1: past the token check"
    );
    h.stop().await;
}

/// Reads `stream` into `seen` until it holds `what` (10 s at most).
async fn read_until(stream: &mut reqwest::Response, what: &str, seen: &mut String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(what) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("not within 10 s: {what}; got {seen}"))
            .unwrap()
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_follower_gets_new_lines_across_a_rotation_until_the_daemon_stops() {
    let mut h = Harness::start().await;
    let log = pool_with_lines(&h).await;
    let mut stream = h
        .http
        .get(format!("{}/v2/pools/p1/logs?tail=2&follow=true", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut seen = String::new();
    read_until(&mut stream, "numbered line 9", &mut seen).await;
    assert!(seen.contains("event: line"), "{seen}");
    assert!(!seen.contains("numbered line 7"), "tail=2: {seen}");
    append(&log, &["written after the subscription".to_string()]);
    read_until(&mut stream, "written after the subscription", &mut seen).await;
    let data = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .unwrap();
    let line: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        line,
        json!({"source": "engine", "text": "written after the subscription"})
    );
    // A rotation (copy, truncate in place): the stream goes on from the file's new start,
    // with the daemon's mark.
    let filler: Vec<String> = (0..60)
        .map(|i| format!("filler {i} {}", "f".repeat(90)))
        .collect();
    append(&log, &filler);
    let limits = LogsSettings {
        max_bytes: 4096,
        keep: 1,
    };
    assert!(pool_managerd::supervisor::logrotate::rotate_if_over(&log, limits, 0).unwrap());
    append(&log, &["written after the rotation".to_string()]);
    read_until(&mut stream, "written after the rotation", &mut seen).await;
    let mark = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find(|line| line["text"].as_str().unwrap().contains("log rotated at"))
        .expect("the rotation's mark is streamed");
    assert_eq!(mark["source"], "daemon");
    // The daemon's stop ends the stream with its reason (its graceful stop does not wait).
    let daemon = h.daemon.take().unwrap();
    let stopping = tokio::spawn(daemon.shutdown("test finished"));
    read_until(&mut stream, "event: shutdown", &mut seen).await;
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the daemon stops within 10 s with a stream open")
        .unwrap();
}

#[tokio::test]
async fn the_cli_prints_the_last_lines() {
    let h = Harness::start().await;
    pool_with_lines(&h).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pool-managerd"))
        .args(["logs", "p1", "--tail", "5", "--addr", &h.base])
        .env_remove("LLORCH_API_TOKEN")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        (5..10)
            .map(|i| format!("numbered line {i}"))
            .collect::<Vec<_>>(),
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pool-managerd"))
        .args(["logs", "nope", "--addr", &h.base])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pool nope"), "{stderr}");
    assert!(stderr.contains(&h.base), "{stderr}");
    assert!(stderr.contains("POOL_NOT_FOUND"), "{stderr}");
    h.stop().await;
}
