//! The node's GPUs (SPEC section 10) as the scenarios describe them, and what placement did.
//!
//! A node with GPUs reads them from a JSON fixture (`pool_managerd::gpu::FixtureInventory`, a
//! testing aid) in the scenario's directory ([`GPU_FIXTURE_FILE`]), or, in the run over NVML,
//! through the fake NVML library, whose scenario file every rewrite of the fixture also
//! writes (the translation is `gpu_source.rs`'s); steps that make NVML calls fail run only
//! there (`@nvml`). `Given the node's GPUs
//! are:` describes them (names, total and free VRAM, MIG devices) before the daemon starts;
//! the `When` steps rewrite the file while it runs (the daemon reads it again every
//! `[gpu] poll_interval_ms`): an engine listed on a GPU, less free VRAM, an Xid, the GPUs gone
//! and back. A rewrite replaces the file at once (a rename), so a reading never sees half a
//! file. Steps that wait for the daemon to see a change look at the published registry (what
//! preloads are decided against), not only at `GET /v2/gpus` (which shows a reading before its
//! observations are journaled).
//!
//! What placement did is read from the engine itself: `/proc/<pid>/environ`
//! (`CUDA_VISIBLE_DEVICES`, `CUDA_DEVICE_ORDER`) and `/proc/<pid>/cmdline` (`--tensor-split`).

use std::path::PathBuf;
use std::time::Instant;

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use pool_managerd::core::{GpuInfo, MigDeviceInfo, State};
use pool_managerd::gpu::{simulated_gpus, Gpu, GpuProcess, MigDevice};
use reqwest::Method;
use serde_json::{json, Value};

use crate::engines::EngineProcess;
use crate::gpu_source;
use crate::live::{Body, GPU_FIXTURE_FILE};
use crate::steps::params::list;
use crate::world::{PoolWorld, EVENTUALLY, POLL};

/// The Xid NVIDIA documents for a double-bit ECC error (as the daemon reports one).
const XID_DOUBLE_BIT_ECC: u32 = 48;
/// Ratios of an `"auto"` split are planned in steps of `1 / SPLIT_UNITS`.
const SPLIT_UNITS: u64 = pool_managerd::core::gpu::SPLIT_UNITS as u64;

/// `80 GiB`, `12.5 GiB`, `512 MiB`, `1 PiB`, `4096 bytes` -> bytes.
fn bytes(text: &str) -> u64 {
    let (number, unit) = text
        .trim()
        .split_once(char::is_whitespace)
        .unwrap_or((text.trim(), "bytes"));
    let scale: f64 = match unit.trim() {
        "bytes" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0_f64.powi(4),
        "PiB" => 1024.0_f64.powi(5),
        other => panic!("{text:?}: unknown unit {other:?} (bytes, KiB, MiB, GiB, TiB, PiB)"),
    };
    let number: f64 = number
        .parse()
        .unwrap_or_else(|e| panic!("{text:?}: not a size ({e})"));
    (number * scale).round() as u64
}

/// The rows of a step's table as maps from its header row's names.
fn rows(step: &Step, columns: &[&str]) -> Vec<std::collections::BTreeMap<String, String>> {
    let table = step
        .table
        .as_ref()
        .unwrap_or_else(|| panic!("the step needs a table with the columns {columns:?}"));
    let (header, body) = table
        .rows
        .split_first()
        .unwrap_or_else(|| panic!("the table needs a header row {columns:?}"));
    for column in columns {
        assert!(
            header.iter().any(|h| h == column),
            "the table needs a column {column:?}, has {header:?}"
        );
    }
    body.iter()
        .map(|row| {
            assert_eq!(row.len(), header.len(), "row {row:?} against {header:?}");
            header.iter().cloned().zip(row.iter().cloned()).collect()
        })
        .collect()
}

/// The fixture file of the scenario's node.
fn fixture_file(world: &mut PoolWorld) -> PathBuf {
    world.dir().join(GPU_FIXTURE_FILE)
}

