//! Child processes of tests and benches, in one place: a free port, a guard that ends a child
//! (SIGTERM, then SIGKILL after a bounded wait) so that no failed assertion leaves a daemon or
//! an engine running, and `GET /health` over a plain socket.
#![allow(dead_code)] // each test crate uses its own part of this file

use std::io::{Read as _, Write as _};
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a guarded child has to end after SIGTERM before it gets SIGKILL.
pub const TERM_WAIT: Duration = Duration::from_secs(5);

/// A port that was free a moment ago, for a child to bind (an engine, a daemon, a server).
///
/// Picked below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), never from it:
/// the tests' own outgoing connections draw their local ports from that range, and one of
/// them could take a port between this pick and the child's bind ("Address already in
/// use"). The walk starts at a random place in the range so that two test processes, or a
/// process and the leftovers of an earlier one, do not walk the same ports in the same order;
/// within a process no port is handed out twice until the whole range went round. Each
/// candidate must bind on `127.0.0.1` and on `0.0.0.0` (nothing listens on it in any form).
/// Falls back to a kernel pick (`127.0.0.1:0`) when the range below the ephemeral one is too
/// small to be worth it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let Some((low, high)) = below_ephemeral() else {
        return kernel_pick();
    };
    let span = u32::from(high - low) + 1;
    let start = *START.get_or_init(random_start);
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start.wrapping_add(step)) % span) as u16;
        if bindable(port) {
            return port;
        }
    }
    kernel_pick()
}

/// `n` distinct ports that were free a moment ago (see [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// The ports [`free_port`] walks: from 10000 up to just below the ephemeral range, when that
/// leaves at least 2000 of them.
fn below_ephemeral() -> Option<(u16, u16)> {
    const LOW: u16 = 10_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let first: u16 = range.split_whitespace().next()?.parse().ok()?;
    let high = first.checked_sub(1)?;
    (high >= LOW + 2_000).then_some((LOW, high))
}

/// A start for the walk that differs between processes and runs (pid and the clock's
/// nanoseconds, mixed).
fn random_start() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (std::process::id().wrapping_mul(2_654_435_761)) ^ nanos.wrapping_mul(40_503)
}

/// Whether `port` binds on loopback and on every address (and is let go at once).
fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A port the kernel picks from its ephemeral range (the fallback of [`free_port`]).
fn kernel_pick() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port on 127.0.0.1")
        .local_addr()
        .expect("the bound port")
        .port()
}

/// Ends the child on drop: SIGTERM (a daemon journals its stop), then SIGKILL if it is still
/// there after [`TERM_WAIT`]; always reaped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + TERM_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `GET /health` on `127.0.0.1:port` answers 200 (a plain socket, one request).
pub fn healthy(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Waits until `GET /health` on `port` answers 200, `within` at most; `Err` says why (the
/// child ended, with its status, or the time ran out).
pub fn wait_healthy(child: &mut ChildGuard, port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if healthy(port) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "the daemon ended before answering /health: {status}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no 200 from /health on port {port} within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
