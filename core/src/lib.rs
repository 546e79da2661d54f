//! pool-core: the pure core of pool-managerd.
//!
//! An event-sourced state machine over three pure functions:
//! - [`decide()`]`(&State, &Input, &Context) -> Result<Vec<Fact>, Rejection>`: what an input
//!   means (commands from the API, observations from the shell);
//! - [`evolve()`]`(State, Stamp, &Event) -> State`: the fold that rebuilds the registry, total
//!   and infallible;
//! - [`effects`]`(&State, Stamp, &Event) -> Vec<Effect>`: what the shell must do once an event
//!   is durable and folded (state *after* the event). Replay runs `evolve` only.
//!
//! Modules: [`ids`] (validated ids), [`engine`] (prepared engine, handoff, GPUs), [`gpu`]
//! (device masks, MIG devices, VRAM fit and the tensor-split planner), [`event`]
//! (the journal's vocabulary), [`command`] (inputs, context), [`state`] (the registry),
//! [`status`] (public projection), [`policy`] (supervision knobs and pure functions),
//! [`progress`] (whether a working engine makes progress), [`rejection`] (error codes), [`decide`](mod@decide), [`evolve`](mod@evolve),
//! [`effect`] (effects and timers), [`explain`](mod@explain) (why a pool is in its phase, from
//! the history).
//!
//! **Architecture Invariant:** no I/O, no clock, no randomness, no panics on any input; the
//! only dependencies are serde and thiserror (`tests/boundary.rs` checks this).

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod code;
pub mod command;
pub mod decide;
pub mod effect;
pub mod engine;
pub mod event;
pub mod evolve;
pub mod explain;
pub mod gpu;
pub mod ids;
pub mod policy;
pub mod progress;
pub mod rejection;
pub mod state;
pub mod status;
mod surge;

pub use code::ErrorCode;
pub use command::{Command, Context, Input, Observation, ReloadStrategyAsked};
pub use decide::{decide, tail as tail_text};
pub use effect::{effects, resume_effects, Effect, Timer};
pub use engine::{
    handoff_url_host_port, mask_tokens, GpuInfo, Handoff, HandoffModel, PreparedEngine,
    TensorSplit, SLOTS_MAX,
};
pub use event::{
    DrainOutcome, Event, ExitReason, Fact, FailureClass, ReloadStage, ReloadStrategy, Scope,
    SecondEnd, SecondStop, Stamp, StartFailure, StartPurpose, StopReason, StormClass,
    EVENT_FORMAT_VERSION,
};
pub use evolve::{evolve, evolve_in_place};
pub use explain::{explain, render_text, Explainer, Explanation, Recorded};
pub use gpu::{
    engine_for_spawn, resolve_mask, DeviceKind, Inventory, MaskError, MigDeviceInfo,
    PlacementInputs, ResolvedDevice,
};
pub use ids::{InvalidLeaseId, InvalidPoolId, LeaseId, PoolId};
pub use policy::{
    backoff_delay_ms, restart_delay_ms, BackoffPolicy, BreakerPolicy, HealthPolicy, Policy,
    QuarantinePolicy, ReasonMultiplier, StopPolicy, StormPolicy,
};
pub use progress::ProgressRequest;
pub use rejection::Rejection;
pub use state::{
    Activity, Lane, Pool, Quarantine, Second, SecondRole, State, STATE_SNAPSHOT_VERSION,
};
pub use status::{BreakerState, Phase, PoolStatus, RetiringEngine};
