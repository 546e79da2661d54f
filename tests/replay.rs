//! Recorded journals: `replay-tests/journals/*.ndjson` and the registries they replay to.
//!
//! Two tests:
//!
//! - `scripted_journals_match_their_checked_in_exports`: every scenario below drives the pure
//!   core through `pool_managerd::script::Scripted` (so its journal is valid by construction),
//!   appends the envelopes to a real journal in a temp dir and exports it; the bytes must equal
//!   `replay-tests/journals/<name>.ndjson`. After a deliberate change of the core or of a
//!   scenario, regenerate them with
//!   `UPDATE_REPLAY_JOURNALS=1 cargo test --test replay`, read the diff, then update the
//!   snapshots (below).
//! - `every_recorded_journal_replays_to_its_snapshot`: every `replay-tests/journals/*.ndjson`
//!   (scripted, or exported from a real daemon with `pool-managerd journal export`) is imported
//!   into a fresh journal and replayed; the registry must equal the insta snapshot
//!   `replay-tests/snapshots/<name>.snap`, and for a scripted journal, the script's own final
//!   state. Accept new or changed snapshots with `INSTA_UPDATE=always cargo test --test replay`
//!   (or `cargo insta review`), read them, and check them in. Under `CI=true` insta writes
//!   nothing and a missing or different snapshot fails.
//! - `every_recorded_journal_explains_every_pool_at_every_seq`: the explanation (its text
//!   form, `pool-managerd explain`'s) of every pool of every journal at every seq, read from
//!   the imported journal as the daemon and the command line read it, must equal the core's
//!   explanation of the whole history up to that seq, and the insta snapshot
//!   `replay-tests/snapshots/<name>.explain.snap` (accepted as above).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use pool_core::{
    Event, ExitReason, GpuInfo, Observation, Phase, PoolId, PoolStatus, Rejection,
    ReloadStrategyAsked, Timer,
};
use pool_journal::{Draft, JournalConfig};
use pool_managerd::projection::{explain_pool, replay, ReplayLimit, Replayed};
use pool_managerd::schema::{PoolEnvelope, PoolJournal};
use pool_managerd::script::{cpu_engine, sample_engine, ScriptError, Scripted};
use pool_managerd::table::format_ts_ms;
use serde::Serialize;

/// Where the recorded journals live.
const JOURNALS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/replay-tests/journals");
/// Set to `1` to rewrite the scripted journals instead of comparing them.
const UPDATE_ENV: &str = "UPDATE_REPLAY_JOURNALS";

// ---- the scenarios --------------------------------------------------------------------------

/// A scenario: its journal's file stem and the script that records it.
type Scenario = (&'static str, fn() -> Result<Scripted, ScriptError>);

/// Every scripted journal. A new scenario: add it here, run with `UPDATE_REPLAY_JOURNALS=1`
/// and `INSTA_UPDATE=always`, read the journal and the snapshot, check both in.
const SCENARIOS: &[Scenario] = &[
    ("preload-ok", preload_ok),
    ("preload-failed", preload_failed),
    ("crash-loop", crash_loop),
    ("drain-with-leases", drain_with_leases),
    ("reloads", reloads),
    ("surge-ok", surge_ok),
    ("surge-failed", surge_failed),
    ("storm-and-trial", storm_and_trial),
    ("quarantine-held", quarantine_held),
    ("hang-adoption-loss", hang_adoption_loss),
    ("placement-faults", placement_faults),
];

/// 2026-03-02T09:00:00Z and later: fixed clocks, so that the journals never change by
/// themselves.
const MONDAY_9AM_MS: u64 = 1_772_442_000_000;
const MONDAY_2PM_MS: u64 = 1_772_460_000_000;
const TUESDAY_2AM_MS: u64 = 1_772_503_200_000;
const WEDNESDAY_4PM_MS: u64 = 1_772_641_800_000;
const THURSDAY_10AM_MS: u64 = 1_772_791_200_000;

const GIB: u64 = 1024 * 1024 * 1024;

fn l4_gpu() -> GpuInfo {
    GpuInfo {
        index: 0,
        uuid: "GPU-5f2a8c1e-3b7d-4e9a-a1c4-7d2e9b0f6a13".into(),
        name: "NVIDIA L4".into(),
        compute_capability: "8.9".into(),
        vram_total_bytes: 24 * GIB,
        vram_free_bytes: 23 * GIB,
    }
}

/// The daemon starts on a node with one L4; a 7B chat model is preloaded with 4 slots and
/// becomes ready; two leases are taken (overlapping) and both returned. Ends ready, idle.
fn preload_ok() -> Result<Scripted, ScriptError> {
    let pool = "chat-7b";
    let mut s = Scripted::new(MONDAY_9AM_MS, 7);
    s.submit(Observation::DaemonStarted {
        version: "0.1.0".into(),
        pid: 812,
    })?;
    s.advance(40);
    s.submit(Observation::GpuInventory {
        gpus: vec![l4_gpu()],
    })?;
    s.advance(60_000);
    s.preload(
        pool,
        sample_engine(
            pool,
            8081,
            "/models/qwen2.5-7b-instruct-q4_k_m.gguf",
            Some(4),
        ),
    )?;
    s.advance(35);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 8_400, None)?;
    s.advance(2_000);
    let pid = s.state().pool(pool).and_then(|p| p.pid()).unwrap_or(0);
    s.submit(Observation::VramObserved {
        pool_id: PoolId::new(pool).map_err(|e| ScriptError::InvalidId(e.to_string()))?,
        pid,
        used_bytes: 5_637_144_576,
    })?;
    s.advance(1_500);
    s.acquire_lease(pool, "lease-7f3a")?;
    s.advance(2_200);
    s.acquire_lease(pool, "lease-91c4")?;
    s.advance(31_000);
    s.release_lease(pool, "lease-7f3a")?;
    s.advance(4_800);
    s.release_lease(pool, "lease-91c4")?;
    Ok(s)
}

