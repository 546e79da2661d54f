//! Unit tests of the supervisor: its worker map, and a pool's worker against real child
//! processes (`/bin/sh` scripts), reporting into a channel the test reads as the actor would.
//!
//! The helpers that make an engine (a script, a free port, a `/health` that answers 200) are
//! shared with the node's tests.

use super::*;
use std::time::Duration;

use pool_core::{Command, Input, Lane, Stamp, State, StopReason};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc::error::TryRecvError;

use crate::gpu::placement::SharedInventory;
use crate::gpu::{simulated_gpus, FixtureInventory, GpuProcess};
use crate::port::{GpuSummary, NodeInput, Published, Submission};

mod lanes;
mod stops;

/// How long a test waits for a condition of the world (a report, an exit) before it fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// An engine run as `/bin/sh -c script tag` on 127.0.0.1:`port`, with one slot (so that no
/// `/props` is asked). `tag` (its `$0`) makes the command line unique to the test: a spawn
/// kills a session leader running the same command line as a leftover of its own pool.
pub(crate) fn sh_engine(pool: &str, port: u16, script: &str, tag: &str) -> PreparedEngine {
    PreparedEngine {
        binary_path: "/bin/sh".into(),
        flags: vec!["-c".into(), script.into(), tag.into()],
        host: "127.0.0.1".into(),
        port,
        model_path: "/nonexistent/model.gguf".into(),
        engine_version: "sh".into(),
        pool_id: pool.into(),
        replica_id: "r0".into(),
        device_mask: None,
        engine: Some("sh".into()),
        env: Default::default(),
        health_path: "/health".into(),
        slots_total: Some(1),
        vram_required_bytes: None,
        ram_required_bytes: None,
        tensor_split: None,
        progress: None,
    }
}

