//! The engine's port belongs to the engine. Before a spawn, a port already listened on by
//! another process fails the start ([`check_free`]); once the engine answers healthy, the
//! socket listening on its port must be held by the engine's session ([`check_owned`]),
//! else someone else answered for it (an orphaned engine of an earlier life, a stray server)
//! and the start fails. Both answers name the holder's pid and command line.
//!
//! The sockets are found in `/proc/net/tcp{,6}` (state listening, on any address of the
//! daemon's network namespace) and their holders by `/proc/<pid>/fd` (`procfs`).
//!
//! Owns: those two checks and their words. Never: signals or kills a holder (it is not
//! proven to be anything of ours), or decides what a failed check means (the core fails the
//! start with `PORT_IN_USE`).

use super::procfs;

/// The most of a holder's command line an answer quotes.
pub const CMDLINE_QUOTE_MAX: usize = 512;
/// The most holders an answer names (a forking server may have many).
const HOLDERS_NAMED_MAX: usize = 4;

/// The processes holding a socket listening on `port`, and whether any listens at all.
fn listeners(port: u16) -> (bool, Vec<u32>) {
    let inodes = procfs::listening_inodes(port);
    (!inodes.is_empty(), procfs::socket_holders(&inodes))
}

/// `pid 123 (python3 -m http.server 8080)` for each of `pids` (the first `named_max`, then
/// how many more): how a message names processes (the port's holders, a session's leftovers).
pub(super) fn describe(pids: &[u32], named_max: usize) -> String {
    let mut named: Vec<String> = pids
        .iter()
        .take(named_max)
        .map(|pid| {
            let cmdline = procfs::cmdline_text(*pid, CMDLINE_QUOTE_MAX)
                .unwrap_or_else(|| "command line unreadable".to_string());
            format!("pid {pid} ({cmdline})")
        })
        .collect();
    if pids.len() > named_max {
        named.push(format!("{} more", pids.len() - named_max));
    }
    named.join(", ")
}

/// `Ok` when nothing listens on `port`; `Err` names who does and what to do.
pub fn check_free(port: u16) -> Result<(), String> {
    match listeners(port) {
        (false, _) => Ok(()),
        (true, holders) if holders.is_empty() => Err(format!(
            "port {port} is already listened on by a process this daemon cannot see (another \
             user's): find it with `ss -ltnp 'sport = :{port}'` as root, stop it or give the \
             engine another port"
        )),
        (true, holders) => Err(format!(
            "port {port} is already held by {}: stop that process or give the engine another \
             port",
            describe(&holders, HOLDERS_NAMED_MAX)
        )),
    }
}

/// `Ok` when a socket listening on `port` is held by a process of the session of
/// `engine_pid` (our engines lead their own session, so the engine or a process it started);
/// `Err` names who holds it instead.
pub fn check_owned(port: u16, engine_pid: u32) -> Result<(), String> {
    let (listening, holders) = listeners(port);
    let ours = |pid: &u32| procfs::stat(*pid).is_some_and(|stat| stat.session == engine_pid);
    if holders.iter().any(ours) {
        return Ok(());
    }
    let others: Vec<u32> = holders.into_iter().filter(|pid| !ours(pid)).collect();
    let who = if others.is_empty() {
        if listening {
            "a process this daemon cannot see (another user's)".to_string()
        } else {
            "no socket of this network namespace (someone else answered for it)".to_string()
        }
    } else {
        describe(&others, HOLDERS_NAMED_MAX)
    };
    Err(format!(
        "the engine (pid {engine_pid}) answered healthy on port {port}, but port {port} is \
         held by {who}, not by the engine's session: that answer was not the engine's; stop \
         that process or give the engine another port"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    #[test]
    fn a_port_listened_on_is_not_free_and_names_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = check_free(port).unwrap_err();
        let me = std::process::id();
        assert!(refused.contains(&format!("pid {me} (")), "{refused}");
        assert!(refused.contains(&format!("port {port}")), "{refused}");
        drop(listener);
        assert_eq!(check_free(port), Ok(()));
    }

    #[test]
    fn only_the_engines_session_owns_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        // A process leading its own session, as an engine does: the port is not its.
        let mut engine = std::process::Command::new("sleep");
        engine.arg("30");
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            engine.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
        }
        let mut engine = engine.spawn().unwrap();
        let refused = check_owned(port, engine.id()).unwrap_err();
        assert!(
            refused.contains(&format!("held by pid {me} (")),
            "{refused}"
        );
        // This process's session owns it (this test is the session's member).
        let session = procfs::stat(me).unwrap().session;
        assert_eq!(check_owned(port, session), Ok(()));
        drop(listener);
        assert!(check_owned(port, session)
            .unwrap_err()
            .contains("no socket"));
        let _ = engine.kill();
        let _ = engine.wait();
    }
}
