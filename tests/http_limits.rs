//! The HTTP layer's bounds over real sockets: slow clients against a daemon with a small
//! open-file limit, the header-read, idle and body timeouts, and the connection cap's `503`.
//!
//! Waits are bounded; nothing sleeps hoping that something happened.

#[path = "support/daemon_harness.rs"]
mod harness;

use harness::serve::ServeCommand;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use harness::Harness;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
const HALF_SENT: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n";

/// Reads one response: its status, headers (lowercased) and JSON body (by content-length).
async fn read_response(stream: &mut TcpStream) -> (u16, String, Value) {
    let (status, head, body) = read_raw(stream).await;
    (status, head, serde_json::from_slice(&body).unwrap())
}

/// Reads one response: its status, headers (lowercased) and body (by content-length).
async fn read_raw(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no response within 10 s")
            .expect("read failed");
        assert!(n > 0, "EOF before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("body within 10 s")
            .unwrap();
        assert!(n > 0, "EOF inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, head, buf[head_end..head_end + length].to_vec())
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(addr: &str, request: &[u8]) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The daemon may answer and close before all of a huge request is sent: the answer is
    // what counts.
    let _ = stream.write_all(request).await;
    read_response(&mut stream).await
}

/// Waits (at most `within`) for the peer to close: EOF or a reset.
async fn await_closed(stream: &mut TcpStream, within: Duration) {
    let mut chunk = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the daemon did not close within {within:?}");
}

fn addr_of(h: &Harness) -> String {
    h.base.trim_start_matches("http://").to_string()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_slow_clients_do_not_stop_health_at_256_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = ServeCommand::new(DAEMON, dir.path()).dev();
    let addr = format!("127.0.0.1:{}", command.port());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.command().pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = command.spawn();
    daemon.wait_healthy(Duration::from_secs(20));
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(HALF_SENT).await.unwrap();
        slow.push(s);
    }
    let (status, _, body) = exchange(&addr, HEALTH).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    let log = daemon.log_text();
    assert!(
        log.contains("lowered to 160"),
        "the lowered cap is not logged: {log}"
    );
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _, text) = read_raw(&mut s).await;
    let text = String::from_utf8(text).unwrap();
    assert_eq!(status, 200, "{text}");
    let evicted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("api_connections_refused_total{reason=\"evicted\"} "))
        .unwrap_or_else(|| panic!("no evictions counted: {text}"))
        .parse()
        .unwrap();
    assert!(
        evicted >= 140.0,
        "300 slow clients over a cap of 160: {evicted}"
    );
    drop(daemon);
}

#[tokio::test]
async fn a_half_sent_head_is_closed_after_the_header_read_timeout() {
    let h = Harness::start_with(|c| c.api.header_read_timeout_ms = 500).await;
    let mut stream = TcpStream::connect(addr_of(&h)).await.unwrap();
    stream.write_all(HALF_SENT).await.unwrap();
    let sent = Instant::now();
    await_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(sent.elapsed() >= Duration::from_millis(400));
    h.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let h = Harness::start_with(|c| c.api.idle_timeout_ms = 500).await;
    let mut stream = TcpStream::connect(addr_of(&h)).await.unwrap();
    stream.write_all(HEALTH).await.unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);
    let answered = Instant::now();
    await_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answered.elapsed() >= Duration::from_millis(400));
    h.stop().await;
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room_and_busy_ones_get_503() {
    let h = Harness::start_with(|c| c.api.max_connections = 4).await;
    let addr = addr_of(&h);
    // Idle (half-sent) connections are closed to make room: /health answers.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(HALF_SENT).await.unwrap();
        idle.push(s);
    }
    assert_eq!(exchange(&addr, HEALTH).await.0, 200);
    // Four live event streams: every connection is busy, a fifth is refused.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"GET /v2/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "stream closed");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        streams.push(s);
    }
    let (status, head, body) = exchange(&addr, HEALTH).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "OVERLOADED", "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_connections"));
    assert!(head.contains("retry-after: 1"), "{head}");
    drop(streams);
    h.stop().await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_json_after_the_body_timeout() {
    let h = Harness::start_with(|c| c.api.body_read_timeout_ms = 500).await;
    let mut stream = TcpStream::connect(addr_of(&h)).await.unwrap();
    stream
        .write_all(
            b"POST /v2/pools/p1/preload HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prepared\":",
        )
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("api.body_read_timeout_ms"),
        "{body}"
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_heads_get_json_on_a_first_and_a_keep_alive_request() {
    let h = Harness::start().await;
    let addr = addr_of(&h);
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "a".repeat(70_000)
    );
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n");
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nx-big: {}\r\n\r\n",
        // hyper's bound on a head is about 400 KiB, but one read may bring it past that and
        // up to twice as much may parse; 900 KB is always over.
        "v".repeat(900_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a bad header name",
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nbad\x01name: v\r\n\r\n".to_vec(),
            400,
        ),
        (
            "HTTP/3.0",
            b"GET /health HTTP/3.0\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            400,
        ),
        ("a 70 KB URI", long_uri.into_bytes(), 414),
        ("150 headers", many.into_bytes(), 431),
        ("a 900 KB header", big.into_bytes(), 431),
    ];
    for (what, request, want) in cases {
        // First request of a connection.
        let (status, head, body) = exchange(&addr, &request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
        assert_eq!(body["code"], "INVALID_REQUEST", "{what}: {body}");
        // After a good request on the same keep-alive connection.
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(HEALTH).await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
        let _ = stream.write_all(&request).await;
        let (status, _, body) = read_response(&mut stream).await;
        assert_eq!(status, want, "{what} (keep-alive): {body}");
        assert_eq!(
            body["code"], "INVALID_REQUEST",
            "{what} (keep-alive): {body}"
        );
    }
    h.stop().await;
}