/// An embedding model on a stalled network mount: the first start never answers its health
/// check (the 120 s preload timeout kills it), the restart exits while loading (read error),
/// and the operator stops the pool during the second backoff. Ends stopped, with the load
/// error as `last_error`.
fn preload_failed() -> Result<Scripted, ScriptError> {
    let pool = "embed-m3";
    let mut s = Scripted::new(MONDAY_2PM_MS, 11);
    s.preload(
        pool,
        cpu_engine(pool, 8090, "/mnt/models/bge-m3-f16.gguf", Some(8)),
    )?;
    s.advance(40);
    s.spawn_engine(pool)?;
    s.time_out_health(pool)?;
    // The PreloadFailed asked for a SIGKILL of the hung engine: done, nothing more to record.
    s.finish_stop(pool, false)?;
    s.fire_timer(pool, Timer::Restart)?;
    s.advance(30);
    s.spawn_engine(pool)?;
    s.advance(14_250);
    s.exit_engine(
        pool,
        Some(1),
        None,
        ExitReason::Crash,
        "llama_model_load: error loading model: read error: Input/output error\n\
         llama_load_model_from_file: failed to load model",
    )?;
    s.advance(900);
    s.stop(pool)?;
    Ok(s)
}

/// A 13B chat model in a crash loop. The first spawn fails (the binary was being replaced by
/// a deploy: ETXTBSY), so seq 3 (the README's `replay --until-seq 3`) is the first backoff.
/// The restart comes up ready, then the engine aborts under load four times: the backoff
/// delays grow (~1 s, 2 s, 4 s, 8 s), and the fifth consecutive failure opens the breaker.
/// An operator resets it; the restart is healthy. Ends ready, breaker closed.
fn crash_loop() -> Result<Scripted, ScriptError> {
    let pool = "chat-13b";
    let mut s = Scripted::new(TUESDAY_2AM_MS, 42);
    s.preload(
        pool,
        cpu_engine(pool, 8082, "/models/llama-2-13b-chat.Q5_K_M.gguf", Some(2)),
    )?;
    s.advance(25);
    s.fail_spawn(
        pool,
        "exec /opt/llama.cpp/bin/llama-server: Text file busy (os error 26)",
    )?;
    s.fire_timer(pool, Timer::Restart)?;
    s.advance(30);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 11_200, None)?;
    let uptimes_ms = [47_000, 21_500, 12_800, 6_300];
    for (i, uptime_ms) in uptimes_ms.into_iter().enumerate() {
        s.advance(uptime_ms);
        s.exit_engine(
            pool,
            None,
            Some(6),
            ExitReason::Signal,
            "ggml/src/ggml-cuda/fattn.cu:241: GGML_ASSERT(precision == GGML_PREC_DEFAULT) failed",
        )?;
        if i + 1 < uptimes_ms.len() {
            s.fire_timer(pool, Timer::Restart)?;
            s.advance(30);
            s.spawn_engine(pool)?;
            s.pass_health(pool, 9_800 + 300 * i as u64, None)?;
        }
    }
    // The breaker is open (300 s); an operator rolls back the flash-attention flag out of band
    // and resets it after a few minutes.
    s.advance(184_000);
    s.reset_breaker(pool, "ops:maria")?;
    s.advance(30);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 10_400, None)?;
    Ok(s)
}

