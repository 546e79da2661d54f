//! GPU placement, pure: device masks resolved against the node's inventory, who claims which
//! GPU, whether a preload fits the free VRAM of its mask, and the heterogeneous tensor-split
//! planner (OC-POOL-3002, OC-POOL-3020, OC-POOL-3021).
//!
//! Owns: the mask syntax (`"0,1"`, `"GPU0,GPU1"`, `GPU-<uuid>`, `MIG-<uuid>`) and its
//! resolution ([`resolve_mask`]), the MIG device record ([`MigDeviceInfo`]), the placement
//! inputs the shell hands to a preload decision ([`PlacementInputs`]), the VRAM estimate from a
//! model file, the split plan ([`auto_split_units`], [`validate_ratios`]) and the
//! `--tensor-split` flag an engine is spawned with ([`engine_for_spawn`]).
//! Never: talks to NVML, reads a file or the clock, or panics on any input (masks, inventories
//! and sizes come from outside: every function here is total, and proptests in
//! `core/tests/properties.rs` feed it random ones). The rules that *use* these (which pool
//! may claim what, in which order the checks run) live in `decide`.

use serde::{Deserialize, Serialize};

use crate::engine::{GpuInfo, PreparedEngine, TensorSplit};

/// The most MIG devices kept from an inventory event (7 per GPU on 64 GPUs).
pub const MIG_DEVICES_MAX: usize = 448;

/// Ratios of a split are planned in steps of `1 / SPLIT_UNITS` (4 decimals).
pub const SPLIT_UNITS: u32 = 10_000;

/// How far from 1 the sum of explicit `tensor_split` ratios may be.
pub const SPLIT_SUM_TOLERANCE: f64 = 1e-3;

/// The Xids of a failing GPU rather than of a failing application (NVIDIA's Xid catalog):
/// 48 double-bit ECC, 63/64 ECC page retirement or row remapping (recorded, failed), 74 NVLink,
/// 79 fallen off the bus, 92 high single-bit ECC rate, 94/95 contained/uncontained ECC,
/// 119/120 GSP. Application Xids (13, 31, 43, ...) are not among them.
pub const HARDWARE_XIDS: [u32; 10] = [48, 63, 64, 74, 79, 92, 94, 95, 119, 120];

/// The most hardware fault times kept per GPU (`[gpu] quarantine_after` is capped to it).
pub const GPU_FAULTS_MAX: usize = 64;

/// Whether `xid` is a hardware-class fault of the GPU (counted towards its quarantine).
pub fn is_hardware_xid(xid: u32) -> bool {
    HARDWARE_XIDS.contains(&xid)
}

/// The longest mask entry quoted in a message, in bytes.
const ENTRY_QUOTE_MAX: usize = 80;

/// One MIG (Multi-Instance GPU) device of the node: a slice of a physical GPU with its own
/// UUID and memory. Recorded in `Event::MigInventoryObserved` (appended after `GpuInfo` was
/// frozen in `GpuInventoryObserved`, so that the older event keeps its bincode shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDeviceInfo {
    /// `MIG-<uuid>` (or the older `MIG-GPU-<uuid>/<gi>/<ci>`).
    pub uuid: String,
    /// The NVML index of the GPU it is a slice of.
    pub parent_index: u32,
    /// Its profile (`"1g.10gb"`) or name.
    pub name: String,
    /// Its total memory.
    pub vram_total_bytes: u64,
    /// Its free memory when observed.
    pub vram_free_bytes: u64,
}

/// What the shell knows about a preload that the core cannot: the node's configuration and
/// sizes only the file system or `/proc/meminfo` can tell. An input of the decision (commands
/// are not journaled); `Default` = no GPU sharing, sizes unknown (no estimate, no RAM check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlacementInputs {
    /// Whether two pools may claim the same GPU (config `[gpu] allow_sharing`).
    #[serde(default)]
    pub allow_gpu_sharing: bool,
    /// Size of the model file, for the VRAM estimate when `vram_required_bytes` is absent.
    #[serde(default)]
    pub model_file_bytes: Option<u64>,
    /// Host memory available now, checked against `ram_required_bytes`.
    #[serde(default)]
    pub ram_available_bytes: Option<u64>,
}

