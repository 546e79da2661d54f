//! A fleet on one machine: N daemons (`pool-managerd serve --dev`, real children, each with
//! one engine-sim pool and C lease clients) publish into one 3-server JetStream cluster on
//! loopback (stream and buckets of 3 replicas), while a consumer follows the stream and the
//! registry bucket. Figures, per N:
//!
//! - the journals' durable rate (events committed per second over all nodes, from
//!   `journal_last_seq`) and the publishers' rate (events acknowledged by the stream per
//!   second, from the cursor advance), the largest backlog seen (`cluster_publish_lag_events`,
//!   sampled every 100 ms) and how long the backlog took to drain once the traffic stopped;
//! - event latency, the event's time (`ts_ms`, set just before its commit) to its delivery to
//!   a stream consumer (an ordered push consumer of `POOL_EVENTS`): p50, p99, max, in ms;
//! - the KV view's staleness: the event's time to the registry bucket's update that carries
//!   its seq (the mirror writes at most one round per `registry_every_ms`, 250 ms: only the
//!   seqs written are measured, so the view can lag an event by up to that bound more): p50,
//!   p99, max.
//!
//! `cargo bench --bench fleet`: N = 1, 4, 16, C = 2, 15 s of traffic each; `cargo test
//! --bench fleet` (CI): N = 1, 3 s. `POOL_BENCH_FLEET` (e.g. `1,4`), `POOL_BENCH_FLEET_SECS`
//! and `POOL_BENCH_FLEET_CLIENTS` override them.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/support/nats.rs"]
mod nats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::serve::{Serve, ServeCommand};
use futures::StreamExt as _;
use serde_json::{json, Value};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// p50, p99 and max of `samples` (sorted here), in ms.
fn percentiles(samples: &mut [u64]) -> String {
    if samples.is_empty() {
        return "no samples".to_string();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1],
        samples.len()
    )
}

/// A daemon of the fleet, with its engine-sim pool `p` ready.
async fn start_node(dir: &std::path::Path, i: usize, urls: &str, http: &reqwest::Client) -> Serve {
    let home = dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("pool-managerd.toml");
    std::fs::write(
        &config,
        format!(
            "stop_engines_on_shutdown = true\n[health]\npreload_interval_ms = 50\n\
             [cluster]\nnats_url = \"{urls}\"\nnode_id = \"n{i}\"\nreplicas = 3\n"
        ),
    )
    .unwrap();
    let serve = ServeCommand::new(DAEMON, &home)
        .dev()
        .config(&config)
        .start();
    let port = common::free_port();
    let body = json!({ "prepared": {
        "binary_path": ENGINE_SIM, "flags": ["--port", port.to_string(), "--parallel", "8"],
        "host": "127.0.0.1", "port": port, "model_path": "/models/m.gguf",
        "engine_version": "sim-1", "pool_id": "p", "replica_id": "r0",
    }});
    let answer = http
        .post(format!("{}/v2/pools/p/preload", serve.base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    serve
}

/// A gauge of a daemon's scrape.
async fn gauge(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} at {base}"))
        .parse()
        .unwrap()
}

/// Sums a gauge over the fleet.
async fn fleet_sum(http: &reqwest::Client, bases: &[String], name: &str) -> f64 {
    let mut sum = 0.0;
    for base in bases {
        sum += gauge(http, base, name).await;
    }
    sum
}

/// The event times seen by the stream consumer, by (node, seq), and each latency.
#[derive(Default)]
struct Seen {
    ts: HashMap<(String, u64), u64>,
    latencies: Vec<u64>,
    /// Each registry update: (node, seq, when it arrived); matched with the event's time at
    /// the end (an update may arrive before its event: the mirror does not wait for the stream).
    kv: Vec<(String, u64, u64)>,
}

/// Follows the stream (new messages only) and records each event's latency.
async fn consume_stream(
    url: String,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    use async_nats::jetstream::consumer::push::OrderedConfig;
    use async_nats::jetstream::consumer::DeliverPolicy;
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("POOL_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let _ = ready.send(());
    while let Some(Ok(message)) = messages.next().await {
        let at = now_ms();
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        let node = message
            .subject
            .split('.')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let (seq, ts) = (
            event["seq"].as_u64().unwrap(),
            event["ts_ms"].as_u64().unwrap(),
        );
        let mut seen = seen.lock().unwrap();
        seen.latencies.push(at.saturating_sub(ts));
        seen.ts.insert((node, seq), ts);
    }
}

/// Follows the registry bucket and records each update's arrival; says `ready` once it
/// watches. The nodes make the bucket with their first registry write, which may come after
/// this starts: it is awaited, bounded.
async fn consume_kv(url: String, seen: Arc<Mutex<Seen>>, ready: tokio::sync::oneshot::Sender<()>) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let since = Instant::now();
    let bucket = loop {
        match js.get_key_value("POOL_REGISTRY").await {
            Ok(bucket) => break bucket,
            Err(_) if since.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the registry bucket POOL_REGISTRY did not appear within 30 s: {e}"),
        }
    };
    let mut watch = bucket.watch_all().await.unwrap();
    let _ = ready.send(());
    while let Some(Ok(entry)) = watch.next().await {
        let at = now_ms();
        let Ok(value) = serde_json::from_slice::<Value>(&entry.value) else {
            continue;
        };
        let node = value["node"].as_str().unwrap_or_default().to_string();
        let seq = value["seq"].as_u64().unwrap_or(0);
        seen.lock().unwrap().kv.push((node, seq, at));
    }
}

/// Lease round trips on every node until `stop`.
fn traffic(
    http: &reqwest::Client,
    bases: &[String],
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for base in bases {
        for _ in 0..clients {
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
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
                    let path = format!("{base}/v2/pools/p/leases/{id}");
                    assert_eq!(http.delete(path).send().await.unwrap().status(), 200);
                }
            }));
        }
    }
    tasks
}

