//! The engine's port belongs to the engine. Before a spawn, a port already listened on by
//! another process fails the start ([`check_free`]); once the engine answers healthy, the
//! socket listening on its port must be held by the engine's session ([`check_owned`]),
//! else someone else answered for it (an orphaned engine of an earlier life, a stray server)
//! and the start fails. Both answers name the holder's pid and command line.
//!
//! The sockets (state listening, on any address of the daemon's network namespace) are asked
//! of the kernel over `NETLINK_SOCK_DIAG` (`sockdiag`), else found in `/proc/net/tcp{,6}`
//! (which costs a walk of all the kernel's connections), and their holders by `/proc/<pid>/fd` (`procfs`). Before a
//! spawn a bind is tried first (`binds_free`): when it succeeds nothing listens on the port
//! and the tables are not read; the tables decide (and name the holder) only when it fails.
//! After the health check the engine's own descriptors are looked at first, and all of
//! `/proc` only when the engine itself does not hold the socket.
//!
//! Owns: those two checks and their words. Never: signals or kills a holder (it is not
//! proven to be anything of ours), or decides what a failed check means (the core fails the
//! start with `PORT_IN_USE`).

use super::procfs;

/// The most of a holder's command line an answer quotes.
pub const CMDLINE_QUOTE_MAX: usize = 512;
/// The most holders an answer names (a forking server may have many).
const HOLDERS_NAMED_MAX: usize = 4;

/// The inodes of the sockets listening on `port`: asked of the kernel for the listening
/// state alone (`sockdiag`), else read from `/proc/net/tcp{,6}`.
pub(super) fn listening_inodes(port: u16) -> std::collections::HashSet<u64> {
    super::sockdiag::listening_inodes(port).unwrap_or_else(|| procfs::listening_inodes(port))
}

