//! Engines started by someone else (SPEC section 6, last bullet): a real daemon in process, a
//! real engine-sim started by the test itself (its own process, not a preload), handoff files
//! written into `<runtime>/engines/` and `POST /v2/pools/{id}/handoff`.
//!
//! Waits poll with a bounded deadline; every engine the test started is killed on drop.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, Harness};
use pool_managerd::daemon::Daemon;
use serde_json::{json, Value};

const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");
/// Longer than a few passes of the watcher (500 ms each) plus a probe.
const WAIT: Duration = Duration::from_secs(8);

impl Harness {
    /// A daemon whose waits allow a few passes of the watcher.
    async fn start_for_handoffs() -> Harness {
        let mut harness = Harness::start().await;
        harness.wait = WAIT;
        harness
    }

    fn engines_dir(&self) -> PathBuf {
        self.dir.path().join("runtime").join("engines")
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// Waits until the watcher has made a whole pass that began after this call (the pass
    /// under way, if any, may have listed the directory before): two more passes end.
    async fn a_whole_pass(&self) {
        let mut passes = self.daemon().handoff_passes();
        let target = *passes.borrow_and_update() + 2;
        tokio::time::timeout(WAIT, passes.wait_for(|n| *n >= target))
            .await
            .expect("the handoff watcher makes a pass within the wait")
            .expect("the handoff watcher runs");
    }

    /// The node's last handoff rejection `(file, field, reason)`.
    fn last_rejection(&self) -> Option<(String, String, String)> {
        self.daemon()
            .handle()
            .registry()
            .load()
            .state
            .node
            .last_handoff_rejection
            .clone()
    }

    async fn kinds(&self, pool: &str) -> Vec<String> {
        let (status, events) = self.get(&format!("/v2/pools/{pool}/events")).await;
        assert_eq!(status, 200, "{events}");
        events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["event"]["kind"].as_str())
            .map(str::to_string)
            .collect()
    }
}

/// An engine-sim started by the test (someone else than the daemon); killed on drop.
struct External {
    child: Child,
    port: u16,
}

impl External {
    async fn start(parallel: u32) -> External {
        let port = free_port();
        let child = std::process::Command::new(ENGINE_SIM)
            .args([
                "--port",
                &port.to_string(),
                "--parallel",
                &parallel.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let engine = External { child, port };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let ok = client
                .get(format!("{}/health", engine.url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return engine;
            }
            assert!(Instant::now() < deadline, "engine-sim never became healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.kill();
    }
}

fn handoff_doc(pool: &str, engine: &External) -> Value {
    json!({
        "engine": "llamacpp",
        "engine_version": "ext-7",
        "url": engine.url(),
        "pool_id": pool,
        "replica_id": "r0",
        "model": {"path": "/models/ext.gguf"},
        "flags": ["--parallel", "5"],
        "device_mask": "0,1",
        "slots_total": 5,
        "pid": engine.pid(),
    })
}

/// Writes `bytes` as `dir/name` atomically (a temp name the watcher ignores, then a rename).
fn write_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn a_handoff_file_registers_an_external_engine_and_its_death_makes_the_pool_unready() {
    let h = Harness::start_for_handoffs().await;
    let mut engine = External::start(5).await;
    let doc = handoff_doc("ext", &engine);
    write_file(&h.engines_dir(), "ext-r0.json", doc.to_string().as_bytes());

    let ready = h.wait_pool("ext", "ready", |s| s["ready"] == true).await;
    assert_eq!(ready["slots_total"], 5, "{ready}");
    assert_eq!(ready["device_mask"], "0,1", "{ready}");
    assert_eq!(ready["engine_version"], "ext-7", "{ready}");
    assert_eq!(ready["pid"], engine.pid(), "{ready}");
    assert!(ready["last_error"].is_null(), "{ready}");
    assert!(ready["last_heartbeat_ms"].is_u64(), "{ready}");
    let path = h.engines_dir().join("ext-r0.json");
    assert_eq!(ready["handoff_path"], path.display().to_string());
    let kinds = h.kinds("ext").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "HandoffRegistered").count(),
        1,
        "{kinds:?}"
    );

    // Seen again on later passes: not registered twice.
    h.a_whole_pass().await;
    h.a_whole_pass().await;
    let kinds = h.kinds("ext").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "HandoffRegistered").count(),
        1,
        "{kinds:?}"
    );

    // Its death (watched through a pidfd) makes the pool unready; nothing restarts it.
    engine.kill();
    let down = h
        .wait_pool("ext", "unready after the engine died", |s| {
            s["ready"] == false
        })
        .await;
    assert!(down["pid"].is_null(), "{down}");
    let (status, health) = h.get("/health").await;
    assert_eq!(status, 200, "{health}");

