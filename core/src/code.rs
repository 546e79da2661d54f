//! [`ErrorCode`]: the one vocabulary of SPEC section 5's error codes.
//!
//! Every refusal and failure the daemon answers carries one of these. The core's
//! [`Rejection`](crate::Rejection)s and [`StartFailure`](crate::StartFailure)s name theirs;
//! the API derives its HTTP status from it and the OpenAPI document its enum (both by an
//! exhaustive `match` or from [`ErrorCode::ALL`], so a code added here without a status or a
//! place in the document does not build).
//!
//! Owns: the codes and their wire spelling. Never: maps to HTTP statuses (the API does).

use serde::{Deserialize, Serialize};

/// Declares [`ErrorCode`] with [`ErrorCode::ALL`] and [`ErrorCode::as_str`] from one list, so
/// that a code cannot be in one and missing from another.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)+) => {
        /// A SPEC section 5 error code, spelled on the wire in `SCREAMING_SNAKE_CASE`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the SPEC's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// Its wire spelling (`POOL_NOT_FOUND`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)+
                }
            }
        }
    };
}

error_codes! {
    /// The request is malformed (a field, a pool id, a body that is not JSON).
    InvalidRequest => "INVALID_REQUEST",
    /// A token is required and was missing or wrong.
    Unauthorized => "UNAUTHORIZED",
    /// The engine's binary is not in `allowed_binaries`.
    BinaryNotAllowed => "BINARY_NOT_ALLOWED",
    /// A browser's `Origin` that `[api] allowed_origins` does not list.
    OriginNotAllowed => "ORIGIN_NOT_ALLOWED",
    /// No such pool.
    PoolNotFound => "POOL_NOT_FOUND",
    /// No such lease on the pool.
    LeaseNotFound => "LEASE_NOT_FOUND",
    /// The pool is busy with another operation.
    PoolBusy => "POOL_BUSY",
    /// The pool is draining: no new leases.
    PoolDraining => "POOL_DRAINING",
    /// The model file or URI could not be found.
    ModelNotFound => "MODEL_NOT_FOUND",
    /// The device mask names GPUs that do not exist or are taken.
    InvalidDeviceMask => "INVALID_DEVICE_MASK",
    /// Every slot of the pool is leased.
    SlotsExhausted => "SLOTS_EXHAUSTED",
    /// The engine could not be started.
    SpawnFailed => "SPAWN_FAILED",
    /// The engine did not answer healthy in time.
    HealthTimeout => "HEALTH_TIMEOUT",
    /// The engine exited while starting.
    EngineExited => "ENGINE_EXITED",
    /// A reload failed (the answer says whether the old model serves again).
    ReloadFailed => "RELOAD_FAILED",
    /// The engine answered healthy but is not on the GPUs of its mask.
    CpuSpillover => "CPU_SPILLOVER",
    /// The engine's port is held by another process (the answer names its pid and command
    /// line), or someone else answered on it for the engine.
    PortInUse => "PORT_IN_USE",
    /// The pool is not ready (starting, in backoff, stopped).
    PoolUnready => "POOL_UNREADY",
    /// A GPU is required and none is usable.
    GpuRequired => "GPU_REQUIRED",
    /// Not enough free VRAM (or host RAM) for the engine.
    InsufficientVram => "INSUFFICIENT_VRAM",
    /// The pool's circuit breaker is open.
    CircuitOpen => "CIRCUIT_OPEN",
    /// A GPU of the pool's device mask is quarantined after repeated hardware faults.
    GpuQuarantined => "GPU_QUARANTINED",
    /// The journal cannot take writes now; nothing was recorded.
    JournalUnavailable => "JOURNAL_UNAVAILABLE",
    /// A seq before the earliest one retention keeps.
    HistoryExpired => "HISTORY_EXPIRED",
    /// Every API connection is busy.
    Overloaded => "OVERLOADED",
    /// The journal failed, the daemon is shutting down, or a wait gave up.
    Internal => "INTERNAL",
}

impl ErrorCode {
    /// The code spelled `text` (a code recorded in the journal as text), if it is one.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_is_spelled_as_serde_spells_it_and_parses_back() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOT_A_CODE"), None);
    }

    #[test]
    fn all_lists_each_code_once() {
        for (i, a) in ErrorCode::ALL.iter().enumerate() {
            assert!(!ErrorCode::ALL[i + 1..].contains(a), "{a} twice");
        }
    }
}