/// The GPUs the scenario described (or the simulated ones of `gpus`), as the daemon started.
fn described(world: &PoolWorld) -> Vec<Gpu> {
    let setup = world.setup();
    match (&setup.gpu_fixture, setup.gpus) {
        (Some(gpus), _) => gpus.clone(),
        (None, Some(count)) => simulated_gpus(count),
        (None, None) => {
            panic!("the node has no GPU: describe them with `Given the node's GPUs are:`")
        }
    }
}

/// The fixture as it is now, as JSON (with the Xids and driver resets it lists).
fn read_fixture_value(world: &mut PoolWorld) -> Value {
    let file = fixture_file(world);
    let text = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Replaces the fixture at once (written aside, then renamed over it).
fn write_fixture(world: &mut PoolWorld, gpus: &[Gpu]) {
    let value = serde_json::to_value(gpus).unwrap_or_else(|e| panic!("fixture: {e}"));
    publish(world, &value);
}

/// Replaces the fixture with `fixture` at once (written aside, then renamed over it), and,
/// when the daemon reads its GPUs through the fake NVML library, the library's scenario with
/// its translation (`gpu_source.rs`).
fn publish(world: &mut PoolWorld, fixture: &Value) {
    let file = fixture_file(world);
    let aside = file.with_extension("json.new");
    let text = serde_json::to_vec_pretty(fixture).unwrap_or_else(|e| panic!("fixture: {e}"));
    std::fs::write(&aside, text).unwrap_or_else(|e| panic!("{}: {e}", aside.display()));
    std::fs::rename(&aside, &file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    if world.setup().fake_nvml.is_some() {
        let setup = world.setup();
        let (ecc, errors) = (setup.ecc_xids.clone(), setup.nvml_lines.clone());
        gpu_source::write_scenario(world.dir(), fixture, &ecc, &errors);
    }
}

/// Changes GPU `index` of the fixture as JSON (its Xids and driver resets) and publishes it.
fn change_gpu_value(world: &mut PoolWorld, index: u32, change: impl FnOnce(&mut Value)) {
    let mut value = read_fixture_value(world);
    let gpu = value
        .as_array_mut()
        .and_then(|list| list.iter_mut().find(|g| g["index"] == index))
        .unwrap_or_else(|| panic!("the fixture has no GPU {index}"));
    change(gpu);
    publish(world, &value);
}

/// Rewrites GPU `index` of the fixture with `change` (the Xids and driver resets it lists
/// stay).
fn change_gpu(world: &mut PoolWorld, index: u32, change: impl FnOnce(&mut Gpu)) {
    change_gpu_value(world, index, |value| {
        let mut gpu: Gpu = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("GPU {index} of the fixture: {e}: {value}"));
        change(&mut gpu);
        let mut changed = serde_json::to_value(&gpu).unwrap_or_else(|e| panic!("fixture: {e}"));
        for faults in ["xids", "driver_resets"] {
            if let Some(kept) = value.get(faults) {
                changed[faults] = kept.clone();
            }
        }
        *value = changed;
    });
}

/// Polls the daemon's published registry until `holds`; fails after [`EVENTUALLY`].
async fn registry_becomes(world: &PoolWorld, what: &str, holds: impl Fn(&State) -> bool) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let state = world.daemon().state();
        if holds(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not record {what} within {EVENTUALLY:?}: GPUs {:?}, preflight error {:?}",
            state.node.gpus,
            state.node.preflight_error
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The engine the daemon spawned for `pool`, once it has (a preload without waiting answers
/// before the spawn is journaled).
async fn spawned_engine(world: &PoolWorld, pool: &str) -> EngineProcess {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(engine) = world.engines_of(pool).await.last() {
            return *engine;
        }
        assert!(
            Instant::now() < deadline,
            "no engine was spawned for pool '{pool}' within {EVENTUALLY:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The arguments of the running engine of `pool` after the program.
async fn engine_args(world: &PoolWorld, pool: &str) -> Vec<String> {
    let engine = world.engine_of(pool).await;
    assert!(
        engine.is_running(),
        "the engine of pool '{pool}' (pid {}) should be running",
        engine.pid
    );
    engine.cmdline().into_iter().skip(1).collect()
}

/// The values following each `--tensor-split` (or `-ts`) in `args`.
fn tensor_splits(args: &[String]) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == "--tensor-split" || w[0] == "-ts")
        .map(|w| w[1].clone())
        .chain(
            args.iter()
                .filter_map(|a| a.strip_prefix("--tensor-split="))
                .map(str::to_string),
        )
        .collect()
}

/// llama.cpp's `--tensor-split` value of `units` (of [`SPLIT_UNITS`]): 4 decimals at most,
/// trailing zeros dropped (`6250` -> `0.625`, `10000` -> `1`).
fn ratio_text(units: u64) -> String {
    let (whole, frac) = (units / SPLIT_UNITS, units % SPLIT_UNITS);
    if frac == 0 {
        return whole.to_string();
    }
    format!("{whole}.{}", format!("{frac:04}").trim_end_matches('0'))
}

/// The split proportional to `free` (SPEC section 10): each GPU gets `⌊U · f_i / F⌋` units,
/// and the units left go to the largest remainders (ties: mask order).
fn proportional_split(free: &[u64]) -> String {
    let total: u128 = free.iter().map(|f| u128::from(*f)).sum();
    assert!(
        total > 0,
        "the GPUs of the mask have no free VRAM: {free:?}"
    );
    let units = u128::from(SPLIT_UNITS);
    let mut plan: Vec<(usize, u128, u128)> = free
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let scaled = units * u128::from(*f);
            (i, scaled / total, scaled % total)
        })
        .collect();
    let mut left = units - plan.iter().map(|p| p.1).sum::<u128>();
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by(|a, b| plan[*b].2.cmp(&plan[*a].2).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        plan[i].1 += 1;
        left -= 1;
    }
    plan.iter()
        .map(|p| ratio_text(u64::try_from(p.1).unwrap_or(SPLIT_UNITS)))
        .collect::<Vec<_>>()
        .join(",")
}

// ------------------------------------------------------------------------------- the node

/// `| index | uuid | name | vram_total | vram_free |` (sizes such as `80 GiB`), and optionally
/// `compute_capability` (default 9.0).
#[given("the node's GPUs are:")]
fn node_gpus(world: &mut PoolWorld, step: &Step) {
    let gpus = rows(step, &["index", "uuid", "name", "vram_total", "vram_free"])
        .into_iter()
        .map(|row| Gpu {
            info: GpuInfo {
                index: row["index"]
                    .parse()
                    .unwrap_or_else(|e| panic!("index {:?}: {e}", row["index"])),
                uuid: row["uuid"].clone(),
                name: row["name"].clone(),
                compute_capability: row
                    .get("compute_capability")
                    .cloned()
                    .unwrap_or_else(|| "9.0".to_string()),
                vram_total_bytes: bytes(&row["vram_total"]),
                vram_free_bytes: bytes(&row["vram_free"]),
            },
            mig_devices: Vec::new(),
            processes: Vec::new(),
        })
        .collect();
    world.setup_mut().gpu_fixture = Some(gpus);
}

/// `| uuid | name | vram_total | vram_free |`: MIG devices (slices) of a described GPU.
#[given(expr = "GPU {int} has the MIG devices:")]
fn mig_devices(world: &mut PoolWorld, index: u32, step: &Step) {
    let devices: Vec<MigDevice> = rows(step, &["uuid", "name", "vram_total", "vram_free"])
        .into_iter()
        .map(|row| MigDevice {
            info: MigDeviceInfo {
                uuid: row["uuid"].clone(),
                parent_index: index,
                name: row["name"].clone(),
                vram_total_bytes: bytes(&row["vram_total"]),
                vram_free_bytes: bytes(&row["vram_free"]),
            },
            processes: Vec::new(),
        })
        .collect();
    let gpus = world
        .setup_mut()
        .gpu_fixture
        .as_mut()
        .unwrap_or_else(|| panic!("describe the GPUs first (`Given the node's GPUs are:`)"));
    let gpu = gpus
        .iter_mut()
        .find(|g| g.info.index == index)
        .unwrap_or_else(|| panic!("no GPU {index} was described"));
    gpu.mig_devices = devices;
}

#[when("the node's GPUs disappear")]
fn gpus_disappear(world: &mut PoolWorld) {
    write_fixture(world, &[]);
}

#[when("the node's GPUs return")]
fn gpus_return(world: &mut PoolWorld) {
    let gpus = described(world);
    write_fixture(world, &gpus);
}

/// Lists the engine of `pool` (once spawned) as a compute process on GPU `index`.
#[when(expr = "the GPUs list the engine of pool {string} on GPU {int} using {int} MiB")]
async fn engine_on_gpu(world: &mut PoolWorld, pool: String, index: u32, mib: u64) {
    let engine = spawned_engine(world, &pool).await;
    change_gpu(world, index, |gpu| {
        gpu.processes.push(GpuProcess {
            pid: engine.pid,
            used_bytes: mib << 20,
            pool_id: None,
        });
    });
}

/// The driver has given back the memory of the engines of `pool` on GPU `index`: none of
/// them is listed any more, and the GPU shows `gib` GiB free.
#[when(expr = "GPU {int} lists no engine of pool {string} any more and has {int} GiB free")]
async fn engine_memory_back(world: &mut PoolWorld, index: u32, pool: String, gib: u64) {
    let pids: Vec<u32> = world
        .engines_of(&pool)
        .await
        .iter()
        .map(|e| e.pid)
        .collect();
    change_gpu(world, index, |gpu| {
        gpu.processes.retain(|p| !pids.contains(&p.pid));
        gpu.info.vram_free_bytes = gib << 30;
    });
}

/// Lowers the free VRAM of GPU `index` and waits until the daemon has recorded it (so that
/// the next preload is decided against it).
#[when(expr = "the free VRAM of GPU {int} drops to {int} GiB")]
async fn free_vram_drops(world: &mut PoolWorld, index: u32, gib: u64) {
    let free = gib << 30;
    change_gpu(world, index, |gpu| gpu.info.vram_free_bytes = free);
    registry_becomes(world, &format!("{gib} GiB free on GPU {index}"), |state| {
        state
            .node
            .gpus
            .iter()
            .any(|g| g.index == index && g.vram_free_bytes == free)
    })
    .await;
}

/// Appends Xid `xid` to GPU `index`'s list in the fixture (each appended Xid is reported
/// once; over NVML, an Xid event of the GPU's event set).
#[when(expr = "the driver reports Xid {int} on GPU {int}")]
fn xid_reported(world: &mut PoolWorld, xid: u32, index: u32) {
    change_gpu_value(world, index, |gpu| {
        match gpu.get_mut("xids").and_then(Value::as_array_mut) {
            Some(xids) => xids.push(json!(xid)),
            None => gpu["xids"] = json!([xid]),
        }
    });
}

/// Counts one more driver reset of GPU `index` in the fixture (each reported once; over
/// NVML, the GPU's event wait answers "GPU is lost" once).
#[when(expr = "the driver reports a reset of GPU {int}")]
fn reset_reported(world: &mut PoolWorld, index: u32) {
    change_gpu_value(world, index, |gpu| {
        let resets = gpu["driver_resets"].as_u64().unwrap_or(0);
        gpu["driver_resets"] = json!(resets + 1);
    });
}

/// The fake NVML library's `function` fails with the error return `words` (`not supported`,
/// `insufficient permissions`, `GPU is lost`...) from now on. Only over NVML (scenarios tagged
/// `@nvml`): the fixture makes no NVML call to fail.
#[given(expr = "NVML answers {string} to {word}")]
#[when(expr = "NVML answers {string} to {word}")]
fn nvml_answers(world: &mut PoolWorld, words: String, function: String) {
    assert!(
        world.setup().fake_nvml.is_some(),
        "NVML error returns need the fake NVML library: tag the scenario @nvml"
    );
    let code = gpu_source::return_code(&words);
    world
        .nvml_lines_mut()
        .push(format!("error {function} {code}"));
    republish(world);
}

/// The fake NVML library answers every call normally again.
#[when("NVML answers normally again")]
fn nvml_normal(world: &mut PoolWorld) {
    world.nvml_lines_mut().clear();
    republish(world);
}

/// A double-bit ECC error on GPU `index`: the fixture has no ECC events and lists the Xid 48
/// the daemon reports one as; over NVML, an ECC event of the GPU's event set.
#[when(expr = "the driver reports a double-bit ECC error on GPU {int}")]
fn ecc_reported(world: &mut PoolWorld, index: u32) {
    let listed = read_fixture_value(world)
        .as_array()
        .and_then(|gpus| gpus.iter().find(|g| g["index"] == index).cloned())
        .map_or(0, |gpu| gpu["xids"].as_array().map_or(0, Vec::len));
    world.ecc_xids_mut().insert((u64::from(index), listed));
    xid_reported(world, XID_DOUBLE_BIT_ECC, index);
}

/// Writes the GPUs again (with the NVML error returns asked for) once the daemon runs; before
/// it starts, the start writes them.
fn republish(world: &mut PoolWorld) {
    if world.has_daemon() {
        let value = read_fixture_value(world);
        publish(world, &value);
    }
}

/// Waits until the daemon records that no GPU is usable (and, when one is required, the
/// preflight error that refuses preloads), then asks for `/health` (*the answer*).
#[then("the daemon eventually sees no GPU")]
async fn sees_no_gpu(world: &mut PoolWorld) {
    let required = world.daemon().config().require_gpu;
    registry_becomes(world, "that no GPU is usable", |state| {
        state.node.gpus.is_empty() && (!required || state.node.preflight_error.is_some())
    })
    .await;
    world.request(Method::GET, "/health", Body::Empty).await;
}

/// Waits until the daemon records `count` GPUs and no preflight error, then asks for
/// `/health` (*the answer*).
#[then(expr = "the daemon eventually sees {int} GPU(s)")]
async fn sees_gpus(world: &mut PoolWorld, count: usize) {
    registry_becomes(world, &format!("{count} usable GPU(s)"), |state| {
        state.node.gpus.len() == count && state.node.preflight_error.is_none()
    })
    .await;
    world.request(Method::GET, "/health", Body::Empty).await;
}

/// The answer (of `GET /v2/gpus`) lists exactly the described GPUs: index, uuid, name, total
/// and free VRAM, and their MIG devices.
#[then("the answer lists the node's GPUs")]
fn answer_lists_gpus(world: &mut PoolWorld) {
    let expected = described(world);
    let answer = world.answer().body.clone();
    let listed = answer
        .as_array()
        .unwrap_or_else(|| panic!("GET /v2/gpus should answer a list: {answer}"));
    assert_eq!(listed.len(), expected.len(), "{answer}");
    for (seen, gpu) in listed.iter().zip(&expected) {
        let info = &gpu.info;
        assert_eq!(seen["index"], info.index, "{seen}");
        assert_eq!(seen["uuid"], info.uuid.as_str(), "{seen}");
        assert_eq!(seen["name"], info.name.as_str(), "{seen}");
        assert_eq!(seen["vram_total_bytes"], info.vram_total_bytes, "{seen}");
        assert_eq!(seen["vram_free_bytes"], info.vram_free_bytes, "{seen}");
        let migs: Vec<&str> = seen["mig_devices"]
            .as_array()
            .map(|m| m.iter().filter_map(|d| d["uuid"].as_str()).collect())
            .unwrap_or_default();
        let expected_migs: Vec<&str> = gpu
            .mig_devices
            .iter()
            .map(|m| m.info.uuid.as_str())
            .collect();
        assert_eq!(migs, expected_migs, "{seen}");
    }
}

/// `GET /v2/gpus` shows the engine of `pool` on GPU `index`, named as the pool's, and the
/// pool's status shows its VRAM (the observation loop).
#[then(expr = "the GPUs show the engine of pool {string} on GPU {int} using {int} MiB")]
async fn gpus_show_engine(world: &mut PoolWorld, pool: String, index: u32, mib: u64) {
    let engine = world.engine_of(&pool).await;
    let used = mib << 20;
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let answer = world.peek(Method::GET, "/v2/gpus").await;
        let shown = answer
            .body
            .as_array()
            .and_then(|gpus| gpus.iter().find(|g| g["index"] == index))
            .and_then(|gpu| gpu["processes"].as_array())
            .is_some_and(|processes| {
                processes.iter().any(|p| {
                    p["pid"] == engine.pid
                        && p["used_bytes"] == used
                        && p["pool_id"] == pool.as_str()
                })
            });
        let status = world.live_status(&pool).await;
        if shown
            && status
                .as_ref()
                .is_some_and(|s| s.vram_used_bytes == Some(used))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GPU {index} should show engine pid {} of pool '{pool}' using {used} bytes: {}; status {status:?}",
            engine.pid,
            answer.body
        );
        tokio::time::sleep(POLL).await;
    }
}