/// Two pools drained while leases are held. `chat-a` (4 slots, 3 leases): new leases are
/// refused, the three are returned before the deadline, the engine stops on SIGTERM: drain
/// graceful. `chat-b` (2 slots, 1 lease held through the 30 s deadline): stopped at the
/// deadline, ignores SIGTERM and is killed after the grace period: drain force-stopped with
/// one lease at stop. Ends with both stopped.
fn drain_with_leases() -> Result<Scripted, ScriptError> {
    let mut s = Scripted::new(WEDNESDAY_4PM_MS, 5);
    s.preload(
        "chat-a",
        cpu_engine(
            "chat-a",
            8083,
            "/models/mistral-7b-instruct-v0.3.Q4_K_M.gguf",
            Some(4),
        ),
    )?;
    s.advance(10);
    s.preload(
        "chat-b",
        cpu_engine(
            "chat-b",
            8084,
            "/models/phi-3-mini-4k-instruct-q4.gguf",
            Some(2),
        ),
    )?;
    s.advance(30);
    s.spawn_engine("chat-a")?;
    s.advance(5);
    s.spawn_engine("chat-b")?;
    s.pass_health("chat-b", 4_100, None)?;
    s.pass_health("chat-a", 3_600, None)?;
    s.advance(12_000);
    s.acquire_lease("chat-a", "a-1")?;
    s.advance(700);
    s.acquire_lease("chat-b", "b-1")?;
    s.advance(1_100);
    s.acquire_lease("chat-a", "a-2")?;
    s.advance(400);
    s.acquire_lease("chat-a", "a-3")?;
    s.advance(3_000);
    s.drain("chat-a", 60_000)?;
    s.advance(500);
    match s.acquire_lease("chat-a", "a-4") {
        Err(ScriptError::Rejected(Rejection::PoolDraining { .. })) => {}
        other => panic!("a lease on a draining pool must be refused, got {other:?}"),
    }
    s.advance(6_000);
    s.release_lease("chat-a", "a-2")?;
    s.advance(9_000);
    s.release_lease("chat-a", "a-1")?;
    s.advance(2_500);
    s.drain("chat-b", 30_000)?;
    s.advance(4_000);
    s.release_lease("chat-a", "a-3")?;
    s.finish_stop("chat-a", true)?;
    s.fire_timer("chat-b", Timer::DrainDeadline)?;
    s.finish_stop("chat-b", false)?;
    Ok(s)
}

/// A ready pool holding a lease reloads without a gap (`auto`, a surge port free): the new
/// engine starts beside the old one on port 9301, answers healthy, and new leases switch to
/// it; the old engine finishes the lease it held, then stops, drained. Ends ready on the new
/// model, one engine.
fn surge_ok() -> Result<Scripted, ScriptError> {
    let pool = "chat-s";
    let mut s = surge_pool(pool)?;
    s.reload_with(
        pool,
        "/models/qwen2.5-7b-q5.gguf",
        ReloadStrategyAsked::Auto,
        Some(9301),
    )?;
    s.advance(900);
    s.stage_model(pool, "/models/qwen2.5-7b-q5.gguf")?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 7_100, None)?;
    s.advance(45_000);
    s.release_lease(pool, "lease-5e21")?;
    s.finish_stop(pool, true)?;
    Ok(s)
}

/// A surge asked for by name whose new engine never answers healthy: the reload fails while
/// surging, the new engine is killed, and the old one, never stopped, serves on. Ends ready on
/// the old model, its lease still held.
fn surge_failed() -> Result<Scripted, ScriptError> {
    let pool = "chat-s";
    let mut s = surge_pool(pool)?;
    s.reload_with(
        pool,
        "/models/qwen2.5-14b-q4.gguf",
        ReloadStrategyAsked::Surge,
        Some(9301),
    )?;
    s.advance(1_100);
    s.stage_model(pool, "/models/qwen2.5-14b-q4.gguf")?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.time_out_health(pool)?;
    s.finish_stop(pool, false)?;
    Ok(s)
}

