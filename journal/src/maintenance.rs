//! The maintenance thread: sealing the tail into segments, retention, the witness's lazy
//! sync, and asking the writer to recover while the journal is unavailable.
//!
//! Owns: when those run. Sealing writes a segment file from records already durable in the
//! live store (and in the tail), then the manifest, then swaps the view (readers move from the
//! tail to the segment in one step); the writer removes the sealed keys from the live store
//! a few at a time in later commits. Retention replaces the manifest first, then the witness's
//! `first_seq`, then deletes the dropped files. A [`RetentionHold`] (the cluster publisher's
//! position) keeps the segments its consumer has not read beyond `retain_bytes`/`retain_ms`,
//! up to its cap; what the cap drops unread is counted in the hold and logged as an error.
//!
//! **Must never:** list a segment before its file is durable, drop a segment that holds seqs
//! after the newest snapshot (start-up replays from it) or the newest segment, drop an unread
//! segment of a hold while under its cap, or block the
//! writer (it never takes the writer's locks; the view lock is held only to swap).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{HoldLimit, RetentionHold};
use crate::manifest::{self, Manifest};
use crate::segment::{self, SealRecord, SegmentMeta};
use crate::shared::Shared;
use crate::snapshot;
use crate::writer::Command;

/// How often the thread wakes without being signalled (witness sync, retention by age).
pub const TICK_MS: u64 = 1_000;
/// While the scrub has segments left, the thread reads one whole segment every this often
/// (bounded disk reads beside the daemon's own).
pub const SCRUB_EVERY_MS: u64 = 50;
/// The scrub's first read waits this long after open, so that it does not compete with the
/// start-up that follows the open (the replay, the first appends, the first requests).
pub const SCRUB_START_MS: u64 = 1_000;
/// Retention runs at most this often when nothing was sealed.
pub const RETENTION_EVERY_MS: u64 = 10_000;
/// Recovery attempts while unavailable: the first after this, doubling up to the max.
pub const RECOVER_FIRST_MS: u64 = 100;
/// See [`RECOVER_FIRST_MS`].
pub const RECOVER_MAX_MS: u64 = 2_000;

/// Runs until the journal is dropped (`Shared::stop`).
pub(crate) fn run<E: Send + 'static>(shared: Arc<Shared>, writer: mpsc::WeakSender<Command<E>>) {
    let mut last_retention = Instant::now()
        .checked_sub(Duration::from_millis(RETENTION_EVERY_MS))
        .unwrap_or_else(Instant::now);
    let mut recover_delay = RECOVER_FIRST_MS;
    let mut next_recover = Instant::now();
    // The sealed segments to read whole once after open (open reads only their header and
    // trailer): damage is then reported while nothing reads it yet.
    let mut scrub: Vec<u64> = shared
        .manifest()
        .segments
        .iter()
        .map(|s| s.first_seq)
        .collect();
    scrub.reverse();
    let mut next_scrub = Instant::now() + Duration::from_millis(SCRUB_START_MS);
    // The sizes of the live store's and the snapshots' files (`Journal::usage`), read here
    // once rather than by the first `/health` (a walk over every snapshot file).
    let _ = shared.file_bytes();
    loop {
        let mut wait = if shared.is_writable() {
            Duration::from_millis(TICK_MS)
        } else {
            next_recover.saturating_duration_since(Instant::now())
        };
        if !scrub.is_empty() {
            wait = wait.min(next_scrub.saturating_duration_since(Instant::now()));
        }
        if wait_for_work(&shared, wait) {
            return;
        }
        if let Some(witness) = &shared.witness {
            if witness.sync_if_dirty().is_err() {
                shared.count_witness_error();
            }
        }
        if !scrub.is_empty() && Instant::now() >= next_scrub {
            if let Some(first_seq) = scrub.pop() {
                scrub_segment(&shared, first_seq);
            }
            next_scrub = Instant::now() + Duration::from_millis(SCRUB_EVERY_MS);
        }
        if !shared.is_writable() {
            if Instant::now() >= next_recover {
                if let Some(tx) = writer.upgrade() {
                    let _ = tx.try_send(Command::Recover);
                }
                recover_delay = (recover_delay * 2).min(RECOVER_MAX_MS);
                next_recover = Instant::now() + Duration::from_millis(recover_delay);
            }
            continue;
        }
        recover_delay = RECOVER_FIRST_MS;
        let mut sealed = false;
        while shared.tail_wants_seal() {
            match seal_once(&shared) {
                Ok(true) => sealed = true,
                Ok(false) => break,
                Err(e) => {
                    report_seal_error(&shared, &e);
                    break;
                }
            }
        }
        if sealed || last_retention.elapsed() >= Duration::from_millis(RETENTION_EVERY_MS) {
            last_retention = Instant::now();
            if let Err(e) = apply_retention(&shared) {
                tracing::warn!(dir = %shared.layout.dir.display(), error = %e, "journal retention failed; it is retried");
            }
        }
    }
}

