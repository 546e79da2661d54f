//! The actor's message protocol: what the world (the supervisor, the watchers) and the HTTP
//! layer send the node, and what it answers.
//!
//! Owns: `NodeInput` and its submissions and waiters, [`Reporter`] (the supervisor's way in)
//! and [`Inbox`] (a watcher's way in: submit and read the published registry), the answers
//! ([`Committed`], [`PreloadOutcome`], [`ReloadOutcome`]) and [`NodeError`].
//! **Must never:** decide anything or touch the world; it only carries messages.

use std::sync::Arc;

use pool_core::{Effect, ErrorCode, Input, Observation, PoolStatus, Rejection, State};
use pool_journal::JournalError;
use tokio::sync::{mpsc, oneshot};

use super::registry::Registry;
use crate::schema::PoolEnvelope;

/// Why the node could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The core refused (nothing journaled).
    #[error("{0}")]
    Rejected(#[from] Rejection),
    /// The start failed (SPAWN_FAILED, HEALTH_TIMEOUT, ENGINE_EXITED) or was refused by the
    /// shell (`code`), with the reason that is now the pool's `last_error`.
    #[error("{reason}")]
    Failed {
        /// The SPEC code.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
    /// A reload failed after its model was staged (`RELOAD_FAILED`); `rolled_back` when the
    /// old model serves again.
    #[error("{reason}")]
    ReloadFailed {
        /// Why.
        reason: String,
        /// The old engine is ready again.
        rolled_back: bool,
    },
    /// The journal failed; the change did not happen.
    #[error(
        "journal failure: {0}; the daemon takes no further changes until restarted (see its log)"
    )]
    Journal(String),
    /// The journal cannot take writes now (a full, read-only or failing disk): nothing was
    /// recorded, so nothing was done. The daemon retries by itself.
    #[error("{0}")]
    JournalUnavailable(String),
    /// The seq asked for was dropped by the journal's retention.
    #[error(
        "seq {requested} is no longer retained: the history starts at seq {earliest} (older \
         events were dropped by retention, [journal] retain_bytes / retain_ms)"
    )]
    HistoryExpired {
        /// The seq asked for.
        requested: u64,
        /// The earliest seq that can be asked for.
        earliest: u64,
    },
    /// The wait for an outcome gave up (the operation goes on).
    #[error("{0}")]
    Timeout(String),
    /// The daemon is stopping.
    #[error("the daemon is shutting down; retry against its next start")]
    ShuttingDown,
}

impl NodeError {
    /// A read's journal error, as the API answers it.
    pub(crate) fn of_read(error: JournalError) -> NodeError {
        match error {
            JournalError::HistoryExpired {
                requested,
                earliest,
            } => NodeError::HistoryExpired {
                requested,
                earliest,
            },
            other => NodeError::Journal(other.to_string()),
        }
    }

    /// The SPEC section 5 code.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::Rejected(rejection) => rejection.code(),
            NodeError::Failed { code, .. } => *code,
            NodeError::ReloadFailed { .. } => ErrorCode::ReloadFailed,
            NodeError::JournalUnavailable(_) => ErrorCode::JournalUnavailable,
            NodeError::HistoryExpired { .. } => ErrorCode::HistoryExpired,
            NodeError::Journal(_) | NodeError::Timeout(_) | NodeError::ShuttingDown => {
                ErrorCode::Internal
            }
        }
    }
}

/// The journal's health and sizes.
#[derive(Debug, Clone)]
pub struct JournalReport {
    /// Writable or not, and why; write errors by kind.
    pub health: pool_journal::JournalHealth,
    /// Segments, bytes, the retained range.
    pub usage: pool_journal::Usage,
}

/// What a durable input produced.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The envelopes appended for it (empty when the input was a no-op).
    pub envelopes: Vec<PoolEnvelope>,
    /// The state right after the batch it was part of.
    pub state: Arc<State>,
}

/// What a waiting preload answers.
#[derive(Debug, Clone)]
pub struct PreloadOutcome {
    /// The pool's status once ready (or accepted, without wait).
    pub status: PoolStatus,
    /// Milliseconds from the request to ready (by the decision clock).
    pub ready_ms: u64,
}

