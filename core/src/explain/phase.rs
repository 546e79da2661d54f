//! The narrative of each phase: why the pool is there, what the daemon does next and when,
//! and what an operator can do.
//!
//! Owns: one function per phase over the folded pool and the remembered story.
//! Never: invents a time (every `at_ms` is a recorded one, or a recorded one plus a recorded
//! grace), reads a clock or panics.

use std::collections::BTreeMap;

use crate::event::{ExitReason, FailureClass, ReloadStage, StopReason};
use crate::state::{Activity, Pool, StartKind};
use crate::status::{phase, BreakerState, Phase};

use super::describe::{class_name, stage_name, storm};
use super::text::{cut, cut_to, duration, rfc3339, seqs};
use super::{Action, Failure, Mark, Next, Noted, Step, Story};

/// The longest recorded detail (an engine log tail) quoted in a `why`, in chars.
const DETAIL_MAX: usize = 160;

/// What a phase's narrative reads.
pub(super) struct Ctx<'a> {
    pub pool: &'a Pool,
    pub story: &'a Story,
    pub since: Option<&'a Mark>,
    /// The first seq of the decision whose facts began the phase.
    pub since_batch: Option<u64>,
    pub quarantined: &'a BTreeMap<String, Noted<u32>>,
    pub steps: &'a [&'a Step],
}

/// A phase's narrative.
pub(super) struct Told {
    pub why: String,
    pub next: Vec<Next>,
    pub actions: Vec<Action>,
    /// The first seq of the story the chain tells.
    pub story_from: u64,
}

/// The narrative of the pool's phase.
pub(super) fn tell(ctx: &Ctx<'_>) -> Told {
    let mut told = Told {
        why: String::new(),
        next: Vec::new(),
        actions: Vec::new(),
        story_from: story_from(ctx),
    };
    match phase(ctx.pool) {
        Phase::Registered => {
            told.why = String::from("registered, never started");
            told.actions.push(preload(ctx, "start it"));
        }
        Phase::Starting => starting(ctx, &mut told),
        Phase::Ready => ready(ctx, &mut told),
        Phase::Draining => draining(ctx, &mut told),
        Phase::Stopping => stopping(ctx, &mut told),
        Phase::Stopped => stopped(ctx, &mut told),
        Phase::Backoff => backoff(ctx, &mut told),
        Phase::CircuitOpen => circuit_open(ctx, &mut told),
        Phase::Reloading => reloading(ctx, &mut told),
        Phase::Failed => failed(ctx, &mut told),
    }
    if let Some(loss) = &ctx.story.loss {
        if loss.seq >= told.story_from {
            let (from, to, _) = &loss.what;
            told.why.push_str(&format!(
                "; journal events {from}..={to} were lost (accepted at seq {}), so this story \
                 may miss steps",
                loss.seq
            ));
        }
    }
    told
}

/// The earliest seq of the current story: the phase's start, the start request, the failures
/// still counted, an open breaker, a drain or reload in progress.
fn story_from(ctx: &Ctx<'_>) -> u64 {
    let pool = ctx.pool;
    let story = ctx.story;
    let breaker = &pool.supervision.breaker;
    let candidates = [
        ctx.since.map(|m| m.seq),
        (pool.start_token > 0).then_some(pool.start_token),
        story.gpu_failures.front().map(|f| f.seq),
        story.other_failures.front().map(|f| f.seq),
        pool.drain.as_ref().map(|d| d.token),
        pool.reload.as_ref().map(|r| r.token),
        (breaker.state != BreakerState::Closed && breaker.token > 0).then_some(breaker.token),
        story.storm.as_ref().map(|n| n.seq),
    ];
    candidates.into_iter().flatten().min().unwrap_or(0)
}

fn request(text: impl Into<String>, request: Option<String>) -> Action {
    Action {
        text: text.into(),
        request,
    }
}

fn preload(ctx: &Ctx<'_>, why: &str) -> Action {
    request(
        format!("{why}: preload it again (with the same or a corrected engine)"),
        Some(format!("POST /v2/pools/{}/preload", ctx.pool.id)),
    )
}

fn at(at_ms: u64, text: String) -> Next {
    Next {
        at_ms: Some(at_ms),
        at: Some(rfc3339(at_ms)),
        text,
    }
}

fn when(text: String) -> Next {
    Next {
        at_ms: None,
        at: None,
        text,
    }
}

