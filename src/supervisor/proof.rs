//! The proof that a pid is the engine a pool names, before any signal to a process this daemon
//! did not spawn in its life (handed off by a file or `POST .../handoff`, or adopted after a
//! restart): a handoff may name any pid, and without the proof a stop would signal whatever
//! runs there (another pool's engine, a root daemon, the pool manager itself).
//!
//! Owns: the checks, on `/proc` only: not pid 0 or 1, not this daemon or its process group,
//! not another engine the registry records (another pool's, or this pool's other lane's:
//! [`recorded_pids`]); then the identity recorded when this pool manager spawned it
//! (its pid, its start time and the boot it started in: [`same_engine`]), or, for a
//! handed-off engine (no start time recorded), a listening TCP socket on the engine's port
//! held by the process (`/proc/net/tcp{,6}` inodes against `/proc/<pid>/fd`). Its executable
//! is no part of the proof: a launcher `exec`s the engine, an upgrade retargets a symlink.
//! Never: signals, decides what a failed proof means (the supervisor forgets the pool and
//! says so), or trusts anything the caller wrote but the port it serves on.

/// What a proof needs to know of the pool.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The port the engine serves on (its prepared engine's, or its handoff URL's).
    pub port: Option<u16>,
    /// The start time recorded for it (`/proc/<pid>/stat` field 22), when known.
    pub start_time: Option<u64>,
    /// The boot it was recorded in (`EngineSpawned::boot_id`), when known.
    pub boot_id: Option<String>,
    /// The pids of every other engine the registry records: the other pools' (their engines
    /// and second engines), and this pool's other one ([`recorded_pids`]).
    pub other_pools: Vec<u32>,
}

/// Every engine pid the registry `state` records, each pool's engine and its second engine
/// (a surge's new one, or the old one retiring), but `except` (the engine a proof is about,
/// when `pool_id` records it).
pub fn recorded_pids(state: &pool_core::State, except: Option<(&str, u32)>) -> Vec<u32> {
    let mut pids = Vec::new();
    for pool in state.pools.values() {
        for pid in [pool.pid(), pool.second_pid()].into_iter().flatten() {
            if except != Some((pool.id.as_str(), pid)) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// `Err` for the pids no claim can make signallable: 0 and 1, this daemon and its process
/// group, and `other_pools` (the other engines the registry records).
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
        return Err(format!(
            "pid {pid} is another engine the registry records (another pool's, or this pool's \
             other lane's)"
        ));
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
        // An engine this pool manager spawned (in an earlier life): its pid, start time and
        // boot, recorded at spawn, name it; it may still be loading and not listen yet.
        return same_engine(pid, recorded, claim.boot_id.as_deref()).map(|_| ());
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

/// How far [`same_engine`] could prove an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proven {
    /// Pid, start time and boot id all match.
    Fully,
    /// Pid and start time match; no boot id was recorded (a record of a format version
    /// before 4), so a reboot that gave the pid the same start time cannot be told apart.
    BootUnknown,
}

/// Whether `pid` is the engine recorded with `start_time` (clock ticks since boot, never 0)
/// in the boot `boot_id`: it runs (not a zombie), started at that tick, and this is that
/// boot. `Err` says which part failed. Start times count from each boot, so without the boot
/// id an engine is proven by pid and start time alone ([`Proven::BootUnknown`]).
pub fn same_engine(pid: u32, start_time: u64, boot_id: Option<&str>) -> Result<Proven, String> {
    if super::process::is_gone(pid) {
        return Err(format!("pid {pid} no longer runs"));
    }
    if start_time == 0 {
        return Err(format!(
            "no start time is recorded for pid {pid}: it cannot be told from a reused pid"
        ));
    }
    let actual = super::process::start_time(pid);
    if actual != Some(start_time) {
        return Err(format!(
            "pid {pid} started at tick {actual:?}, not at the recorded tick {start_time}: \
             another process (the pid was reused)"
        ));
    }
    let Some(recorded) = boot_id else {
        return Ok(Proven::BootUnknown);
    };
    match super::procfs::boot_id() {
        Some(now) if now == recorded => Ok(Proven::Fully),
        Some(now) => Err(format!(
            "pid {pid} was recorded in boot {recorded}, this is boot {now}: another process \
             (the machine restarted)"
        )),
        None => Err(format!(
            "pid {pid} was recorded in boot {recorded} and this boot's id cannot be read \
             ({}): not proven",
            super::procfs::BOOT_ID_PATH
        )),
    }
}

/// Whether `pid` holds a TCP socket listening on `port` (IPv4 or IPv6).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = super::port::listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    super::procfs::socket_inodes(pid)
        .iter()
        .any(|inode| inodes.contains(inode))
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
        // Spawned by us: its pid, start time and boot name it, with or without a port.
        let start = super::super::process::start_time(sleeper.id()).unwrap();
        let boot = super::super::procfs::boot_id().unwrap();
        let spawned = Claim {
            start_time: Some(start),
            boot_id: Some(boot.clone()),
            ..claim.clone()
        };
        assert_eq!(prove(sleeper.id(), &spawned), Ok(()));
        let id = sleeper.id();
        assert_eq!(same_engine(id, start, Some(&boot)), Ok(Proven::Fully));
        assert_eq!(same_engine(id, start, None), Ok(Proven::BootUnknown));
        let other_boot = same_engine(id, start, Some("00000000-0000-0000-0000-000000000000"));
        assert!(other_boot.unwrap_err().contains("machine restarted"));
        assert!(same_engine(id, start + 1, Some(&boot))
            .unwrap_err()
            .contains("reused"));
        assert!(same_engine(id, 0, None).is_err());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        drop(listener);
    }
}
