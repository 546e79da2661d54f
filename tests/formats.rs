//! Journals written by every event format version, read by today's build.
//!
//! SPEC section 3: "an old record decodes (upcast) into today's event type; a test keeps a
//! journal written by every released format version". For each version N from 1 to
//! `pool_core::EVENT_FORMAT_VERSION` two files are checked in under `tests/fixtures/`:
//!
//! - `pool-events-vN.records`: the raw records (the bytes sled stored: `version u8 | crc32c
//!   u32 LE | bincode envelope`) of a journal written by a build whose format version was N.
//!   UTF-8 text; lines starting with `#` are comments; every other line is
//!   `seq<TAB>lower-case hex of the raw value` (the format of `journal/tests/fixtures/`).
//! - `pool-events-vN.expected.ndjson`: what those records must read as *today*, in the
//!   export format (`pool-managerd journal export`).
//!
//! The records are history: **never regenerate or edit a `.records` file.** They stand for
//! journals already on disk. When a change of `pool_core::Event` bumps
//! `EVENT_FORMAT_VERSION` to N+1 (with an upcaster in `src/schema.rs`):
//!
//! 1. write `pool-events-v(N+1).records` and its `.expected.ndjson` beside the old ones with
//!    `POOL_MANAGERD_WRITE_FORMAT_FIXTURE=1 cargo test --test formats -- --ignored
//!    write_fixture_of_the_current_format_version` (it refuses to overwrite a file), after
//!    adding the new variants to the scenario in `all_event_kinds()` (or, for an event the
//!    core never decides, such as the loss marker of `journal repair --accept-loss`, to
//!    `fixture_envelopes()`) and to `kinds_of_version`;
//! 2. if the upcaster changes how older events read today (a new field with its default),
//!    update the older `.expected.ndjson` files to today's reading, by hand or from
//!    `pool-managerd journal export` of a journal loaded from the `.records`; never the
//!    `.records`.
//!
//! The tests load each `.records` file into a real sled journal through the journal crate's
//! raw `Store::put_raw`, in the layout that builds of its version wrote (before version 3:
//! sled's files in the journal directory itself, which `PoolJournal::open` migrates; from
//! version 3: today's `live/` store), open it with `PoolJournal` (migration, recovery, decode,
//! upcast) and check that
//! every record decodes, that the export equals the `.expected.ndjson`, that records of the
//! current version re-encode to the very same bytes, that `verify` (the library's and the
//! CLI's `journal verify`) finds nothing and that the registry replays.
//!
//! From version 3 on a fixture also holds a loss marker (`JournalLossAccepted`): a few events
//! of the scenario are gone and the marker stands at the last of their seqs, as `journal
//! repair --accept-loss` leaves a damaged journal, so its seqs have a declared gap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use pool_core::{
    Command, Event, ExitReason, GpuInfo, Handoff, HandoffModel, MigDeviceInfo, Observation,
    PlacementInputs, Policy, PoolId, ReloadStrategyAsked, StormPolicy, TensorSplit, Timer,
    EVENT_FORMAT_VERSION,
};
use pool_journal::{Draft, EventSchema, JournalConfig, SledStore, Store};
use pool_managerd::projection::{replay, ReplayLimit};
use pool_managerd::schema::{PoolEnvelope, PoolJournal, PoolSchema};
use pool_managerd::script::{sample_engine, ScriptError, Scripted};
use pool_managerd::table::timeline_line;

const FIXTURES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Set to `1` (with `--ignored`) to write the fixture of the current format version.
const WRITE_ENV: &str = "POOL_MANAGERD_WRITE_FORMAT_FIXTURE";
/// sled page cache for the temp journals.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

fn records_path(version: u8) -> PathBuf {
    Path::new(FIXTURES_DIR).join(format!("pool-events-v{version}.records"))
}

fn expected_path(version: u8) -> PathBuf {
    Path::new(FIXTURES_DIR).join(format!("pool-events-v{version}.expected.ndjson"))
}