/// The newest failure still counted, of any class.
fn last_failure(story: &Story) -> Option<&Failure> {
    let gpu = story.gpu_failures.back();
    let other = story.other_failures.back();
    match (gpu, other) {
        (Some(g), Some(o)) => Some(if g.seq > o.seq { g } else { o }),
        (g, o) => g.or(o),
    }
}

/// `5 consecutive `signal` failures (seqs 8, 14, ...), the last one "..."`.
fn failures_of(story: &Story, class: FailureClass, counted: u32) -> String {
    let list = match class {
        FailureClass::GpuFault => &story.gpu_failures,
        FailureClass::Other => &story.other_failures,
    };
    let Some(last) = list.back() else {
        return format!("{counted} consecutive {} failures", class_name(class));
    };
    let reasons: Vec<ExitReason> = list.iter().map(|f| f.reason).collect();
    let (name, last_reason) = if reasons.iter().all(|r| *r == last.reason) {
        (format!("`{}`", last.reason.as_str()), String::new())
    } else {
        let name = class_name(class).to_string();
        (name, format!(" `{}`", last.reason.as_str()))
    };
    let seq_list: Vec<u64> = list.iter().map(|f| f.seq).collect();
    format!(
        "{} consecutive {name} failures ({}), the last one{last_reason}: \"{}\"",
        counted.max(u32::try_from(list.len()).unwrap_or(u32::MAX)),
        seqs(&seq_list),
        cut_to(&last.detail, DETAIL_MAX)
    )
}

fn since_words(ctx: &Ctx<'_>) -> String {
    ctx.since.map_or(String::new(), |m| {
        format!(" since {} (seq {})", super::text::clock(m.ts_ms), m.seq)
    })
}

fn starting(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let Activity::Starting {
        kind,
        attempt,
        health_passed,
        health_deadline_at_ms,
        ..
    } = &pool.activity
    else {
        return;
    };
    let what = match kind {
        StartKind::Preload => String::from("a preload"),
        StartKind::Again(crate::event::StartPurpose::Trial) => {
            String::from("the half-open breaker's trial start")
        }
        StartKind::Again(_) => match last_failure(ctx.story) {
            Some(f) => format!(
                "restart attempt {attempt} after `{}` at seq {}",
                f.reason.as_str(),
                f.seq
            ),
            None => format!("restart attempt {attempt}"),
        },
    };
    // What set the start off: its recorded cause, or a fact of the same decision before it.
    let cause = ctx
        .steps
        .iter()
        .find(|s| s.seq == pool.start_token)
        .and_then(|start| start.cause);
    let batch = ctx.since_batch.unwrap_or(pool.start_token);
    let after = ctx
        .steps
        .iter()
        .rev()
        .filter(|s| s.kind != "RestartScheduled")
        .find(|s| Some(s.seq) == cause || (s.seq >= batch && s.seq < pool.start_token))
        .map_or(String::new(), |s| {
            format!(", after seq {}: {}", s.seq, s.text)
        });
    told.why = format!(
        "starting{}: {what} (requested at seq {}{after})",
        since_words(ctx),
        pool.start_token
    );
    match (pool.process.as_ref(), health_passed, health_deadline_at_ms) {
        (None, _, _) => told.next.push(when(String::from("spawn the engine"))),
        (Some(p), false, Some(deadline)) => told.next.push(at(
            *deadline,
            format!(
                "wait for engine pid {} to answer healthy; give up (a failed start) at {}",
                p.pid,
                rfc3339(*deadline)
            ),
        )),
        _ => told.next.push(when(String::from(
            "write the handoff file; the pool is then ready",
        ))),
    }
}