/// A ready CPU pool on port 8086 holding one lease (the surges' start).
fn surge_pool(pool: &str) -> Result<Scripted, ScriptError> {
    let mut s = Scripted::new(THURSDAY_10AM_MS, 23);
    s.preload(
        pool,
        cpu_engine(pool, 8086, "/models/qwen2.5-7b-q4.gguf", Some(2)),
    )?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 6_000, None)?;
    s.advance(30_000);
    s.acquire_lease(pool, "lease-5e21")?;
    s.advance(30_000);
    Ok(s)
}

/// Three reloads of a ready pool: the first succeeds (staged, drained, the new engine ready);
/// the second is refused (its model is missing: the engine untouched); the third's new engine
/// dies while loading, and the old model is started again (rolled back). Ends ready on the
/// first reload's model.
fn reloads() -> Result<Scripted, ScriptError> {
    let pool = "chat-r";
    let mut s = Scripted::new(THURSDAY_10AM_MS, 17);
    s.preload(
        pool,
        cpu_engine(pool, 8085, "/models/qwen2.5-7b-q4.gguf", Some(2)),
    )?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 6_000, None)?;
    s.advance(60_000);
    s.reload(pool, "/models/qwen2.5-7b-q5.gguf", None, Some(30_000))?;
    s.advance(900);
    s.stage_model(pool, "/models/qwen2.5-7b-q5.gguf")?;
    s.finish_stop(pool, true)?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 7_100, None)?;
    s.advance(120_000);
    s.reload(pool, "/models/qwen2.5-7b-q8.gguf", None, Some(30_000))?;
    s.advance(15);
    s.fail_staging(
        pool,
        "/models/qwen2.5-7b-q8.gguf: No such file or directory",
    )?;
    s.advance(300_000);
    s.reload(pool, "/models/qwen2.5-14b-q4.gguf", None, Some(30_000))?;
    s.advance(1_200);
    s.stage_model(pool, "/models/qwen2.5-14b-q4.gguf")?;
    s.finish_stop(pool, true)?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.advance(9_000);
    s.exit_engine(
        pool,
        Some(1),
        None,
        ExitReason::Crash,
        "llama_model_load: error loading model: unknown model architecture: 'qwen3'",
    )?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 7_300, None)?;
    Ok(s)
}

/// A crash loop faster than the storm window allows (at most 3 restarts a minute): the storm
/// opens the breaker (a `crash_storm` with its hint). At the half-open time the trial start
/// crashes too: the breaker opens again, for twice as long. Ends in `circuit_open`.
fn storm_and_trial() -> Result<Scripted, ScriptError> {
    let pool = "chat-s";
    let mut policy = pool_core::Policy::default();
    policy.storm.max_restarts = 3;
    policy.backoff.initial_ms = 500;
    let mut s = Scripted::new(THURSDAY_10AM_MS, 23).with_policy(policy);
    s.preload(
        pool,
        cpu_engine(pool, 8086, "/models/mistral-7b-q4.gguf", Some(1)),
    )?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 4_000, None)?;
    for _ in 0..8 {
        s.advance(2_000);
        s.exit_engine(
            pool,
            Some(134),
            None,
            ExitReason::Crash,
            "terminate called after throwing an instance of 'std::bad_alloc'",
        )?;
        if s.state()
            .status(pool)
            .is_some_and(|st| st.phase == Phase::CircuitOpen)
        {
            break;
        }
        s.fire_timer(pool, Timer::Restart)?;
        s.advance(20);
        s.spawn_engine(pool)?;
        s.pass_health(pool, 3_000, None)?;
    }
    s.fire_timer(pool, Timer::HalfOpen)?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.advance(1_500);
    s.exit_engine(
        pool,
        Some(134),
        None,
        ExitReason::Crash,
        "terminate called after throwing an instance of 'std::bad_alloc'",
    )?;
    Ok(s)
}

