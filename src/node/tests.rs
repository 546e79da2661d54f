//! Unit tests of the node actor: its batches (one durable append, an answer per caller, a
//! failed append), the degraded hold and flush, and its waiters, on a real journal in a
//! temporary directory, real engine processes (`/bin/sh` scripts, a `/health` served by the
//! test) and a manual decision clock (no timer of the decisions fires unless a test moves it).

use super::*;

use pool_core::{Command, ErrorCode, Event, Input, Observation, PoolId, Rejection};
use tokio::sync::oneshot;

use crate::clock::{Clock as _, ManualClock};
use crate::port::{NodeInput, Submission, Waiter};
use crate::supervisor::tests::{free_port, serving_engine, sh_engine, PATIENCE};

/// The decision clock's reading at the start of each test.
const T0: u64 = 1_700_000_000_000;

fn settings(dir: &std::path::Path, clock: &ManualClock) -> NodeSettings {
    let mut policy = Policy::default();
    policy.health.preload_interval_ms = 50;
    NodeSettings {
        journal_dir: dir.join("journal"),
        runtime_dir: dir.join("run"),
        policy,
        snapshot_every: 1_000,
        journal: crate::config::JournalSettings::default(),
        clock: Arc::new(clock.clone()),
        gpu: GpuSummary {
            available: false,
            count: 0,
            reason: None,
            required: false,
        },
        version: "test".into(),
        run_as: None,
        placement_check: None,
        release_check: None,
        allow_gpu_sharing: false,
        admission: Arc::new(crate::supervisor::admission::Admission::permissive()),
        cgroups: None,
        logs: Default::default(),
        logs_gid: None,
        retention_hold: None,
        surge_ports: None,
    }
}

/// An actor over a new journal in `dir`, as `Node::start` builds it (its supervisor reporting
/// into its inbox), not yet running; with the two ends of its inbox.
async fn actor_in(
    dir: &std::path::Path,
    clock: &ManualClock,
) -> (Actor, mpsc::Sender<NodeInput>, mpsc::Receiver<NodeInput>) {
    let settings = settings(dir, clock);
    let dirs = RuntimeDirs::create(&settings.runtime_dir).unwrap();
    let (journal, _, replayed, max_batch_records) = open_and_replay(&settings).await.unwrap();
    let state = Arc::new(replayed.state);
    let registry = Registry::new(Published::durable(state.clone(), settings.gpu.clone()));
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let supervisor = supervisor_of(&settings, dirs, Reporter::new(tx.clone()), &registry);
    let actor = Actor {
        state,
        journal,
        registry,
        supervisor,
        policy: settings.policy.clone(),
        clock: settings.clock.clone(),
        gpu: settings.gpu.clone(),
        waiters: HashMap::new(),
        snapshot_every: settings.snapshot_every,
        max_batch_records,
        journal_failure: None,
        degraded: None,
        metrics: Arc::new(crate::metrics::NodeMetrics::new()),
    };
    (actor, tx, rx)
}

type Answer = oneshot::Receiver<Result<Committed, NodeError>>;

/// Queues `input` in the inbox (without waiting) and returns where its answer comes.
fn submit(tx: &mpsc::Sender<NodeInput>, input: impl Into<Input>) -> Answer {
    let (reply, answer) = oneshot::channel();
    let submission = Submission {
        input: input.into(),
        cause: None,
        reply: Some(reply),
        waiter: None,
        observed_ms: None,
    };
    assert!(tx.try_send(NodeInput::Submit(submission)).is_ok());
    answer
}

/// `future`'s output, failing the test after [`PATIENCE`].
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("no answer in time")
}

/// The answer to a submission (a dropped reply fails the test).
async fn answer_of(answer: Answer) -> Result<Committed, NodeError> {
    bounded(answer).await.expect("the actor dropped the reply")
}

fn started(version: &str) -> Observation {
    Observation::DaemonStarted {
        version: version.into(),
        pid: 1,
    }
}

fn pool(id: &str) -> PoolId {
    PoolId::new(id).unwrap()
}

