//! An engine's session: the worker an engine-sim started with `--fork-worker` forks into a
//! process group of its own (it ignores SIGTERM), found through the engine's log line and
//! `/proc`, and whether it outlived its engine.

use crate::engines::EngineProcess;
use crate::world::PoolWorld;
use cucumber::then;
use std::time::{Duration, Instant};

/// How long the worker's log line may take to be written.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// `/proc/<pid>/stat` fields 3 onwards (after the command name), or `None` once it is gone.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The pid the `n`-th engine of `pool` logged for its worker (`worker pid N in ...`).
async fn worker_pid(world: &PoolWorld, pool: &str, n: usize) -> u32 {
    let log = world.runtime_dir().join("logs").join(format!("{pool}.log"));
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let pids: Vec<u32> = text
            .lines()
            .filter_map(|line| line.split("worker pid ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        if let Some(pid) = pids.get(n.saturating_sub(1)) {
            return *pid;
        }
        assert!(
            Instant::now() < deadline,
            "engine {n} of pool '{pool}' logged no worker pid in {}: {text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker of engine `n` runs in a process group of its own, in its engine's session: a
/// signal to the engine's group misses it. It is noted for the steps that follow.
#[then(
    expr = "the worker of engine {int} of pool {string} runs in a group of its own, in its engine's session"
)]
async fn worker_in_own_group(world: &mut PoolWorld, n: usize, pool: String) {
    let engines = world.engines_of(&pool).await;
    let engine = engines
        .get(n.saturating_sub(1))
        .unwrap_or_else(|| panic!("pool '{pool}' has no engine {n}: {engines:?}"));
    let pid = worker_pid(world, &pool, n).await;
    let fields = stat_fields(pid).unwrap_or_else(|| panic!("worker pid {pid} is gone"));
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let (group, session) = (field(2), field(3));
    assert_eq!(
        session,
        u64::from(engine.pid),
        "the worker {pid} is in the session of engine {}",
        engine.pid
    );
    assert_ne!(
        group,
        u64::from(engine.pid),
        "the worker {pid} left the engine's group"
    );
    let worker = EngineProcess {
        pid,
        start_time: field(19),
    };
    assert!(worker.is_running(), "the worker {pid} runs");
    world
        .noted_engines
        .insert(format!("{pool}/worker {n}"), worker);
}

/// The noted worker of engine `n` has ended (gone, or a zombie no one reaps), already: the
/// daemon ends an engine's session before it records the engine's end, so once a step saw
/// that end (the pool stopped, a restart requested) there is nothing to wait for.
#[then(expr = "the worker of engine {int} of pool {string} is gone")]
async fn worker_gone(world: &mut PoolWorld, n: usize, pool: String) {
    let worker = world
        .noted_engines
        .get(&format!("{pool}/worker {n}"))
        .copied()
        .unwrap_or_else(|| panic!("the worker of engine {n} of pool '{pool}' was not noted"));
    assert!(
        !worker.is_running(),
        "the worker of engine {n} of pool '{pool}' (pid {}) outlived its engine's recorded end",
        worker.pid
    );
}
