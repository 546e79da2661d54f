//! pool-managerd: the per-node daemon of an LLM serving stack.
//!
//! The layer map, bottom to top (a module imports only its own layer or lower ones;
//! `tests/layers.rs` fails otherwise; `ARCHITECTURE.md` has the whole map):
//! 0. vocabulary: [`clock`], [`config`], [`schema`] (the core's `Event` bound to the journal:
//!    format version, upcasting, kind names), [`projection`] (the registry rebuilt from the
//!    journal: snapshot + tail, or up to a seq/time). Below them, the crates `pool-core`
//!    ([`core`], the pure state machine) and `pool-journal`.
//! 1. ports: [`port`] (the actor's message protocol and the published registry),
//!    [`metrics`] (events to counters and histograms, the registry to gauges).
//! 2. the world: [`supervisor`] (effects against processes and files), [`gpu`] (an inventory
//!    behind a trait: NVML, "no GPU", a JSON fixture), [`watch`] (the input sources: the
//!    handoff watcher and the GPU loop), [`cluster`] (the journal published to NATS).
//! 3. the actor: [`node`].
//! 4. HTTP: [`api`] (the only place that knows axum, utoipa and hyper).
//! 5. assembly: [`daemon`].
//! 6. entry: [`cli`] and [`table`] (rendering for people).
//!
//! Apart, test tools that only the entry layer uses: [`engine_sim`] (a fake engine) and
//! [`script`] (drives the core with no I/O: recorded journals and test histories).

pub use pool_core as core;

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod engine_sim;
pub mod gpu;
pub mod metrics;
pub mod node;
pub mod port;
pub mod projection;
pub mod schema;
pub mod script;
pub mod supervisor;
pub mod table;
pub mod watch;
