//! Supervision policy (SPEC sections 7 and 11): the knobs, and pure functions over recorded
//! facts: backoff delay, storm classification.
//!
//! Owns: [`Policy`] with the SPEC defaults, its validation, [`restart_delay_ms`] and
//! [`backoff_delay_ms`].
//! Never: reads a clock or draws randomness; time and entropy come in as arguments
//! (`Context::now_ms`, `Context::random`), and every choice made with them is recorded in
//! the event that carries it.

use serde::{Deserialize, Serialize};

use crate::event::{ExitReason, StormClass};

/// The longest any open breaker stays open, however often it doubles (one day).
pub const OPEN_MS_MAX: u64 = 86_400_000;
/// The most restart timestamps kept for the storm window (bounds state memory; `evolve` has
/// no policy, so the bound is a constant and `storm.max_restarts` is capped below it).
pub const RESTART_WINDOW_CAP: usize = 128;
/// VRAM use changes smaller than this are not journaled (keeps the journal from growing with
/// every NVML sample).
pub const VRAM_DELTA_MIN_BYTES: u64 = 256 * 1024 * 1024;
/// Drain deadline of a reload whose request gives none.
pub const DEFAULT_RELOAD_DRAIN_DEADLINE_MS: u64 = 60_000;

/// All supervision knobs, with SPEC defaults. Loaded from the daemon's TOML (`[health]`,
/// `[stop]`, `[backoff]`, `[breaker]`, `[storm]` tables); unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Health probing.
    pub health: HealthPolicy,
    /// Stopping engines.
    pub stop: StopPolicy,
    /// Restart backoff.
    pub backoff: BackoffPolicy,
    /// Circuit breaker.
    pub breaker: BreakerPolicy,
    /// Restart storms.
    pub storm: StormPolicy,
    /// GPU quarantine (`[gpu] quarantine_after`, `quarantine_window_ms`).
    pub quarantine: QuarantinePolicy,
}

/// When a GPU is quarantined: `after` hardware-class faults within `window_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantinePolicy {
    /// Hardware faults that quarantine a GPU (1..=`gpu::GPU_FAULTS_MAX`).
    pub after: u32,
    /// The sliding window they are counted in, in ms (>= 1).
    pub window_ms: u64,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            after: 3,
            window_ms: 3_600_000,
        }
    }
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthPolicy {
    /// Poll interval while preloading (the supervisor's first retries come sooner: 2 ms after
    /// the first probe, each wait doubling up to this).
    pub preload_interval_ms: u64,
    /// Give up a preload after this long.
    pub preload_timeout_ms: u64,
    /// Probe interval while ready.
    pub ready_interval_ms: u64,
    /// Consecutive failed probes that mean "hung".
    pub failures_to_crash: u32,
    /// Progress probe interval while a ready pool holds leases (the engine's `/slots` or
    /// `/metrics` read to see that its work advances).
    pub progress_interval_ms: u64,
    /// Work reported in progress with none made for this long is a stall (`stalled`).
    pub stall_after_ms: u64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            preload_interval_ms: 500,
            preload_timeout_ms: 120_000,
            ready_interval_ms: 5_000,
            failures_to_crash: 3,
            progress_interval_ms: 5_000,
            stall_after_ms: 120_000,
        }
    }
}

impl HealthPolicy {
    /// `progress_interval_ms` and `stall_after_ms`: both set, the interval within
    /// [`PROGRESS_INTERVAL_MS_MIN`]`..=`[`PROGRESS_INTERVAL_MS_MAX`], and the stall bound at
    /// least two intervals (a stall is seen by comparing two readings).
    pub fn validate_progress(&self) -> Result<(), String> {
        let interval = self.progress_interval_ms;
        if !(PROGRESS_INTERVAL_MS_MIN..=PROGRESS_INTERVAL_MS_MAX).contains(&interval) {
            return Err(format!(
                "health.progress_interval_ms must be within \
                 {PROGRESS_INTERVAL_MS_MIN}..={PROGRESS_INTERVAL_MS_MAX}"
            ));
        }
        if self.stall_after_ms < interval.saturating_mul(2) {
            return Err(format!(
                "health.stall_after_ms ({}) must be at least twice \
                 health.progress_interval_ms ({interval})",
                self.stall_after_ms
            ));
        }
        Ok(())
    }
}

/// The shortest progress probe interval (a probe is an HTTP request to the engine).
pub const PROGRESS_INTERVAL_MS_MIN: u64 = 10;
/// The longest progress probe interval (one hour).
pub const PROGRESS_INTERVAL_MS_MAX: u64 = 3_600_000;

/// `[stop]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StopPolicy {
    /// SIGTERM grace before SIGKILL.
    pub grace_ms: u64,
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy { grace_ms: 5_000 }
    }
}