/// The event kinds that exist in format version `version` (frozen per version: a new version
/// appends its new kinds).
fn kinds_of_version(version: u8) -> BTreeSet<&'static str> {
    const V1: [&str; 41] = [
        "DaemonStarted",
        "DaemonStopped",
        "GpuInventoryObserved",
        "PreflightFailed",
        "GpuXidObserved",
        "DriverResetObserved",
        "PreloadRequested",
        "PreloadRejected",
        "EngineSpawned",
        "HealthCheckPassed",
        "PoolReady",
        "PreloadFailed",
        "LeaseGranted",
        "LeaseReleased",
        "HealthCheckFailed",
        "EngineExited",
        "RestartScheduled",
        "CircuitOpened",
        "CircuitHalfOpened",
        "CircuitClosed",
        "CircuitReset",
        "RestartStormDetected",
        "EngineAdopted",
        "EngineLost",
        "DrainRequested",
        "DrainCompleted",
        "EngineStopRequested",
        "EngineStopped",
        "ReloadRequested",
        "ModelStaged",
        "ReloadSucceeded",
        "ReloadFailed",
        "ReloadRolledBack",
        "DeviceMaskViolation",
        "PoolRemoved",
        "HandoffRegistered",
        "HandoffRejected",
        "EngineStartRequested",
        "HealthCheckRecovered",
        "BackoffReset",
        "VramUsageObserved",
    ];
    /// Appended by version 2 (besides the start failure `CpuSpillover` inside `PreloadFailed`).
    const V2_NEW: [&str; 1] = ["MigInventoryObserved"];
    /// Appended by version 3: the loss marker of `journal repair --accept-loss`.
    const V3_NEW: [&str; 2] = ["JournalLossAccepted", "UntrackedEngineStopped"];
    /// Appended by version 4 (which also reshaped `EngineSpawned` and `HealthCheckPassed` and
    /// appended the start failure `PortInUse` and the exit reason `Stalled`): the GPU memory
    /// release wait and GPU quarantine.
    const V4_NEW: [&str; 5] = [
        "GpuMemoryReleased",
        "GpuMemoryStuck",
        "GpuQuarantined",
        "GpuUnquarantined",
        "RestartHeld",
    ];
    /// Appended by version 6 (besides the reload stage `Surging`): reload without a gap.
    const V6_NEW: [&str; 7] = [
        "ReloadStrategyChosen",
        "SurgeStartRequested",
        "SurgeSpawned",
        "SurgeHealthPassed",
        "SurgeSwitched",
        "SecondStopRequested",
        "SecondEngineEnded",
    ];
    match version {
        1 => V1.into_iter().collect(),
        2 => V1.into_iter().chain(V2_NEW).collect(),
        3 => V1.into_iter().chain(V2_NEW).chain(V3_NEW).collect(),
        // Version 5 reshaped `PreloadRequested` and `EngineStartRequested` (the prepared
        // engine's `progress`) and appended nothing.
        4 | 5 => V1
            .into_iter()
            .chain(V2_NEW)
            .chain(V3_NEW)
            .chain(V4_NEW)
            .collect(),
        6 => V1
            .into_iter()
            .chain(V2_NEW)
            .chain(V3_NEW)
            .chain(V4_NEW)
            .chain(V6_NEW)
            .collect(),
        other => panic!(
            "kinds_of_version({other}): list the kinds of format version {other} here \
             (version 1's plus the new ones)"
        ),
    }
}

// ---- the fixture files ----------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, line: usize) -> Vec<u8> {
    assert!(
        text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit()),
        "fixture line {line}: the value is not hex"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit pair"))
        .collect()
}

/// The `(seq, raw value)` records of a `.records` file.
fn read_records(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the fixture {}: {e}", path.display()));
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (seq, value) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("{} line {number}: expected seq<TAB>hex", path.display()));
        let seq: u64 = seq
            .parse()
            .unwrap_or_else(|e| panic!("{} line {number}: seq: {e}", path.display()));
        records.push((seq, unhex(value, number)));
    }
    records
}

/// The first format version written in today's journal layout (`live/`, `witness`,
/// `segments/`); older versions were written by builds that kept sled's files in the journal
/// directory itself (the legacy layout).
const FIRST_VERSION_IN_TODAYS_LAYOUT: u8 = 3;

/// A closed journal in `dir` holding exactly `records` of format `version`, written through
/// the raw store in the layout that builds of that version wrote: the legacy layout before
/// version 3 (`PoolJournal::open` migrates it), else today's (an empty journal is created and
/// closed, then its live store filled). A legacy journal never holds a loss marker: `journal
/// repair --accept-loss` came with today's layout.
fn write_raw_journal(dir: &Path, version: u8, records: &[(u64, Vec<u8>)]) {
    let store_dir = if version < FIRST_VERSION_IN_TODAYS_LAYOUT {
        dir.to_path_buf()
    } else {
        let (journal, _) =
            PoolJournal::open(JournalConfig::new(dir)).expect("create an empty journal");
        journal.close().expect("close the empty journal");
        drop(journal);
        pool_journal::live_store_dir(dir)
    };
    let store = SledStore::open(&store_dir, CACHE_BYTES).expect("open the raw store");
    for (seq, value) in records {
        store.put_raw(*seq, value).expect("put_raw");
    }
    store.sync().expect("sync the raw store");
}

// ---- the scenario ---------------------------------------------------------------------------

const GIB: u64 = 1024 * 1024 * 1024;

fn gpus() -> Vec<GpuInfo> {
    vec![
        GpuInfo {
            index: 0,
            uuid: "GPU-0b1e7c52-91a4-4f0e-8c3d-2a6f5e9d1b70".into(),
            name: "NVIDIA A100-SXM4-80GB".into(),
            compute_capability: "8.0".into(),
            vram_total_bytes: 80 * GIB,
            vram_free_bytes: 79 * GIB,
        },
        GpuInfo {
            index: 1,
            uuid: "GPU-7d3f1a08-5c62-4b9e-a0d7-e41c8b2f6a95".into(),
            name: "NVIDIA A100-SXM4-80GB".into(),
            compute_capability: "8.0".into(),
            vram_total_bytes: 80 * GIB,
            vram_free_bytes: 79 * GIB,
        },
    ]
}