/// The node's GPUs and MIG devices, as a mask is resolved against them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory<'a> {
    /// Physical GPUs.
    pub gpus: &'a [GpuInfo],
    /// MIG devices (slices of `gpus`).
    pub mig_devices: &'a [MigDeviceInfo],
}

impl Inventory<'_> {
    /// No GPU and no MIG device known: every GPU check is skipped (CPU / dev nodes).
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty() && self.mig_devices.is_empty()
    }
}

/// Whether a resolved device is a whole GPU or a MIG slice of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A whole GPU.
    Gpu,
    /// A MIG device.
    Mig,
}

/// One entry of a mask, resolved against the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// The entry as written in the mask (trimmed; at most 80 bytes kept).
    pub entry: String,
    /// Whole GPU or MIG slice.
    pub kind: DeviceKind,
    /// The GPU's or the MIG device's UUID.
    pub uuid: String,
    /// The physical GPU (the parent, for a MIG device).
    pub gpu_index: u32,
    /// Free VRAM as last observed (the MIG device's own, for a MIG device).
    pub vram_free_bytes: u64,
}

impl ResolvedDevice {
    /// `GPU 0 (GPU-ab12...)` or `MIG device MIG-cd34... on GPU 0`, for messages.
    pub fn label(&self) -> String {
        match self.kind {
            DeviceKind::Gpu => format!("GPU {} ({})", self.gpu_index, quote(&self.uuid)),
            DeviceKind::Mig => {
                format!("MIG device {} on GPU {}", quote(&self.uuid), self.gpu_index)
            }
        }
    }

    /// Whether two claims overlap: the same physical GPU, and one of them is the whole GPU
    /// or both are the same MIG device. Two different MIG slices of one GPU do not overlap.
    pub fn overlaps(&self, other: &ResolvedDevice) -> bool {
        self.gpu_index == other.gpu_index
            && (self.kind == DeviceKind::Gpu
                || other.kind == DeviceKind::Gpu
                || self.uuid.eq_ignore_ascii_case(&other.uuid))
    }
}

/// Why a mask does not resolve; each names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// Nothing but commas and blanks.
    #[error("the mask names no device")]
    Empty,
    /// `"0,,1"`, or a comma at either end.
    #[error("entry {position} is empty (two commas in a row, or a comma at an end)")]
    EmptyEntry {
        /// 1-based position of the empty entry.
        position: usize,
    },
    /// The same device twice (`"0,GPU0"`, or an index and its UUID).
    #[error("entry '{entry}' names {device} again (already named by '{first}')")]
    Duplicate {
        /// The repeated entry.
        entry: String,
        /// The entry that named it first.
        first: String,
        /// The device.
        device: String,
    },
    /// Not a GPU index, GPU UUID or MIG UUID of this node.
    #[error("entry '{entry}' is not a GPU or MIG device of this node (GPUs: {known})")]
    Unknown {
        /// The entry.
        entry: String,
        /// The node's GPU indexes, for the message.
        known: String,
    },
    /// A MIG device of a GPU the mask also names whole.
    #[error("entry '{entry}' is a MIG device of GPU {gpu_index}, which entry '{whole}' names whole; name either the GPU or its MIG devices")]
    Overlap {
        /// The MIG entry (or the whole-GPU entry, whichever came second).
        entry: String,
        /// The entry naming the whole GPU (or the MIG device, whichever came first).
        whole: String,
        /// The GPU.
        gpu_index: u32,
    },
}

