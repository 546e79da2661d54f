//! The Grafana dashboard (`packaging/grafana/pool-managerd.json`): every query is PromQL that
//! `promtool check rules` parses (each panel's `expr` and each template variable's query,
//! with Grafana's variables replaced by valid values and written as recording rules), and
//! every series it names is served: a real daemon (engine-sim engines, a GPU fixture) goes
//! through a preload, a reload, a lease, a crash loop into a restart storm and an open
//! breaker, a hung engine, a drain and an Xid, and its `GET /metrics` holds every metric name
//! the dashboard's queries name (a histogram through its `_bucket`, `_sum` or `_count`).
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it): without it the
//! PromQL check fails under `CI=true` and is skipped with a printed reason elsewhere. The
//! scrape check needs no promtool.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/promtool.rs"]
mod promtool;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{engine_sim_preload, write_fixture, Harness};
use promtool::promtool;
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

fn dashboard() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/pool-managerd.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel of `panels`, those inside rows included.
fn all_panels(panels: &Value, out: &mut Vec<Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel.clone());
        all_panels(&panel["panels"], out);
    }
}

/// The PromQL of a template variable's query: the selector of `label_values(SELECTOR, label)`,
/// the expression of `query_result(EXPR)`; `None` for the queries that are not PromQL
/// (`label_values(label)`, `label_names()`, `metrics(...)`).
fn variable_promql(query: &str) -> Option<String> {
    let query = query.trim();
    if let Some(inner) = query
        .strip_prefix("query_result(")
        .and_then(|q| q.strip_suffix(')'))
    {
        return Some(inner.to_string());
    }
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))?;
    let (selector, _label) = inner.rsplit_once(',')?;
    Some(selector.trim().to_string())
}

/// Every PromQL query of the dashboard: (where it is, the query as written).
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut panels = Vec::new();
    all_panels(&dashboard["panels"], &mut panels);
    let mut out = Vec::new();
    for panel in &panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let at = format!("panel {:?} target {}", panel["title"], target["refId"]);
                out.push((at, expr.to_string()));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = &variable["query"];
        let text = query.as_str().or_else(|| query["query"].as_str());
        if let Some(promql) = text.and_then(variable_promql) {
            out.push((format!("variable {}", variable["name"]), promql));
        }
    }
    out
}

/// `expr` with Grafana's variables replaced: intervals by `5m`, the others (label values in
/// `=~` matchers) by `.*`.
fn concrete(expr: &str) -> String {
    let mut out = expr.to_string();
    for interval in ["$__rate_interval", "$__interval", "$__range"] {
        out = out.replace(interval, "5m");
    }
    let mut result = String::with_capacity(out.len());
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            result.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
        } else {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
            }
        }
        result.push_str(".*");
    }
    result
}

/// Words of PromQL that are not metric names when they are not followed by `(`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "inf",
    "nan",
];
/// Keywords followed by a list of label names, not an expression.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Skips from `open` (at `bytes[i]`) to after its matching `close`, over quoted strings.
fn skip_group(bytes: &[u8], mut i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => i = skip_string(bytes, i),
            c if c == open => {
                depth += 1;
                i += 1;
            }
            c if c == close => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    i
}

