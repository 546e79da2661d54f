//! A script's reloads that ask for a strategy (a surge: the new engine beside the old one).
//! The world's answers to a surge's effects are the usual steps ([`Scripted::spawn_engine`],
//! [`Scripted::pass_health`], [`Scripted::time_out_health`], [`Scripted::finish_stop`]): each
//! takes the newest pending effect of its kind, which is the surge's own once it is asked for.
//!
//! Never: answers an effect nobody asked for.

use pool_core::{Command, ReloadStrategyAsked};

use super::{pool_id, ScriptError, Scripted};
use crate::schema::PoolEnvelope;

impl Scripted {
    /// The orchestrator asks for a reload to `new_model_ref` with `strategy`, the shell having
    /// found `surge_port` free (the drain deadline is the default one).
    pub fn reload_with(
        &mut self,
        pool: &str,
        new_model_ref: &str,
        strategy: ReloadStrategyAsked,
        surge_port: Option<u16>,
    ) -> Result<Vec<PoolEnvelope>, ScriptError> {
        let placement = self.placement;
        self.submit(Command::Reload {
            pool_id: pool_id(pool)?,
            new_model_ref: new_model_ref.to_string(),
            digest: None,
            drain_deadline_ms: None,
            strategy,
            surge_port,
            placement,
        })
    }
}
