//! Engines of ours that the registry does not know, found at start-up.
//!
//! A pid file in `<runtime>/pids/` (`<pool>.pid` for a pool's lane A, `<pool>@b.pid` for its
//! lane B) can name a running engine that the registry does not know:
//! its events were lost (a journal loss accepted with `journal repair --accept-loss`), or the
//! daemon died between starting it and recording it. Start-up reconciles the pid files with
//! `/proc` so that no engine is left running unknown:
//!
//! - a pid file is **known** when its pid is its pool's engine or second engine in the
//!   registry (either lane's file may name either: a surge's switch swaps the lanes' roles);
//! - a pid file is **trusted** only when the daemon's own user owns it and no one else may
//!   write it (`trusted_file`); any other is removed unread (whoever wrote it could name any
//!   process), and its process is left alone;
//! - the engine is **ours** when it is not pid 0 or 1, not the daemon or its process group,
//!   not an engine the registry records, leads its own session (our engines do) and started at
//!   most [`PID_FILE_LAG_MAX_MS`] before its pid file was written, and not after it;
//! - ours, of a pool the registry does not know at all, and named by a valid handoff file of
//!   its pool (`<runtime>/engines/`, with its pid): **adopted**, registered like any handoff;
//! - ours otherwise (no handoff file names it, or the registry knows its pool and has its own
//!   plan for it, such as the start the lost events had begun, which start-up resumes):
//!   **stopped** (SIGTERM to its group, the stop grace, SIGKILL) and recorded
//!   (`UntrackedEngineStopped`);
//! - gone, or not that engine (the pid was reused by another program): the stale pid file is
//!   removed, and that process is left alone.
//!
//! Owns: that scan and the stop. **Must never:** signal a process that fails the identity
//! check, or touch a pid file whose engine the registry knows (start-up's `VerifyEngine`
//! handles those).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::sys::signal::Signal;
use pool_core::{Handoff, Lane, State};

use super::files::{self, RuntimeDirs};
use super::process;

/// The most a pid file may be written after its engine started (spawn, then the file).
pub const PID_FILE_LAG_MAX_MS: u64 = 60_000;
/// Slack for clocks and rounding the other way (the file is never older than its engine).
const PID_FILE_EARLY_MS: u64 = 2_000;

/// What the scan found for one pid file.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a handful per start-up; boxing would only add noise
pub enum Found {
    /// Ours, named by a handoff file: register it.
    Adopt {
        /// The pool.
        pool_id: String,
        /// The handoff document.
        handoff: Handoff,
        /// Its file.
        path: PathBuf,
    },
    /// Ours, named by nothing: stop it and record it.
    Stop {
        /// The pool of its pid file.
        pool_id: String,
        /// The engine.
        pid: u32,
        /// Its pid file.
        pid_file: PathBuf,
    },
    /// Gone or not ours: remove the pid file only.
    Stale {
        /// The pid file.
        pid_file: PathBuf,
        /// Why it is stale.
        why: String,
    },
}

/// The pid files whose engine the registry `state` does not know, and what to do with each.
pub fn scan(state: &State, dirs: &RuntimeDirs) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(&dirs.pids) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some((pool_id, _lane)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(pool_and_lane)
        else {
            continue;
        };
        if let Err(why) = trusted_file(&path) {
            found.push(Found::Stale {
                pid_file: path,
                why,
            });
            continue;
        }
        let Ok(pid) = files::read_pid_file(&path) else {
            continue;
        };
        let known = state
            .pool(&pool_id)
            .is_some_and(|pool| pool.pid() == Some(pid) || pool.is_second(pid));
        if known {
            continue;
        }
        let pool_known = state.pool(&pool_id).is_some();
        let recorded = super::proof::recorded_pids(state, None);
        if let Err(why) = super::proof::never_signalled(pid, &recorded) {
            found.push(Found::Stale {
                pid_file: path,
                why: format!("{why}: never an engine to stop"),
            });
            continue;
        }
        found.push(judge(&pool_id, pid, &path, dirs, pool_known));
    }
    found
}

/// The pool and lane of a pid file's name: `<pool>.pid` is lane A, `<pool>@b.pid` lane B
/// (pool ids never hold '@'); `None` for any other name.
pub fn pool_and_lane(file_name: &str) -> Option<(String, Lane)> {
    let stem = file_name.strip_suffix(".pid")?;
    let (pool, lane) = match stem.strip_suffix(Lane::B.suffix()) {
        Some(pool) => (pool, Lane::B),
        None => (stem, Lane::A),
    };
    (!pool.is_empty() && !pool.contains('@')).then(|| (pool.to_string(), lane))
}