fn mig_device() -> MigDeviceInfo {
    MigDeviceInfo {
        uuid: "MIG-4c1f0e2a-8b7d-5e36-9a01-6f2d3c4b5a69".into(),
        parent_index: 1,
        name: "1g.10gb".into(),
        vram_total_bytes: 10 * GIB,
        vram_free_bytes: 9 * GIB,
    }
}

fn id(pool: &str) -> Result<PoolId, ScriptError> {
    PoolId::new(pool).map_err(|e| ScriptError::InvalidId(e.to_string()))
}

fn pid_of(s: &Scripted, pool: &str) -> u32 {
    s.state().pool(pool).and_then(|p| p.pid()).unwrap_or(0)
}

/// One node's journal in which every event kind of the current format version occurs, driven
/// through the core (so every record is a real decision). Optional fields are exercised both
/// empty and set (node events without a pool, causes, digests, tensor splits, env).
fn all_event_kinds() -> Result<Scripted, ScriptError> {
    let policy = Policy {
        storm: StormPolicy {
            max_restarts: 2,
            window_ms: 60_000,
        },
        ..Policy::default()
    };
    // Several pools on the same two GPUs: this node allows GPU sharing (config
    // `[gpu] allow_sharing`), so the scenario needs no free GPU per pool.
    let mut s = Scripted::new(1_767_261_600_000, 3)
        .with_policy(policy)
        .with_placement(PlacementInputs {
            allow_gpu_sharing: true,
            ..PlacementInputs::default()
        });

    // The node.
    s.submit(Observation::DaemonStarted {
        version: "0.1.0".into(),
        pid: 901,
    })?;
    s.submit(Observation::PreflightFailed {
        reason: "NVML: Driver/library version mismatch".into(),
    })?;
    s.advance(20_000);
    s.submit(Observation::GpuInventory { gpus: gpus() })?;
    s.submit(Observation::MigInventory {
        devices: vec![mig_device()],
    })?;
    s.submit(Observation::HandoffInvalid {
        file: ".runtime/engines/stray.json".into(),
        field: "slots_total".into(),
        reason: "must be at least 1".into(),
    })?;
    s.submit(Observation::GpuXid {
        gpu_uuid: gpus()[1].uuid.clone(),
        xid: 79,
    })?;
    s.submit(Observation::DriverReset {
        gpu_uuid: gpus()[1].uuid.clone(),
    })?;

    // alpha: ready, leases, probes, VRAM, a mask violation, a refused preload, a crash and its
    // restart, a backoff reset, a reload that succeeds and one that rolls back.
    let alpha = "alpha";
    s.advance(1_000);
    s.preload(
        alpha,
        sample_engine(alpha, 8101, "/models/alpha-v1.gguf", Some(4)),
    )?;
    s.spawn_engine(alpha)?;
    s.pass_health(alpha, 5_000, None)?;
    s.submit(Observation::VramObserved {
        pool_id: id(alpha)?,
        pid: pid_of(&s, alpha),
        used_bytes: 9 * GIB,
    })?;
    s.submit(Observation::DeviceMaskViolation {
        pool_id: id(alpha)?,
        pid: pid_of(&s, alpha),
        gpu_uuid: gpus()[1].uuid.clone(),
    })?;
    s.acquire_lease(alpha, "lease-1")?;
    s.advance(3_000);
    s.release_lease(alpha, "lease-1")?;
    s.fail_probe(alpha, "GET /health: connection refused")?;
    s.advance(5_000);
    s.pass_probe(alpha)?;
    s.submit(Observation::PreloadRefused {
        pool_id: id(alpha)?,
        code: pool_core::ErrorCode::InsufficientVram,
        reason: "needs 90 GiB, 71 GiB free on GPU 0".into(),
    })?;
    s.advance(60_000);
    s.exit_engine(
        alpha,
        Some(1),
        None,
        ExitReason::CudaError,
        "CUDA error: an illegal memory access was encountered",
    )?;
    s.fire_timer(alpha, Timer::Restart)?;
    s.spawn_engine(alpha)?;
    s.pass_health(alpha, 4_000, Some(4))?;
    s.fire_timer(alpha, Timer::BackoffReset)?;
    s.reload(
        alpha,
        "file:///models/alpha-v2.gguf",
        Some("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        Some(30_000),
    )?;
    s.stage_model(alpha, "/models/alpha-v2.gguf")?;
    s.finish_stop(alpha, true)?;
    s.spawn_engine(alpha)?;
    s.pass_health(alpha, 6_000, None)?;
    s.advance(600_000);
    s.reload(alpha, "/models/alpha-v3.gguf", None, None)?;
    s.stage_model(alpha, "/models/alpha-v3.gguf")?;
    s.finish_stop(alpha, true)?;
    s.spawn_engine(alpha)?;
    s.advance(2_000);
    s.exit_engine(
        alpha,
        None,
        Some(11),
        ExitReason::Signal,
        "llama_model_load: unknown model architecture: 'alpha3'",
    )?;
    s.spawn_engine(alpha)?;
    s.pass_health(alpha, 5_000, None)?;

    // beta: five spaced-out failures open the breaker; it half-opens, the trial runs stable
    // and the breaker closes. Its engine asks for an automatic tensor split over both GPUs
    // and declares its progress probe (format version 5).
    let beta = "beta";
    let mut beta_engine = sample_engine(beta, 8102, "/models/beta.gguf", None);
    beta_engine.device_mask = Some("0,1".into());
    beta_engine.tensor_split = Some(TensorSplit::Auto);
    beta_engine.vram_required_bytes = Some(40 * GIB);
    beta_engine.ram_required_bytes = Some(8 * GIB);
    beta_engine.progress = Some(Box::new(pool_core::ProgressRequest {
        path: "/completion".into(),
        method: "POST".into(),
        body: Some(r#"{"prompt":"a","n_predict":1}"#.into()),
        expect_status: 200,
    }));
    beta_engine
        .env
        .insert("GGML_CUDA_NO_PINNED".into(), "1".into());
    s.preload(beta, beta_engine)?;
    s.spawn_engine(beta)?;
    s.pass_health(beta, 7_000, Some(2))?;
    for failure in 1..=5 {
        s.advance(70_000);
        s.exit_engine(
            beta,
            Some(134),
            None,
            ExitReason::Crash,
            "GGML_ASSERT: n_tokens <= n_batch",
        )?;
        if failure < 5 {
            s.fire_timer(beta, Timer::Restart)?;
            s.spawn_engine(beta)?;
            s.pass_health(beta, 7_000, Some(2))?;
        }
    }
    s.fire_timer(beta, Timer::HalfOpen)?;
    s.spawn_engine(beta)?;
    s.pass_health(beta, 7_000, Some(2))?;
    s.fire_timer(beta, Timer::BreakerClose)?;

    // gamma: a vLLM engine with explicit split ratios in a restart storm; an operator resets
    // the breaker and the restart is healthy.
    let gamma = "gamma";
    let mut gamma_engine = sample_engine(gamma, 8103, "/models/gamma", Some(16));
    gamma_engine.binary_path = "/opt/vllm/bin/vllm".into();
    gamma_engine.engine = Some("vllm".into());
    gamma_engine.engine_version = "vllm-0.6.3".into();
    gamma_engine.device_mask = Some("GPU0,GPU1".into());
    gamma_engine.tensor_split = Some(TensorSplit::Ratios(vec![0.6, 0.4]));
    s.preload(gamma, gamma_engine)?;
    s.spawn_engine(gamma)?;
    s.pass_health(gamma, 30_000, None)?;
    loop {
        s.advance(2_000);
        s.exit_engine(
            gamma,
            None,
            Some(9),
            ExitReason::OomKilled,
            "oom-kill: task=python3",
        )?;
        let open = s
            .state()
            .pool(gamma)
            .is_some_and(|p| p.supervision.breaker.state != pool_core::BreakerState::Closed);
        if open {
            break;
        }
        s.fire_timer(gamma, Timer::Restart)?;
        s.spawn_engine(gamma)?;
        s.pass_health(gamma, 1_000, None)?;
    }
    s.advance(30_000);
    s.reset_breaker(gamma, "ops:jun")?;
    s.spawn_engine(gamma)?;
    s.pass_health(gamma, 30_000, None)?;

    // delta: an engine started by someone else, announced by its handoff file, then removed.
    let delta = "delta";
    s.submit(Command::RegisterHandoff {
        pool_id: id(delta)?,
        handoff: Handoff {
            engine: "llamacpp".into(),
            engine_version: "llamacpp-b3900".into(),
            url: "http://127.0.0.1:8104".into(),
            pool_id: delta.into(),
            replica_id: "r1".into(),
            model: HandoffModel {
                path: "/models/delta.gguf".into(),
            },
            flags: vec!["--parallel".into(), "2".into()],
            device_mask: Some("1".into()),
            slots_total: 2,
            pid: Some(5150),
        },
        path: ".runtime/engines/delta-r1.json".into(),
    })?;
    s.advance(10_000);
    s.remove(delta)?;
    s.finish_stop(delta, true)?;

    // epsilon: a preload that never becomes healthy, then stopped during its backoff.
    let epsilon = "epsilon";
    s.preload(
        epsilon,
        sample_engine(epsilon, 8105, "/models/epsilon.gguf", Some(1)),
    )?;
    s.spawn_engine(epsilon)?;
    s.time_out_health(epsilon)?;
    s.stop(epsilon)?;

    // zeta: a CUDA build on a MIG slice that found no usable device: healthy, but not on its
    // GPU, so the start fails with CPU_SPILLOVER and the engine is killed.
    let zeta = "zeta";
    let mut zeta_engine = sample_engine(zeta, 8106, "/models/zeta.gguf", Some(1));
    zeta_engine.device_mask = Some(mig_device().uuid);
    s.preload(zeta, zeta_engine)?;
    s.spawn_engine(zeta)?;
    let token = s.state().pool(zeta).map_or(0, |p| p.start_token);
    s.submit(Observation::EngineNotOnGpu {
        pool_id: id(zeta)?,
        token,
        pid: pid_of(&s, zeta),
        detail: "engine log: no CUDA-capable device is detected".into(),
    })?;
    s.finish_stop(zeta, false)?;

    // eta: its port is held by another process before the spawn: the start fails with
    // PORT_IN_USE (format version 4) and a restart is scheduled.
    let eta = "eta";
    s.preload(eta, sample_engine(eta, 8107, "/models/eta.gguf", Some(1)))?;
    let token = s.state().pool(eta).map_or(0, |p| p.start_token);
    s.submit(Observation::PortInUse {
        pool_id: id(eta)?,
        token,
        pid: None,
        detail: "port 8107 is already held by pid 4321 (python3 -m http.server 8107): stop \
                 that process or give the engine another port"
            .into(),
    })?;

    // theta: ready with a lease, its engine reports work in progress and makes none: stopped
    // as a `stalled` failure (format version 4's exit reason), its restart scheduled.
    let theta = "theta";
    s.preload(
        theta,
        sample_engine(theta, 8108, "/models/theta.gguf", Some(2)),
    )?;
    s.spawn_engine(theta)?;
    s.pass_health(theta, 3_000, None)?;
    s.acquire_lease(theta, "lease-theta")?;
    s.advance(120_000);
    s.submit(Observation::EngineStalled {
        pool_id: id(theta)?,
        pid: pid_of(&s, theta),
        detail: "slot 0 processing, n_decoded 17 unchanged for 120000 ms".into(),
    })?;
    s.finish_stop(theta, false)?;

    // iota: killed from outside; its restart, at once, waits for the GPU memory of the killed
    // engine (`GpuMemoryReleased`, format version 4). Killed again, the next restart finds that
    // memory still held at the bound: `GpuMemoryStuck` and a failed start.
    let iota = "iota";
    s.preload(
        iota,
        sample_engine(iota, 8109, "/models/iota.gguf", Some(1)),
    )?;
    s.spawn_engine(iota)?;
    s.pass_health(iota, 2_000, None)?;
    s.exit_engine(iota, None, Some(9), ExitReason::OomKilled, "")?;
    s.fire_timer(iota, Timer::Restart)?;
    let token = s.state().pool(iota).map_or(0, |p| p.start_token);
    s.advance(1_250);
    s.submit(Observation::GpuMemoryReleased {
        pool_id: id(iota)?,
        token,
        after_ms: 1_250,
    })?;
    s.spawn_engine(iota)?;
    s.pass_health(iota, 2_000, None)?;
    let killed = pid_of(&s, iota);
    s.exit_engine(iota, None, Some(9), ExitReason::OomKilled, "")?;
    s.advance(10_000);
    s.fire_timer(iota, Timer::Restart)?;
    let token = s.state().pool(iota).map_or(0, |p| p.start_token);
    s.advance(30_000);
    s.submit(Observation::GpuMemoryStuck {
        pool_id: id(iota)?,
        token,
        gpu_uuid: gpus()[0].uuid.clone(),
        pids: vec![killed],
        bytes: 6 * GIB,
        after_ms: 30_000,
    })?;

    // A daemon restart: alpha's engine is still ours (adopted), beta's is gone (lost); the
    // node drains alpha with no leases.
    s.advance(5_000);
    s.submit(Observation::DaemonStopping {
        reason: "SIGTERM".into(),
    })?;
    s.advance(3_000);
    s.submit(Observation::DaemonStarted {
        version: "0.1.0".into(),
        pid: 977,
    })?;
    s.submit(Observation::EngineAdopted {
        pool_id: id(alpha)?,
        pid: pid_of(&s, alpha),
    })?;
    s.submit(Observation::EngineLost {
        pool_id: id(beta)?,
        pid: pid_of(&s, beta),
    })?;
    s.drain(alpha, 15_000)?;
    s.finish_stop(alpha, true)?;

    // GPU 1 throws Xid 79 again and again (format version 4): it is quarantined; beta, in
    // backoff after its lost engine, is held, and gamma's engine is stopped and not restarted
    // onto it, until an operator ends the quarantine.
    s.advance(60_000);
    for _ in 0..3 {
        s.submit(Observation::GpuXid {
            gpu_uuid: gpus()[1].uuid.clone(),
            xid: 79,
        })?;
    }
    s.finish_stop(gamma, false)?;
    s.advance(600_000);
    s.submit(Command::UnquarantineGpu {
        gpu_uuid: gpus()[1].uuid.clone(),
        by: "ops:jun".into(),
    })?;

    // kappa: ready with a lease, reloaded without a gap (format version 6): the new engine
    // starts beside the old one on a surge port, answers healthy, new leases switch to it,
    // and the old one stops once the lease it held is returned.
    let kappa = "kappa";
    s.preload(
        kappa,
        sample_engine(kappa, 8110, "/models/kappa.gguf", Some(2)),
    )?;
    s.spawn_engine(kappa)?;
    s.pass_health(kappa, 2_000, None)?;
    s.acquire_lease(kappa, "lease-kappa")?;
    s.reload_with(
        kappa,
        "/models/kappa-v2.gguf",
        ReloadStrategyAsked::Surge,
        Some(9310),
    )?;
    s.stage_model(kappa, "/models/kappa-v2.gguf")?;
    s.spawn_engine(kappa)?;
    s.pass_health(kappa, 2_500, None)?;
    s.release_lease(kappa, "lease-kappa")?;
    s.finish_stop(kappa, true)?;
    Ok(s)
}

fn scenario() -> Scripted {
    all_event_kinds().unwrap_or_else(|e| panic!("the core refused a step of the scenario: {e}"))
}

/// Why the fixture's loss was accepted (the operator's `--accept-loss` reason).
const LOSS_REASON: &str = "records unreadable after a disk fault; accepted by ops:jun";
/// How many events of the scenario the fixture's loss marker stands for.
const LOST_EVENTS: usize = 3;

/// The journal a fixture holds: the scenario's events, except that the events of beta's
/// second restart from its `EngineStartRequested` on (`LOST_EVENTS` of them) are lost and a
/// loss marker (`JournalLossAccepted`, made by the schema as `journal repair --accept-loss`
/// makes it, an hour after the scenario's last event) stands at the last of their seqs. Every
/// other event keeps its seq: the seqs before the marker are a declared gap.
fn fixture_envelopes(script: &Scripted) -> Vec<PoolEnvelope> {
    let envelopes = script.envelopes();
    let first_lost = envelopes
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.pool_id.as_deref() == Some("beta")
                && matches!(e.event, Event::EngineStartRequested { .. })
        })
        .map(|(index, _)| index)
        .nth(1)
        .expect("beta restarts at least twice in the scenario");
    let last_lost = first_lost + LOST_EVENTS - 1;
    let (from_seq, to_seq) = (envelopes[first_lost].seq, envelopes[last_lost].seq);
    let marker = PoolEnvelope {
        seq: to_seq,
        ts_ms: script.now_ms() + 3_600_000,
        pool_id: None,
        cause: None,
        event: PoolSchema::loss_accepted(from_seq, to_seq, LOSS_REASON)
            .expect("the schema records a loss"),
    };
    let mut out = envelopes[..first_lost].to_vec();
    out.push(marker);
    out.extend_from_slice(&envelopes[last_lost + 1..]);
    // The start after the repair finds the engine the lost events had started and stops it.
    let last = out.last().map_or(0, |e| e.seq);
    out.push(PoolEnvelope {
        seq: last + 1,
        ts_ms: script.now_ms() + 3_600_500,
        pool_id: None,
        cause: None,
        event: Event::UntrackedEngineStopped {
            pool_id: "beta".into(),
            pid: 4242,
            reason: "engine 4242 (pid file pids/beta.pid) ran unknown to the journal; stopped"
                .into(),
        },
    });
    out
}

