//! GPU placement of a preload (issue 7, items 3 to 5): device masks resolved against the
//! inventory (GPUs and MIG devices), no two pools on one GPU unless sharing is allowed, VRAM
//! and host RAM fit, and the tensor-split plan frozen into the recorded engine and passed as
//! `--tensor-split`. Unit cases through given/when/then, then properties of the pure planner
//! and the mask resolver.

mod support;

use pool_core::gpu::{
    all_gpus, auto_split_units, format_tensor_split, mask_claims, units_to_ratios, validate_ratios,
    SPLIT_UNITS,
};
use pool_core::*;
use proptest::prelude::*;
use support::*;

const GIB: u64 = 1 << 30;

fn gpu_free(index: u32, uuid: &str, free: u64) -> GpuInfo {
    let mut g = gpu(index, uuid);
    g.vram_free_bytes = free;
    g
}

fn mig(uuid: &str, parent_index: u32, free: u64) -> MigDeviceInfo {
    MigDeviceInfo {
        uuid: uuid.into(),
        parent_index,
        name: "3g.40gb".into(),
        vram_total_bytes: 40 * GIB,
        vram_free_bytes: free,
    }
}

/// A node with GPU 0 (24 GiB free) and GPU 1 (16 GiB free), GPU 1 split into two MIG devices.
fn node() -> Vec<Given> {
    vec![
        (
            "",
            Event::GpuInventoryObserved {
                gpus: vec![
                    gpu_free(0, "GPU-a", 24 * GIB),
                    gpu_free(1, "GPU-b", 16 * GIB),
                ],
            },
        ),
        (
            "",
            Event::MigInventoryObserved {
                devices: vec![mig("MIG-x", 1, 8 * GIB), mig("MIG-y", 1, 6 * GIB)],
            },
        ),
    ]
}

fn with_mask(pool: &str, mask: Option<&str>) -> PreparedEngine {
    let mut e = engine(pool);
    e.device_mask = mask.map(str::to_string);
    e
}

fn preload_with(engine: PreparedEngine, placement: PlacementInputs) -> Input {
    cmd(Command::Preload {
        pool_id: id(&engine.pool_id.clone()),
        engine,
        placement,
    })
}

fn preload(engine: PreparedEngine) -> Input {
    preload_with(engine, PlacementInputs::default())
}

/// `pool` ready with `engine` on top of `history`.
fn ready_with(history: Vec<Given>, pool: &'static str, engine: PreparedEngine) -> Vec<Given> {
    let mut h = history;
    let mut rest = ready(pool, 100);
    if let Some((_, Event::PreloadRequested { engine: e })) = rest.first_mut() {
        **e = engine;
    }
    h.extend(rest);
    h
}

fn spawn_flags(outcome: &support::Outcome) -> Vec<String> {
    outcome
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Spawn { engine, .. } => Some(engine.flags.clone()),
            _ => None,
        })
        .expect("a spawn effect")
}

fn recorded_engine(outcome: &support::Outcome) -> PreparedEngine {
    outcome
        .facts
        .iter()
        .find_map(|f| match &f.event {
            Event::PreloadRequested { engine } => Some((**engine).clone()),
            _ => None,
        })
        .expect("PreloadRequested")
}

// ---- masks ----

#[test]
fn mask_entries_are_named_when_they_do_not_resolve() {
    for (mask, needle) in [
        ("0,,1", "entry 2 is empty"),
        ("0,", "entry 2 is empty"),
        (
            "0,GPU0",
            "'GPU0' names GPU 0 (GPU-a) again (already named by '0')",
        ),
        ("0,gpu-a", "names GPU 0 (GPU-a) again"),
        (
            "0,5",
            "entry '5' is not a GPU or MIG device of this node (GPUs: 0, 1",
        ),
        ("MIG-zzz", "entry 'MIG-zzz' is not a GPU or MIG device"),
        (
            "1,MIG-x",
            "entry 'MIG-x' is a MIG device of GPU 1, which entry '1' names whole",
        ),
        ("GPU-", "entry 'GPU-' is not"),
    ] {
        let r = given(&node())
            .when(preload(with_mask("p1", Some(mask))))
            .then_rejected("INVALID_DEVICE_MASK");
        let text = r.to_string();
        assert!(text.contains(needle), "{mask}: {text}");
        assert!(text.contains("pool 'p1'"), "{text}");
    }
}

