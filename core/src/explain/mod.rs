//! `explain`: why a pool is in its phase, since when, what the daemon does next and what an
//! operator can do, as a pure function of the recorded history.
//!
//! Owns: [`Explainer`], which folds one pool's events (and the node events it is given) in
//! journal order, keeping the pool's state and a bounded record of the steps that matter, and
//! [`Explanation`], its answer (JSON through serde, text through [`render_text`]). Every time
//! in an explanation is one recorded in the history (`not_before_ms`, `half_open_at_ms`,
//! `deadline_at_ms`, ...: the same the shell arms its timers with), so the answer is the same
//! live, at any past seq, and offline on a copied journal.
//! Never: reads a clock, does I/O, consults the policy (the recorded times already carry its
//! choices) or panics on any history; memory stays bounded (at most [`STEPS_KEPT`] steps,
//! [`FAILURES_KEPT`] failures per class, texts cut to [`TEXT_MAX`] chars).

mod describe;
mod phase;
mod surge;
mod text;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{Event, ExitReason, FailureClass, Scope, Stamp, StormClass};
use crate::evolve::evolve_pool_slot;
use crate::state::{Node, Pool};
use crate::status::Phase;

pub use text::{clock, cut, rfc3339, TEXT_MAX};

/// The most steps an explanation's chain shows.
pub const STEPS_MAX: usize = 12;
/// The most steps an [`Explainer`] keeps (the oldest are dropped).
pub const STEPS_KEPT: usize = 128;
/// The most failures kept per failure class.
pub const FAILURES_KEPT: usize = 16;
/// The most quarantined GPUs remembered.
const QUARANTINES_KEPT: usize = 64;
/// The most `cause` links remembered (of the pool's newest events, steps or not).
const CAUSES_KEPT: usize = 256;
/// The most `cause` links followed back from the event that began the phase.
const CAUSE_HOPS_MAX: usize = 16;
/// The longest `why`, in chars.
pub const WHY_MAX: usize = 3 * TEXT_MAX;

/// One recorded event, as the journal's envelope carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recorded<'a> {
    /// Its seq.
    pub seq: u64,
    /// When it was decided (ms since the epoch).
    pub ts_ms: u64,
    /// Its pool, for pool events.
    pub pool_id: Option<&'a str>,
    /// The seq of the event that caused it, when recorded.
    pub cause: Option<u64>,
    /// The event.
    pub event: &'a Event,
}

/// A point of the history: a seq and its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The event's seq.
    pub seq: u64,
    /// Its time (ms since the epoch).
    pub ts_ms: u64,
    /// The same as RFC 3339 UTC.
    pub at: String,
}

impl Mark {
    fn new(seq: u64, ts_ms: u64) -> Mark {
        Mark {
            seq,
            ts_ms,
            at: rfc3339(ts_ms),
        }
    }
}

/// One step of the causal chain: a recorded event in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The event's seq.
    pub seq: u64,
    /// Its time (ms since the epoch).
    pub ts_ms: u64,
    /// The event's kind (`EngineExited`).
    pub kind: String,
    /// The seq of the event that caused it, when recorded.
    pub cause: Option<u64>,
    /// What happened, in words.
    pub text: String,
}

/// What the daemon will do next, and when (a recorded time), if anything is scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Next {
    /// When (ms since the epoch); `None` when it waits for something else (an exit, a lease).
    pub at_ms: Option<u64>,
    /// The same as RFC 3339 UTC.
    pub at: Option<String>,
    /// What, in words.
    pub text: String,
}

/// What an operator can do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// What and why, in words.
    pub text: String,
    /// The API request that does it, when there is one (`POST /v2/pools/p1/breaker/reset`).
    pub request: Option<String>,
}