/// The entries of a device mask, trimmed, empty ones skipped (`"0, GPU1,GPU-abc"` ->
/// `["0","GPU1","GPU-abc"]`). [`resolve_mask`] is the strict form.
pub fn mask_tokens(mask: &str) -> impl Iterator<Item = &str> {
    mask.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// The GPU index an entry names (`"3"`, `"GPU3"`, `"gpu3"`), if it is of that form.
fn index_of(token: &str) -> Option<u32> {
    let digits = token
        .strip_prefix("GPU")
        .or_else(|| token.strip_prefix("gpu"))
        .unwrap_or(token);
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok()
}

/// Whether one mask entry names `gpu` (an index, `GPU<index>`, or its UUID).
pub fn token_matches(token: &str, gpu: &GpuInfo) -> bool {
    match index_of(token) {
        Some(index) => index == gpu.index,
        None => token.eq_ignore_ascii_case(&gpu.uuid),
    }
}

/// Resolves one entry, or `None` when the node has no such device.
fn resolve_entry(token: &str, inventory: Inventory<'_>) -> Option<ResolvedDevice> {
    let gpu = |gpu: &GpuInfo| ResolvedDevice {
        entry: quote(token),
        kind: DeviceKind::Gpu,
        uuid: gpu.uuid.clone(),
        gpu_index: gpu.index,
        vram_free_bytes: gpu.vram_free_bytes,
    };
    if let Some(index) = index_of(token) {
        return inventory.gpus.iter().find(|g| g.index == index).map(gpu);
    }
    if let Some(found) = inventory
        .gpus
        .iter()
        .find(|g| token.eq_ignore_ascii_case(&g.uuid))
    {
        return Some(gpu(found));
    }
    inventory
        .mig_devices
        .iter()
        .find(|m| token.eq_ignore_ascii_case(&m.uuid))
        .map(|mig| ResolvedDevice {
            entry: quote(token),
            kind: DeviceKind::Mig,
            uuid: mig.uuid.clone(),
            gpu_index: mig.parent_index,
            vram_free_bytes: mig.vram_free_bytes,
        })
}

/// Resolves a device mask against the inventory, strictly: every entry must name a GPU (by
/// index, `GPU<index>` or UUID) or a MIG device (by UUID) of the node, once; no entry may be
/// empty; a MIG device may not be named together with its whole GPU. The devices come back in
/// the mask's order (the order of `tensor_split` ratios).
pub fn resolve_mask(
    mask: &str,
    inventory: Inventory<'_>,
) -> Result<Vec<ResolvedDevice>, MaskError> {
    if mask_tokens(mask).next().is_none() {
        return Err(MaskError::Empty);
    }
    let mut devices: Vec<ResolvedDevice> = Vec::new();
    for (position, raw) in mask.split(',').enumerate() {
        let token = raw.trim();
        if token.is_empty() {
            return Err(MaskError::EmptyEntry {
                position: position.saturating_add(1),
            });
        }
        let Some(device) = resolve_entry(token, inventory) else {
            return Err(MaskError::Unknown {
                entry: quote(token),
                known: known_gpus(inventory),
            });
        };
        // At most one entry per device of the inventory gets past this, so the loop is
        // bounded by the inventory's size, not the mask's.
        if let Some(earlier) = devices.iter().find(|d| d.overlaps(&device)) {
            return Err(if earlier.kind == device.kind {
                MaskError::Duplicate {
                    entry: device.entry.clone(),
                    first: earlier.entry.clone(),
                    device: device.label(),
                }
            } else {
                MaskError::Overlap {
                    entry: device.entry.clone(),
                    whole: earlier.entry.clone(),
                    gpu_index: device.gpu_index,
                }
            });
        }
        devices.push(device);
    }
    Ok(devices)
}

/// The devices a pool claims, leniently (for pools already placed, whose masks were checked
/// when they were preloaded and may name devices gone since): no mask = every GPU, entries
/// that no longer resolve are skipped.
pub fn mask_claims(mask: Option<&str>, inventory: Inventory<'_>) -> Vec<ResolvedDevice> {
    match mask {
        None => all_gpus(inventory),
        Some(mask) => {
            let mut claims: Vec<ResolvedDevice> = Vec::new();
            for token in mask_tokens(mask) {
                if claims.len() >= inventory.gpus.len().saturating_add(MIG_DEVICES_MAX) {
                    break;
                }
                if let Some(device) = resolve_entry(token, inventory) {
                    if !claims.contains(&device) {
                        claims.push(device);
                    }
                }
            }
            claims
        }
    }
}

/// Every GPU of the inventory, whole (what a pool without a mask may use).
pub fn all_gpus(inventory: Inventory<'_>) -> Vec<ResolvedDevice> {
    inventory
        .gpus
        .iter()
        .map(|g| ResolvedDevice {
            entry: g.index.to_string(),
            kind: DeviceKind::Gpu,
            uuid: g.uuid.clone(),
            gpu_index: g.index,
            vram_free_bytes: g.vram_free_bytes,
        })
        .collect()
}

/// The first pair (mine, theirs) of overlapping claims, if any.
pub fn first_overlap<'a>(
    mine: &'a [ResolvedDevice],
    theirs: &'a [ResolvedDevice],
) -> Option<(&'a ResolvedDevice, &'a ResolvedDevice)> {
    mine.iter()
        .find_map(|m| theirs.iter().find(|t| m.overlaps(t)).map(|t| (m, t)))
}