/// A GPU with repeated hardware faults (Xid 79, fallen off the bus) is quarantined; the pool
/// whose mask covers it loses its engine to a driver error and is not restarted on it
/// (`RestartHeld`). Ends `failed`, waiting for an unquarantine.
fn quarantine_held() -> Result<Scripted, ScriptError> {
    let pool = "chat-q";
    let mut policy = pool_core::Policy::default();
    policy.quarantine.after = 2;
    let mut s = Scripted::new(THURSDAY_10AM_MS, 29).with_policy(policy);
    s.submit(Observation::GpuInventory {
        gpus: vec![l4_gpu()],
    })?;
    s.preload(
        pool,
        sample_engine(pool, 8087, "/models/llama-3.1-8b-q4.gguf", Some(2)),
    )?;
    s.advance(20);
    s.spawn_engine(pool)?;
    s.pass_health(pool, 5_000, None)?;
    for _ in 0..2 {
        s.advance(30_000);
        s.submit(Observation::GpuXid {
            gpu_uuid: l4_gpu().uuid,
            xid: 79,
        })?;
    }
    if s.state().pool(pool).and_then(|p| p.pid()).is_some() {
        s.exit_engine(
            pool,
            None,
            Some(9),
            ExitReason::DriverError,
            "CUDA error: unspecified launch failure (Xid 79)",
        )?;
    }
    Ok(s)
}

/// A hung engine: three failed health probes stop it as `health_timeout`; its restart is
/// ready. The daemon then restarts: the engine of `chat-h` is found alive and adopted; the
/// engine of `chat-l` is gone (lost while the daemon was down) and restarted. Ends with both
/// ready.
fn hang_adoption_loss() -> Result<Scripted, ScriptError> {
    let mut s = Scripted::new(THURSDAY_10AM_MS, 31);
    for (pool, port) in [("chat-h", 8088), ("chat-l", 8089)] {
        s.preload(
            pool,
            cpu_engine(pool, port, "/models/gemma-2-9b-q4.gguf", Some(2)),
        )?;
        s.advance(20);
        s.spawn_engine(pool)?;
        s.pass_health(pool, 5_000, None)?;
    }
    for _ in 0..3 {
        s.advance(5_000);
        s.fail_probe("chat-h", "GET /health: timed out after 2 s")?;
    }
    s.finish_stop("chat-h", false)?;
    s.fire_timer("chat-h", Timer::Restart)?;
    s.advance(20);
    s.spawn_engine("chat-h")?;
    s.pass_health("chat-h", 5_000, None)?;
    s.advance(600_000);
    s.submit(Observation::DaemonStopping {
        reason: "SIGTERM".into(),
    })?;
    s.advance(4_000);
    s.submit(Observation::DaemonStarted {
        version: "0.1.0".into(),
        pid: 913,
    })?;
    for (pool, alive) in [("chat-h", true), ("chat-l", false)] {
        let pid = s.state().pool(pool).and_then(|p| p.pid()).unwrap_or(0);
        let pool_id = PoolId::new(pool).map_err(|e| ScriptError::InvalidId(e.to_string()))?;
        if alive {
            s.submit(Observation::EngineAdopted { pool_id, pid })?;
        } else {
            s.submit(Observation::EngineLost { pool_id, pid })?;
        }
    }
    s.fire_timer("chat-l", Timer::Restart)?;
    s.advance(20);
    s.spawn_engine("chat-l")?;
    s.pass_health("chat-l", 5_000, None)?;
    Ok(s)
}

/// GPU placement going wrong. `chat-g`'s engine serves on the CPU although its mask names GPU
/// 0 (a CUDA build that found no device): the start fails with `CPU_SPILLOVER`; before its
/// restart, the last engine's memory is still held on the GPU past the release timeout: the
/// start fails naming it (and backs off). `chat-m` (on GPU 1) is ready, then seen on GPU 0,
/// outside its mask, then, with a
/// lease held, reports work in progress while making none: stopped as `stalled`. Ends with
/// both in backoff.
fn placement_faults() -> Result<Scripted, ScriptError> {
    let mut s = Scripted::new(THURSDAY_10AM_MS, 37);
    let second = GpuInfo {
        index: 1,
        uuid: "GPU-9c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f".into(),
        ..l4_gpu()
    };
    s.submit(Observation::GpuInventory {
        gpus: vec![l4_gpu(), second],
    })?;
    let g = "chat-g";
    s.preload(
        g,
        sample_engine(g, 8090, "/models/phi-3.5-mini-q4.gguf", Some(1)),
    )?;
    s.advance(20);
    let pid = s.spawn_engine(g)?;
    s.advance(3_000);
    let token = s.state().pool(g).map_or(0, |p| p.start_token);
    s.submit(Observation::EngineNotOnGpu {
        pool_id: id(g)?,
        token,
        pid,
        detail: "the engine's log says \"no CUDA-capable device is detected\": it would \
                 serve on the CPU; check CUDA_VISIBLE_DEVICES and the engine build"
            .into(),
    })?;
    s.finish_stop(g, false)?;
    s.fire_timer(g, Timer::Restart)?;
    s.advance(10_000);
    let token = s.state().pool(g).map_or(0, |p| p.start_token);
    s.submit(Observation::GpuMemoryStuck {
        pool_id: id(g)?,
        token,
        gpu_uuid: l4_gpu().uuid,
        pids: vec![pid + 7],
        bytes: 3 * GIB,
        after_ms: 10_000,
    })?;
    let m = "chat-m";
    let mut engine = sample_engine(m, 8091, "/models/llama-3.2-3b-q4.gguf", Some(2));
    engine.device_mask = Some("1".into());
    s.preload(m, engine)?;
    s.advance(20);
    let pid = s.spawn_engine(m)?;
    s.pass_health(m, 4_000, None)?;
    s.advance(2_000);
    s.submit(Observation::DeviceMaskViolation {
        pool_id: id(m)?,
        pid,
        gpu_uuid: l4_gpu().uuid,
    })?;
    s.acquire_lease(m, "m-1")?;
    s.advance(120_000);
    s.submit(Observation::EngineStalled {
        pool_id: id(m)?,
        pid,
        detail: "1 slot processing, n_decoded stuck at 412 for 120 s".into(),
    })?;
    s.finish_stop(m, false)?;
    Ok(s)
}