/// How many durable appends the actor made (its `journal_append_duration_seconds` count).
fn appends(metrics: &crate::metrics::NodeMetrics) -> u64 {
    let text = metrics.render(&pool_core::State::default(), None);
    text.lines()
        .find_map(|line| line.strip_prefix("journal_append_duration_seconds_count "))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// The versions of the `DaemonStarted` events in `journal`, in order.
fn started_versions(journal: &PoolJournal) -> Vec<String> {
    journal
        .read_from(1)
        .map(|envelope| envelope.unwrap())
        .filter_map(|envelope| match envelope.event {
            Event::DaemonStarted { version, .. } => Some(version),
            _ => None,
        })
        .collect()
}

/// Would catch: an append per input instead of one for the batch (group commit lost),
/// answers mixed up between callers (one handed another's events, or the whole batch's), a
/// rejection that fails or holds up the rest of its batch.
#[tokio::test]
async fn a_batch_is_committed_in_one_append_and_each_caller_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (actor, tx, rx) = actor_in(dir.path(), &clock).await;
    let (registry, metrics) = (actor.registry.clone(), actor.metrics.clone());
    let answers: Vec<Answer> = ["v1", "v2", "v3"]
        .into_iter()
        .map(|version| submit(&tx, started(version)))
        .collect();
    let refused = submit(&tx, Command::Remove { pool_id: pool("x") });
    // All four are queued before the actor runs: its first batch takes them together.
    tokio::spawn(actor.run(rx));
    for (i, answer) in answers.into_iter().enumerate() {
        let committed = answer_of(answer).await.unwrap();
        let [envelope] = &committed.envelopes[..] else {
            panic!("caller {i} got {} envelopes", committed.envelopes.len());
        };
        assert_eq!(envelope.seq, i as u64 + 1);
        let own = format!("v{}", i + 1);
        assert!(matches!(&envelope.event, Event::DaemonStarted { version, .. } if *version == own));
        assert_eq!(
            committed.state.last_seq(),
            3,
            "the state after the whole batch"
        );
    }
    let refusal = answer_of(refused).await.unwrap_err();
    assert!(matches!(
        refusal,
        NodeError::Rejected(Rejection::PoolNotFound { .. })
    ));
    assert_eq!(appends(&metrics), 1, "one durable append for the batch");
    assert_eq!(registry.load().state.last_seq(), 3);
}

/// Would catch: a batch's state made current or published before its append is durable, a
/// caller left without an answer (or answered `Ok`) when the append failed, and a node that
/// goes on trying changes on a journal that failed. The append fails for real: the journal
/// was closed and refuses it.
#[tokio::test]
async fn a_failed_append_answers_every_caller_of_the_batch_and_publishes_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (actor, tx, rx) = actor_in(dir.path(), &clock).await;
    let (registry, journal) = (actor.registry.clone(), actor.journal.clone());
    let closing = journal.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap()
        .unwrap();
    let engine = sh_engine("a", free_port(), "exec sleep 120", "never-started");
    let preload = Command::Preload {
        pool_id: pool("a"),
        engine,
        placement: Default::default(),
    };
    let answers = [submit(&tx, started("v1")), submit(&tx, preload)];
    tokio::spawn(actor.run(rx));
    for answer in answers {
        let error = answer_of(answer).await.unwrap_err();
        assert!(matches!(error, NodeError::Journal(_)), "{error:?}");
    }
    let published = registry.load();
    assert_eq!(published.state.last_seq(), 0);
    assert!(
        published.state.pool("a").is_none(),
        "a pool of the failed batch"
    );
    assert!(published.journal.failed.is_some() && !published.journal.writable);
    let later = answer_of(submit(&tx, started("v2"))).await.unwrap_err();
    assert!(matches!(later, NodeError::Journal(_)), "{later:?}");
    assert_eq!(journal.last_seq(), 0);
}