fn ready(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let mut why = format!("serving{}", since_words(ctx));
    let began = ctx
        .since
        .and_then(|m| ctx.steps.iter().find(|s| s.seq == m.seq));
    if let Some(step) = began.filter(|s| s.kind != "PoolReady") {
        why.push_str(&format!(": {}", step.text));
    }
    if pool.engine.is_none() {
        why.push_str(
            "; its engine was handed off (started elsewhere): this daemon watches it but \
             cannot restart it",
        );
    }
    if let Some(adoption) = ctx.story.adoption.as_ref().filter(|a| a.what.1) {
        if pool.process.as_ref().is_some_and(|p| p.adopted) {
            why.push_str(&format!(
                "; engine pid {} adopted after the daemon's restart (seq {})",
                adoption.what.0, adoption.seq
            ));
        }
    }
    let breaker = &pool.supervision.breaker;
    if breaker.state == BreakerState::HalfOpen {
        why.push_str("; this is the half-open breaker's trial");
        if let Some(close) = pool.breaker_close_at_ms {
            told.next.push(at(
                close,
                format!(
                    "close the breaker at {} if it keeps running",
                    rfc3339(close)
                ),
            ));
        }
    }
    if let Some(f) = last_failure(ctx.story) {
        let sup = &pool.supervision;
        let counted = sup.gpu_failures.saturating_add(sup.other_failures);
        why.push_str(&format!(
            "; {counted} failure(s) still counted, the last `{}` at seq {}",
            f.reason.as_str(),
            f.seq
        ));
    }
    if pool.supervision.backoff_attempt > 0 || last_failure(ctx.story).is_some() {
        if let Some(reset) = pool.backoff_reset_at_ms {
            told.next.push(at(
                reset,
                format!(
                    "reset the backoff and failure counts at {} if it keeps running",
                    rfc3339(reset)
                ),
            ));
        }
    }
    told.next.extend(super::surge::retiring_next(pool));
    if pool.probe_failures > 0 {
        why.push_str(&format!(
            "; its health probe failed {} time(s) in a row",
            pool.probe_failures
        ));
    }
    if let Some(v) = &ctx.story.violation {
        let (pid, gpu) = &v.what;
        why.push_str(&format!(
            "; engine pid {pid} uses GPU {gpu} outside its mask (seq {})",
            v.seq
        ));
        told.actions.push(preload(
            ctx,
            "give the engine a device mask that covers the GPUs it uses (or fix its \
             CUDA_VISIBLE_DEVICES)",
        ));
    }
    told.why = why;
}

fn draining(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let Some(drain) = &pool.drain else { return };
    let leases: Vec<&str> = pool.leases.iter().map(|l| l.as_str()).take(8).collect();
    told.why = format!(
        "draining since {} (seq {}): new leases refused, {} lease(s) held{}",
        super::text::clock(drain.requested_at_ms),
        drain.token,
        pool.active_leases(),
        if leases.is_empty() {
            String::new()
        } else {
            format!(" ({})", leases.join(", "))
        }
    );
    match pool.activity {
        Activity::Running => {}
        Activity::Stopping { .. } => {
            let next = String::from("the engine's stop is under way; the drain then completes");
            told.next.push(when(next));
            return;
        }
        _ => {
            let next = String::from("the engine is gone: the drain completes");
            told.next.push(when(next));
            return;
        }
    }
    told.next.push(when(String::from(
        "stop the engine as soon as the last lease is returned",
    )));
    told.next.push(at(
        drain.deadline_at_ms,
        format!(
            "drain deadline at {}: the engine is stopped with the leases still held",
            rfc3339(drain.deadline_at_ms)
        ),
    ));
    if let Some(l) = leases.first() {
        told.actions.push(request(
            "have the clients return their leases (each lease returned brings the stop nearer)",
            Some(format!("DELETE /v2/pools/{}/leases/{l}", pool.id)),
        ));
    }
}

fn stopping(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let Activity::Stopping { reason, grace_ms } = &pool.activity else {
        return;
    };
    let (why, then) = match reason {
        StopReason::Requested => ("an operator asked to stop it", "the pool is then stopped"),
        StopReason::Remove => ("an operator asked to remove it", "the pool is then removed"),
        StopReason::Drained => ("its drain ended", "the drain then completes"),
        StopReason::DrainDeadline => (
            "its drain deadline passed",
            "the drain then completes, force-stopped",
        ),
        StopReason::Failure { .. } => (
            "its engine is faulty",
            "the restart policy then answers the failure",
        ),
        StopReason::ReloadFailed { .. } => (
            "the reload's new engine failed",
            "the old engine is then started again",
        ),
    };
    let pid = pool.pid().map_or(String::new(), |p| format!(" pid {p}"));
    let fault = match reason {
        StopReason::Failure { reason, detail } => {
            format!(" (`{}`: {})", reason.as_str(), cut_to(detail, DETAIL_MAX))
        }
        _ => String::new(),
    };
    told.why = format!("stopping engine{pid}{}: {why}{fault}", since_words(ctx));
    match ctx.since {
        Some(m) if *grace_ms > 0 => told.next.push(at(
            m.ts_ms.saturating_add(*grace_ms),
            format!(
                "SIGKILL at {} if it has not exited on SIGTERM by then; {then}",
                rfc3339(m.ts_ms.saturating_add(*grace_ms))
            ),
        )),
        _ => told.next.push(when(format!("wait for it to exit; {then}"))),
    }
}

