//! Rebuilds the registry (the core's [`State`]) from the journal: the newest valid snapshot
//! plus the events after it, or a full replay up to a sequence number or a point in time (the
//! post-mortem view); and a pool's explanation ([`explain_pool`]: the core's `Explainer` fed
//! the pool's own events), the same for the live daemon and for a copied journal.
//!
//! Owns: the fold from envelopes to `State`, writing snapshots of it, and reading a pool's
//! history for its explanation.
//! Never: runs effects (replay only rebuilds state) or reads the clock.

use pool_core::explain::{Explainer, Explanation, Recorded};
use pool_core::state::Node;
use pool_core::{evolve_in_place, Stamp, State, STATE_SNAPSHOT_VERSION};
use pool_journal::JournalError;

use crate::schema::{PoolEnvelope, PoolJournal};

/// Where a replay stops. Both bounds are inclusive; `None` means "to the end".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayLimit {
    /// Stop after the event with this seq.
    pub until_seq: Option<u64>,
    /// Stop after the last event recorded at or before this wall-clock time (ms since epoch).
    pub until_ts_ms: Option<u64>,
}

impl ReplayLimit {
    /// No bound: the registry as it is now.
    pub const NONE: ReplayLimit = ReplayLimit {
        until_seq: None,
        until_ts_ms: None,
    };

    fn admits(&self, envelope: &PoolEnvelope) -> bool {
        self.until_seq.is_none_or(|seq| envelope.seq <= seq)
            && self.until_ts_ms.is_none_or(|ts| envelope.ts_ms <= ts)
    }
}

/// The result of a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// The registry after the last admitted event.
    pub state: State,
    /// The seq of the snapshot the replay started from, if one was used.
    pub from_snapshot_seq: Option<u64>,
    /// How many events were folded after the snapshot (or from the start).
    pub events_folded: u64,
    /// The wall-clock time of the last event folded, if any.
    pub as_of_ts_ms: Option<u64>,
}

/// Folds one envelope into the state.
pub fn apply(mut state: State, envelope: &PoolEnvelope) -> State {
    apply_in_place(&mut state, envelope);
    state
}

/// Folds one envelope into the state, in place (the replay loop).
pub fn apply_in_place(state: &mut State, envelope: &PoolEnvelope) {
    evolve_in_place(state, stamp_of(envelope), &envelope.event);
}

fn stamp_of(envelope: &PoolEnvelope) -> Stamp<'_> {
    Stamp {
        seq: envelope.seq,
        ts_ms: envelope.ts_ms,
        pool_id: envelope.pool_id.as_deref(),
    }
}

/// Rebuilds the registry from `journal`, up to `limit`.
///
/// The nearest snapshot within the limit is used (a time limit cannot be checked
/// against a snapshot, so it always means a full replay). Any corrupt record met on the way is
/// an error naming its seq: a replay never silently stops short.
pub fn replay(journal: &PoolJournal, limit: ReplayLimit) -> Result<Replayed, JournalError> {
    let snapshot = if limit.until_ts_ms.is_none() {
        // The nearest snapshot at or before the bound (the journal keeps older ones spread
        // over the history for this: time travel replays at most a gap's worth of events).
        journal
            .load_snapshot_at::<State>(STATE_SNAPSHOT_VERSION, limit.until_seq.unwrap_or(u64::MAX))
    } else {
        None
    };
    let (from_snapshot_seq, mut state) = match snapshot {
        Some((seq, state)) => (Some(seq), state),
        None => (None, State::default()),
    };
    let start = from_snapshot_seq.map_or(1, |seq| seq + 1);
    let mut events_folded = 0;
    let mut as_of_ts_ms = None;
    for envelope in journal.read_from(start) {
        let envelope = envelope?;
        if !limit.admits(&envelope) {
            break;
        }
        apply_in_place(&mut state, &envelope);
        as_of_ts_ms = Some(envelope.ts_ms);
        events_folded += 1;
    }
    Ok(Replayed {
        state,
        from_snapshot_seq,
        events_folded,
        as_of_ts_ms,
    })
}