/// Skips the quoted string at `bytes[i]`.
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    let quote = bytes[i];
    i += 1;
    while i < bytes.len() && bytes[i] != quote {
        i += if bytes[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// The metric names `expr` selects: identifiers that are not functions, keywords, label
/// names, numbers or durations, outside matchers, ranges and strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let is_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let is_part = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            i = skip_string(bytes, i);
        } else if c == b'{' {
            i = skip_group(bytes, i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(bytes, i, b'[', b']');
        } else if c.is_ascii_digit() || c == b'.' {
            // A number or a duration (0.95, 5m, 1h30m).
            while i < bytes.len() && (is_part(bytes[i]) || bytes[i] == b'.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < bytes.len() && is_part(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut next = i;
            while next < bytes.len() && bytes[next].is_ascii_whitespace() {
                next += 1;
            }
            let call = bytes.get(next) == Some(&b'(');
            if LABEL_LISTS.contains(&word) && call {
                i = skip_group(bytes, next, b'(', b')');
            } else if !call && !KEYWORDS.contains(&word) {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        "histogram_quantile(0.95, sum by (pool_id, le) (rate(a_bucket{pool_id=~\".*\"}[5m]))) \
         / on (instance) group_left (x) b unless c offset 1h or max(d) and count by (x) (e > bool 1)",
    );
    let expected: BTreeSet<String> = ["a_bucket", "b", "c", "d", "e"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    assert_eq!(
        concrete("rate(x{pool_id=~\"$pool_id\",gpu=~\"${gpu:regex}\"}[$__rate_interval])"),
        "rate(x{pool_id=~\".*\",gpu=~\".*\"}[5m])"
    );
}

#[test]
fn the_dashboard_has_its_variables_and_panels() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or_default();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables: Vec<(&str, &str)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    for wanted in [
        ("DS_PROMETHEUS", "datasource"),
        ("pool_id", "query"),
        ("gpu", "query"),
    ] {
        assert!(variables.contains(&wanted), "{wanted:?} in {variables:?}");
    }
    let mut panels = Vec::new();
    all_panels(&dashboard["panels"], &mut panels);
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            panel["title"]
        );
    }
}

#[test]
fn every_query_is_promql_that_promtool_parses() {
    let queries = queries(&dashboard());
    assert!(queries.len() >= 20, "{queries:?}");
    let Some(promtool) = promtool() else { return };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut legend = String::new();
    for (n, (at, expr)) in queries.iter().enumerate() {
        let expr = concrete(expr);
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
        legend.push_str(&format!("dashboard:query_{n}: {at}: {expr}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let output = Command::new(promtool)
        .args(["check", "rules", "--lint=all", "--lint-fatal"])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.contains("SUCCESS"),
        "promtool check rules ({}): {said}\nqueries:\n{legend}",
        output.status
    );
}

/// The metric names of a scrape (histograms by their `_bucket`, `_sum`, `_count`).
fn served_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

/// A preload body of an engine-sim with `flags`, its model `model` (`steady` on GPU 0, the
/// others on every GPU).
fn preload_body(pool: &str, model: &std::path::Path, flags: &[&str]) -> Value {
    let model = model.display().to_string();
    let mut all = vec!["-m", model.as_str()];
    all.extend_from_slice(flags);
    let mask = (pool == "steady").then_some("0");
    let mut body = engine_sim_preload(pool, mask, &all);
    body["prepared"]["model_path"] = json!(model);
    body
}

async fn preload(h: &Harness, pool: &str, body: Value) -> Value {
    let (status, answer) = h.post(&format!("/v2/pools/{pool}/preload"), body).await;
    assert_eq!(status, 200, "preload {pool}: {answer}");
    answer
}

/// A daemon (one GPU fixture) that went through everything the dashboard shows.
async fn a_busy_daemon(models: &std::path::Path) -> (Harness, PathBuf, Value) {
    let fixture_dir = models.join("gpus");
    std::fs::create_dir_all(&fixture_dir).unwrap();
    let fixture = fixture_dir.join("gpus.json");
    let gpus = serde_json::to_value(pool_managerd::gpu::simulated_gpus(2)).unwrap();
    write_fixture(&fixture, &gpus);
    let at = fixture.clone();
    let mut h = Harness::start_with(move |c| {
        c.gpu.fixture = at;
        c.gpu.poll_interval_ms = 50;
        c.gpu.allow_sharing = true;
        // A crash loop: restarts 100 ms apart; the third failure in a minute is a storm (which
        // opens the breaker).
        c.backoff.initial_ms = 100;
        c.backoff.min_ms = 50;
        c.backoff.max_ms = 200;
        c.backoff.jitter = 0.0;
        c.storm.max_restarts = 1;
        c.breaker.failure_threshold = 10;
        c.breaker.open_ms = 600_000;
        // A hung engine is seen after two failed probes 100 ms apart.
        c.health.ready_interval_ms = 100;
        c.health.failures_to_crash = 2;
    })
    .await;
    h.wait = Duration::from_secs(30);
    (h, fixture, gpus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_names_is_in_a_real_scrape() {
    let mut wanted = BTreeSet::new();
    for (_, expr) in queries(&dashboard()) {
        wanted.extend(metric_names(&concrete(&expr)));
    }
    assert!(wanted.len() >= 20, "{wanted:?}");

    let models = tempfile::tempdir().unwrap();
    let (a, b) = (models.path().join("a.gguf"), models.path().join("b.gguf"));
    std::fs::write(&a, "model a\n").unwrap();
    std::fs::write(&b, "model b\n").unwrap();
    let (h, fixture, mut gpus) = a_busy_daemon(models.path()).await;

    // A preload, a reload onto another model, a lease held.
    preload(
        &h,
        "steady",
        preload_body("steady", &a, &["--parallel", "4"]),
    )
    .await;
    let reload = json!({"new_model_ref": b.display().to_string(), "drain_deadline_ms": 5000});
    let (status, answer) = h.post("/v2/pools/steady/reload", reload).await;
    assert_eq!(status, 200, "{answer}");
    let steady = h
        .wait_pool("steady", "ready on b", |s| s["ready"] == true)
        .await;
    let (status, lease) = h.post("/v2/pools/steady/leases", json!({})).await;
    assert_eq!(status, 201, "{lease}");

    // A crash loop (a storm opens the breaker), a hung engine, a drain. The faulty engines
    // are healthy for 2 s first, so that a loaded machine still sees their preloads ready.
    let crash = ["--crash-after-ms", "2000", "--exit-code", "3"];
    preload(&h, "crashy", preload_body("crashy", &a, &crash)).await;
    preload(
        &h,
        "hung",
        preload_body("hung", &a, &["--hang-after-ms", "2000"]),
    )
    .await;
    preload(&h, "brief", preload_body("brief", &a, &[])).await;
    let (status, answer) = h
        .post("/v2/pools/brief/drain", json!({ "deadline_ms": 5000 }))
        .await;
    assert_eq!(status, 202, "{answer}");

    h.wait_pool("crashy", "a storm that opened the breaker", |s| {
        s["breaker"] == "open"
    })
    .await;
    h.wait_pool("brief", "drained", |s| s["phase"] == "stopped")
        .await;

    // The reloaded engine uses 2 GiB of GPU 0; GPU 1 reports an Xid and a driver reset.
    let pid = steady["pid"].as_u64().unwrap();
    gpus[0]["processes"] = json!([{"pid": pid, "used_bytes": 2 * GIB}]);
    gpus[0]["vram_free_bytes"] = json!(70 * GIB);
    gpus[1]["xids"] = json!([13]);
    gpus[1]["driver_resets"] = json!(1);
    write_fixture(&fixture, &gpus);

    // Everything the dashboard names is served (the counters of the hung engine and of the
    // fixture's faults come with the loop's next readings).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = h.scrape().await;
        let served = served_names(&text);
        let missing: Vec<&String> = wanted.difference(&served).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard names series the daemon does not serve: {missing:?}\nscrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop().await;
}