/// Per-reason backoff multipliers (`reason_multiplier = { cuda_error = 2.0, ... }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReasonMultiplier {
    /// crash.
    pub crash: f64,
    /// signal.
    pub signal: f64,
    /// oom_killed.
    pub oom_killed: f64,
    /// cuda_error.
    pub cuda_error: f64,
    /// vram_oom.
    pub vram_oom: f64,
    /// driver_error.
    pub driver_error: f64,
    /// health_timeout.
    pub health_timeout: f64,
    /// unknown.
    pub unknown: f64,
    /// stalled.
    pub stalled: f64,
}

impl Default for ReasonMultiplier {
    fn default() -> Self {
        ReasonMultiplier {
            crash: 1.0,
            signal: 1.0,
            oom_killed: 1.0,
            cuda_error: 2.0,
            vram_oom: 2.0,
            driver_error: 2.0,
            health_timeout: 1.0,
            unknown: 1.0,
            stalled: 1.0,
        }
    }
}

impl ReasonMultiplier {
    /// The multiplier of `reason` (1.0 for `graceful`, which is never restarted).
    pub fn of(&self, reason: ExitReason) -> f64 {
        match reason {
            ExitReason::Graceful => 1.0,
            ExitReason::Crash => self.crash,
            ExitReason::Signal => self.signal,
            ExitReason::OomKilled => self.oom_killed,
            ExitReason::CudaError => self.cuda_error,
            ExitReason::VramOom => self.vram_oom,
            ExitReason::DriverError => self.driver_error,
            ExitReason::HealthTimeout => self.health_timeout,
            ExitReason::Unknown => self.unknown,
            ExitReason::Stalled => self.stalled,
        }
    }

    fn all(&self) -> [(&'static str, f64); 9] {
        [
            ("crash", self.crash),
            ("signal", self.signal),
            ("oom_killed", self.oom_killed),
            ("cuda_error", self.cuda_error),
            ("vram_oom", self.vram_oom),
            ("driver_error", self.driver_error),
            ("health_timeout", self.health_timeout),
            ("unknown", self.unknown),
            ("stalled", self.stalled),
        ]
    }
}

/// `[backoff]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffPolicy {
    /// The delay of the second restart within the reset window (the first is immediate, see
    /// [`restart_delay_ms`]).
    pub initial_ms: u64,
    /// No backoff delay is shorter (the immediate first restart is not a backoff).
    pub min_ms: u64,
    /// Growth per attempt.
    pub factor: f64,
    /// Per-reason multipliers.
    pub reason_multiplier: ReasonMultiplier,
    /// No delay is longer.
    pub max_ms: u64,
    /// ± fraction of jitter (0.1 = ±10 %).
    pub jitter: f64,
    /// Stable running that resets the attempt count.
    pub reset_after_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial_ms: 1_000,
            min_ms: 500,
            factor: 2.0,
            reason_multiplier: ReasonMultiplier::default(),
            max_ms: 60_000,
            jitter: 0.1,
            reset_after_ms: 300_000,
        }
    }
}

/// `[breaker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    /// Consecutive failures of one class that open it.
    pub failure_threshold: u32,
    /// How long it stays open the first time.
    pub open_ms: u64,
    /// Stable running of the trial that closes it.
    pub close_after_stable_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_ms: 300_000,
            close_after_stable_ms: 60_000,
        }
    }
}

/// `[storm]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormPolicy {
    /// More restarts than this in the window is a storm (capped at `RESTART_WINDOW_CAP - 1`).
    pub max_restarts: u32,
    /// The sliding window.
    pub window_ms: u64,
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            max_restarts: 10,
            window_ms: 60_000,
        }
    }
}

impl StormPolicy {
    /// `max_restarts`, capped so that the bounded window can always see a storm.
    pub fn max_restarts_effective(&self) -> u32 {
        self.max_restarts
            .min(RESTART_WINDOW_CAP.saturating_sub(1) as u32)
    }
}

