//! The published journals read back from a real NATS JetStream server (`nats-server -js` on a
//! loopback port, a child of the test), through the real binary: `cluster events` merges two
//! daemons' journals by time (every event once, with its node; `--node`, `--pool`, `--since`,
//! `--limit`), `replay --nats` rebuilds a node's registry exactly as `replay --journal-dir`
//! does, and `journal restore --nats` rebuilds a lost journal that verifies, replays the same
//! and serves the same pools once a daemon restarts over it; a stream that misses a seq, or
//! holds a message that is not a journal event, is refused naming the seq.
//!
//! Needs `nats-server` (Debian's package; `.ci/run` installs it): fails under `CI=true` without
//! it, and is skipped elsewhere, saying so. Waits await conditions; nothing sleeps.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/nats.rs"]
mod nats;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use harness::{engine_sim_preload, Harness};
use pool_managerd::clock::{format_ts_ms, SystemClock};
use pool_managerd::core::Event;
use pool_managerd::daemon::Daemon;
use pool_managerd::schema::PoolEnvelope;
use serde_json::{json, Value};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const WAIT: Duration = Duration::from_secs(30);

/// Waits until NATS acknowledged the journal's last event.
async fn published_through_the_end(h: &Harness) -> u64 {
    let daemon = h.daemon.as_ref().unwrap();
    let last = daemon.handle().journal().last_seq();
    let mut published = daemon.published().expect("a publisher");
    tokio::time::timeout(WAIT, published.wait_for(|seq| *seq >= last))
        .await
        .unwrap_or_else(|_| panic!("the journal's seq {last} was not published within {WAIT:?}"))
        .expect("the publisher runs");
    last
}

/// A daemon publishing to `url` as `node`.
async fn publishing(
    url: &str,
    node: &str,
    tune: impl FnOnce(&mut pool_managerd::config::Config),
) -> Harness {
    Harness::start_with(|config| {
        config.cluster.nats_url = url.to_string();
        config.cluster.node_id = node.to_string();
        tune(config);
    })
    .await
}

/// An engine-sim pool `pool` and `leases` leases on it, one of them released.
async fn pool_with_leases(h: &Harness, pool: &str, leases: usize) {
    let body = engine_sim_preload(pool, None, &["--parallel", "4"]);
    let (status, answer) = h.post(&format!("/v2/pools/{pool}/preload"), body).await;
    assert_eq!(status, 200, "{answer}");
    let mut granted = Vec::new();
    for _ in 0..leases {
        let (status, lease) = h.post(&format!("/v2/pools/{pool}/leases"), json!({})).await;
        assert_eq!(status, 201, "{lease}");
        granted.push(lease["lease_id"].as_str().unwrap().to_string());
    }
    let path = format!("/v2/pools/{pool}/leases/{}", granted[0]);
    assert_eq!(h.call(reqwest::Method::DELETE, &path, None).await.0, 200);
}

/// The journal's events as the API exports them, oldest first.
async fn journal_events(h: &Harness) -> Vec<Value> {
    let (status, events) = h.get("/v2/events?since=1&limit=1000").await;
    assert_eq!(status, 200, "{events}");
    events.as_array().unwrap().clone()
}