/// The newest step at or before the phase's start among `kinds`.
fn cause_step<'a>(ctx: &'a Ctx<'_>, kinds: &[&str]) -> Option<&'a Step> {
    let until = ctx.since.map_or(u64::MAX, |m| m.seq);
    ctx.steps
        .iter()
        .rev()
        .find(|s| s.seq <= until && kinds.contains(&s.kind.as_str()))
        .copied()
}

fn stopped(ctx: &Ctx<'_>, told: &mut Told) {
    let kinds = [
        "DrainCompleted",
        "EngineStopRequested",
        "EngineExited",
        "ReloadFailed",
    ];
    let since_seq = ctx.since.map(|m| m.seq);
    let cause = cause_step(ctx, &kinds).map_or(String::new(), |s| {
        if Some(s.seq) == since_seq {
            format!(": {}", s.text)
        } else {
            format!(": {} (seq {})", s.text, s.seq)
        }
    });
    let mut why = format!("stopped{}{cause}", since_words(ctx));
    let forced = &ctx.story.forced_leases;
    if !forced.is_empty() && cause.contains("force-stopped") {
        why.push_str(&format!("; leases dropped: {}", forced.join(", ")));
    }
    told.why = why;
    told.next
        .push(when(String::from("nothing: a stopped pool stays stopped")));
    told.actions.push(preload(ctx, "serve again"));
    told.actions.push(request(
        "or forget it",
        Some(format!("DELETE /v2/pools/{}", ctx.pool.id)),
    ));
}

fn backoff(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let Activity::Backoff {
        attempt,
        not_before_ms,
        reason,
        token,
    } = &pool.activity
    else {
        return;
    };
    let last = last_failure(ctx.story).map_or(String::new(), |f| {
        format!(" at seq {}: \"{}\"", f.seq, cut_to(&f.detail, DETAIL_MAX))
    });
    told.why = format!(
        "backing off{}: restart attempt {attempt} not before {} (delay {}, seq {token}) after \
         the `{}` failure{last}",
        since_words(ctx),
        super::text::clock(*not_before_ms),
        duration(pool.supervision.last_delay_ms),
        reason.as_str()
    );
    if let Some((_, _, class, hint)) = ctx.story.storm.as_ref().map(|s| &s.what) {
        told.why
            .push_str(&format!("; restart storm ({}): {hint}", storm(*class)));
    }
    told.next.push(at(
        *not_before_ms,
        format!("restart attempt {attempt} at {}", rfc3339(*not_before_ms)),
    ));
    told.actions.push(request(
        "stop the restarts while the cause is fixed",
        Some(format!("POST /v2/pools/{}/stop", pool.id)),
    ));
}

fn circuit_open(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let breaker = &pool.supervision.breaker;
    let opened = ctx.story.opened.as_ref();
    let class = breaker
        .class
        .or(opened.map(|o| o.what.1))
        .unwrap_or(FailureClass::Other);
    let counted = opened.map_or(pool.supervision.failures(class), |o| o.what.0);
    let since = opened.map_or(since_words(ctx), |o| {
        format!(" since {} (seq {})", super::text::clock(o.ts_ms), o.seq)
    });
    let failures = failures_of(ctx.story, class, counted);
    let storm_words = ctx.story.storm.as_ref().map(|noted| {
        let (restarts, window, class, _) = &noted.what;
        format!(
            "a restart storm ({}, seq {}): {restarts} restarts in {}",
            storm(*class),
            noted.seq,
            duration(*window)
        )
    });
    told.why = match (&ctx.story.trial_failed, &storm_words) {
        (Some(trial), _) => format!(
            "circuit open again{since}: the half-open trial failed (`{}` at seq {}), so it \
             stays open {} this time; {failures}{}",
            trial.what.as_str(),
            trial.seq,
            duration(breaker.open_ms),
            storm_words
                .as_ref()
                .map_or(String::new(), |s| format!("; it first opened on {s}"))
        ),
        (None, Some(storm_text)) => {
            format!("circuit open{since} because of {storm_text}; {failures}")
        }
        (None, None) => format!("circuit open{since} because {failures}"),
    };
    let hint = ctx.story.storm.as_ref().map(|noted| noted.what.3.clone());
    match (breaker.state, breaker.half_open_at_ms) {
        (BreakerState::Open, Some(half)) => told.next.push(at(
            half,
            format!("half-open trial at {}: one start is tried", rfc3339(half)),
        )),
        _ => told.next.push(when(String::from(
            "nothing: the breaker is half-open but this pool has no engine the daemon can start",
        ))),
    }
    let fix = hint.unwrap_or_else(|| String::from("read the last error and the engine log"));
    told.actions.push(request(
        format!("fix the cause ({fix}), then reset the breaker to restart now"),
        Some(format!("POST /v2/pools/{}/breaker/reset", pool.id)),
    ));
}