// ------------------------------------------------------------------------------- models

/// A model file of `gib` GiB in the scenario's `models/` directory: sparse (its size is what
/// a `stat` says; no disk is used).
#[given(expr = "a model file {string} of {int} GiB")]
fn sized_model(world: &mut PoolWorld, name: String, gib: u64) {
    let dir = world.dir().join("models");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(&name);
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.set_len(gib << 30)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The prepared engine serves a model file of the scenario (`model_path` and engine-sim's
/// `-m`).
#[given(expr = "the prepared engine of pool {string} serves the model file {string}")]
fn serves_model_file(world: &mut PoolWorld, pool: String, name: String) {
    let path = world.dir().join("models").join(&name);
    assert!(path.is_file(), "no model file {}", path.display());
    let path = path.display().to_string();
    let prepared = world.prepared_mut(&pool);
    prepared["model_path"] = json!(path);
    if let Some(flags) = prepared["flags"].as_array_mut() {
        if let Some(i) = flags.iter().position(|f| f == "-m") {
            if let Some(value) = flags.get_mut(i + 1) {
                *value = json!(path);
            }
        }
    }
}

// ------------------------------------------------------------------------------- placement

/// Prepares an engine-sim for `pool` with `device_mask` = `mask` and preloads it to ready.
#[given(expr = "pool {string} is ready with an engine-sim on the device mask {string}")]
async fn ready_on_mask(world: &mut PoolWorld, pool: String, mask: String) {
    world.prepare_engine_sim(&pool, "");
    world.prepared_mut(&pool)["device_mask"] = json!(mask);
    world.preload_ready(&pool).await;
}

/// Nothing was spawned for `pool`: no pool, or one without `EngineStartRequested` /
/// `EngineSpawned`; and no pid file.
#[then(expr = "no engine was started for pool {string}")]
async fn no_engine_started(world: &mut PoolWorld, pool: String) {
    let answer = world
        .peek(Method::GET, &format!("/v2/pools/{pool}/events"))
        .await;
    match answer.status {
        404 => {}
        200 => {
            let kinds: Vec<&str> = answer
                .body
                .as_array()
                .map(|events| {
                    events
                        .iter()
                        .filter_map(|e| e["event"]["kind"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                !kinds
                    .iter()
                    .any(|k| *k == "EngineSpawned" || *k == "EngineStartRequested"),
                "pool '{pool}' should have started nothing: {kinds:?}"
            );
        }
        other => panic!(
            "GET /v2/pools/{pool}/events answered {other}: {}",
            answer.body
        ),
    }
    let pid_file = world.runtime_dir().join("pids").join(format!("{pool}.pid"));
    assert!(
        !pid_file.exists(),
        "{} should not exist",
        pid_file.display()
    );
}

#[then(
    expr = "the engine of pool {string} runs with CUDA_VISIBLE_DEVICES {string} and CUDA_DEVICE_ORDER {string}"
)]
async fn engine_cuda_env(world: &mut PoolWorld, pool: String, visible: String, order: String) {
    let engine = world.engine_of(&pool).await;
    assert!(
        engine.is_running(),
        "the engine of pool '{pool}' should run"
    );
    let env = engine.environment();
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("/proc/{}/environ has no {name}: {env:?}", engine.pid))
    };
    assert_eq!(get("CUDA_VISIBLE_DEVICES"), visible, "pid {}", engine.pid);
    assert_eq!(get("CUDA_DEVICE_ORDER"), order, "pid {}", engine.pid);
}

#[then(expr = "the engine of pool {string} was started with --tensor-split {string}")]
async fn started_with_split(world: &mut PoolWorld, pool: String, split: String) {
    let args = engine_args(world, &pool).await;
    assert_eq!(
        tensor_splits(&args),
        vec![split],
        "exactly one --tensor-split in the command line: {args:?}"
    );
}

/// The expected ratios are computed from the free VRAM of the described GPUs of `indexes`.
#[then(
    expr = "the engine of pool {string} was started with a --tensor-split proportional to the free VRAM of GPUs {string}"
)]
async fn started_with_proportional_split(world: &mut PoolWorld, pool: String, indexes: String) {
    let gpus = described(world);
    let free: Vec<u64> = list(&indexes)
        .iter()
        .map(|i| {
            let index: u32 = i.parse().unwrap_or_else(|e| panic!("GPU index {i:?}: {e}"));
            gpus.iter()
                .find(|g| g.info.index == index)
                .unwrap_or_else(|| panic!("no GPU {index} was described"))
                .info
                .vram_free_bytes
        })
        .collect();
    let expected = proportional_split(&free);
    let args = engine_args(world, &pool).await;
    assert_eq!(
        tensor_splits(&args),
        vec![expected.clone()],
        "a --tensor-split of {expected} (free VRAM {free:?}) in the command line: {args:?}"
    );
}