/// The `(from_seq, to_seq)` of each loss marker among `envelopes`.
fn loss_ranges(envelopes: &[PoolEnvelope]) -> Vec<(u64, u64)> {
    envelopes
        .iter()
        .filter_map(|e| PoolSchema::loss_range(&e.event))
        .collect()
}

// ---- the tests ------------------------------------------------------------------------------

/// What a fixture reads as today, checked against its expected export; returns the export.
fn check_fixture(version: u8) {
    let records = read_records(&records_path(version));
    assert!(!records.is_empty(), "fixture v{version} is empty");
    for (seq, value) in &records {
        assert_eq!(
            value.first(),
            Some(&version),
            "pool-events-v{version}.records seq {seq} is not a version {version} record"
        );
    }
    // Gap-free, except where a loss marker (format version 3 on) declares seqs lost.
    let last_seq = records.last().map_or(0, |(seq, _)| *seq);
    let tmp = tempfile::tempdir().expect("temp dir");
    write_raw_journal(tmp.path(), version, &records);

    let (journal, report) =
        PoolJournal::open(JournalConfig::new(tmp.path())).expect("open the fixture journal");
    assert!(
        report.quarantined.is_empty(),
        "v{version}: recovery quarantined {:?}",
        report.quarantined
    );
    assert_eq!(report.last_seq, last_seq);
    assert!(journal.verify().is_ok(), "{:?}", journal.verify());

    let envelopes: Vec<_> = journal
        .read_from(1)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("v{version} records do not read back: {e}"));
    assert_eq!(envelopes.len(), records.len());
    let declared_lost: u64 = loss_ranges(&envelopes)
        .iter()
        .map(|(from, to)| to - from)
        .sum();
    assert_eq!(
        records.len() as u64 + declared_lost,
        last_seq,
        "v{version}: seqs are missing that no loss marker declares"
    );
    for (envelope, (seq, raw)) in envelopes.iter().zip(&records) {
        assert_eq!(envelope.seq, *seq);
        if version == EVENT_FORMAT_VERSION {
            let again = pool_journal::encode_record::<PoolSchema>(envelope).expect("re-encode");
            assert!(
                again == *raw,
                "v{version} seq {seq} ({}) does not re-encode to the same bytes:\n  \
                 fixture {}\n  today   {}",
                envelope.event.kind(),
                hex(raw),
                hex(&again)
            );
        }
    }

    let mut exported = Vec::new();
    journal.export(&mut exported).expect("export");
    let expected = std::fs::read(expected_path(version))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", expected_path(version).display()));
    if exported != expected {
        let exported = String::from_utf8_lossy(&exported);
        let expected = String::from_utf8_lossy(&expected);
        let line = exported
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .map_or(
                exported.lines().count().min(expected.lines().count()),
                |i| i,
            );
        panic!(
            "v{version} records read as other events than {} (first difference at line {}):\n  \
             expected {}\n  today    {}",
            expected_path(version).display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("(end)"),
            exported.lines().nth(line).unwrap_or("(end)")
        );
    }

    let replayed = replay(&journal, ReplayLimit::NONE).expect("the fixture replays");
    assert_eq!(replayed.state.last_seq(), last_seq);
    journal.close().expect("close");
    drop(journal);

    let output = Process::new(env!("CARGO_BIN_EXE_pool-managerd"))
        .args(["journal", "verify", "--journal-dir"])
        .arg(tmp.path())
        .env_remove("POOL_MANAGERD_JOURNAL_DIR")
        .output()
        .expect("run pool-managerd journal verify");
    assert!(
        output.status.success(),
        "journal verify of the v{version} fixture failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_fixture_exists_for_every_format_version_from_the_first() {
    for version in 1..=EVENT_FORMAT_VERSION {
        for path in [records_path(version), expected_path(version)] {
            assert!(
                path.exists(),
                "{} is missing: every format version keeps a journal (see the header of \
                 tests/formats.rs)",
                path.display()
            );
        }
    }
}

