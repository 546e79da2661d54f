//! Supervision state survives a SIGKILL of the daemon (issue 5, "Durability across daemon
//! restarts"): the real `pool-managerd serve` binary runs as a child process of the test with
//! a real journal, real engine-sim engines, and is killed with SIGKILL while a pool is in
//! backoff, while its breaker is open, and while its engine is ready. After a restart over the
//! same directories the registry shows the same state, the next spawn happens no earlier than
//! what the journal recorded, and no pool ever has two engines (checked in the journal and by
//! sampling `/proc` from a thread of the test).
//!
//! Waits poll the API with a bounded deadline; nothing sleeps hoping that something happened.
//! Every daemon and engine a test started is SIGKILLed by a drop guard, and each test checks
//! at its end that none survived.

#[path = "support/process.rs"]
mod process;
#[path = "support/serve.rs"]
mod serve;

use serve::{Serve, ServeCommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use process::free_port;

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

/// Fast policies: the first backoff (the second restart; the first is immediate) 1.5 s, long
/// enough to kill the daemon inside it; breaker after 3 consecutive failures, open for 2 s.
const FAST_POLICY: &str = r#"
stop_engines_on_shutdown = false

[health]
preload_interval_ms = 50
preload_timeout_ms = 5000
ready_interval_ms = 200

[stop]
grace_ms = 500

[backoff]
initial_ms = 1500
min_ms = 100
max_ms = 4000
jitter = 0.1

[breaker]
failure_threshold = 3
open_ms = 2000
close_after_stable_ms = 500
"#;

/// Fields of `GET /v2/pools/{id}` that are not journaled (probe heartbeats are overlaid by
/// the registry) and so may differ across a restart.
const VOLATILE_FIELDS: &[&str] = &["last_heartbeat_ms"];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_millis() as u64
}

/// `/proc/<pid>/stat`'s state letter is not Z (zombie) or X (dead).
fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Live engine-sim processes whose command line has `--port <port>`.
fn engine_pids(port: u16) -> Vec<u64> {
    let port = port.to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let is_sim = args
            .first()
            .is_some_and(|a| a.ends_with(b"engine-sim") || *a == ENGINE_SIM.as_bytes());
        let has_port = args
            .windows(2)
            .any(|w| w[0] == b"--port" && w[1] == port.as_bytes());
        if is_sim && has_port && pid_alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Samples `/proc` every few ms: the most engines alive at once for the port, and when each
/// engine pid was first seen (wall clock, ms since the epoch).
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<SamplerReport>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default, Clone)]
struct SamplerReport {
    max_alive: usize,
    /// When more than one was alive: the pids.
    overlap: Vec<Vec<u64>>,
    first_seen_ms: BTreeMap<u64, u64>,
    samples: u64,
}