#[test]
fn masks_by_index_name_uuid_and_mig_uuid_are_accepted() {
    for mask in [
        "0,1",
        "GPU0,GPU1",
        "GPU-a, gpu-b",
        "MIG-x",
        "MIG-x,MIG-y",
        "0,MIG-y",
    ] {
        given(&node())
            .when(preload(with_mask("p1", Some(mask))))
            .then_kinds(&["PreloadRequested"]);
    }
}

#[test]
fn without_an_inventory_a_mask_is_refused_naming_zero_gpus() {
    // No GPU known (a dev or CPU node): a mask naming any device names one the node lacks.
    for mask in ["7", "0", "GPU0", "MIG-x", "7,,GPU-nope"] {
        let r = given(&[])
            .when(preload(with_mask("p1", Some(mask))))
            .then_rejected("INVALID_DEVICE_MASK");
        let text = r.to_string();
        assert!(text.contains("this node has 0 GPUs"), "{text}");
        assert!(
            text.contains(&format!("invalid device mask '{mask}'")),
            "{text}"
        );
        assert!(text.contains("pool 'p1'"), "{text}");
        assert!(text.contains("remove prepared.device_mask"), "{text}");
    }
}

#[test]
fn without_an_inventory_an_engine_without_a_mask_runs_on_the_cpu() {
    given(&[])
        .when(preload(with_mask("p1", None)))
        .then_kinds(&["PreloadRequested"]);
}

#[test]
fn an_inventory_that_empties_refuses_masks_from_then_on() {
    let h = concat(&[
        node(),
        vec![
            ("", Event::GpuInventoryObserved { gpus: vec![] }),
            ("", Event::MigInventoryObserved { devices: vec![] }),
        ],
    ]);
    given(&h)
        .when(preload(with_mask("p1", Some("0"))))
        .then_rejected("INVALID_DEVICE_MASK");
    given(&h)
        .when(preload(with_mask("p1", None)))
        .then_kinds(&["PreloadRequested"]);
}

#[test]
fn mig_inventory_is_journaled_when_it_changes() {
    let devices = vec![mig("MIG-x", 1, 8 * GIB)];
    let o = given(&[])
        .when(obs(Observation::MigInventory {
            devices: devices.clone(),
        }))
        .then_events(&[Event::MigInventoryObserved {
            devices: devices.clone(),
        }]);
    assert_eq!(o.after.node.mig_devices, devices);
    assert!(Event::MigInventoryObserved { devices: vec![] }.is_node_event());
    o.and()
        .when(obs(Observation::MigInventory { devices }))
        .then_nothing();
}

#[test]
fn an_xid_on_a_gpu_reaches_pools_on_its_mig_devices() {
    let h = ready_with(node(), "p1", with_mask("p1", Some("MIG-x")));
    given(&h)
        .when(obs(Observation::GpuXid {
            gpu_uuid: "GPU-b".into(),
            xid: 79,
        }))
        .then_kinds(&["GpuXidObserved", "EngineStopRequested"]);
    given(&h)
        .when(obs(Observation::GpuXid {
            gpu_uuid: "GPU-a".into(),
            xid: 79,
        }))
        .then_kinds(&["GpuXidObserved"]);
}

// ---- sharing ----

#[test]
fn two_pools_may_not_claim_one_gpu_unless_sharing_is_allowed() {
    let h = ready_with(node(), "p1", with_mask("p1", Some("0")));
    let r = given(&h)
        .when(preload(with_mask("p2", Some("GPU0"))))
        .then_rejected("INVALID_DEVICE_MASK");
    let text = r.to_string();
    assert!(
        text.contains("GPU 0 (GPU-a) is claimed by pool 'p1'"),
        "{text}"
    );
    assert!(text.contains("[gpu] allow_sharing = true"), "{text}");
    // another GPU is fine
    given(&h)
        .when(preload(with_mask("p2", Some("1"))))
        .then_kinds(&["PreloadRequested"]);
    // sharing allowed by config
    given(&h)
        .when(preload_with(
            with_mask("p2", Some("0")),
            PlacementInputs {
                allow_gpu_sharing: true,
                ..PlacementInputs::default()
            },
        ))
        .then_kinds(&["PreloadRequested"]);
    // no mask = every GPU, so it collides too
    let r = given(&h)
        .when(preload(with_mask("p2", None)))
        .then_rejected("INVALID_DEVICE_MASK");
    assert!(r.to_string().contains("(none: every GPU)"), "{r}");
}

