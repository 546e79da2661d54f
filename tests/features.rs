//! The Gherkin feature suite (`features/**/*.feature`), run by cucumber.
//!
//! Most features drive the real daemon (`pool_managerd::daemon::Daemon`, started in this
//! process on a free loopback port over a temporary journal and runtime directory) through
//! its HTTP API, with real engine processes: `engine-sim` (the workspace's test engine) and,
//! in one scenario, Python's `http.server` (any HTTP server with a health route must work as
//! an engine; the suite needs `python3` on `PATH`). The journal feature drives the pure core
//! through `pool_managerd::script::Scripted` into a real journal that it damages and replays.
//!
//! After every scenario, whatever its outcome, the clean-up removes every pool over the API
//! (stopping its engine), shuts the daemon down, and kills any engine the journal says was
//! spawned and still runs: no engine outlives the run. Such a survivor, or a pool that could
//! not be removed, fails the run (a failed `after` hook).
//!
//! Any undefined, skipped, ambiguous or failed step fails the run with a non-zero exit.
//!
//! Layout: `features/world.rs` (the world), `features/live.rs` (the daemon and its client),
//! `features/engines.rs` (prepared engines, `/proc`), and one step module per concept under
//! `features/steps/`.

#[path = "features/daemon_process.rs"]
mod daemon_process;
#[path = "features/engines.rs"]
mod engines;
#[path = "features/live.rs"]
mod live;
#[path = "support/process.rs"]
mod process;
#[path = "support/serve.rs"]
mod serve;
#[path = "features/steps/mod.rs"]
mod steps;
#[path = "features/world.rs"]
mod world;

use cucumber::World as _;
use futures::FutureExt as _;

/// Scenarios run at once. Most of a scenario's time is spent waiting on engines and fsyncs,
/// so a few at a time keep two cores busy without starving the timing checks.
const CONCURRENT_SCENARIOS: usize = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    world::PoolWorld::cucumber()
        .max_concurrent_scenarios(CONCURRENT_SCENARIOS)
        .after(|_feature, _rule, scenario, _finished, world| {
            async move {
                let Some(daemon) = world.and_then(world::PoolWorld::take_daemon) else {
                    return;
                };
                let problems = daemon.clean_up().await;
                // A failed hook fails the run: an engine that outlived its pool's removal,
                // or a pool that could not be removed, is a defect, not noise.
                assert!(
                    problems.is_empty(),
                    "clean-up after \"{}\":\n{}",
                    scenario.name,
                    problems.join("\n")
                );
            }
            .boxed_local()
        })
        .fail_on_skipped()
        .run_and_exit(features)
        .await;
}
