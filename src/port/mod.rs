//! Vocabulary and ports: what the layers above the world share with the actor, owned below
//! everything that reports to it. The supervisor, the GPU loop and the handoff watcher reach
//! the node only through these types, never through `node` itself.
//!
//! Owns: the actor's message protocol ([`protocol`]), the published registry ([`registry`]:
//! what readers see of the state, swapped after each durable batch), and the handoff check
//! the API asks of the world ([`handoff`]).
//! **Must never:** import the world (`supervisor`, `gpu`), the actor (`node`), HTTP (`api`)
//! or anything above them (`tests/layers.rs`).

pub mod handoff;
pub mod protocol;
pub mod registry;

pub use handoff::{HandoffCheck, HandoffRefused};
pub use protocol::{
    ChosenStrategy, Committed, Inbox, JournalReport, NodeError, PreloadOutcome, ReloadOutcome,
    Reporter,
};
pub(crate) use protocol::{NodeInput, Submission, Waiter};
pub use registry::{GpuSummary, JournalView, Published, Registry};
