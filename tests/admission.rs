//! What a caller may make the daemon start, tried as an attacker would: loader and shell hooks
//! in `env{}`, a newline in a flag aimed at the engine log, a symlink out of an allowed
//! directory, an allow-list narrowed after an engine was admitted (its restart must be
//! refused too), and a web page's requests (a `text/plain` body, a foreign `Origin`, a
//! rebound `Host`). Real daemons on loopback sockets, real engine-sim processes.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::PathBuf;

use harness::{engine_sim_preload, pid_alive, Harness};
use serde_json::{json, Value};

fn with_env(pool: &str, env: Value) -> Value {
    let mut body = engine_sim_preload(pool, None, &[]);
    body["prepared"]["env"] = env;
    body
}

#[tokio::test]
async fn loader_and_shell_hooks_in_env_are_refused_and_nothing_starts() {
    let h = Harness::start().await;
    for key in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "BASH_ENV",
        "ENV",
        "PYTHONPATH",
        "PATH",
    ] {
        let body = with_env("p", json!({ key: "/tmp/evil" }));
        let (status, answer) = h.post("/v2/pools/p/preload", body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{key}: {answer}"
        );
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(key), "the answer names {key}: {answer}");
    }
    let (_, pools) = h.get("/v2/pools").await;
    assert!(
        pools.as_array().unwrap().iter().all(|p| p["pid"].is_null()),
        "no engine was started: {pools}"
    );
    // The way out the refusal names: the key added to `[engines] env_allow`.
    let (status, answer) = h
        .post(
            "/v2/pools/q/preload",
            with_env("q", json!({"MY_ENGINE_OPT": "1"})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("env_allow"),
        "{answer}"
    );
    let listed = Harness::start_with(|c| c.engines.env_allow.push("MY_ENGINE_OPT".into())).await;
    let (status, answer) = listed
        .post(
            "/v2/pools/q/preload",
            with_env("q", json!({"MY_ENGINE_OPT": "1"})),
        )
        .await;
    assert_eq!(status, 200, "once listed in env_allow: {answer}");
    listed.stop().await;
    // The variables engines need still pass.
    let body = with_env(
        "ok",
        json!({"CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/tmp/hf"}),
    );
    let (status, answer) = h.post("/v2/pools/ok/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn a_newline_in_a_flag_does_not_become_a_line_of_the_engine_log() {
    let h = Harness::start().await;
    let body = engine_sim_preload("n", None, &["--", "x\nid > /tmp/owned\n#"]);
    let (status, answer) = h.post("/v2/pools/n/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let log = std::fs::read_to_string(h.runtime().join("logs/n.log")).unwrap();
    assert!(
        !log.lines().any(|line| line.starts_with("id > ")),
        "a caller's flag became a line of its own:\n{log}"
    );
    assert!(log.contains("x\\nid > /tmp/owned\\n#"), "{log}");
    h.stop().await;
}

#[tokio::test]
async fn a_symlink_out_of_an_allowed_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("engines");
    std::fs::create_dir(&allowed).unwrap();
    let link = allowed.join("sh");
    std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
    let allowed_for_config = allowed.clone();
    let h = Harness::start_with(move |c| c.allowed_binaries = vec![allowed_for_config]).await;
    let mut body = engine_sim_preload("s", None, &[]);
    body["prepared"]["binary_path"] = json!(link.to_str().unwrap());
    body["prepared"]["flags"] = json!(["-c", "id"]);
    let (status, answer) = h.post("/v2/pools/s/preload", body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("BINARY_NOT_ALLOWED")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("resolves to"),
        "the answer says where the link leads: {answer}"
    );
    h.stop().await;
}

/// An engine admitted under a wide allow-list, then the list narrowed and the daemon
/// restarted: when the engine dies, its restart is refused, recorded, and leaves the pool
/// unready with `BINARY_NOT_ALLOWED` as its reason.
#[tokio::test]
async fn a_narrowed_allow_list_refuses_the_restart_of_an_engine_admitted_before() {
    let mut h = Harness::start_with(|c| c.stop_engines_on_shutdown = false).await;
    let (status, answer) = h
        .post("/v2/pools/r/preload", engine_sim_preload("r", None, &[]))
        .await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().expect("a pid");
    h.config.allowed_binaries = vec![PathBuf::from("/opt/nothing-here")];
    h.restart().await;
    h.wait_pool("r", "adopted and ready", |p| p["ready"] == json!(true))
        .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pool = h
        .wait_pool("r", "the restart refused", |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("BINARY_NOT_ALLOWED"))
        })
        .await;
    assert_eq!(pool["ready"], json!(false), "{pool}");
    assert!(
        pool["pid"].is_null() || !pid_alive(pool["pid"].as_u64().unwrap()),
        "no engine runs: {pool}"
    );
    let (_, events) = h.get("/v2/pools/r/events?limit=100").await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| { e.to_string().contains("BINARY_NOT_ALLOWED") }),
        "the refusal is in the journal: {events}"
    );
    let log = std::fs::read_to_string(h.runtime().join("logs/r.log")).unwrap();
    let starts = log
        .lines()
        .filter(|l| l.starts_with("==== pool-managerd:") && l.contains(" starting "))
        .count();
    assert_eq!(starts, 1, "nothing was started after the refusal:\n{log}");
    h.stop().await;
}

