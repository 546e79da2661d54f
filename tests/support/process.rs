//! Child processes of tests and benches, in one place: a free port, a guard that ends a child
//! (SIGTERM, then SIGKILL after a bounded wait) so that no failed assertion leaves a daemon or
//! an engine running, and `GET /health` over a plain socket.
#![allow(dead_code)] // each test crate uses its own part of this file

use std::io::{Read as _, Write as _};
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a guarded child has to end after SIGTERM before it gets SIGKILL.
pub const TERM_WAIT: Duration = Duration::from_secs(5);

/// A port that was free a moment ago (the kernel picks it; someone else may take it before
/// the caller binds, which the tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port on 127.0.0.1")
        .local_addr()
        .expect("the bound port")
        .port()
}

/// `n` distinct ports that were free a moment ago (all bound together while they are picked).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("the bound port").port())
        .collect()
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
