//! The leftover of an earlier start: an engine the journal never recorded (the daemon died
//! between its spawn and `EngineSpawned`), killed before the next start of its pool so that a
//! pool never has two engines.
//!
//! Looked for before the first spawn of a worker's life, and again only after a spawn whose
//! `EngineSpawned` was not reported: the engines a worker spawned and reported it tracks
//! itself, and their sessions are ended with them (`session.rs`), so no later spawn of its
//! life can leave one.
//!
//! A worker looks in its own lane only: its lane's pid file (`<pool>.pid` or `<pool>@b.pid`).
//!
//! Never: kills a process that is not a session leader running the pool's exact command
//! line or named by its lane's pid file with the same binary, nor any engine the registry
//! records (another pool's, or this pool's engine or second engine: a surge's new engine
//! starts while the old one serves), nor anything [`super::proof::never_signalled`] refuses.

use std::time::Duration;

use nix::sys::signal::Signal;
use pool_core::PreparedEngine;

use super::worker::PoolWorker;
use super::{files, process, KILL_WAIT_MS};

impl PoolWorker {
    /// A daemon killed between spawning an engine and journaling `EngineSpawned` leaves an
    /// engine the journal does not know, holding the pool's port. It is found by its pid file
    /// (if the daemon got to write it) or by its exact command line (binary and flags, which
    /// hold its port), leading its own session as our engines do: its group is killed before
    /// another start, so that a pool never has two engines. Anything else is left alone, and
    /// so is another pool's engine (the same command line may serve two pools in turn: its
    /// port then fails this start with `PORT_IN_USE`).
    pub(super) async fn kill_leftover(&self, engine: &PreparedEngine) {
        let pid_path = self.pid_path();
        let argv: Vec<String> = std::iter::once(engine.binary_path.clone())
            .chain(engine.flags.iter().cloned())
            .collect();
        let mut suspects = process::session_leaders_running(&argv);
        if let Ok(pid) = files::read_pid_file(&pid_path) {
            let same_binary = match (
                process::exe(pid),
                process::resolve_binary(&engine.binary_path),
            ) {
                (Some(exe), Some(binary)) => {
                    let exe = exe.display().to_string();
                    exe.strip_suffix(" (deleted)").unwrap_or(&exe) == binary.display().to_string()
                }
                _ => false,
            };
            if same_binary && process::session_id(pid) == Some(pid) && !process::is_gone(pid) {
                suspects.push(pid);
            }
        }
        suspects.sort_unstable();
        suspects.dedup();
        let recorded = super::proof::recorded_pids(&self.shared.registry.load().state, None);
        suspects.retain(|pid| super::proof::never_signalled(*pid, &recorded).is_ok());
        let tracked = self
            .engine
            .as_ref()
            .filter(|e| e.exited.borrow().is_none())
            .map(|e| e.pid);
        for pid in suspects.into_iter().filter(|pid| Some(*pid) != tracked) {
            tracing::warn!(
                pool_id = %self.pool_id,
                pid,
                "an engine the journal never recorded (started just before the daemon died) still runs; killing it before the new start"
            );
            let _ = process::signal_group(pid, Signal::SIGKILL);
            let gone = tokio::time::timeout(
                Duration::from_millis(KILL_WAIT_MS),
                process::wait_foreign(pid),
            )
            .await;
            if gone.is_err() {
                tracing::error!(pool_id = %self.pool_id, pid, "the leftover engine is still present {KILL_WAIT_MS} ms after SIGKILL");
            }
        }
    }
}