/// A web page on the node can send "simple" cross-origin POSTs (no preflight for
/// `text/plain`) and can reach a loopback API under a name of its own (DNS rebinding): both
/// are refused before anything is read or started; a listed console origin passes.
#[tokio::test]
async fn web_pages_cannot_drive_the_api() {
    let h = Harness::start_with(|c| {
        c.api.allowed_origins = vec!["https://console.example".into()];
    })
    .await;
    let body = engine_sim_preload("w", None, &[]).to_string();
    let url = format!("{}/v2/pools/w/preload", h.base);
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        (status, answer)
    };
    let (status, answer) = send(
        h.http
            .post(&url)
            .header("content-type", "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert_eq!(answer["code"], json!("INVALID_REQUEST"), "{answer}");
    let (status, answer) = send(
        h.http
            .post(&url)
            .header("content-type", "application/json")
            .header("origin", "https://evil.example")
            .body(body.clone()),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("ORIGIN_NOT_ALLOWED")),
        "{answer}"
    );
    let (status, answer) = send(
        h.http
            .get(format!("{}/v2/pools", h.base))
            .header("host", "rebound.evil.example:9200"),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("ORIGIN_NOT_ALLOWED")),
        "{answer}"
    );
    let (_, pools) = h.get("/v2/pools").await;
    assert_eq!(pools, json!([]), "nothing was started");
    let (status, answer) = send(
        h.http
            .get(format!("{}/v2/pools", h.base))
            .header("origin", "https://console.example"),
    )
    .await;
    assert_eq!(status, 200, "a listed origin passes: {answer}");
    h.stop().await;
}

/// As root with no `engine_user`, an engine would run as root: every start is refused unless
/// `allow_root_engines` says otherwise (`--dev` and `demo` do).
#[tokio::test]
async fn a_root_daemon_without_engine_user_refuses_to_start_engines() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true: this test needs root (CI runs as root)"
        );
        eprintln!("skipped: not root, so no engine could run as root");
        return;
    }
    let h = Harness::start_with(|c| c.allow_root_engines = false).await;
    let body = engine_sim_preload("root", None, &[]);
    let (status, answer) = h.post("/v2/pools/root/preload", body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (500, Some("SPAWN_FAILED")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("engine_user"),
        "{answer}"
    );
    assert!(
        !h.runtime().join("logs/root.log").exists(),
        "nothing was started"
    );
    h.stop().await;
}

/// A descriptor the daemon holds without close-on-exec (inherited from whoever started it,
/// or a `dup`) must not reach an engine: it could be a root-only file.
#[tokio::test]
async fn an_engine_inherits_no_descriptor_but_0_1_2() {
    use std::os::fd::AsRawFd as _;
    let h = Harness::start().await;
    let secret = h.dir.path().join("root-only");
    std::fs::write(&secret, b"secret").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    // `dup` gives a descriptor without FD_CLOEXEC, like one inherited from a parent.
    // SAFETY: dup of a descriptor this test owns; the new one is closed below.
    let leaked = unsafe { libc::dup(file.as_raw_fd()) };
    assert!(leaked > 2);
    let (status, answer) = h
        .post(
            "/v2/pools/fd/preload",
            engine_sim_preload("fd", None, &["--list-fds"]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // What passed exec: engine-sim lists its descriptors before it opens any of its own.
    let log = std::fs::read_to_string(h.runtime().join("logs/fd.log")).unwrap();
    let listed = log
        .lines()
        .find_map(|line| line.split_once("descriptors at start: "))
        .map(|(_, fds)| fds.to_string());
    assert_eq!(listed.as_deref(), Some("0 1 2"), "{log}");
    let pid = answer["pid"].as_u64().unwrap();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    // SAFETY: closes the descriptor this test made above.
    unsafe { libc::close(leaked) };
    assert!(
        !fds.iter().any(|target| target.contains("root-only")),
        "the engine holds the daemon's descriptor: {fds:?}"
    );
    h.stop().await;
}

/// A process that leads its own session, started just now: the kind the start-up
/// reconciliation stops when a trusted pid file names it. Killed on drop.
struct SessionLeader(std::process::Child);

impl SessionLeader {
    fn start() -> SessionLeader {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new("sleep");
        command.arg("600");
        // SAFETY: setsid only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        SessionLeader(command.spawn().unwrap())
    }

    fn pid(&self) -> u64 {
        u64::from(self.0.id())
    }
}

impl Drop for SessionLeader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whoever can write into `pids/` but is not the daemon's user names a process there just after
/// it started (a session leader, as engines are): start-up must not stop it. The file is
/// removed unread; the same file written by the daemon's user is obeyed (the control).
#[tokio::test]
async fn a_pid_file_written_by_another_user_gets_nothing_stopped() {
    use std::os::unix::fs::PermissionsExt as _;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true: this test needs root to write a file as another user (CI runs as root)"
        );
        eprintln!("skipped: needs root to write a file as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("runtime/pids");
    std::fs::create_dir_all(&pids).unwrap();
    let victim = SessionLeader::start();
    let planted = pids.join("victim.pid");
    std::fs::write(&planted, format!("{}\n", victim.pid())).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&planted, Some(65_534), Some(65_534)).unwrap();
    let ours = SessionLeader::start();
    let obeyed = pids.join("ours.pid");
    std::fs::write(&obeyed, format!("{}\n", ours.pid())).unwrap();
    std::fs::set_permissions(&obeyed, std::fs::Permissions::from_mode(0o600)).unwrap();

    let config = harness::config(dir.path());
    let inventory = std::sync::Arc::new(pool_managerd::gpu::NoGpu::new("test: no GPU"));
    let h = Harness::start_in(dir, &config, inventory).await;
    assert!(!planted.exists(), "the untrusted pid file is removed");
    assert!(
        pid_alive(victim.pid()),
        "a process named by another user's pid file was stopped"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pid_alive(ours.pid()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the control: the daemon's own pid file names a session leader it stops"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    h.stop().await;
}
