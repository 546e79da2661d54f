//! Engine processes: spawn in their own session, signal their process group, watch their end,
//! read what `/proc` says about them, and name why they ended.
//!
//! Owns: the `Command` an engine is started with (scrubbed environment, stdin closed, output
//! appended to its log), process-group signals, pidfd waits for processes we did not spawn in
//! this daemon's life, `/proc/<pid>/stat` start times, and the exit classification.
//! Never: decides what happens after an exit (the core does), never kills anything but the
//! process group of a pid the core gave it, and never kills an engine on drop: engines
//! outlive the daemon.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pool_core::{ExitReason, PreparedEngine};

use super::{admission, procfs};
use tokio::io::unix::AsyncFd;

/// Environment variables passed through from the daemon to every engine (SPEC section 6);
/// everything else comes from the prepared engine's `env{}` and its device mask.
pub const PASSED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How a process ended, as `waitpid` tells it (both `None` when we could not reap it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Killed by SIGKILL while its memory cgroup's OOM-kill counter moved.
    pub oom_killed: bool,
}

impl ExitInfo {
    /// For people: "exit code 3", "killed by signal 11 (SIGSEGV)", "ended".
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => {
                let name = Signal::try_from(signal).map_or("?", |s| s.as_str());
                format!("killed by signal {signal} ({name})")
            }
            (None, None) => "ended (not our child: no exit status)".to_string(),
        }
    }
}

/// The user engines run as when the daemon runs as root (`engine_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id (also the only supplementary group).
    pub gid: u32,
}

/// Resolves `engine_user`: `None` when it is empty or the daemon is not root (an unprivileged
/// daemon cannot change user; its engines run as itself). An unknown user is an error.
pub fn resolve_engine_user(name: &str) -> io::Result<Option<RunAs>> {
    if name.is_empty() || !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("engine_user '{name}' does not exist on this machine; create it or change engine_user"),
        )),
        Err(e) => Err(io::Error::other(format!(
            "cannot look up engine_user '{name}': {e}"
        ))),
    }
}

/// The home directory of user `uid` from its passwd entry; `/` when it has none (an engine
/// user without a home must still not get the daemon's).
pub fn home_of(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.dir.display().to_string())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// How the header line the supervisor writes into an engine's log before each start begins.
pub const LOG_HEADER_PREFIX: &str = "==== pool-managerd:";

/// A spawned engine.
#[derive(Debug)]
pub struct Spawned {
    /// The child, owned by whoever waits for it.
    pub child: tokio::process::Child,
    /// Its pid (also its process group and session id).
    pub pid: u32,
    /// `/proc/<pid>/stat` start time (0 when unreadable).
    pub start_time: u64,
}