#[then(expr = "the engine of pool {string} was started without --tensor-split")]
async fn started_without_split(world: &mut PoolWorld, pool: String) {
    let args = engine_args(world, &pool).await;
    assert!(tensor_splits(&args).is_empty(), "no split asked: {args:?}");
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--tensor-split") || a == "-ts"),
        "{args:?}"
    );
}

/// The pool's engine was stopped for a reason: not ready, with `text` in its last error.
#[then(expr = "pool {string} becomes unready with a last error containing {string}")]
async fn unready_with_error(world: &mut PoolWorld, pool: String, text: String) {
    world
        .status_becomes(
            &pool,
            &format!("unready with a last error containing {text:?}"),
            |s| {
                s.is_some_and(|s| {
                    !s.ready && s.last_error.as_deref().is_some_and(|e| e.contains(&text))
                })
            },
        )
        .await;
}

/// The prepared engine's own flags, as a provisioner wrote them.
#[given(expr = "the prepared engine of pool {string} has the flags {string} appended")]
fn flags_appended(world: &mut PoolWorld, pool: String, extra: String) {
    let prepared = world.prepared_mut(&pool);
    let flags = prepared["flags"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("prepared engine without flags"));
    flags.extend(
        extra
            .split_whitespace()
            .map(|f| Value::String(f.to_string())),
    );
}

