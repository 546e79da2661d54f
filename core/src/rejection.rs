//! [`Rejection`]: why `decide` refused a command, one variant per SPEC section 5 code that the
//! core can decide.
//!
//! Owns: the codes and the messages (which name the pool and say what to do).
//! Never: maps to HTTP statuses; the API layer does that from `code()`.

/// A refused command. Nothing was journaled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Malformed request (`INVALID_REQUEST`).
    #[error("invalid request: {what}")]
    InvalidRequest {
        /// What is wrong, naming the field.
        what: String,
    },
    /// Unknown pool (`POOL_NOT_FOUND`).
    #[error("pool '{pool_id}' not found; preload it first (GET /v2/pools lists the known pools)")]
    PoolNotFound {
        /// The pool.
        pool_id: String,
    },
    /// Unknown lease (`LEASE_NOT_FOUND`).
    #[error("lease '{lease_id}' not found on pool '{pool_id}'; it was released, or dropped when the engine stopped or crashed")]
    LeaseNotFound {
        /// The pool.
        pool_id: String,
        /// The lease.
        lease_id: String,
    },
    /// A conflicting operation is under way (`POOL_BUSY`).
    #[error("pool '{pool_id}' is busy: {operation}; retry when it is done")]
    PoolBusy {
        /// The pool.
        pool_id: String,
        /// What is under way.
        operation: String,
    },
    /// The pool is draining (`POOL_DRAINING`).
    #[error("pool '{pool_id}' is draining and takes no new leases; use another pool")]
    PoolDraining {
        /// The pool.
        pool_id: String,
    },
    /// The mask names GPUs the node lacks, or GPUs another pool holds while sharing is off
    /// (`INVALID_DEVICE_MASK`).
    #[error("pool '{pool_id}': invalid device mask '{mask}': {reason}; see GET /v2/gpus")]
    InvalidDeviceMask {
        /// The pool.
        pool_id: String,
        /// The mask.
        mask: String,
        /// Why.
        reason: String,
    },
    /// No free slot (`SLOTS_EXHAUSTED`).
    #[error("pool '{pool_id}' has no free slot (all {slots_total} leased); retry after a lease is released")]
    SlotsExhausted {
        /// The pool.
        pool_id: String,
        /// Its slots.
        slots_total: u32,
    },
    /// Not ready (`POOL_UNREADY`).
    #[error(
        "pool '{pool_id}' is not ready (phase {phase}){}; wait for it to become ready or preload it",
        restart_due(*.retry_after_ms)
    )]
    PoolUnready {
        /// The pool.
        pool_id: String,
        /// Its phase.
        phase: String,
        /// In backoff: until its restart is due (the answer's `Retry-After`).
        retry_after_ms: Option<u64>,
    },
    /// No usable GPU while one is required (`GPU_REQUIRED`).
    #[error("a GPU is required and none is usable: {reason}{}", gpu_required_hint(.reason))]
    GpuRequired {
        /// Why.
        reason: String,
    },
    /// Breaker open (`CIRCUIT_OPEN`).
    #[error("pool '{pool_id}': circuit breaker open after repeated failures; retry in {retry_after_ms} ms or reset it (POST /v2/pools/{pool_id}/breaker/reset)")]
    CircuitOpen {
        /// The pool.
        pool_id: String,
        /// Until it half-opens.
        retry_after_ms: u64,
    },
    /// The device mask covers a quarantined GPU (`GPU_QUARANTINED`); no mask covers every GPU.
    #[error("pool '{pool_id}': GPU {gpu_uuid} is quarantined after repeated hardware faults (Xid, ECC, driver resets) and no engine starts on it; choose other GPUs with prepared.device_mask, or end the quarantine once the GPU is repaired (POST /v2/gpus/{gpu_uuid}/unquarantine)")]
    GpuQuarantined {
        /// The pool.
        pool_id: String,
        /// The quarantined GPU.
        gpu_uuid: String,
    },
    /// The engine needs more VRAM than the devices of its mask have free (`INSUFFICIENT_VRAM`,
    /// OC-POOL-3002); decided before anything is spawned.
    #[error("pool '{pool_id}' needs {} of VRAM{note} but {devices} {} {} free; free VRAM there (stop or remove a pool using it), choose other GPUs with prepared.device_mask, or lower prepared.vram_required_bytes", crate::gpu::format_bytes(*.required_bytes), if .devices.contains(", ") { "have" } else { "has" }, crate::gpu::format_bytes(*.available_bytes))]
    InsufficientVram {
        /// The pool.
        pool_id: String,
        /// Bytes required (of the whole engine, or of one device's share of a split).
        required_bytes: u64,
        /// Bytes free on `devices`.
        available_bytes: u64,
        /// The devices (`GPU 0 (GPU-...), GPU 1 (GPU-...)`).
        devices: String,
        /// Context for the numbers (`" (estimated from the model file size)"`, a split share).
        note: String,
    },
    /// The engine needs more host RAM than is available. SPEC section 5 has no RAM code, so it
    /// answers `INSUFFICIENT_VRAM` (503) with a message that says host RAM.
    #[error("pool '{pool_id}' needs {} of host RAM but {} is available; free host memory (stop or remove a pool) or lower prepared.ram_required_bytes", crate::gpu::format_bytes(*.required_bytes), crate::gpu::format_bytes(*.available_bytes))]
    InsufficientRam {
        /// The pool.
        pool_id: String,
        /// Bytes required.
        required_bytes: u64,
        /// Bytes available.
        available_bytes: u64,
    },
}