/// Stores a snapshot of `state` covering every event up to `state.last_seq()`.
pub fn save_snapshot(journal: &PoolJournal, state: &State) -> Result<(), JournalError> {
    journal.save_snapshot(state.last_seq(), STATE_SNAPSHOT_VERSION, state)
}

/// A page of a pool's history read at once for its explanation.
const EXPLAIN_PAGE: usize = 10_000;
/// How many of the journal's last events (up to the seq explained) are read for the node
/// events an explanation names (daemon restarts, quarantines, accepted journal loss): node
/// events are not indexed by pool, so this bounds the read.
pub const EXPLAIN_NODE_WINDOW: u64 = 20_000;

/// The explanation of `pool_id` after event `at_seq` (the journal's last when `None`); `None`
/// when the pool does not exist then. Reads the pool's own events (from the start, or from the
/// oldest snapshot retention left, which seeds the pool), the node events among the last
/// [`EXPLAIN_NODE_WINDOW`] events, and takes the node's quarantines from `node` (the registry
/// at `at_seq`, when the caller has it). An `at_seq` beyond the journal's last event explains
/// the pool as it is now; one before the retained history is `HistoryExpired`.
pub fn explain_pool(
    journal: &PoolJournal,
    pool_id: &str,
    at_seq: Option<u64>,
    node: Option<&Node>,
) -> Result<Option<Explanation>, JournalError> {
    let at = at_seq.unwrap_or(u64::MAX).min(journal.last_seq());
    let from = journal.time_travel_from();
    if at < from {
        return Err(JournalError::HistoryExpired {
            requested: at,
            earliest: from,
        });
    }
    let seed = if from == 0 {
        None
    } else {
        let limit = ReplayLimit {
            until_seq: Some(from),
            until_ts_ms: None,
        };
        replay(journal, limit)?.state.pools.remove(pool_id)
    };
    let node_events = node_events_before(journal, from, at)?;
    let mut node_events = node_events.iter().peekable();
    let mut explainer = Explainer::new(pool_id, seed);
    let mut since = from.saturating_add(1);
    'pages: loop {
        let page = journal.read_pool(pool_id, since, EXPLAIN_PAGE)?;
        for envelope in &page {
            if envelope.seq > at {
                break 'pages;
            }
            while let Some(node_event) = node_events.next_if(|e| e.seq < envelope.seq) {
                explainer.feed(recorded(node_event));
            }
            explainer.feed(recorded(envelope));
        }
        match page.last() {
            Some(last) if page.len() >= EXPLAIN_PAGE => since = last.seq.saturating_add(1),
            _ => break,
        }
    }
    for node_event in node_events {
        explainer.feed(recorded(node_event));
    }
    explainer.seen_through(at);
    Ok(explainer.explain(node))
}

/// The node events among the journal's last [`EXPLAIN_NODE_WINDOW`] events up to `at` (and
/// after `from`), oldest first.
fn node_events_before(
    journal: &PoolJournal,
    from: u64,
    at: u64,
) -> Result<Vec<PoolEnvelope>, JournalError> {
    let start = at
        .saturating_sub(EXPLAIN_NODE_WINDOW.saturating_sub(1))
        .max(from.saturating_add(1))
        .max(journal.first_seq());
    let mut out = Vec::new();
    if start > at {
        return Ok(out);
    }
    for envelope in journal.read_from(start) {
        let envelope = envelope?;
        if envelope.seq > at {
            break;
        }
        if envelope.event.is_node_event() {
            out.push(envelope);
        }
    }
    Ok(out)
}

/// An envelope as the core's explanation reads it.
pub fn recorded(envelope: &PoolEnvelope) -> Recorded<'_> {
    Recorded {
        seq: envelope.seq,
        ts_ms: envelope.ts_ms,
        pool_id: envelope.pool_id.as_deref(),
        cause: envelope.cause,
        event: &envelope.event,
    }
}
