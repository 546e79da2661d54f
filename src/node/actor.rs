//! The actor's loop: batches of inputs decided, appended in one durable append, then applied,
//! answered, published and handed to the supervisor.
//!
//! Owns: the `State`, the journal's writer, the batch. Never: answers or publishes before the
//! append is durable; never panics on an input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    decide, effects, Command, Context, Effect, Event, Input, Observation, Policy, PoolId, Stamp,
    State, StopReason,
};
use pool_journal::{Draft, JournalError};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};

use crate::clock::SharedClock;
use crate::port::{NodeInput, Submission, Waiter};
use crate::schema::{PoolEnvelope, PoolJournal};

use super::degraded;
use super::log::{log_event, warn_drain_deadline};
use super::waiters::answer_waiter;
use super::{BATCH_INPUTS_MAX, JOURNAL_RECOVERY_POLL_MS};
use crate::port::{Committed, GpuSummary, JournalView, NodeError, Published, Registry};
use crate::projection;
use crate::supervisor::Supervisor;

pub(super) struct Actor {
    pub(super) state: Arc<State>,
    pub(super) journal: PoolJournal,
    pub(super) registry: Registry,
    pub(super) supervisor: Supervisor,
    pub(super) policy: Policy,
    pub(super) clock: SharedClock,
    pub(super) gpu: GpuSummary,
    pub(super) waiters: HashMap<PoolId, Vec<Waiter>>,
    pub(super) snapshot_every: u64,
    pub(super) max_batch_records: usize,
    pub(super) journal_failure: Option<String>,
    /// Set while the journal cannot take writes.
    pub(super) degraded: Option<degraded::Degraded>,
    /// Counters and histograms of the events it appends (never of the start-up replay).
    pub(super) metrics: crate::metrics::SharedMetrics,
}

/// What a batch decided, before its append.
#[derive(Default)]
pub(super) struct Batch {
    /// The state after the batch's facts (`None` while none was produced).
    next: Option<State>,
    /// The facts to append, in order.
    drafts: Vec<Draft<Event>>,
    /// Effects of the facts, by the seq of the fact that asked for them.
    effects: Vec<(u64, Effect)>,
    /// Metric updates of the facts, recorded once the append is durable.
    metrics: Vec<crate::metrics::Update>,
    /// Each submission that produced an answer to give after the append.
    decided: Vec<Decided>,
}

impl Batch {
    /// Folds `fact` into the batch's state: stamped with the next seq, its metric updates and
    /// effects noted, its draft queued.
    fn fold(&mut self, fact: pool_core::Fact, now_ms: u64, cause: Option<u64>) {
        let Some(next) = self.next.as_mut() else {
            return;
        };
        let seq = next.last_seq() + 1;
        let pool = fact.pool_id.map(|id| id.to_string());
        let stamp = Stamp {
            seq,
            ts_ms: now_ms,
            pool_id: pool.as_deref(),
        };
        let before = crate::metrics::Before::of(pool.as_deref().and_then(|id| next.pool(id)));
        next.apply_mut(stamp, &fact.event);
        self.metrics.extend(crate::metrics::updates(
            pool.as_deref(),
            now_ms,
            &fact.event,
            before,
            pool.as_deref().and_then(|id| next.pool(id)),
        ));
        for effect in effects(next, stamp, &fact.event) {
            self.effects.push((seq, effect));
        }
        self.drafts.push(Draft {
            ts_ms: now_ms,
            pool_id: pool,
            cause,
            event: fact.event,
        });
    }
}

/// One decided input of a batch, waiting for the append.
pub(super) struct Decided {
    reply: Option<oneshot::Sender<Result<Committed, NodeError>>>,
    waiter: Option<Waiter>,
    pool_id: Option<PoolId>,
    /// Range of this input's drafts in the batch.
    range: std::ops::Range<usize>,
    /// An observation, kept to be queued again if the append finds the journal unavailable.
    retry: Option<degraded::Queued>,
}