/// Why a pool is in its phase: the answer of `GET /v2/pools/{id}/explain` and
/// `pool-managerd explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The pool.
    pub pool_id: String,
    /// The last seq the explanation read (the requested `at_seq`, or the journal's last).
    pub as_of_seq: u64,
    /// The public phase then.
    pub phase: Phase,
    /// When the pool entered that phase, when the history read shows it.
    pub since: Option<Mark>,
    /// One line: why it is in that phase.
    pub why: String,
    /// The steps that led there, oldest first (at most [`STEPS_MAX`]).
    pub chain: Vec<Step>,
    /// Earlier steps of the same story left out of `chain`.
    pub chain_omitted: u32,
    /// What the daemon does next, and when.
    pub next: Vec<Next>,
    /// What an operator can do now.
    pub actions: Vec<Action>,
    /// The pool's last error, cut to [`TEXT_MAX`] chars.
    pub last_error: Option<String>,
}

/// A failure counted by the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    seq: u64,
    ts_ms: u64,
    reason: ExitReason,
    detail: String,
}

/// A recorded fact kept for the narrative, with where it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Noted<T> {
    seq: u64,
    ts_ms: u64,
    what: T,
}

/// What the explainer remembers beyond the pool's state: the facts the narrative names.
#[derive(Debug, Clone, Default, PartialEq)]
struct Story {
    /// Failures counted since the breaker's counts were last cleared, per class.
    gpu_failures: VecDeque<Failure>,
    other_failures: VecDeque<Failure>,
    /// The last breaker opening: (failures, class).
    opened: Option<Noted<(u32, FailureClass)>>,
    /// The last half-open trial that failed (the breaker opens again for longer).
    trial_failed: Option<Noted<ExitReason>>,
    /// The last storm: (restarts, window, class, hint).
    storm: Option<Noted<(u32, u64, StormClass, String)>>,
    /// The last held restart: the GPU.
    held: Option<Noted<String>>,
    /// The last stuck GPU memory: (GPU, pids, bytes).
    stuck: Option<Noted<(String, Vec<u32>, u64)>>,
    /// Leases held when a drain's deadline stopped the engine.
    forced_leases: Vec<String>,
    /// The last accepted journal loss: (from, to, reason).
    loss: Option<Noted<(u64, u64, String)>>,
    /// Quarantined GPUs seen in node events: uuid -> (seq, ts, faults).
    quarantined: BTreeMap<String, Noted<u32>>,
    /// The last mask violation: (pid, GPU).
    violation: Option<Noted<(u32, String)>>,
    /// The last adoption or loss after a daemon restart: (pid, adopted).
    adoption: Option<Noted<(u32, bool)>>,
}

/// Folds a history into what [`Explainer::explain`] needs. Feed it events in journal order;
/// it keeps one pool.
#[derive(Debug, Clone)]
pub struct Explainer {
    pool_id: String,
    pool: Option<Pool>,
    last_seq: u64,
    since: Option<Mark>,
    /// The steps, each with the GPU it is about (quarantines: shown to the pools whose mask
    /// covers it).
    steps: VecDeque<(Step, Option<String>)>,
    /// `(seq, cause, batch_from)` of the pool's newest events.
    links: VecDeque<(u64, Option<u64>, u64)>,
    /// The pool's last event: (seq, ts), and the first seq of the run of contiguous events
    /// recorded at the same time as it (one decision's facts: they share their input).
    last_pool_event: Option<(u64, u64)>,
    batch_from: u64,
    /// `batch_from` when the phase began.
    since_batch: Option<u64>,
    story: Story,
}

impl Explainer {
    /// An explainer of `pool_id`, starting from `seed`: the pool as the history before the
    /// first event fed left it (`None`: the history starts before the pool existed).
    pub fn new(pool_id: &str, seed: Option<Pool>) -> Explainer {
        Explainer {
            pool_id: pool_id.to_string(),
            pool: seed,
            last_seq: 0,
            since: None,
            steps: VecDeque::new(),
            links: VecDeque::new(),
            last_pool_event: None,
            batch_from: 0,
            since_batch: None,
            story: Story::default(),
        }
    }

