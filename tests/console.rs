//! The console (`GET /ui`) in a real headless Chromium, driven over the DevTools protocol,
//! against a real daemon with a token: a crash-looping pool and a ready pool, a GPU fixture.
//!
//! The token is entered once in the page's form; the pools table shows both pools; the
//! crash-looping pool's page draws crash markers on its timeline; a new event of that pool
//! appears on its page within a second of being journaled; the GPU view draws each GPU's VRAM
//! with the pool using it; and nothing was logged as an error, nor thrown, in the page during
//! the whole run (Runtime.consoleAPICalled, Runtime.exceptionThrown, Log.entryAdded). A daemon
//! without a token shows no prompt.
//!
//! Screenshots (pools, pool page, GPUs) go to `POOL_MANAGERD_SCREENSHOTS`, else
//! `target/console-screenshots`; the folder is printed. Without Chromium (`CHROMIUM`, else
//! `/usr/bin/chromium`) the test fails under `CI=true` and is skipped (saying why) elsewhere.
//!
//! Waits poll the page or the API with a bounded deadline; nothing sleeps hoping that something
//! happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{engine_sim_preload, write_fixture, Harness};
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Emulation, Page};
use headless_chrome::{Browser, Tab};
use pool_managerd::gpu::simulated_gpus;
use serde_json::{json, Value};

const TOKEN: &str = "console-test-token-0123456789abcdef";
const GIB: u64 = 1 << 30;
/// How long a wait for the page or the daemon may take.
const WAIT: Duration = Duration::from_secs(20);

/// The Chromium to drive, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no Chromium at {} (set CHROMIUM, or `apt-get install chromium`)",
            path.display()
        ))
    }
}

/// The folder the screenshots go to (created).
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("POOL_MANAGERD_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A headless Chromium of its own (fresh profile), killed when dropped.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    browser: Browser,
}

impl Chromium {
    fn launch(path: &Path) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,800",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        // Chromium writes its DevTools port and path there once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        let ws = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() >= 2 {
                break format!("ws://127.0.0.1:{}{}", lines[0], lines[1]);
            }
            assert!(
                Instant::now() < deadline,
                "Chromium wrote no DevToolsActivePort"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let browser = Browser::connect_with_timeout(ws, Duration::from_secs(600)).unwrap();
        Chromium {
            child,
            _profile: profile,
            browser,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page logged or threw: `(domain.event, params)`.
type Journal = Arc<Mutex<Vec<(String, Value)>>>;

/// A tab at 1280×800 whose console messages, exceptions and log entries are recorded.
fn open_tab(chromium: &Chromium, journal: &Journal) -> Arc<Tab> {
    let tab = chromium.browser.new_tab().unwrap();
    let record = Arc::clone(journal);
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let entry = match event {
            Event::RuntimeConsoleAPICalled(e) => ("Runtime.consoleAPICalled", json!(e.params)),
            Event::RuntimeExceptionThrown(e) => ("Runtime.exceptionThrown", json!(e.params)),
            Event::LogEntryAdded(e) => ("Log.entryAdded", json!(e.params)),
            _ => return,
        };
        record.lock().unwrap().push((entry.0.to_string(), entry.1));
    }))
    .unwrap();
    tab.enable_runtime().unwrap();
    tab.enable_log().unwrap();
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width: 1280,
        height: 800,
        device_scale_factor: 1.0,
        mobile: false,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
    tab
}

