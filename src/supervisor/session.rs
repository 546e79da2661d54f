//! The end of an engine's whole session. Our engines lead a session of their own (`setsid` at
//! spawn), and every process they start stays in it, even one that moved to a process group
//! of its own (a tensor-parallel worker, a forked helper), so a signal to the engine's group
//! misses it. After the engine itself has ended, what is left of its session is killed
//! (SIGKILL) and awaited, bounded, before the end is published: a restart or a reload never
//! starts beside a leftover of the last engine that still holds the GPU or the port.
//!
//! Owns: finding a session's members (through [`procfs`]), signalling them, the bounded wait.
//! Never: signals a session that is not an engine's (pid 1, this daemon's own session), or a
//! process outside the session; never waits without a bound.

use super::{port, procfs, KILL_WAIT_MS};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// How often the end of the members is checked while awaited.
const POLL_MS: u64 = 10;

/// The longest list of leftovers named in a log line.
const NAMED_MAX: usize = 8;

/// Whether `sid` may be treated as an engine's session: above 1, and neither this daemon nor
/// its session.
fn is_engine_session(sid: u32) -> bool {
    let me = std::process::id();
    let mine = procfs::stat(me).map(|s| s.session);
    sid > 1 && sid != me && mine != Some(sid)
}

/// Sends `signal` to every live process of session `sid`; returns those signalled.
pub(super) fn signal_session(sid: u32, signal: Signal) -> Vec<u32> {
    if !is_engine_session(sid) {
        return Vec::new();
    }
    procfs::session_members(sid)
        .into_iter()
        .filter(|pid| {
            i32::try_from(*pid)
                .ok()
                .filter(|raw| *raw > 1)
                .is_some_and(|raw| nix::sys::signal::kill(Pid::from_raw(raw), signal).is_ok())
        })
        .collect()
}

/// Once the engine `sid` (the session's leader) has ended: SIGKILLs what is left of its
/// session and waits, up to [`KILL_WAIT_MS`], until none of it runs (what still runs then,
/// in uninterruptible sleep say, is logged). Returns the processes it killed: the GPU memory
/// they held is the engine's (see `release.rs`).
pub(super) async fn end_session(pool_id: &str, sid: u32) -> Vec<u32> {
    let left = signal_session(sid, Signal::SIGKILL);
    if left.is_empty() {
        return Vec::new();
    }
    tracing::warn!(
        pool_id,
        pid = sid,
        "the engine ended but left processes of its session: SIGKILL to {}",
        port::describe(&left, NAMED_MAX)
    );
    let deadline = Instant::now() + Duration::from_millis(KILL_WAIT_MS);
    loop {
        let running = procfs::session_members(sid);
        if running.is_empty() {
            return left;
        }
        if Instant::now() >= deadline {
            tracing::error!(
                pool_id,
                pid = sid,
                "processes of the engine's session still run {KILL_WAIT_MS} ms after SIGKILL \
                 (uninterruptible sleep?): {}; the next start goes ahead",
                port::describe(&running, NAMED_MAX)
            );
            return left;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    /// A session leader (as an engine is) whose child moves to a group of its own and ignores
    /// SIGTERM: killing the leader's group leaves the child; ending the session does not.
    #[tokio::test]
    async fn ending_a_session_kills_a_child_that_left_the_leaders_group() {
        let mut leader = std::process::Command::new("python3");
        leader.args([
            "-c",
            "import os, signal, sys\n\
             pid = os.fork()\n\
             if pid == 0:\n    \
                 os.setpgid(0, 0)\n    \
                 signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    \
                 os.execvp('sleep', ['sleep', '300'])\n\
             while os.getpgid(pid) == os.getpgid(0):\n    \
                 pass\n\
             print(pid, flush=True)\n\
             os.execvp('sleep', ['sleep', '300'])\n",
        ]);
        leader.stdout(std::process::Stdio::piped());
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            leader.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
        }
        let mut leader = leader.spawn().unwrap();
        let sid = leader.id();
        let mut line = String::new();
        use std::io::BufRead as _;
        std::io::BufReader::new(leader.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        assert_eq!(procfs::stat(child).unwrap().session, sid);
        nix::sys::signal::killpg(Pid::from_raw(sid as i32), Signal::SIGKILL).unwrap();
        leader.wait().unwrap();
        assert!(
            procfs::stat(child).is_some_and(|s| !s.ended()),
            "the child of another group survives a kill of the leader's group"
        );
        assert_eq!(end_session("p1", sid).await, vec![child]);
        assert!(procfs::stat(child).is_none_or(|s| s.ended()));
        assert!(procfs::session_members(sid).is_empty());
    }

    #[test]
    fn this_daemons_own_session_is_never_an_engines() {
        let mine = procfs::stat(std::process::id()).unwrap().session;
        assert!(!is_engine_session(mine));
        assert!(!is_engine_session(1));
        assert!(!is_engine_session(std::process::id()));
        assert!(signal_session(mine, Signal::SIGCONT).is_empty());
    }
}
