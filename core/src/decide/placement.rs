//! `decide` for GPU placement of a preload (OC-POOL-3002, OC-POOL-3020, OC-POOL-3021): the
//! mask resolves against the inventory, no two pools claim one GPU unless sharing is allowed,
//! the engine fits the free VRAM of its mask (and host RAM), and an `"auto"` split is planned
//! and frozen into the recorded engine.
//!
//! Owns: the order and wording of these checks for `Command::Preload`.
//! Never: runs for restarts, reloads or rollbacks (they reuse the recorded engine and its
//! frozen plan, whatever the VRAM is now). On a node with no GPU inventory (CPU / dev nodes)
//! only the mask is checked: a pool without one runs on the CPU, a mask naming any device is
//! refused (the node has 0 GPUs). The arithmetic lives in `crate::gpu`.

use super::*;
use crate::engine::{PreparedEngine, TensorSplit};
use crate::gpu::{
    auto_split_units, estimate_vram_bytes, first_overlap, format_tensor_split, mask_claims,
    resolve_mask, units_to_ratios, validate_ratios, Inventory, PlacementInputs, ResolvedDevice,
};

/// The most devices named in one message; the rest are counted.
const DEVICES_NAMED_MAX: usize = 8;

/// The devices a preload asks for: its mask resolved strictly (`INVALID_DEVICE_MASK` naming
/// the entry), or every GPU when it has no mask. `None` when the node has no GPU inventory
/// and the engine no mask (a CPU engine); a mask on such a node names devices the node lacks
/// (`INVALID_DEVICE_MASK`: the node has 0 GPUs).
pub(super) fn devices(
    pool_id: &PoolId,
    engine: &PreparedEngine,
    inventory: Inventory<'_>,
) -> Result<Option<Vec<ResolvedDevice>>, Rejection> {
    if inventory.is_empty() {
        return match &engine.device_mask {
            None => Ok(None),
            Some(mask) => Err(Rejection::InvalidDeviceMask {
                pool_id: pool_id.to_string(),
                mask: tail(mask, 200),
                reason: "this node has 0 GPUs (no NVIDIA driver or GPU was found, or the \
                         daemon runs with --dev on a machine without one); remove \
                         prepared.device_mask to run the engine on the CPU"
                    .to_string(),
            }),
        };
    }
    match &engine.device_mask {
        None => Ok(Some(crate::gpu::all_gpus(inventory))),
        Some(mask) => {
            resolve_mask(mask, inventory)
                .map(Some)
                .map_err(|e| Rejection::InvalidDeviceMask {
                    pool_id: pool_id.to_string(),
                    mask: tail(mask, 200),
                    reason: e.to_string(),
                })
        }
    }
}

/// Explicit ratios: well-formed, one per device when the devices are known
/// (`INVALID_REQUEST` naming `prepared.tensor_split`).
pub(super) fn check_split_syntax(
    engine: &PreparedEngine,
    devices: Option<&[ResolvedDevice]>,
) -> Result<(), Rejection> {
    if let Some(TensorSplit::Ratios(ratios)) = &engine.tensor_split {
        validate_ratios(ratios, devices.map(<[ResolvedDevice]>::len)).map_err(invalid)?;
    }
    Ok(())
}

/// Whether a request repeats the engine a pool was preloaded with. The recorded engine has
/// its `"auto"` split frozen into ratios, so a request asking `"auto"` again matches any
/// recorded plan (compared before the request's own plan is made).
pub(super) fn same_engine(recorded: &PreparedEngine, request: &PreparedEngine) -> bool {
    if recorded == request {
        return true;
    }
    match (&recorded.tensor_split, &request.tensor_split) {
        (Some(TensorSplit::Ratios(_)), Some(TensorSplit::Auto)) => {
            let mut frozen = request.clone();
            frozen.tensor_split = recorded.tensor_split.clone();
            *recorded == frozen
        }
        _ => false,
    }
}

/// Whether a pool holds GPUs now or will by itself: it has an engine, or one is starting,
/// stopping, or due to restart (backoff, an open breaker with an engine to try). Registered,
/// stopped and failed pools hold nothing.
fn claims_gpus(pool: &Pool) -> bool {
    pool.process.is_some()
        || match pool.activity {
            Activity::Starting { .. }
            | Activity::Running
            | Activity::Stopping { .. }
            | Activity::Backoff { .. } => true,
            Activity::CircuitOpen => pool.engine.is_some(),
            Activity::Registered | Activity::Stopped | Activity::Failed => false,
        }
}