fn id(pool: &str) -> Result<PoolId, ScriptError> {
    PoolId::new(pool).map_err(|e| ScriptError::InvalidId(e.to_string()))
}

// ---- helpers --------------------------------------------------------------------------------

fn run_scenario(name: &str, script: fn() -> Result<Scripted, ScriptError>) -> Scripted {
    script().unwrap_or_else(|e| panic!("scenario {name}: the core refused a step: {e}"))
}

fn journal_path(name: &str) -> PathBuf {
    Path::new(JOURNALS_DIR).join(format!("{name}.ndjson"))
}

fn open_journal(dir: &Path) -> PoolJournal {
    let (journal, report) = PoolJournal::open(JournalConfig::new(dir))
        .unwrap_or_else(|e| panic!("open a journal in {}: {e}", dir.display()));
    assert!(report.quarantined.is_empty());
    journal
}

fn drafts_of(envelopes: &[PoolEnvelope]) -> Vec<Draft<Event>> {
    envelopes.iter().cloned().map(Draft::from).collect()
}

/// The export of a real journal holding the script's envelopes.
fn export_through_a_real_journal(name: &str, script: &Scripted) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let journal = open_journal(tmp.path());
    let appended = journal
        .append_blocking(drafts_of(script.envelopes()))
        .unwrap_or_else(|e| panic!("scenario {name}: append: {e}"));
    assert_eq!(
        appended,
        script.envelopes(),
        "scenario {name}: the journal assigned other seqs than the script"
    );
    let mut out = Vec::new();
    journal
        .export(&mut out)
        .unwrap_or_else(|e| panic!("scenario {name}: export: {e}"));
    journal.close().expect("close");
    out
}

/// The first line where `a` and `b` differ (1-based), for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    let mut lines_a = a.lines();
    let mut lines_b = b.lines();
    let mut line = 1;
    loop {
        match (lines_a.next(), lines_b.next()) {
            (None, None) => return line,
            (x, y) if x != y => return line,
            _ => line += 1,
        }
    }
}

/// What the snapshot of a journal holds: the registry as `replay` rebuilds it.
#[derive(Debug, Serialize)]
struct ReplayedRegistry {
    /// The seq of the last event folded.
    as_of_seq: u64,
    /// Its time (ms since the epoch) and the same as RFC 3339, for people.
    as_of_ts_ms: Option<u64>,
    as_of: Option<String>,
    /// Events folded.
    events: u64,
    /// `State::statuses()`: the registry as the API serves it, sorted by pool id.
    pools: Vec<PoolStatus>,
}

/// Imports the NDJSON file into a fresh journal and replays it to `limit`.
fn import_and_replay(path: &Path, limit: ReplayLimit) -> Replayed {
    let tmp = tempfile::tempdir().expect("temp dir");
    let journal = open_journal(tmp.path());
    let file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let imported = journal
        .import(&mut std::io::BufReader::new(file))
        .unwrap_or_else(|e| panic!("import of {}: {e}", path.display()));
    let replayed =
        replay(&journal, limit).unwrap_or_else(|e| panic!("replay of {}: {e}", path.display()));
    assert_eq!(replayed.from_snapshot_seq, None);
    if limit == ReplayLimit::NONE {
        assert_eq!(replayed.events_folded, imported, "{}", path.display());
        assert_eq!(replayed.state.last_seq(), imported, "{}", path.display());
    }
    journal.close().expect("close");
    replayed
}

