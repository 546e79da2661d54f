//! Real NATS servers for the cluster tests and the fleet bench: `nats-server -js` on loopback
//! ports, alone or as a 3-server JetStream cluster, each a guarded child with its store and log
//! under the caller's directory; and a reader of a stream's messages.
//!
//! `nats-server` is Debian's package (`.ci/run` installs it): [`require`] fails under
//! `CI=true` without it and skips elsewhere, saying so.
#![allow(dead_code)] // each test crate uses its own part of this file

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// Its own copy: the bench includes this file without the daemon harness.
#[allow(clippy::duplicate_mod)]
#[path = "process.rs"]
pub mod process;

use process::{free_port, free_ports, ChildGuard};

/// How long a server has to start accepting.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// Whether `nats-server` can run here: panics under `CI=true` without it, else `false` with a
/// line saying the test is skipped.
pub fn require() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is required under CI=true (Debian package nats-server)"
        );
        eprintln!("skipped: nats-server is not installed (Debian package nats-server)");
    }
    found
}

/// One server: its client port and how to start it again after a stop (same port, same
/// store).
pub struct Server {
    pub port: u16,
    pub child: Option<ChildGuard>,
    args: Vec<String>,
    log: PathBuf,
}

impl Server {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM, then SIGKILL after a bounded wait).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Kills it with SIGKILL (no goodbye to its peers or clients).
    pub fn kill(&mut self) {
        if let Some(mut guard) = self.child.take() {
            let _ = guard.0.kill();
            let _ = guard.0.wait();
        }
    }

    /// Starts it (again), once it accepts.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the server on {} runs", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(ChildGuard(child));
        let deadline = Instant::now() + START_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on {} did not listen (log: {})",
                self.port,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `nats-server -js` alone on a free loopback port, with its store under `dir`; `None` when
/// skipped (see [`require`]).
pub fn server(dir: &Path) -> Option<Server> {
    server_with(dir, &[])
}

/// [`server`] with more arguments (`--auth TOKEN`, `-c FILE`...).
pub fn server_with(dir: &Path, extra: &[&str]) -> Option<Server> {
    if !require() {
        return None;
    }
    let port = free_port();
    let store = dir.join("nats");
    let args = vec![
        "-js".to_string(),
        "-a".to_string(),
        "127.0.0.1".to_string(),
        "-p".to_string(),
        port.to_string(),
        "-sd".to_string(),
        store.display().to_string(),
    ]
    .into_iter()
    .chain(extra.iter().map(|arg| arg.to_string()))
    .collect();
    let mut server = Server {
        port,
        child: None,
        args,
        log: dir.join("nats.log"),
    };
    server.start();
    Some(server)
}

/// A JetStream cluster of `n` servers on loopback (routes between all of them), each with its
/// store and log under `dir/nats-<i>`; `None` when skipped. Returns once every server accepts
/// clients (the caller waits for the meta leader, see [`wait_jetstream`]). The cluster's name
/// carries its first client port, so that no server left over from an earlier cluster on
/// these ports can join it through a route.
pub fn cluster(dir: &Path, n: usize) -> Option<Vec<Server>> {
    if !require() {
        return None;
    }
    let ports = free_ports(2 * n);
    let (clients, routes) = ports.split_at(n);
    let route_urls: Vec<String> = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect();
    let mut servers = Vec::new();
    for i in 0..n {
        let home = dir.join(format!("nats-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        let config = home.join("server.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: s{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{\n  name: fleet-{}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                clients[i],
                home.join("store").display(),
                clients[0],
                routes[i],
                route_urls.join(", ")
            ),
        )
        .unwrap();
        servers.push(Server {
            port: clients[i],
            child: None,
            args: vec!["-c".to_string(), config.display().to_string()],
            log: home.join("nats.log"),
        });
    }
    for server in &mut servers {
        server.start();
    }
    Some(servers)
}

/// The servers' URLs, comma-separated (what `[cluster] nats_url` and `--nats` take).
pub fn urls(servers: &[Server]) -> String {
    servers
        .iter()
        .map(Server::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until JetStream answers through `url` (a cluster elects its meta leader first).
pub async fn wait_jetstream(url: &str) {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Ok(client) = async_nats::connect(url).await {
            let js = async_nats::jetstream::new(client);
            if js.query_account().await.is_ok() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "JetStream did not answer at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One message of a stream: its subject, its `Nats-Msg-Id` and its payload as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub id: String,
    pub payload: serde_json::Value,
}

/// Retries `op` while it fails, up to [`START_WAIT`]: a replicated stream answers 503
/// ("JetStream system temporarily unavailable") while its servers elect a leader after a restart.
async fn retried<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + START_WAIT;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every message of `stream`, in stream order.
pub async fn stream_messages(url: &str, stream: &str) -> Vec<Message> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = retried("get stream", || js.get_stream(stream)).await;
    let state = retried("stream info", || stream.get_info()).await.state;
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let message = retried(&format!("stream seq {seq}"), || stream.get_raw_message(seq)).await;
        let id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let payload = serde_json::from_slice(&message.payload).unwrap();
        out.push(Message {
            subject: message.subject.to_string(),
            id,
            payload,
        });
    }
    out
}