/// The value of `expression` (JSON-serializable) in the page.
fn eval(tab: &Tab, expression: &str) -> Value {
    let wrapped = format!("JSON.stringify((() => {{ {expression} }})())");
    let result = tab.evaluate(&wrapped, false).unwrap();
    match result.value {
        Some(Value::String(text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Evaluates `expression` until it gives something truthy (not null, false, 0 or ""), within
/// `within`; answers it.
fn until_page(tab: &Tab, what: &str, within: Duration, expression: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = eval(tab, expression);
        let truthy = !matches!(&value, Value::Null | Value::Bool(false))
            && value != json!(0)
            && value != json!("");
        if truthy {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in the page within {within:?}; the page shows:\n{}",
            eval(tab, "return document.body.innerText;")
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

fn screenshot(tab: &Tab, dir: &Path, name: &str) -> PathBuf {
    let png = tab
        .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

/// Runs blocking browser work on this worker without stalling the daemon's tasks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// A daemon with the token, a GPU fixture (two GPUs) and a fast crash loop.
async fn daemon(fixture: &Path) -> Harness {
    let fixture = fixture.to_path_buf();
    let mut h = Harness::start_with(|c| {
        c.api_token = Some(TOKEN.to_string());
        c.gpu.fixture = fixture;
        c.gpu.poll_interval_ms = 50;
        c.backoff.initial_ms = 200;
        c.backoff.min_ms = 100;
        c.backoff.jitter = 0.0;
        c.breaker.failure_threshold = 3;
        c.breaker.open_ms = 600_000;
    })
    .await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    h.http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap();
    h.wait = WAIT;
    h
}

/// The seq and time of the newest `kind` event of `pool`.
async fn newest(h: &Harness, pool: &str, kind: &str) -> (u64, u64) {
    let (status, events) = h.get("/v2/events?limit=1000").await;
    assert_eq!(status, 200, "{events}");
    let found = events
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["pool_id"] == pool && e["event"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} of {pool} in {events}"));
    (
        found["seq"].as_u64().unwrap(),
        found["ts_ms"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_node_live() {
    let chromium_path = match chromium() {
        Ok(path) => path,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let shots = screenshots();
    eprintln!("screenshots: {}", shots.display());

    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("gpus.json");
    let mut gpus = serde_json::to_value(simulated_gpus(2)).unwrap();
    write_fixture(&fixture, &gpus);
    let h = daemon(&fixture).await;

    // A ready pool, and one whose engine exits at each start until its breaker opens.
    let (status, ready) = h
        .post(
            "/v2/pools/chat/preload",
            engine_sim_preload("chat", Some("0"), &[]),
        )
        .await;
    assert_eq!(status, 200, "{ready}");
    let pid = ready["pid"].as_u64().unwrap();
    let flags = ["--crash-after-ms", "0", "--exit-code", "3"];
    let (status, answer) = h
        .post(
            "/v2/pools/crashy/preload?wait=false",
            engine_sim_preload("crashy", Some("1"), &flags),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    h.wait_pool("crashy", "an open breaker", |s| {
        s["phase"] == "circuit_open"
    })
    .await;
    gpus[0]["processes"] =
        json!([{"pid": pid, "used_bytes": 6 * GIB}, {"pid": 1, "used_bytes": GIB}]);
    gpus[0]["vram_free_bytes"] = json!(70 * GIB);
    write_fixture(&fixture, &gpus);

    let journal: Journal = Arc::default();
    let chromium = blocking(|| Chromium::launch(&chromium_path));
    let tab = blocking(|| open_tab(&chromium, &journal));
    let (pool_page, token_entered) = blocking(|| pools_view(&tab, &journal, &h.base, &shots));

    // A new event of the open pool: on its page within a second of being journaled.
    let (status, answer) = h.post("/v2/pools/crashy/breaker/reset", json!({})).await;
    assert!(status < 300, "{status} {answer}");
    let (seq, ts_ms) = newest(&h, "crashy", "CircuitReset").await;
    blocking(|| live_event(&tab, seq, ts_ms));
    blocking(|| screenshot(&tab, &shots, "pool.png"));
    drop(pool_page);

    let (_, listed) = h.get("/v2/gpus").await;
    assert_eq!(listed[0]["processes"][0]["pool_id"], "chat", "{listed}");
    blocking(|| gpus_view(&tab, pid, &shots));

    // An event of another pool: the pools table follows it within a second.
    blocking(|| eval(&tab, "location.hash = '#/'; return true;"));
    let (status, answer) = h
        .post("/v2/pools/chat/drain", json!({"deadline_ms": 5_000}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let (seq, ts_ms) = newest(&h, "chat", "DrainRequested").await;
    blocking(|| drain_in_table(&tab, seq, ts_ms));

    // Without a token, no prompt.
    let open = Harness::start().await;
    let plain = blocking(|| open_tab(&chromium, &journal));
    blocking(|| without_token(&plain, &open.base));

    let recorded = journal.lock().unwrap().clone();
    drop(chromium);
    open.stop().await;
    h.stop().await;
    check_quiet(&recorded, token_entered);
    eprintln!("screenshots in {}", shots.display());
}

/// The token form, the pools table, then the crash-looping pool's page.
/// Answers the first screenshot of the pool page, and how many entries the journal held once
/// the token was in use.
fn pools_view(tab: &Tab, journal: &Journal, base: &str, shots: &Path) -> (PathBuf, usize) {
    tab.navigate_to(&format!("{base}/ui")).unwrap();
    tab.wait_until_navigated().unwrap();
    until_page(
        tab,
        "the token form",
        WAIT,
        "return !document.getElementById('token-panel').hidden;",
    );
    tab.find_element("#token-input").unwrap().click().unwrap();
    tab.send_character(TOKEN).unwrap();
    tab.press_key("Enter").unwrap();
    let rows = until_page(
        tab,
        "both pools in the table",
        WAIT,
        "const rows = [...document.querySelectorAll('#pools-table tbody tr')];
         const why = document.querySelector('tr[data-pool=crashy] td.why');
         return rows.length === 2 && why && why.textContent
             ? rows.map((r) => [r.dataset.pool, r.dataset.phase]) : null;",
    );
    assert_eq!(rows, json!([["chat", "ready"], ["crashy", "circuit_open"]]));
    let token_entered = journal.lock().unwrap().len();
    assert_eq!(
        eval(tab, "return document.getElementById('token-panel').hidden;"),
        json!(true)
    );
    screenshot(tab, shots, "pools.png");

    eval(tab, "location.hash = '#/pool/crashy'; return true;");
    let crashes = until_page(
        tab,
        "three crash markers on the timeline",
        WAIT,
        "const marks = document.querySelectorAll('#timeline-svg g.marker-crash');
         return marks.length >= 3 ? [...marks].map((m) => m.dataset.reason) : null;",
    );
    assert!(
        crashes.as_array().unwrap().iter().all(|r| r == "crash"),
        "{crashes}"
    );
    let lanes = eval(
        tab,
        "return ['backoff', 'circuit_open', 'starting'].map((p) =>
             document.querySelectorAll(`#timeline-svg rect.span.phase-${p}`).length);",
    );
    assert!(
        lanes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)),
        "spans by phase: {lanes}"
    );
    until_page(
        tab,
        "the explanation",
        WAIT,
        "const why = document.querySelector('#pool-explain .why.headline');
         return why && why.textContent;",
    );
    until_page(
        tab,
        "the engine log's tail, with the daemon's own lines marked",
        WAIT,
        "const daemon = document.querySelector('#pool-log pre.log .line-daemon');
         const engine = document.querySelector('#pool-log pre.log .line-engine');
         return daemon !== null && engine !== null
             && daemon.textContent.includes('==== pool-managerd:');",
    );
    (screenshot(tab, shots, "pool-before.png"), token_entered)
}

/// The event `seq` (journaled at `ts_ms`) shows on the pool page within a second.
fn live_event(tab: &Tab, seq: u64, ts_ms: u64) {
    let left = (ts_ms + 1_000).saturating_sub(now_ms());
    // The poll's own latency on top of the second the page has.
    let within = Duration::from_millis(left + 250);
    let shown = until_page(
        tab,
        &format!("event {seq} (CircuitReset) on the pool page"),
        within,
        &format!(
            "const row = document.querySelector('#events-table tr[data-seq=\"{seq}\"]');
             const mark = document.querySelector('#timeline-svg g.marker[data-seq=\"{seq}\"]');
             return row && mark ? Number(row.dataset.shownMs) : null;"
        ),
    );
    let shown = shown.as_u64().unwrap();
    assert!(
        shown <= ts_ms + 1_000,
        "event {seq} journaled at {ts_ms} showed at {shown} ({} ms later)",
        shown.saturating_sub(ts_ms)
    );
    eprintln!(
        "event {seq} showed {} ms after it was journaled",
        shown.saturating_sub(ts_ms)
    );
}

/// The drain `seq` of pool `chat` (journaled at `ts_ms`) shows in the pools table within a
/// second.
fn drain_in_table(tab: &Tab, seq: u64, ts_ms: u64) {
    let left = (ts_ms + 1_000).saturating_sub(now_ms());
    let shown = until_page(
        tab,
        &format!("pool chat leaving ready (event {seq}) in the pools table"),
        Duration::from_millis(left + 250),
        "const row = document.querySelector('#pools-table tr[data-pool=chat]');
         return row && row.dataset.phase !== 'ready'
             ? [row.dataset.phase, Number(row.dataset.phaseShownMs)] : null;",
    );
    let phase = shown[0].as_str().unwrap();
    assert!(
        ["draining", "stopping", "stopped"].contains(&phase),
        "{shown}"
    );
    let at = shown[1].as_u64().unwrap();
    assert!(
        at <= ts_ms + 1_000,
        "the drain journaled at {ts_ms} showed at {at} ({} ms later)",
        at.saturating_sub(ts_ms)
    );
    eprintln!(
        "the drain (event {seq}) showed in the pools table {} ms after it was journaled",
        at.saturating_sub(ts_ms)
    );
}

fn gpus_view(tab: &Tab, pid: u64, shots: &Path) {
    eval(tab, "location.hash = '#/gpus'; return true;");
    until_page(
        tab,
        "two GPUs with the pool's VRAM",
        WAIT,
        &format!(
            "const cards = document.querySelectorAll('section.gpu');
             const bar = document.querySelector('section.gpu rect.vram-pool[data-pid=\"{pid}\"]');
             return cards.length === 2 && bar !== null;"
        ),
    );
    let text = eval(
        tab,
        "return document.querySelector('section.gpu').innerText;",
    );
    let text = text.as_str().unwrap();
    assert!(
        text.contains("chat") && text.contains("not quarantined"),
        "{text}"
    );
    screenshot(tab, shots, "gpus.png");
}

fn without_token(tab: &Tab, base: &str) {
    tab.navigate_to(&format!("{base}/ui")).unwrap();
    tab.wait_until_navigated().unwrap();
    until_page(
        tab,
        "the live stream",
        WAIT,
        "return document.getElementById('stream-state').textContent === 'live';",
    );
    until_page(
        tab,
        "the empty pools view",
        WAIT,
        "return document.querySelector('#view').innerText.includes('No pools yet');",
    );
    assert_eq!(
        eval(tab, "return document.getElementById('token-panel').hidden;"),
        json!(true),
        "a daemon without a token must not prompt for one"
    );
}

/// No console error, exception or error log entry, but for the browser's own report of the
/// answers the page expects: the 401s that ask for the token (before it was entered: the
/// first `token_entered` entries).
fn check_quiet(recorded: &[(String, Value)], token_entered: usize) {
    let mut bad = Vec::new();
    for (index, (what, params)) in recorded.iter().enumerate() {
        let failed = match what.as_str() {
            "Runtime.exceptionThrown" => true,
            "Runtime.consoleAPICalled" => matches!(
                params["type"].as_str(),
                Some("error" | "assert" | "warning")
            ),
            _ => {
                let entry = &params["entry"];
                let level = entry["level"].as_str().unwrap_or("");
                let expected = entry["source"] == "network"
                    && index < token_entered
                    && entry["text"].as_str().is_some_and(|t| t.contains("401"));
                matches!(level, "error" | "warning") && !expected
            }
        };
        if failed {
            bad.push(format!("{what}: {params}"));
        }
    }
    eprintln!("{} console entries recorded", recorded.len());
    for (what, params) in recorded {
        eprintln!("  {what}: {params}");
    }
    assert!(
        bad.is_empty(),
        "the page logged errors:\n{}",
        bad.join("\n")
    );
}
