//! The handoff check: what the API asks of the world before it registers an engine started by
//! someone else (`POST /v2/pools/{id}/handoff`). The world provides it (the handoff watcher's
//! own check, `watch::handoff::checker`); the API never probes an engine itself.
//!
//! Owns: the check's shape and its two refusals. Never: probes anything (it is a port).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pool_core::Handoff;

/// Why a handoff was refused before it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffRefused {
    /// A field is wrong (the URL names no address of this node): `INVALID_REQUEST`.
    Invalid {
        /// The field.
        field: String,
        /// Why.
        why: String,
    },
    /// The engine did not answer `{url}/health` with 200: `POOL_UNREADY`.
    Unhealthy(String),
}

/// The check's future.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), HandoffRefused>> + Send>>;

/// A handoff check, cheap to clone.
#[derive(Clone)]
pub struct HandoffCheck(Arc<dyn Fn(Handoff) -> CheckFuture + Send + Sync>);

impl HandoffCheck {
    /// A check that runs `check` on each handoff.
    pub fn new(check: impl Fn(Handoff) -> CheckFuture + Send + Sync + 'static) -> HandoffCheck {
        HandoffCheck(Arc::new(check))
    }

    /// Checks `handoff`.
    pub async fn check(&self, handoff: &Handoff) -> Result<(), HandoffRefused> {
        (self.0)(handoff.clone()).await
    }
}

impl Default for HandoffCheck {
    /// Refuses every handoff, saying why: a daemon always installs the world's check; an API
    /// built without one (a test of other routes) must not register engines unchecked.
    fn default() -> HandoffCheck {
        HandoffCheck::new(|_| {
            Box::pin(async {
                Err(HandoffRefused::Unhealthy(
                    "this API has no handoff check installed; handoffs are refused".to_string(),
                ))
            })
        })
    }
}

impl std::fmt::Debug for HandoffCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoffCheck")
    }
}
