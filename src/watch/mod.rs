//! The input sources: tasks that watch the world and report what they see to the node, each on
//! its own schedule. [`handoff`] follows `<runtime>/engines/` for engines started by someone
//! else (and provides the check the API asks before a handoff is recorded); [`gpu`] takes a
//! reading of the GPU inventory every `[gpu] poll_interval_ms` and reports what the core
//! needs to decide on.
//!
//! Layer: the world, beside `supervisor` (which runs effects) and `gpu` (the inventory).
//! **Must never:** change a pool itself (they submit inputs through the node's
//! [`Inbox`](crate::port::Inbox); the core decides), import the actor (`node`) or anything
//! above it (`tests/layers.rs`), or block the actor.

pub mod gpu;
pub mod handoff;

pub use gpu::GpuObserver;
pub use handoff::HandoffWatcher;