/// A JSON list as written in a step (`[0.7, 0.3]`): the `{json}` parameter takes scalars only.
fn json_list(text: &str) -> Value {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    assert!(value.is_array(), "{text:?} is not a JSON list");
    value
}

/// `tensor_split` as a list of ratios (`"auto"` is a string: the `{json}` step sets it).
#[given(regex = r#"^the prepared engine of pool "([^"]*)" has "tensor_split" set to (\[.*\])$"#)]
fn prepared_ratios(world: &mut PoolWorld, pool: String, ratios: String) {
    world.prepared_mut(&pool)["tensor_split"] = json_list(&ratios);
}

/// The last event of `kind` in the pool's history has a list at `path` (the engine as the
/// daemon recorded it, with an "auto" split planned).
#[then(regex = r#"^the last "([^"]*)" of pool "([^"]*)" has "([^"]*)" (\[.*\])$"#)]
async fn last_event_has_list(
    world: &mut PoolWorld,
    kind: String,
    pool: String,
    path: String,
    expected: String,
) {
    let expected = json_list(&expected);
    let events = world.events(&pool).await;
    let event = events
        .iter()
        .rev()
        .find(|e| e["event"]["kind"] == kind.as_str())
        .unwrap_or_else(|| panic!("no {kind} among the events of pool '{pool}': {events:?}"));
    assert_eq!(
        crate::steps::params::at(&event["event"], &path),
        &expected,
        "{path} of the last {kind} of pool '{pool}': {event}"
    );
}

