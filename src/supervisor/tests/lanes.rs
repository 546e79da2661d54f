//! The lanes of a pool: two engines of one pool (its engine and a surge's new one) each with
//! its own worker, pid file and log, each stopped by its own effect, and both lanes' files
//! gone with the pool; start-up's scan knows a lane B pid file.

use super::*;
use pool_core::state::EngineProcess;
use pool_core::Second;

/// `state` with `engine` as pool `a`'s second engine (a surge's new one) in lane B, its
/// process `pid` when known.
fn with_second(mut state: State, engine: &PreparedEngine, pid: Option<u32>) -> State {
    let pool = state.pools.get_mut(&PoolId::new("a").unwrap()).unwrap();
    let process = pid.map(|pid| EngineProcess {
        pid,
        start_time: process::start_time(pid).unwrap_or(0),
        log_path: String::new(),
        pid_path: String::new(),
        spawned_seq: 9,
        spawned_at_ms: 0,
        adopted: false,
        external: false,
        boot_id: procfs::boot_id(),
        exe: None,
    });
    pool.second = Some(Second {
        process,
        ..Second::surge(engine.clone(), 7, 0)
    });
    state
}

/// The pool's two workers, lane A and lane B.
fn workers_of(supervisor: &Supervisor) -> (PoolWorker, PoolWorker) {
    let id = PoolId::new("a").unwrap();
    let shared = supervisor.shared.clone();
    let a = PoolWorker::new(shared.clone(), id.clone(), Lane::A);
    (a, PoolWorker::new(shared, id, Lane::B))
}

/// The paths an `EngineSpawned` report names.
fn spawned_paths(observation: &Observation) -> (String, String) {
    match observation {
        Observation::EngineSpawned {
            pid_path, log_path, ..
        } => (pid_path.clone(), log_path.clone()),
        other => panic!("expected EngineSpawned, got {other:?}"),
    }
}

/// Would catch: a lane B engine written to the pool's own pid file or log (the two engines of
/// a surge would overwrite each other's), a stop of one engine that ends the other, or a surge
/// spawn whose health wait probes the pool's engine instead of its own port.
#[tokio::test]
async fn two_engines_of_one_pool_run_in_their_own_lanes_and_each_stops_by_its_own_effect() {
    let dir = tempfile::tempdir().unwrap();
    let old = serving_engine("a", free_port(), dir.path());
    let new = serving_engine("a", free_port(), dir.path());
    let state = with_second(preloaded(&old), &new, None);
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), state, None);
    let (mut lane_a, mut lane_b) = workers_of(&supervisor);
    let dirs = supervisor.shared.settings.dirs.clone();
    let (old_pid, _old_reaper) = spawn(&mut lane_a, &mut reports, old).await;
    let spawned = Effect::Spawn {
        pool_id: lane_b.pool_id.clone(),
        engine: new,
        attempt: 0,
        token: 7,
        lane: Lane::B,
        surge: true,
    };
    lane_b.run_effect(1, spawned).await;
    let report = next_report(&mut reports).await;
    let new_pid = match &report {
        Observation::EngineSpawned { pid, .. } => *pid,
        other => panic!("expected EngineSpawned, got {other:?}"),
    };
    let exited = lane_b.engine.as_ref().unwrap().exited.clone();
    let _new_reaper = Reaper(new_pid, exited);
    let (pid_path, log_path) = spawned_paths(&report);
    assert_eq!(
        pid_path,
        dirs.pid_path_in("a", Lane::B).display().to_string()
    );
    assert!(pid_path.ends_with("pids/a@b.pid"), "{pid_path}");
    assert!(log_path.ends_with("logs/a@b.log"), "{log_path}");
    assert!(std::path::Path::new(&log_path).exists());
    assert_eq!(files::read_pid_file(&dirs.pid_path("a")).unwrap(), old_pid);
    assert_eq!(
        files::read_pid_file(&dirs.pid_path_in("a", Lane::B)).unwrap(),
        new_pid
    );
    // The new engine's health wait probes its own port (the second's), not the pool's.
    let wait = Effect::StartHealthWait {
        pool_id: lane_b.pool_id.clone(),
        pid: new_pid,
        token: 7,
        deadline_at_ms: u64::MAX,
        lane: Lane::B,
    };
    lane_b.run_effect(3, wait).await;
    match next_report(&mut reports).await {
        Observation::HealthPassed { pid, .. } => assert_eq!(pid, new_pid),
        other => panic!("expected HealthPassed of the new engine, got {other:?}"),
    }
    stop(&mut lane_b, new_pid, 10_000).await;
    match next_report(&mut reports).await {
        Observation::EngineStopped { pid, .. } => assert_eq!(pid, new_pid),
        other => panic!("expected EngineStopped of the new engine, got {other:?}"),
    }
    assert!(!process::is_gone(old_pid), "the old engine was stopped too");
    stop(&mut lane_a, old_pid, 10_000).await;
    match next_report(&mut reports).await {
        Observation::EngineStopped { pid, .. } => assert_eq!(pid, old_pid),
        other => panic!("expected EngineStopped of the old engine, got {other:?}"),
    }
}