#[test]
fn a_pool_without_a_mask_claims_every_gpu() {
    let h = ready_with(node(), "p1", with_mask("p1", None));
    let r = given(&h)
        .when(preload(with_mask("p2", Some("1"))))
        .then_rejected("INVALID_DEVICE_MASK");
    assert!(
        r.to_string()
            .contains("GPU 1 (GPU-b) is claimed by pool 'p1'"),
        "{r}"
    );
}

#[test]
fn a_starting_pool_claims_and_a_stopped_or_failed_one_does_not() {
    let mut starting = node();
    starting.push((
        "p1",
        Event::PreloadRequested {
            engine: Box::new(with_mask("p1", Some("0"))),
        },
    ));
    given(&starting)
        .when(preload(with_mask("p2", Some("0"))))
        .then_rejected("INVALID_DEVICE_MASK");

    let mut stopped = ready_with(node(), "p1", with_mask("p1", Some("0")));
    stopped.push((
        "p1",
        Event::EngineStopRequested {
            reason: StopReason::Requested,
            pid: Some(100),
            grace_ms: 1000,
        },
    ));
    // stopping still holds the GPU
    given(&stopped)
        .when(preload(with_mask("p2", Some("0"))))
        .then_rejected("INVALID_DEVICE_MASK");
    stopped.push((
        "p1",
        Event::EngineStopped {
            pid: 100,
            graceful: true,
        },
    ));
    let o = given(&stopped).when(preload(with_mask("p2", Some("0"))));
    assert_eq!(o.decide().map(|f| f.len()), Ok(1));

    let mut failed = node();
    failed.push((
        "p1",
        Event::PreloadRequested {
            engine: Box::new(with_mask("p1", Some("0"))),
        },
    ));
    failed.push((
        "p1",
        Event::PreloadFailed {
            reason: "spawn failed".into(),
            failure: StartFailure::SpawnFailed,
            cause: ExitReason::Crash,
            pid: None,
        },
    ));
    let state = given(&failed).state;
    let phase = state.status("p1").unwrap().phase;
    let o = given(&failed).when(preload(with_mask("p2", Some("0"))));
    if matches!(phase, Phase::Failed | Phase::Stopped) {
        assert_eq!(o.decide().map(|f| f.len()), Ok(1), "{phase:?}");
    } else {
        // a failed start schedules a restart: the pool still claims its GPU
        assert_eq!(
            o.decide().map_err(|r| r.code().as_str()),
            Err("INVALID_DEVICE_MASK"),
            "{phase:?}"
        );
    }
}

#[test]
fn mig_slices_of_one_gpu_are_separate_claims() {
    let h = ready_with(node(), "p1", with_mask("p1", Some("MIG-x")));
    given(&h)
        .when(preload(with_mask("p2", Some("MIG-y"))))
        .then_kinds(&["PreloadRequested"]);
    let r = given(&h)
        .when(preload(with_mask("p2", Some("MIG-x"))))
        .then_rejected("INVALID_DEVICE_MASK");
    assert!(
        r.to_string()
            .contains("MIG device MIG-x on GPU 1 is claimed by pool 'p1'"),
        "{r}"
    );
    let r = given(&h)
        .when(preload(with_mask("p2", Some("1"))))
        .then_rejected("INVALID_DEVICE_MASK");
    assert!(
        r.to_string()
            .contains("GPU 1 (GPU-b) overlaps MIG device MIG-x on GPU 1, claimed by pool 'p1'"),
        "{r}"
    );
}

#[test]
fn without_an_inventory_cpu_pools_may_run_side_by_side() {
    let h = ready_with(vec![], "p1", with_mask("p1", None));
    given(&h)
        .when(preload(with_mask("p2", None)))
        .then_kinds(&["PreloadRequested"]);
}

// ---- fit ----