async fn run(nodes: usize, clients: usize, secs: u64, http: &reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = nats::cluster(dir.path(), 3).expect("nats-server (Debian package) is needed");
    let urls = nats::urls(&servers);
    nats::wait_jetstream(&servers[0].url()).await;
    let mut fleet = Vec::new();
    for i in 0..nodes {
        fleet.push(start_node(dir.path(), i, &urls, http).await);
    }
    let bases: Vec<String> = fleet.iter().map(Serve::base).collect();
    // Everything so far published: the measure starts from an empty backlog.
    while fleet_sum(http, &bases, "cluster_publish_lag_events").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready, started) = tokio::sync::oneshot::channel();
    let stream_task = tokio::spawn(consume_stream(servers[0].url(), seen.clone(), ready));
    started.await.unwrap();
    let (ready, watching) = tokio::sync::oneshot::channel();
    let kv_task = tokio::spawn(consume_kv(servers[0].url(), seen.clone(), ready));
    watching
        .await
        .expect("the registry bucket's watcher ended before it watched");

    let committed_before = fleet_sum(http, &bases, "journal_last_seq").await;
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let tasks = traffic(http, &bases, clients, &stop);
    let mut lag_max = 0.0f64;
    while began.elapsed() < Duration::from_secs(secs) {
        lag_max = lag_max.max(fleet_sum(http, &bases, "cluster_publish_lag_events").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let traffic_secs = began.elapsed().as_secs_f64();
    let committed = fleet_sum(http, &bases, "journal_last_seq").await - committed_before;
    let stopped = Instant::now();
    while fleet_sum(http, &bases, "cluster_publish_lag_events").await > 0.0 {
        assert!(
            stopped.elapsed() < Duration::from_secs(120),
            "the backlog did not drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = stopped.elapsed();
    let published_secs = traffic_secs + drain.as_secs_f64();
    // The consumer has every event once the stream has them all (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    while (seen.lock().unwrap().latencies.len() as f64) < committed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream_task.abort();
    kv_task.abort();
    let _ = stream_task.await;
    let _ = kv_task.await;
    let mut seen = Arc::try_unwrap(seen)
        .ok()
        .expect("consumers stopped")
        .into_inner()
        .unwrap();
    println!(
        "fleet N={nodes} (C={clients} clients each, {traffic_secs:.1} s of traffic): journals \
         {:.0} events/s durable; publishers {:.0} events/s ({:.2}x); backlog max {lag_max:.0} \
         events, drained {:.0} ms after the traffic; consumer got {} of {committed:.0} events",
        committed / traffic_secs,
        committed / published_secs,
        (committed / published_secs) / (committed / traffic_secs),
        drain.as_secs_f64() * 1000.0,
        seen.latencies.len(),
    );
    let client = async_nats::connect(servers[0].url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("POOL_EVENTS")
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    println!(
        "  stream: {} messages, {} bytes ({} bytes per event, one replica)",
        state.messages,
        state.bytes,
        state.bytes / state.messages.max(1)
    );
    println!(
        "  event time -> stream consumer: {}",
        percentiles(&mut seen.latencies)
    );
    let mut staleness: Vec<u64> = seen
        .kv
        .iter()
        .filter_map(|(node, seq, at)| {
            let ts = seen.ts.get(&(node.clone(), *seq))?;
            Some(at.saturating_sub(*ts))
        })
        .collect();
    println!(
        "  event time -> registry bucket: {}",
        percentiles(&mut staleness)
    );
    drop(fleet);
    drain_rate(dir.path(), &urls, http).await;
    for server in &mut servers {
        server.stop();
    }
}

/// The publisher's own rate on a backlog: the stream deleted, node 0 restarted (its engines
/// stopped) without its cursor, so that its whole journal is a backlog; the time from its
/// first `/health` answer to an empty backlog.
async fn drain_rate(dir: &std::path::Path, urls: &str, http: &reqwest::Client) {
    let home = dir.join("node-0");
    let config = home.join("pool-managerd.toml");
    let first = urls.split(',').next().unwrap();
    let client = async_nats::connect(first).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream("POOL_EVENTS").await.unwrap();
    std::fs::remove_file(home.join("runtime/cluster-POOL_EVENTS.cursor")).unwrap();
    let serve = ServeCommand::new(DAEMON, &home)
        .dev()
        .config(&config)
        .start();
    let began = Instant::now();
    let base = serve.base();
    while gauge(http, &base, "cluster_publish_lag_events").await > 0.0 {
        assert!(began.elapsed() < Duration::from_secs(300), "no drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = began.elapsed().as_secs_f64();
    let events = gauge(http, &base, "journal_last_seq").await;
    println!(
        "  backlog drain (node 0's whole journal into an empty stream): {events:.0} events in \
         {:.0} ms = {:.0} events/s",
        took * 1000.0,
        events / took
    );
}

fn main() {
    let measured = std::env::args().any(|arg| arg == "--bench");
    let sizes = env_or("POOL_BENCH_FLEET", if measured { "1,4,16" } else { "1" });
    let secs: u64 = env_or("POOL_BENCH_FLEET_SECS", if measured { "15" } else { "3" })
        .parse()
        .unwrap();
    let clients: usize = env_or("POOL_BENCH_FLEET_CLIENTS", "2").parse().unwrap();
    if !nats::require() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for nodes in sizes.split(',').map(|n| n.trim().parse::<usize>().unwrap()) {
        runtime.block_on(run(nodes, clients, secs, &http));
    }
}
