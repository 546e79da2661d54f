//! Observability end to end: `GET /metrics` of a real daemon (engine-sim children, a real
//! journal) after a preload, a lease, a crash and a drain, checked series by series and by
//! `promtool check metrics`; counters and gauges across a restart; the bearer token; and the
//! JSON logs of `pool-managerd serve --log-format json` (one line per journaled event, with
//! the pool's fields, at the level of the event).
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it): without it the
//! promtool check fails under `CI=true` and is skipped with a printed reason elsewhere.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/promtool.rs"]
mod promtool;

use harness::serve::ServeCommand;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{engine_sim_preload, Harness};
use promtool::promtool;
use serde_json::{json, Value};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");

/// The samples of a scrape: `name{labels}` (labels as rendered) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the series `name` whose labels include every `labels` pair (any order).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text).into_iter().find_map(|(series, v)| {
        let (series_name, rest) = series.split_once('{').unwrap_or((series.as_str(), "}"));
        let matches = series_name == name
            && labels
                .iter()
                .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")));
        matches.then_some(v)
    })
}

fn expect(text: &str, name: &str, labels: &[(&str, &str)], wanted: f64) {
    assert_eq!(
        value(text, name, labels),
        Some(wanted),
        "{name}{labels:?} in:\n{text}"
    );
}

