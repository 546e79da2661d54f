//! Progress, not just health: whether an engine that says it is working makes progress.
//!
//! The shell reads what the engine says it is doing (llama-server's `/slots` or `/metrics`,
//! vLLM's `/metrics`) into a [`Reading`]: whether work is in progress, and a mark that moves
//! whenever that work advances (tokens decoded). [`ProgressWatch::observe`] compares it with
//! the last reading and the time it last moved, at a time given by the caller (the injected
//! clock), and answers a [`Verdict`]: idle, advancing, waiting, or stalled once work has been
//! in progress with the mark standing still for `stall_after_ms`.
//!
//! An engine may instead declare its own progress probe ([`ProgressRequest`]: a request, for
//! example a one-token completion, that must answer with the expected status within the
//! stall bound); the shell turns each answer into a reading of its own (see
//! [`ProgressRequest`]).
//!
//! Owns: what "stalled" means, and the shape and checks of a declared progress request. Never: reads a clock, talks to an engine or keeps more than
//! one reading; the shell holds one watch per engine (a new engine starts a new watch) and
//! reports a stall as an observation, which `decide` turns into a `stalled` failure.

use serde::{Deserialize, Serialize};

/// The longest path of a declared progress request, in bytes.
pub const PROGRESS_PATH_MAX: usize = 1024;
/// The largest body of a declared progress request, in bytes.
pub const PROGRESS_BODY_MAX: usize = 64 * 1024;
/// The methods a declared progress request may use.
pub const PROGRESS_METHODS: [&str; 3] = ["GET", "POST", "PUT"];

/// The progress probe an engine declares (`prepared.progress`): while its pool holds leases,
/// the shell sends `method path` (with `body` as JSON, when given) every
/// `[health] progress_interval_ms`. An answer with `expect_status` within the stall bound is
/// progress; any other answer, or none, is none. Work counts as in progress from the first
/// read on, so an engine that never answers it correctly is stalled after
/// `[health] stall_after_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    /// The route, starting with `/` (for example `/completion`).
    pub path: String,
    /// `GET`, `POST` or `PUT`; `GET` unless told.
    #[serde(default = "default_method")]
    pub method: String,
    /// The request's body, sent as `application/json` (`POST` and `PUT` only).
    #[serde(default)]
    pub body: Option<String>,
    /// The status a working engine answers; 200 unless told.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_expect_status() -> u16 {
    200
}

impl ProgressRequest {
    /// Checks the request; the error names the field (`prepared.progress.*`).
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.len() > PROGRESS_PATH_MAX {
            return Err(format!(
                "prepared.progress.path must start with '/' and be at most {PROGRESS_PATH_MAX} bytes"
            ));
        }
        if !PROGRESS_METHODS.contains(&self.method.as_str()) {
            return Err(format!(
                "prepared.progress.method must be one of {}",
                PROGRESS_METHODS.join(", ")
            ));
        }
        match &self.body {
            Some(_) if self.method == "GET" => {
                return Err("prepared.progress.body needs method POST or PUT".to_string())
            }
            Some(body) if body.len() > PROGRESS_BODY_MAX => {
                return Err(format!(
                    "prepared.progress.body is longer than {PROGRESS_BODY_MAX} bytes"
                ))
            }
            _ => {}
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err("prepared.progress.expect_status must be 100..=599".to_string());
        }
        Ok(())
    }
}

/// What an engine said it was doing, parsed from its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Work in progress (a slot processing, requests running), with a mark that moves when
    /// the work advances (a digest of the decoded-token counters: compared only for equality).
    Working {
        /// Moves whenever the work advances.
        mark: u64,
    },
    /// Nothing in progress: an idle engine, leases or not, is never stalled.
    Idle,
    /// The engine did not answer the progress read (timed out, refused, unreadable): counted
    /// as no progress while work was in progress at the last answer, as nothing otherwise.
    Unanswered,
}

/// What a reading means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing in progress.
    Idle,
    /// Work in progress, and it moved since the last reading (or just began).
    Advancing,
    /// Work in progress with no progress for `for_ms`, still under the bound.
    Waiting {
        /// Since the mark last moved.
        for_ms: u64,
    },
    /// Work in progress with no progress for `for_ms` >= `stall_after_ms`.
    Stalled {
        /// Since the mark last moved.
        for_ms: u64,
    },
}

/// The last mark seen moving, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressWatch {
    last: Option<Moved>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moved {
    mark: u64,
    at_ms: u64,
}

impl ProgressWatch {
    /// A watch that has seen nothing.
    pub fn new() -> ProgressWatch {
        ProgressWatch::default()
    }