/// Would catch: a command decided (or recorded) while the journal cannot take writes, an
/// observation dropped instead of kept, and kept observations recorded after inputs that came
/// later. The node starts degraded, as `Node::start` on a journal found unavailable; the disk
/// takes writes again by its first batch. A unit test cannot make a real disk refuse writes
/// (tests/disk.rs does, on a mount): the hold and the flush are what is tested here.
#[tokio::test]
async fn while_degraded_commands_are_refused_and_kept_observations_are_recorded_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (mut actor, tx, rx) = actor_in(dir.path(), &clock).await;
    let unavailable = "journal cannot take writes: No space left on device".to_string();
    actor.degraded = Some(degraded::Degraded::new(unavailable, "enospc", T0));
    let (registry, journal) = (actor.registry.clone(), actor.journal.clone());
    let kept = submit(&tx, started("kept"));
    let refused = submit(&tx, Command::Remove { pool_id: pool("x") });
    // Start-up's resume: the inputs before it meet the degraded node (as start-up's own do).
    assert!(tx.try_send(NodeInput::Resume { effects: vec![] }).is_ok());
    let later = submit(&tx, started("later"));
    tokio::spawn(actor.run(rx));
    let kept = answer_of(kept).await.unwrap_err();
    assert!(matches!(kept, NodeError::JournalUnavailable(_)), "{kept:?}");
    // Refused before it is decided: it would be POOL_NOT_FOUND otherwise.
    let refused = answer_of(refused).await.unwrap_err();
    assert!(
        matches!(refused, NodeError::JournalUnavailable(_)),
        "{refused:?}"
    );
    let later = answer_of(later).await.unwrap();
    assert_eq!(later.envelopes.len(), 1);
    assert_eq!(started_versions(&journal), ["kept", "later"]);
    assert!(registry.load().journal.writable);
}

/// Would catch: an unbounded list of waiters on one pool (requests piling up hold memory and
/// answers), a waiter over the cap dropped without an answer, or a cap shared by all pools.
#[tokio::test]
async fn a_pool_takes_at_most_waiters_per_pool_max_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let (mut actor, _tx, _rx) = actor_in(dir.path(), &ManualClock::new(T0)).await;
    let removal = || {
        let (reply, answer) = oneshot::channel();
        (Waiter::Removed { reply }, answer)
    };
    let mut waiting = Vec::new();
    for _ in 0..WAITERS_PER_POOL_MAX {
        let (waiter, answer) = removal();
        actor.register_waiter(&pool("a"), waiter, false);
        waiting.push(answer);
    }
    let (waiter, mut over) = removal();
    actor.register_waiter(&pool("a"), waiter, false);
    match over.try_recv() {
        Ok(Err(NodeError::Timeout(message))) => assert!(message.contains("more than 64")),
        other => panic!("the waiter over the cap: {other:?}"),
    }
    for answer in &mut waiting {
        assert!(
            answer.try_recv().is_err(),
            "a waiter under the cap was answered"
        );
    }
    let (waiter, mut other_pool) = removal();
    actor.register_waiter(&pool("b"), waiter, false);
    assert!(other_pool.try_recv().is_err(), "the cap is per pool");
    assert_eq!(actor.waiters[&pool("a")].len(), WAITERS_PER_POOL_MAX);
}

/// A node started in `dir` on a manual clock, with the reaper of its engines.
async fn node_in(dir: &std::path::Path) -> (Node, ManualClock, Reaper) {
    let clock = ManualClock::new(T0);
    let (node, _) = bounded(Node::start(settings(dir, &clock))).await.unwrap();
    let reaper = Reaper(node.handle().registry().clone());
    (node, clock, reaper)
}

/// Kills the engines its registry records when dropped (engines outlive the node: a test,
/// even a failing one, must leave none), each only while its pid is still the process
/// recorded (same start time).
struct Reaper(Registry);