/// An engine that serves its own health route: `python3 -m http.server` on 127.0.0.1:`port`
/// over `<dir>/www-<pool>`, which holds a file `health` (so `GET /health` answers 200). The
/// port is then the engine's session's, as a start requires.
pub(crate) fn serving_engine(pool: &str, port: u16, dir: &std::path::Path) -> PreparedEngine {
    let root = dir.join(format!("www-{pool}"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("health"), "ok\n").unwrap();
    let script = format!(
        "exec python3 -m http.server --bind 127.0.0.1 --directory '{}' {port}",
        root.display()
    );
    sh_engine(pool, port, &script, &dir.display().to_string())
}

/// A loopback port nothing listens on (bound and let go at once).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// An engine's health route on 127.0.0.1:`port`: every request is answered 200
/// `{"status":"ok"}` (and counted) until the task is aborted.
pub(crate) struct HealthRoute {
    /// Requests answered so far.
    pub(crate) asked: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HealthRoute {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves [`HealthRoute`] on `port`.
pub(crate) async fn serve_health(port: u16) -> HealthRoute {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = asked.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request).await;
                let body = r#"{"status":"ok"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    HealthRoute { asked, task }
}

/// A supervisor in `dir` that reports into the returned channel and reads `state` as its
/// registry; `placement` as with `require_gpu`.
fn supervisor_reporting(
    dir: &std::path::Path,
    state: State,
    placement: Option<PlacementCheck>,
) -> (Supervisor, mpsc::Receiver<NodeInput>) {
    let mut policy = Policy::default();
    policy.health.preload_interval_ms = 50;
    supervisor_with_policy(dir, state, placement, policy)
}

/// [`supervisor_reporting`] with `policy`.
fn supervisor_with_policy(
    dir: &std::path::Path,
    state: State,
    placement: Option<PlacementCheck>,
    policy: Policy,
) -> (Supervisor, mpsc::Receiver<NodeInput>) {
    let dirs = RuntimeDirs::create(dir).unwrap();
    let clock: SharedClock = Arc::new(crate::clock::ManualClock::new(0));
    let mut settings = SupervisorSettings::new(dirs, policy, clock);
    settings.placement = placement;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let gpu = GpuSummary {
        available: false,
        count: 0,
        reason: None,
        required: false,
    };
    let registry = Registry::new(Published::durable(Arc::new(state), gpu));
    (Supervisor::new(settings, Reporter::new(tx), registry), rx)
}

fn supervisor(dir: &std::path::Path) -> Supervisor {
    supervisor_reporting(dir, State::default(), None).0
}

/// The state once `engine` is preloaded into its pool (what a worker reads of the pool).
fn preloaded(engine: &PreparedEngine) -> State {
    let policy = Policy::default();
    let ctx = pool_core::Context {
        now_ms: 0,
        random: 0,
        policy: &policy,
    };
    let input = Input::Command(Command::Preload {
        pool_id: PoolId::new(&engine.pool_id).unwrap(),
        engine: engine.clone(),
        placement: Default::default(),
    });
    let mut state = State::default();
    if engine.device_mask.is_some() {
        // A mask must name GPUs of the node: the node lists simulated ones.
        let gpus = crate::gpu::simulated_gpus(2)
            .into_iter()
            .map(|g| g.info)
            .collect();
        let stamp = Stamp {
            seq: 1,
            ts_ms: 0,
            pool_id: None,
        };
        state.apply_mut(stamp, &pool_core::Event::GpuInventoryObserved { gpus });
    }
    for fact in pool_core::decide(&state, &input, &ctx).unwrap() {
        let pool = fact.pool_id.map(|id| id.to_string());
        let seq = state.last_seq() + 1;
        let stamp = Stamp {
            seq,
            ts_ms: 0,
            pool_id: pool.as_deref(),
        };
        state.apply_mut(stamp, &fact.event);
    }
    state
}

/// The observation of the next report, waiting at most [`PATIENCE`].
async fn next_report(reports: &mut mpsc::Receiver<NodeInput>) -> Observation {
    let input = tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .expect("no report in time")
        .expect("the reporter is gone");
    observation_of(input)
}

fn observation_of(input: NodeInput) -> Observation {
    match input {
        NodeInput::Submit(Submission {
            input: Input::Observation(observation),
            ..
        }) => observation,
        _ => panic!("the supervisor sent something else than an observation"),
    }
}

/// Nothing more was reported (to be called once whatever could report has ended).
fn no_more_reports(reports: &mut mpsc::Receiver<NodeInput>) {
    match reports.try_recv() {
        Ok(input) => panic!("a second report: {:?}", observation_of(input)),
        Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
    }
}

/// Kills the engine it holds when dropped, unless its exit was seen (then its pid may be
/// another process's): a failing test leaves no engine behind.
struct Reaper(u32, tokio::sync::watch::Receiver<Option<process::ExitInfo>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.1.borrow().is_none() {
            let _ = process::signal_group(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The worker of pool "a"'s lane A, outside the supervisor's own map (a test drives it).
fn worker_a(supervisor: &Supervisor) -> PoolWorker {
    PoolWorker::new(
        supervisor.shared.clone(),
        PoolId::new("a").unwrap(),
        Lane::A,
    )
}

/// Spawns `engine` on `worker` (token 7, in the worker's lane): its pid, from the
/// `EngineSpawned` report, and its reaper.
async fn spawn(
    worker: &mut PoolWorker,
    reports: &mut mpsc::Receiver<NodeInput>,
    engine: PreparedEngine,
) -> (u32, Reaper) {
    spawn_as(worker, reports, engine, false).await
}

/// [`spawn`], a surge's new engine when `surge`.
async fn spawn_as(
    worker: &mut PoolWorker,
    reports: &mut mpsc::Receiver<NodeInput>,
    engine: PreparedEngine,
    surge: bool,
) -> (u32, Reaper) {
    let pool_id = worker.pool_id.clone();
    let effect = Effect::Spawn {
        pool_id,
        engine,
        attempt: 0,
        token: 7,
        lane: worker.lane,
        surge,
    };
    worker.run_effect(1, effect).await;
    let exited = worker.engine.as_ref().unwrap().exited.clone();
    match next_report(reports).await {
        Observation::EngineSpawned { pid, token: 7, .. } => (pid, Reaper(pid, exited)),
        other => panic!("expected EngineSpawned, got {other:?}"),
    }
}

/// Waits until the engine's exit watcher has ended (its sender of the exit is dropped): all
/// it would report is queued by then. Real time.
async fn exit_watcher_ended(exited: &mut tokio::sync::watch::Receiver<Option<process::ExitInfo>>) {
    let ended = async { while exited.changed().await.is_ok() {} };
    tokio::time::timeout(PATIENCE, ended)
        .await
        .expect("the engine's exit was not seen in time (is it still running?)");
}

/// Waits until the log at `path` has a line `line`. Real time, blocking the thread: usable on
/// paused time, where a timer would fire at once.
fn log_shows(path: &std::path::Path, line: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !std::fs::read_to_string(path).is_ok_and(|log| log.lines().any(|l| l == line)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no line {line:?} in the log"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The worker's effect `StopEngine` of `pid` with `grace_ms` (in the worker's lane), run to
/// its end.
async fn stop(worker: &mut PoolWorker, pid: u32, grace_ms: u64) {
    let pool_id = worker.pool_id.clone();
    let effect = Effect::StopEngine {
        pool_id,
        pid,
        grace_ms,
        reason: StopReason::Requested,
        lane: worker.lane,
    };
    worker.run_effect(2, effect).await;
}

async fn workers_become(supervisor: &Supervisor, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while supervisor.workers() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers: {}",
            supervisor.workers()
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_pools_worker_ends_with_its_files_and_a_new_one_serves_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = supervisor(dir.path());
    let a = PoolId::new("a").unwrap();
    let b = PoolId::new("b").unwrap();
    supervisor.dispatch(
        1,
        Effect::RemovePidFile {
            pool_id: a.clone(),
            lane: Lane::A,
        },
    );
    supervisor.dispatch(
        2,
        Effect::RemovePidFile {
            pool_id: b.clone(),
            lane: Lane::A,
        },
    );
    assert_eq!(supervisor.workers(), 2);
    supervisor.dispatch(3, Effect::RemovePoolFiles { pool_id: a.clone() });
    workers_become(&supervisor, 1).await;
    // The same id again: a new worker runs its effects (here: the pid file goes).
    let pid_file = supervisor.shared.settings.dirs.pid_path("a");
    std::fs::write(&pid_file, "1\n").unwrap();
    let (done, ran) = tokio::sync::oneshot::channel();
    let done: Done = Box::new(move || {
        let _ = done.send(());
    });
    supervisor.dispatch_then(
        4,
        Effect::RemovePidFile {
            pool_id: a,
            lane: Lane::A,
        },
        vec![done],
    );
    ran.await.unwrap();
    assert!(!pid_file.exists());
    supervisor.dispatch(5, Effect::RemovePoolFiles { pool_id: b });
    workers_become(&supervisor, 1).await;
}

/// A GPU fixture listing `pid` on GPU 0.
fn fixture_listing(path: &std::path::Path, pid: u32) {
    let mut gpus = simulated_gpus(1);
    gpus[0].processes.push(GpuProcess {
        pid,
        used_bytes: 1 << 30,
        pool_id: None,
    });
    std::fs::write(path, serde_json::to_vec(&gpus).unwrap()).unwrap();
}

/// Would catch: a start reported twice when the engine's log says it found no usable GPU
/// while its health wait runs: the log watcher's `EngineNotOnGpu`, then the health wait's
/// `HealthPassed` (its placement is proven: the fixture lists the engine on its GPU) for the
/// same start, which would make a CPU-bound engine ready.
#[tokio::test]
async fn a_no_gpu_line_during_the_health_wait_is_reported_once_by_the_log_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let (tag, port) = (dir.path().display().to_string(), free_port());
    let line = "warning: no usable GPU found, --gpu-layers option will be ignored";
    let mut engine = sh_engine("a", port, &format!("echo '{line}'; exec sleep 120"), &tag);
    engine.device_mask = Some("0".into());
    let fixture = dir.path().join("gpus.json");
    let inventory = SharedInventory::new(Arc::new(FixtureInventory::new(&fixture)));
    let check = PlacementCheck::new(inventory, 5_000);
    let (supervisor, mut reports) =
        supervisor_reporting(dir.path(), preloaded(&engine), Some(check));
    let mut worker = worker_a(&supervisor);
    let (pid, _reaper) = spawn(&mut worker, &mut reports, engine).await;
    fixture_listing(&fixture, pid);
    let pool_id = worker.pool_id.clone();
    let wait = Effect::StartHealthWait {
        lane: Lane::A,
        pool_id,
        pid,
        token: 7,
        deadline_at_ms: u64::MAX,
    };
    worker.run_effect(3, wait).await;
    // The health wait probes (nothing listens yet) while the log watcher finds the line.
    match next_report(&mut reports).await {
        Observation::EngineNotOnGpu { token, detail, .. } => {
            assert!(
                token == 7 && detail.contains("found no usable GPU"),
                "{detail}"
            )
        }
        other => panic!("expected EngineNotOnGpu from the log, got {other:?}"),
    }
    let health = serve_health(port).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !worker
        .health
        .as_ref()
        .is_some_and(|wait| wait.0.is_finished())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the health wait goes on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It ended after an answer 200 (not before probing), in silence: the log watcher reported.
    assert!(health.asked.load(std::sync::atomic::Ordering::SeqCst) > 0);
    no_more_reports(&mut reports);
}

/// A session leader running `/bin/sh -c script tag`, as an engine of an earlier daemon life
/// left unrecorded would (the script must not `exec`: the command line is the shell's).
fn session_leader(script: &str, tag: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    let mut leader = std::process::Command::new("/bin/sh");
    leader.args(["-c", script, tag]);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        leader.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }
    leader.spawn().unwrap()
}

/// Waits until `/proc/<pid>/cmdline` is `/bin/sh -c script tag` (the fork has `exec`ed).
fn runs_command_line(pid: u32, script: &str, tag: &str) {
    let wanted: Vec<u8> = ["/bin/sh", "-c", script, tag]
        .iter()
        .flat_map(|arg| arg.bytes().chain([0]))
        .collect();
    let deadline = std::time::Instant::now() + PATIENCE;
    while procfs::cmdline(pid).as_deref() != Some(wanted.as_slice()) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} never ran the script"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Would catch: a worker that does not look for a leftover engine before its first spawn (an
/// unrecorded engine of an earlier life would run beside the new one), or one that scans
/// `/proc` for it again before every later spawn of its life, whose engines it spawned,
/// tracked and whose sessions it ended itself (the cost of each restart).
#[tokio::test]
async fn a_worker_kills_a_leftover_before_the_first_spawn_of_its_life_only() {
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().display().to_string();
    let script = "sleep 120; :";
    let engine = sh_engine("a", free_port(), script, &tag);
    let mut leftover = session_leader(script, &tag);
    runs_command_line(leftover.id(), script, &tag);
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), preloaded(&engine), None);
    let mut worker = worker_a(&supervisor);
    assert!(worker.leftover_possible);
    let (pid, _reaper) = spawn(&mut worker, &mut reports, engine.clone()).await;
    // Killed and awaited before the spawn.
    use std::os::unix::process::ExitStatusExt as _;
    assert!(process::is_gone(leftover.id()), "the leftover still runs");
    assert_eq!(leftover.wait().unwrap().signal(), Some(9));
    assert!(!worker.leftover_possible);
    stop(&mut worker, pid, 10_000).await;
    assert!(matches!(
        next_report(&mut reports).await,
        Observation::EngineStopped { .. }
    ));
    // The same command line started meanwhile by someone else is none of this worker's
    // engines: the next spawn of its life does not look for it (a port it held would fail
    // the start with PORT_IN_USE).
    let mut stranger = session_leader(script, &tag);
    runs_command_line(stranger.id(), script, &tag);
    let (second, _reaper) = spawn(&mut worker, &mut reports, engine).await;
    assert_ne!(second, stranger.id());
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was killed"
    );
    let _ = process::signal_group(stranger.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = stranger.wait();
    stop(&mut worker, second, 10_000).await;
}

#[test]
fn the_health_retries_of_a_starting_engine_double_up_to_the_interval() {
    let mut waits = Vec::new();
    let mut last = None;
    for _ in 0..10 {
        let wait = start::next_retry_ms(last, 500);
        waits.push(wait);
        last = Some(wait);
    }
    assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 500, 500]);
    assert_eq!(start::next_retry_ms(None, 1), 1);
    assert_eq!(start::next_retry_ms(Some(4), 5), 5);
    assert_eq!(start::next_retry_ms(None, 0), 1);
    assert_eq!(start::next_retry_ms(Some(u64::MAX), 500), 500);
}

/// Would catch: a health wait that, after a first probe made before the engine listens,
/// waits a whole `preload_interval_ms` (here 60 s, beyond the test's patience) for the next.
#[tokio::test]
async fn an_engine_listening_soon_after_its_spawn_is_found_healthy_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut engine = serving_engine("a", port, dir.path());
    let served = engine.flags[1].clone();
    engine.flags[1] = format!("sleep 0.3; {served}");
    let mut policy = Policy::default();
    policy.health.preload_interval_ms = 60_000;
    let (supervisor, mut reports) =
        supervisor_with_policy(dir.path(), preloaded(&engine), None, policy);
    let mut worker = worker_a(&supervisor);
    let (pid, _reaper) = spawn(&mut worker, &mut reports, engine).await;
    let pool_id = worker.pool_id.clone();
    let wait = Effect::StartHealthWait {
        lane: Lane::A,
        pool_id,
        pid,
        token: 7,
        deadline_at_ms: u64::MAX,
    };
    worker.run_effect(3, wait).await;
    match next_report(&mut reports).await {
        Observation::HealthPassed { pid: passed, .. } => assert_eq!(passed, pid),
        other => panic!("expected HealthPassed, got {other:?}"),
    }
    stop(&mut worker, pid, 10_000).await;
}