impl Sampler {
    fn start(port: u16) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(SamplerReport::default()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let pids = engine_pids(port);
                    let at = now_ms();
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.samples += 1;
                        seen.max_alive = seen.max_alive.max(pids.len());
                        if pids.len() > 1 {
                            seen.overlap.push(pids.clone());
                        }
                        for pid in pids {
                            seen.first_seen_ms.entry(pid).or_insert(at);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn report(&self) -> SamplerReport {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One test's daemon (a child process) over one pair of runtime/journal directories, and the
/// engine ports it was given. Drop SIGKILLs the daemon and every engine of those ports.
struct Harness {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Serve>,
    starts: u32,
    base: String,
    http: reqwest::Client,
    engine_ports: Vec<u16>,
}

impl Harness {
    async fn start(policy: &str) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("pool-managerd.toml");
        std::fs::write(&config, policy).expect("write the config");
        let mut h = Harness {
            dir,
            config,
            child: None,
            starts: 0,
            base: String::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("http client"),
            engine_ports: Vec::new(),
        };
        h.spawn_daemon().await;
        h
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("daemon-{n}.log"))
    }

    /// Starts `serve` over this harness's directories and waits (10 s at most) for `/health`;
    /// picks another port if the one chosen was taken meanwhile.
    async fn spawn_daemon(&mut self) {
        assert!(self.child.is_none(), "a daemon is already running");
        for _try in 0..5 {
            self.starts += 1;
            let log_path = self.log_path(self.starts);
            let serve = ServeCommand::new(DAEMON, self.dir.path())
                .dev()
                .config(&self.config)
                .log_to(log_path.clone())
                .spawn();
            self.base = serve.base();
            self.child = Some(serve);
            match self.wait_health().await {
                Ok(()) => return,
                Err(log) if log.contains("cannot listen") => continue, // port taken: another
                Err(log) => panic!("the daemon did not start:\n{log}"),
            }
        }
        panic!("could not start the daemon on a free port in 5 tries");
    }

    /// Waits (10 s at most) for `/health`; `Err` with the daemon's log when it exited or did
    /// not answer in time (then it is killed).
    async fn wait_health(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = self.http.get(format!("{}/health", self.base)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            let Some(serve) = self.child.as_mut() else {
                return Err("no daemon".to_string());
            };
            if let Ok(Some(status)) = serve.guard.0.try_wait() {
                let log = serve.log_text();
                self.child = None;
                return Err(format!("it exited at start-up ({status}):\n{log}"));
            }
            if Instant::now() >= deadline {
                let log = serve.log_text();
                self.kill_daemon();
                return Err(format!("no answer from /health within 10 s:\n{log}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (`Child::kill`) and reap the daemon.
    fn kill_daemon(&mut self) {
        if let Some(mut serve) = self.child.take() {
            let _ = serve.guard.0.kill();
            let _ = serve.guard.0.wait();
        }
    }

    async fn restart_after_sigkill(&mut self) {
        self.kill_daemon();
        self.spawn_daemon().await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn pool(&self, pool: &str) -> Value {
        self.get(&format!("/v2/pools/{pool}")).await
    }

    async fn events(&self, pool: &str) -> Vec<Value> {
        match self.get(&format!("/v2/pools/{pool}/events")).await {
            Value::Array(events) => events,
            other => panic!("events of {pool}: {other}"),
        }
    }

    /// Preloads an engine-sim on a fresh port with `flags` (`?wait=false`); returns the port.
    async fn preload(&mut self, pool: &str, flags: &[&str]) -> u16 {
        self.preload_model(pool, "/models/m.gguf", flags).await
    }

    /// [`preload`](Self::preload) of an engine whose `model_path` is `model`.
    async fn preload_model(&mut self, pool: &str, model: &str, flags: &[&str]) -> u16 {
        let port = free_port();
        self.engine_ports.push(port);
        let mut all = vec!["--port".to_string(), port.to_string()];
        all.extend(flags.iter().map(|f| f.to_string()));
        let body = json!({ "prepared": {
            "binary_path": ENGINE_SIM,
            "flags": all,
            "host": "127.0.0.1",
            "port": port,
            "model_path": model,
            "engine_version": "sim-1",
            "pool_id": pool,
            "replica_id": "r0",
        }});
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                &format!("/v2/pools/{pool}/preload?wait=false"),
                Some(body),
            )
            .await;
        assert_eq!(status, 202, "preload {pool}: {answer}");
        port
    }

    /// Polls the pool's status until `check` holds (`secs` at most).
    async fn wait_pool(
        &self,
        pool: &str,
        what: &str,
        secs: u64,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let status = self.pool(pool).await;
            if check(&status) {
                return status;
            }
            if Instant::now() >= deadline {
                let events = self.events(pool).await;
                panic!(
                    "pool {pool}: {what} not reached in {secs} s: {status}\nevents:\n{}",
                    timeline(&events)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls the pool's events until `check` holds (`secs` at most); returns them.
    async fn wait_events(
        &self,
        pool: &str,
        what: &str,
        secs: u64,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let events = self.events(pool).await;
            if check(&events) {
                return events;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pool {pool}: {what} not seen in {secs} s; events:\n{}",
                    timeline(&events)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs every engine-sim of this harness's ports; the pids still alive 3 s later.
    fn kill_engines(&self) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let alive: Vec<u64> = self
                .engine_ports
                .iter()
                .flat_map(|p| engine_pids(*p))
                .collect();
            if alive.is_empty() || Instant::now() >= deadline {
                return alive;
            }
            for pid in &alive {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon and the engines and checks that none survived, nor any engine pid the
    /// journal recorded.
    fn finish(mut self, spawned_pids: &[u64]) {
        self.kill_daemon();
        let survivors = self.kill_engines();
        assert!(survivors.is_empty(), "engines survived: {survivors:?}");
        for pid in spawned_pids {
            let deadline = Instant::now() + Duration::from_secs(3);
            while pid_alive(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!pid_alive(*pid), "engine {pid} survived the clean-up");
        }
    }

    fn daemon_logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                format!(
                    "--- daemon start {n} ---\n{}",
                    std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_daemon();
        self.kill_engines();
        if std::thread::panicking() {
            eprintln!("{}", self.daemon_logs());
        }
    }
}

fn kind(envelope: &Value) -> &str {
    envelope["event"]["kind"].as_str().unwrap_or("?")
}

fn u64_of(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

fn timeline(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("  {} {} {}\n", e["seq"], e["ts_ms"], e["event"]))
        .collect()
}

fn last_of<'a>(events: &'a [Value], wanted: &str) -> Option<&'a Value> {
    events.iter().rev().find(|e| kind(e) == wanted)
}

fn spawned_pids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| kind(e) == "EngineSpawned")
        .map(|e| u64_of(&e["event"]["pid"], "EngineSpawned.pid"))
        .collect()
}

/// The journal never shows two engines for the pool: every `EngineSpawned` comes when no
/// engine is recorded alive, and an engine is over at its `EngineExited`, `EngineLost`,
/// `EngineStopped`, or a `PreloadFailed` (which kills a still-running one).
fn assert_one_engine_at_a_time(events: &[Value]) {
    let mut live: Option<u64> = None;
    for e in events {
        let event = &e["event"];
        match kind(e) {
            "EngineSpawned" => {
                let pid = u64_of(&event["pid"], "EngineSpawned.pid");
                assert!(
                    live.is_none(),
                    "EngineSpawned {pid} at seq {} while engine {live:?} is alive:\n{}",
                    e["seq"],
                    timeline(events)
                );
                live = Some(pid);
            }
            "EngineAdopted" => {
                let pid = u64_of(&event["pid"], "EngineAdopted.pid");
                assert_eq!(
                    live,
                    Some(pid),
                    "adopted an engine that was not the live one:\n{}",
                    timeline(events)
                );
            }
            "EngineExited" | "EngineLost" | "EngineStopped" => {
                let pid = u64_of(&event["pid"], "pid");
                assert_eq!(
                    live,
                    Some(pid),
                    "{} of an engine that was not the live one at seq {}:\n{}",
                    kind(e),
                    e["seq"],
                    timeline(events)
                );
                live = None;
            }
            "PreloadFailed" => live = None,
            _ => {}
        }
    }
}

/// The status without the fields that are not journaled.
fn durable_view(status: &Value) -> Value {
    let mut status = status.clone();
    if let Value::Object(map) = &mut status {
        for field in VOLATILE_FIELDS {
            map.remove(*field);
        }
    }
    status
}

fn assert_sampler_saw_one_engine(sampler: &Sampler) -> SamplerReport {
    let report = sampler.report();
    assert!(report.samples > 10, "the /proc sampler ran: {report:?}");
    assert!(
        report.max_alive <= 1,
        "two engines alive at once for the pool's port: {:?}",
        report.overlap
    );
    report
}

/// Kill during backoff: the restarted daemon shows the same pool (attempt, counts, breaker,
/// delay, error), restarts the engine no earlier than the recorded `not_before_ms`, and no
/// two engines ever run for the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_backoff_keeps_the_backoff_and_its_not_before() {
    // The breaker stays closed through the third failure, so that it is a restart again.
    let policy = FAST_POLICY.replace("failure_threshold = 3", "failure_threshold = 5");
    let mut h = Harness::start(&policy).await;
    let port = h
        .preload("crashy", &["--crash-after-ms", "300", "--exit-code", "3"])
        .await;
    let sampler = Sampler::start(port);

    // The first crash is restarted at once; the second waits out a backoff delay.
    let before = h
        .wait_pool("crashy", "backoff", 5, |s| {
            s["phase"] == "backoff" && s["backoff_ms"].as_u64() > Some(0)
        })
        .await;
    let events = h.events("crashy").await;
    let scheduled_before = events
        .iter()
        .filter(|e| kind(e) == "RestartScheduled")
        .count();
    let scheduled = last_of(&events, "RestartScheduled")
        .unwrap_or_else(|| panic!("no RestartScheduled:\n{}", timeline(&events)))
        .clone();
    let not_before = u64_of(&scheduled["event"]["not_before_ms"], "not_before_ms");
    let margin = not_before.saturating_sub(now_ms());
    assert!(
        margin >= 300,
        "killing with {margin} ms of backoff left is too close to the restart:\n{}",
        timeline(&events)
    );
    assert_eq!(
        before["last_seq"],
        events.last().unwrap()["seq"],
        "the status read is the last event"
    );
    let spawns_before = spawned_pids(&events).len();

    h.restart_after_sigkill().await;

    // The registry is replayed as it was.
    let after = h.pool("crashy").await;
    let read_at = now_ms();
    assert!(
        read_at < not_before,
        "the restart of the daemon took too long to test the backoff ({read_at} >= {not_before})"
    );
    assert_eq!(
        durable_view(&after),
        durable_view(&before),
        "pool status changed across a SIGKILL of the daemon"
    );

    // The next spawn happens no earlier than recorded.
    let events = h
        .wait_events("crashy", "the restart's EngineSpawned", 8, |events| {
            spawned_pids(events).len() > spawns_before
        })
        .await;
    let next = events
        .iter()
        .filter(|e| kind(e) == "EngineSpawned")
        .nth(spawns_before)
        .unwrap();
    let spawned_at = u64_of(&next["ts_ms"], "ts_ms");
    assert!(
        spawned_at >= not_before,
        "EngineSpawned at {spawned_at} < not_before_ms {not_before}:\n{}",
        timeline(&events)
    );
    let started = last_of(&events, "EngineStartRequested").unwrap();
    assert_eq!(
        started["event"]["attempt"], scheduled["event"]["attempt"],
        "the restart uses the recorded attempt"
    );
    let new_pid = u64_of(&next["event"]["pid"], "pid");
    // Wall clock, independent of the journal: the new engine was not seen before not_before.
    let deadline = Instant::now() + Duration::from_secs(2);
    let first_seen = loop {
        if let Some(at) = sampler.report().first_seen_ms.get(&new_pid) {
            break Some(*at);
        }
        if Instant::now() >= deadline || !pid_alive(new_pid) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if let Some(first_seen) = first_seen {
        assert!(
            first_seen >= not_before,
            "engine {new_pid} was alive at {first_seen}, before not_before_ms {not_before}"
        );
    }

    // The engine crashes again: the next backoff counts on from the recorded attempt.
    let events = h
        .wait_events("crashy", "the next RestartScheduled", 5, |events| {
            events
                .iter()
                .filter(|e| kind(e) == "RestartScheduled")
                .count()
                > scheduled_before
        })
        .await;
    let second = last_of(&events, "RestartScheduled").unwrap();
    assert_eq!(
        u64_of(&second["event"]["attempt"], "attempt"),
        u64_of(&scheduled["event"]["attempt"], "attempt") + 1,
        "attempts count on across the daemon restart:\n{}",
        timeline(&events)
    );

    eprintln!("journal of the pool:\n{}", timeline(&events));
    assert_one_engine_at_a_time(&events);
    assert_sampler_saw_one_engine(&sampler);
    drop(sampler);
    let pids = spawned_pids(&events);
    h.finish(&pids);
}

/// Kill with the breaker open: the restarted daemon shows the breaker open (phase
/// `circuit_open`), spawns nothing before the recorded half-open time, then runs the one
/// trial start after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_breaker_open_keeps_it_open_until_half_open() {
    let policy = FAST_POLICY
        .replace("initial_ms = 1500", "initial_ms = 150")
        .replace("open_ms = 2000", "open_ms = 2500");
    let mut h = Harness::start(&policy).await;
    let port = h
        .preload("broken", &["--crash-after-ms", "100", "--exit-code", "5"])
        .await;
    let sampler = Sampler::start(port);

    let before = h
        .wait_pool("broken", "breaker open", 8, |s| s["breaker"] == "open")
        .await;
    let events = h.events("broken").await;
    let opened = last_of(&events, "CircuitOpened")
        .unwrap_or_else(|| panic!("no CircuitOpened:\n{}", timeline(&events)))
        .clone();
    let half_open_at = u64_of(&opened["event"]["half_open_at_ms"], "half_open_at_ms");
    assert_eq!(before["phase"], "circuit_open", "{before}");
    assert_eq!(
        before["last_seq"],
        events.last().unwrap()["seq"],
        "the status read is the last event"
    );
    let margin = half_open_at.saturating_sub(now_ms());
    assert!(
        margin >= 1000,
        "killing with {margin} ms of open breaker left is too close:\n{}",
        timeline(&events)
    );
    let spawns_before = spawned_pids(&events).len();

    h.restart_after_sigkill().await;
    assert!(
        now_ms() < half_open_at,
        "the restart of the daemon took too long to test the breaker"
    );
    let after = h.pool("broken").await;
    assert_eq!(
        durable_view(&after),
        durable_view(&before),
        "pool status changed across a SIGKILL of the daemon"
    );
    assert_eq!(after["breaker"], "open");
    assert_eq!(after["phase"], "circuit_open");

    // Nothing is spawned while open; the half-open trial comes after the recorded time.
    let events = h
        .wait_events(
            "broken",
            "the half-open trial's EngineSpawned",
            8,
            |events| spawned_pids(events).len() > spawns_before,
        )
        .await;
    let half_opened = last_of(&events, "CircuitHalfOpened")
        .unwrap_or_else(|| panic!("no CircuitHalfOpened:\n{}", timeline(&events)));
    assert!(
        u64_of(&half_opened["ts_ms"], "ts_ms") >= half_open_at,
        "half-opened before {half_open_at}:\n{}",
        timeline(&events)
    );
    let trial = events
        .iter()
        .filter(|e| kind(e) == "EngineSpawned")
        .nth(spawns_before)
        .unwrap();
    assert!(
        u64_of(&trial["ts_ms"], "ts_ms") >= half_open_at,
        "spawned at {} while the breaker was open until {half_open_at}:\n{}",
        trial["ts_ms"],
        timeline(&events)
    );
    let trial_pid = u64_of(&trial["event"]["pid"], "pid");
    if let Some(first_seen) = sampler.report().first_seen_ms.get(&trial_pid) {
        assert!(
            *first_seen >= half_open_at,
            "trial engine {trial_pid} alive at {first_seen} < {half_open_at}"
        );
    }
    let requested = last_of(&events, "EngineStartRequested").unwrap();
    assert_eq!(requested["event"]["purpose"], "trial", "{requested}");

    // The trial fails too: the breaker opens again, for twice the time.
    let events = h
        .wait_events("broken", "the breaker reopening", 5, |events| {
            events.iter().filter(|e| kind(e) == "CircuitOpened").count() >= 2
        })
        .await;
    let reopened = last_of(&events, "CircuitOpened").unwrap();
    assert_eq!(
        u64_of(&reopened["event"]["open_ms"], "open_ms"),
        2 * u64_of(&opened["event"]["open_ms"], "open_ms"),
        "reopened with twice the open time:\n{}",
        timeline(&events)
    );

    eprintln!("journal of the pool:\n{}", timeline(&events));
    assert_one_engine_at_a_time(&events);
    assert_sampler_saw_one_engine(&sampler);
    drop(sampler);
    let pids = spawned_pids(&events);
    h.finish(&pids);
}

/// Kill while a ready engine runs: the engine outlives the daemon, the restarted daemon adopts
/// it (same pid, still ready), and it was spawned exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_ready_adopts_the_running_engine() {
    let mut h = Harness::start(FAST_POLICY).await;
    let port = h.preload("steady", &["--parallel", "2"]).await;
    let sampler = Sampler::start(port);
    let before = h
        .wait_pool("steady", "ready", 5, |s| s["ready"] == true)
        .await;
    let pid = u64_of(&before["pid"], "pid");
    let events = h.events("steady").await;
    assert_eq!(spawned_pids(&events), vec![pid]);

    h.kill_daemon();
    assert!(pid_alive(pid), "engine {pid} died with the daemon");
    h.spawn_daemon().await;
    let restarted_at = now_ms();

    let events = h
        .wait_events("steady", "EngineAdopted", 5, |events| {
            last_of(events, "EngineAdopted").is_some()
        })
        .await;
    let adopted = last_of(&events, "EngineAdopted").unwrap();
    assert_eq!(u64_of(&adopted["event"]["pid"], "pid"), pid);
    let after = h.pool("steady").await;
    assert_eq!(after["ready"], true, "{after}");
    assert_eq!(after["phase"], "ready", "{after}");
    assert_eq!(after["pid"], before["pid"], "{after}");
    for field in [
        "restart_count",
        "crash_count",
        "breaker",
        "backoff_ms",
        "slots_total",
        "handoff_path",
    ] {
        assert_eq!(after[field], before[field], "{field}: {after} vs {before}");
    }
    // The adoption probes the engine again: a heartbeat after the restart, same engine.
    let later = h
        .wait_pool("steady", "a heartbeat after the restart", 5, |s| {
            s["last_heartbeat_ms"]
                .as_u64()
                .is_some_and(|at| at >= restarted_at)
        })
        .await;
    assert_eq!(later["ready"], true, "{later}");
    assert_eq!(later["pid"], before["pid"], "{later}");
    let events = h.events("steady").await;
    assert_eq!(spawned_pids(&events), vec![pid], "{}", timeline(&events));
    eprintln!("journal of the pool:\n{}", timeline(&events));
    assert_one_engine_at_a_time(&events);
    assert_sampler_saw_one_engine(&sampler);
    drop(sampler);
    h.finish(&[pid]);
}

/// Restarts of a crash loop: `EngineStartRequested` with purpose `restart`.
fn restarts(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| kind(e) == "EngineStartRequested" && e["event"]["purpose"] == "restart")
        .count()
}

/// Kill in the middle of a restart storm: the storm window is in the journal, so the restarts
/// before the SIGKILL count towards the storm after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_a_storm_keeps_the_storm_window() {
    let policy = format!(
        "{}\n[storm]\nmax_restarts = 3\nwindow_ms = 30000\n",
        FAST_POLICY
            .replace("initial_ms = 1500", "initial_ms = 400")
            .replace("max_ms = 4000", "max_ms = 400")
            .replace("failure_threshold = 3", "failure_threshold = 100")
    );
    let mut h = Harness::start(&policy).await;
    let port = h
        .preload("stormy", &["--crash-after-ms", "100", "--exit-code", "4"])
        .await;
    let sampler = Sampler::start(port);

    // Two restarts, then the daemon is killed during the third backoff.
    let before = h
        .wait_pool("stormy", "the third backoff", 8, |s| {
            s["phase"] == "backoff" && s["restart_count"].as_u64().is_some_and(|n| n >= 2)
        })
        .await;
    let events = h.events("stormy").await;
    let restarts_before = restarts(&events);
    assert_eq!(restarts_before, 2, "{}", timeline(&events));
    assert!(last_of(&events, "RestartStormDetected").is_none());

    h.restart_after_sigkill().await;
    let restarted_at = now_ms();
    let after = h.pool("stormy").await;
    assert_eq!(after["restart_count"], before["restart_count"], "{after}");
    assert_eq!(after["crash_count"], before["crash_count"], "{after}");

    let events = h
        .wait_events("stormy", "RestartStormDetected", 8, |events| {
            last_of(events, "RestartStormDetected").is_some()
        })
        .await;
    let storm = last_of(&events, "RestartStormDetected").unwrap();
    let storm_seq = u64_of(&storm["seq"], "seq");
    let before_storm: Vec<Value> = events
        .iter()
        .filter(|e| u64_of(&e["seq"], "seq") < storm_seq)
        .cloned()
        .collect();
    let after_restart = before_storm
        .iter()
        .filter(|e| {
            u64_of(&e["ts_ms"], "ts_ms") >= restarted_at.saturating_sub(50)
                && kind(e) == "EngineStartRequested"
        })
        .count();
    assert!(
        restarts(&before_storm) <= 4 && after_restart < 4,
        "the storm counted only restarts after the daemon restart \
         ({after_restart} after, {} in all):\n{}",
        restarts(&before_storm),
        timeline(&events)
    );
    assert!(
        u64_of(&storm["event"]["restarts"], "restarts") > 3,
        "{storm}"
    );
    assert_eq!(storm["event"]["classification"], "crash_storm", "{storm}");
    let pool = h
        .wait_pool("stormy", "the breaker open", 3, |s| s["breaker"] == "open")
        .await;
    assert_eq!(pool["phase"], "circuit_open", "{pool}");

    eprintln!("journal of the pool:\n{}", timeline(&events));
    assert_one_engine_at_a_time(&events);
    assert_sampler_saw_one_engine(&sampler);
    drop(sampler);
    let pids = spawned_pids(&events);
    h.finish(&pids);
}

/// Watches `/proc` without pausing and SIGKILLs `daemon` as soon as an engine-sim for `port`
/// that is not in `known` appears; returns that engine's pid.
fn kill_daemon_at_next_spawn(daemon: u32, port: u16, known: Vec<u64>, secs: u64) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(pid) = engine_pids(port).into_iter().find(|p| !known.contains(p)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Some(pid);
        }
    }
    None
}

/// Kill at the moment a restart's engine process appears, before (or just after) its
/// `EngineSpawned` is durable: after the restart every engine process that ran for the pool is
/// one the journal knows, and there is never more than one.
///
/// On resume a pool whose journal ends at `EngineStartRequested` is spawned again; the engine
/// the killed daemon had already started is found (pid file, or its exact command line as a
/// session leader) and killed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_a_spawn_leaves_no_untracked_engine() {
    let policy = FAST_POLICY.replace("initial_ms = 1500", "initial_ms = 400");
    let mut h = Harness::start(&policy).await;
    let port = h
        .preload("racy", &["--crash-after-ms", "1500", "--exit-code", "6"])
        .await;
    let sampler = Sampler::start(port);
    h.wait_pool("racy", "backoff", 5, |s| s["phase"] == "backoff")
        .await;
    let events = h.events("racy").await;
    let known = spawned_pids(&events);
    let known_before = known.clone();
    let daemon = h.child.as_ref().unwrap().pid();
    let orphan =
        tokio::task::spawn_blocking(move || kill_daemon_at_next_spawn(daemon, port, known, 5))
            .await
            .unwrap()
            .expect("a restart's engine appeared");
    h.restart_after_sigkill().await;

    // The restarted daemon starts the pool again; an engine the journal never recorded (the
    // kill came before its `EngineSpawned` was durable) must be gone by then, killed by the
    // new start, so that the two never run together.
    let events = h
        .wait_events("racy", "a start after the restart", 8, |events| {
            spawned_pids(events)
                .iter()
                .any(|p| *p != orphan && !known_before.contains(p))
        })
        .await;
    let recorded = spawned_pids(&events);
    if !recorded.contains(&orphan) {
        assert!(
            !pid_alive(orphan),
            "engine {orphan}, never recorded, still runs beside the new start; journal:\n{}",
            timeline(&events)
        );
    }
    assert_one_engine_at_a_time(&events);
    assert_sampler_saw_one_engine(&sampler);
    drop(sampler);
    h.finish(&recorded);
}

/// An engine that dies at once (`--crash-after-ms 0`) can exit before the supervisor's
/// `EngineSpawned` report reaches the actor. Every start must still end (`PreloadFailed` or
/// `EngineExited`) and the crash loop go on; no pool may stay `starting` with a dead pid.
/// (The exit watcher holds its report until the spawn has been reported.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dying_at_once_never_leaves_the_pool_starting() {
    let policy = format!(
        "{}\n[storm]\nmax_restarts = 127\nwindow_ms = 1000\n",
        FAST_POLICY
            .replace("initial_ms = 1500", "initial_ms = 100")
            .replace("max_ms = 4000", "max_ms = 100")
            .replace("jitter = 0.1", "jitter = 0.0")
            .replace("failure_threshold = 3", "failure_threshold = 1000")
    );
    let mut h = Harness::start(&policy).await;
    h.preload("instant", &["--crash-after-ms", "0", "--exit-code", "2"])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = h.events("instant").await;
        let last_spawn = events.iter().rposition(|e| kind(e) == "EngineSpawned");
        if let Some(at) = last_spawn {
            let ended = events[at..]
                .iter()
                .any(|e| matches!(kind(e), "PreloadFailed" | "EngineExited" | "EngineLost"));
            let age = now_ms().saturating_sub(u64_of(&events[at]["ts_ms"], "ts_ms"));
            assert!(
                ended || age < 2_000,
                "engine spawned {age} ms ago and dead, yet the pool is still starting: {}\n{}",
                h.pool("instant").await,
                timeline(&events)
            );
        }
        if spawned_pids(&events).len() >= 12 {
            break events;
        }
        assert!(Instant::now() < deadline, "{}", timeline(&events));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_one_engine_at_a_time(&events);
    let pids = spawned_pids(&events);
    h.finish(&pids);
}

/// Two ready engines, leases on one; the daemon is SIGKILLed and one engine is killed while
/// the daemon is down. The next start adopts the survivor (same pid, its lease intact, no
/// spawn) and records the other `EngineLost`, which the restart policy starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_two_engines_adopts_the_live_one_and_restarts_the_lost_one() {
    let mut h = Harness::start(FAST_POLICY).await;
    h.preload("kept", &["--parallel", "2"]).await;
    h.preload("lost", &["--parallel", "2"]).await;
    let kept = h
        .wait_pool("kept", "ready", 5, |s| s["ready"] == true)
        .await;
    let lost = h
        .wait_pool("lost", "ready", 5, |s| s["ready"] == true)
        .await;
    let (kept_pid, lost_pid) = (u64_of(&kept["pid"], "pid"), u64_of(&lost["pid"], "pid"));
    let (status, lease) = h
        .call(reqwest::Method::POST, "/v2/pools/kept/leases", None)
        .await;
    assert_eq!(status, 201, "{lease}");