impl Rejection {
    /// How long until asking again may succeed, when the core knows it (decided with the
    /// shell's time, from what the registry holds): until an open breaker half-opens
    /// (`CIRCUIT_OPEN`), until the restart of a pool in backoff is due (`POOL_UNREADY`). The
    /// API answers it as `Retry-After`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Rejection::CircuitOpen { retry_after_ms, .. } => Some(*retry_after_ms),
            Rejection::PoolUnready { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// The SPEC section 5 code.
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            Rejection::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            Rejection::PoolNotFound { .. } => ErrorCode::PoolNotFound,
            Rejection::LeaseNotFound { .. } => ErrorCode::LeaseNotFound,
            Rejection::PoolBusy { .. } => ErrorCode::PoolBusy,
            Rejection::PoolDraining { .. } => ErrorCode::PoolDraining,
            Rejection::InvalidDeviceMask { .. } => ErrorCode::InvalidDeviceMask,
            Rejection::SlotsExhausted { .. } => ErrorCode::SlotsExhausted,
            Rejection::PoolUnready { .. } => ErrorCode::PoolUnready,
            Rejection::GpuRequired { .. } => ErrorCode::GpuRequired,
            Rejection::CircuitOpen { .. } => ErrorCode::CircuitOpen,
            Rejection::GpuQuarantined { .. } => ErrorCode::GpuQuarantined,
            Rejection::InsufficientVram { .. } | Rejection::InsufficientRam { .. } => {
                ErrorCode::InsufficientVram
            }
        }
    }
}

/// `"; its restart is due in N ms"` for a pool in backoff.
fn restart_due(retry_after_ms: Option<u64>) -> String {
    retry_after_ms.map_or_else(String::new, |ms| format!("; its restart is due in {ms} ms"))
}

/// The remedy of `GPU_REQUIRED`, unless the reason already gives it.
fn gpu_required_hint(reason: &str) -> &'static str {
    if reason.contains("--dev") {
        ""
    } else {
        "; fix the GPU or run with --dev (require_gpu = false)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_required_names_the_remedy_once() {
        let with = Rejection::GpuRequired {
            reason: "no NVIDIA driver; run with --dev for CPU-only engines".into(),
        };
        assert_eq!(with.to_string().matches("--dev").count(), 1, "{with}");
        let without = Rejection::GpuRequired {
            reason: "NVML lists no GPU".into(),
        };
        assert!(
            without
                .to_string()
                .ends_with("run with --dev (require_gpu = false)"),
            "{without}"
        );
    }
}
