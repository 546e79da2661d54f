//! The runtime directory: engine logs (`logs/<pool>.log`), pid files (`pids/<pool>.pid`) and
//! handoff files (`engines/<pool>-<replica>.json`).

use std::path::PathBuf;

use cucumber::gherkin::Step;
use cucumber::then;
use serde_json::Value;

use crate::steps::params::at;
use crate::world::PoolWorld;

/// The line the daemon writes to an engine's log before each start.
const START_HEADER: &str = "==== pool-managerd: starting ";

fn log_path(world: &PoolWorld, pool: &str) -> PathBuf {
    world.runtime_dir().join("logs").join(format!("{pool}.log"))
}

fn pid_path(world: &PoolWorld, pool: &str) -> PathBuf {
    world.runtime_dir().join("pids").join(format!("{pool}.pid"))
}

fn handoff_path(world: &PoolWorld, name: &str) -> PathBuf {
    world.runtime_dir().join("engines").join(name)
}

/// The handoff files of `pool` (`<pool>-*.json`).
fn handoff_files(world: &PoolWorld, pool: &str) -> Vec<PathBuf> {
    let dir = world.runtime_dir().join("engines");
    let prefix = format!("{pool}-");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
        })
        .collect()
}

fn read_log(world: &PoolWorld, pool: &str) -> String {
    let path = log_path(world, pool);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[then(expr = "the log file of pool {string} contains {string}")]
async fn log_contains(world: &mut PoolWorld, pool: String, text: String) {
    let path = log_path(world, &pool);
    PoolWorld::until(
        &format!("{} should contain {text:?}", path.display()),
        || std::fs::read_to_string(&path).is_ok_and(|log| log.contains(&text)),
    )
    .await;
}

#[then(expr = "the log file of pool {string} holds the output of {int} engine starts")]
fn log_holds_starts(world: &mut PoolWorld, pool: String, starts: usize) {
    let log = read_log(world, &pool);
    let headers = log.matches(START_HEADER).count();
    let listening = log.matches("engine-sim: listening on").count();
    assert_eq!(
        (headers, listening),
        (starts, starts),
        "(start headers, engine-sim start lines) in the log of pool '{pool}':\n{log}"
    );
    let first = log.find(START_HEADER).unwrap_or(usize::MAX);
    let first_output = log.find("engine-sim: listening on").unwrap_or(0);
    assert!(
        first < first_output,
        "the first start's output follows its header:\n{log}"
    );
}

#[then(expr = "the pid file of pool {string} holds the pid of its engine as plain text")]
async fn pid_file_holds_pid(world: &mut PoolWorld, pool: String) {
    let engine = world.engine_of(&pool).await;
    let path = pid_path(world, &pool);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let digits = text.trim_end_matches('\n');
    assert!(
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()),
        "{} holds {text:?}, not a plain pid",
        path.display()
    );
    assert_eq!(
        digits.parse::<u32>().ok(),
        Some(engine.pid),
        "{} holds {text:?}; the engine's pid is {}",
        path.display(),
        engine.pid
    );
}

#[then(expr = "the pid file of pool {string} is gone")]
async fn pid_file_gone(world: &mut PoolWorld, pool: String) {
    let path = pid_path(world, &pool);
    PoolWorld::until(&format!("{} should be removed", path.display()), || {
        !path.exists()
    })
    .await;
}

#[then(expr = "pool {string} has no handoff file")]
fn no_handoff_file(world: &mut PoolWorld, pool: String) {
    let files = handoff_files(world, &pool);
    assert!(
        files.is_empty(),
        "pool '{pool}' should have no handoff file: {files:?}"
    );
}

/// Checked at once: `DELETE /v2/pools/{id}` answers only after the pool's files are removed.
#[then(expr = "the handoff file of pool {string} is gone")]
fn handoff_file_gone(world: &mut PoolWorld, pool: String) {
    let files = handoff_files(world, &pool);
    assert!(
        files.is_empty(),
        "the handoff file of pool '{pool}' should be removed: {files:?}"
    );
}

#[then(expr = "the answer's {string} is the handoff file {string}")]
fn answer_is_handoff_file(world: &mut PoolWorld, path: String, name: String) {
    let expected = handoff_path(world, &name);
    let answer = world.answer();
    assert_eq!(
        at(&answer.body, &path).as_str(),
        Some(expected.display().to_string().as_str()),
        "\"{path}\" of {}",
        answer.body
    );
    assert!(expected.is_file(), "{} should exist", expected.display());
}

/// Reads a handoff file, which must be pretty-printed JSON.
fn read_handoff(world: &PoolWorld, name: &str) -> Value {
    let path = handoff_path(world, name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains("\n  \""),
        "{} should be pretty-printed JSON:\n{text}",
        path.display()
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}:\n{text}", path.display()))
}

/// A table of `| field | JSON value |` rows; dotted fields reach into objects.
#[then(expr = "the handoff file {string} says:")]
fn handoff_says(world: &mut PoolWorld, name: String, step: &Step) {
    let handoff = read_handoff(world, &name);
    let table = step
        .table
        .as_ref()
        .unwrap_or_else(|| panic!("the step needs a table of | field | value |"));
    for row in &table.rows {
        let [field, value] = row.as_slice() else {
            panic!("each row is | field | value |, got {row:?}");
        };
        let expected: Value =
            serde_json::from_str(value).unwrap_or_else(|e| panic!("{value} is not JSON: {e}"));
        assert_eq!(
            at(&handoff, field),
            &expected,
            "{field} of {name}: {handoff}"
        );
    }
}

#[then(
    expr = "the handoff file {string} has the url, flags and pid of the engine of pool {string}"
)]
async fn handoff_matches_engine(world: &mut PoolWorld, name: String, pool: String) {
    let handoff = read_handoff(world, &name);
    let engine = world.engine_of(&pool).await;
    let prepared = world.prepared_mut(&pool).clone();
    let url = format!("http://127.0.0.1:{}", prepared["port"]);
    assert_eq!(
        handoff["url"].as_str(),
        Some(url.as_str()),
        "url: {handoff}"
    );
    assert_eq!(handoff["flags"], prepared["flags"], "flags: {handoff}");
    assert_eq!(
        handoff["pid"].as_u64(),
        Some(u64::from(engine.pid)),
        "pid: {handoff}"
    );
}
