//! Metrics and logs: `GET /metrics` scraped and read series by series, and the pool fields of
//! the event lines in the log of a daemon in its own process.

use cucumber::{then, when};
use reqwest::Method;

use crate::live::Body;
use crate::world::PoolWorld;

/// The gauges of a pool (SPEC section 11), which a removed pool must not keep.
const POOL_GAUGES: &[&str] = &[
    "pool_ready",
    "pool_slots_total",
    "pool_slots_free",
    "pool_active_leases",
    "circuit_breaker_state",
    "pool_vram_used_bytes",
];

/// The samples of the last scrape: (name, labels as rendered, value).
fn samples(world: &PoolWorld) -> Vec<(String, String, f64)> {
    let answer = world.answer();
    assert!(
        answer.request.ends_with("/metrics"),
        "the last request was {}, not a scrape: scrape the metrics first",
        answer.request
    );
    let text = answer
        .body
        .as_str()
        .unwrap_or_else(|| panic!("GET /metrics answered JSON, not text: {}", answer.body));
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line without a value: {line}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("a sample whose value is not a number ({e}): {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            (name.to_string(), labels.to_string(), value)
        })
        .collect()
}

fn scrape_text(world: &PoolWorld) -> String {
    world.answer().body.as_str().unwrap_or_default().to_string()
}

/// The value of `name` whose labels include every pair of `labels`.
fn find(world: &PoolWorld, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(world).into_iter().find_map(|(n, l, v)| {
        let all = labels.iter().all(|(key, value)| {
            l.split(',')
                .any(|pair| pair == format!("{key}=\"{value}\""))
        });
        (n == name && all).then_some(v)
    })
}

fn expect(world: &PoolWorld, name: &str, labels: &[(&str, &str)], wanted: f64) {
    let found = find(world, name, labels);
    assert_eq!(
        found,
        Some(wanted),
        "{name} with {labels:?} in the scrape:\n{}",
        scrape_text(world)
    );
}

#[when("the metrics are scraped")]
async fn scraped(world: &mut PoolWorld) {
    let answer = world.request(Method::GET, "/metrics", Body::Empty).await;
    assert_eq!(answer.status, 200, "GET /metrics: {}", answer.body);
}

#[then(expr = "the metric {string} of pool {string} is {float}")]
async fn metric_of_pool(world: &mut PoolWorld, name: String, pool: String, wanted: f64) {
    expect(world, &name, &[("pool_id", &pool)], wanted);
}

#[then(expr = "the metric {string} of GPU {string} is {float}")]
async fn metric_of_gpu(world: &mut PoolWorld, name: String, uuid: String, wanted: f64) {
    expect(world, &name, &[("gpu", &uuid)], wanted);
}

#[then(expr = "the metric {string} of pool {string} with {word} {string} is {float}")]
async fn metric_of_pool_with(
    world: &mut PoolWorld,
    name: String,
    pool: String,
    label: String,
    value: String,
    wanted: f64,
) {
    expect(
        world,
        &name,
        &[("pool_id", &pool), (&label, &value)],
        wanted,
    );
}

/// A duration series against the event that recorded the duration (`duration_ms`, in ms).
#[then(
    expr = "the metric {string} of pool {string} is the {string} of its last {string}, in seconds"
)]
async fn metric_is_event_ms(
    world: &mut PoolWorld,
    name: String,
    pool: String,
    field: String,
    kind: String,
) {
    let events = world.events(&pool).await;
    let event = events
        .iter()
        .rev()
        .find(|e| e["event"]["kind"] == kind.as_str())
        .unwrap_or_else(|| panic!("no {kind} of pool '{pool}'"));
    let ms = event["event"][&field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} of {event} is not a number"));
    expect(world, &name, &[("pool_id", &pool)], ms as f64 / 1000.0);
}

#[then(expr = "the metric {string} is the daemon's journal seq")]
async fn metric_is_journal_seq(world: &mut PoolWorld, name: String) {
    let health = world.peek(Method::GET, "/health").await;
    let seq = health.body["journal_seq"]
        .as_f64()
        .unwrap_or_else(|| panic!("/health has no journal_seq: {}", health.body));
    expect(world, &name, &[], seq);
}

#[then(expr = "the metrics have no {string} of pool {string}")]
async fn no_metric_of_pool(world: &mut PoolWorld, name: String, pool: String) {
    let found = find(world, &name, &[("pool_id", &pool)]);
    assert!(
        found.is_none(),
        "{name} of pool '{pool}' is in the scrape:\n{}",
        scrape_text(world)
    );
}

#[then(expr = "the metrics have no gauge of pool {string}")]
async fn no_gauge_of_pool(world: &mut PoolWorld, pool: String) {
    for gauge in POOL_GAUGES {
        assert!(
            find(world, gauge, &[("pool_id", &pool)]).is_none(),
            "{gauge} of pool '{pool}' is in the scrape:\n{}",
            scrape_text(world)
        );
    }
}

/// `text` without ANSI colour sequences (the pretty log colours its levels and field names).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The event line of a daemon in its own process (the pretty format:
/// `... WARN ... event seq=7 pool_id="p1" kind="EngineExited" engine="engine-sim" ...`).
#[then(
    expr = "the daemon's log has a(n) {word} line for the {string} of pool {string} with the fields {string}"
)]
async fn log_line_with_fields(
    world: &mut PoolWorld,
    level: String,
    kind: String,
    pool: String,
    fields: String,
) {
    let fields: Vec<&str> = fields.split(',').map(str::trim).collect();
    let matches = |line: &str| {
        line.contains(&format!(" {level} "))
            && line.contains(&format!("kind=\"{kind}\""))
            && line.contains(&format!("pool_id=\"{pool}\""))
            && fields.iter().all(|f| line.contains(&format!(" {f}=")))
    };
    let deadline = std::time::Instant::now() + crate::world::EVENTUALLY;
    loop {
        let log = strip_ansi(&world.daemon().process_log());
        let lines: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(&format!("kind=\"{kind}\"")))
            .collect();
        if lines.iter().any(|line| matches(line)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {level} line for the {kind} of pool '{pool}' with the fields {fields:?}; its lines:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(crate::world::POLL).await;
    }
}