fn judge(pool_id: &str, pid: u32, pid_file: &Path, dirs: &RuntimeDirs, pool_known: bool) -> Found {
    if process::is_gone(pid) {
        return Found::Stale {
            pid_file: pid_file.to_path_buf(),
            why: format!("engine {pid} is gone"),
        };
    }
    if let Err(why) = ours(pid, pid_file) {
        return Found::Stale {
            pid_file: pid_file.to_path_buf(),
            why,
        };
    }
    let handoff = if pool_known {
        None
    } else {
        handoff_naming(pool_id, pid, dirs)
    };
    match handoff {
        Some((handoff, path)) => Found::Adopt {
            pool_id: pool_id.to_string(),
            handoff,
            path,
        },
        None => Found::Stop {
            pool_id: pool_id.to_string(),
            pid,
            pid_file: pid_file.to_path_buf(),
        },
    }
}

/// Whether the pid file at `path` can only have been written by the daemon's user: that user
/// owns it and neither its group nor others may write it. Checked on the file itself (not
/// followed through a link), so a link planted in `pids/` is refused too.
pub fn trusted_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a plain file: not trusted",
            path.display()
        ));
    }
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by the pool manager's uid {me}: not trusted (who can \
             write the runtime directory? keep it the daemon's user's only)",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by its group or others (mode {:o}): not trusted",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether `pid` is the engine its pid file was written for (see the module docs).
fn ours(pid: u32, pid_file: &Path) -> Result<(), String> {
    if process::session_id(pid) != Some(pid) {
        return Err(format!(
            "process {pid} does not lead its own session: not an engine of ours (the pid was reused)"
        ));
    }
    let started = start_wall_ms(pid).ok_or_else(|| format!("no start time for process {pid}"))?;
    let written = std::fs::metadata(pid_file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| format!("no time for {}", pid_file.display()))?;
    if started > written + PID_FILE_EARLY_MS || started + PID_FILE_LAG_MAX_MS < written {
        return Err(format!(
            "process {pid} started at {started} ms, its pid file was written at {written} ms: \
             not the engine it was written for (the pid was reused)"
        ));
    }
    Ok(())
}

/// When `pid` started, in ms since the epoch (boot time plus its start ticks).
fn start_wall_ms(pid: u32) -> Option<u64> {
    let ticks = process::start_time(pid)?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|hz| *hz > 0)?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot * 1000 + ticks * 1000 / hz)
}

/// A valid handoff file of `pool_id` in `engines/` that names `pid`.
fn handoff_naming(pool_id: &str, pid: u32, dirs: &RuntimeDirs) -> Option<(Handoff, PathBuf)> {
    let entries = std::fs::read_dir(&dirs.engines).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name()?.to_str()?.to_string();
        if !name.starts_with(&format!("{pool_id}-")) || !name.ends_with(".json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(handoff) = crate::watch::handoff::parse_handoff(&bytes) else {
            continue;
        };
        if handoff.pool_id == pool_id && handoff.pid == Some(pid) && handoff.validate().is_ok() {
            return Some((handoff, path));
        }
    }
    None
}

/// Stops the untracked engine `pid`: SIGTERM to its group, up to `grace_ms`, then SIGKILL.
/// Returns whether it is gone.
pub async fn stop(pid: u32, grace_ms: u64) -> bool {
    let _ = process::signal_group(pid, Signal::SIGTERM);
    let gone =
        tokio::time::timeout(Duration::from_millis(grace_ms), process::wait_foreign(pid)).await;
    if gone.is_ok() {
        return true;
    }
    let _ = process::signal_group(pid, Signal::SIGKILL);
    tokio::time::timeout(
        Duration::from_millis(super::KILL_WAIT_MS),
        process::wait_foreign(pid),
    )
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn only_a_file_of_ours_that_no_one_else_may_write_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.pid");
        std::fs::write(&file, "42\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(trusted_file(&file), Ok(()));
        for mode in [0o620, 0o602, 0o666] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let refused = trusted_file(&file).unwrap_err();
            assert!(
                refused.contains("writable by its group or others"),
                "{refused}"
            );
        }
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(trusted_file(&link)
            .unwrap_err()
            .contains("not a plain file"));
    }

    #[test]
    fn the_daemon_pid_1_and_other_pools_engines_are_never_stopped() {
        let me = std::process::id();
        assert!(super::super::proof::never_signalled(1, &[]).is_err());
        assert!(super::super::proof::never_signalled(me, &[]).is_err());
        assert!(super::super::proof::never_signalled(4242, &[4242]).is_err());
        assert!(super::super::proof::never_signalled(4242, &[7]).is_ok());
    }
}