/// Reads the segment starting at `first_seq` whole (if retention has not dropped it) and
/// records what is wrong with it.
fn scrub_segment(shared: &Shared, first_seq: u64) {
    let manifest = shared.manifest();
    let Some(meta) = manifest.segments.iter().find(|s| s.first_seq == first_seq) else {
        return;
    };
    let path = shared.layout.segment_file(meta.first_seq, meta.last_seq);
    let checked = segment::SegmentFile::open(&path).and_then(|file| file.check_full());
    let damage = checked.err().map(|fault| {
        let what = format!(
            "{}: segment of seqs {}..={} is damaged: {fault}; reads of those seqs fail. Stop \
             the daemon and run `pool-managerd journal repair --journal-dir {}` (it names the \
             events it cannot read; --accept-loss keeps the rest)",
            path.display(),
            meta.first_seq,
            meta.last_seq,
            shared.layout.dir.display()
        );
        tracing::error!("{what}");
        what
    });
    shared.scrubbed(damage);
}

/// Waits up to `wait` for a signal; true when the journal is going away.
fn wait_for_work(shared: &Shared, wait: Duration) -> bool {
    let mut state = shared.wake_state.lock().unwrap_or_else(|p| p.into_inner());
    if !state.pending && !state.stop {
        state = shared
            .wake
            .wait_timeout(state, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    state.pending = false;
    state.stop
}

fn report_seal_error(shared: &Shared, error: &std::io::Error) {
    let mut slot = shared.seal_error.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        tracing::error!(dir = %shared.layout.segments().display(), error = %error, "cannot seal the journal's tail into a segment; it is retried (the tail grows meanwhile)");
    }
    *slot = Some(format!("{}: {error}", shared.layout.segments().display()));
}

/// Seals the oldest records of the tail into one segment. `Ok(false)`: nothing to seal.
pub(crate) fn seal_once(shared: &Shared) -> std::io::Result<bool> {
    let _seal = shared.seal_lock.lock().unwrap_or_else(|p| p.into_inner());
    let (records, manifest) = {
        let view = shared.read_view();
        (
            view.tail
                .oldest(shared.config.segment_records, shared.config.segment_bytes),
            Arc::clone(&view.manifest),
        )
    };
    let Some(last) = records.last().map(|r| r.seq) else {
        return Ok(false);
    };
    let first = manifest.sealed_through() + 1;
    crate::layout::create_dir_synced(&shared.layout.segments())?;
    let seal: Vec<SealRecord<'_>> = records
        .iter()
        .map(|r| SealRecord {
            seq: r.seq,
            value: &r.value,
            pool_id: r.pool_id.as_deref(),
            ts_ms: r.ts_ms,
        })
        .collect();
    let meta = segment::write(&shared.layout.segment_file(first, last), first, &seal)?;
    let mut next = (*manifest).clone();
    next.generation += 1;
    next.segments.push(meta);
    manifest::write(&shared.layout.manifest(), &next)?;
    {
        let mut view = shared.write_view();
        view.manifest = Arc::new(next);
        view.tail.pop_through(last);
    }
    if let Ok(mut slot) = shared.seal_error.lock() {
        if slot.take().is_some() {
            tracing::info!(dir = %shared.layout.segments().display(), "sealing works again");
        }
    }
    shared.tail_shrank.notify_all();
    Ok(true)
}

/// Which of `manifest`'s oldest segments retention drops now (a count from the front).
///
/// A segment goes once the segments take more than `retain_bytes` or its newest record is
/// older than `retain_ms`, never the newest segment nor one holding seqs after
/// `newest_snapshot`; with a `hold`, never one holding a seq after `hold.through` either,
/// while the segments take at most `retain_bytes + hold.cap_bytes` (past that, the cap wins).
pub fn segments_to_drop(
    manifest: &Manifest,
    newest_snapshot: Option<u64>,
    retain_bytes: u64,
    retain_ms: u64,
    now_ms: u64,
    hold: Option<HoldLimit>,
) -> usize {
    let mut total = manifest.bytes();
    let mut count = 0;
    // Never the newest segment: the last acknowledged record must stay readable.
    while count + 1 < manifest.segments.len() {
        let s = &manifest.segments[count];
        let over_size = total > retain_bytes;
        let too_old = now_ms.saturating_sub(s.last_ts_ms) > retain_ms;
        if !(over_size || too_old) {
            break;
        }
        // Start-up replays from the newest snapshot: what comes after it stays.
        if newest_snapshot.is_none_or(|snap| s.last_seq > snap) {
            break;
        }
        // The consumer has not read it yet: it stays, up to the cap.
        if hold.is_some_and(|h| {
            s.last_seq > h.through && total <= retain_bytes.saturating_add(h.cap_bytes)
        }) {
            break;
        }
        total -= s.bytes;
        count += 1;
    }
    count
}

/// Drops the segments retention no longer keeps (see the module docs for the order).
pub(crate) fn apply_retention(shared: &Shared) -> std::io::Result<()> {
    let _seal = shared.seal_lock.lock().unwrap_or_else(|p| p.into_inner());
    let manifest = shared.manifest();
    let newest_snapshot = snapshot::list(&shared.layout)?.first().copied();
    let hold = shared.config.hold.as_ref().map(RetentionHold::limit);
    let count = segments_to_drop(
        &manifest,
        newest_snapshot,
        shared.config.retain_bytes,
        shared.config.retain_ms,
        shared.config.clock.now_ms(),
        hold,
    );
    if count == 0 {
        return Ok(());
    }
    let dropped: Vec<_> = manifest.segments[..count].to_vec();
    let mut next = (*manifest).clone();
    next.generation += 1;
    next.segments.drain(..count);
    next.expired_through = dropped.last().map_or(next.expired_through, |s| s.last_seq);
    manifest::write(&shared.layout.manifest(), &next)?;
    let first = next.first_retained();
    shared.write_view().manifest = Arc::new(next);
    if let (Some(hold), Some(limit)) = (&shared.config.hold, hold) {
        report_unconsumed(shared, hold, limit.through, &dropped);
    }
    if let Some(witness) = &shared.witness {
        witness.set_first_seq(first);
        if witness.touch().is_err() {
            shared.count_witness_error();
        }
    }
    for s in &dropped {
        let path = shared.layout.segment_file(s.first_seq, s.last_seq);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a segment retention dropped");
            }
        }
    }
    crate::layout::sync_dir(&shared.layout.segments())?;
    {
        let _snap = shared
            .snapshot_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        snapshot::prune(&shared.layout, first)?;
    }
    tracing::info!(
        dir = %shared.layout.dir.display(),
        dropped_through_seq = first - 1,
        segments = count,
        bytes = dropped.iter().map(|s| s.bytes).sum::<u64>(),
        "journal retention dropped the oldest segments"
    );
    Ok(())
}