impl Policy {
    /// Checks every value; the error names the key (`backoff.factor`), for the config loader.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.backoff;
        if self.health.preload_interval_ms == 0 {
            return Err("health.preload_interval_ms must be > 0".into());
        }
        if self.health.preload_timeout_ms == 0 {
            return Err("health.preload_timeout_ms must be > 0".into());
        }
        if self.health.ready_interval_ms == 0 {
            return Err("health.ready_interval_ms must be > 0".into());
        }
        if self.health.failures_to_crash == 0 {
            return Err("health.failures_to_crash must be >= 1".into());
        }
        self.health.validate_progress()?;
        let faults_max = crate::gpu::GPU_FAULTS_MAX;
        if self.quarantine.after == 0 || self.quarantine.after as usize > faults_max {
            return Err(format!(
                "gpu.quarantine_after must be within 1..={faults_max}"
            ));
        }
        if self.quarantine.window_ms == 0 {
            return Err("gpu.quarantine_window_ms must be > 0".into());
        }
        if !(b.factor.is_finite() && b.factor >= 1.0 && b.factor <= 100.0) {
            return Err("backoff.factor must be within 1.0..=100.0".into());
        }
        if !(b.jitter.is_finite() && (0.0..=0.5).contains(&b.jitter)) {
            return Err("backoff.jitter must be within 0.0..=0.5".into());
        }
        if b.min_ms > b.max_ms {
            return Err("backoff.min_ms must be <= backoff.max_ms".into());
        }
        if b.initial_ms == 0 || b.max_ms == 0 {
            return Err("backoff.initial_ms and backoff.max_ms must be > 0".into());
        }
        for (name, m) in b.reason_multiplier.all() {
            if !(m.is_finite() && (0.0..=100.0).contains(&m)) {
                return Err(format!(
                    "backoff.reason_multiplier.{name} must be within 0.0..=100.0"
                ));
            }
        }
        if self.breaker.failure_threshold == 0 {
            return Err("breaker.failure_threshold must be >= 1".into());
        }
        if self.breaker.open_ms == 0 || self.breaker.open_ms > OPEN_MS_MAX {
            return Err(format!("breaker.open_ms must be within 1..={OPEN_MS_MAX}"));
        }
        if self.storm.max_restarts == 0 || self.storm.max_restarts as usize >= RESTART_WINDOW_CAP {
            return Err(format!(
                "storm.max_restarts must be within 1..={}",
                RESTART_WINDOW_CAP - 1
            ));
        }
        if self.storm.window_ms == 0 {
            return Err("storm.window_ms must be > 0".into());
        }
        Ok(())
    }
}

/// The delay before restart number `attempt` (1-based) of a pool: 0 for the first (a fresh
/// pool, or one that ran stably for `reset_after_ms`: a one-off crash restarts at once, as
/// kubelet does), then [`backoff_delay_ms`] from the second crash within the reset window,
/// starting at `initial_ms`.
pub fn restart_delay_ms(
    policy: &BackoffPolicy,
    attempt: u32,
    reason: ExitReason,
    random: u64,
) -> u64 {
    if attempt <= 1 {
        return 0;
    }
    backoff_delay_ms(policy, attempt - 1, reason, random)
}