fn check_journal(path: &Path) {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_else(|| panic!("journal file name {} is not UTF-8", path.display()))
        .to_string();
    let replayed = import_and_replay(path, ReplayLimit::NONE);
    let registry = ReplayedRegistry {
        as_of_seq: replayed.state.last_seq(),
        as_of_ts_ms: replayed.as_of_ts_ms,
        as_of: replayed.as_of_ts_ms.map(format_ts_ms),
        events: replayed.events_folded,
        pools: replayed.state.statuses(),
    };
    if let Some((_, script)) = SCENARIOS.iter().find(|(scenario, _)| *scenario == name) {
        let script = run_scenario(&name, *script);
        assert!(
            replayed.state == *script.state(),
            "{}: the replayed registry differs from the script's final state \
             (regenerate with {UPDATE_ENV}=1 cargo test --test replay)",
            path.display()
        );
    }
    insta::with_settings!({
        snapshot_path => "../replay-tests/snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!("registry replayed from replay-tests/journals/{name}.ndjson"),
    }, {
        insta::assert_json_snapshot!(name.clone(), registry);
    });
}

/// The text form of the explanation of every pool of the journal at `path`, at every seq
/// (after each event, each pool whose explanation changed, `as_of_seq` aside).
fn explanations_at_every_seq(path: &Path) -> String {
    let tmp = tempfile::tempdir().expect("temp dir");
    let journal = open_journal(tmp.path());
    let file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    journal
        .import(&mut std::io::BufReader::new(file))
        .unwrap_or_else(|e| panic!("import of {}: {e}", path.display()));
    let envelopes: Vec<PoolEnvelope> = journal
        .read_from(1)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("read of {}: {e}", path.display()));
    let mut pools: Vec<&str> = envelopes
        .iter()
        .filter_map(|e| e.pool_id.as_deref())
        .collect();
    pools.sort_unstable();
    pools.dedup();
    let mut out = String::new();
    let mut last: std::collections::BTreeMap<&str, pool_core::Explanation> = Default::default();
    for envelope in &envelopes {
        let seq = envelope.seq;
        let limit = ReplayLimit {
            until_seq: Some(seq),
            until_ts_ms: None,
        };
        let state = replay(&journal, limit).expect("replay").state;
        for pool in &pools {
            let explained = explain_pool(&journal, pool, Some(seq), Some(&state.node))
                .unwrap_or_else(|e| panic!("explain {pool} at seq {seq}: {e}"));
            let Some(explanation) = explained else {
                if last.remove(pool).is_some() {
                    out.push_str(&format!(
                        "=== seq {seq} ({}) ===\npool {pool}: gone\n",
                        envelope.event.kind()
                    ));
                }
                continue;
            };
            assert_eq!(
                explanation.phase,
                state.status(pool).expect("the pool exists").phase,
                "{}: {pool} at seq {seq}",
                path.display()
            );
            // The shell's read (the pool's index and the node events) is the core's function
            // of the whole history.
            let mut whole = pool_core::Explainer::new(pool, None);
            for envelope in envelopes.iter().take_while(|e| e.seq <= seq) {
                whole.feed(pool_managerd::projection::recorded(envelope));
            }
            assert_eq!(
                whole.explain(Some(&state.node)).as_ref(),
                Some(&explanation),
                "{}: {pool} at seq {seq}",
                path.display()
            );
            let json = serde_json::to_string(&explanation).expect("serialize");
            let back: pool_core::Explanation = serde_json::from_str(&json).expect("read back");
            assert_eq!(back, explanation);
            let unchanged = last.get(pool).is_some_and(|before| {
                pool_core::Explanation {
                    as_of_seq: seq,
                    ..before.clone()
                } == explanation
            });
            if !unchanged {
                out.push_str(&format!("=== seq {seq} ({}) ===\n", envelope.event.kind()));
                out.push_str(&pool_core::render_text(&explanation));
            }
            last.insert(pool, explanation);
        }
    }
    journal.close().expect("close");
    out
}