#[test]
fn vram_beyond_the_free_vram_of_the_mask_is_refused_with_the_numbers() {
    let mut e = with_mask("p1", Some("0"));
    e.vram_required_bytes = Some(30 * GIB);
    let r = given(&node())
        .when(preload(e.clone()))
        .then_rejected("INSUFFICIENT_VRAM");
    let text = r.to_string();
    assert!(
        text.contains("pool 'p1' needs 32212254720 bytes (30.0 GiB) of VRAM"),
        "{text}"
    );
    assert!(
        text.contains("GPU 0 (GPU-a) has 25769803776 bytes (24.0 GiB) free"),
        "{text}"
    );
    assert!(text.contains("prepared.device_mask"), "{text}");
    assert!(!text.contains("estimated"), "{text}");
    // two GPUs together hold it (no split asked: the engine decides how to spread)
    e.device_mask = Some("0,1".into());
    given(&node())
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    // a MIG device counts its own free memory
    e.device_mask = Some("MIG-x".into());
    e.vram_required_bytes = Some(9 * GIB);
    let r = given(&node())
        .when(preload(e))
        .then_rejected("INSUFFICIENT_VRAM");
    assert!(
        r.to_string().contains("MIG device MIG-x on GPU 1 has"),
        "{r}"
    );
}

#[test]
fn the_model_file_size_is_an_estimate_and_an_explicit_requirement_wins() {
    let e = with_mask("p1", Some("1"));
    let big_file = PlacementInputs {
        model_file_bytes: Some(20 * GIB),
        ..PlacementInputs::default()
    };
    let r = given(&node())
        .when(preload_with(e.clone(), big_file))
        .then_rejected("INSUFFICIENT_VRAM");
    assert!(
        r.to_string()
            .contains("(estimated from the model file size)"),
        "{r}"
    );
    let mut explicit = e;
    explicit.vram_required_bytes = Some(10 * GIB);
    given(&node())
        .when(preload_with(explicit, big_file))
        .then_kinds(&["PreloadRequested"]);
}

#[test]
fn host_ram_is_checked_when_both_sizes_are_known() {
    let mut e = with_mask("p1", Some("0"));
    e.ram_required_bytes = Some(64 * GIB);
    let low = PlacementInputs {
        ram_available_bytes: Some(32 * GIB),
        ..PlacementInputs::default()
    };
    let r = given(&node())
        .when(preload_with(e.clone(), low))
        .then_rejected("INSUFFICIENT_VRAM");
    assert!(matches!(r, Rejection::InsufficientRam { .. }));
    let text = r.to_string();
    assert!(text.contains("host RAM"), "{text}");
    assert!(text.contains("68719476736 bytes (64.0 GiB)"), "{text}");
    assert!(
        text.contains("34359738368 bytes (32.0 GiB) is available"),
        "{text}"
    );
    // also on a node without GPUs (a CPU engine): host RAM is not a GPU check
    let mut cpu = e.clone();
    cpu.device_mask = None;
    given(&[])
        .when(preload_with(cpu, low))
        .then_rejected("INSUFFICIENT_VRAM");
    // unknown availability: not checked
    given(&node())
        .when(preload(e))
        .then_kinds(&["PreloadRequested"]);
}

#[test]
fn a_ready_pool_preloaded_again_is_idempotent_before_any_fit_check() {
    let mut e = with_mask("p1", Some("0"));
    e.vram_required_bytes = Some(20 * GIB);
    let mut h = ready_with(node(), "p1", e.clone());
    // its engine now uses the VRAM it asked for
    h.push((
        "",
        Event::GpuInventoryObserved {
            gpus: vec![
                gpu_free(0, "GPU-a", 4 * GIB),
                gpu_free(1, "GPU-b", 16 * GIB),
            ],
        },
    ));
    given(&h).when(preload(e)).then_nothing();
}

