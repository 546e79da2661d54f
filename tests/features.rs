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
//! Two passes, with the same steps: every feature with the daemon reading its GPUs from a JSON
//! fixture, then the GPU features (`features/gpu/`) again with the daemon reading them through
//! NVML (`src/gpu/nvml.rs`, the real code path) over the fake NVML library
//! (`tests/fake-nvml/fake_nvml.c`, built here with `cc`; see `features/gpu_source.rs`). A
//! scenario tagged `@nvml` runs only in the second pass (it makes NVML calls fail, which the
//! fixture has none of), one tagged `@fixture` only in the first (its feature file says why).
//! Without a C compiler the second pass is skipped with the reason, and fails under `CI=true`.
//! `POOL_MANAGERD_FEATURES_GPU=fixture` (or `=nvml`) runs one pass only; cucumber's own
//! options (`-i`, `--name`, `--tags`) apply to both.
//!
//! Layout: `features/world.rs` (the world), `features/live.rs` (the daemon and its client),
//! `features/engines.rs` (prepared engines, `/proc`), `features/gpu_source.rs` (fixture or
//! fake NVML), and one step module per concept under `features/steps/`.

#[path = "features/daemon_process.rs"]
mod daemon_process;
#[path = "features/engines.rs"]
mod engines;
#[path = "support/fake_nvml.rs"]
mod fake_nvml;
#[path = "features/gpu_source.rs"]
mod gpu_source;
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

use std::rc::Rc;

use cucumber::gherkin::{Feature, Rule, Scenario};
use cucumber::tag::Ext as _;
use cucumber::writer::Stats as _;
use cucumber::World as _;
use futures::FutureExt as _;

/// Scenarios run at once. Most of a scenario's time is spent waiting on engines and fsyncs,
/// so a few at a time keep two cores busy without starving the timing checks.
const CONCURRENT_SCENARIOS: usize = 4;
/// The features run a second time over the fake NVML library.
const GPU_FEATURES: &str = "features/gpu/";
/// A scenario (or rule, or feature) that runs only over the fake NVML library.
const NVML_ONLY: &str = "nvml";
/// A scenario (or rule, or feature) that runs only over the fixture.
const FIXTURE_ONLY: &str = "fixture";
/// `POOL_MANAGERD_FEATURES_GPU=fixture` or `=nvml` runs one pass only (default: both).
const PASS_VARIABLE: &str = "POOL_MANAGERD_FEATURES_GPU";

type Cli = cucumber::cli::Opts<
    cucumber::parser::basic::Cli,
    cucumber::runner::basic::Cli,
    cucumber::writer::basic::Cli,
>;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    // The command line's own filters (`--name`, `--tags`) are applied here, together with
    // each pass's choice of scenarios (cucumber would put them in its place).
    let mut cli = Cli::parsed();
    let by_name = cli.re_filter.take();
    let by_tags = cli.tags_filter.take();
    let chosen = Rc::new(
        move |feature: &Feature, rule: Option<&Rule>, scenario: &Scenario| {
            by_name
                .as_ref()
                .is_none_or(|re| re.is_match(&scenario.name))
                && by_tags
                    .as_ref()
                    .is_none_or(|tags| tags.eval(tags_of(feature, rule, scenario).into_iter()))
        },
    );
    let pass = std::env::var(PASS_VARIABLE).unwrap_or_default();
    let mut failures = Vec::new();
    if pass != "nvml" {
        gpu_source::select(None);
        let chosen = chosen.clone();
        let filter = move |f: &Feature, r: Option<&Rule>, s: &Scenario| {
            chosen(f, r, s) && !tags_of(f, r, s).iter().any(|t| *t == NVML_ONLY)
        };
        failures.extend(run(features, &cli, filter).await);
    }
    if pass != "fixture" {
        let built = tempfile::Builder::new()
            .prefix("pool-managerd-fake-nvml-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temporary directory: {e}"));
        if let Some(library) = fake_nvml::build_library(built.path()) {
            println!("\nThe GPU features again, over the fake NVML library ({GPU_FEATURES}):\n");
            gpu_source::select(Some(library));
            let filter = move |f: &Feature, r: Option<&Rule>, s: &Scenario| {
                let gpu = f
                    .path
                    .as_ref()
                    .is_some_and(|p| p.to_string_lossy().contains(GPU_FEATURES));
                gpu && chosen(f, r, s) && !tags_of(f, r, s).iter().any(|t| *t == FIXTURE_ONLY)
            };
            failures.extend(
                run(features, &cli, filter)
                    .await
                    .map(|f| format!("over NVML: {f}")),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

/// The tags of a scenario, its rule's and its feature's.
fn tags_of<'a>(
    feature: &'a Feature,
    rule: Option<&'a Rule>,
    scenario: &'a Scenario,
) -> Vec<&'a String> {
    feature
        .tags
        .iter()
        .chain(rule.into_iter().flat_map(|r| &r.tags))
        .chain(scenario.tags.iter())
        .collect()
}

/// One pass over the features that `filter` keeps; what failed, if anything.
async fn run(
    features: &str,
    cli: &Cli,
    filter: impl Fn(&Feature, Option<&Rule>, &Scenario) -> bool + 'static,
) -> Option<String> {
    let writer = world::PoolWorld::cucumber()
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
        .with_cli(cli.clone())
        .filter_run(features, filter)
        .await;
    writer.execution_has_failed().then(|| {
        format!(
            "{} failed step(s), {} skipped, {} parsing error(s), {} hook error(s)",
            writer.failed_steps(),
            writer.skipped_steps(),
            writer.parsing_errors(),
            writer.hook_errors()
        )
    })
}
