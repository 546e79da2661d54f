//! The shell's clock: [`Clock`], with the system clock and a manual one for tests.
//!
//! Owns: "now" in ms since the epoch for the node actor (`Context::now_ms`, event stamps) and
//! the waits on absolute times (timers, health deadlines) that follow it.
//! Never: paces I/O (probe intervals use tokio's timer); never read by the pure core, which
//! gets time only as `Context::now_ms` and recorded fields.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Wall-clock time for decisions and deadlines.
pub trait Clock: Send + Sync + 'static {
    /// Now, ms since the epoch.
    fn now_ms(&self) -> u64;
    /// Resolves once `now_ms() >= at_ms` (at once if already past).
    fn sleep_until(&self, at_ms: u64) -> Sleep;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The longest single sleep of [`SystemClock::sleep_until`] before it looks at the wall clock
/// again (so a clock step is noticed within this bound).
const WALL_CHECK_MS: u64 = 1_000;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, at_ms: u64) -> Sleep {
        let clock = *self;
        Box::pin(async move {
            loop {
                let now = clock.now_ms();
                if now >= at_ms {
                    return;
                }
                let wait_ms = (at_ms - now).min(WALL_CHECK_MS);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
        })
    }
}

/// A clock that moves only when told (tests, feature scenarios that speak of time).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<u64>>,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::Sender::new(start_ms)),
        }
    }

    /// Moves the clock forward by `ms`, waking every sleeper whose time has come.
    pub fn advance(&self, ms: u64) {
        self.now.send_modify(|now| *now = now.saturating_add(ms));
    }

    /// Sets the clock (never backwards).
    pub fn set(&self, at_ms: u64) {
        self.now.send_modify(|now| *now = (*now).max(at_ms));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, at_ms: u64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, nothing will ever wake us.
            let _ = rx.wait_for(|now| *now >= at_ms).await;
            if *rx.borrow() < at_ms {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Formats a wall-clock time in ms since the epoch as RFC 3339 with milliseconds (UTC).
pub fn format_ts_ms(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new(1_000);
        let sleeper = tokio::spawn(clock.sleep_until(1_500));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(499);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(1);
        sleeper.await.unwrap();
        assert_eq!(clock.now_ms(), 1_500);
    }

    #[tokio::test]
    async fn past_deadlines_resolve_at_once() {
        SystemClock.sleep_until(0).await;
        ManualClock::new(10).sleep_until(5).await;
    }
}