#[test]
fn no_gpu_check_runs_on_restarts() {
    // A pool that crashed restarts with its recorded engine even if the VRAM is now taken.
    let mut e = with_mask("p1", Some("0"));
    e.vram_required_bytes = Some(20 * GIB);
    let mut h = ready_with(node(), "p1", e);
    h.push((
        "",
        Event::GpuInventoryObserved {
            gpus: vec![gpu_free(0, "GPU-a", 0), gpu_free(1, "GPU-b", 0)],
        },
    ));
    let mut sim = Sim::new(&h);
    let kinds = sim.kinds(obs(Observation::EngineExited {
        pool_id: id("p1"),
        pid: 100,
        exit_code: Some(1),
        signal: None,
        reason: ExitReason::Crash,
        detail: "x".into(),
    }));
    assert_eq!(kinds, ["EngineExited", "RestartScheduled"]);
    let token = sim.state.last_seq();
    sim.now_ms += 3_600_000;
    let kinds = sim.kinds(obs(Observation::TimerFired {
        pool_id: id("p1"),
        timer: Timer::Restart,
        token,
    }));
    assert_eq!(kinds, ["EngineStartRequested"]);
}

// ---- split ----

#[test]
fn auto_split_is_planned_from_free_vram_frozen_and_passed_as_a_flag() {
    let mut e = with_mask("p1", Some("0,1"));
    e.tensor_split = Some(TensorSplit::Auto);
    e.vram_required_bytes = Some(20 * GIB);
    let o = given(&node())
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    let recorded = recorded_engine(&o);
    assert_eq!(
        recorded.tensor_split,
        Some(TensorSplit::Ratios(vec![0.6, 0.4]))
    );
    assert_eq!(
        recorded.flags, e.flags,
        "the recorded flags are the provisioner's"
    );
    let flags = spawn_flags(&o);
    assert_eq!(&flags[flags.len() - 2..], ["--tensor-split", "0.6,0.4"]);

    // ready, then asked again with "auto": the same engine (compared before planning)
    let h = ready_with(node(), "p1", recorded.clone());
    given(&h).when(preload(e)).then_nothing();

    // a restart reuses the frozen plan whatever the VRAM is now
    let mut h = h;
    h.push((
        "",
        Event::GpuInventoryObserved {
            gpus: vec![gpu_free(0, "GPU-a", GIB), gpu_free(1, "GPU-b", 30 * GIB)],
        },
    ));
    let mut sim = Sim::new(&h);
    sim.step(obs(Observation::EngineExited {
        pool_id: id("p1"),
        pid: 100,
        exit_code: Some(1),
        signal: None,
        reason: ExitReason::Crash,
        detail: "x".into(),
    }));
    let token = sim.state.last_seq();
    sim.now_ms += 3_600_000;
    let o = given_state(sim.state.clone())
        .at(sim.now_ms)
        .when(obs(Observation::TimerFired {
            pool_id: id("p1"),
            timer: Timer::Restart,
            token,
        }))
        .then_kinds(&["EngineStartRequested"]);
    let flags = spawn_flags(&o);
    assert_eq!(&flags[flags.len() - 2..], ["--tensor-split", "0.6,0.4"]);
    // and so does a replay after a daemon restart (resume effects)
    let resumed = resume_effects(&o.after);
    assert!(resumed.iter().any(|e| matches!(
        e,
        Effect::Spawn { engine, .. } if engine.flags.ends_with(&["--tensor-split".into(), "0.6,0.4".into()])
    )));
}

#[test]
fn auto_split_that_cannot_fit_is_insufficient_vram() {
    let mut e = with_mask("p1", Some("0,1"));
    e.tensor_split = Some(TensorSplit::Auto);
    e.vram_required_bytes = Some(40 * GIB + 1);
    let r = given(&node())
        .when(preload(e))
        .then_rejected("INSUFFICIENT_VRAM");
    let text = r.to_string();
    assert!(
        text.contains("GPU 0 (GPU-a), GPU 1 (GPU-b) have 42949672960 bytes (40.0 GiB) free"),
        "{text}"
    );
}

#[test]
fn auto_split_without_a_requirement_is_proportional() {
    let mut e = with_mask("p1", Some("1,0"));
    e.tensor_split = Some(TensorSplit::Auto);
    let o = given(&node())
        .when(preload(e))
        .then_kinds(&["PreloadRequested"]);
    assert_eq!(
        recorded_engine(&o).tensor_split,
        Some(TensorSplit::Ratios(vec![0.4, 0.6])),
        "ratios follow the mask's order"
    );
}