/// Runs the binary.
async fn cli(args: &[&str]) -> Output {
    tokio::process::Command::new(DAEMON)
        .args(args)
        .env_remove("POOL_MANAGERD_JOURNAL_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary and expects success: its standard output.
async fn cli_ok(args: &[&str]) -> String {
    let out = cli(args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// Runs the binary and expects a failure: its standard error.
async fn cli_fails(args: &[&str]) -> String {
    let out = cli(args).await;
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `events` of `node`, each with `"node"` added, merged by (time, node, seq).
fn merged(journals: &[(&str, &[Value])]) -> Vec<Value> {
    let mut all: Vec<Value> = journals
        .iter()
        .flat_map(|(node, events)| {
            events.iter().map(move |event| {
                let mut event = event.clone();
                event["node"] = json!(node);
                event
            })
        })
        .collect();
    all.sort_by_key(|e| {
        let (ts, seq) = (e["ts_ms"].as_u64().unwrap(), e["seq"].as_u64().unwrap());
        (ts, e["node"].as_str().unwrap().to_string(), seq)
    });
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_events_merges_every_node_by_time_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let n1 = publishing(&url, "n1", |_| {}).await;
    let n2 = publishing(&url, "n2", |_| {}).await;
    pool_with_leases(&n1, "p", 3).await;
    pool_with_leases(&n2, "p", 2).await;
    pool_with_leases(&n1, "q", 1).await;
    pool_with_leases(&n2, "p.2", 2).await;
    published_through_the_end(&n1).await;
    published_through_the_end(&n2).await;
    let (e1, e2) = (journal_events(&n1).await, journal_events(&n2).await);
    let all = merged(&[("n1", &e1), ("n2", &e2)]);

    let printed = json_lines(&cli_ok(&["cluster", "events", "--nats", &url, "--json"]).await);
    assert_eq!(
        printed, all,
        "every event of both journals once, by time, with its node"
    );
    // The journals did not move meanwhile (idle daemons journal nothing).
    assert_eq!(
        (journal_events(&n1).await, journal_events(&n2).await),
        (e1.clone(), e2.clone())
    );
    // The text form: one line per event, naming its node and seq.
    let lines = cli_ok(&["cluster", "events", "--nats", &url]).await;
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), all.len());
    for (line, event) in lines.iter().zip(&all) {
        let head = format!("{}  #{}", event["node"].as_str().unwrap(), event["seq"]);
        assert!(line.starts_with(&head), "{line} / {head}");
    }

    let only =
        |keep: &dyn Fn(&Value) -> bool| all.iter().filter(|e| keep(e)).cloned().collect::<Vec<_>>();
    let filtered = cli_ok(&[
        "cluster", "events", "--nats", &url, "--node", "n1", "--pool", "p", "--json",
    ])
    .await;
    let want = only(&|e| e["node"] == "n1" && e["pool_id"] == "p");
    assert!(want.len() >= 5, "{want:?}");
    assert_eq!(json_lines(&filtered), want);
    let dotted = cli_ok(&[
        "cluster", "events", "--nats", &url, "--pool", "p.2", "--json",
    ])
    .await;
    assert_eq!(json_lines(&dotted), only(&|e| e["pool_id"] == "p.2"));
    let node2 = cli_ok(&[
        "cluster", "events", "--nats", &url, "--node", "n2", "--json",
    ])
    .await;
    assert_eq!(json_lines(&node2), only(&|e| e["node"] == "n2"));

    let since_ms = all[all.len() / 2]["ts_ms"].as_u64().unwrap();
    let since = format_ts_ms(since_ms);
    let later = cli_ok(&[
        "cluster", "events", "--nats", &url, "--since", &since, "--json",
    ])
    .await;
    let want = only(&|e| e["ts_ms"].as_u64().unwrap() >= since_ms);
    assert!(!want.is_empty() && want.len() < all.len());
    assert_eq!(json_lines(&later), want);

    let out = cli(&[
        "cluster", "events", "--nats", &url, "--limit", "3", "--json",
    ])
    .await;
    assert!(out.status.success());
    assert_eq!(json_lines(&text(&out.stdout)), all[..3].to_vec());
    assert!(
        text(&out.stderr).contains("stopped after 3 event(s)"),
        "{}",
        text(&out.stderr)
    );

    let why = cli_fails(&["cluster", "events", "--nats", &url, "--stream", "OTHER"]).await;
    assert!(
        why.contains("no stream OTHER") && why.contains("nats_url"),
        "{why}"
    );
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_from_the_stream_is_replay_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let h = publishing(&url, "n1", |_| {}).await;
    // Another node on the same stream: not part of n1's registry.
    let other = publishing(&url, "n1.b", |_| {}).await;
    pool_with_leases(&h, "p1", 3).await;
    pool_with_leases(&h, "p2", 1).await;
    pool_with_leases(&other, "p3", 1).await;
    let (status, _) = h.post("/v2/pools/p2/stop", json!({})).await;
    assert_eq!(status, 202);
    h.wait_pool("p2", "stopped", |s| s["pid"].is_null()).await;
    let last = published_through_the_end(&h).await;
    published_through_the_end(&other).await;
    let journal = h.config.journal_dir.display().to_string();

    let from_journal = |extra: &[&str]| {
        let mut args = vec!["replay", "--journal-dir", journal.as_str(), "--json"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let from_stream = |extra: &[&str]| {
        let mut args = vec!["replay", "--nats", url.as_str(), "--node", "n1", "--json"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let events = journal_events(&h).await;
    let middle = format_ts_ms(events[events.len() / 2]["ts_ms"].as_u64().unwrap());
    let seqs = [1, 2, last / 2, last - 1].map(|s| s.to_string());
    let mut cases: Vec<Vec<&str>> = vec![vec![], vec!["--pool", "p1"], vec!["--until", &middle]];
    cases.extend(seqs.iter().map(|seq| vec!["--until-seq", seq.as_str()]));
    for extra in &cases {
        let want: Vec<String> = from_journal(extra);
        let want: Value = serde_json::from_str(
            &cli_ok(&want.iter().map(String::as_str).collect::<Vec<_>>()).await,
        )
        .unwrap();
        let got: Vec<String> = from_stream(extra);
        let got: Value = serde_json::from_str(
            &cli_ok(&got.iter().map(String::as_str).collect::<Vec<_>>()).await,
        )
        .unwrap();
        assert_eq!(got, want, "{extra:?}");
    }
    let everything: Value =
        serde_json::from_str(&cli_ok(&["replay", "--nats", &url, "--node", "n1", "--json"]).await)
            .unwrap();
    assert_eq!(everything["as_of_seq"], json!(last));
    assert_eq!(
        everything["pools"].as_array().unwrap().len(),
        2,
        "{everything}"
    );
    let table = cli_ok(&["replay", "--nats", &url, "--node", "n1"]).await;
    assert!(
        table.contains(&format!(
            "node n1 on the stream POOL_EVENTS last seq {last}"
        )),
        "{table}"
    );

    let past = (last + 1).to_string();
    let why = cli_fails(&[
        "replay",
        "--nats",
        &url,
        "--node",
        "n1",
        "--until-seq",
        &past,
    ])
    .await;
    assert!(
        why.contains(&format!("--until-seq {past} is past node n1's last seq")),
        "{why}"
    );
    let why = cli_fails(&["replay", "--nats", &url, "--node", "n9"]).await;
    assert!(why.contains("no event of node n9"), "{why}");
    let why = cli_fails(&["replay", "--nats", &url, "--journal-dir", &journal]).await;
    assert!(why.contains("cannot be used with"), "{why}");
    h.stop().await;
    other.stop().await;
}

/// Every line of `journal export`.
async fn export(journal: &Path) -> Vec<Value> {
    let dir = journal.display().to_string();
    json_lines(&cli_ok(&["journal", "export", "--journal-dir", &dir]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_journal_is_restored_from_the_stream_and_serves_the_same_pools() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    // Engines outlive the daemon: the restarted one adopts them from the restored journal.
    let mut h = publishing(&url, "n1", |config| config.stop_engines_on_shutdown = false).await;
    pool_with_leases(&h, "p1", 3).await;
    pool_with_leases(&h, "chat.a", 2).await;
    published_through_the_end(&h).await;
    let (_, pools_before) = h.get("/v2/pools").await;
    h.daemon
        .take()
        .unwrap()
        .shutdown("test: the disk is lost")
        .await;

    let cursor = h.runtime().join("cluster-POOL_EVENTS.cursor");
    let acknowledged: u64 = std::fs::read_to_string(cursor)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let in_stream = nats::stream_messages(&url, "POOL_EVENTS").await.len();
    let journal = h.config.journal_dir.clone();
    let journal_arg = journal.display().to_string();
    let original = export(&journal).await;
    let lost = dir.path().join("journal.lost");
    std::fs::rename(&journal, &lost).unwrap();
    let lost_arg = lost.display().to_string();

    // An existing journal is never a target.
    let why = cli_fails(&[
        "journal",
        "restore",
        "--nats",
        &url,
        "--node",
        "n1",
        "--journal-dir",
        &lost_arg,
    ])
    .await;
    assert!(
        why.contains(&lost_arg) && why.contains("already holds a journal"),
        "{why}"
    );
    assert!(why.contains("move it aside"), "{why}");
    assert_eq!(export(&lost).await, original, "left as it was");

    let said = cli_ok(&[
        "journal",
        "restore",
        "--nats",
        &url,
        "--node",
        "n1",
        "--journal-dir",
        &journal_arg,
    ])
    .await;
    let stats: Value = serde_json::from_str(
        &cli_ok(&["journal", "stats", "--journal-dir", &journal_arg, "--json"]).await,
    )
    .unwrap();
    let restored = stats["last_seq"].as_u64().unwrap();
    assert!(
        said.contains(&format!("restored {restored} event(s) of node n1")),
        "{said}"
    );
    assert!(said.contains(&format!("last seq {restored}")), "{said}");
    // Every message of the stream, so every event the server acknowledged (what the daemon
    // journaled after its publisher stopped was never published).
    let count = usize::try_from(restored).unwrap();
    assert_eq!(count, in_stream, "one event per message");
    assert!(
        restored >= acknowledged && acknowledged >= 10,
        "{restored} / {acknowledged}"
    );
    assert!(count <= original.len(), "{restored} of {}", original.len());
    assert!(!dir.path().join("journal.restoring").exists());
    let verified = cli_ok(&["journal", "verify", "--journal-dir", &journal_arg]).await;
    assert!(verified.contains("ok:"), "{verified}");
    // Exactly what an import of the export writes: the same events, seqs, times and causes.
    assert_eq!(export(&journal).await, original[..count].to_vec());
    let seq = restored.to_string();
    let before = cli_ok(&[
        "replay",
        "--journal-dir",
        &lost_arg,
        "--until-seq",
        &seq,
        "--json",
    ])
    .await;
    let after = cli_ok(&["replay", "--journal-dir", &journal_arg, "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&after).unwrap(),
        serde_json::from_str::<Value>(&before).unwrap()
    );

    // A daemon over the restored journal adopts the same engines and serves the same pools.
    h.config.stop_engines_on_shutdown = true;
    let (daemon, _) = Daemon::start(&h.config, Arc::new(SystemClock))
        .await
        .unwrap();
    h.base = format!("http://{}", daemon.addr());
    h.daemon = Some(daemon);
    for pool in ["p1", "chat.a"] {
        h.wait_pool(pool, "ready", |s| s["ready"] == json!(true))
            .await;
    }
    let (_, pools_after) = h.get("/v2/pools").await;
    let view = |pools: &Value| -> Vec<Value> {
        pools
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                json!([
                    p["pool_id"],
                    p["pid"],
                    p["engine_version"],
                    p["active_leases"],
                    p["ready"]
                ])
            })
            .collect()
    };
    assert_eq!(view(&pools_after), view(&pools_before));
    h.stop().await;
}

/// Publishes `envelope` as node `node` would, with `id` as its `Nats-Msg-Id`.
async fn publish(
    js: &async_nats::jetstream::Context,
    node: &str,
    id: &str,
    envelope: &PoolEnvelope,
) {
    let payload = pool_journal::envelope_to_json(envelope)
        .unwrap()
        .to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    let subject = format!("pool.events.{node}._node");
    let ack = js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .unwrap();
    ack.await.unwrap();
}

fn stopped(seq: u64) -> PoolEnvelope {
    PoolEnvelope {
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        pool_id: None,
        cause: None,
        event: Event::DaemonStopped {
            reason: "test".to_string(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_misses_a_seq_or_holds_a_foreign_message_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "POOL_EVENTS".to_string(),
        subjects: vec!["pool.events.>".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    for seq in [1, 2, 4] {
        publish(&js, "gap", &format!("gap:{seq}"), &stopped(seq)).await;
    }
    publish(&js, "late", "late:2", &stopped(2)).await;
    publish(&js, "liar", "liar:1", &stopped(2)).await;

    let target = dir.path().join("restored");
    let target_arg = target.display().to_string();
    let restore = |node: &'static str| {
        let (url, target_arg) = (url.clone(), target_arg.clone());
        async move {
            cli_fails(&[
                "journal",
                "restore",
                "--nats",
                &url,
                "--node",
                node,
                "--journal-dir",
                &target_arg,
            ])
            .await
        }
    };
    let why = restore("gap").await;
    assert!(
        why.contains("seq 3 is missing") && why.contains("node gap"),
        "{why}"
    );
    assert!(
        !target.exists(),
        "nothing is left where the daemon would open it"
    );
    assert!(!dir.path().join("restored.restoring").exists());
    let why = cli_fails(&["replay", "--nats", &url, "--node", "gap"]).await;
    assert!(why.contains("seq 3 is missing"), "{why}");

    let why = restore("late").await;
    assert!(
        why.contains("first event on the stream POOL_EVENTS is seq 2"),
        "{why}"
    );
    assert!(why.contains("seq 1 is missing"), "{why}");
    // The message's place in the stream is named.
    let why = restore("liar").await;
    assert!(
        why.contains("POOL_EVENTS's seq 5") && why.contains("'liar:1'"),
        "{why}"
    );
    assert!(!target.exists());
    // Every node's events: the foreign message is refused there too.
    let why = cli_fails(&["cluster", "events", "--nats", &url]).await;
    assert!(why.contains("seq 5"), "{why}");
    let why = cli_fails(&[
        "journal",
        "restore",
        "--nats",
        &url,
        "--node",
        "n7",
        "--journal-dir",
        &target_arg,
    ])
    .await;
    assert!(why.contains("no event of node n7"), "{why}");
    drop(server);
}