/// The processes holding a socket listening on `port`, and whether any listens at all.
fn listeners(port: u16) -> (bool, Vec<u32>) {
    let inodes = listening_inodes(port);
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

/// Whether a socket with `SO_REUSEADDR` (never listening, closed at once) binds `port` on the
/// IPv4 any-address and on the IPv6 any-address. On Linux such a bind fails (`EADDRINUSE`)
/// while any socket of the family listens on the port, on whatever address (the any-address
/// overlaps them all), unless both set `SO_REUSEPORT` (this one does not); it succeeds beside
/// sockets in `TIME_WAIT` and sockets bound without listening that also set `SO_REUSEADDR`.
/// So `true` proves that nothing listens on the port. `false` proves nothing: a listener, a
/// socket bound without `SO_REUSEADDR`, a host without IPv6, a port below 1024 without the
/// privilege; the socket tables must tell. The bind lasts a few microseconds and never
/// listens, so nobody can connect to it.
pub(super) fn binds_free(port: u16) -> bool {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let binds = |socket: std::io::Result<tokio::net::TcpSocket>, address: SocketAddr| {
        socket
            .and_then(|socket| {
                socket.set_reuseaddr(true)?;
                socket.bind(address)
            })
            .is_ok()
    };
    binds(
        tokio::net::TcpSocket::new_v4(),
        (Ipv4Addr::UNSPECIFIED, port).into(),
    ) && binds(
        tokio::net::TcpSocket::new_v6(),
        (Ipv6Addr::UNSPECIFIED, port).into(),
    )
}

/// `Ok` when nothing listens on `port`; `Err` names who does and what to do.
pub fn check_free(port: u16) -> Result<(), String> {
    if binds_free(port) {
        return Ok(());
    }
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
    let inodes = listening_inodes(port);
    // Most often the engine itself holds the socket: its own descriptors first, then all of
    // `/proc` (a process it started may hold it, or someone else).
    let leads = procfs::stat(engine_pid).is_some_and(|stat| stat.session == engine_pid);
    if leads
        && procfs::socket_inodes(engine_pid)
            .iter()
            .any(|inode| inodes.contains(inode))
    {
        return Ok(());
    }
    let (listening, holders) = (!inodes.is_empty(), procfs::socket_holders(&inodes));
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

    /// Would catch: a bind fast path that calls a port free while a socket listens on it on
    /// the loopback, an IPv4 or IPv6 any-address, or the IPv6 loopback (the start would then
    /// go on beside it), or one that never calls a free port free.
    #[test]
    fn a_port_listened_on_any_address_never_binds_free() {
        let me = std::process::id();
        for host in ["127.0.0.1", "0.0.0.0", "[::]", "[::1]"] {
            let listener = match listen_below_ephemeral(host) {
                Ok(listener) => listener,
                Err(e) => {
                    assert!(host.starts_with('['), "cannot listen on {host}: {e}");
                    eprintln!("no IPv6 on this host ({e}): {host} not checked");
                    continue;
                }
            };
            let address = host;
            let port = listener.local_addr().unwrap().port();
            assert!(!binds_free(port), "{address}: a listener binds free");
            let refused = check_free(port).unwrap_err();
            assert!(
                refused.contains(&format!("pid {me} (")),
                "{address}: {refused}"
            );
            drop(listener);
            // A child that a test beside this one forks holds a copy of every descriptor of
            // this process until its exec closes them (they are close-on-exec): the port is
            // free once that copy is gone too.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !binds_free(port) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{address}: not free 10 s after it was closed"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(check_free(port), Ok(()));
        }
    }

    /// A listener on `host` at a port below the kernel's ephemeral range (from 20000 on, from
    /// a place that depends on the pid): once it is closed, no outgoing connection of a test
    /// running beside this one can take its port, as one could take a port of that range.
    fn listen_below_ephemeral(host: &str) -> std::io::Result<std::net::TcpListener> {
        let start = 20_000 + std::process::id() % 8_000;
        let mut last = None;
        for port in (start..32_000).chain(20_000..start) {
            match std::net::TcpListener::bind(format!("{host}:{port}")) {
                Ok(listener) => return Ok(listener),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port below 32000 binds")))
    }

    /// Would catch: the fast path taken beside a listener that set `SO_REUSEADDR` and
    /// `SO_REUSEPORT` (the bind must not set `SO_REUSEPORT`, which would share the port).
    #[tokio::test]
    async fn a_listener_sharing_its_port_by_reuseport_never_binds_free() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.set_reuseport(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!binds_free(port));
        assert!(check_free(port).is_err());
    }

    /// A socket bound without listening (and without `SO_REUSEADDR`) fails the bind, but
    /// nothing listens: the tables decide and the start goes on, as without the fast path.
    #[test]
    fn a_socket_bound_without_listening_does_not_hold_the_port() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(!binds_free(port), "the bind cannot tell");
        assert_eq!(check_free(port), Ok(()));
    }

    /// Whether `/proc/net/tcp` has a socket in `TIME_WAIT` (state `06`) on local `port`.
    fn in_time_wait(port: u16) -> bool {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let local = format!(":{port:04X}");
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1).is_some_and(|f| f.ends_with(&local)) && fields.get(3) == Some(&"06")
        })
    }

    /// Would catch: a connection of the last engine waiting in `TIME_WAIT` on the port (the
    /// engine closed it first) taken for a listener, by the bind or by the tables.
    #[test]
    fn a_connection_in_time_wait_does_not_hold_the_port() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(listener);
        drop(server); // the engine's side closes first: it waits in TIME_WAIT on the port
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !in_time_wait(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "no TIME_WAIT on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(binds_free(port), "TIME_WAIT taken for a listener");
        assert_eq!(check_free(port), Ok(()));
    }

    /// A listener held by the engine itself (its own descriptors suffice) or by a process
    /// of its session that is not the engine (all of `/proc` is read): the port is owned.
    #[test]
    fn the_engine_or_a_child_in_its_session_owns_its_port() {
        let script = "import os, socket, sys, time\n\
                      s = socket.socket()\n\
                      s.bind(('127.0.0.1', 0))\n\
                      s.listen()\n\
                      port = s.getsockname()[1]\n\
                      if sys.argv[1] == 'child' and os.fork() != 0:\n    \
                          s.close()\n\
                      if os.getpid() == os.getsid(0):\n    \
                          print(port, flush=True)\n\
                      time.sleep(300)\n";
        for who in ["leader", "child"] {
            let mut engine = std::process::Command::new("python3");
            engine.args(["-c", script, who]);
            engine.stdout(std::process::Stdio::piped());
            // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                engine.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
            }
            let mut engine = engine.spawn().unwrap();
            let mut line = String::new();
            use std::io::BufRead as _;
            std::io::BufReader::new(engine.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let port: u16 = line.trim().parse().unwrap();
            let leader_holds = procfs::socket_inodes(engine.id())
                .iter()
                .any(|inode| procfs::listening_inodes(port).contains(inode));
            assert_eq!(leader_holds, who == "leader");
            assert_eq!(check_owned(port, engine.id()), Ok(()), "{who}");
            let sid = nix::unistd::Pid::from_raw(engine.id() as i32);
            let _ = nix::sys::signal::killpg(sid, nix::sys::signal::Signal::SIGKILL);
            let _ = engine.wait();
        }
    }
}