/// The UUID of GPU `index` as the scenario described it.
fn uuid_of(world: &PoolWorld, index: u32) -> String {
    described(world)
        .into_iter()
        .find(|gpu| gpu.info.index == index)
        .map(|gpu| gpu.info.uuid)
        .unwrap_or_else(|| panic!("the node has no GPU {index}"))
}

/// Waits until the daemon has recorded `count` Xids in all.
#[then(expr = "the daemon records {int} Xid(s)")]
async fn records_xids(world: &mut PoolWorld, count: u64) {
    registry_becomes(world, &format!("{count} Xids"), |state| {
        state.node.xid_total == count
    })
    .await;
}

/// Waits until GPU `index` is quarantined in the registry, then checks that `GET /v2/gpus`
/// says so.
#[then(expr = "GPU {int} is quarantined")]
async fn quarantined(world: &mut PoolWorld, index: u32) {
    let uuid = uuid_of(world, index);
    registry_becomes(world, &format!("the quarantine of GPU {index}"), |state| {
        state.node.quarantined.contains_key(&uuid)
    })
    .await;
    quarantined_in_api(world, &uuid, index, true).await;
}

/// `GET /v2/gpus` shows GPU `index` (`uuid`) with `quarantined` = `expected`.
async fn quarantined_in_api(world: &mut PoolWorld, uuid: &str, index: u32, expected: bool) {
    let answer = world.request(Method::GET, "/v2/gpus", Body::Empty).await;
    let gpu = answer
        .body
        .as_array()
        .and_then(|gpus| gpus.iter().find(|gpu| gpu["uuid"].as_str() == Some(uuid)));
    assert_eq!(
        gpu.map(|gpu| gpu["quarantined"].clone()),
        Some(json!(expected)),
        "GPU {index} in GET /v2/gpus: {}",
        answer.body
    );
}