impl Drop for Reaper {
    fn drop(&mut self) {
        use crate::supervisor::process;
        let published = self.0.load();
        for engine in published
            .state
            .pools
            .values()
            .filter_map(|p| p.process.as_ref())
        {
            if process::start_time(engine.pid) == Some(engine.start_time) {
                let _ = process::signal_group(engine.pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Would catch: a waiting preload not answered by its pool's `PoolReady` (the caller would
/// wait out its limit), or answered before the pool is ready.
#[tokio::test]
async fn a_waiting_preload_is_answered_ready_once_its_engine_answers_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _clock, _reaper) = node_in(dir.path()).await;
    let engine = serving_engine("a", free_port(), dir.path());
    let outcome = bounded(node.handle().preload(pool("a"), engine, true)).await;
    let outcome = outcome.unwrap();
    assert!(
        outcome.status.ready && outcome.status.pid.is_some(),
        "{outcome:?}"
    );
    let published = node.handle().registry().status("a").unwrap();
    assert!(published.ready);
    node.shutdown("test").await;
}

/// Would catch: a waiting preload left waiting when its start fails, or answered with another
/// code than its failure's (`ENGINE_EXITED`, with the exit in the reason).
#[tokio::test]
async fn a_waiting_preload_is_answered_with_the_code_of_its_failed_start() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _clock, _reaper) = node_in(dir.path()).await;
    let script = "echo 'cannot load the model' >&2; exit 3";
    let engine = sh_engine("a", free_port(), script, &dir.path().display().to_string());
    let outcome = bounded(node.handle().preload(pool("a"), engine, true)).await;
    match outcome {
        Err(NodeError::Failed {
            code: ErrorCode::EngineExited,
            reason,
        }) => assert!(reason.contains("exit code 3"), "{reason}"),
        other => panic!("the failed start answered {other:?}"),
    }
    node.shutdown("test").await;
}

/// Would catch: a removal answered before its engine is stopped and the pool's files are
/// gone (a new preload of the id could meet them), or never answered.
#[tokio::test]
async fn a_removal_is_answered_once_the_pool_and_its_files_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _clock, _reaper) = node_in(dir.path()).await;
    let engine = serving_engine("a", free_port(), dir.path());
    let ready = bounded(node.handle().preload(pool("a"), engine, true)).await;
    let pid = ready.as_ref().ok().and_then(|outcome| outcome.status.pid);
    assert!(pid.is_some(), "the preload: {ready:?}");
    // Written once its health passed; only the removal of the pool's files takes it.
    let handoff = node.handle().dirs().handoff_path("a", "r0").unwrap();
    assert!(handoff.exists(), "a ready pool's handoff file");
    bounded(node.handle().remove(pool("a"))).await.unwrap();
    assert!(node.handle().registry().load().state.pool("a").is_none());
    assert!(!handoff.exists(), "its handoff file");
    assert!(!node.handle().dirs().pid_path("a").exists(), "its pid file");
    assert!(
        crate::supervisor::process::is_gone(pid.unwrap()),
        "its engine"
    );
    node.shutdown("test").await;
}

/// Would catch: waiters dropped without an answer when the node stops (the handle maps a
/// dropped reply to `ShuttingDown` too, so this reads the waiter's own reply).
#[tokio::test]
async fn waiters_are_answered_shutting_down_when_the_node_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (node, clock, _reaper) = node_in(dir.path()).await;
    let tag = dir.path().display().to_string();
    // Nothing answers its health: it stays starting.
    let engine = sh_engine("a", free_port(), "exec sleep 120", &tag);
    let placement = placement::inputs(&engine, false).await;
    let (reply, outcome) = oneshot::channel();
    let waiter = Waiter::Preload {
        reply,
        since_ms: clock.now_ms(),
        failed: None,
    };
    let preload = Command::Preload {
        pool_id: pool("a"),
        engine,
        placement,
    };
    let inbox = node.handle().inbox();
    bounded(inbox.send(preload.into(), Some(waiter)))
        .await
        .unwrap();
    let registry = node.handle().registry().clone();
    let mut changes = registry.subscribe();
    let spawned = changes.wait_for(|_| registry.status("a").is_some_and(|s| s.pid.is_some()));
    bounded(spawned).await.unwrap();
    // Its engine is killed by the reaper only after: its exit, seen by a running node, would
    // fail the preload first.
    node.shutdown("test").await;
    match bounded(outcome).await {
        Ok(Err(NodeError::ShuttingDown)) => {}
        Ok(other) => panic!("the waiter was answered {other:?}"),
        Err(_) => panic!("the waiter was dropped without an answer"),
    }
}
