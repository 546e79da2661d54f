//! systemd's notification protocol (`Type=notify`, issue 8 item 7), end to end: `serve` as a
//! child with `NOTIFY_SOCKET` on a datagram socket this test binds sends `READY=1` once the
//! API answers, `WATCHDOG=1` at half of `WATCHDOG_USEC` (not when `WATCHDOG_PID` names
//! another process), and `STOPPING=1` on SIGTERM.

#[path = "support/process.rs"]
mod process;
#[path = "support/serve.rs"]
mod serve;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use process::free_port;
use serve::{Serve, ServeCommand};

const BIN: &str = env!("CARGO_BIN_EXE_pool-managerd");

/// `serve --dev` with `NOTIFY_SOCKET` = `socket` and the watchdog variables given.
fn serve(dir: &Path, socket: &Path, port: u16, watchdog: &[(&str, String)]) -> Serve {
    let mut command = ServeCommand::on_port(BIN, dir, port)
        .dev()
        .env("NOTIFY_SOCKET", socket);
    for (key, value) in watchdog {
        command = command.env(key, value);
    }
    command.spawn()
}

/// The next datagram within `wait`, as text; `None` on timeout.
fn next_message(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

/// Waits for a message with the line `line`, returning the messages seen before it.
fn until_line(socket: &UnixDatagram, line: &str, within: Duration, log: &Path) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {line} within {within:?}; saw {seen:?}; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        if let Some(message) = next_message(socket, left) {
            if message.lines().any(|l| l == line) {
                return seen;
            }
            seen.push(message);
        }
    }
}

/// `GET /health` over a plain socket: the status line.
fn health(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the API listens");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn serve_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let port = free_port();
    // 300 ms: a ping every 150 ms.
    let mut child = serve(
        dir.path(),
        &path,
        port,
        &[("WATCHDOG_USEC", "300000".to_string())],
    );

    let before = until_line(&socket, "READY=1", Duration::from_secs(60), &child.log);
    assert!(
        before.is_empty(),
        "nothing comes before READY=1: {before:?}"
    );
    // READY=1 means the journal is replayed and the API answers.
    assert_eq!(health(port), "HTTP/1.1 200 OK");

    let started = Instant::now();
    for _ in 0..3 {
        let other = until_line(&socket, "WATCHDOG=1", Duration::from_secs(5), &child.log);
        assert!(other.is_empty(), "unexpected messages: {other:?}");
    }
    // Three pings at 150 ms: not a tight loop, not a stalled one.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "3 pings took {took:?}"
    );

    sigterm(&child.guard.0);
    until_line(&socket, "STOPPING=1", Duration::from_secs(10), &child.log);
    let status = child.guard.0.wait().unwrap();
    assert!(status.success(), "serve stopped on SIGTERM with {status}");
}

#[test]
fn no_watchdog_pings_for_another_process_or_without_watchdog_usec() {
    for (name, vars) in [
        (
            "WATCHDOG_PID of another process",
            vec![
                ("WATCHDOG_USEC", "200000".to_string()),
                ("WATCHDOG_PID", "1".to_string()),
            ],
        ),
        ("no WATCHDOG_USEC", vec![]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let port = free_port();
        let mut child = serve(dir.path(), &path, port, &vars);
        until_line(&socket, "READY=1", Duration::from_secs(60), &child.log);
        // Five would-be intervals pass without a ping.
        let extra = next_message(&socket, Duration::from_millis(500));
        assert_eq!(extra, None, "{name}: no message after READY=1");
        sigterm(&child.guard.0);
        until_line(&socket, "STOPPING=1", Duration::from_secs(10), &child.log);
        assert!(child.guard.0.wait().unwrap().success(), "{name}");
    }
}