/// GPU `index` is not quarantined now, in the registry and in `GET /v2/gpus` (asked after
/// the faults it would be quarantined by were recorded: the decision is in their batch).
#[then(expr = "GPU {int} is not quarantined")]
async fn not_quarantined(world: &mut PoolWorld, index: u32) {
    let uuid = uuid_of(world, index);
    let state = world.daemon().state();
    assert!(
        !state.node.quarantined.contains_key(&uuid),
        "GPU {index} is quarantined: {:?}",
        state.node.quarantined
    );
    quarantined_in_api(world, &uuid, index, false).await;
}

/// `POST /v2/gpus/{uuid}/unquarantine` for GPU `index` (*the answer*).
#[when(expr = "GPU {int} is unquarantined over the API")]
async fn unquarantined(world: &mut PoolWorld, index: u32) {
    let uuid = uuid_of(world, index);
    let path = format!("/v2/gpus/{uuid}/unquarantine");
    world.request(Method::POST, &path, Body::Empty).await;
}

/// The node's last `kind` event about GPU `index` (among the newest of the journal), once
/// recorded, has `field` = `value`.
#[then(expr = "the node's events record {string} of GPU {int} with {string} {json}")]
async fn node_event_records(
    world: &mut PoolWorld,
    kind: String,
    index: u32,
    field: String,
    value: crate::steps::params::Json,
) {
    let uuid = uuid_of(world, index);
    // Awaited: a reading's faults are submitted after its inventory, which the step before
    // may have waited for.
    let deadline = Instant::now() + EVENTUALLY;
    let event = loop {
        let answer = world.request(Method::GET, "/v2/events", Body::Empty).await;
        let found = answer
            .body
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .find(|e| {
                e["event"]["kind"] == kind.as_str() && e["event"]["gpu_uuid"] == uuid.as_str()
            });
        if let Some(event) = found {
            break event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} of GPU {index} among the node's events within {EVENTUALLY:?}: {}",
            answer.body
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(event["event"][&field], value.0, "{field} of {event}");
}