/// The `CUDA_VISIBLE_DEVICES` value of a device mask: `"GPU0,GPU1"` and `"0,1"` give `0,1`,
/// UUIDs pass through.
pub fn cuda_visible_devices(mask: &str) -> String {
    pool_core::mask_tokens(mask)
        .map(|token| {
            token
                .strip_prefix("GPU")
                .or_else(|| token.strip_prefix("gpu"))
                .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
                .unwrap_or(token)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The environment an engine gets: `PATH`, `HOME`, `LANG` from `daemon_env`, then the
/// prepared engine's `env{}`, then the device mask's CUDA variables (which win).
pub fn engine_env(
    engine: &PreparedEngine,
    daemon_env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = PASSED_ENV
        .iter()
        .filter_map(|name| daemon_env(name).map(|value| (name.to_string(), value)))
        .collect();
    for (key, value) in &engine.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    if let Some(mask) = &engine.device_mask {
        env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES" && k != "CUDA_DEVICE_ORDER");
        env.push(("CUDA_VISIBLE_DEVICES".into(), cuda_visible_devices(mask)));
        env.push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
    }
    env
}

/// Spawns `engine` in a new session (so its process group is its pid and it survives the
/// daemon), stdin closed, stdout and stderr appended to `log_path` after a header line. With
/// `join` (an open `cgroup.procs` and whether joining is required), the child moves into
/// that cgroup before anything else; a failed move fails the spawn only when required.
pub fn spawn(
    engine: &PreparedEngine,
    env: &[(String, String)],
    log_path: &Path,
    (attempt, now_ms): (u32, u64),
    run_as: Option<RunAs>,
    join: Option<(i32, bool)>,
) -> io::Result<Spawned> {
    let mut log = pool_journal::private::file_options()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", log_path.display())))?;
    // Every caller-given string is escaped: a raw newline in a flag must not become a line
    // of its own in the log (a shell reading the log would run it).
    let flags: Vec<String> = engine.flags.iter().map(|f| admission::escape(f)).collect();
    writeln!(
        log,
        "{LOG_HEADER_PREFIX} starting {} {} (attempt {attempt}, at {}) ====",
        admission::escape(&engine.binary_path),
        flags.join(" "),
        crate::clock::format_ts_ms(now_ms),
    )?;
    let stderr: File = log.try_clone()?;
    let mut command = tokio::process::Command::new(&engine.binary_path);
    command
        .args(&engine.flags)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(false);
    // SAFETY: between fork and exec only async-signal-safe calls (plain syscalls) are made,
    // on values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            if let Some((procs, required)) = join {
                if let Err(e) = super::cgroup::join_in_child(procs) {
                    if required {
                        return Err(e);
                    }
                }
            }
            close_inherited_descriptors_on_exec();
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some(run_as) = run_as {
                let gid = nix::unistd::Gid::from_raw(run_as.gid);
                nix::unistd::setgroups(&[gid]).map_err(io::Error::from)?;
                nix::unistd::setgid(gid).map_err(io::Error::from)?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(run_as.uid))
                    .map_err(io::Error::from)?;
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the child exited before its pid was read"))?;
    Ok(Spawned {
        child,
        pid,
        start_time: start_time(pid).unwrap_or(0),
    })
}

/// Sends `signal` to the process group `pid` (our engines lead their own group). `Ok(false)`
/// when the group no longer exists.
pub fn signal_group(pid: u32, signal: Signal) -> io::Result<bool> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(false);
    };
    if raw <= 1 {
        return Err(io::Error::other(format!(
            "refusing to signal process group {pid}"
        )));
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// In the child, before exec: every descriptor but 0, 1 and 2 is marked close-on-exec, so that
/// none the daemon inherited without that flag reaches an engine (across the user switch, too).
/// `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11); before it, `fcntl` on each
/// descriptor below the open-file limit. Marking rather than closing keeps the pipe through
/// which a failed exec is reported to the daemon. Only async-signal-safe calls.
fn close_inherited_descriptors_on_exec() {
    // SAFETY: plain system calls on integers, no allocation, between fork and exec.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(65_536) as i32
        } else {
            1_024
        };
        for fd in 3..max {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Sends `signal` to the process group `pid` leads (our engines lead their own), or to `pid`
/// alone when it leads none (an engine someone else started inside a group of theirs).
/// `Ok(false)` when the process no longer exists.
pub fn signal_engine(pid: u32, signal: Signal) -> io::Result<bool> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(false);
    };
    match nix::unistd::getpgid(Some(Pid::from_raw(raw))) {
        Ok(group) if group.as_raw() == raw => signal_group(pid, signal),
        Ok(_) if raw > 1 => match nix::sys::signal::kill(Pid::from_raw(raw), signal) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ESRCH) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        },
        Ok(_) => Err(io::Error::other(format!("refusing to signal pid {pid}"))),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// `/proc/<pid>/stat` field 22: the start time in clock ticks since boot. `None` when the
/// process does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    procfs::stat(pid).map(|stat| stat.start_time)
}

/// `/proc/<pid>/stat` field 6: the session id (our engines lead their own session).
pub fn session_id(pid: u32) -> Option<u32> {
    procfs::stat(pid).map(|stat| stat.session)
}

/// Processes that lead their own session and run exactly `argv` (compared with
/// `/proc/<pid>/cmdline`): the engines started with this command line, whoever started them.
pub fn session_leaders_running(argv: &[String]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| procfs::cmdline(*pid).is_some_and(|cmdline| cmdline == wanted))
        .filter(|pid| session_id(*pid) == Some(*pid) && !is_gone(*pid))
        .collect()
}

/// Whether `pid` is a zombie or gone (a zombie has ended; only its parent's reap is missing).
pub fn is_gone(pid: u32) -> bool {
    procfs::stat(pid).is_none_or(|stat| stat.ended())
}

