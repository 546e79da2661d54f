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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::cpu_engine;

    #[test]
    fn a_surge_switches_and_shows_the_old_engine_retiring_until_its_lease_returns() {
        let mut s = Scripted::new(1_772_791_200_000, 5);
        s.preload("p", cpu_engine("p", 8090, "/m/a.gguf", Some(2)))
            .unwrap();
        let old = s.spawn_engine("p").unwrap();
        s.pass_health("p", 1_000, None).unwrap();
        s.acquire_lease("p", "lease-1").unwrap();
        s.reload_with("p", "/m/b.gguf", ReloadStrategyAsked::Auto, Some(9301))
            .unwrap();
        s.stage_model("p", "/m/b.gguf").unwrap();
        let new = s.spawn_engine("p").unwrap();
        s.pass_health("p", 1_000, None).unwrap();
        let status = s.state().status("p").unwrap();
        assert_eq!(status.pid, Some(new));
        assert_eq!(status.url.as_deref(), Some("http://127.0.0.1:9301"));
        let retiring = status.retiring.expect("the old engine retires");
        assert_eq!((retiring.pid, retiring.leases), (old, 1));
        s.release_lease("p", "lease-1").unwrap();
        s.finish_stop("p", true).unwrap();
        assert_eq!(s.state().status("p").unwrap().retiring, None);
    }
}