    /// Forgets the last reading (the pool's leases were all returned: nothing to watch).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Takes `reading`, made at `now_ms`; a stall is work in progress whose mark has not
    /// moved for `stall_after_ms`. A clock that goes back never makes a stall.
    pub fn observe(&mut self, reading: Reading, now_ms: u64, stall_after_ms: u64) -> Verdict {
        let mark = match (reading, self.last) {
            (Reading::Idle, _) | (Reading::Unanswered, None) => {
                self.last = None;
                return Verdict::Idle;
            }
            (Reading::Unanswered, Some(last)) => last.mark,
            (Reading::Working { mark }, _) => mark,
        };
        match self.last {
            Some(last) if last.mark == mark => {
                let for_ms = now_ms.saturating_sub(last.at_ms);
                if for_ms >= stall_after_ms {
                    Verdict::Stalled { for_ms }
                } else {
                    Verdict::Waiting { for_ms }
                }
            }
            _ => {
                self.last = Some(Moved {
                    mark,
                    at_ms: now_ms,
                });
                Verdict::Advancing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: u64 = 1_000;

    fn working(mark: u64) -> Reading {
        Reading::Working { mark }
    }

    #[test]
    fn work_standing_still_for_the_bound_is_a_stall() {
        let mut watch = ProgressWatch::new();
        assert_eq!(watch.observe(working(5), 10_000, BOUND), Verdict::Advancing);
        assert_eq!(
            watch.observe(working(5), 10_999, BOUND),
            Verdict::Waiting { for_ms: 999 }
        );
        assert_eq!(
            watch.observe(working(5), 11_000, BOUND),
            Verdict::Stalled { for_ms: 1_000 }
        );
    }

    #[test]
    fn work_that_moves_is_never_stalled() {
        let mut watch = ProgressWatch::new();
        for (i, at) in (0..100u64).map(|i| (i, i * 900)) {
            let verdict = watch.observe(working(i), at, BOUND);
            assert_eq!(verdict, Verdict::Advancing, "reading {i} at {at}");
        }
        // Standing still from the last move on counts from that move, not from the first.
        assert_eq!(
            watch.observe(working(99), 99 * 900 + 999, BOUND),
            Verdict::Waiting { for_ms: 999 }
        );
    }

    #[test]
    fn an_idle_engine_is_never_stalled_however_long_it_is_idle() {
        let mut watch = ProgressWatch::new();
        for at in [0, BOUND, 10 * BOUND, 1_000 * BOUND] {
            assert_eq!(watch.observe(Reading::Idle, at, BOUND), Verdict::Idle);
        }
        // Work that begins after a long idle time counts from its beginning.
        assert_eq!(
            watch.observe(working(0), 1_000 * BOUND + 1, BOUND),
            Verdict::Advancing
        );
        assert_eq!(
            watch.observe(working(0), 1_000 * BOUND + 2, BOUND),
            Verdict::Waiting { for_ms: 1 }
        );
    }

    #[test]
    fn idle_between_two_equal_marks_restarts_the_count() {
        let mut watch = ProgressWatch::new();
        watch.observe(working(7), 0, BOUND);
        assert_eq!(watch.observe(Reading::Idle, 600, BOUND), Verdict::Idle);
        assert_eq!(watch.observe(working(7), 1_200, BOUND), Verdict::Advancing);
        assert_eq!(
            watch.observe(working(7), 1_300, BOUND),
            Verdict::Waiting { for_ms: 100 }
        );
    }

    #[test]
    fn unanswered_reads_stall_work_in_progress_but_not_an_idle_engine() {
        let mut watch = ProgressWatch::new();
        assert_eq!(watch.observe(Reading::Unanswered, 0, BOUND), Verdict::Idle);
        assert_eq!(
            watch.observe(Reading::Unanswered, 5 * BOUND, BOUND),
            Verdict::Idle
        );
        watch.observe(working(3), 6 * BOUND, BOUND);
        assert_eq!(
            watch.observe(Reading::Unanswered, 7 * BOUND, BOUND),
            Verdict::Stalled { for_ms: BOUND }
        );
    }

    #[test]
    fn a_reset_forgets_the_work_and_a_clock_going_back_never_stalls() {
        let mut watch = ProgressWatch::new();
        watch.observe(working(1), 5_000, BOUND);
        watch.reset();
        assert_eq!(watch.observe(working(1), 9_000, BOUND), Verdict::Advancing);
        assert_eq!(
            watch.observe(working(1), 1_000, BOUND),
            Verdict::Waiting { for_ms: 0 }
        );
    }

    #[test]
    fn a_declared_request_is_checked_field_by_field() {
        let ok = ProgressRequest {
            path: "/completion".into(),
            method: "POST".into(),
            body: Some("{}".into()),
            expect_status: 200,
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |edit: fn(&mut ProgressRequest), field: &str| {
            let mut request = ok.clone();
            edit(&mut request);
            let error = request.validate().unwrap_err();
            assert!(error.contains(field), "{field}: {error}");
        };
        bad(|r| r.path = "completion".into(), "progress.path");
        bad(
            |r| r.path = format!("/{}", "a".repeat(PROGRESS_PATH_MAX)),
            "progress.path",
        );
        bad(|r| r.method = "DELETE".into(), "progress.method");
        bad(|r| r.method = "GET".into(), "progress.body");
        bad(
            |r| r.body = Some("x".repeat(PROGRESS_BODY_MAX + 1)),
            "progress.body",
        );
        bad(|r| r.expect_status = 99, "progress.expect_status");
        bad(|r| r.expect_status = 600, "progress.expect_status");
        // The defaults: GET, no body, 200.
        let minimal: ProgressRequest = serde_json::from_str(r#"{"path": "/health"}"#).unwrap();
        assert_eq!(
            (minimal.method.as_str(), minimal.expect_status),
            ("GET", 200)
        );
        assert_eq!(minimal.validate(), Ok(()));
        assert!(serde_json::from_str::<ProgressRequest>(r#"{"path": "/", "x": 1}"#).is_err());
    }
}