/// Two pools may not claim the same GPU (or the same MIG device, or a GPU and a MIG slice of
/// it) unless `allow_gpu_sharing` (config `[gpu] allow_sharing`; `INVALID_DEVICE_MASK` naming
/// the GPU and the other pool).
pub(super) fn check_sharing(
    d: &Decision<'_, '_>,
    pool_id: &PoolId,
    engine: &PreparedEngine,
    devices: &[ResolvedDevice],
    placement: &PlacementInputs,
) -> Result<(), Rejection> {
    if placement.allow_gpu_sharing {
        return Ok(());
    }
    let inventory = d.node().inventory();
    for other in d.pools() {
        if other.id == *pool_id || !claims_gpus(other) {
            continue;
        }
        let theirs = mask_claims(other.device_mask(), inventory);
        if let Some((mine, held)) = first_overlap(devices, &theirs) {
            let what = if mine.uuid.eq_ignore_ascii_case(&held.uuid) {
                format!("{} is claimed by pool '{}'", mine.label(), other.id)
            } else {
                format!(
                    "{} overlaps {}, claimed by pool '{}'",
                    mine.label(),
                    held.label(),
                    other.id
                )
            };
            return Err(Rejection::InvalidDeviceMask {
                pool_id: pool_id.to_string(),
                mask: engine
                    .device_mask
                    .as_deref()
                    .map_or_else(|| "(none: every GPU)".to_string(), |m| tail(m, 200)),
                reason: format!(
                    "{what}; two pools may not share a GPU unless [gpu] allow_sharing = true in the daemon's config; choose other GPUs or stop pool '{}' first",
                    other.id
                ),
            });
        }
    }
    Ok(())
}

/// The fit checks and the split plan: the engine's VRAM (given, or estimated from the model
/// file) against the summed free VRAM of its devices, each device's share of an explicit split
/// against its own free VRAM, an `"auto"` split planned (and frozen into the returned engine),
/// host RAM against what is available. Returns the engine to record.
pub(super) fn fit_and_plan(
    pool_id: &PoolId,
    engine: &PreparedEngine,
    devices: Option<&[ResolvedDevice]>,
    placement: &PlacementInputs,
) -> Result<PreparedEngine, Rejection> {
    let mut recorded = engine.clone();
    if let Some(devices) = devices {
        let (required, estimated) = match (engine.vram_required_bytes, placement.model_file_bytes) {
            (Some(required), _) => (Some(required), false),
            (None, Some(file)) => (Some(estimate_vram_bytes(file)), true),
            (None, None) => (None, false),
        };
        let estimate_note = if estimated {
            " (estimated from the model file size)"
        } else {
            ""
        };
        let available = devices
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.vram_free_bytes));
        if let Some(required) = required.filter(|r| *r > available) {
            return Err(Rejection::InsufficientVram {
                pool_id: pool_id.to_string(),
                required_bytes: required,
                available_bytes: available,
                devices: labels(devices),
                note: estimate_note.to_string(),
            });
        }
        if devices.len() >= 2 {
            match &engine.tensor_split {
                None => {}
                Some(TensorSplit::Ratios(ratios)) => {
                    for (device, ratio) in devices.iter().zip(ratios) {
                        let share = required.map_or(0, |r| share_bytes(r, *ratio));
                        if share > device.vram_free_bytes {
                            return Err(Rejection::InsufficientVram {
                                pool_id: pool_id.to_string(),
                                required_bytes: share,
                                available_bytes: device.vram_free_bytes,
                                devices: device.label(),
                                note: format!(
                                    " on one device (its share {} of prepared.tensor_split{estimate_note})",
                                    format_tensor_split(&[*ratio])
                                ),
                            });
                        }
                    }
                }
                Some(TensorSplit::Auto) => {
                    let free: Vec<u64> = devices.iter().map(|d| d.vram_free_bytes).collect();
                    let Some(units) = auto_split_units(&free, required) else {
                        return Err(Rejection::InsufficientVram {
                            pool_id: pool_id.to_string(),
                            required_bytes: required.unwrap_or(0),
                            available_bytes: available,
                            devices: labels(devices),
                            note: format!(
                                "{estimate_note} for a split in which no GPU is asked for more than it has free (shares in steps of 0.0001)"
                            ),
                        });
                    };
                    recorded.tensor_split = Some(TensorSplit::Ratios(units_to_ratios(&units)));
                }
            }
        }
    }
    check_ram(pool_id, engine, placement)?;
    Ok(recorded)
}

/// `ram_required_bytes` against the host RAM available, when both are known.
fn check_ram(
    pool_id: &PoolId,
    engine: &PreparedEngine,
    placement: &PlacementInputs,
) -> Result<(), Rejection> {
    match (engine.ram_required_bytes, placement.ram_available_bytes) {
        (Some(required), Some(available)) if required > available => {
            Err(Rejection::InsufficientRam {
                pool_id: pool_id.to_string(),
                required_bytes: required,
                available_bytes: available,
            })
        }
        _ => Ok(()),
    }
}

/// `⌈required · ratio⌉` in bytes, saturating (ratios are validated finite and non-negative).
fn share_bytes(required: u64, ratio: f64) -> u64 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let share = (required as f64 * ratio).ceil();
    if share.is_finite() && share > 0.0 {
        // Saturating float-to-int cast.
        share as u64
    } else {
        0
    }
}

/// `GPU 0 (GPU-a), GPU 1 (GPU-b)`, at most [`DEVICES_NAMED_MAX`] named.
fn labels(devices: &[ResolvedDevice]) -> String {
    let mut named: Vec<String> = devices
        .iter()
        .take(DEVICES_NAMED_MAX)
        .map(ResolvedDevice::label)
        .collect();
    if devices.len() > DEVICES_NAMED_MAX {
        named.push(format!(
            "{} more",
            devices.len().saturating_sub(DEVICES_NAMED_MAX)
        ));
    }
    if named.is_empty() {
        return "no device".to_string();
    }
    named.join(", ")
}