    // A new engine and a new handoff file register the pool again and clear the error.
    let engine2 = External::start(2).await;
    let mut doc2 = handoff_doc("ext", &engine2);
    doc2["slots_total"] = json!(2);
    write_file(&h.engines_dir(), "ext-r0.json", doc2.to_string().as_bytes());
    let again = h
        .wait_pool("ext", "ready again", |s| {
            s["ready"] == true && s["pid"] == engine2.pid()
        })
        .await;
    assert_eq!(again["slots_total"], 2, "{again}");
    assert!(again["last_error"].is_null(), "{again}");
    h.stop().await;
    drop(engine2);
}

#[tokio::test]
async fn bad_handoff_files_are_rejected_with_the_field_and_touch_no_pool() {
    let h = Harness::start_for_handoffs().await;
    let engine = External::start(3).await;
    let good = handoff_doc("bad", &engine);
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("slots_total");
    let mut wrong_type = good.clone();
    wrong_type["slots_total"] = json!("many");
    let mut wrong_value = good.clone();
    wrong_value["slots_total"] = json!(0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-r0.json", b"{ not json".to_vec(), "json"),
        (
            "bad-r0.json",
            missing.to_string().into_bytes(),
            "slots_total",
        ),
        (
            "bad-r0.json",
            wrong_type.to_string().into_bytes(),
            "slots_total",
        ),
        (
            "bad-r0.json",
            wrong_value.to_string().into_bytes(),
            "slots_total",
        ),
        // The file name must match the content.
        ("other-r0.json", good.to_string().into_bytes(), "pool_id"),
        ("huge-r0.json", vec![b' '; 70 * 1024], "file"),
    ];
    for (name, bytes, field) in cases {
        let _ = std::fs::remove_file(h.engines_dir().join("bad-r0.json"));
        write_file(&h.engines_dir(), name, &bytes);
        let file = h.engines_dir().join(name).display().to_string();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((f, fld, reason)) = h.last_rejection() {
                if f == file && fld == field {
                    assert!(!reason.is_empty());
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no rejection naming '{field}': {:?}",
                h.last_rejection()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if name != "bad-r0.json" {
            std::fs::remove_file(h.engines_dir().join(name)).unwrap();
        }
    }
    let (status, pools) = h.get("/v2/pools").await;
    assert_eq!(status, 200);
    let pools_text = pools.to_string();
    assert!(
        !pools_text.contains("\"bad\"") && !pools_text.contains("\"other\""),
        "no pool from a bad file: {pools}"
    );
    let (status, health) = h.get("/health").await;
    assert_eq!(status, 200, "the daemon keeps running: {health}");
    assert_eq!(health["pools"], 0, "{health}");

    // Fixed, the same file registers the pool.
    write_file(&h.engines_dir(), "bad-r0.json", good.to_string().as_bytes());
    h.wait_pool("bad", "ready once the file is fixed", |s| {
        s["ready"] == true
    })
    .await;
    h.stop().await;
    drop(engine);
}

#[tokio::test]
async fn our_own_handoff_file_is_not_re_ingested() {
    let h = Harness::start_for_handoffs().await;
    let port = free_port();
    let body = json!({"prepared": {
        "binary_path": ENGINE_SIM,
        "flags": ["--port", port.to_string(), "--parallel", "3"],
        "host": "127.0.0.1",
        "port": port,
        "model_path": "/models/m.gguf",
        "engine_version": "sim-1",
        "pool_id": "own",
        "replica_id": "r0",
    }});
    let (status, answer) = h.post("/v2/pools/own/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let file = h.engines_dir().join("own-r0.json");
    assert!(file.exists());
    // Several passes, then the same file touched (new mtime): still ours.
    h.a_whole_pass().await;
    h.a_whole_pass().await;
    let bytes = std::fs::read(&file).unwrap();
    write_file(&h.engines_dir(), "own-r0.json", &bytes);
    h.a_whole_pass().await;
    let kinds = h.kinds("own").await;
    assert!(
        !kinds.iter().any(|k| k == "HandoffRegistered"),
        "our own handoff was re-ingested: {kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "PoolReady"), "{kinds:?}");
    let (_, status) = h.get("/v2/pools/own").await;
    assert_eq!(status["ready"], true, "{status}");
    h.stop().await;
}

#[tokio::test]
async fn the_handoff_route_validates_probes_and_registers() {
    let h = Harness::start_for_handoffs().await;
    let engine = External::start(4).await;
    let mut doc = handoff_doc("api1", &engine);
    doc["slots_total"] = json!(4);

    let mut bad = doc.clone();
    bad["slots_total"] = json!(0);
    let (status, answer) = h.post("/v2/pools/api1/handoff", bad).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "INVALID_REQUEST");
    assert!(
        answer["error"].as_str().unwrap().contains("slots_total"),
        "{answer}"
    );

    let mut missing = doc.clone();
    missing.as_object_mut().unwrap().remove("url");
    let (status, answer) = h.post("/v2/pools/api1/handoff", missing).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("url"),
        "{answer}"
    );

    let mut mismatch = doc.clone();
    mismatch["pool_id"] = json!("other");
    let (status, answer) = h.post("/v2/pools/api1/handoff", mismatch).await;
    assert_eq!(status, 400, "{answer}");

    let mut dead = doc.clone();
    dead["url"] = json!(format!("http://127.0.0.1:{}", free_port()));
    let (status, answer) = h.post("/v2/pools/api1/handoff", dead).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], "POOL_UNREADY");
    let (status, _) = h.get("/v2/pools/api1").await;
    assert_eq!(status, 404, "no pool from a refused handoff");

    let (status, answer) = h.post("/v2/pools/api1/handoff", doc).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ready"], true, "{answer}");
    assert_eq!(answer["slots_total"], 4, "{answer}");
    assert_eq!(answer["pid"], engine.pid(), "{answer}");
    assert_eq!(answer["handoff_path"], "api", "{answer}");
    let kinds = h.kinds("api1").await;
    assert!(kinds.iter().any(|k| k == "HandoffRegistered"), "{kinds:?}");
    h.stop().await;
    drop(engine);
}

/// A handoff may name any pid: the daemon watches it, but signals it only once it is proven
/// to be the engine (it listens on the handoff's port). An unrelated process leading its own
/// process group, named by a handoff whose URL is a real engine's, survives the pool's
/// removal; a handoff naming the engine's real pid gets that engine stopped.
#[tokio::test]
async fn a_handoff_pid_is_signalled_only_when_proven_to_be_the_engine() {
    use std::os::unix::process::CommandExt as _;
    let h = Harness::start_for_handoffs().await;
    let engine = External::start(4).await;
    let mut victim = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut doc = handoff_doc("victim", &engine);
    doc["slots_total"] = json!(4);
    doc["pid"] = json!(victim.id());
    let (status, answer) = h.post("/v2/pools/victim/handoff", doc).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = h
        .call(reqwest::Method::DELETE, "/v2/pools/victim", None)
        .await;
    assert!(status < 300, "{status} {answer}");
    let deadline = Instant::now() + WAIT;
    while h.get("/v2/pools/victim").await.0 != 404 {
        assert!(Instant::now() < deadline, "the pool was not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        harness::pid_alive(u64::from(victim.id())),
        "the unrelated process named by the handoff was signalled"
    );
    assert!(
        harness::pid_alive(u64::from(engine.pid())),
        "nor the engine"
    );

    let mut doc = handoff_doc("real", &engine);
    doc["slots_total"] = json!(4);
    let (status, answer) = h.post("/v2/pools/real/handoff", doc).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = h
        .call(reqwest::Method::DELETE, "/v2/pools/real", None)
        .await;
    assert!(status < 300, "{status} {answer}");
    let deadline = Instant::now() + WAIT;
    while harness::pid_alive(u64::from(engine.pid())) {
        assert!(
            Instant::now() < deadline,
            "the proven engine was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = victim.kill();
    let _ = victim.wait();
    h.stop().await;
    drop(engine);
}

/// A handoff URL is where the daemon sends its probes: only `http://HOST:PORT` of this node
/// is taken (no user, path, query or fragment, no foreign host), and the refusal says why
/// without asking the remote anything.
#[tokio::test]
async fn a_handoff_url_cannot_send_probes_elsewhere() {
    let h = Harness::start_for_handoffs().await;
    let engine = External::start(4).await;
    let port = engine.port;
    for url in [
        format!("http://user:secret@127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/admin?x=1"),
        format!("http://127.0.0.1:{port}/#frag"),
        format!("https://127.0.0.1:{port}"),
        "http://192.0.2.7:80".to_string(),
        format!("http://example.invalid:{port}"),
    ] {
        let mut doc = handoff_doc("far", &engine);
        doc["slots_total"] = json!(4);
        doc["url"] = json!(url);
        let (status, answer) = h.post("/v2/pools/far/handoff", doc).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{url}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains("'url'"),
            "{url}: {answer}"
        );
    }
    assert_eq!(
        h.get("/v2/pools/far").await.0,
        404,
        "no pool from a refused url"
    );
    // The same engine named as this node's: taken.
    let mut doc = handoff_doc("near", &engine);
    doc["slots_total"] = json!(4);
    doc["url"] = json!(format!("http://localhost:{port}/"));
    let (status, answer) = h.post("/v2/pools/near/handoff", doc).await;
    assert_eq!(status, 200, "{answer}");
    h.stop().await;
    drop(engine);
}