fn recorded_journals() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(JOURNALS_DIR)
        .unwrap_or_else(|e| panic!("cannot list {JOURNALS_DIR}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    paths.sort();
    paths
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn scripted_journals_match_their_checked_in_exports() {
    let update = std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, script) in SCENARIOS {
        let script = run_scenario(name, *script);
        let exported = export_through_a_real_journal(name, &script);
        let path = journal_path(name);
        if update {
            std::fs::create_dir_all(JOURNALS_DIR).expect("create the journals dir");
            std::fs::write(&path, &exported)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            continue;
        }
        match std::fs::read(&path) {
            Ok(checked_in) if checked_in == exported => {}
            Ok(checked_in) => stale.push(format!(
                "{} differs from what the scenario records now (first at line {})",
                path.display(),
                first_difference(&checked_in, &exported)
            )),
            Err(e) => stale.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nIf the change is intended, regenerate them with \
         `{UPDATE_ENV}=1 cargo test --test replay`, read the diff, then accept the snapshots \
         with `INSTA_UPDATE=always cargo test --test replay`",
        stale.join("\n")
    );
}

#[test]
fn every_recorded_journal_replays_to_its_snapshot() {
    let journals = recorded_journals();
    for (name, _) in SCENARIOS {
        assert!(
            journals.contains(&journal_path(name)),
            "replay-tests/journals/{name}.ndjson is missing: run \
             `{UPDATE_ENV}=1 cargo test --test replay`"
        );
    }
    let mut failed = Vec::new();
    for path in &journals {
        if catch_unwind(AssertUnwindSafe(|| check_journal(path))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "these journals do not replay to their snapshots (see above):\n{}",
        failed.join("\n")
    );
}

#[test]
fn every_recorded_journal_explains_every_pool_at_every_seq() {
    let mut failed = Vec::new();
    for path in recorded_journals() {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_else(|| panic!("journal file name {} is not UTF-8", path.display()))
            .to_string();
        let checked = catch_unwind(AssertUnwindSafe(|| {
            let text = explanations_at_every_seq(&path);
            insta::with_settings!({
                snapshot_path => "../replay-tests/snapshots",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                description => format!(
                    "every pool explained at every seq of replay-tests/journals/{name}.ndjson"
                ),
            }, {
                insta::assert_snapshot!(format!("{name}.explain"), text);
            });
        }));
        if checked.is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "these journals' explanations differ from their snapshots (see above):\n{}",
        failed.join("\n")
    );
}

/// The README's quick start replays `crash-loop.ndjson` to seq 3: the first restart, scheduled
/// at once (a first failure does not back off).
#[test]
fn crash_loop_at_seq_3_is_the_first_restart_scheduled_at_once() {
    let limit = ReplayLimit {
        until_seq: Some(3),
        until_ts_ms: None,
    };
    let at_3 = import_and_replay(&journal_path("crash-loop"), limit);
    let status = at_3
        .state
        .status("chat-13b")
        .expect("the pool exists at seq 3");
    assert_eq!(status.phase, Phase::Backoff);
    assert_eq!(status.backoff_ms, 0);
    assert_eq!(status.crash_count, 1);
    assert!(status
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("Text file busy")));
    let end = import_and_replay(&journal_path("crash-loop"), ReplayLimit::NONE);
    let status = end.state.status("chat-13b").expect("the pool exists");
    assert_eq!(status.phase, Phase::Ready);
    assert_eq!(status.crash_count, 5);
}

/// The crash loop shows what its story says: a first restart at once, then delays growing,
/// then the breaker, then a reset.
#[test]
fn crash_loop_delays_grow_until_the_breaker_opens() {
    let script = run_scenario("crash-loop", crash_loop);
    let kinds: Vec<&str> = script.envelopes().iter().map(|e| e.event.kind()).collect();
    let delays: Vec<u64> = script
        .envelopes()
        .iter()
        .filter_map(|e| match e.event {
            Event::RestartScheduled { delay_ms, .. } => Some(delay_ms),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 4, "{kinds:?}");
    assert_eq!(delays[0], 0, "{delays:?}");
    assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
    let opened = kinds.iter().position(|k| *k == "CircuitOpened");
    let reset = kinds.iter().position(|k| *k == "CircuitReset");
    let last_ready = kinds.iter().rposition(|k| *k == "PoolReady");
    assert!(
        opened < reset && reset < last_ready && opened.is_some(),
        "{kinds:?}"
    );
}
