//! A reload without a gap (a surge) in words: the strategy's choice, the new engine beside
//! the old one, the switch, the old engine's drain and stop, and what a ready pool whose old
//! engine still finishes its leases does next.
//!
//! Owns: the sentences of the surge's events and of a retiring engine's next step.
//! Never: reads anything but the event and the pool as it was before it; never panics.

use crate::event::{Event, SecondEnd, SecondStop};
use crate::state::{Pool, SecondRole};

use super::text::{cut, duration, rfc3339};
use super::Next;

/// The step of a surge's event, or `None` for any other event.
pub(super) fn surge_step(before: Option<&Pool>, event: &Event) -> Option<String> {
    Some(match event {
        Event::ReloadStrategyChosen {
            strategy, reason, ..
        } => format!("reload strategy {}: {}", strategy.as_str(), cut(reason)),
        Event::SurgeStartRequested { engine } => format!(
            "new engine ({}) started beside the old one, which serves on, on port {}",
            cut(&engine.model_path),
            engine.port
        ),
        Event::SurgeSpawned { pid, .. } => {
            format!("new engine spawned beside the old one: pid {pid}")
        }
        Event::SurgeHealthPassed { after_ms, .. } => format!(
            "new engine answered healthy after {}; the handoff file names it next",
            duration(*after_ms)
        ),
        Event::SurgeSwitched {
            new_pid,
            old_pid,
            leases_on_old,
            drain_deadline_at_ms,
            ..
        } => switched(*new_pid, *old_pid, *leases_on_old, *drain_deadline_at_ms),
        Event::SecondStopRequested {
            pid,
            why,
            leases_at_stop,
            ..
        } => stop_requested(*pid, *why, *leases_at_stop),
        Event::SecondEngineEnded {
            pid,
            how,
            leases_dropped,
        } => ended(before, *pid, how, *leases_dropped),
        _ => return None,
    })
}

fn switched(new_pid: u32, old_pid: Option<u32>, leases: u32, deadline_at_ms: u64) -> String {
    let old = old_pid.map_or(String::from("the old engine"), |p| format!("pid {p}"));
    if leases == 0 {
        return format!(
            "switched new leases from {old} to pid {new_pid}; no lease was left on the old \
             engine"
        );
    }
    format!(
        "switched new leases from {old} to pid {new_pid}; {leases} lease(s) left on the old \
         engine, which is stopped when they return or at {} at the latest",
        rfc3339(deadline_at_ms)
    )
}

fn stop_requested(pid: Option<u32>, why: SecondStop, leases: u32) -> String {
    let engine = pid.map_or(String::from("no process ran"), |p| format!("pid {p}"));
    match why {
        SecondStop::Drained => {
            format!("the old engine's last lease returned: stopping it ({engine}), drained")
        }
        SecondStop::DrainDeadline => format!(
            "stopping the old engine ({engine}) at its deadline: {leases} lease(s) still held \
             are dropped"
        ),
        SecondStop::SurgeEnded => {
            format!("stopping the surge's new engine ({engine}): its reload ended")
        }
    }
}

fn ended(before: Option<&Pool>, pid: u32, how: &SecondEnd, leases: u32) -> String {
    let role = match before.and_then(|p| p.second.as_ref()).map(|s| s.role) {
        Some(SecondRole::Surge) => "the surge's new engine",
        Some(SecondRole::Retiring) => "the old engine",
        None => "the second engine",
    };
    let dropped = if leases > 0 {
        format!("; {leases} lease(s) dropped with it")
    } else {
        String::new()
    };
    match how {
        SecondEnd::Stopped { graceful: true } => {
            format!("{role} (pid {pid}) stopped on SIGTERM{dropped}")
        }
        SecondEnd::Stopped { graceful: false } => {
            format!("{role} (pid {pid}) killed (SIGKILL){dropped}")
        }
        SecondEnd::Exited { reason, detail, .. } => format!(
            "{role} (pid {pid}) exited by itself ({}): {}{dropped}",
            reason.as_str(),
            cut(detail)
        ),
        SecondEnd::Lost => {
            format!("{role} (pid {pid}) was gone after the daemon's restart{dropped}")
        }
    }
}

/// What a pool whose old engine still finishes its leases after a switch does next: stop it
/// when its last lease returns, or at its deadline. `None` without a retiring engine.
pub(super) fn retiring_next(pool: &Pool) -> Option<Next> {
    let second = pool
        .second
        .as_ref()
        .filter(|s| s.role == SecondRole::Retiring)?;
    let engine = second.pid().map_or(String::from("the old engine"), |p| {
        format!("the old engine (pid {p})")
    });
    let next = |at_ms: Option<u64>, text: String| Next {
        at_ms,
        at: at_ms.map(rfc3339),
        text,
    };
    if second.stopping {
        return Some(next(None, format!("wait for {engine} to exit")));
    }
    let leases = second.active_leases();
    if leases == 0 {
        let text = format!("stop {engine}: no lease from before the switch is left");
        return Some(next(None, text));
    }
    Some(match second.deadline_at_ms {
        Some(deadline) => next(
            Some(deadline),
            format!(
                "stop {engine}, which still serves {leases} lease(s) from before the switch, \
                 when its last lease returns, or at {} at the latest",
                rfc3339(deadline)
            ),
        ),
        None => next(
            None,
            format!("stop {engine} when its last lease ({leases} held) returns"),
        ),
    })
}