/// Counts (in `hold`) and reports the events of `dropped` after `through`: the cap of the hold
/// made retention drop them before their consumer read them.
fn report_unconsumed(shared: &Shared, hold: &RetentionHold, through: u64, dropped: &[SegmentMeta]) {
    let Some(last) = dropped.last().map(|s| s.last_seq) else {
        return;
    };
    let after = through.saturating_add(1);
    let from = dropped.first().map_or(after, |s| s.first_seq.max(after));
    if last < from {
        return;
    }
    let newly = hold.count_dropped(from, last);
    tracing::error!(
        dir = %shared.layout.dir.display(),
        from_seq = from,
        to_seq = last,
        events = newly,
        cap_bytes = hold.cap_bytes(),
        "journal retention dropped seqs {from}..={last} before the cluster publisher published \
         them (the unpublished segments took more than [journal] retain_bytes + [cluster] \
         unpublished_bytes_max): the stream will have a gap there. Bring NATS back (the \
         publisher is behind), or raise [cluster] unpublished_bytes_max to keep more"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    /// Segments of 10 seqs and 100 bytes each (seqs 1..=10, 11..=20, ...), all written at 0.
    fn manifest(segments: u64) -> Manifest {
        Manifest {
            generation: 1,
            expired_through: 0,
            segments: (0..segments)
                .map(|i| SegmentMeta {
                    first_seq: i * 10 + 1,
                    last_seq: i * 10 + 10,
                    records: 10,
                    bytes: 100,
                    first_ts_ms: 0,
                    last_ts_ms: 0,
                    body_crc: 0,
                    pools: None,
                })
                .collect(),
        }
    }

    fn hold(through: u64, cap_bytes: u64) -> Option<HoldLimit> {
        Some(HoldLimit { through, cap_bytes })
    }

    #[test]
    fn without_a_hold_the_oldest_go_by_size_and_by_age() {
        let m = manifest(5);
        // 500 bytes, 250 retained: 3 go (the newest never goes).
        assert_eq!(segments_to_drop(&m, Some(50), 250, u64::MAX, 0, None), 3);
        // All older than a day: all but the newest.
        assert_eq!(
            segments_to_drop(&m, Some(50), u64::MAX, DAY_MS, 2 * DAY_MS, None),
            4
        );
        // What the newest snapshot needs stays.
        assert_eq!(segments_to_drop(&m, Some(20), 1, 1, 2 * DAY_MS, None), 2);
    }

    #[test]
    fn a_held_segment_stays_past_retain_bytes_and_retain_ms_under_the_cap() {
        let m = manifest(5);
        // Nothing consumed: nothing goes, however big (500 <= 1 + 1000) or old.
        assert_eq!(
            segments_to_drop(&m, Some(50), 1, u64::MAX, 0, hold(0, 1_000)),
            0
        );
        assert_eq!(
            segments_to_drop(&m, Some(50), u64::MAX, DAY_MS, 2 * DAY_MS, hold(0, 1_000)),
            0
        );
        // One seq of the first segment unread: it stays, and so does all after it.
        assert_eq!(
            segments_to_drop(&m, Some(50), 1, 1, 2 * DAY_MS, hold(9, 1_000)),
            0
        );
        // A cap that does not overflow with retain_bytes at its largest.
        assert_eq!(
            segments_to_drop(
                &m,
                Some(50),
                u64::MAX,
                DAY_MS,
                2 * DAY_MS,
                hold(0, u64::MAX)
            ),
            0
        );
    }

    #[test]
    fn consumed_segments_go_as_before() {
        let m = manifest(5);
        // Seqs 1..=20 consumed: the first two go (by size), the third is held.
        assert_eq!(
            segments_to_drop(&m, Some(50), 1, u64::MAX, 0, hold(20, 1_000)),
            2
        );
        assert_eq!(
            segments_to_drop(&m, Some(50), 1, DAY_MS, 2 * DAY_MS, hold(25, 1_000)),
            2
        );
        // Everything consumed: as without a hold.
        assert_eq!(
            segments_to_drop(&m, Some(50), 250, u64::MAX, 0, hold(50, 1_000)),
            segments_to_drop(&m, Some(50), 250, u64::MAX, 0, None)
        );
        // Under retain_bytes and retain_ms nothing goes, held or not.
        assert_eq!(
            segments_to_drop(&m, Some(50), 1_000, DAY_MS, 0, hold(50, 1)),
            0
        );
    }

    #[test]
    fn over_the_cap_the_oldest_go_anyway_down_to_the_cap() {
        let m = manifest(5);
        // 500 bytes > 100 + 250: the oldest go until 300 remain (<= 350), unread or not.
        assert_eq!(
            segments_to_drop(&m, Some(50), 100, u64::MAX, 0, hold(0, 250)),
            2
        );
        // A cap of 1 byte: as if there were no hold, but the newest and the snapshot stay.
        assert_eq!(
            segments_to_drop(&m, Some(50), 1, u64::MAX, 0, hold(0, 1)),
            4
        );
        assert_eq!(
            segments_to_drop(&m, Some(20), 1, u64::MAX, 0, hold(0, 1)),
            2
        );
    }

    #[test]
    fn a_hold_moves_only_forward_and_counts_each_lost_seq_once() {
        let h = RetentionHold::new(5, 10);
        h.advance(3);
        assert_eq!(h.through(), 5);
        h.advance(9);
        assert_eq!(
            h.limit(),
            HoldLimit {
                through: 9,
                cap_bytes: 10
            }
        );
        let clone = h.clone();
        assert_eq!(clone.count_dropped(10, 20), 11);
        // The consumer finds a gap 10..=30: 21..=30 were not counted yet.
        assert_eq!(h.count_dropped(10, 30), 10);
        assert_eq!(h.count_dropped(15, 25), 0);
        assert_eq!(h.dropped_events(), 21);
        assert_eq!(clone.dropped_events(), 21);
    }
}
