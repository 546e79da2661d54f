//! Recovery at open: classify the newest records, quarantine a damaged tail, refuse on damage
//! before it, and bring the per-pool index up to date.
//!
//! Owns: the recovery policy (see the crate docs). Cost is bounded, not proportional to the
//! journal's length: it walks back over the damaged suffix (proportional to the damage) and
//! then checks at most [`OPEN_CHECK_WINDOW_RECORDS`] valid records before it. Damage further
//! back is found by `read_from` during replay (it yields `Err`) and by `verify`.
//!
//! **Must never:** remove a record that has a valid record after it, or a record written by a
//! newer format (`UnsupportedVersion` refuses to open instead), or return before removals
//! are synced.

use std::path::{Path, PathBuf};

use crate::config::RecoveryMode;
use crate::record::{decode_record, EventSchema, RecordFault};
use crate::repair::{remove_suffix, Reason};
use crate::report::QuarantinedRecord;
use crate::store::{index_key, Store};
use crate::JournalError;

/// Valid records checked behind the damaged tail (and at the end of a healthy journal) at open.
pub const OPEN_CHECK_WINDOW_RECORDS: u64 = 1024;

pub(crate) struct Recovered {
    pub last_seq: u64,
    pub quarantined: Vec<QuarantinedRecord>,
    pub quarantine_file: Option<PathBuf>,
}

/// `tail_records_max` bounds the damaged suffix that may be dropped: one group commit
/// (`max_batch_records`) is the most that a single interrupted write can leave behind. A longer
/// run of bad records at the end is not a torn write (a binary that cannot read this journal,
/// a failing disk): dropping it would turn an error into a shorter history, so open refuses.
pub(crate) fn recover<S: EventSchema, St: Store>(
    store: &St,
    dir: &Path,
    mode: RecoveryMode,
    tail_records_max: u64,
) -> Result<Recovered, JournalError> {
    let se = |e: crate::store::StoreError| e.into_journal(dir);
    let corruption = |seq: u64, what: String| JournalError::Corruption {
        seq,
        what,
        dir: dir.to_path_buf(),
    };
    // Damaged records at the tail, newest first.
    let mut suffix: Vec<(u64, String)> = Vec::new();
    // Lowest key of the valid region seen so far, and the lowest damaged seq inside it.
    let mut lowest_valid_region_key: Option<u64> = None;
    let mut mid: Option<(u64, String)> = None;
    let mut valid_checked = 0u64;
    let mut last_seq = 0u64;
    let mut reached_start = true;
    for item in store.iter_rev() {
        let (seq, value) = item.map_err(se)?;
        if last_seq == 0 {
            last_seq = seq;
        }
        let fault = match decode_record::<S>(seq, value.as_ref()) {
            Ok(_) => None,
            Err(RecordFault::Unsupported { version, current }) => {
                return Err(JournalError::UnsupportedVersion {
                    seq,
                    version,
                    current,
                })
            }
            Err(RecordFault::Bad(what)) => Some(what),
        };
        let in_suffix = lowest_valid_region_key.is_none();
        match (fault, in_suffix) {
            (Some(what), true) => {
                suffix.push((seq, what));
                if suffix.len() as u64 > tail_records_max {
                    return Err(corruption(
                        seq,
                        format!(
                            "the last {} records (seq {last_seq} back to at least seq {seq}) are \
                             all damaged: more than one group commit ({tail_records_max} records) \
                             can hold, so this is not a torn write (a pool-managerd that cannot \
                             read this journal, or a failing disk?); nothing was dropped. Run \
                             `pool-managerd journal verify` to see the damage",
                            suffix.len()
                        ),
                    ));
                }
            }
            (fault, _) => {
                if let Some(above) = lowest_valid_region_key {
                    if seq + 1 != above {
                        mid = Some((seq + 1, format!("seqs {}..{above} are missing", seq + 1)));
                    }
                }
                lowest_valid_region_key = Some(seq);
                match fault {
                    Some(what) => mid = Some((seq, what)),
                    None => valid_checked += 1,
                }
            }
        }
        if valid_checked >= OPEN_CHECK_WINDOW_RECORDS {
            reached_start = false;
            break;
        }
    }
    if reached_start {
        if let Some(lowest) = lowest_valid_region_key {
            if lowest != 1 && mid.is_none() {
                mid = Some((1, format!("seqs 1..{lowest} are missing")));
            }
        }
    }
    if let Some((seq, what)) = mid {
        return Err(corruption(
            seq,
            format!("{what} (mid-journal: valid records follow it)"),
        ));
    }
    let Some(&(lowest_bad, ref first_what)) = suffix.last() else {
        return Ok(Recovered {
            last_seq,
            quarantined: Vec::new(),
            quarantine_file: None,
        });
    };
    if mode == RecoveryMode::AbsoluteConsistency {
        return Err(corruption(
            lowest_bad,
            format!("{first_what} (tail; RecoveryMode::AbsoluteConsistency refuses to drop it)"),
        ));
    }
    let mut removed = Vec::new();
    let report =
        remove_suffix::<S, St>(store, dir, lowest_bad, Reason::TailCorruption, &mut removed)?;
    Ok(Recovered {
        last_seq: lowest_bad - 1,
        quarantined: removed
            .into_iter()
            .map(|(seq, what)| QuarantinedRecord { seq, what })
            .collect(),
        quarantine_file: report.quarantine_file,
    })
}

/// Adds index entries for records after the index's high-water seq; returns how many records
/// were scanned. Lowers the high-water seq if it is past `last_seq`.
pub(crate) fn catch_up_index<S: EventSchema, St: Store>(
    store: &St,
    dir: &Path,
    last_seq: u64,
    chunk_records: usize,
) -> Result<u64, JournalError> {
    let se = |e: crate::store::StoreError| e.into_journal(dir);
    let high_water = store.index_high_water().map_err(se)?;
    if high_water > last_seq {
        store.index_add(&[], last_seq).map_err(se)?;
        store.sync().map_err(se)?;
        return Ok(0);
    }
    if high_water == last_seq {
        return Ok(0);
    }
    let mut scanned = 0u64;
    let mut keys = Vec::new();
    let mut in_chunk = 0usize;
    for item in store.iter_from(high_water + 1) {
        let (seq, value) = item.map_err(se)?;
        if seq > last_seq {
            break;
        }
        let envelope =
            decode_record::<S>(seq, value.as_ref()).map_err(|f| JournalError::Corruption {
                seq,
                what: format!("{f} (found while rebuilding the per-pool index)"),
                dir: dir.to_path_buf(),
            })?;
        if let Some(pool) = &envelope.pool_id {
            keys.push(index_key(pool, seq));
        }
        scanned += 1;
        in_chunk += 1;
        if in_chunk >= chunk_records {
            store.index_add(&keys, seq).map_err(se)?;
            keys.clear();
            in_chunk = 0;
        }
    }
    store.index_add(&keys, last_seq).map_err(se)?;
    store.sync().map_err(se)?;
    if scanned > 0 {
        tracing::info!(dir = %dir.display(), scanned, "per-pool index caught up");
    }
    Ok(scanned)
}