/// `promtool check metrics` on `text`: `Ok(false)` when promtool is missing outside CI.
fn promtool_check(text: &str) -> bool {
    let Some(promtool) = promtool() else {
        return false;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\non:\n{text}",
        output.status
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_preload_lease_crash_and_drain_has_every_series_and_passes_promtool() {
    let mut h = Harness::start_with(|c| {
        // The crashed engine is restarted at once, crashes again and waits in backoff for
        // the whole test.
        c.backoff.initial_ms = 600_000;
        c.backoff.max_ms = 600_000;
        c.backoff.jitter = 0.0;
    })
    .await;
    h.wait = Duration::from_secs(15);

    let (status, answer) = h
        .post(
            "/v2/pools/steady/preload",
            engine_sim_preload("steady", None, &["--parallel", "4"]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let text = h.scrape().await;
    expect(
        &text,
        "pool_preload_total",
        &[("pool_id", "steady"), ("outcome", "success")],
        1.0,
    );
    expect(
        &text,
        "pool_preload_duration_seconds_count",
        &[("pool_id", "steady")],
        1.0,
    );
    expect(&text, "pool_ready", &[("pool_id", "steady")], 1.0);
    expect(
        &text,
        "pool_phase",
        &[("pool_id", "steady"), ("phase", "ready")],
        1.0,
    );
    // Label-less counters are there at 0 before anything happened.
    expect(&text, "sse_clients_dropped_total", &[], 0.0);
    expect(&text, "pool_slots_total", &[("pool_id", "steady")], 4.0);
    expect(&text, "pool_slots_free", &[("pool_id", "steady")], 4.0);
    expect(&text, "pool_active_leases", &[("pool_id", "steady")], 0.0);
    expect(
        &text,
        "circuit_breaker_state",
        &[("pool_id", "steady")],
        0.0,
    );

    // A lease: one slot taken, then given back.
    let (status, lease) = h.post("/v2/pools/steady/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");
    let text = h.scrape().await;
    expect(&text, "pool_active_leases", &[("pool_id", "steady")], 1.0);
    expect(&text, "pool_slots_free", &[("pool_id", "steady")], 3.0);
    let lease_id = lease["lease_id"].as_str().unwrap();
    let (status, _) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/pools/steady/leases/{lease_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // A crash after ready.
    let (status, answer) = h
        .post(
            "/v2/pools/crashy/preload",
            engine_sim_preload(
                "crashy",
                None,
                &["--crash-after-ms", "3000", "--exit-code", "3"],
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    h.wait_pool(
        "crashy",
        "a crash, a restart at once and a second crash",
        |s| s["crash_count"] == 2 && s["phase"] == "backoff",
    )
    .await;

    // A graceful drain.
    let (status, answer) = h
        .post("/v2/pools/steady/drain", json!({ "deadline_ms": 5000 }))
        .await;
    assert_eq!(status, 202, "{answer}");
    h.wait_pool("steady", "drained", |s| s["phase"] == "stopped")
        .await;

    let text = h.scrape().await;
    let (_, health) = h.get("/health").await;
    expect(
        &text,
        "pool_preload_total",
        &[("pool_id", "crashy"), ("outcome", "success")],
        1.0,
    );
    expect(
        &text,
        "engine_crash_total",
        &[("pool_id", "crashy"), ("reason", "crash")],
        2.0,
    );
    // The delays chosen: 0 s (the first restart), then 600 s.
    expect(
        &text,
        "restart_backoff_seconds_count",
        &[("pool_id", "crashy")],
        2.0,
    );
    expect(
        &text,
        "restart_backoff_seconds_sum",
        &[("pool_id", "crashy")],
        600.0,
    );
    expect(
        &text,
        "pool_drain_total",
        &[("pool_id", "steady"), ("outcome", "graceful")],
        1.0,
    );
    expect(
        &text,
        "pool_drain_duration_seconds_count",
        &[("pool_id", "steady")],
        1.0,
    );
    expect(&text, "pool_ready", &[("pool_id", "steady")], 0.0);
    expect(&text, "pool_ready", &[("pool_id", "crashy")], 0.0);
    // One phase series per pool: the drained pool is stopped (on purpose), the crashing one
    // waits in backoff.
    expect(
        &text,
        "pool_phase",
        &[("pool_id", "steady"), ("phase", "stopped")],
        1.0,
    );
    expect(
        &text,
        "pool_phase",
        &[("pool_id", "crashy"), ("phase", "backoff")],
        1.0,
    );
    assert_eq!(text.matches("pool_phase{").count(), 2, "{text}");
    expect(&text, "pool_slots_free", &[("pool_id", "crashy")], 0.0);
    expect(&text, "pool_active_leases", &[("pool_id", "steady")], 0.0);
    expect(
        &text,
        "circuit_breaker_state",
        &[("pool_id", "crashy")],
        0.0,
    );
    let last_seq = health["journal_seq"].as_f64().unwrap();
    expect(&text, "journal_last_seq", &[], last_seq);
    let appended = value(&text, "journal_events_total", &[]).unwrap();
    assert!(
        appended >= last_seq - 1.0 && appended <= last_seq,
        "{appended} vs {last_seq}"
    );
    assert!(value(&text, "journal_append_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert!(value(
        &text,
        "journal_append_duration_seconds_bucket",
        &[("le", "+Inf")]
    )
    .is_some());
    assert!(value(&text, "journal_replay_duration_seconds", &[]).is_some());
    expect(&text, "engine_restart_total", &[("pool_id", "crashy")], 1.0);
    promtool_check(&text);

    // A restart: counters count since this process started, gauges come back from the replay.
    h.restart().await;
    let text = h.scrape().await;
    assert!(value(&text, "pool_preload_total", &[]).is_none(), "{text}");
    assert!(value(&text, "engine_crash_total", &[]).is_none(), "{text}");
    expect(&text, "sse_clients_dropped_total", &[], 0.0);
    expect(
        &text,
        "pool_phase",
        &[("pool_id", "steady"), ("phase", "stopped")],
        1.0,
    );
    expect(&text, "pool_slots_total", &[("pool_id", "steady")], 4.0);
    expect(&text, "pool_ready", &[("pool_id", "steady")], 0.0);
    let (_, health) = h.get("/health").await;
    expect(
        &text,
        "journal_last_seq",
        &[],
        health["journal_seq"].as_f64().unwrap(),
    );
    promtool_check(&text);

    // A removed pool's gauges are gone.
    for pool in ["steady", "crashy"] {
        let (status, answer) = h
            .call(reqwest::Method::DELETE, &format!("/v2/pools/{pool}"), None)
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let text = h.scrape().await;
    assert!(!text.contains("pool_id=\"steady\""), "{text}");
    assert!(!text.contains("pool_id=\"crashy\""), "{text}");
    promtool_check(&text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_and_health_does_not() {
    let h = Harness::start_with(|c| c.api_token = Some("s3cret".to_string())).await;
    let metrics = format!("{}/metrics", h.base);
    let response = h.http.get(&metrics).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = h
        .http
        .get(&metrics)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("journal_last_seq "), "{text}");
    let response = h
        .http
        .get(format!("{}/health", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    h.stop().await;
}

/// The JSON log lines of `log` that are journaled events.
fn event_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"))
        })
        .filter(|line| line["fields"]["message"] == "event")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_pool_fields_once_per_event_at_their_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pool-managerd.toml");
    std::fs::write(
        &config,
        "[health]\npreload_interval_ms = 50\npreload_timeout_ms = 10000\n\
         [stop]\ngrace_ms = 500\n\
         [backoff]\ninitial_ms = 200\nmin_ms = 100\njitter = 0.0\n\
         [breaker]\nfailure_threshold = 3\nopen_ms = 600000\n",
    )
    .unwrap();
    let mut daemon = ServeCommand::new(DAEMON, dir.path())
        .dev()
        .arg("--log-format")
        .arg("json")
        .config(&config)
        .spawn();
    let base = daemon.base();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    daemon.wait_healthy(Duration::from_secs(15));

    // Ready, then crashing 3 s after every start: a restart at once, one after 200 ms, then the
    // breaker opens. The 3 s leave a loaded machine (the whole suite at once) time to probe
    // each start ready first.
    let body = engine_sim_preload(
        "p1",
        None,
        &["--crash-after-ms", "3000", "--exit-code", "3"],
    );
    let response = http
        .post(format!("{base}/v2/pools/p1/preload"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Value = http
            .get(format!("{base}/v2/pools/p1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["breaker"] == "open" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker did not open: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let journal_seq = health["journal_seq"].as_u64().unwrap();
    let _ = http.delete(format!("{base}/v2/pools/p1")).send().await;
    // SIGKILL: the log ends with what the journal held at `journal_seq`.
    let _ = daemon.guard.0.kill();
    let _ = daemon.guard.0.wait();

    let log = daemon.log_text();
    let events = event_lines(&log);
    // Every journaled event up to the breaker is logged exactly once.
    let mut seqs: Vec<u64> = events
        .iter()
        .map(|e| e["fields"]["seq"].as_u64().expect("seq"))
        .filter(|seq| *seq <= journal_seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=journal_seq).collect::<Vec<_>>(), "{log}");

    let of = |kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["fields"]["kind"] == kind)
            .collect()
    };
    let ready = of("PoolReady");
    assert_eq!(ready.len(), 3, "the preload and the two restarts: {log}");
    for line in &ready {
        assert_eq!(line["level"], "INFO", "{line}");
        let f = &line["fields"];
        assert_eq!(f["pool_id"], "p1", "{line}");
        assert_eq!(f["engine"], "engine-sim", "{line}");
        assert!(f["engine_version"].is_string(), "{line}");
        assert_eq!(f["model_id"], "/models/m.gguf", "{line}");
        assert!(f["restart_count"].is_u64(), "{line}");
        assert!(f.get("device_mask").is_none(), "no mask was given: {line}");
    }
    let exits = of("EngineExited");
    assert_eq!(exits.len(), 3, "{log}");
    for (n, line) in exits.iter().enumerate() {
        assert_eq!(line["level"], "WARN", "a crash is a warning: {line}");
        let f = &line["fields"];
        assert_eq!(f["reason"], "crash", "{line}");
        assert_eq!(f["restart_count"], n as u64, "{line}");
        assert!(
            f["last_error"].as_str().unwrap().contains("crashing after"),
            "{line}"
        );
    }
    let scheduled = of("RestartScheduled");
    assert_eq!(scheduled.len(), 2, "{log}");
    for (line, backoff_ms) in scheduled.iter().zip([0, 200]) {
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["backoff_ms"], backoff_ms, "{line}");
    }
    let opened = of("CircuitOpened");
    assert_eq!(opened.len(), 1, "{log}");
    assert_eq!(opened[0]["level"], "ERROR", "{}", opened[0]);
    assert_eq!(opened[0]["fields"]["pool_id"], "p1");
    for line in of("DaemonStarted") {
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["pool_id"], "-", "a node event: {line}");
    }
}