/// Why an append failed.
pub(super) enum AppendFailure {
    /// The disk refuses writes for now (`JOURNAL_UNAVAILABLE`): the node keeps observations and
    /// recovers by itself.
    Unavailable { error: String, kind: &'static str },
    /// Anything else: the node takes no more changes.
    Fatal(String),
}

impl Actor {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<NodeInput>) {
        let mut batch = Vec::with_capacity(BATCH_INPUTS_MAX);
        loop {
            let received = if self.degraded.is_some() {
                let poll = Duration::from_millis(JOURNAL_RECOVERY_POLL_MS);
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH_INPUTS_MAX) => n,
                    () = tokio::time::sleep(poll) => {
                        self.flush_queued().await;
                        continue;
                    }
                }
            } else {
                rx.recv_many(&mut batch, BATCH_INPUTS_MAX).await
            };
            if received == 0 {
                return;
            }
            let mut shutdown = None;
            let mut submissions = Vec::with_capacity(batch.len());
            for input in batch.drain(..) {
                match input {
                    NodeInput::Submit(submission) if shutdown.is_none() => {
                        submissions.push(submission)
                    }
                    NodeInput::Submit(submission) => {
                        if let Some(reply) = submission.reply {
                            let _ = reply.send(Err(NodeError::ShuttingDown));
                        }
                    }
                    NodeInput::Resume { effects } => {
                        // Submissions queued before it are decided first, so effects stay
                        // in order with the events that came before them.
                        self.process(std::mem::take(&mut submissions)).await;
                        if let Some(degraded) = self.degraded.as_mut() {
                            // Nothing may start that the journal does not know: the resume
                            // effects wait for it.
                            degraded.held_effects.extend(effects);
                            continue;
                        }
                        let cause = self.state.last_seq();
                        for effect in effects {
                            self.supervisor.dispatch(cause, effect);
                        }
                    }
                    NodeInput::Shutdown { reason, reply } => {
                        if shutdown.is_none() {
                            shutdown = Some((reason, reply));
                        }
                    }
                }
            }
            if self.degraded.is_some() {
                self.flush_queued().await;
            }
            self.process(submissions).await;
            if let Some((reason, reply)) = shutdown {
                self.process(vec![Submission {
                    input: Input::Observation(Observation::DaemonStopping { reason }),
                    cause: None,
                    reply: None,
                    waiter: None,
                    observed_ms: None,
                }])
                .await;
                for (_, waiters) in self.waiters.drain() {
                    for waiter in waiters {
                        answer_waiter(waiter, Err(NodeError::ShuttingDown));
                    }
                }
                let _ = reply.send(());
                return;
            }
        }
    }

    async fn process(&mut self, submissions: Vec<Submission>) {
        if submissions.is_empty() {
            return;
        }
        if let Some(failure) = &self.journal_failure {
            for submission in submissions {
                if let Some(reply) = submission.reply {
                    let _ = reply.send(Err(NodeError::Journal(failure.clone())));
                }
            }
            return;
        }
        if self.degraded.is_some() {
            self.hold(submissions);
            return;
        }
        self.process_batch(submissions).await;
    }

    /// Decides, appends and applies one batch (the journal taking writes, as far as known).
    async fn process_batch(&mut self, submissions: Vec<Submission>) {
        let batch = self.decide_batch(submissions);
        let envelopes = if batch.drafts.is_empty() {
            Vec::new()
        } else {
            match self.append(batch.drafts).await {
                Ok(envelopes) => envelopes,
                Err(AppendFailure::Unavailable { error, kind }) => {
                    self.enter_degraded(error, kind, batch.decided);
                    return;
                }
                Err(AppendFailure::Fatal(failure)) => {
                    self.fail_for_good(failure, batch.decided);
                    return;
                }
            }
        };
        self.metrics.record(&batch.metrics);
        let previous_seq = self.state.last_seq();
        let before = self.state.clone();
        if let Some(next) = batch.next {
            self.state = Arc::new(next);
            self.publish();
        }
        for (i, envelope) in envelopes.iter().enumerate() {
            log_event(envelope, &self.state);
            if let Event::EngineStopRequested {
                reason: StopReason::DrainDeadline,
                ..
            } = &envelope.event
            {
                warn_drain_deadline(&before, &envelopes[..i], envelope);
            }
        }
        self.answer(batch.decided, &envelopes);
        for (seq, effect) in batch.effects {
            if let Effect::RemovePoolFiles { pool_id } = &effect {
                let done = self.take_removal_waiters(pool_id);
                self.supervisor.dispatch_then(seq, effect, done);
            } else {
                self.supervisor.dispatch(seq, effect);
            }
        }
        self.snapshot_if_due(previous_seq);
    }

    /// Decides each submission against the state the batch's earlier ones left (a private
    /// copy, made only once an input produces facts: reads, rejections and no-ops never copy
    /// the registry), and answers the rejected ones at once.
    fn decide_batch(&self, submissions: Vec<Submission>) -> Batch {
        let batch_now_ms = self.clock.now_ms();
        let mut batch = Batch::default();
        batch.decided.reserve(submissions.len());
        for submission in submissions {
            let now_ms = submission.observed_ms.unwrap_or(batch_now_ms);
            let retry = match &submission.input {
                Input::Observation(_) => Some(degraded::Queued {
                    input: submission.input.clone(),
                    cause: submission.cause,
                    observed_ms: now_ms,
                }),
                Input::Command(_) => None,
            };
            let ctx = Context {
                now_ms,
                random: rand::thread_rng().gen(),
                policy: &self.policy,
            };
            let pool_id = input_pool(&submission.input);
            let view: &State = batch.next.as_ref().unwrap_or(&self.state);
            let facts = match decide(view, &submission.input, &ctx) {
                Ok(facts) => facts,
                Err(rejection) => {
                    if let Some(reply) = submission.reply {
                        let _ = reply.send(Err(NodeError::Rejected(rejection)));
                    }
                    continue;
                }
            };
            let start = batch.drafts.len();
            if !facts.is_empty() && batch.next.is_none() {
                batch.next = Some((*self.state).clone());
            }
            for fact in facts {
                batch.fold(fact, now_ms, submission.cause);
            }
            batch.decided.push(Decided {
                reply: submission.reply,
                waiter: submission.waiter,
                pool_id,
                range: start..batch.drafts.len(),
                retry,
            });
        }
        batch
    }

    /// The journal failed for good: every caller of the batch gets the failure, and the node
    /// refuses changes until restarted (`/health` says `journal_failed`).
    fn fail_for_good(&mut self, failure: String, decided: Vec<Decided>) {
        tracing::error!("{failure}; the daemon refuses further changes until it is restarted");
        self.journal_failure = Some(failure.clone());
        self.publish();
        for d in decided {
            if let Some(reply) = d.reply {
                let _ = reply.send(Err(NodeError::Journal(failure.clone())));
            }
            if let Some(waiter) = d.waiter {
                answer_waiter(waiter, Err(NodeError::Journal(failure.clone())));
            }
        }
    }

    /// Answers the batch's callers with their own envelopes, registers their waiters, and
    /// resolves the waiters the new events settle.
    fn answer(&mut self, decided: Vec<Decided>, envelopes: &[PoolEnvelope]) {
        for d in decided {
            let own = envelopes[d.range.clone()].to_vec();
            if let (Some(waiter), Some(pool_id)) = (d.waiter, &d.pool_id) {
                self.register_waiter(pool_id, waiter, own.is_empty());
            }
            if let Some(reply) = d.reply {
                let _ = reply.send(Ok(Committed {
                    envelopes: own,
                    state: self.state.clone(),
                }));
            }
        }
        for envelope in envelopes {
            self.resolve_waiters(envelope);
        }
    }

    /// Saves a snapshot (off the actor) when the state crossed a multiple of `snapshot_every`
    /// since `previous_seq`.
    fn snapshot_if_due(&self, previous_seq: u64) {
        let last = self.state.last_seq();
        if last / self.snapshot_every > previous_seq / self.snapshot_every {
            let journal = self.journal.clone();
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = projection::save_snapshot(&journal, &state) {
                    tracing::warn!(
                        "cannot save a snapshot at seq {}: {e}; start-up will replay more",
                        state.last_seq()
                    );
                }
            });
        }
    }

    async fn append(&self, drafts: Vec<Draft<Event>>) -> Result<Vec<PoolEnvelope>, AppendFailure> {
        let expected_first = self.state.last_seq() + 1;
        let mut out = Vec::with_capacity(drafts.len());
        let started = std::time::Instant::now();
        let mut drafts = drafts.into_iter().peekable();
        while drafts.peek().is_some() {
            let chunk: Vec<_> = drafts.by_ref().take(self.max_batch_records).collect();
            match self.journal.append(chunk).await {
                Ok(envelopes) => out.extend(envelopes),
                // Nothing of this batch is acknowledged: a chunk appended before the failure is
                // quarantined by the journal's recovery (the node never evolved it).
                Err(JournalError::Unavailable { kind, .. }) if out.is_empty() => {
                    return Err(AppendFailure::Unavailable {
                        error: self.journal_error_text(),
                        kind: kind.as_str(),
                    })
                }
                Err(e) => return Err(AppendFailure::Fatal(e.to_string())),
            }
        }
        self.metrics
            .appended(out.len(), started.elapsed().as_secs_f64());
        if out.first().map(|e| e.seq) != Some(expected_first) {
            return Err(AppendFailure::Fatal(format!(
                "the journal assigned seq {:?} where the node expected {expected_first}: another writer?",
                out.first().map(|e| e.seq)
            )));
        }
        Ok(out)
    }

    /// The journal's current error, naming its directory and what to do.
    fn journal_error_text(&self) -> String {
        let health = self.journal.health();
        let kind = health.kind.unwrap_or(pool_journal::WriteErrorKind::Other);
        format!(
            "journal {} cannot take writes: {}; nothing was recorded. Reads keep working and the \
             daemon retries by itself: {}",
            self.journal.dir().display(),
            health.error.unwrap_or_else(|| "unknown error".into()),
            kind.remedy()
        )
    }

    /// Publishes the durable state with the journal's view and the readiness overlay.
    fn publish(&self) {
        let journal = match (&self.journal_failure, &self.degraded) {
            (Some(failure), _) => JournalView {
                writable: false,
                error: Some(failure.clone()),
                failed: Some(failure.clone()),
                ..JournalView::default()
            },
            (None, Some(d)) => JournalView {
                writable: false,
                error: Some(d.error.clone()),
                kind: Some(d.kind),
                since_ms: Some(d.since_ms),
                queued: d.queue.len(),
                failed: None,
            },
            (None, None) => JournalView::writable(),
        };
        let unready = self
            .degraded
            .as_ref()
            .map(|d| Arc::new(d.unready.clone()))
            .unwrap_or_default();
        self.registry.publish(Published {
            state: self.state.clone(),
            gpu: self.gpu.clone(),
            journal,
            unready,
        });
    }

    /// The journal refused the batch `decided`: answer its callers, keep its observations,
    /// and refuse changes until the journal takes writes again.
    fn enter_degraded(&mut self, error: String, kind: &'static str, decided: Vec<Decided>) {
        if self.degraded.is_none() {
            tracing::error!(
                error = %error,
                "the journal cannot take writes: changes are refused (JOURNAL_UNAVAILABLE) and \
                 observations are kept in memory until it can again"
            );
            self.degraded = Some(degraded::Degraded::new(
                error.clone(),
                kind,
                self.clock.now_ms(),
            ));
        }
        for d in decided {
            if let Some(reply) = d.reply {
                let _ = reply.send(Err(NodeError::JournalUnavailable(error.clone())));
            }
            if let Some(waiter) = d.waiter {
                answer_waiter(waiter, Err(NodeError::JournalUnavailable(error.clone())));
            }
            if let (Some(queued), Some(degraded)) = (d.retry, self.degraded.as_mut()) {
                degraded.keep(queued, &self.state, &self.policy);
            }
        }
        self.publish();
    }

    /// While degraded: keeps observations, refuses commands.
    fn hold(&mut self, submissions: Vec<Submission>) {
        let now_ms = self.clock.now_ms();
        let Some(degraded) = self.degraded.as_mut() else {
            return;
        };
        let error = degraded.error.clone();
        for submission in submissions {
            if let Input::Observation(_) = &submission.input {
                let queued = degraded::Queued {
                    input: submission.input.clone(),
                    cause: submission.cause,
                    observed_ms: submission.observed_ms.unwrap_or(now_ms),
                };
                degraded.keep(queued, &self.state, &self.policy);
            }
            if let Some(reply) = submission.reply {
                let _ = reply.send(Err(NodeError::JournalUnavailable(error.clone())));
            }
            if let Some(waiter) = submission.waiter {
                answer_waiter(waiter, Err(NodeError::JournalUnavailable(error.clone())));
            }
        }
        self.publish();
    }

    /// Once the journal takes writes again: records the kept observations, in order, with
    /// their observed times, and leaves the degraded state.
    async fn flush_queued(&mut self) {
        if !self.journal.health().writable {
            return;
        }
        let Some(mut degraded) = self.degraded.take() else {
            return;
        };
        let queued: Vec<Submission> = degraded
            .queue
            .drain(..)
            .map(|q| Submission {
                input: q.input,
                cause: q.cause,
                reply: None,
                waiter: None,
                observed_ms: Some(q.observed_ms),
            })
            .collect();
        let count = queued.len();
        let mut queued = queued.into_iter().peekable();
        while queued.peek().is_some() {
            let chunk: Vec<Submission> = queued.by_ref().take(BATCH_INPUTS_MAX).collect();
            self.process_batch(chunk).await;
            if let Some(again) = self.degraded.as_mut() {
                // Unavailable again: what was not recorded waits, in order, before anything
                // kept meanwhile.
                let rest: Vec<degraded::Queued> = queued
                    .map(|s| degraded::Queued {
                        input: s.input,
                        cause: s.cause,
                        observed_ms: s.observed_ms.unwrap_or(degraded.since_ms),
                    })
                    .collect();
                for q in rest.into_iter().rev() {
                    again.queue.push_front(q);
                }
                return;
            }
        }
        let cause = self.state.last_seq();
        for effect in degraded.held_effects.drain(..) {
            self.supervisor.dispatch(cause, effect);
        }
        tracing::warn!(
            queued = count,
            dropped = degraded.dropped,
            down_ms = self.clock.now_ms().saturating_sub(degraded.since_ms),
            "the journal takes writes again; the observations kept meanwhile were recorded"
        );
        self.publish();
    }
}

/// The pool an input is about, for waiters.
pub(super) fn input_pool(input: &Input) -> Option<PoolId> {
    match input {
        Input::Command(
            Command::Preload { pool_id, .. }
            | Command::Remove { pool_id }
            | Command::AcquireLease { pool_id, .. }
            | Command::ReleaseLease { pool_id, .. }
            | Command::Drain { pool_id, .. }
            | Command::Reload { pool_id, .. }
            | Command::Stop { pool_id }
            | Command::ResetBreaker { pool_id, .. }
            | Command::RegisterHandoff { pool_id, .. },
        ) => Some(pool_id.clone()),
        Input::Command(Command::UnquarantineGpu { .. }) | Input::Observation(_) => None,
    }
}