fn reloading(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let Some(reload) = &pool.reload else { return };
    told.why = format!(
        "reloading to {} since {} (seq {}), now {}",
        cut(&reload.new_model_ref),
        super::text::clock(reload.requested_at_ms),
        reload.token,
        stage_name(reload.stage)
    );
    let next = match reload.stage {
        ReloadStage::Staging => when(format!(
            "check the new model, then drain the old engine (deadline {})",
            duration(reload.drain_deadline_ms)
        )),
        ReloadStage::Draining => match &pool.drain {
            Some(d) => at(
                d.deadline_at_ms,
                format!(
                    "drain the old engine (forced at {}), then start the new one",
                    rfc3339(d.deadline_at_ms)
                ),
            ),
            None => when(String::from("start the new engine")),
        },
        ReloadStage::Starting => when(String::from(
            "wait for the new engine to answer healthy; if it fails, roll back",
        )),
        ReloadStage::RollingBack => when(format!(
            "start the old engine ({}) again",
            cut(&reload.old_model_ref)
        )),
        ReloadStage::Surging => when(String::from(
            "wait for the new engine to answer healthy, then switch new leases to it; if it \
             fails, it is stopped and the old engine serves on",
        )),
    };
    told.next.push(next);
}

fn failed(ctx: &Ctx<'_>, told: &mut Told) {
    let pool = ctx.pool;
    let story = ctx.story;
    told.next.push(when(String::from("nothing is scheduled")));
    if let Some(held) = story.held.as_ref() {
        let gpu = &held.what;
        let since = ctx.quarantined.get(gpu).map_or(String::new(), |q| {
            format!(
                " since {} after {} hardware fault(s)",
                rfc3339(q.ts_ms),
                q.what
            )
        });
        told.why = format!(
            "failed{}: restart held (seq {}) because GPU {gpu} is quarantined{since}",
            since_words(ctx),
            held.seq
        );
        told.actions.push(request(
            "check the GPU (dmesg, nvidia-smi), then end its quarantine and preload the pool \
             again",
            Some(format!("POST /v2/gpus/{gpu}/unquarantine")),
        ));
        told.actions
            .push(preload(ctx, "or use other GPUs: a device mask without it"));
        return;
    }
    if let Some(stuck) = story.stuck.as_ref() {
        let (gpu, pids, bytes) = &stuck.what;
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        told.why = format!(
            "failed{}: GPU {gpu} still holds {} MiB of the last engine (seq {}){}",
            since_words(ctx),
            bytes / (1024 * 1024),
            stuck.seq,
            if pids.is_empty() {
                String::new()
            } else {
                format!(", pid(s) {}", pids.join(", "))
            }
        );
        told.actions.push(request(
            "free the GPU (end the processes still holding its memory, or reset it), then \
             preload the pool again",
            None,
        ));
        told.actions.push(preload(ctx, "once the GPU is free"));
        return;
    }
    let last = last_failure(story).map_or(String::new(), |f| {
        format!(
            ": `{}` at seq {}: \"{}\"",
            f.reason.as_str(),
            f.seq,
            cut_to(&f.detail, DETAIL_MAX)
        )
    });
    told.why = if pool.engine.is_none() {
        format!(
            "failed{}{last}; the engine was handed off (started elsewhere), so this daemon \
             cannot restart it",
            since_words(ctx)
        )
    } else {
        format!("failed{}{last}", since_words(ctx))
    };
    told.actions
        .push(preload(ctx, "fix the cause in the last error"));
}