    h.kill_daemon();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(lost_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the engine of 'lost'");
    let deadline = Instant::now() + Duration::from_secs(3);
    while pid_alive(lost_pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.spawn_daemon().await;

    let after = h.pool("kept").await;
    assert_eq!(
        after["ready"], true,
        "adopted before the API serves: {after}"
    );
    assert_eq!(after["pid"], kept["pid"], "{after}");
    assert_eq!(after["active_leases"], 1, "the lease survived: {after}");
    let events = h.events("kept").await;
    assert!(
        last_of(&events, "EngineAdopted").is_some(),
        "{}",
        timeline(&events)
    );
    assert_eq!(
        spawned_pids(&events),
        vec![kept_pid],
        "no spawn for the adopted engine"
    );

    let events = h.events("lost").await;
    assert!(
        last_of(&events, "EngineLost").is_some(),
        "{}",
        timeline(&events)
    );
    let restarted = h
        .wait_pool("lost", "restarted", 10, |s| {
            s["ready"] == true && s["pid"].as_u64().is_some_and(|p| p != lost_pid)
        })
        .await;
    let events = h.events("lost").await;
    assert_one_engine_at_a_time(&events);
    let mut pids = spawned_pids(&h.events("kept").await);
    pids.extend(spawned_pids(&events));
    assert_eq!(restarted["restart_count"], 1, "{restarted}");
    h.finish(&pids);
}

/// The daemon is SIGKILLed while a reload's new engine is starting; after the next start the
/// pool ends ready on one model, with exactly one engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_reload_ends_ready_on_one_model_with_one_engine() {
    let mut h = Harness::start(FAST_POLICY).await;
    let models = h.dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let (a, b) = (models.join("a.gguf"), models.join("b.gguf"));
    std::fs::write(&a, "model a\n").unwrap();
    std::fs::write(&b, "model b\n").unwrap();
    let a_path = a.display().to_string();
    // A slow load, so that the kill lands while the new engine starts.
    let port = h
        .preload_model(
            "swap",
            &a_path,
            &["-m", &a_path, "--check-model", "--load-ms", "1500"],
        )
        .await;
    let sampler = Sampler::start(port);
    let before = h
        .wait_pool("swap", "ready", 10, |s| s["ready"] == true)
        .await;
    let old_pid = u64_of(&before["pid"], "pid");

    // The reload request waits; send it in the background and kill the daemon once the new
    // engine has been requested.
    let base = h.base.clone();
    let body = json!({"new_model_ref": b.display().to_string(), "drain_deadline_ms": 1000});
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("{base}/v2/pools/swap/reload"))
            .json(&body)
            .send()
            .await;
    });
    h.wait_events("swap", "the new engine requested", 10, |events| {
        events
            .iter()
            .any(|e| kind(e) == "EngineStartRequested" && e["event"]["purpose"] == "reload")
    })
    .await;
    h.kill_daemon();
    h.spawn_daemon().await;

    let done = h
        .wait_pool("swap", "ready again", 15, |s| s["ready"] == true)
        .await;
    let model = done["model_ref"].as_str().unwrap_or_default().to_string();
    assert!(
        model == a_path || model == b.display().to_string(),
        "ready on one of the two models: {done}"
    );
    let events = h.events("swap").await;
    eprintln!("journal of the pool:\n{}", timeline(&events));
    assert_one_engine_at_a_time(&events);
    assert_sampler_saw_one_engine(&sampler);
    drop(sampler);
    let pid = u64_of(&done["pid"], "pid");
    assert!(pid_alive(pid));
    // The engine loads the model the registry says it serves (the -m flag follows it).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&model),
        "engine {pid} runs {:?}, the registry says {model}",
        String::from_utf8_lossy(&cmdline)
    );
    assert!(
        !pid_alive(old_pid) || pid == old_pid,
        "the old engine is gone unless it serves"
    );
    h.finish(&spawned_pids(&events));
}

