//! The proof that a pid is the engine a pool names, before any signal to a process this daemon
//! did not spawn in its life (handed off by a file or `POST .../handoff`, or adopted after a
//! restart): a handoff may name any pid, and without the proof a stop would signal whatever
//! runs there (another pool's engine, a root daemon, the pool manager itself).
//!
//! Owns: the checks, on `/proc` only: not pid 0 or 1, not this daemon or its process group,
//! not another pool's engine; then the start time recorded when this pool manager spawned it,
//! or, for a handed-off engine (no start time recorded), a listening TCP socket on the
//! engine's port held by the process (`/proc/net/tcp{,6}` inodes against `/proc/<pid>/fd`).
//! Never: signals, decides what a failed proof means (the supervisor forgets the pool and
//! says so), or trusts anything the caller wrote but the port it serves on.

use std::collections::HashSet;

/// What a proof needs to know of the pool.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The port the engine serves on (its prepared engine's, or its handoff URL's).
    pub port: Option<u16>,
    /// The start time recorded for it (`/proc/<pid>/stat` field 22), when known.
    pub start_time: Option<u64>,
    /// The pids of the other pools' engines.
    pub other_pools: Vec<u32>,
}

/// `Err` for the pids no claim can make signallable: 0 and 1, this daemon and its process
/// group, and `other_pools` (the other pools' engines).
pub fn never_signalled(pid: u32, other_pools: &[u32]) -> Result<(), String> {
    if pid <= 1 {
        return Err(format!("pid {pid} is never signalled"));
    }
    let me = std::process::id();
    let my_group = u32::try_from(nix::unistd::getpgrp().as_raw()).unwrap_or(0);
    if pid == me || pid == my_group {
        return Err(format!(
            "pid {pid} is the pool manager itself (or its process group)"
        ));
    }
    if other_pools.contains(&pid) {
        return Err(format!("pid {pid} is another pool's engine"));
    }
    Ok(())
}

/// `Ok` when `pid` may be signalled as the engine of `claim`; `Err` says why not.
pub fn prove(pid: u32, claim: &Claim) -> Result<(), String> {
    never_signalled(pid, &claim.other_pools)?;
    if super::process::is_gone(pid) {
        return Err(format!("pid {pid} no longer runs"));
    }
    if let Some(recorded) = claim.start_time.filter(|t| *t != 0) {
        // An engine this pool manager spawned (in an earlier life): its pid and start time,
        // recorded at spawn, name it; it may still be loading and not listen yet.
        return if super::process::start_time(pid) == Some(recorded) {
            Ok(())
        } else {
            Err(format!(
                "pid {pid} started at another time than the engine recorded for this pool \
                 (its pid was reused)"
            ))
        };
    }
    // A handed-off engine: only its port says which process it is.
    let Some(port) = claim.port else {
        return Err(format!("the pool names no port to prove pid {pid} by"));
    };
    if listens_on(pid, port) {
        Ok(())
    } else {
        Err(format!(
            "pid {pid} does not listen on port {port}, where the pool's engine serves"
        ))
    }
}

/// Whether `pid` holds a TCP socket listening on `port` (IPv4 or IPv6).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    super::procfs::socket_inodes(pid)
        .iter()
        .any(|inode| inodes.contains(inode))
}

/// The inodes of the sockets listening on `port` (`/proc/net/tcp` and `tcp6`: state `0A`).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                if let Ok(inode) = inode.parse() {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_proven_and_nothing_else_is() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(listens_on(me, port));
        let claim = Claim {
            port: Some(port),
            ..Claim::default()
        };
        // This test process is the claimed "engine" here, but it is also the pool manager's
        // own process: refused all the same.
        assert!(prove(me, &claim).unwrap_err().contains("itself"));
        assert!(prove(1, &claim).is_err());
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let refused = prove(sleeper.id(), &claim).unwrap_err();
        assert!(refused.contains("does not listen"), "{refused}");
        let other = Claim {
            other_pools: vec![sleeper.id()],
            ..claim.clone()
        };
        assert!(prove(sleeper.id(), &other)
            .unwrap_err()
            .contains("another pool"));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        drop(listener);
    }
}
