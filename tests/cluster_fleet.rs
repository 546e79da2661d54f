//! A fleet on a real JetStream cluster: three `nats-server`s on loopback (a stream and buckets
//! of 3 replicas) and four daemons publishing under lease traffic. One server is SIGKILLed
//! while they publish, then every server is stopped for 10 s: nothing is lost and nothing is
//! duplicated (each node's messages in the stream are its journal, seq by seq), and
//! `pool-managerd cluster status` is the union of each node's `GET /v2/pools`.
//!
//! Needs `nats-server` (Debian's package; `.ci/run` installs it): fails under `CI=true`
//! without it, and is skipped elsewhere, saying so.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/nats.rs"]
mod nats;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{engine_sim_preload, Harness};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_pool-managerd");
const WAIT: Duration = Duration::from_secs(60);
const NODES: usize = 4;
/// How long every server stays away in the second phase.
const OUTAGE: Duration = Duration::from_secs(10);

/// A daemon of the fleet: node `id`, publishing to `urls` with 3 replicas.
async fn daemon(id: &str, urls: &str) -> Harness {
    let h = Harness::start_with(|config| {
        config.cluster.nats_url = urls.to_string();
        config.cluster.node_id = id.to_string();
        config.cluster.replicas = 3;
        config.cluster.heartbeat_ms = 1_000;
    })
    .await;
    let body = engine_sim_preload("p", None, &["--parallel", "4"]);
    let (status, answer) = h.post("/v2/pools/p/preload", body).await;
    assert_eq!(status, 200, "{id}: {answer}");
    h
}

/// Lease traffic on every daemon until `stop`: each round takes a lease and releases it.
fn traffic(
    fleet: &[Harness],
    stop: &Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>) {
    let rounds = Arc::new(AtomicU64::new(0));
    let tasks = fleet
        .iter()
        .map(|h| {
            let (http, base) = (h.http.clone(), h.base.clone());
            let (stop, rounds) = (stop.clone(), rounds.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let lease: Value = http
                        .post(format!("{base}/v2/pools/p/leases"))
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let id = lease["lease_id"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{lease}"));
                    let released = http
                        .delete(format!("{base}/v2/pools/p/leases/{id}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(released.status(), 200);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tasks, rounds)
}

/// Waits until `n` more rounds of traffic were served (the daemons go on while NATS is hurt).
async fn rounds_pass(rounds: &AtomicU64, n: u64) {
    let target = rounds.load(Ordering::Relaxed) + n;
    let deadline = Instant::now() + WAIT;
    while rounds.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "the lease traffic stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until each daemon's journal is acknowledged through its end.
async fn all_published(fleet: &[Harness]) {
    for h in fleet {
        let daemon = h.daemon.as_ref().unwrap();
        let last = daemon.handle().journal().last_seq();
        let mut published = daemon.published().expect("a publisher");
        tokio::time::timeout(WAIT, published.wait_for(|seq| *seq >= last))
            .await
            .unwrap_or_else(|_| panic!("seq {last} of {} was not published", h.base))
            .unwrap();
    }
}

/// A daemon's whole journal as `GET /v2/events` exports it, page by page.
async fn journal_events(h: &Harness) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let since = events
            .last()
            .map_or(1, |e: &Value| e["seq"].as_u64().unwrap() + 1);
        let (status, page) = h
            .get(&format!("/v2/events?since={since}&limit=10000"))
            .await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// Each node's messages in the stream are its journal, seq by seq: none lost, none twice.
async fn assert_streams_are_the_journals(fleet: &[Harness], urls: &str) {
    let messages = nats::stream_messages(urls.split(',').next().unwrap(), "POOL_EVENTS").await;
    for (i, h) in fleet.iter().enumerate() {
        let node = format!("n{i}");
        let events = journal_events(h).await;
        let mine: Vec<&nats::Message> = messages
            .iter()
            .filter(|m| m.subject.starts_with(&format!("pool.events.{node}.")))
            .collect();
        assert_eq!(mine.len(), events.len(), "{node}: one message per event");
        for (message, event) in mine.iter().zip(&events) {
            let seq = event["seq"].as_u64().unwrap();
            assert_eq!(message.id, format!("{node}:{seq}"));
            assert_eq!(&message.payload, event, "{node} seq {seq}");
        }
    }
}

/// `pool-managerd cluster status --json` through the first server.
/// `cluster status --json`, or its stderr when it failed (a replicated bucket answers 503
/// while its servers elect a leader after a restart).
fn cluster_status(url: &str) -> Result<Value, String> {
    let out = std::process::Command::new(BIN)
        .args(["cluster", "status", "--json", "--nats", url])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// `cluster status` holds every node up, with exactly the pools each serves (the statuses as
/// of their seq: the live heartbeat, not an event, is left out of both sides).
async fn assert_status_is_the_union(fleet: &[Harness], url: &str) {
    let mut want = Vec::new();
    for (i, h) in fleet.iter().enumerate() {
        let (_, pools) = h.get("/v2/pools").await;
        for mut pool in pools.as_array().unwrap().clone() {
            pool["last_heartbeat_ms"] = Value::Null;
            want.push((format!("n{i}"), pool));
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let status = match cluster_status(url) {
            Ok(status) => status,
            Err(stderr) => {
                assert!(Instant::now() < deadline, "cluster status failed: {stderr}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let got: Vec<(String, Value)> = status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                let mut pool = entry["status"].clone();
                pool["last_heartbeat_ms"] = Value::Null;
                (entry["node"].as_str().unwrap().to_string(), pool)
            })
            .collect();
        let up = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["up"] == true)
            .count();
        if got == want && up == fleet.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster status {status:#}\nwant {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_daemons_lose_nothing_when_a_server_dies_or_all_are_away() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut servers) = nats::cluster(dir.path(), 3) else {
        return;
    };
    let urls = nats::urls(&servers);
    nats::wait_jetstream(&servers[0].url()).await;
    let mut fleet = Vec::new();
    for i in 0..NODES {
        fleet.push(daemon(&format!("n{i}"), &urls).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, rounds) = traffic(&fleet, &stop);
    rounds_pass(&rounds, 40).await;

    // One server SIGKILLed while they publish: the other two keep the stream's quorum.
    servers[1].kill();
    rounds_pass(&rounds, 200).await;
    all_published(&fleet).await;
    servers[1].start();

    // Every server away for 10 s: the nodes go on serving, the backlog waits.
    for server in &mut servers {
        server.stop();
    }
    let away = Instant::now();
    while away.elapsed() < OUTAGE {
        rounds_pass(&rounds, 10).await;
    }
    for h in &fleet {
        // The outage was felt: a round of acks timed out on every node.
        assert!(
            h.metric("cluster_publish_failures_total").await >= 1.0,
            "{}",
            h.base
        );
    }
    for server in &mut servers {
        server.start();
    }
    rounds_pass(&rounds, 40).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    all_published(&fleet).await;
    assert_streams_are_the_journals(&fleet, &urls).await;
    assert_status_is_the_union(&fleet, &servers[0].url()).await;
    for h in fleet {
        h.stop().await;
    }
}