    /// The seq of the last event fed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Marks the history as read through `seq` (events of other pools up to it were skipped by
    /// the reader): the explanation is then as of `seq`.
    pub fn seen_through(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Folds one recorded event. Events of other pools are ignored; node events are kept
    /// when they bear on pools (quarantines, daemon restarts, accepted journal loss).
    pub fn feed(&mut self, rec: Recorded<'_>) {
        self.last_seq = self.last_seq.max(rec.seq);
        match rec.event.scope() {
            Scope::Node => self.feed_node(rec),
            Scope::Pool if rec.pool_id == Some(self.pool_id.as_str()) => self.feed_pool(rec),
            Scope::Pool => {}
        }
    }

    fn feed_node(&mut self, rec: Recorded<'_>) {
        let story = &mut self.story;
        match rec.event {
            Event::GpuQuarantined { gpu_uuid, faults }
                if story.quarantined.len() < QUARANTINES_KEPT
                    || story.quarantined.contains_key(gpu_uuid) =>
            {
                let noted = noted(&rec, *faults);
                story.quarantined.insert(gpu_uuid.clone(), noted);
            }
            Event::GpuUnquarantined { gpu_uuid, .. } => {
                story.quarantined.remove(gpu_uuid);
            }
            Event::JournalLossAccepted {
                from_seq,
                to_seq,
                reason,
            } => story.loss = Some(noted(&rec, (*from_seq, *to_seq, cut(reason)))),
            _ => {}
        }
        if self.pool.is_some() {
            if let Some(text) = describe::node_step(rec.event) {
                self.push_step(&rec, text);
            }
        }
    }

    fn feed_pool(&mut self, rec: Recorded<'_>) {
        let before = self.pool.as_ref().map(crate::status::phase);
        if let Some(text) = describe::pool_step(self.pool.as_ref(), rec.event) {
            self.push_step(&rec, text);
        }
        self.note(&rec);
        let same_batch = self
            .last_pool_event
            .is_some_and(|(seq, ts)| ts == rec.ts_ms && seq.saturating_add(1) == rec.seq);
        if !same_batch {
            self.batch_from = rec.seq;
        }
        self.last_pool_event = Some((rec.seq, rec.ts_ms));
        self.links.push_back((rec.seq, rec.cause, self.batch_from));
        while self.links.len() > CAUSES_KEPT {
            self.links.pop_front();
        }
        let stamp = Stamp {
            seq: rec.seq,
            ts_ms: rec.ts_ms,
            pool_id: rec.pool_id,
        };
        if !evolve_pool_slot(&mut self.pool, stamp, rec.event) {
            return;
        }
        let after = self.pool.as_ref().map(crate::status::phase);
        if after != before {
            self.since = after.map(|_| Mark::new(rec.seq, rec.ts_ms));
            self.since_batch = after.map(|_| self.batch_from);
        }
        if let Some(pool) = &self.pool {
            // The breaker's counts were cleared (backoff reset, breaker closed or reset).
            let sup = &pool.supervision;
            if sup.gpu_failures == 0 {
                self.story.gpu_failures.clear();
            }
            if sup.other_failures == 0 {
                self.story.other_failures.clear();
            }
        } else {
            self.story = Story::default();
            self.steps.clear();
            self.links.clear();
        }
    }

    /// Remembers the facts the narrative names (with the pool as it was before `rec`).
    fn note(&mut self, rec: &Recorded<'_>) {
        let story = &mut self.story;
        match rec.event {
            Event::PreloadFailed { reason, cause, .. } => {
                self.failure(rec, *cause, reason);
            }
            Event::EngineExited { reason, detail, .. } if *reason != ExitReason::Graceful => {
                self.failure(rec, *reason, detail);
            }
            Event::EngineStopRequested {
                reason: crate::event::StopReason::Failure { reason, detail },
                ..
            } => self.failure(rec, *reason, detail),
            Event::EngineStopRequested {
                reason: crate::event::StopReason::DrainDeadline,
                ..
            } => {
                story.forced_leases = self
                    .pool
                    .iter()
                    .flat_map(|p| p.leases.iter().map(|l| l.as_str().to_string()))
                    .collect();
            }
            Event::EngineLost { pid } => {
                story.adoption = Some(noted(rec, (*pid, false)));
                let detail = format!("engine pid {pid} is gone (lost while the daemon was down)");
                self.failure(rec, ExitReason::Unknown, &detail);
            }
            Event::EngineAdopted { pid } => story.adoption = Some(noted(rec, (*pid, true))),
            Event::CircuitOpened {
                failures, class, ..
            } => story.opened = Some(noted(rec, (*failures, *class))),
            Event::RestartStormDetected {
                restarts,
                window_ms,
                classification,
                hint,
            } => {
                let what = (*restarts, *window_ms, *classification, cut(hint));
                story.storm = Some(noted(rec, what));
            }
            Event::CircuitClosed | Event::CircuitReset { .. } => {
                story.opened = None;
                story.storm = None;
                story.trial_failed = None;
            }
            Event::RestartHeld { gpu_uuid } => story.held = Some(noted(rec, gpu_uuid.clone())),
            Event::GpuMemoryStuck {
                gpu_uuid,
                pids,
                bytes,
            } => {
                let pids = pids.iter().take(8).copied().collect();
                story.stuck = Some(noted(rec, (gpu_uuid.clone(), pids, *bytes)));
            }
            Event::GpuMemoryReleased { .. } | Event::PoolReady { .. } => story.stuck = None,
            Event::DeviceMaskViolation { pid, gpu_uuid } => {
                story.violation = Some(noted(rec, (*pid, gpu_uuid.clone())));
            }
            Event::PreloadRequested { .. } | Event::HandoffRegistered { .. } => {
                story.held = None;
                story.stuck = None;
                story.violation = None;
                story.forced_leases.clear();
            }
            _ => {}
        }
    }

    fn failure(&mut self, rec: &Recorded<'_>, reason: ExitReason, detail: &str) {
        let half_open = self
            .pool
            .as_ref()
            .is_some_and(|p| p.supervision.breaker.state == crate::status::BreakerState::HalfOpen);
        if half_open {
            self.story.trial_failed = Some(noted(rec, reason));
        }
        let list = match reason.class() {
            FailureClass::GpuFault => &mut self.story.gpu_failures,
            FailureClass::Other => &mut self.story.other_failures,
        };
        list.push_back(Failure {
            seq: rec.seq,
            ts_ms: rec.ts_ms,
            reason,
            detail: cut(detail),
        });
        while list.len() > FAILURES_KEPT {
            list.pop_front();
        }
    }

    fn push_step(&mut self, rec: &Recorded<'_>, text: String) {
        let gpu = match rec.event {
            Event::GpuQuarantined { gpu_uuid, .. } | Event::GpuUnquarantined { gpu_uuid, .. } => {
                Some(gpu_uuid.clone())
            }
            _ => None,
        };
        let step = Step {
            seq: rec.seq,
            ts_ms: rec.ts_ms,
            kind: rec.event.kind().to_string(),
            cause: rec.cause,
            text,
        };
        self.steps.push_back((step, gpu));
        while self.steps.len() > STEPS_KEPT {
            self.steps.pop_front();
        }
    }

    /// The explanation of the pool as of the last event fed; `None` when the pool does not
    /// exist then (never created, or removed). `node` adds the node's quarantines as the
    /// registry holds them (from a snapshot, when the history fed starts after them).
    pub fn explain(&self, node: Option<&Node>) -> Option<Explanation> {
        let pool = self.pool.as_ref()?;
        let mut quarantined = self.story.quarantined.clone();
        for (uuid, q) in node.map(|n| &n.quarantined).into_iter().flatten() {
            quarantined.entry(uuid.clone()).or_insert(Noted {
                seq: 0,
                ts_ms: q.since_ms,
                what: q.faults,
            });
        }
        // A quarantine is a step of the pools whose mask covers its GPU (every pool, when the
        // node's inventory is not at hand).
        let covers = |gpu: &str| {
            node.is_none_or(|n| crate::gpu::mask_covers_in(pool.device_mask(), gpu, n.inventory()))
        };
        let steps: Vec<&Step> = self
            .steps
            .iter()
            .filter(|(_, gpu)| gpu.as_deref().is_none_or(covers))
            .map(|(step, _)| step)
            .collect();
        let ctx = phase::Ctx {
            pool,
            story: &self.story,
            since: self.since.as_ref(),
            since_batch: self.since_batch,
            quarantined: &quarantined,
            steps: &steps,
        };
        let told = phase::tell(&ctx);
        let from = self.since.as_ref().map_or(told.story_from, |m| {
            told.story_from.min(self.first_cause(m.seq))
        });
        let (chain, chain_omitted) = chain(&steps, from);
        Some(Explanation {
            pool_id: self.pool_id.clone(),
            as_of_seq: self.last_seq,
            phase: crate::status::phase(pool),
            since: self.since.clone(),
            why: text::cut_to(&told.why, WHY_MAX),
            chain,
            chain_omitted,
            next: told.next,
            actions: told.actions,
            last_error: pool.last_error.as_deref().map(cut),
        })
    }

    /// The earliest event reached from `seq` by recorded `cause` links, or else by the facts
    /// of the same decision before it (`seq` itself when neither leads back): what set off
    /// the phase.
    fn first_cause(&self, seq: u64) -> u64 {
        let mut at = seq;
        for _ in 0..CAUSE_HOPS_MAX {
            match self.links.iter().rev().find(|(s, _, _)| *s == at) {
                Some((_, Some(cause), _)) if *cause < at => at = *cause,
                Some((_, _, batch)) if *batch < at => at = *batch,
                _ => break,
            }
        }
        at
    }
}

/// The steps from seq `from` on: the first of them and the newest, at most [`STEPS_MAX`] in
/// all, and how many were left out.
fn chain(steps: &[&Step], from: u64) -> (Vec<Step>, u32) {
    let story: Vec<&Step> = steps.iter().copied().filter(|s| s.seq >= from).collect();
    if story.len() <= STEPS_MAX {
        return (story.into_iter().cloned().collect(), 0);
    }
    let omitted = story.len() - STEPS_MAX;
    let mut chain: Vec<Step> = story.iter().take(1).map(|s| (*s).clone()).collect();
    chain.extend(story.iter().skip(omitted + 1).map(|s| (*s).clone()));
    (chain, u32::try_from(omitted).unwrap_or(u32::MAX))
}

fn noted<T>(rec: &Recorded<'_>, what: T) -> Noted<T> {
    Noted {
        seq: rec.seq,
        ts_ms: rec.ts_ms,
        what,
    }
}

/// The explanation of `pool_id` after the events of `history` up to `at_seq` (`None`: all of
/// them), folded from the start; `None` when the pool does not exist then.
pub fn explain<'a>(
    history: impl IntoIterator<Item = Recorded<'a>>,
    pool_id: &str,
    at_seq: Option<u64>,
) -> Option<Explanation> {
    let mut explainer = Explainer::new(pool_id, None);
    for rec in history {
        if at_seq.is_some_and(|at| rec.seq > at) {
            break;
        }
        explainer.feed(rec);
    }
    if let Some(at) = at_seq {
        explainer.seen_through(at);
    }
    explainer.explain(None)
}

/// The text form of an explanation (the command line's).
pub fn render_text(explanation: &Explanation) -> String {
    text::render(explanation)
}

#[cfg(test)]
mod tests;