// ---- reload without a gap (a surge) ----------------------------------------------------------

/// A harness whose daemon has one surge port; the port is cleaned up with the engines.
async fn surge_harness(extra_policy: &str) -> (Harness, u16, String, String) {
    let surge_port = free_port();
    let policy = format!(
        "{FAST_POLICY}{extra_policy}\n[reload]\nsurge_ports = \"{surge_port}-{surge_port}\"\n"
    );
    let mut h = Harness::start(&policy).await;
    h.engine_ports.push(surge_port);
    let models = h.dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let (a, b) = (models.join("a.gguf"), models.join("b.gguf"));
    std::fs::write(&a, "model a\n").unwrap();
    std::fs::write(&b, "model b\n").unwrap();
    (
        h,
        surge_port,
        a.display().to_string(),
        b.display().to_string(),
    )
}

fn pid_file(h: &Harness, name: &str) -> Option<u64> {
    let path = h.dir.path().join("runtime").join("pids").join(name);
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Waits (5 s at most) for `pid` to be gone (zombies count as gone).
fn wait_gone(pid: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pid_alive(pid), "{what} (pid {pid}) still runs");
}

/// No event of the journal stopped, lost or failed the engine `pid`.
fn assert_never_stopped(events: &[Value], pid: u64) {
    for e in events {
        let stops = matches!(
            kind(e),
            "EngineStopRequested" | "EngineStopped" | "EngineExited" | "EngineLost"
        ) && e["event"]["pid"].as_u64() == Some(pid);
        assert!(
            !stops && kind(e) != "DrainRequested" && kind(e) != "PreloadFailed",
            "the old engine {pid} was touched at seq {}:\n{}",
            e["seq"],
            timeline(events)
        );
    }
}