#[test]
fn explicit_ratios_are_validated_and_checked_per_gpu() {
    let mut e = with_mask("p1", Some("0,1"));
    e.tensor_split = Some(TensorSplit::Ratios(vec![0.5, 0.3, 0.2]));
    let r = given(&node())
        .when(preload(e.clone()))
        .then_rejected("INVALID_REQUEST");
    assert!(
        r.to_string()
            .contains("prepared.tensor_split has 3 ratio(s) but the device mask names 2"),
        "{r}"
    );

    e.tensor_split = Some(TensorSplit::Ratios(vec![0.5, 0.6]));
    let r = given(&node())
        .when(preload(e.clone()))
        .then_rejected("INVALID_REQUEST");
    assert!(
        r.to_string()
            .contains("prepared.tensor_split ratios sum to"),
        "{r}"
    );
    // the sum is checked on a node without GPUs too (an engine without a mask)
    let mut cpu = e.clone();
    cpu.device_mask = None;
    given(&[])
        .when(preload(cpu))
        .then_rejected("INVALID_REQUEST");

    // GPU 1 has 16 GiB free: 0.9 of 20 GiB is too much for it
    e.tensor_split = Some(TensorSplit::Ratios(vec![0.1, 0.9]));
    e.vram_required_bytes = Some(20 * GIB);
    let r = given(&node())
        .when(preload(e.clone()))
        .then_rejected("INSUFFICIENT_VRAM");
    let text = r.to_string();
    assert!(
        text.contains("GPU 1 (GPU-b) has 17179869184 bytes (16.0 GiB) free"),
        "{text}"
    );
    assert!(
        text.contains("its share 0.9 of prepared.tensor_split"),
        "{text}"
    );

    e.tensor_split = Some(TensorSplit::Ratios(vec![0.75, 0.25]));
    let o = given(&node())
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    assert_eq!(
        recorded_engine(&o),
        e,
        "explicit ratios are recorded as given"
    );
    let flags = spawn_flags(&o);
    assert_eq!(&flags[flags.len() - 2..], ["--tensor-split", "0.75,0.25"]);
}

#[test]
fn a_split_flag_of_the_provisioner_wins() {
    let mut e = with_mask("p1", Some("0,1"));
    e.tensor_split = Some(TensorSplit::Auto);
    e.flags.extend(["-ts".to_string(), "3,1".to_string()]);
    let o = given(&node())
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    assert_eq!(spawn_flags(&o), e.flags);
}

#[test]
fn nothing_is_split_unless_asked_over_several_gpus() {
    // single GPU with "auto": no split
    let mut e = with_mask("p1", Some("0"));
    e.tensor_split = Some(TensorSplit::Auto);
    let o = given(&node())
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    assert_eq!(recorded_engine(&o).tensor_split, Some(TensorSplit::Auto));
    assert_eq!(spawn_flags(&o), e.flags);
    // several GPUs, no split asked
    let e = with_mask("p1", Some("0,1"));
    let o = given(&node())
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    assert_eq!(spawn_flags(&o), e.flags);
    // "auto" on a node without GPUs (an engine without a mask): nothing to plan with
    let mut e = with_mask("p1", None);
    e.tensor_split = Some(TensorSplit::Auto);
    let o = given(&[])
        .when(preload(e.clone()))
        .then_kinds(&["PreloadRequested"]);
    assert_eq!(recorded_engine(&o), e);
    assert_eq!(spawn_flags(&o), e.flags);
}

#[test]
fn the_handoff_names_the_flags_the_engine_was_started_with() {
    let mut e = with_mask("p1", Some("0,1"));
    e.tensor_split = Some(TensorSplit::Ratios(vec![0.5, 0.5]));
    let mut h = node();
    h.extend(spawned("p1", 100));
    if let Some((_, Event::PreloadRequested { engine })) = h.get_mut(2) {
        **engine = e;
    }
    let o = given(&h)
        .when(obs(Observation::HealthPassed {
            pool_id: id("p1"),
            pid: 100,
            after_ms: 10,
            engine_version: None,
            slots_total: None,
            exe: None,
        }))
        .then_kinds(&["HealthCheckPassed"]);
    assert!(o.has_effect(|e| matches!(
        e,
        Effect::WriteHandoff { handoff, .. } if handoff.flags.ends_with(&["--tensor-split".into(), "0.5,0.5".into()])
    )));
}

