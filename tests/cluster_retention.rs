//! Journal retention and the cluster publisher (`[cluster] nats_url` to a real `nats-server
//! -js` that is away, then back): retention keeps the events NATS has not acknowledged beyond
//! `[journal] retain_bytes` (the stream then gets every seq from 1) and drops them once they
//! are published; past `[cluster] unpublished_bytes_max` it drops them anyway, counts them in
//! `cluster_unpublished_dropped_events_total` (each seq once), and the publisher goes on after
//! the gap instead of retrying forever.
//!
//! Needs `nats-server` (Debian's package; `.ci/run` installs it): fails under `CI=true` without
//! it, and is skipped elsewhere, saying so.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/nats.rs"]
mod nats;

use std::time::{Duration, Instant};

use harness::{engine_sim_preload, Harness};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
/// Sealed segments the traffic makes before the checks (8 records each).
const SEGMENTS: u64 = 4;

/// A daemon publishing to `url` (a server that is away) with a tiny journal: segments of 8
/// records, 1 byte of retention, a snapshot every 4 events (snapshots hold nothing back), and
/// `unpublished_bytes_max` as given; with an engine-sim pool `p` ready for leases.
async fn daemon(url: &str, unpublished_bytes_max: u64) -> Harness {
    let url = url.to_string();
    let mut h = Harness::start_with(|config| {
        config.cluster.nats_url = url;
        config.cluster.node_id = "n1".to_string();
        config.cluster.unpublished_bytes_max = unpublished_bytes_max;
        config.journal.retain_bytes = 1;
        config.journal.segment_records = 8;
        config.journal.snapshot_every = 4;
    })
    .await;
    h.wait = Duration::from_secs(30);
    let body = engine_sim_preload("p", None, &["--parallel", "4"]);
    let (status, answer) = h.post("/v2/pools/p/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    h
}

fn journal(h: &Harness) -> pool_managerd::schema::PoolJournal {
    h.daemon.as_ref().unwrap().handle().journal()
}

/// One lease taken and released (two events or more).
async fn lease_cycle(h: &Harness) {
    let (status, lease) = h.post("/v2/pools/p/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");
    let path = format!("/v2/pools/p/leases/{}", lease["lease_id"].as_str().unwrap());
    assert_eq!(h.call(reqwest::Method::DELETE, &path, None).await.0, 200);
}

/// Leases until the journal has sealed at least `segments` segments in all (retained or
/// dropped: `expired_through` counts for the dropped ones), then one retention pass run to
/// its end (so that what follows sees what retention decides, not a race with it).
async fn seal_segments(h: &Harness, segments: u64) {
    let journal = journal(h);
    let mut cycles = 0;
    loop {
        let usage = journal.usage();
        let sealed_seqs = usage.last_seq - usage.tail_records;
        if sealed_seqs >= segments * 8 && usage.segments >= 2 {
            break;
        }
        assert!(cycles < 500, "{segments} segments not sealed: {usage:?}");
        lease_cycle(h).await;
        cycles += 1;
    }
    let retention = journal.clone();
    tokio::task::spawn_blocking(move || retention.apply_retention_now())
        .await
        .unwrap()
        .expect("retention runs");
}

/// The seqs retention dropped (all of them before the earliest retained one) and
/// `cluster_unpublished_dropped_events_total`, read while retention left the journal alone.
async fn dropped_and_counted(h: &Harness) -> (u64, f64) {
    loop {
        let before = journal(h).usage().expired_through;
        let counted = h.metric("cluster_unpublished_dropped_events_total").await;
        if journal(h).usage().expired_through == before {
            return (before, counted);
        }
    }
}

/// Waits until NATS acknowledged the journal's last event (as it is now).
async fn published_through_the_end(h: &Harness) -> u64 {
    let daemon = h.daemon.as_ref().unwrap();
    let last = daemon.handle().journal().last_seq();
    let mut published = daemon.published().expect("a publisher");
    let watched = published.clone();
    tokio::time::timeout(WAIT, published.wait_for(|seq| *seq >= last))
        .await
        .unwrap_or_else(|_| {
            let now = *watched.borrow();
            panic!("the journal's seq {last} was not published within {WAIT:?} (published: {now})")
        })
        .expect("the publisher runs");
    last
}

/// The stream's messages hold the seqs `first..=last` of node `n1`, each once, in order
/// (message id and payload agree).
async fn assert_stream_holds(url: &str, first: u64, last: u64) {
    let messages = nats::stream_messages(url, "POOL_EVENTS").await;
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| {
            let seq = m.payload["seq"].as_u64().unwrap();
            assert_eq!(m.id, format!("n1:{seq}"), "{m:?}");
            seq
        })
        .collect();
    let want: Vec<u64> = (first..=seqs.last().copied().unwrap_or(0)).collect();
    assert_eq!(
        seqs, want,
        "the stream holds every seq from {first}, once, in order"
    );
    assert!(
        seqs.last().is_some_and(|s| *s >= last),
        "the stream ends before seq {last}: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_events_are_held_past_retention_and_dropped_once_published() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    server.stop(); // away from the start: nothing is ever published before it is back
    let h = daemon(&url, 8 << 30).await;
    seal_segments(&h, SEGMENTS).await;

    // Retention ran past `retain_bytes = 1` and kept everything: nothing was published.
    let usage = journal(&h).usage();
    assert_eq!(
        usage.first_seq, 1,
        "unpublished events were dropped: {usage:?}"
    );
    assert!(usage.segments >= SEGMENTS, "{usage:?}");
    let (status, events) = h.get("/v2/events?since=1&limit=1").await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events[0]["seq"], 1, "{events}");
    assert_eq!(
        h.metric("cluster_unpublished_dropped_events_total").await,
        0.0
    );
    assert!(h.metric("cluster_publish_lag_events").await >= (SEGMENTS * 8) as f64);

    // Back: every seq from 1 is published.
    server.start();
    let last = published_through_the_end(&h).await;
    assert_stream_holds(&url, 1, last).await;
    assert_eq!(
        h.metric("cluster_unpublished_dropped_events_total").await,
        0.0
    );

    // Published, the segments are retention's again (its own tick; leases seal more).
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = h.get("/v2/events?since=1&limit=1").await;
        if status == 410 {
            assert_eq!(answer["code"], "HISTORY_EXPIRED", "{answer}");
            break;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(
            Instant::now() < deadline,
            "retention kept the published segments: {:?}",
            journal(&h).usage()
        );
        lease_cycle(&h).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h.metric("cluster_unpublished_dropped_events_total").await,
        0.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_retention_drops_unpublished_events_and_the_publisher_goes_on_after_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = nats::server(dir.path()) else {
        return;
    };
    let url = server.url();
    server.stop();
    let h = daemon(&url, 1).await;
    seal_segments(&h, SEGMENTS).await;

    // A cap of 1 byte: retention dropped unpublished segments anyway, and counted each seq.
    let (lost, counted) = dropped_and_counted(&h).await;
    assert!(lost > 0, "nothing dropped: {:?}", journal(&h).usage());
    assert_eq!(counted, lost as f64, "{:?}", journal(&h).usage());
    let (status, answer) = h.get("/v2/events?since=1&limit=1").await;
    assert_eq!(status, 410, "{answer}");

    // Back: the publisher finds the gap, goes on from the earliest retained seq (no retry
    // forever), and nothing is counted twice.
    server.start();
    let last = published_through_the_end(&h).await;
    assert_stream_holds(&url, lost + 1, last).await;
    assert_eq!(
        h.metric("cluster_unpublished_dropped_events_total").await,
        lost as f64
    );
    assert_eq!(h.metric("cluster_publish_lag_events").await, 0.0);
    h.stop().await;
}
