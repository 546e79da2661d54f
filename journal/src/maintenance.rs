//! The maintenance thread: sealing the tail into segments, retention, the witness's lazy
//! sync, and asking the writer to recover while the journal is unavailable.
//!
//! Owns: when those run. Sealing writes a segment file from records already durable in the
//! live store (and in the tail), then the manifest, then swaps the view (readers move from the
//! tail to the segment in one step); the writer removes the sealed keys from the live store
//! a few at a time in later commits. Retention replaces the manifest first, then the witness's
//! `first_seq`, then deletes the dropped files.
//!
//! **Must never:** list a segment before its file is durable, drop a segment that holds seqs
//! after the newest snapshot (start-up replays from it) or the newest segment, or block the
//! writer (it never takes the writer's locks; the view lock is held only to swap).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::manifest::{self, Manifest};
use crate::segment::{self, SealRecord};
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
pub fn segments_to_drop(
    manifest: &Manifest,
    newest_snapshot: Option<u64>,
    retain_bytes: u64,
    retain_ms: u64,
    now_ms: u64,
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
    let count = segments_to_drop(
        &manifest,
        newest_snapshot,
        shared.config.retain_bytes,
        shared.config.retain_ms,
        shared.config.clock.now_ms(),
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