#[test]
fn rejections_say_what_to_do() {
    let r = Rejection::InsufficientVram {
        pool_id: "p1".into(),
        required_bytes: 2 * GIB,
        available_bytes: GIB,
        devices: "GPU 0 (GPU-a)".into(),
        note: String::new(),
    };
    assert_eq!(r.code().as_str(), "INSUFFICIENT_VRAM");
    assert_eq!(
        r.to_string(),
        "pool 'p1' needs 2147483648 bytes (2.0 GiB) of VRAM but GPU 0 (GPU-a) has 1073741824 bytes (1.0 GiB) free; free VRAM there (stop or remove a pool using it), choose other GPUs with prepared.device_mask, or lower prepared.vram_required_bytes"
    );
    let r = Rejection::InsufficientRam {
        pool_id: "p1".into(),
        required_bytes: 2,
        available_bytes: 1,
    };
    assert_eq!(r.code().as_str(), "INSUFFICIENT_VRAM");
    assert!(r.to_string().contains("prepared.ram_required_bytes"));
}

// ---- properties ----

fn arb_free() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        0u64..1_000,
        0u64..(80 * GIB),
        any::<u64>()
    ]
}

fn arb_required() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(u64::MAX)),
        (0u64..(160 * GIB)).prop_map(Some),
        any::<u64>().prop_map(Some),
    ]
}

fn arb_inventory() -> impl Strategy<Value = (Vec<GpuInfo>, Vec<MigDeviceInfo>)> {
    (
        prop::collection::vec(
            (0u32..4, "GPU-[ab]", arb_free()).prop_map(|(i, u, f)| gpu_free(i, &u, f)),
            0..4,
        ),
        prop::collection::vec(
            ("MIG-[xy]", 0u32..4, arb_free()).prop_map(|(u, p, f)| mig(&u, p, f)),
            0..3,
        ),
    )
}