/// The binary `pid` runs (`/proc/<pid>/exe`), when readable.
pub fn exe(pid: u32) -> Option<std::path::PathBuf> {
    procfs::exe(pid)
}

/// The file a binary path names, symlinks resolved: a path with a `/` as it is, a bare name
/// through `PATH` (as `execvp` finds it).
pub fn resolve_binary(binary: &str) -> Option<std::path::PathBuf> {
    if binary.contains('/') {
        return std::fs::canonicalize(binary).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::fs::canonicalize(found).ok())
}

/// Waits until `pid` (not our child) has ended, through a pidfd: no polling. Falls back to
/// checking `/proc` every 100 ms where pidfds are not available (Linux < 5.3).
pub async fn wait_foreign(pid: u32) {
    match pidfd_open(pid) {
        // SAFETY: we own `fd` (just opened) and move it into the AsyncFd, which keeps it open
        // for as long as it is registered.
        Ok(fd) => match unsafe { AsyncFd::register(fd) } {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(_) => poll_gone(pid).await,
        },
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(_) => poll_gone(pid).await,
    }
}

async fn poll_gone(pid: u32) {
    while !is_gone(pid) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let raw = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: plain syscall with integer arguments; the result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The OOM-kill counter of the memory cgroup `pid` runs in: the file to read it from and its
/// value now. cgroup v2 (`memory.events`, also under `unified/` on hybrid hosts) or v1
/// (`memory/.../memory.oom_control`); `None` where neither is readable.
pub fn oom_kill_counter(pid: u32) -> Option<(std::path::PathBuf, u64)> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut candidates = Vec::new();
    for line in procfs::cgroups(pid) {
        let path = line.path.trim_start_matches('/');
        if line.controllers.is_empty() {
            candidates.push(root.join(path).join("memory.events"));
            candidates.push(root.join("unified").join(path).join("memory.events"));
        } else if line.controllers.iter().any(|c| c == "memory") {
            candidates.push(root.join("memory").join(path).join("memory.oom_control"));
        }
    }
    candidates
        .into_iter()
        .find_map(|file| read_oom_kills(&file).map(|count| (file, count)))
}

/// The `oom_kill N` line of a cgroup memory file.
pub fn read_oom_kills(file: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Names why an engine ended, from its exit, whether we sent it SIGKILL, and its log tail:
/// GPU lines first (`vram_oom` before `cuda_error`, `driver_error` for Xid), then a SIGKILL
/// we did not send (`oom_killed`), another signal (`signal`), exit 0 (`graceful`), any other
/// code (`crash`).
pub fn classify(exit: ExitInfo, we_sent_kill: bool, log_tail: &str) -> ExitReason {
    if let Some(reason) = classify_log(log_tail) {
        return reason;
    }
    // A wrapper (a shell, a launcher) reports its child's death by signal N as exit 128 + N.
    let signal = exit.signal.or(match exit.code {
        Some(code @ 129..=192) => Some(code - 128),
        _ => None,
    });
    match (exit.code, signal) {
        (_, Some(9)) if exit.oom_killed || !we_sent_kill => ExitReason::OomKilled,
        (_, Some(_)) => ExitReason::Signal,
        (Some(0), _) => ExitReason::Graceful,
        (Some(_), _) => ExitReason::Crash,
        (None, None) => ExitReason::Unknown,
    }
}

/// The GPU failure a log tail shows, if any.
pub fn classify_log(log_tail: &str) -> Option<ExitReason> {
    let mut found = None;
    // Our own header lines quote the engine's command line, which may name anything.
    for line in log_tail
        .lines()
        .filter(|l| !l.starts_with(LOG_HEADER_PREFIX))
    {
        let lower = line.to_ascii_lowercase();
        let gpu_context = lower.contains("cuda") || lower.contains("device");
        if lower.contains("out of memory") && gpu_context {
            return Some(ExitReason::VramOom);
        }
        if lower.contains("xid") {
            found = Some(ExitReason::DriverError);
        } else if lower.contains("cuda error") && found.is_none() {
            found = Some(ExitReason::CudaError);
        }
    }
    found
}

#[cfg(test)]
mod tests;
