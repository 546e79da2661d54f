//! The event stream and time travel over a real socket: `GET /v2/events` (the JSON tail, the
//! live SSE stream, its resumption with no gap and no duplicate, a slow client dropped, the
//! daemon's shutdown ending streams), `GET /v2/pools?at_seq=N` against `pool-managerd replay
//! --until-seq N --json`, and `pool-managerd status` against a running daemon.
//!
//! Waits are bounded; nothing sleeps hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{config, engine_sim_preload, free_port, Harness};
use pool_journal::{Draft, JournalConfig};
use pool_managerd::core::{Event, LeaseId};
use pool_managerd::schema::PoolJournal;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
/// The daemon's bound on a full stream buffer (`SSE_SLOW_CLIENT_MS`).
const SLOW_CLIENT_MS: u64 = 5_000;

/// One SSE message as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Parses the complete frames at the front of `buffer` (drained), keep-alive comments left out.
fn parse_frames(buffer: &mut String) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let frame: String = buffer.drain(..end + 2).collect();
        let mut message = Message {
            id: None,
            event: "message".to_string(),
            data: Value::Null,
        };
        let mut data = String::new();
        let mut any = false;
        for line in frame.lines() {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            any = true;
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => message.id = value.parse().ok(),
                "event" => message.event = value.to_string(),
                "data" => data.push_str(value),
                _ => {}
            }
        }
        if any {
            message.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            out.push(message);
        }
    }
    out
}

/// A live stream read through reqwest.
struct Stream {
    response: reqwest::Response,
    buffer: String,
    ready: std::collections::VecDeque<Message>,
}

impl Stream {
    async fn open(h: &Harness, query: &str, last_event_id: Option<u64>) -> Stream {
        let mut request = h
            .http
            .get(format!("{}/v2/events{query}", h.base))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            response,
            buffer: String::new(),
            ready: Default::default(),
        }
    }

    /// The next message; `None` when the stream ended. Fails after 10 s of nothing.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(message);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("no message within 10 s")
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            self.ready.extend(parse_frames(&mut self.buffer));
        }
    }

    /// Messages until one of kind `kind` (included).
    async fn until_kind(&mut self, kind: &str) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let message = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before {kind}: {out:?}"));
            let done = message.event == kind;
            out.push(message);
            if done {
                return out;
            }
        }
    }

    /// Messages until the one with id `seq` (included).
    async fn until_seq(&mut self, seq: u64) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let message = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before seq {seq}"));
            let id = message.id;
            out.push(message);
            if id >= Some(seq) {
                return out;
            }
        }
    }
}

async fn journal_seq(h: &Harness) -> u64 {
    h.get("/health").await.1["journal_seq"].as_u64().unwrap()
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().filter_map(|m| m.id).collect()
}

fn assert_consecutive(seqs: &[u64], from: u64, to: u64) {
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(seqs, expected.as_slice(), "not exactly {from}..={to}");
}

