//! Runs the `engine-sim` test engine as a real child process and checks that it looks like
//! llama-server to a supervisor, and misbehaves exactly as told.

#[path = "support/process.rs"]
mod process;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use process::free_port;

/// Every wait in this file is bounded by this.
const BOUND: Duration = Duration::from_secs(5);
const LOADING_BODY: &str =
    r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#;

/// A running engine-sim; killed and reaped on drop so no child outlives a test. Its stderr is
/// read as it comes (a thread appends it to `err`), so a test can await one of its lines.
struct Engine {
    child: Child,
    port: u16,
    err: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    fn start(flags: &[&str]) -> Engine {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_engine-sim"))
            .args(["--port", &port.to_string()])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn engine-sim");
        let mut child = child;
        let err = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&err);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&chunk[..n]);
                sink.lock().unwrap().push_str(&text);
            }
        });
        Engine {
            child,
            port,
            err,
            reader: Some(reader),
        }
    }

    /// Waits (bounded) until its stderr holds `line`.
    async fn wait_line(&self, line: &str) {
        let deadline = Instant::now() + BOUND;
        while !self.err.lock().unwrap().contains(line) {
            assert!(
                Instant::now() < deadline,
                "engine-sim did not write {line:?} within {BOUND:?}: {}",
                self.err.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits (bounded) for the child to exit and returns its status and its stderr.
    async fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipe's end: the reader has all of it once it returns.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                let err = self.err.lock().unwrap().clone();
                return (status, err);
            }
            assert!(
                Instant::now() < deadline,
                "engine-sim did not exit within {BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `path` (bounded) until it answers with `want`; returns the body.
    async fn wait_status(&self, client: &reqwest::Client, path: &str, want: u16) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Ok(resp) = client.get(self.url(path)).send().await {
                if resp.status().as_u16() == want {
                    return resp.text().await.unwrap();
                }
            }
            assert!(Instant::now() < deadline, "{path} never answered {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn health_is_503_loading_then_200() {
    let c = client();
    let e = Engine::start(&["--load-ms", "1500"]);
    // The port listens from the start and every request is 503 while loading.
    assert_eq!(e.wait_status(&c, "/health", 503).await, LOADING_BODY);
    let props = c.get(e.url("/props")).send().await.unwrap();
    assert_eq!(props.status(), 503);
    let ok = e.wait_status(&c, "/health", 200).await;
    assert_eq!(
        serde_json::from_str::<Value>(&ok).unwrap(),
        serde_json::json!({"status": "ok"})
    );
}

#[tokio::test]
async fn never_healthy_stays_503() {
    let c = client();
    let e = Engine::start(&["--never-healthy"]);
    assert_eq!(e.wait_status(&c, "/health", 503).await, LOADING_BODY);
    // It says it will never load, and keeps answering 503 to every probe that follows.
    e.wait_line("the model will never finish loading").await;
    for _ in 0..5 {
        assert_eq!(c.get(e.url("/health")).send().await.unwrap().status(), 503);
    }
}

#[tokio::test]
async fn props_slots_and_404() {
    let c = client();
    let e = Engine::start(&["-np", "3", "-m", "/models/x.gguf", "--build-info", "b42"]);
    e.wait_status(&c, "/health", 200).await;
    let props: Value = c
        .get(e.url("/props"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(props["total_slots"], 3);
    assert_eq!(props["build_info"], "b42");
    assert_eq!(props["model_path"], "/models/x.gguf");
    assert_eq!(props["default_generation_settings"]["n_ctx"], 4096);
    let slots: Value = c
        .get(e.url("/slots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(slots.as_array().unwrap().len(), 3);
    assert_eq!(
        slots[2],
        serde_json::json!({"id": 2, "n_ctx": 4096, "speculative": false, "is_processing": false})
    );
    assert_eq!(c.get(e.url("/nope")).send().await.unwrap().status(), 404);
    let metrics = c.get(e.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 501, "as llama-server without --metrics");
    let completion: Value = c
        .post(e.url("/completion"))
        .body(r#"{"prompt": "hi", "n_predict": 3}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(completion["tokens_predicted"], 3, "{completion}");
    assert_eq!(completion["content"], " sim sim sim", "{completion}");

    let e = Engine::start(&["--parallel", "2", "--no-slots-in-props"]);
    e.wait_status(&c, "/health", 200).await;
    let props: Value = c
        .get(e.url("/props"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(props.get("total_slots").is_none(), "{props}");
    assert_eq!(props["build_info"], "b0-engine-sim");
    assert_eq!(props["model_path"], "sim.gguf");

    let e = Engine::start(&["--props-status", "501"]);
    e.wait_status(&c, "/health", 200).await;
    assert_eq!(c.get(e.url("/props")).send().await.unwrap().status(), 501);
}

#[tokio::test]
async fn crash_after_ms_exits_with_code() {
    let mut e = Engine::start(&["--crash-after-ms", "100", "--exit-code", "7"]);
    let (status, err) = e.wait_exit().await;
    assert_eq!(status.code(), Some(7), "{status:?}\n{err}");
    assert!(err.contains("crashing after 100 ms"), "{err}");
}

#[tokio::test]
async fn crash_signal_is_a_real_signal_death() {
    for (name, sig) in [
        ("SEGV", libc::SIGSEGV),
        ("SIGABRT", libc::SIGABRT),
        ("9", libc::SIGKILL),
    ] {
        let mut e = Engine::start(&["--crash-after-ms", "50", "--crash-signal", name]);
        let (status, err) = e.wait_exit().await;
        assert_eq!(status.signal(), Some(sig), "{name}: {status:?}\n{err}");
        assert_eq!(status.code(), None);
    }
}

#[tokio::test]
async fn cuda_error_line_then_exit_1() {
    let mut e = Engine::start(&["--cuda-error-after-ms", "100"]);
    let (status, err) = e.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{status:?}\n{err}");
    assert!(
        err.lines()
            .any(|l| l == "CUDA error: an illegal memory access was encountered"),
        "{err}"
    );

    let msg = r"CUDA error: out of memory\n  current device: 0";
    let mut e = Engine::start(&["--cuda-error-after-ms", "0", "--cuda-error-message", msg]);
    let (status, err) = e.wait_exit().await;
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("CUDA error: out of memory\n  current device: 0\n"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_exits_0() {
    let c = client();
    let mut e = Engine::start(&[]);
    e.wait_status(&c, "/health", 200).await;
    kill(e.pid(), Signal::SIGTERM).unwrap();
    let (status, err) = e.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{err}");
}

#[tokio::test]
async fn ignore_sigterm_survives_sigterm() {
    let c = client();
    let mut e = Engine::start(&["--ignore-sigterm"]);
    e.wait_status(&c, "/health", 200).await;
    kill(e.pid(), Signal::SIGTERM).unwrap();
    // It handled the signal (and says so), then still runs and answers.
    e.wait_line("received SIGTERM, ignoring it").await;
    assert!(e.child.try_wait().unwrap().is_none(), "exited on SIGTERM");
    e.wait_status(&c, "/health", 200).await;
    e.child.kill().unwrap();
    let (status, err) = e.wait_exit().await;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(err.contains("ignoring"), "{err}");
}

#[tokio::test]
async fn hang_keeps_listening_but_never_answers() {
    let c = client();
    let e = Engine::start(&["--hang-after-ms", "400"]);
    e.wait_status(&c, "/health", 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let short = Duration::from_millis(300);
    let err = c
        .get(e.url("/health"))
        .timeout(short)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Still listening: a plain TCP connect succeeds.
    std::net::TcpStream::connect(("127.0.0.1", e.port)).unwrap();
}

#[tokio::test]
async fn busy_port_exits_1_and_bad_flags_exit_2() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_engine-sim"))
        .args(["--port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't bind"));

    let out = Command::new(env!("CARGO_BIN_EXE_engine-sim"))
        .args(["--port", "1", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A trailing `--` and what follows it are accepted and ignored.
    let c = client();
    let e = Engine::start(&["--", "--no-such-flag", "x"]);
    e.wait_status(&c, "/health", 200).await;
}

#[tokio::test]
async fn alloc_mb_is_resident() {
    let c = client();
    let e = Engine::start(&["--alloc-mb", "64"]);
    e.wait_status(&c, "/health", 200).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", e.child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kb >= 64 * 1024, "VmRSS {rss_kb} kB");
}

/// The slot serving a completion shows it processing, its `n_decoded` advancing token by
/// token (`--token-ms`), then idle with its last task's count.
#[tokio::test]
async fn slots_show_a_completion_advancing() {
    let c = client();
    let e = Engine::start(&["--parallel", "2", "--token-ms", "20"]);
    e.wait_status(&c, "/health", 200).await;
    let url = e.url("/completion");
    let post = c.clone();
    let answer = tokio::spawn(async move {
        let r = post.post(url).body(r#"{"prompt":"hi","n_predict":60}"#);
        let r = r.timeout(BOUND).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    });
    let slots = |c: reqwest::Client, url: String| async move {
        c.get(url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let deadline = Instant::now() + BOUND;
    let mut decoded = Vec::new();
    while decoded.len() < 2 {
        let s = slots(c.clone(), e.url("/slots")).await;
        if s[0]["is_processing"] == true {
            let n = s[0]["next_token"][0]["n_decoded"].as_u64().unwrap();
            if decoded.last() != Some(&n) {
                decoded.push(n);
            }
        }
        assert!(
            Instant::now() < deadline,
            "n_decoded seen: {decoded:?}; {s}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(decoded[1] > decoded[0], "{decoded:?}");
    assert_eq!(answer.await.unwrap()["tokens_predicted"], 60);
    let s = slots(c.clone(), e.url("/slots")).await;
    assert_eq!(s[0]["is_processing"], false, "{s}");
    assert_eq!(s[0]["next_token"][0]["n_decoded"], 60, "{s}");
    assert_eq!(s[1]["is_processing"], false, "{s}");
}

/// `--stall-after-ms`: `/health` stays 200 while slot 0 shows work that never advances, and a
/// completion never ends.
#[tokio::test]
async fn stall_keeps_health_but_freezes_the_work() {
    let c = client();
    let e = Engine::start(&["--stall-after-ms", "300"]);
    e.wait_status(&c, "/health", 200).await;
    let idle: Value = c
        .get(e.url("/slots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(idle[0]["is_processing"], false, "not stalled yet: {idle}");
    e.wait_line("stalling after 300 ms").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let s: Value = c
            .get(e.url("/slots"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(s[0]["is_processing"], true, "{s}");
        seen.push(s[0]["next_token"][0]["n_decoded"].clone());
        assert_eq!(c.get(e.url("/health")).send().await.unwrap().status(), 200);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let err = c
        .post(e.url("/completion"))
        .body(r#"{"n_predict": 2}"#)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}