fn arb_mask_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-3GPUMIGpuxyab, -]{0,16}",
        any::<String>(),
        Just("0,1".to_string()),
        Just("GPU-a,MIG-x".to_string()),
        Just("99999999999999999999".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn the_auto_plan_sums_to_one_and_asks_no_gpu_beyond_its_free_vram(
        free in prop::collection::vec(arb_free(), 0..9),
        required in arb_required(),
    ) {
        let n = free.len();
        let units = u128::from(SPLIT_UNITS);
        let total: u128 = free.iter().map(|f| u128::from(*f)).sum();
        match auto_split_units(&free, required) {
            Some(plan) => {
                prop_assert_eq!(plan.len(), n);
                if n > 0 {
                    prop_assert_eq!(plan.iter().map(|u| u128::from(*u)).sum::<u128>(), units);
                    let ratios = units_to_ratios(&plan);
                    prop_assert!((ratios.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                    prop_assert!(validate_ratios(&ratios, Some(n)).is_ok());
                    // the flag reads back as the plan
                    let flag = format_tensor_split(&ratios);
                    let back: Vec<u128> = flag
                        .split(',')
                        .map(|r| (r.parse::<f64>().unwrap() * f64::from(SPLIT_UNITS)).round() as u128)
                        .collect();
                    prop_assert_eq!(back, plan.iter().map(|u| u128::from(*u)).collect::<Vec<_>>());
                }
                for (u, f) in plan.iter().zip(&free) {
                    if let Some(r) = required.filter(|r| *r > 0) {
                        // R * ratio_i <= f_i, exactly
                        prop_assert!(u128::from(r) * u128::from(*u) <= units * u128::from(*f));
                    }
                    if required.is_none() && total > 0 {
                        // proportional to free VRAM, within one unit
                        let target = units * u128::from(*f);
                        let got = u128::from(*u) * total;
                        prop_assert!(got.abs_diff(target) < total, "{} vs {}/{}", u, target, total);
                    }
                }
            }
            None => {
                let r = required.filter(|r| *r > 0);
                prop_assert!(r.is_some(), "only a requirement can make a plan fail");
                let r = u128::from(r.unwrap_or(0));
                // it fails only when R does not fit the free VRAM, up to rounding of one unit
                // per device
                prop_assert!(r * (units + n as u128) > units * total, "R={} F={} n={}", r, total, n);
            }
        }
    }

    #[test]
    fn ratio_validation_and_formatting_are_total(
        ratios in prop::collection::vec(any::<f64>(), 0..6),
        devices in prop::option::of(0usize..6),
    ) {
        let _ = validate_ratios(&ratios, devices);
        let text = format_tensor_split(&ratios);
        prop_assert_eq!(text.split(',').count(), ratios.len().max(1));
        let mut e = engine("p1");
        e.tensor_split = Some(TensorSplit::Ratios(ratios.clone()));
        let spawned = engine_for_spawn(&e);
        let count = spawned.flags.iter().filter(|f| *f == "--tensor-split").count();
        prop_assert_eq!(count, usize::from(ratios.len() >= 2));
        prop_assert_eq!(engine_for_spawn(&spawned).flags, spawned.flags.clone());
    }

    #[test]
    fn mask_resolution_never_panics_and_resolves_each_entry_once(
        mask in arb_mask_text(),
        (gpus, migs) in arb_inventory(),
    ) {
        let inventory = Inventory { gpus: &gpus, mig_devices: &migs };
        match resolve_mask(&mask, inventory) {
            Ok(devices) => {
                prop_assert!(!devices.is_empty());
                prop_assert_eq!(devices.len(), mask.split(',').count());
                for (i, a) in devices.iter().enumerate() {
                    for b in devices.iter().skip(i + 1) {
                        prop_assert!(!a.overlaps(b), "{:?} {:?}", a, b);
                    }
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        let claims = mask_claims(Some(&mask), inventory);
        prop_assert!(claims.len() <= gpus.len() + migs.len());
        prop_assert_eq!(mask_claims(None, inventory).len(), all_gpus(inventory).len());
    }

    #[test]
    fn a_preload_is_placed_or_refused_never_a_panic(
        (gpus, migs) in arb_inventory(),
        mask in prop::option::of(arb_mask_text()),
        split in prop_oneof![
            Just(None),
            Just(Some(TensorSplit::Auto)),
            prop::collection::vec(any::<f64>(), 0..4).prop_map(|r| Some(TensorSplit::Ratios(r))),
        ],
        vram in arb_required(),
        ram in arb_required(),
        placement in (any::<bool>(), arb_required(), arb_required()).prop_map(|(s, m, r)| PlacementInputs {
            allow_gpu_sharing: s,
            model_file_bytes: m,
            ram_available_bytes: r,
        }),
        other_mask in prop::option::of(arb_mask_text()),
    ) {
        let mut history = vec![
            ("", Event::GpuInventoryObserved { gpus: gpus.clone() }),
            ("", Event::MigInventoryObserved { devices: migs.clone() }),
        ];
        history = ready_with(history, "p2", with_mask("p2", other_mask.as_deref()));
        let mut e = with_mask("p1", mask.as_deref());
        e.tensor_split = split;
        e.vram_required_bytes = vram;
        e.ram_required_bytes = ram;
        let scenario = given(&history).when(preload_with(e.clone(), placement));
        if let Ok(facts) = scenario.decide() {
            prop_assert_eq!(facts.len(), 1);
            let o = scenario.then_ok();
            let recorded = recorded_engine(&o);
            let inventory = Inventory { gpus: &gpus, mig_devices: &migs };
            let devices = match &e.device_mask {
                Some(m) if !inventory.is_empty() => resolve_mask(m, inventory).unwrap(),
                _ => all_gpus(inventory),
            };
            if let (Some(TensorSplit::Auto), true) = (&e.tensor_split, devices.len() >= 2) {
                let Some(TensorSplit::Ratios(ratios)) = &recorded.tensor_split else {
                    panic!("auto over {} devices was not planned", devices.len());
                };
                prop_assert!((ratios.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                let required = vram.or(placement.model_file_bytes).filter(|r| *r > 0);
                if let Some(r) = required {
                    for (ratio, d) in ratios.iter().zip(&devices) {
                        // the plan's units: R * u / U <= f exactly
                        let u = (ratio * f64::from(SPLIT_UNITS)).round() as u128;
                        prop_assert!(u128::from(r) * u <= u128::from(SPLIT_UNITS) * u128::from(d.vram_free_bytes));
                    }
                }
            } else {
                prop_assert_eq!(recorded.tensor_split, e.tensor_split);
            }
        }
    }
}