/// Would catch: a pool's removal that reaches lane A's worker only (lane B's would live on,
/// and its pid file stay), or a `DELETE` answered before every lane's files are gone.
#[tokio::test]
async fn the_removal_of_a_pool_ends_both_lanes_workers_and_takes_both_pid_files() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = supervisor(dir.path());
    let a = PoolId::new("a").unwrap();
    for lane in [Lane::A, Lane::B] {
        let (done, ran) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move || {
            let _ = done.send(());
        });
        let effect = Effect::RemovePidFile {
            pool_id: a.clone(),
            lane,
        };
        supervisor.dispatch_then(1, effect, vec![done]);
        ran.await.unwrap();
    }
    assert_eq!(supervisor.workers(), 2);
    let dirs = supervisor.shared.settings.dirs.clone();
    let files = [
        dirs.pid_path_in("a", Lane::A),
        dirs.pid_path_in("a", Lane::B),
    ];
    for file in &files {
        std::fs::write(file, "1\n").unwrap();
    }
    let (done, ran) = tokio::sync::oneshot::channel();
    let done: Done = Box::new(move || {
        let _ = done.send(());
    });
    supervisor.dispatch_then(2, Effect::RemovePoolFiles { pool_id: a }, vec![done]);
    ran.await.unwrap();
    for file in &files {
        assert!(!file.exists(), "{} stays", file.display());
    }
    workers_become(&supervisor, 0).await;
}

/// Would catch: a `@b` pid file taken for a pool id of its own (never known, so its engine,
/// the pool's second engine, stopped at start-up), or an unknown lane B engine left running.
#[tokio::test]
async fn start_up_knows_a_lane_b_pid_file_by_its_pool_and_stops_an_unknown_one() {
    use super::super::reconcile::{pool_and_lane, scan, Found};
    assert_eq!(pool_and_lane("a.pid"), Some(("a".to_string(), Lane::A)));
    assert_eq!(pool_and_lane("a@b.pid"), Some(("a".to_string(), Lane::B)));
    for name in ["a@c.pid", "@b.pid", "a@b@b.pid", "a.log", ".pid"] {
        assert_eq!(pool_and_lane(name), None, "{name}");
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().display().to_string();
    let old = sh_engine("a", free_port(), "exec sleep 120", &tag);
    let new = sh_engine("a", free_port(), "exec sleep 121", &tag);
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), preloaded(&old), None);
    let (_, mut lane_b) = workers_of(&supervisor);
    let (pid, _reaper) = spawn_as(&mut lane_b, &mut reports, new.clone(), true).await;
    let dirs = supervisor.shared.settings.dirs.clone();
    // Known: the pool's second engine.
    let known = with_second(preloaded(&old), &new, Some(pid));
    assert_eq!(scan(&known, &dirs), Vec::new());
    // Unknown to the registry: stopped, as pool `a`'s.
    let found = scan(&preloaded(&old), &dirs);
    let pid_file = dirs.pid_path_in("a", Lane::B);
    assert_eq!(
        found,
        vec![Found::Stop {
            pool_id: "a".to_string(),
            pid,
            pid_file,
        }]
    );
    stop(&mut lane_b, pid, 0).await;
}

/// Would catch: a stop of the pool's second engine (adopted after a restart: not spawned in
/// this life) proven against the pool's engine's record instead of the second's (its start
/// time would not match: the engine forgotten and left running), or refused as "another
/// engine the registry records".
#[tokio::test]
async fn a_second_engine_not_spawned_in_this_life_is_proven_by_its_own_record_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().display().to_string();
    let old = sh_engine("a", free_port(), "exec sleep 120", &tag);
    let new = sh_engine("a", free_port(), "exec sleep 122", &tag);
    let mut leader = super::session_leader("exec sleep 122", &tag);
    let pid = leader.id();
    let state = with_second(preloaded(&old), &new, Some(pid));
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), state, None);
    let (_, mut lane_b) = workers_of(&supervisor);
    stop(&mut lane_b, pid, 10_000).await;
    match next_report(&mut reports).await {
        Observation::EngineStopped { pid: stopped, .. } => assert_eq!(stopped, pid),
        other => panic!("expected EngineStopped, got {other:?}"),
    }
    let status = leader.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(15),
        "the second engine was not signalled"
    );
}

/// Would catch: a spawn's leftover scan that kills the pool's own second engine (the old
/// engine finishing its leases runs the same command line a restart of the pool would): only
/// engines the registry records for no pool are leftovers.
#[tokio::test]
async fn the_leftover_scan_spares_the_pools_second_engine() {
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().display().to_string();
    let script = "sleep 123";
    let engine = sh_engine("a", free_port(), script, &tag);
    let mut leader = super::session_leader(script, &tag);
    let second = leader.id();
    super::runs_command_line(second, script, &tag);
    let state = with_second(preloaded(&engine), &engine, Some(second));
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), state, None);
    let (mut lane_a, _) = workers_of(&supervisor);
    let (pid, _reaper) = spawn(&mut lane_a, &mut reports, engine).await;
    assert!(
        leader.try_wait().unwrap().is_none(),
        "the second engine was killed"
    );
    stop(&mut lane_a, pid, 0).await;
    let _ = process::signal_group(second, nix::sys::signal::Signal::SIGKILL);
    let _ = leader.wait();
}
