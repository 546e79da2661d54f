//! An engine's identity and its port: engines started through a launcher script that `exec`s
//! engine-sim, or through a symlink retargeted by an upgrade while they run (both adopted
//! after a restart: pid, start time and boot id name an engine, not its binary); the boot id
//! and the executable the journal records; foreign HTTP servers (`python3 -m http.server`
//! with a `health` file, so `/health` answers 200) on an engine's port, started by the
//! scenario before a preload or while the engine loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cucumber::{given, then, when};

use crate::engines::{self, ENGINE_SIM};
use crate::process::ChildGuard;
use crate::world::PoolWorld;

/// How long a foreign server may take to answer, or a recorded event to appear.
const EVENTUALLY: Duration = Duration::from_secs(10);

/// Foreign servers by pool (on that pool's port); each ended and reaped when dropped.
#[derive(Default)]
pub struct ForeignServers(BTreeMap<String, ChildGuard>);

impl std::fmt::Debug for ForeignServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pids: BTreeMap<&String, u32> = self.0.iter().map(|(k, c)| (k, c.pid())).collect();
        write!(f, "ForeignServers({pids:?})")
    }
}

/// `<scenario dir>/bin`, created.
fn bin_dir(world: &mut PoolWorld) -> PathBuf {
    let dir = world.dir().join("bin");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn port_of(world: &mut PoolWorld, pool: &str) -> u16 {
    let port = world.prepared_mut(pool)["port"].as_u64();
    port.and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("the prepared engine of pool '{pool}' has no port"))
}

/// The prepared engine-sim of `pool` run through `binary` (same flags and port).
fn prepare_through(world: &mut PoolWorld, pool: &str, binary: &Path, extra: &str) {
    world.prepare_engine_sim(pool, extra);
    world.prepared_mut(pool)["binary_path"] = binary.display().to_string().into();
}

/// A shell script, as operators write launchers: it sets the scene, then `exec`s engine-sim
/// with its own arguments (same pid; `/proc/<pid>/exe` becomes engine-sim).
fn write_launcher(world: &mut PoolWorld, pool: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = bin_dir(world).join(format!("launch-{pool}"));
    let script = format!("#!/bin/sh\n# launcher of pool {pool}\nexec '{ENGINE_SIM}' \"$@\"\n");
    std::fs::write(&path, script).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn link_of(world: &mut PoolWorld, pool: &str) -> PathBuf {
    bin_dir(world).join(format!("engine-{pool}"))
}

#[given(
    expr = "a ready pool {string} whose engine-sim is started by a launcher script that execs it"
)]
async fn ready_through_launcher(world: &mut PoolWorld, pool: String) {
    let launcher = write_launcher(world, &pool);
    prepare_through(world, &pool, &launcher, "--parallel 2");
    world.preload_ready(&pool).await;
}

