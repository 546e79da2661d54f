//! The journal published to a real NATS JetStream server (`nats-server -js` on a loopback
//! port, a child of the test): each event of the node's journal is in the stream once, in seq
//! order, on its node's and pool's subject, with `Nats-Msg-Id = <node>:<seq>` and the journal's
//! export form as its payload; a daemon restarted over the same directories resumes from its
//! cursor with no gap and no duplicate.
//!
//! Needs `nats-server` (Debian's package; `.ci/run` installs it): fails under `CI=true` without
//! it, and is skipped elsewhere, saying so.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/nats.rs"]
mod nats;

use std::time::Duration;

use harness::{engine_sim_preload, Harness};
use nats::Message;
use serde_json::{json, Value};

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

/// The journal's events as the API exports them, oldest first.
async fn journal_events(h: &Harness) -> Vec<Value> {
    let (status, events) = h.get("/v2/events?since=1&limit=1000").await;
    assert_eq!(status, 200, "{events}");
    events.as_array().unwrap().clone()
}

/// The stream holds the journal, seq by seq: one message per event, in order, each on its
/// subject with its id and the exported event as its payload.
fn assert_stream_is_the_journal(messages: &[Message], events: &[Value]) {
    assert_eq!(messages.len(), events.len(), "one message per event");
    for (
        Message {
            subject,
            id,
            payload,
        },
        event,
    ) in messages.iter().zip(events)
    {
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(id, &format!("n1:{seq}"), "{subject}");
        let pool = event["pool_id"].as_str().map(|p| p.replace('.', "~"));
        let want = format!("pool.events.n1.{}", pool.as_deref().unwrap_or("_node"));
        assert_eq!(subject, &want, "seq {seq}");
        assert_eq!(payload, event, "seq {seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_in_the_stream_once_in_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let mut h = Harness::start_with(|config| {
        config.cluster.nats_url = url.clone();
        config.cluster.node_id = "n1".to_string();
    })
    .await;
    // A pool id with a dot: one subject token all the same.
    let body = engine_sim_preload("chat.a", None, &["--parallel", "2"]);
    let (status, answer) = h.post("/v2/pools/chat.a/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let (status, lease) = h.post("/v2/pools/chat.a/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");
    let last = published_through_the_end(&h).await;
    assert!(last >= 5, "a start, a preload and a lease: {last} events");
    assert_stream_is_the_journal(
        &nats::stream_messages(&url, "POOL_EVENTS").await,
        &journal_events(&h).await,
    );

    // Restarted over the same directories (the harness stops engines at shutdown): it
    // resumes after its cursor.
    h.restart().await;
    let after = published_through_the_end(&h).await;
    assert!(
        after >= last + 2,
        "the daemon's stop and start were journaled"
    );
    assert_stream_is_the_journal(
        &nats::stream_messages(&url, "POOL_EVENTS").await,
        &journal_events(&h).await,
    );
    // A clean stop publishes its own events before the journal closes: the stream ends with
    // `DaemonStopped`, after the journal's last seq before the stop.
    let before = h.daemon.as_ref().unwrap().handle().journal().last_seq();
    h.stop().await;
    let messages = nats::stream_messages(&url, "POOL_EVENTS").await;
    let last = messages.last().unwrap();
    assert_eq!(last.payload["event"]["kind"], "DaemonStopped", "{last:?}");
    assert!(last.payload["seq"].as_u64().unwrap() > before);
}

/// Waits until the gauge `name` satisfies `check`.
async fn gauge_becomes(h: &Harness, name: &str, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = h.metric(name).await;
        if check(value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_away_delays_publishing_and_the_backlog_drains_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let h = Harness::start_with(|config| {
        config.cluster.nats_url = url.clone();
        config.cluster.node_id = "n1".to_string();
    })
    .await;
    let body = engine_sim_preload("p1", None, &["--parallel", "4"]);
    assert_eq!(h.post("/v2/pools/p1/preload", body).await.0, 200);
    published_through_the_end(&h).await;
    gauge_becomes(&h, "cluster_connected", |v| v == 1.0).await;
    assert_eq!(h.metric("cluster_publish_lag_events").await, 0.0);

    server.stop(); // SIGTERM: the server is away
    gauge_becomes(&h, "cluster_connected", |v| v == 0.0).await;
    // The node never waits on NATS: every change is answered, and the backlog grows.
    for _ in 0..10 {
        let (status, lease) = h.post("/v2/pools/p1/leases", json!({})).await;
        assert_eq!(status, 201, "{lease}");
        let path = format!(
            "/v2/pools/p1/leases/{}",
            lease["lease_id"].as_str().unwrap()
        );
        assert_eq!(h.call(reqwest::Method::DELETE, &path, None).await.0, 200);
    }
    assert!(h.metric("cluster_publish_lag_events").await >= 20.0);
    // The publisher gave up on a round (its acks timed out) and keeps trying.
    gauge_becomes(&h, "cluster_publish_failures_total", |v| v >= 1.0).await;

    server.start();
    published_through_the_end(&h).await;
    assert_stream_is_the_journal(
        &nats::stream_messages(&url, "POOL_EVENTS").await,
        &journal_events(&h).await,
    );
    assert_eq!(h.metric("cluster_publish_lag_events").await, 0.0);
    h.stop().await;
}

/// The fleet as the key-value buckets hold it.
async fn read_fleet(url: &str) -> pool_managerd::cluster::fleet::Fleet {
    let access = pool_managerd::cluster::connect::Access::default();
    let reader = pool_managerd::cluster::fleet::FleetReader::open(
        url,
        &access,
        "POOL_REGISTRY",
        "POOL_NODES",
    )
    .await
    .unwrap();
    reader.read().await.unwrap()
}

/// Waits until the fleet satisfies `check`.
async fn fleet_becomes(
    url: &str,
    what: &str,
    check: impl Fn(&pool_managerd::cluster::fleet::Fleet) -> bool,
) -> pool_managerd::cluster::fleet::Fleet {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let fleet = read_fleet(url).await;
        if check(&fleet) {
            return fleet;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {fleet:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pools as `GET /v2/pools` answers, without the live heartbeat (the bucket holds the
/// status as of its seq; probe successes are not events).
async fn pools_without_heartbeat(h: &Harness) -> Vec<pool_core::PoolStatus> {
    let (status, pools) = h.get("/v2/pools").await;
    assert_eq!(status, 200, "{pools}");
    let mut pools: Vec<pool_core::PoolStatus> = serde_json::from_value(pools).unwrap();
    for pool in &mut pools {
        pool.last_heartbeat_ms = None;
    }
    pools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_and_the_heartbeat_are_in_their_buckets_and_a_stopped_node_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let h = Harness::start_with(|config| {
        config.cluster.nats_url = url.clone();
        config.cluster.node_id = "gpu.7".to_string();
        config.cluster.heartbeat_ms = 1_000;
    })
    .await;
    for pool in ["a.1", "b"] {
        let body = engine_sim_preload(pool, None, &["--parallel", "2"]);
        assert_eq!(
            h.post(&format!("/v2/pools/{pool}/preload"), body).await.0,
            200
        );
    }
    let (status, lease) = h.post("/v2/pools/b/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");
    let want = pools_without_heartbeat(&h).await;
    let fleet = fleet_becomes(&url, "both pools at their last seq", |fleet| {
        let mut got: Vec<_> = fleet.pools.iter().map(|e| e.status.clone()).collect();
        for pool in &mut got {
            pool.last_heartbeat_ms = None;
        }
        let beat = fleet.nodes.get("gpu.7").map(|seen| seen.beat.pools);
        got == want && beat == Some(2)
    })
    .await;
    assert!(fleet
        .pools
        .iter()
        .all(|e| e.node == "gpu.7" && e.seq == e.status.last_seq));
    assert_eq!(fleet.nodes["gpu.7"].beat.heartbeat_ms, 1_000);

    // A pool that goes away leaves the bucket.
    assert_eq!(
        h.call(reqwest::Method::DELETE, "/v2/pools/a.1", None)
            .await
            .0,
        200
    );
    fleet_becomes(&url, "a.1 deleted", |fleet| {
        fleet
            .pools
            .iter()
            .all(|e| e.status.pool_id.as_str() != "a.1")
    })
    .await;

    // A clean stop takes the node out of the heartbeats at once; its pools stay, shown down.
    h.stop().await;
    let fleet = read_fleet(&url).await;
    assert!(!fleet.nodes.contains_key("gpu.7"), "{fleet:#?}");
    assert_eq!(fleet.node_ids(), vec!["gpu.7".to_string()]);
}

/// `pool-managerd cluster status --json` through `url`.
fn cluster_status(url: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pool-managerd"))
        .args(["cluster", "status", "--json", "--nats", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether `node` is up in `cluster status`.
fn node_up(status: &Value, node: &str) -> Option<bool> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .map(|n| n["up"] == true)
}

/// A sample of a `serve`'s `GET /metrics`, 0 while it does not answer.
async fn served_metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_sigkilled_while_publishing_resumes_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    let config = dir.path().join("pool-managerd.toml");
    std::fs::write(
        &config,
        format!(
            "stop_engines_on_shutdown = true\n[health]\npreload_interval_ms = 50\n\
             [cluster]\nnats_url = \"{url}\"\nnode_id = \"n1\"\nheartbeat_ms = 1000\n"
        ),
    )
    .unwrap();
    let serve = |port| {
        nats::process::ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_pool-managerd"))
                .args(["serve", "--dev", "--config"])
                .arg(&config)
                .args(["--addr", &format!("127.0.0.1:{port}")])
                .arg("--runtime-dir")
                .arg(dir.path().join("runtime"))
                .arg("--journal-dir")
                .arg(dir.path().join("journal"))
                .env_remove("LLORCH_API_TOKEN")
                .stdin(std::process::Stdio::null())
                .stderr(
                    std::fs::File::create(dir.path().join(format!("serve-{port}.log"))).unwrap(),
                )
                .spawn()
                .unwrap(),
        )
    };
    let port = nats::process::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut daemon = serve(port);
    let deadline = std::time::Instant::now() + WAIT;
    while served_metric(&http, &base, "cluster_publish_lag_events")
        .await
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "serve did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = engine_sim_preload("p", None, &["--parallel", "4"]);
    let preload = http
        .post(format!("{base}/v2/pools/p/preload"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(preload.status(), 200, "{}", preload.text().await.unwrap());
    await_node_up(&url, "n1").await;

    // Lease traffic, and a SIGKILL once a few hundred events were published meanwhile.
    let traffic = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                let Ok(lease) = http
                    .post(format!("{base}/v2/pools/p/leases"))
                    .json(&json!({}))
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(lease) = lease.json::<Value>().await else {
                    return;
                };
                let Some(id) = lease["lease_id"].as_str() else {
                    return;
                };
                if http
                    .delete(format!("{base}/v2/pools/p/leases/{id}"))
                    .send()
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let cursor = dir.path().join("runtime/cluster-POOL_EVENTS.cursor");
    let published = || pool_managerd::cluster::read_cursor(&cursor).unwrap_or(0);
    let deadline = std::time::Instant::now() + WAIT;
    while published() < 300 {
        assert!(std::time::Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    traffic.await.unwrap();

    // Its heartbeat expires: the fleet shows it down.
    let deadline = std::time::Instant::now() + WAIT;
    while node_up(&cluster_status(&url), "n1") != Some(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "n1 still up after a SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let _daemon = serve(port);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let lag = served_metric(&http, &base, "cluster_publish_lag_events").await;
        let (status, events) = match http
            .get(format!("{base}/v2/events?since=1&limit=100000"))
            .send()
            .await
        {
            Ok(answer) => (
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap_or_default(),
            ),
            Err(_) => (0, Value::Null),
        };
        if lag == Some(0.0) && status == 200 {
            let events = events.as_array().unwrap().clone();
            let messages = nats::stream_messages(&url, "POOL_EVENTS").await;
            if messages.len() == events.len() {
                assert_stream_is_the_journal(&messages, &events);
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not catch up: lag {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    await_node_up(&url, "n1").await;
}

/// Waits (bounded) until `node` is up in `cluster status`: its heartbeat is written by a task
/// of its own, which a loaded machine may run a beat late.
async fn await_node_up(url: &str, node: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = cluster_status(url);
        if node_up(&status, node) == Some(true) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node} is not up in cluster status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