/// Whether a pool with `mask` may be using the GPU with `gpu_uuid` (an Xid or a violation
/// report names a physical GPU).
///
/// No mask means "all GPUs". An unknown GPU (not in the inventory) matches only by UUID.
pub fn mask_covers(mask: Option<&str>, gpu_uuid: &str, inventory: &[GpuInfo]) -> bool {
    mask_covers_in(
        mask,
        gpu_uuid,
        Inventory {
            gpus: inventory,
            mig_devices: &[],
        },
    )
}

/// [`mask_covers`] with MIG devices: a mask naming a MIG device covers its parent GPU.
pub fn mask_covers_in(mask: Option<&str>, gpu_uuid: &str, inventory: Inventory<'_>) -> bool {
    let Some(mask) = mask else { return true };
    let gpu = inventory
        .gpus
        .iter()
        .find(|g| g.uuid.eq_ignore_ascii_case(gpu_uuid));
    mask_tokens(mask).any(|token| {
        if token.eq_ignore_ascii_case(gpu_uuid) {
            return true;
        }
        let Some(gpu) = gpu else { return false };
        token_matches(token, gpu)
            || inventory
                .mig_devices
                .iter()
                .any(|m| m.parent_index == gpu.index && token.eq_ignore_ascii_case(&m.uuid))
    })
}