pub(crate) enum Waiter {
    Preload {
        reply: oneshot::Sender<Result<PreloadOutcome, NodeError>>,
        since_ms: u64,
        /// The start failed with a live engine: answer once it is gone.
        failed: Option<NodeError>,
    },
    Removed {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Reload {
        reply: oneshot::Sender<Result<ReloadOutcome, NodeError>>,
        /// The reload failed after staging and the old engine is starting again: answer
        /// once it is ready (or the rollback fails too).
        failed: Option<String>,
        /// The strategy the core chose (`ReloadStrategyChosen`), once seen.
        chosen: Option<ChosenStrategy>,
    },
}

/// What a reload answers.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// The pool's status after it.
    pub status: PoolStatus,
    /// From the request to ready on the new model (0 for a no-op).
    pub duration_ms: u64,
    /// The pool already served that model: nothing was done.
    pub noop: bool,
    /// How the engine was replaced, and why (`None` for a no-op).
    pub chosen: Option<ChosenStrategy>,
}

/// The strategy a reload took (`ReloadStrategyChosen`), for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenStrategy {
    /// `drain_first` or `surge`.
    pub strategy: pool_core::ReloadStrategy,
    /// Why, in words.
    pub reason: String,
}

pub(crate) struct Submission {
    pub(crate) input: Input,
    pub(crate) cause: Option<u64>,
    pub(crate) reply: Option<oneshot::Sender<Result<Committed, NodeError>>>,
    pub(crate) waiter: Option<Waiter>,
    /// When it was observed, if not now: a queued observation recorded once the journal
    /// takes writes again is decided and stamped at the time it happened.
    pub(crate) observed_ms: Option<u64>,
}

#[allow(clippy::large_enum_variant)] // moved once per input; boxing would only add an allocation
pub(crate) enum NodeInput {
    Submit(Submission),
    /// Effects that re-attach the world after a replay (`resume_effects`).
    Resume {
        effects: Vec<Effect>,
    },
    Shutdown {
        reason: String,
        reply: oneshot::Sender<()>,
    },
}

/// How the supervisor reports observations to the actor.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<NodeInput>,
}

impl Reporter {
    /// A reporter into the actor's inbox `tx`.
    pub(crate) fn new(tx: mpsc::Sender<NodeInput>) -> Reporter {
        Reporter { tx }
    }

    /// Sends `observation` (the answer to the effect of event `cause`); waits while the inbox
    /// is full; dropped silently once the actor is gone (the daemon is stopping).
    pub async fn report(&self, cause: u64, observation: Observation) {
        let _ = self
            .tx
            .send(NodeInput::Submit(Submission {
                input: Input::Observation(observation),
                cause: Some(cause),
                reply: None,
                waiter: None,
                observed_ms: None,
            }))
            .await;
    }
}

/// A watcher's way into the node: submit an input and wait for its durable outcome, and read
/// the published registry. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<NodeInput>,
    registry: Registry,
}

impl Inbox {
    /// The inbox of the actor reading `tx`, publishing `registry`.
    pub(crate) fn new(tx: mpsc::Sender<NodeInput>, registry: Registry) -> Inbox {
        Inbox { tx, registry }
    }

    /// The published registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Decides on `input`, appends its events durably, and answers with them.
    pub async fn submit(&self, input: impl Into<Input>) -> Result<Committed, NodeError> {
        self.send(input.into(), None).await
    }

    /// Submits `input` with a `waiter` answered later by the actor.
    pub(crate) async fn send(
        &self,
        input: Input,
        waiter: Option<Waiter>,
    ) -> Result<Committed, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(NodeInput::Submit(Submission {
                input,
                cause: None,
                reply: Some(reply),
                waiter,
                observed_ms: None,
            }))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Hands start-up's resume effects to the actor (dispatched after the start-up events).
    pub(crate) async fn resume(&self, effects: Vec<Effect>) {
        let _ = self.tx.send(NodeInput::Resume { effects }).await;
    }

    /// Asks the actor to stop; answers once it has.
    pub(crate) async fn shutdown(&self, reason: String) {
        let (reply, done) = oneshot::channel();
        if self
            .tx
            .send(NodeInput::Shutdown { reason, reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }
}
