//! pool-managerd: the per-node daemon of an LLM serving stack.
//!
//! Layout of this crate (the package root; see `ARCHITECTURE.md` for the whole map):
//! - [`core`] re-exports `pool-core`, the pure state machine (`decide`, `evolve`, `effects`).
//! - [`schema`] binds the core's `Event` to the journal (format version, upcasting, kind names).
//! - [`projection`] rebuilds the registry from the journal: snapshot + tail, or up to a seq/time.
//! - [`script`] drives the core with no I/O: the source of recorded journals and test histories.
//! - [`table`] renders a registry (and a GPU inventory) for people.
//! - [`gpu`] the GPUs: an inventory behind a trait (NVML, "no GPU", a JSON fixture) and the loop
//!   that reports what it sees to the node.
//! - [`metrics`] Prometheus metrics: events to counters and histograms, the registry to gauges,
//!   one recorder per node, `GET /metrics`.
//! - [`cli`] the command line: `journal {show,export,import,verify,stats,repair}` and `replay`.

pub use pool_core as core;

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine_sim;
pub mod gpu;
pub mod metrics;
pub mod node;
pub mod projection;
pub mod schema;
pub mod script;
pub mod supervisor;
pub mod table;