/// Checks a mask against a known inventory of GPUs; the error names the bad entry.
pub fn validate_mask(mask: &str, inventory: &[GpuInfo]) -> Result<(), String> {
    resolve_mask(
        mask,
        Inventory {
            gpus: inventory,
            mig_devices: &[],
        },
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The VRAM an engine is assumed to need when the provisioner gave no
/// `vram_required_bytes`: the model file's size. The weights alone take that much once fully
/// offloaded; KV cache and compute buffers come on top, so the estimate refuses only what
/// certainly cannot fit. A provisioner that offloads part of a model (`--n-gpu-layers`) or
/// knows better gives `vram_required_bytes`, which always wins over the estimate.
pub const fn estimate_vram_bytes(model_file_bytes: u64) -> u64 {
    model_file_bytes
}

/// Plans an `"auto"` tensor split in integer units of `1 / SPLIT_UNITS`, from each device's
/// free VRAM `f_i` and the bytes required `R` (if known). `None` = no plan fits.
///
/// Formula. Let `F = Σ f_i` and `U = SPLIT_UNITS`.
/// - Target shares are proportional to free VRAM: `t_i = U · f_i / F`, so that every device
///   keeps the same fraction `1 − R/F` of its free VRAM (no device is favoured; a device with
///   nothing free gets 0).
/// - Caps: device `i` may be asked at most `c_i = min(U, ⌊U · f_i / R⌋)` units, i.e. its share
///   of `R` never exceeds its free VRAM: `R · u_i / U ≤ f_i` holds exactly, in integers.
///   (Without `R`, or with `R = 0`, `c_i = U`.)
/// - The plan exists iff `Σ c_i ≥ U`. Since `c_i ≤ U·f_i/R`, this needs `R ≤ F`: the whole
///   requirement must fit the summed free VRAM, and with proportional shares the binding
///   constraint is the same for every device, the smallest included; the smallest GPU's cap
///   `⌊U · f_min / R⌋` is what the rounding makes tight first. So the plan can fail (by at
///   most one unit per device of rounding) even when `R ≤ F` to within `n · R / U` bytes.
/// - Units: `u_i = min(⌊t_i⌋, c_i)`, then the `U − Σ u_i` units left (fewer than the number of
///   devices when the plan exists) go one at a time to the devices with the largest remainder
///   of `t_i` (ties: mask order) that are still under their cap.
/// - `F = 0` without a requirement: equal shares (the first devices take the remainder).
///
/// All arithmetic is in `u128` (no overflow for any `u64` inputs); an empty `free` gives
/// `Some(vec![])`.
pub fn auto_split_units(free: &[u64], required: Option<u64>) -> Option<Vec<u32>> {
    if free.is_empty() {
        return Some(Vec::new());
    }
    let units = u128::from(SPLIT_UNITS);
    let total: u128 = free.iter().map(|f| u128::from(*f)).sum();
    let required = required.filter(|r| *r > 0).map(u128::from);
    let caps = split_caps(free, required, units);
    if caps.iter().sum::<u128>() < units {
        return None;
    }
    let mut plan = proportional_units(free, &caps, total, units);
    let left = units.saturating_sub(plan.iter().map(|(u, _)| *u).sum::<u128>());
    let order = by_remainder(&plan);
    if !hand_out_units(&mut plan, &caps, &order, left) {
        return None;
    }
    Some(
        plan.iter()
            .map(|(u, _)| u32::try_from(*u).unwrap_or(SPLIT_UNITS))
            .collect(),
    )
}

/// The most units of `units` each device may be asked for (see [`auto_split_units`]):
/// `min(units, ⌊units · f_i / required⌋)`, or `units` without a (non-zero) requirement.
fn split_caps(free: &[u64], required: Option<u128>, units: u128) -> Vec<u128> {
    free.iter()
        .map(|f| match required {
            Some(r) => (units.saturating_mul(u128::from(*f)) / r).min(units),
            None => units,
        })
        .collect()
}

/// The first plan, per device `(units so far, remainder of the target)`: the whole units of
/// the share proportional to free VRAM (of `total`), within the device's cap; equal shares
/// when nothing is free.
fn proportional_units(free: &[u64], caps: &[u128], total: u128, units: u128) -> Vec<(u128, u128)> {
    if total == 0 {
        // `free` is not empty here (the caller returned early otherwise), and the division
        // runs once per device only.
        let count = free.len() as u128;
        free.iter().map(|_| (units / count, 0)).collect()
    } else {
        free.iter()
            .zip(caps)
            .map(|(f, cap)| {
                let scaled = units.saturating_mul(u128::from(*f));
                ((scaled / total).min(*cap), scaled % total)
            })
            .collect()
    }
}

/// The devices' indices by largest remainder of the target first (ties: mask order).
fn by_remainder(plan: &[(u128, u128)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by(|a, b| {
        let ra = plan.get(*a).map_or(0, |p| p.1);
        let rb = plan.get(*b).map_or(0, |p| p.1);
        rb.cmp(&ra).then(a.cmp(b))
    });
    order
}

/// Hands the `left` units out one at a time to the devices in `order` still under their cap;
/// `false` when some are left that no device can take.
fn hand_out_units(
    plan: &mut [(u128, u128)],
    caps: &[u128],
    order: &[usize],
    mut left: u128,
) -> bool {
    // Each round gives a unit to every device under its cap, in remainder order; the caps
    // sum to at least the units planned, so each round makes progress and the loop ends.
    while left > 0 {
        let mut progressed = false;
        for &i in order {
            if left == 0 {
                break;
            }
            if let (Some(slot), Some(cap)) = (plan.get_mut(i), caps.get(i)) {
                if slot.0 < *cap {
                    slot.0 = slot.0.saturating_add(1);
                    left = left.saturating_sub(1);
                    progressed = true;
                }
            }
        }
        if !progressed {
            return false;
        }
    }
    true
}

/// Units to ratios (`6000` -> `0.6`).
pub fn units_to_ratios(units: &[u32]) -> Vec<f64> {
    units
        .iter()
        .map(|u| f64::from(*u) / f64::from(SPLIT_UNITS))
        .collect()
}

/// Checks explicit ratios: one per device of the mask (when `devices` is known), finite,
/// non-negative, summing to 1 within [`SPLIT_SUM_TOLERANCE`]. The error names
/// `prepared.tensor_split` (an `INVALID_REQUEST`).
pub fn validate_ratios(ratios: &[f64], devices: Option<usize>) -> Result<(), String> {
    if let Some(devices) = devices {
        if ratios.len() != devices {
            return Err(format!(
                "prepared.tensor_split has {} ratio(s) but the device mask names {devices} device(s); give one ratio per device, in mask order, or \"auto\"",
                ratios.len()
            ));
        }
    }
    if ratios.iter().any(|r| !r.is_finite() || *r < 0.0) {
        return Err("prepared.tensor_split ratios must be finite and non-negative".to_string());
    }
    let sum: f64 = ratios.iter().sum();
    if !sum.is_finite() || (sum - 1.0).abs() > SPLIT_SUM_TOLERANCE {
        return Err(format!(
            "prepared.tensor_split ratios sum to {sum} but must sum to 1 (within {SPLIT_SUM_TOLERANCE})"
        ));
    }
    Ok(())
}

/// llama.cpp's `--tensor-split` value: ratios rounded to 4 decimals, trailing zeros dropped
/// (`[0.6, 0.4]` -> `"0.6,0.4"`, `[1.0, 0.0]` -> `"1,0"`). Non-finite or negative ratios are
/// written as 0 (they never pass validation).
pub fn format_tensor_split(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format_ratio(*r))
        .collect::<Vec<_>>()
        .join(",")
}

fn format_ratio(ratio: f64) -> String {
    let scaled = if ratio.is_finite() && ratio > 0.0 {
        (ratio * f64::from(SPLIT_UNITS)).round()
    } else {
        0.0
    };
    // Saturating float-to-int cast: huge ratios (never valid) cannot overflow.
    let units = scaled as u64;
    let whole = units / u64::from(SPLIT_UNITS);
    let frac = units % u64::from(SPLIT_UNITS);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:04}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Whether the flags already carry a tensor split (`--tensor-split X`, `-ts X`,
/// `--tensor-split=X`).
pub fn has_tensor_split_flag(flags: &[String]) -> bool {
    flags.iter().any(|f| {
        f == "--tensor-split"
            || f == "-ts"
            || f.starts_with("--tensor-split=")
            || f.starts_with("-ts=")
    })
}

/// The engine as it is spawned: with a planned split of two or more ratios,
/// `--tensor-split r0,r1,...` is appended to its flags, unless the provisioner already put a
/// `--tensor-split` / `-ts` there (its explicit flag wins). `"auto"` that was never planned (no
/// GPU inventory) and single ratios add nothing: nothing is split unless asked and planned.
pub fn engine_for_spawn(engine: &PreparedEngine) -> PreparedEngine {
    let mut spawned = engine.clone();
    if let Some(TensorSplit::Ratios(ratios)) = &engine.tensor_split {
        if ratios.len() >= 2 && !has_tensor_split_flag(&engine.flags) {
            spawned.flags.push("--tensor-split".to_string());
            spawned.flags.push(format_tensor_split(ratios));
        }
    }
    spawned
}

/// Bytes for people: `8589934592 bytes (8.0 GiB)`.
pub fn format_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let gib = bytes as f64 / GIB;
    format!("{bytes} bytes ({gib:.1} GiB)")
}

/// The node's GPU indexes, for messages (`"0, 1"`, or `"none"`).
fn known_gpus(inventory: Inventory<'_>) -> String {
    if inventory.gpus.is_empty() {
        return "none".to_string();
    }
    let mut known: Vec<String> = inventory
        .gpus
        .iter()
        .take(16)
        .map(|g| g.index.to_string())
        .collect();
    if inventory.gpus.len() > 16 {
        known.push("...".to_string());
    }
    let mut text = known.join(", ");
    if !inventory.mig_devices.is_empty() {
        text.push_str(&format!(
            "; and {} MIG device(s), see GET /v2/gpus",
            inventory.mig_devices.len()
        ));
    }
    text
}

/// At most [`ENTRY_QUOTE_MAX`] bytes of `text` (its start), cut at a character boundary.
fn quote(text: &str) -> String {
    if text.len() <= ENTRY_QUOTE_MAX {
        return text.to_string();
    }
    let mut end = ENTRY_QUOTE_MAX;
    while end > 0 && !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}...", text.get(..end).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str, free: u64) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.to_string(),
            name: "test".to_string(),
            compute_capability: "8.6".to_string(),
            vram_total_bytes: free,
            vram_free_bytes: free,
        }
    }

    fn mig(uuid: &str, parent: u32, free: u64) -> MigDeviceInfo {
        MigDeviceInfo {
            uuid: uuid.to_string(),
            parent_index: parent,
            name: "1g.10gb".to_string(),
            vram_total_bytes: free,
            vram_free_bytes: free,
        }
    }

    #[test]
    fn masks_match_indexes_names_and_uuids() {
        let inv = [gpu(0, "GPU-a", 1), gpu(1, "GPU-b", 1)];
        assert!(mask_covers(Some("0"), "GPU-a", &inv));
        assert!(!mask_covers(Some("0"), "GPU-b", &inv));
        assert!(mask_covers(Some("GPU1"), "GPU-b", &inv));
        assert!(mask_covers(Some("gpu-b"), "GPU-b", &inv));
        assert!(mask_covers(None, "GPU-b", &inv));
        assert!(validate_mask("0,1", &inv).is_ok());
        assert!(validate_mask("0,2", &inv).is_err());
        assert!(!token_matches("+1", &gpu(1, "GPU-b", 1)));
    }

    #[test]
    fn resolution_names_the_bad_entry() {
        let gpus = [gpu(0, "GPU-a", 10), gpu(1, "GPU-b", 20)];
        let migs = [mig("MIG-x", 1, 5), mig("MIG-y", 1, 5)];
        let inv = Inventory {
            gpus: &gpus,
            mig_devices: &migs,
        };
        let ok = resolve_mask(" GPU1 , gpu-a", inv).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].gpu_index, 1);
        assert_eq!(ok[1].uuid, "GPU-a");
        assert_eq!(ok[1].entry, "gpu-a");
        let mig_ok = resolve_mask("MIG-x,mig-y", inv).unwrap();
        assert_eq!(mig_ok[0].kind, DeviceKind::Mig);
        assert_eq!(mig_ok[1].vram_free_bytes, 5);

        assert_eq!(resolve_mask(" , ", inv), Err(MaskError::Empty));
        let e = resolve_mask("0,,1", inv).unwrap_err();
        assert_eq!(e, MaskError::EmptyEntry { position: 2 });
        assert!(e.to_string().contains("entry 2 is empty"));
        let e = resolve_mask("0,GPU-a", inv).unwrap_err().to_string();
        assert!(e.contains("'GPU-a' names GPU 0 (GPU-a) again"), "{e}");
        assert!(e.contains("already named by '0'"), "{e}");
        let e = resolve_mask("0,7", inv).unwrap_err().to_string();
        assert!(e.contains("entry '7' is not a GPU"), "{e}");
        assert!(e.contains("GPUs: 0, 1; and 2 MIG device(s)"), "{e}");
        let e = resolve_mask("MIG-zz", inv).unwrap_err().to_string();
        assert!(e.contains("'MIG-zz'"), "{e}");
        let e = resolve_mask("1,MIG-x", inv).unwrap_err().to_string();
        assert!(e.contains("MIG device of GPU 1"), "{e}");
        let e = resolve_mask("MIG-x,MIG-x", inv).unwrap_err();
        assert!(matches!(e, MaskError::Duplicate { .. }));
        // a long bad entry is quoted short
        let long = "x".repeat(5000);
        let e = resolve_mask(&long, inv).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn claims_and_overlaps() {
        let gpus = [gpu(0, "GPU-a", 10), gpu(1, "GPU-b", 20)];
        let migs = [mig("MIG-x", 1, 5), mig("MIG-y", 1, 5)];
        let inv = Inventory {
            gpus: &gpus,
            mig_devices: &migs,
        };
        assert_eq!(mask_claims(None, inv).len(), 2);
        assert_eq!(mask_claims(Some("0,9,0"), inv).len(), 1);
        let x = mask_claims(Some("MIG-x"), inv);
        let y = mask_claims(Some("MIG-y"), inv);
        let whole = mask_claims(Some("1"), inv);
        assert!(first_overlap(&x, &y).is_none());
        assert!(first_overlap(&x, &x).is_some());
        assert!(first_overlap(&whole, &y).is_some());
        assert!(first_overlap(&mask_claims(Some("0"), inv), &y).is_none());
        assert!(mask_covers_in(Some("MIG-x"), "GPU-b", inv));
        assert!(!mask_covers_in(Some("MIG-x"), "GPU-a", inv));
    }

    #[test]
    fn auto_split_is_proportional_to_free_vram() {
        assert_eq!(
            auto_split_units(&[24 << 30, 16 << 30], Some(20 << 30)),
            Some(vec![6000, 4000])
        );
        assert_eq!(
            auto_split_units(&[1, 1, 1], None),
            Some(vec![3334, 3333, 3333])
        );
        assert_eq!(auto_split_units(&[0, 0], None), Some(vec![5000, 5000]));
        assert_eq!(auto_split_units(&[0, 10], None), Some(vec![0, 10000]));
        // exactly the free VRAM fits; one byte more does not
        assert_eq!(
            auto_split_units(&[30, 10], Some(40)),
            Some(vec![7500, 2500])
        );
        assert_eq!(auto_split_units(&[30, 10], Some(41)), None);
        assert_eq!(auto_split_units(&[0, 0], Some(1)), None);
        assert_eq!(auto_split_units(&[], Some(1)), Some(vec![]));
        assert_eq!(
            auto_split_units(&[u64::MAX, u64::MAX], Some(u64::MAX)),
            Some(vec![5000, 5000])
        );
    }

    #[test]
    fn explicit_ratios_are_validated() {
        assert!(validate_ratios(&[0.5, 0.5], Some(2)).is_ok());
        assert!(validate_ratios(&[0.5, 0.5005], Some(2)).is_ok());
        let e = validate_ratios(&[0.5, 0.5], Some(3)).unwrap_err();
        assert!(e.contains("prepared.tensor_split has 2 ratio(s)"), "{e}");
        assert!(e.contains("names 3 device(s)"), "{e}");
        let e = validate_ratios(&[0.5, 0.6], None).unwrap_err();
        assert!(e.contains("sum to 1.1"), "{e}");
        assert!(validate_ratios(&[f64::NAN, 1.0], None).is_err());
        assert!(validate_ratios(&[-0.5, 1.5], None).is_err());
        assert!(validate_ratios(&[f64::MAX, f64::MAX], None).is_err());
    }

    #[test]
    fn the_flag_is_llama_cpp_syntax_and_never_duplicated() {
        assert_eq!(format_tensor_split(&[0.6, 0.4]), "0.6,0.4");
        assert_eq!(format_tensor_split(&[1.0, 0.0]), "1,0");
        assert_eq!(format_tensor_split(&[0.33333, 0.66667]), "0.3333,0.6667");
        assert_eq!(format_tensor_split(&[0.25, 0.75]), "0.25,0.75");
        assert_eq!(format_tensor_split(&[f64::NAN, -1.0]), "0,0");
        assert!(!format_tensor_split(&[f64::MAX, f64::INFINITY]).is_empty());
    }

    #[test]
    fn quote_cuts_at_a_char_boundary() {
        let text = "é".repeat(100);
        let q = quote(&text);
        assert!(q.ends_with("..."));
        assert!(q.len() <= ENTRY_QUOTE_MAX + 3);
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(format_bytes(8 << 30), "8589934592 bytes (8.0 GiB)");
    }
}