/// The daemon is SIGKILLed while a surge's new engine loads: the next start undoes the surge
/// from the journal (the new engine is killed, the reload fails), and the old engine, which
/// never stopped, serves on with no engine left unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_surge_undoes_it_and_the_old_engine_serves_on() {
    let (mut h, surge_port, a, b) = surge_harness("").await;
    let port = h
        .preload_model("s", &a, &["-m", &a, "--check-model", "--load-ms", "1500"])
        .await;
    let before = h.wait_pool("s", "ready", 10, |s| s["ready"] == true).await;
    let old_pid = u64_of(&before["pid"], "pid");
    let base = h.base.clone();
    let body = json!({"new_model_ref": b, "strategy": "surge", "drain_deadline_ms": 5000});
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("{base}/v2/pools/s/reload"))
            .json(&body)
            .send()
            .await;
    });
    let events = h
        .wait_events("s", "the new engine spawned", 10, |events| {
            last_of(events, "SurgeSpawned").is_some()
        })
        .await;
    let new_pid = u64_of(
        &last_of(&events, "SurgeSpawned").unwrap()["event"]["pid"],
        "SurgeSpawned.pid",
    );
    assert_eq!(
        engine_pids(surge_port),
        vec![new_pid],
        "the new engine on the surge port"
    );
    h.restart_after_sigkill().await;

    let events = h
        .wait_events("s", "the surge undone", 15, |events| {
            events.iter().any(|e| {
                kind(e) == "SecondEngineEnded" && e["event"]["pid"].as_u64() == Some(new_pid)
            })
        })
        .await;
    eprintln!("journal of the pool:\n{}", timeline(&events));
    let failed = last_of(&events, "ReloadFailed").expect("the reload failed");
    assert_eq!(failed["event"]["stage"], "surging", "{failed}");
    wait_gone(new_pid, "the surge's new engine");
    assert!(engine_pids(surge_port).is_empty());
    assert_never_stopped(&events, old_pid);
    assert!(pid_alive(old_pid), "the old engine serves on");
    assert_eq!(engine_pids(port), vec![old_pid]);
    let status = h.pool("s").await;
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["pid"].as_u64(), Some(old_pid), "{status}");
    assert_eq!(status["model_ref"].as_str(), Some(a.as_str()), "{status}");
    assert_eq!(pid_file(&h, "s.pid"), Some(old_pid));
    assert_eq!(
        pid_file(&h, "s@b.pid"),
        None,
        "the new engine's pid file is gone"
    );
    h.finish(&[old_pid, new_pid]);
}