async fn preload(h: &Harness, pool: &str) {
    let (status, body) = h
        .post(
            &format!("/v2/pools/{pool}/preload"),
            engine_sim_preload(pool, None, &["--parallel", "4"]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// One lease taken and given back: two events.
async fn lease_round_trip(h: &Harness, pool: &str) {
    let (status, lease) = h.post(&format!("/v2/pools/{pool}/leases"), json!({})).await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["lease_id"].as_str().unwrap();
    let (status, body) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/pools/{pool}/leases/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_json_tail_pages_with_since_and_limit() {
    let h = Harness::start().await;
    preload(&h, "p1").await;
    for _ in 0..3 {
        lease_round_trip(&h, "p1").await;
    }
    let last = journal_seq(&h).await;
    assert!(last >= 10, "{last}");

    let (status, all) = h.get("/v2/events").await;
    assert_eq!(status, 200);
    let all = all.as_array().unwrap().clone();
    let all_seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_consecutive(&all_seqs, 1, last);
    // The export format: the event with its kind first, the envelope's fields around it.
    assert_eq!(all[0]["event"]["kind"], "DaemonStarted");
    for envelope in &all {
        for field in ["seq", "ts_ms", "pool_id", "cause", "event"] {
            assert!(envelope.get(field).is_some(), "{field} missing: {envelope}");
        }
    }
    assert!(all.iter().any(|e| e["event"]["kind"] == "PoolReady"));

    let page = |v: Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(page(h.get("/v2/events?since=2&limit=3").await.1), [2, 3, 4]);
    // Without since: the newest `limit`.
    assert_eq!(page(h.get("/v2/events?limit=2").await.1), [last - 1, last]);
    assert_eq!(
        page(h.get(&format!("/v2/events?since={last}")).await.1),
        [last]
    );
    assert!(page(h.get(&format!("/v2/events?since={}", last + 1)).await.1).is_empty());
    // limit is clamped to 1..=10000.
    assert_eq!(page(h.get("/v2/events?since=1&limit=0").await.1), [1]);
    assert_eq!(
        page(h.get("/v2/events?since=1&limit=999999").await.1).len() as u64,
        last
    );
    let (status, body) = h.get("/v2/events?since=abc").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_delivers_a_preloads_events_as_they_happen_in_order() {
    let h = Harness::start().await;
    let before = journal_seq(&h).await;
    // Subscribed first (no resume point: the events to come), then the preload.
    let mut stream = Stream::open(&h, "", None).await;
    preload(&h, "p1").await;
    let messages = stream.until_kind("PoolReady").await;
    let ids = seqs(&messages);
    assert_consecutive(&ids, before + 1, *ids.last().unwrap());
    let kinds: Vec<&str> = messages
        .iter()
        .filter(|m| m.data["pool_id"] == "p1")
        .map(|m| m.event.as_str())
        .collect();
    let order = [
        "PreloadRequested",
        "EngineSpawned",
        "HealthCheckPassed",
        "PoolReady",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| {
            kinds
                .iter()
                .position(|x| x == k)
                .unwrap_or_else(|| panic!("{k} not streamed: {kinds:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{kinds:?}");
    // Each message is the export form of its envelope, with the seq as its id.
    for message in &messages {
        assert_eq!(message.data["seq"].as_u64(), message.id);
        assert_eq!(message.data["event"]["kind"], message.event.as_str());
    }
    // And it keeps following: a lease now is streamed too.
    lease_round_trip(&h, "p1").await;
    let next = stream.until_kind("LeaseReleased").await;
    assert_eq!(next[0].event, "LeaseGranted");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_resumes_with_no_gap_and_no_duplicate() {
    let h = Harness::start().await;
    preload(&h, "p1").await;
    let mut received: Vec<u64> = Vec::new();

    // From the start; disconnect in the middle of the history.
    let mut stream = Stream::open(&h, "?since=1", None).await;
    for _ in 0..4 {
        received.push(stream.next().await.unwrap().id.unwrap());
    }
    drop(stream);
    for _ in 0..3 {
        lease_round_trip(&h, "p1").await;
    }
    // Resume after the last id received (what a browser's EventSource sends).
    let mut stream = Stream::open(&h, "?since=1", received.last().copied()).await;
    let target = journal_seq(&h).await;
    received.extend(seqs(&stream.until_seq(target).await));
    drop(stream);
    for _ in 0..3 {
        lease_round_trip(&h, "p1").await;
    }
    // Resume with ?since= (the next seq wanted), while events keep coming.
    let resume = received.last().unwrap() + 1;
    let mut stream = Stream::open(&h, &format!("?since={resume}"), None).await;
    let producer = {
        let base = h.base.clone();
        let http = h.http.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                let lease: Value = http
                    .post(format!("{base}/v2/pools/p1/leases"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = lease["lease_id"].as_str().unwrap();
                let answer = http
                    .delete(format!("{base}/v2/pools/p1/leases/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status().as_u16(), 200);
            }
        })
    };
    producer.await.unwrap();
    let target = journal_seq(&h).await;
    received.extend(seqs(&stream.until_seq(target).await));
    assert_consecutive(&received, 1, target);

    // A resume point past the journal's end is refused, naming the last seq.
    let answer = h
        .http
        .get(format!("{}/v2/events", h.base))
        .header("accept", "text/event-stream")
        .header("last-event-id", (target + 100).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&target.to_string()),
        "{body}"
    );
    h.stop().await;
}

/// Appends `pairs` lease granted/released pairs of pool `pool` to the journal at `dir`.
fn grow_journal(dir: &Path, pool: &str, pairs: u64) {
    let (journal, _) = PoolJournal::open(JournalConfig::new(dir)).unwrap();
    let mut batch = Vec::new();
    for i in 0..pairs {
        let lease_id = LeaseId::new(&format!("history-{i}")).unwrap();
        for event in [
            Event::LeaseGranted {
                lease_id: lease_id.clone(),
            },
            Event::LeaseReleased { lease_id },
        ] {
            batch.push(Draft {
                ts_ms: 1_700_000_000_000 + i,
                pool_id: Some(pool.to_string()),
                cause: None,
                event,
            });
        }
        if batch.len() >= 1000 {
            journal.append_blocking(std::mem::take(&mut batch)).unwrap();
        }
    }
    if !batch.is_empty() {
        journal.append_blocking(batch).unwrap();
    }
    journal.close().unwrap();
}

/// Undoes HTTP/1.1 chunked transfer coding (the body of a complete response).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        body = &body[line_end + 2..];
        if size == 0 || body.len() < size {
            out.extend_from_slice(&body[..size.min(body.len())]);
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[(size + 2).min(body.len())..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_is_dropped_and_the_daemon_keeps_answering() {
    // A long history, so that the stream from seq 1 fills every buffer on its way.
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    tokio::task::spawn_blocking(move || grow_journal(&journal_dir, "history", 30_000))
        .await
        .unwrap();
    let config = config(dir.path());
    let h = Harness::start_in(
        dir,
        &config,
        Arc::new(pool_managerd::gpu::NoGpu {
            reason: "tests".to_string(),
        }),
    )
    .await;
    preload(&h, "p1").await;

    // The slow client: a small receive buffer, a request, and then no reading at all.
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(
        b"GET /v2/events?since=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();

    // Meanwhile another client's lease round trips all answer, past the slow-client bound.
    let started = Instant::now();
    let mut round_trips = 0;
    while started.elapsed() < Duration::from_millis(SLOW_CLIENT_MS + 2_000) {
        lease_round_trip(&h, "p1").await;
        round_trips += 1;
    }
    assert!(round_trips > 0);
    let last = journal_seq(&h).await;

    // Now read everything the slow client was sent: events from 1, consecutive, then the
    // dropped message naming where to resume, then the end of the response.
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut raw))
        .await
        .expect("the dropped stream did not end")
        .unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = dechunk(&raw[head_end + 4..]);
    let mut text = String::from_utf8_lossy(&body).to_string();
    let messages = parse_frames(&mut text);
    let (dropped, events) = messages.split_last().unwrap();
    assert_eq!(dropped.event, "dropped", "last message: {dropped:?}");
    let ids = seqs(events);
    assert!(!ids.is_empty());
    let delivered = *ids.last().unwrap();
    assert_consecutive(&ids, 1, delivered);
    assert!(
        delivered < last,
        "every event was delivered: the client was not slow"
    );
    assert_eq!(dropped.data["last_event_id"].as_u64(), Some(delivered));
    assert_eq!(
        dropped.data["resume_from_seq"].as_u64(),
        Some(delivered + 1)
    );
    let reason = dropped.data["reason"].as_str().unwrap();
    assert!(reason.contains("slow client"), "{reason}");
    assert!(reason.contains("Last-Event-ID"), "{reason}");
    // Counted (before its last message went out).
    let metrics = h.scrape().await;
    assert!(
        metrics.contains("\nsse_clients_dropped_total 1\n"),
        "{metrics}"
    );

    // It resumes where it was dropped, with no gap.
    let mut stream = Stream::open(&h, "", Some(delivered)).await;
    let first = stream.next().await.unwrap();
    assert_eq!(first.id, Some(delivered + 1));
    drop(stream);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemons_shutdown_ends_its_streams() {
    let mut h = Harness::start().await;
    let last = journal_seq(&h).await;
    let mut stream = Stream::open(&h, "?since=1", None).await;
    assert_consecutive(&seqs(&stream.until_seq(last).await), 1, last);
    let daemon = h.daemon.take().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(daemon.shutdown("test"));
    let mut tail = Vec::new();
    while let Some(message) = stream.next().await {
        tail.push(message);
    }
    shutdown.await.unwrap();
    // Well within the server's 10 s wait for open responses: the stream did not hold it.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let end = tail.last().expect("a last message");
    assert_eq!(end.event, "shutdown", "{tail:?}");
    let resume = end.data["resume_from_seq"].as_u64().unwrap();
    let streamed = seqs(&tail);
    assert_eq!(resume, streamed.last().copied().unwrap_or(last) + 1);
}

/// `pool-managerd <args>` with a clean environment for the client's settings.
async fn cli(args: Vec<String>, token: Option<&str>) -> Output {
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(DAEMON);
        command
            .args(&args)
            .env_remove("LLORCH_API_TOKEN")
            .env_remove("POOL_MANAGERD_ADDR")
            .env_remove("POOL_MANAGERD_JOURNAL_DIR")
            .env("RUST_LOG", "warn");
        if let Some(token) = token {
            command.env("LLORCH_API_TOKEN", token);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_list_at_a_seq_is_what_the_replay_command_prints() {
    // Snapshots every 7 events: replays start from the nearest one.
    let h = Harness::start_with(|config| config.journal.snapshot_every = 7).await;
    preload(&h, "p1").await;
    preload(&h, "p2").await;
    for _ in 0..4 {
        lease_round_trip(&h, "p1").await;
    }
    let (status, _) = h.post("/v2/pools/p2/stop", json!({})).await;
    assert_eq!(status, 202);
    h.wait_pool("p2", "stopped", |s| s["pid"].is_null()).await;
    lease_round_trip(&h, "p1").await;
    let last = journal_seq(&h).await;

    let mut at = std::collections::BTreeMap::new();
    for n in [0, 1, 2, 5, 7, last / 2, last - 3, last - 1, last] {
        let (status, body) = h.get(&format!("/v2/pools?at_seq={n}")).await;
        assert_eq!(status, 200, "at_seq={n}: {body}");
        at.insert(n, body);
    }
    assert_eq!(at[&0], json!([]));
    // Before the stop, p2 is shown as it was: with its engine.
    let p2_then = at[&(last - 3)]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool_id"] == "p2")
        .cloned()
        .unwrap();
    assert!(p2_then["pid"].is_u64(), "{p2_then}");
    let p2_now = at[&last]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool_id"] == "p2")
        .cloned()
        .unwrap();
    assert_eq!(p2_now["pid"], Value::Null, "{p2_now}");
    let (status, body) = h.get(&format!("/v2/pools?at_seq={}", last + 1)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST");
    assert!(
        body["error"].as_str().unwrap().contains(&last.to_string()),
        "{body}"
    );
    let (status, body) = h.get("/v2/pools?at_seq=x").await;
    assert_eq!(status, 400, "{body}");

    let journal_dir = h.dir.path().join("journal");
    let journal = journal_dir.display().to_string();
    let mut h = h;
    let daemon = h.daemon.take().unwrap();
    daemon.shutdown("test").await;
    for (n, api) in &at {
        let out = cli(
            vec![
                "replay".into(),
                "--journal-dir".into(),
                journal.clone(),
                "--until-seq".into(),
                n.to_string(),
                "--json".into(),
            ],
            None,
        )
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(&printed["pools"], api, "at_seq={n}");
    }
    // Keep the directory until the CLI ran.
    drop(h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_prints_the_table_the_json_and_follows_events() {
    let h = Harness::start().await;
    preload(&h, "p1").await;
    let addr = h.base.trim_start_matches("http://").to_string();

    let out = cli(vec!["status".into(), "--addr".into(), addr.clone()], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for column in [
        "POOL",
        "PHASE",
        "READY",
        "PID",
        "SLOTS",
        "LEASES",
        "RESTARTS",
        "BREAKER",
        "LAST_ERROR",
        "WHY",
    ] {
        assert!(table.contains(column), "{column} missing:\n{table}");
    }
    let row = table.lines().find(|l| l.starts_with("p1 ")).expect(&table);
    assert!(row.contains("ready") && row.contains("true"), "{row}");
    // A ready pool needs no why.
    assert!(row.trim_end().ends_with(" -"), "{row}");

    let out = cli(
        vec![
            "status".into(),
            "--json".into(),
            "--addr".into(),
            format!("http://{addr}"),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, listed) = h.get("/v2/pools").await;
    let ids = |v: &Value| -> Vec<(Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| (p["pool_id"].clone(), p["phase"].clone()))
            .collect()
    };
    assert_eq!(ids(&printed), ids(&listed));

    // --watch: the table, then one line per event as they come.
    let watch = tokio::spawn(cli(
        vec![
            "status".into(),
            "--addr".into(),
            addr.clone(),
            "--watch".into(),
            "--max-events".into(),
            "4".into(),
        ],
        None,
    ));
    // Events keep coming until it has printed 4 (whenever it subscribed: it resumes from the
    // seq it read before its table, so none is lost).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watch.is_finished() {
        assert!(
            Instant::now() < deadline,
            "status --watch did not stop after 4 events"
        );
        lease_round_trip(&h, "p1").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = watch.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("PHASE"), "{printed}");
    // One timeline line per event (`#<seq> <time> <pool> <Kind> ...`), consecutive seqs.
    let lines: Vec<&str> = printed.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(lines.len(), 4, "{printed}");
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l[1..].split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_consecutive(&seqs, seqs[0], seqs[0] + 3);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("LeaseGranted") || l.contains("LeaseReleased")),
        "{printed}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_says_what_to_do_when_the_daemon_is_unreachable_or_wants_a_token() {
    let port = free_port();
    let out = cli(
        vec![
            "status".into(),
            "--addr".into(),
            format!("127.0.0.1:{port}"),
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!("cannot reach pool-managerd at 127.0.0.1:{port}")),
        "{said}"
    );
    assert!(said.contains("pool-managerd serve"), "{said}");

    let h = Harness::start_with(|config| config.api_token = Some("s3cret".to_string())).await;
    let addr = h.base.trim_start_matches("http://").to_string();
    let out = cli(vec!["status".into(), "--addr".into(), addr.clone()], None).await;
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("401") && said.contains("LLORCH_API_TOKEN"),
        "{said}"
    );
    let out = cli(
        vec!["status".into(), "--addr".into(), addr.clone()],
        Some("wrong"),
    )
    .await;
    assert!(
        text(&out.stderr).contains("not the daemon's"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(vec!["status".into(), "--addr".into(), addr], Some("s3cret")).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(no pools)"));
    // The event routes take the token like the others.
    let (status, _) = h.get("/v2/events").await;
    assert_eq!(status, 401);
    h.stop().await;
}