/// The delay before restart number `attempt` (1-based; 0 is treated as 1) after a failure
/// with `reason`: `initial * factor^(attempt-1) * multiplier(reason)`, capped at `max_ms`,
/// with ±`jitter` derived deterministically from `random`, then clamped to `min_ms..=max_ms`.
///
/// Total for any input: non-finite intermediate values saturate to `max_ms`.
pub fn backoff_delay_ms(
    policy: &BackoffPolicy,
    attempt: u32,
    reason: ExitReason,
    random: u64,
) -> u64 {
    let exponent = attempt.max(1).saturating_sub(1).min(1_000) as i32;
    let max = policy.max_ms as f64;
    let mut base = policy.initial_ms as f64
        * policy.factor.powi(exponent)
        * policy.reason_multiplier.of(reason);
    if !base.is_finite() || base > max {
        base = max;
    }
    if base < 0.0 {
        base = 0.0;
    }
    let jitter = if policy.jitter.is_finite() {
        policy.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // 53 random bits -> [0, 1) -> [-1, 1).
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    let delay = base * (1.0 + jitter * (2.0 * unit - 1.0));
    let delay = if delay.is_finite() {
        delay.round() as u64
    } else {
        policy.max_ms
    };
    let low = policy.min_ms.min(policy.max_ms);
    delay.clamp(low, policy.max_ms)
}

/// The dominant reason of `reasons` (most frequent; ties go to the most recent), or `unknown`.
pub fn dominant_reason(reasons: impl IntoIterator<Item = ExitReason>) -> ExitReason {
    let mut counts: Vec<(ExitReason, u32, usize)> = Vec::new();
    for (i, reason) in reasons.into_iter().enumerate() {
        match counts.iter_mut().find(|(r, _, _)| *r == reason) {
            Some(entry) => {
                entry.1 = entry.1.saturating_add(1);
                entry.2 = i;
            }
            None => counts.push((reason, 1, i)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n, last)| (*n, *last))
        .map_or(ExitReason::Unknown, |(r, _, _)| r)
}

/// The storm classification and hint for the reasons in the window.
pub fn classify_storm(reasons: impl IntoIterator<Item = ExitReason>) -> (StormClass, &'static str) {
    let class = StormClass::of(dominant_reason(reasons));
    (class, class.hint())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_spec() {
        let p = Policy::default();
        assert!(p.validate().is_ok());
        assert_eq!(p.backoff.initial_ms, 1000);
        assert_eq!(p.breaker.failure_threshold, 5);
        assert_eq!(p.storm.max_restarts, 10);
    }

    #[test]
    fn delays_double_and_cap_within_jitter() {
        let p = BackoffPolicy::default();
        let expected = [1000u64, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000];
        for (i, want) in expected.iter().enumerate() {
            let attempt = i as u32 + 1;
            for random in [0u64, u64::MAX, 1 << 63, 12345678901234567] {
                let d = backoff_delay_ms(&p, attempt, ExitReason::Crash, random);
                let lo = (*want as f64 * 0.9).floor() as u64;
                let hi = (*want as f64 * 1.1).ceil() as u64;
                assert!(
                    d >= lo && d <= hi.min(60_000),
                    "attempt {attempt}: {d} not in {lo}..{hi}"
                );
            }
        }
        // midpoint random = no jitter
        assert_eq!(backoff_delay_ms(&p, 1, ExitReason::Crash, 1 << 63), 1000);
        assert_eq!(backoff_delay_ms(&p, 3, ExitReason::Crash, 1 << 63), 4000);
    }

    #[test]
    fn the_first_restart_is_immediate_and_the_second_starts_the_backoff() {
        let p = BackoffPolicy::default();
        for reason in [
            ExitReason::Crash,
            ExitReason::CudaError,
            ExitReason::Stalled,
        ] {
            assert_eq!(restart_delay_ms(&p, 0, reason, u64::MAX), 0);
            assert_eq!(restart_delay_ms(&p, 1, reason, u64::MAX), 0);
        }
        assert_eq!(restart_delay_ms(&p, 2, ExitReason::Crash, 1 << 63), 1000);
        assert_eq!(restart_delay_ms(&p, 4, ExitReason::Crash, 1 << 63), 4000);
    }

    #[test]
    fn reason_multiplier_applies() {
        let p = BackoffPolicy::default();
        assert_eq!(
            backoff_delay_ms(&p, 1, ExitReason::CudaError, 1 << 63),
            2000
        );
        assert_eq!(backoff_delay_ms(&p, 2, ExitReason::VramOom, 1 << 63), 4000);
        assert_eq!(
            backoff_delay_ms(&p, 1, ExitReason::DriverError, 1 << 63),
            2000
        );
        assert_eq!(
            backoff_delay_ms(&p, 1, ExitReason::OomKilled, 1 << 63),
            1000
        );
    }

    #[test]
    fn min_ms_is_a_floor() {
        let p = BackoffPolicy {
            initial_ms: 100,
            ..BackoffPolicy::default()
        };
        assert_eq!(backoff_delay_ms(&p, 1, ExitReason::Crash, 0), 500);
        let p = BackoffPolicy {
            reason_multiplier: ReasonMultiplier {
                crash: 0.0,
                ..ReasonMultiplier::default()
            },
            ..BackoffPolicy::default()
        };
        assert_eq!(backoff_delay_ms(&p, 4, ExitReason::Crash, 0), 500);
    }

    #[test]
    fn total_on_silly_policies() {
        let p = BackoffPolicy {
            factor: f64::INFINITY,
            jitter: f64::NAN,
            min_ms: 10,
            max_ms: 5,
            ..BackoffPolicy::default()
        };
        for attempt in [0, 1, 2, u32::MAX] {
            let d = backoff_delay_ms(&p, attempt, ExitReason::Unknown, u64::MAX);
            assert!(d <= 5);
        }
    }

    #[test]
    fn storm_classification_by_dominant_reason() {
        use ExitReason::*;
        assert_eq!(
            classify_storm([VramOom, Crash, VramOom]).0,
            StormClass::VramOomStorm
        );
        assert_eq!(
            classify_storm([OomKilled, OomKilled]).0,
            StormClass::OomStorm
        );
        assert_eq!(classify_storm([CudaError]).0, StormClass::CudaStorm);
        assert_eq!(
            classify_storm([HealthTimeout, Signal, HealthTimeout]).0,
            StormClass::HangStorm
        );
        assert_eq!(classify_storm([]).0, StormClass::CrashStorm);
        assert!(classify_storm([VramOom]).1.contains("VRAM OOM"));
    }

    #[test]
    fn policy_loads_with_defaults_and_refuses_unknown_keys() {
        let p: Policy = serde_json::from_str(r#"{"backoff":{"max_ms":30000}}"#).unwrap();
        assert_eq!(p.backoff.max_ms, 30000);
        assert_eq!(p.backoff.initial_ms, 1000);
        assert!(serde_json::from_str::<Policy>(r#"{"backof":{}}"#).is_err());
        assert!(serde_json::from_str::<Policy>(
            r#"{"backoff":{"reason_multiplier":{"cuda":1.0}}}"#
        )
        .is_err());
    }
}