/// The daemon is SIGKILLed after a surge's switch while the old engine still serves a lease:
/// the next start adopts both engines, new leases go to the new one, and the old one is
/// stopped once its lease is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_surge_switch_lets_the_old_engine_finish_its_lease() {
    let (mut h, surge_port, a, b) = surge_harness("").await;
    let port = h.preload_model("s", &a, &["-m", &a, "--check-model"]).await;
    let before = h.wait_pool("s", "ready", 10, |s| s["ready"] == true).await;
    let old_pid = u64_of(&before["pid"], "pid");
    let (status, lease) = h
        .call(reqwest::Method::POST, "/v2/pools/s/leases", Some(json!({})))
        .await;
    assert_eq!(status, 201, "{lease}");
    let lease_id = lease["lease_id"].as_str().unwrap().to_string();
    let body = json!({"new_model_ref": b, "strategy": "surge", "drain_deadline_ms": 60000});
    let (status, answer) = h
        .call(reqwest::Method::POST, "/v2/pools/s/reload", Some(body))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["strategy"], "surge", "{answer}");
    let switched = h.pool("s").await;
    let new_pid = u64_of(&switched["pid"], "pid");
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        switched["url"].as_str(),
        Some(format!("http://127.0.0.1:{surge_port}").as_str()),
        "{switched}"
    );
    assert!(pid_alive(old_pid), "the old engine finishes its lease");
    h.restart_after_sigkill().await;

    h.wait_events("s", "both engines adopted", 15, |events| {
        [old_pid, new_pid].iter().all(|pid| {
            events
                .iter()
                .rev()
                .take_while(|e| kind(e) != "DaemonStarted")
                .any(|e| kind(e) == "EngineAdopted" && e["event"]["pid"].as_u64() == Some(*pid))
        })
    })
    .await;
    assert!(pid_alive(old_pid), "the old engine still serves its lease");
    let status = h.pool("s").await;
    assert_eq!(status["pid"].as_u64(), Some(new_pid), "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["model_ref"].as_str(), Some(b.as_str()), "{status}");
    let (code, _) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/pools/s/leases/{lease_id}"),
            None,
        )
        .await;
    assert!(code == 200 || code == 204, "lease returned: {code}");
    let events = h
        .wait_events("s", "the old engine stopped", 15, |events| {
            events.iter().any(|e| {
                kind(e) == "SecondEngineEnded" && e["event"]["pid"].as_u64() == Some(old_pid)
            })
        })
        .await;
    eprintln!("journal of the pool:\n{}", timeline(&events));
    wait_gone(old_pid, "the old engine");
    assert!(engine_pids(port).is_empty());
    assert_eq!(engine_pids(surge_port), vec![new_pid]);
    assert_eq!(
        pid_file(&h, "s.pid"),
        None,
        "the old engine's pid file is gone"
    );
    assert_eq!(pid_file(&h, "s@b.pid"), Some(new_pid));
    h.finish(&[old_pid, new_pid]);
}
