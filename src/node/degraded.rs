//! The node while its journal cannot take writes (a full, read-only or failing disk).
//!
//! Owns: the bounded queue of observations that happened meanwhile (an engine exit, a failed
//! probe, a timer), each with the time it was observed, and the readiness overlay: a pool
//! that such an observation would make unready is published as `ready: false` with the reason
//! at once, so the orchestrator never routes to a dead engine while its exit waits to be
//! journaled. Commands are refused (`JOURNAL_UNAVAILABLE`); nothing is decided, so nothing is
//! spawned or restarted: no engine may start that the journal does not know.
//!
//! **Must never:** publish a state that is not durable (the overlay only lowers readiness), or
//! reorder the queued observations (they are appended in order, with their observed times,
//! once the journal takes writes again).

use std::collections::{BTreeMap, VecDeque};

use pool_core::{decide, Context, Input, Policy, State};

/// Observations kept while the journal cannot take writes; past it the oldest is dropped
/// (logged, counted): the exit it reported is still shown by the overlay.
pub const QUEUE_MAX: usize = 4_096;

/// One observation waiting to be recorded.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The observation.
    pub input: Input,
    /// The seq of the event whose effect it answers.
    pub cause: Option<u64>,
    /// When it was observed (the decision clock): its events are stamped with it.
    pub observed_ms: u64,
}

/// The node's state of mind while the journal is unavailable.
#[derive(Debug)]
pub struct Degraded {
    /// The journal's error, naming its directory.
    pub error: String,
    /// `enospc`, `erofs`, `eio`, `other`.
    pub kind: &'static str,
    /// Since when.
    pub since_ms: u64,
    /// Waiting observations, oldest first.
    pub queue: VecDeque<Queued>,
    /// Observations dropped because the queue was full.
    pub dropped: u64,
    /// Pools shown unready, with why.
    pub unready: BTreeMap<String, String>,
    /// Effects held back (start-up's resume effects): dispatched once the queue is recorded.
    pub held_effects: Vec<pool_core::Effect>,
}

impl Degraded {
    /// Entered at `since_ms` because of `error`.
    pub fn new(error: String, kind: &'static str, since_ms: u64) -> Degraded {
        Degraded {
            error,
            kind,
            since_ms,
            queue: VecDeque::new(),
            dropped: 0,
            unready: BTreeMap::new(),
            held_effects: Vec::new(),
        }
    }

    /// Keeps `queued` for later, and lowers the readiness of what it would make unready (as
    /// decided against `state`, the last durable registry).
    pub fn keep(&mut self, queued: Queued, state: &State, policy: &Policy) {
        self.overlay(&queued, state, policy);
        if self.queue.len() >= QUEUE_MAX {
            if let Some(oldest) = self.queue.pop_front() {
                self.dropped += 1;
                tracing::error!(
                    observed_ms = oldest.observed_ms,
                    input = ?oldest.input,
                    "an observation was dropped: {QUEUE_MAX} wait for the journal to take writes again"
                );
            }
        }
        self.queue.push_back(queued);
    }

    fn overlay(&mut self, queued: &Queued, state: &State, policy: &Policy) {
        let ctx = Context {
            now_ms: queued.observed_ms,
            random: 0,
            policy,
        };
        let Ok(facts) = decide(state, &queued.input, &ctx) else {
            return;
        };
        let mut scratch: Option<State> = None;
        for fact in &facts {
            let Some(pool_id) = &fact.pool_id else {
                continue;
            };
            let next = scratch.get_or_insert_with(|| state.clone());
            let stamp = pool_core::Stamp {
                seq: next.last_seq() + 1,
                ts_ms: queued.observed_ms,
                pool_id: Some(pool_id.as_str()),
            };
            next.apply_mut(stamp, &fact.event);
            let was_ready = state.status(pool_id.as_str()).is_some_and(|s| s.ready);
            let now = next.status(pool_id.as_str());
            if was_ready && now.as_ref().is_none_or(|s| !s.ready) {
                let why = now
                    .and_then(|s| s.last_error)
                    .unwrap_or_else(|| fact.event.kind().to_string());
                self.unready.insert(
                    pool_id.to_string(),
                    format!(
                        "{why} (observed at {} ms; not yet journaled: the journal cannot take writes)",
                        queued.observed_ms
                    ),
                );
            }
        }
    }
}
