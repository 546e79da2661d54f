//! Stops of a pool's engine: the exit seen during a stop is reported once, by the stop; an
//! engine deaf to SIGTERM is killed after its grace.

use super::*;

/// Would catch: the exit watcher reporting the end of an engine that a stop under way reports
/// itself (`EngineExited` besides `EngineStopped`: the core would take a stop it asked for for
/// a crash), or a stop that does not wait for the exit it caused.
#[tokio::test]
async fn an_exit_during_a_stop_is_reported_once_by_the_stop_as_engine_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().display().to_string();
    let engine = sh_engine("a", free_port(), "exec sleep 120", &tag);
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), preloaded(&engine), None);
    let mut worker = worker_a(&supervisor);
    let (pid, _reaper) = spawn(&mut worker, &mut reports, engine).await;
    let mut exited = worker.engine.as_ref().unwrap().exited.clone();
    // SIGTERM ends it at once: its exit watcher sees the exit while the stop waits for it.
    stop(&mut worker, pid, 10_000).await;
    match next_report(&mut reports).await {
        Observation::EngineStopped {
            pid: stopped,
            graceful,
            ..
        } => assert!(
            stopped == pid && graceful,
            "pid {stopped}, graceful {graceful}"
        ),
        other => panic!("expected EngineStopped, got {other:?}"),
    }
    exit_watcher_ended(&mut exited).await;
    assert_eq!(exited.borrow().and_then(|info| info.signal), Some(15));
    no_more_reports(&mut reports);
}

/// Would catch: a stop that never escalates to SIGKILL (the engine lives on and its exit is
/// never seen), one that calls such a stop graceful, or an exit reported twice. The grace
/// period passes on paused time; the engine's death is then awaited in real time.
#[tokio::test(start_paused = true)]
async fn an_engine_deaf_to_sigterm_is_killed_after_its_grace_and_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().display().to_string();
    let script = "trap '' TERM; echo deaf; exec sleep 120";
    let engine = sh_engine("a", free_port(), script, &tag);
    let (supervisor, mut reports) = supervisor_reporting(dir.path(), preloaded(&engine), None);
    let mut worker = worker_a(&supervisor);
    let (pid, _reaper) = spawn(&mut worker, &mut reports, engine).await;
    let mut exited = worker.engine.as_ref().unwrap().exited.clone();
    // Its trap must be set before the stop: a SIGTERM before it would end the shell.
    log_shows(&worker.dirs().log_path("a"), "deaf");
    let started = tokio::time::Instant::now();
    stop(&mut worker, pid, 60_000).await;
    assert!(
        started.elapsed() >= Duration::from_millis(60_000),
        "SIGKILL before the grace"
    );
    match next_report(&mut reports).await {
        Observation::EngineStopped {
            pid: stopped,
            graceful,
            ..
        } => assert!(
            stopped == pid && !graceful,
            "pid {stopped}, graceful {graceful}"
        ),
        other => panic!("expected EngineStopped, got {other:?}"),
    }
    tokio::time::resume();
    exit_watcher_ended(&mut exited).await;
    assert_eq!(exited.borrow().and_then(|info| info.signal), Some(9));
    no_more_reports(&mut reports);
}