#[given(expr = "a ready pool {string} whose engine-sim binary is a symlink")]
async fn ready_through_symlink(world: &mut PoolWorld, pool: String) {
    let link = link_of(world, &pool);
    std::os::unix::fs::symlink(ENGINE_SIM, &link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    prepare_through(world, &pool, &link, "--parallel 2");
    world.preload_ready(&pool).await;
}

/// The upgrade: a new copy of the binary (a hard link where the file system allows, else a
/// copy: another path either way), and the symlink replaced atomically to point to it.
#[when(expr = "the symlink of pool {string} is retargeted to another copy of engine-sim")]
fn retarget(world: &mut PoolWorld, pool: String) {
    let link = link_of(world, &pool);
    let next = bin_dir(world).join(format!("engine-sim-next-{pool}"));
    if std::fs::hard_link(ENGINE_SIM, &next).is_err() {
        std::fs::copy(ENGINE_SIM, &next).unwrap_or_else(|e| panic!("{}: {e}", next.display()));
    }
    let staged = link.with_extension("new");
    std::os::unix::fs::symlink(&next, &staged)
        .unwrap_or_else(|e| panic!("{}: {e}", staged.display()));
    std::fs::rename(&staged, &link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    let now = std::fs::canonicalize(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    assert_eq!(now, next, "the symlink points to the new copy");
}

/// `python3 -m http.server` on the port of `pool`, answering 200 on `/health` (a file of
/// that name), in its own session like any unrelated server; waits until it answers.
async fn start_foreign_server(world: &mut PoolWorld, pool: &str) {
    let port = port_of(world, pool);
    let root = world.dir().join(format!("foreign-{pool}"));
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    std::fs::write(root.join("health"), "ok\n").unwrap_or_else(|e| panic!("{e}"));
    let python = engines::python3().unwrap_or_else(|| {
        panic!("python3 is not on PATH: install it (Debian: apt-get install python3)")
    });
    let mut command = Command::new(python);
    command
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&root)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("python3 -m http.server: {e}"));
    world.foreign.0.insert(pool.to_string(), ChildGuard(child));
    let deadline = Instant::now() + EVENTUALLY;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/health");
    loop {
        let answered = client.get(&url).send().await;
        if answered.is_ok_and(|r| r.status().as_u16() == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the foreign server on port {port} never answered 200 on /health"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[given(expr = "a foreign HTTP server answers 200 on \\/health at the port of pool {string}")]
async fn foreign_before(world: &mut PoolWorld, pool: String) {
    start_foreign_server(world, &pool).await;
}

#[when(
    expr = "a foreign HTTP server starts answering 200 on \\/health at the port of pool {string}"
)]
async fn foreign_while_loading(world: &mut PoolWorld, pool: String) {
    start_foreign_server(world, &pool).await;
}

/// A prepared engine that never listens (a shell that sleeps, in the session the daemon gives
/// it): only someone else can answer on its port.
#[given(expr = "pool {string} is prepared as an engine that never listens on its port")]
fn never_listens(world: &mut PoolWorld, pool: String) {
    world.prepare_engine_sim(&pool, "");
    let engine = world.prepared_mut(&pool);
    engine["binary_path"] = "/bin/sh".into();
    engine["flags"] = serde_json::json!(["-c", "exec sleep 300", "silent-engine"]);
}

fn foreign_pid(world: &PoolWorld, pool: &str) -> u32 {
    world
        .foreign
        .0
        .get(pool)
        .map(ChildGuard::pid)
        .unwrap_or_else(|| panic!("no foreign server was started on the port of pool '{pool}'"))
}

/// The error names the foreign server: its pid and its command line.
fn names_the_server(error: &str, pid: u32, port: u16) {
    assert!(
        error.contains(&format!("pid {pid} (")),
        "the error does not name pid {pid}: {error}"
    );
    assert!(
        error.contains("-m http.server") && error.contains(&port.to_string()),
        "the error does not quote the command line of the foreign server: {error}"
    );
}

#[then(
    expr = "the answer's error names the pid and command line of the foreign server of pool {string}"
)]
fn answer_names_server(world: &mut PoolWorld, pool: String) {
    let pid = foreign_pid(world, &pool);
    let port = port_of(world, &pool);
    let error = world.answer().body["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    names_the_server(&error, pid, port);
}

#[then(
    expr = "pool {string} has a last error naming the pid and command line of its foreign server"
)]
async fn last_error_names_server(world: &mut PoolWorld, pool: String) {
    let pid = foreign_pid(world, &pool);
    let port = port_of(world, &pool);
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let answer = world
            .peek(reqwest::Method::GET, &format!("/v2/pools/{pool}"))
            .await;
        let error = answer.body["last_error"].as_str().unwrap_or("").to_string();
        if error.contains("PORT_IN_USE") {
            return names_the_server(&error, pid, port);
        }
        assert!(
            Instant::now() < deadline,
            "pool '{pool}' has no PORT_IN_USE last error within {EVENTUALLY:?}: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[then(expr = "the foreign server of pool {string} still runs")]
fn foreign_runs(world: &mut PoolWorld, pool: String) {
    let guard = world
        .foreign
        .0
        .get_mut(&pool)
        .unwrap_or_else(|| panic!("no foreign server for pool '{pool}'"));
    assert!(
        matches!(guard.0.try_wait(), Ok(None)),
        "the foreign server was signalled: only what is proven ours is"
    );
}

/// The last `kind` event of `pool`'s journal, waiting for it.
async fn last_event(world: &PoolWorld, pool: &str, kind: &str) -> serde_json::Value {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let events = world.events(pool).await;
        if let Some(event) = events.iter().rev().find(|e| e["event"]["kind"] == kind) {
            return event["event"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} of pool '{pool}': {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[then(expr = "the journal records the boot id of this machine for the engine of pool {string}")]
async fn boot_id_recorded(world: &mut PoolWorld, pool: String) {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_else(|e| panic!("/proc/sys/kernel/random/boot_id: {e}"));
    let spawned = last_event(world, &pool, "EngineSpawned").await;
    assert_eq!(spawned["boot_id"], boot.trim(), "{spawned}");
}

#[then(
    expr = "the journal records engine-sim, not its launcher, as the executable of pool {string}"
)]
async fn exe_recorded(world: &mut PoolWorld, pool: String) {
    let passed = last_event(world, &pool, "HealthCheckPassed").await;
    let sim = std::fs::canonicalize(ENGINE_SIM).unwrap_or_else(|e| panic!("{ENGINE_SIM}: {e}"));
    assert_eq!(passed["exe"], sim.display().to_string(), "{passed}");
    let prepared = world.prepared_mut(&pool)["binary_path"].clone();
    assert_ne!(
        passed["exe"], prepared,
        "the launcher was recorded, not what it exec'd"
    );
}
