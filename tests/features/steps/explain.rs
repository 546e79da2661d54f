//! Explanations: `GET /v2/pools/{id}/explain` (the last answer) read against the pool's own
//! history (`GET /v2/pools/{id}/events`), and `pool-managerd explain` run as its own process,
//! against the daemon (`--addr`) and offline on the daemon's journal (`--journal-dir`).

use std::process::Command;

use cucumber::{then, when};
use reqwest::Method;
use serde_json::Value;

use crate::live::Body;
use crate::world::PoolWorld;

/// The daemon binary, for `pool-managerd explain`.
const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");

/// The pool's events of `kind`, oldest first.
async fn events_of(world: &PoolWorld, pool: &str, kind: &str) -> Vec<Value> {
    world
        .events(pool)
        .await
        .into_iter()
        .filter(|e| e["event"]["kind"] == kind)
        .collect()
}

/// The `field` of the last event of `kind` of the pool, as a number.
async fn last_number(world: &PoolWorld, pool: &str, kind: &str, field: &str) -> u64 {
    let events = events_of(world, pool, kind).await;
    let last = events
        .last()
        .unwrap_or_else(|| panic!("pool '{pool}' has no {kind} event"));
    last["event"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} of {last} is not a number"))
}

/// Runs `pool-managerd status --addr` against the daemon; its standard output.
async fn run_status(base: String) -> String {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(DAEMON)
            .args(["status", "--addr", &base])
            .env_remove("LLORCH_API_TOKEN")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {DAEMON} status: {e}"))
    })
    .await
    .unwrap_or_else(|e| panic!("the status command's thread failed: {e}"));
    assert!(
        output.status.success(),
        "pool-managerd status failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[then(expr = "`pool-managerd status` shows why pool {string} is not ready: {string}")]
async fn status_shows_why(world: &mut PoolWorld, pool: String, words: String) {
    let table = run_status(world.daemon().base().to_string()).await;
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let column = header
        .find("WHY")
        .map(|at| header[..at].chars().count())
        .unwrap_or_else(|| panic!("no WHY column in:\n{table}"));
    let row = lines
        .find(|l| l.starts_with(&format!("{pool} ")))
        .unwrap_or_else(|| panic!("no row of pool {pool} in:\n{table}"));
    let why: String = row.chars().skip(column).collect();
    assert!(
        why.contains(&words),
        "the WHY of {pool} lacks {words:?}: {row}"
    );
}

/// Runs `pool-managerd explain` with `args`; its standard output, or the step fails with
/// what it said.
async fn run_explain(args: Vec<String>) -> String {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(DAEMON)
            .arg("explain")
            .args(&args)
            .env_remove("LLORCH_API_TOKEN")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {DAEMON} explain: {e}"))
    })
    .await
    .unwrap_or_else(|e| panic!("the explain command's thread failed: {e}"));
    assert!(
        output.status.success(),
        "pool-managerd explain failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[when(expr = "the explanation of pool {string} at its first {string} is requested")]
async fn explain_at_first(world: &mut PoolWorld, pool: String, kind: String) {
    let seq = events_of(world, &pool, &kind)
        .await
        .first()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_else(|| panic!("pool '{pool}' has no {kind} event"));
    let path = format!("/v2/pools/{pool}/explain?at_seq={seq}");
    world.request(Method::GET, &path, Body::Empty).await;
}

#[then(expr = "the explanation is as of the first {string} of pool {string}")]
async fn as_of_first(world: &mut PoolWorld, kind: String, pool: String) {
    let seq = events_of(world, &pool, &kind)
        .await
        .first()
        .and_then(|e| e["seq"].as_u64());
    let body = &world.answer().body;
    assert_eq!(body["as_of_seq"].as_u64(), seq, "{body}");
}

#[then(expr = "the explanation names the seq of every failure of pool {string}")]
async fn names_every_failure(world: &mut PoolWorld, pool: String) {
    let mut failures = events_of(world, &pool, "PreloadFailed").await;
    failures.extend(events_of(world, &pool, "EngineExited").await);
    assert!(!failures.is_empty(), "pool '{pool}' has no failure");
    let why = world.answer().body["why"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for failure in &failures {
        let seq = failure["seq"].as_u64().unwrap_or(0);
        let named = why.contains(&format!(" {seq},")) || why.contains(&format!(" {seq})"));
        assert!(
            named,
            "the explanation's why does not name failure seq {seq}: {why}"
        );
    }
}

#[then(expr = "the explanation's why names lease {string} of pool {string}")]
fn why_names_lease(world: &mut PoolWorld, alias: String, pool: String) {
    let lease = world.lease_id(&pool, &alias);
    let why = world.answer().body["why"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        why.contains(&lease),
        "the why does not name lease {lease}: {why}"
    );
}

#[then(expr = "the explanation's next step is at the half-open time of pool {string}")]
async fn next_at_half_open(world: &mut PoolWorld, pool: String) {
    let half_open = last_number(world, &pool, "CircuitOpened", "half_open_at_ms").await;
    let next = &world.answer().body["next"][0];
    assert_eq!(next["at_ms"].as_u64(), Some(half_open), "next: {next}");
    assert!(
        next["text"]
            .as_str()
            .is_some_and(|t| t.contains("half-open trial")),
        "next: {next}"
    );
}

#[then(expr = "the explanation's next step is at the restart time of pool {string}")]
async fn next_at_restart(world: &mut PoolWorld, pool: String) {
    let not_before = last_number(world, &pool, "RestartScheduled", "not_before_ms").await;
    let attempt = last_number(world, &pool, "RestartScheduled", "attempt").await;
    let next = &world.answer().body["next"][0];
    assert_eq!(next["at_ms"].as_u64(), Some(not_before), "next: {next}");
    assert!(
        next["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("restart attempt {attempt}"))),
        "next: {next}"
    );
}

#[then(expr = "the explanation offers {string}")]
fn offers(world: &mut PoolWorld, request: String) {
    let actions = &world.answer().body["actions"];
    let offered = actions
        .as_array()
        .is_some_and(|list| list.iter().any(|a| a["request"] == request.as_str()));
    assert!(offered, "no action with request {request}: {actions}");
}

#[then(expr = "the explanation's chain ends with the {string} of pool {string}")]
async fn chain_ends_with(world: &mut PoolWorld, kind: String, pool: String) {
    let seq = events_of(world, &pool, &kind)
        .await
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_else(|| panic!("pool '{pool}' has no {kind} event"));
    let last = world.answer().body["chain"]
        .as_array()
        .and_then(|chain| chain.last().cloned())
        .unwrap_or(Value::Null);
    assert_eq!(
        (last["kind"].as_str(), last["seq"].as_u64()),
        (Some(kind.as_str()), Some(seq)),
        "the chain's last step: {last}"
    );
}

#[then(
    expr = "`pool-managerd explain {word}` against the daemon prints the half-open time of pool {string}"
)]
async fn cli_online(world: &mut PoolWorld, id: String, pool: String) {
    let half_open = last_number(world, &pool, "CircuitOpened", "half_open_at_ms").await;
    let base = world.daemon().base().to_string();
    let text = run_explain(vec![id.clone(), "--addr".into(), base]).await;
    let at = pool_managerd::core::explain::rfc3339(half_open);
    assert!(
        text.contains(&format!("half-open trial at {at}")),
        "the text names the trial time {at}: {text}"
    );
    assert!(
        text.starts_with(&format!("pool {id}: circuit open")),
        "{text}"
    );
}

#[then(
    expr = "`pool-managerd explain {word} --json` on the daemon's journal answers what the daemon answered"
)]
async fn cli_offline(world: &mut PoolWorld, id: String) {
    let answered = world.answer().body.clone();
    let seq = answered["as_of_seq"].as_u64().unwrap_or(0);
    let dir = world.daemon().config().journal_dir.display().to_string();
    let args = vec![
        id,
        "--journal-dir".into(),
        dir,
        "--at-seq".into(),
        seq.to_string(),
        "--json".into(),
    ];
    let printed: Value = serde_json::from_str(&run_explain(args).await)
        .unwrap_or_else(|e| panic!("explain --json printed no JSON: {e}"));
    assert_eq!(printed, answered, "offline and live explanations differ");
}
