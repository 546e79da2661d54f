//! The Gherkin feature suite (`features/**/*.feature`), run by cucumber.
//!
//! Registry features drive the pure core through `pool_managerd::script::Scripted`; the
//! journal feature appends the script's envelopes to a real journal in a temporary directory,
//! damages it through the raw store, reopens and replays it.
//!
//! Any undefined, skipped, ambiguous or failed step fails the run with a non-zero exit.
//!
//! Layout: `features/world.rs` (the world and its shared helpers) and one step module per
//! concept under `features/steps/` (pools, leases, health, journal).

#[path = "features/steps/mod.rs"]
mod steps;
#[path = "features/world.rs"]
mod world;

use cucumber::World as _;

fn main() {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    futures::executor::block_on(
        world::PoolWorld::cucumber()
            .fail_on_skipped()
            .run_and_exit(features),
    );
}