#[test]
fn every_fixture_reads_back_as_its_expected_events() {
    for version in 1..=EVENT_FORMAT_VERSION {
        check_fixture(version);
    }
}

#[test]
fn each_fixture_holds_every_event_kind_of_its_version() {
    for version in 1..=EVENT_FORMAT_VERSION {
        let records = read_records(&records_path(version));
        let tmp = tempfile::tempdir().expect("temp dir");
        write_raw_journal(tmp.path(), version, &records);
        let (journal, _) = PoolJournal::open(JournalConfig::new(tmp.path())).expect("open");
        let kinds: BTreeSet<&str> = journal
            .read_from(1)
            .map(|envelope| envelope.expect("decodes").event.kind())
            .collect();
        let missing: Vec<_> = kinds_of_version(version)
            .difference(&kinds)
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "pool-events-v{version}.records lacks {missing:?}"
        );
    }
}

/// Format version 3's loss marker: the v3 fixture holds one, at the last seq of a range of
/// seqs absent from the records, and the schema reads its range back (`loss_range` answers for
/// it alone); the timeline says what was lost.
#[test]
fn the_v3_fixture_holds_an_accepted_loss_with_its_gap() {
    let records = read_records(&records_path(3));
    let tmp = tempfile::tempdir().expect("temp dir");
    write_raw_journal(tmp.path(), 3, &records);
    let (journal, _) = PoolJournal::open(JournalConfig::new(tmp.path())).expect("open");
    let envelopes: Vec<PoolEnvelope> = journal
        .read_from(1)
        .collect::<Result<_, _>>()
        .expect("the v3 fixture reads back");
    let markers: Vec<&PoolEnvelope> = envelopes
        .iter()
        .filter(|e| matches!(e.event, Event::JournalLossAccepted { .. }))
        .collect();
    assert_eq!(markers.len(), 1, "one loss marker in the v3 fixture");
    let marker = markers[0];
    let Event::JournalLossAccepted {
        from_seq,
        to_seq,
        reason,
    } = &marker.event
    else {
        unreachable!("filtered above")
    };
    assert_eq!(
        marker.seq, *to_seq,
        "the marker stands at the last lost seq"
    );
    // As written in version 3's fixture (history: these do not follow later changes of the
    // scenario).
    let v3_reason = "records unreadable after a disk fault; accepted by ops:jun";
    assert_eq!((*from_seq, *to_seq), (63, 65));
    assert_eq!(reason, v3_reason);
    assert_eq!(marker.pool_id, None, "a node event");
    assert!(marker.event.is_node_event());
    let seqs: BTreeSet<u64> = records.iter().map(|(seq, _)| *seq).collect();
    for lost in *from_seq..*to_seq {
        assert!(
            !seqs.contains(&lost),
            "seq {lost} is declared lost yet present"
        );
    }
    assert!(seqs.contains(&(from_seq - 1)) && seqs.contains(&(to_seq + 1)));
    assert_eq!(loss_ranges(&envelopes), vec![(*from_seq, *to_seq)]);
    assert_eq!(
        PoolSchema::loss_accepted(*from_seq, *to_seq, v3_reason).as_ref(),
        Some(&marker.event)
    );
    let line = timeline_line(marker);
    let words = format!("journal loss accepted: seqs {from_seq}..={to_seq} lost ({v3_reason})");
    assert!(line.contains(&words), "timeline line: {line}");
    assert!(
        line.contains("JournalLossAccepted"),
        "timeline line: {line}"
    );
    // The replayed registry is the fold of what was kept: the marker itself changes nothing
    // but `last_seq`.
    let replayed = replay(&journal, ReplayLimit::NONE).expect("replays");
    assert_eq!(replayed.state.last_seq(), records.last().map_or(0, |r| r.0));
    journal.close().expect("close");
}

