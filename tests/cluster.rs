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
    for (Message { subject, id, payload }, event) in messages.iter().zip(events) {
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
    assert_stream_is_the_journal(&nats::stream_messages(&url, "POOL_EVENTS").await, &journal_events(&h).await);

    // Restarted over the same directories (the harness stops engines at shutdown): it
    // resumes after its cursor.
    h.restart().await;
    let after = published_through_the_end(&h).await;
    assert!(
        after >= last + 2,
        "the daemon's stop and start were journaled"
    );
    assert_stream_is_the_journal(&nats::stream_messages(&url, "POOL_EVENTS").await, &journal_events(&h).await);
    h.stop().await;
}

/// A gauge of a scrape of `GET /metrics`.
async fn gauge(h: &Harness, name: &str) -> f64 {
    let response = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the scrape:\n{text}"))
        .parse()
        .unwrap()
}

/// Waits until the gauge `name` satisfies `check`.
async fn gauge_becomes(h: &Harness, name: &str, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = gauge(h, name).await;
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
    assert_eq!(gauge(&h, "cluster_publish_lag_events").await, 0.0);

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
    assert!(gauge(&h, "cluster_publish_lag_events").await >= 20.0);
    // The publisher gave up on a round (its acks timed out) and keeps trying.
    gauge_becomes(&h, "cluster_publish_failures_total", |v| v >= 1.0).await;

    server.start();
    published_through_the_end(&h).await;
    assert_stream_is_the_journal(&nats::stream_messages(&url, "POOL_EVENTS").await, &journal_events(&h).await);
    assert_eq!(gauge(&h, "cluster_publish_lag_events").await, 0.0);
    h.stop().await;
}