/// The scenario that writes the next fixture must cover every kind of today's format, so
/// that the next version's fixture is complete: checked now, not when it is too late.
#[test]
fn the_fixture_scenario_covers_every_current_event_kind() {
    let envelopes = fixture_envelopes(&scenario());
    let kinds: BTreeSet<&str> = envelopes.iter().map(|e| e.event.kind()).collect();
    let expected = kinds_of_version(EVENT_FORMAT_VERSION);
    let missing: Vec<_> = expected.difference(&kinds).copied().collect();
    assert!(missing.is_empty(), "the scenario lacks {missing:?}");
    // A new variant of `Event` must be listed in `kinds_of_version` (and so in the scenario).
    let unknown: Vec<_> = kinds.difference(&expected).copied().collect();
    assert!(unknown.is_empty(), "kinds_of_version lacks {unknown:?}");
}

/// Writes `pool-events-vN.records` and `.expected.ndjson` for N = the current format version.
/// Run once per new version (see the header); it refuses to overwrite an existing fixture.
#[test]
#[ignore = "writes a checked-in fixture; run once per new format version, never again"]
fn write_fixture_of_the_current_format_version() {
    if std::env::var(WRITE_ENV).ok().as_deref() != Some("1") {
        eprintln!("{WRITE_ENV} is not 1: nothing written");
        return;
    }
    let version = EVENT_FORMAT_VERSION;
    let records_file = records_path(version);
    assert!(
        !records_file.exists(),
        "{} exists: a format version's fixture is history and is never regenerated; bump \
         EVENT_FORMAT_VERSION to write a new one beside it",
        records_file.display()
    );
    let envelopes = fixture_envelopes(&scenario());
    let tmp = tempfile::tempdir().expect("temp dir");
    // A loss marker's draft takes the seq `to_seq` of its range (as an import of a repaired
    // journal does), so every event keeps the seq it has in `envelopes`.
    let drafts: Vec<Draft<Event>> = envelopes.iter().cloned().map(Draft::from).collect();
    let mut expected = Vec::new();
    {
        let (journal, _) = PoolJournal::open(JournalConfig::new(tmp.path())).expect("open");
        let appended = journal.append_blocking(drafts).expect("append");
        assert_eq!(appended, envelopes);
        journal.export(&mut expected).expect("export");
        journal.close().expect("close");
    }
    let store =
        SledStore::open(&pool_journal::live_store_dir(tmp.path()), CACHE_BYTES).expect("raw store");
    let mut out = format!(
        "# pool-managerd journal, event format version {version}: one record per line, \
         seq<TAB>hex(raw record value = version | crc32c LE | bincode envelope).\n\
         # Written by tests/formats.rs (write_fixture_of_the_current_format_version). History: \
         never regenerate or edit; add a new version beside it.\n"
    );
    for envelope in &envelopes {
        let raw = store
            .get(envelope.seq)
            .expect("read the raw record")
            .expect("the record is present");
        out.push_str(&format!("{}\t{}\n", envelope.seq, hex(&raw)));
    }
    std::fs::write(&records_file, out).expect("write the records fixture");
    std::fs::write(expected_path(version), expected).expect("write the expected export");
    eprintln!(
        "wrote {} ({} records) and {}",
        records_file.display(),
        envelopes.len(),
        expected_path(version).display()
    );
}
