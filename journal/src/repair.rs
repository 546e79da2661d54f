//! Removing a suffix of the journal: quarantine file, index, snapshots, records, sync.
//!
//! Owns: the one procedure both tail recovery (at open) and `truncate_from` (operator repair)
//! use, and the quarantine file format:
//!
//! ```text
//! <dir>/quarantine/<unix_ms>-from-seq-<N>.ndjson
//! one line per removed record:
//! {"seq":N,"what":"<why it was removed>","raw_hex":"<the stored value>","envelope":<export form or null>}
//! ```
//!
//! **Must never:** delete a record before the quarantine file holding it is fsynced, or leave
//! a snapshot that covers a removed seq (a later append would reuse the seq and the snapshot
//! would then describe events that no longer exist).
//!
//! # Calling order
//! 1. write every record >= from_seq to the quarantine file; fsync it and its directory;
//! 2. lower the index high-water seq to from_seq - 1 and drop the index keys of decodable
//!    removed records (stale keys of undecodable ones are filtered by `read_pool`);
//! 3. remove snapshots with covers_seq >= from_seq;
//! 4. remove the records; 5. `Store::sync`.
//!
//! A crash between steps leaves either the old journal (plus a harmless quarantine file) or
//! a lagging index, which open rebuilds.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::record::{decode_record, EventSchema, RecordFault};
use crate::report::TruncateReport;
use crate::store::{index_key, sync_dir, Store};
use crate::JournalError;

/// Most attempts at a unique quarantine file name within one millisecond.
const MAX_QUARANTINE_NAME_ATTEMPTS: u32 = 100;

/// Why records are being removed.
pub(crate) enum Reason {
    /// Tail recovery at open: every record removed is damaged.
    TailCorruption,
    /// Operator repair or import rollback.
    Operator,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn create_quarantine_file(
    dir: &Path,
    from_seq: u64,
) -> Result<(std::fs::File, PathBuf), JournalError> {
    let qdir = dir.join("quarantine");
    std::fs::create_dir_all(&qdir).map_err(|e| JournalError::io(&qdir, e))?;
    let ms = unix_ms();
    for attempt in 0..MAX_QUARANTINE_NAME_ATTEMPTS {
        let name = if attempt == 0 {
            format!("{ms}-from-seq-{from_seq}.ndjson")
        } else {
            format!("{ms}-from-seq-{from_seq}-{attempt}.ndjson")
        };
        let path = qdir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(JournalError::io(&path, e)),
        }
    }
    Err(JournalError::InvalidArgument {
        what: format!(
            "could not find a free quarantine file name in {}",
            qdir.display()
        ),
    })
}

/// Moves records >= `from_seq` to a quarantine file and deletes them (see module docs).
///
/// `quarantined` receives `(seq, what)` for each removed record.
pub(crate) fn remove_suffix<S: EventSchema, St: Store>(
    store: &St,
    dir: &Path,
    from_seq: u64,
    reason: Reason,
    quarantined: &mut Vec<(u64, String)>,
) -> Result<TruncateReport, JournalError> {
    let se = |e: crate::store::StoreError| e.into_journal(dir);
    let mut report = TruncateReport {
        from_seq,
        last_seq: from_seq.saturating_sub(1),
        ..TruncateReport::default()
    };
    let mut file: Option<(std::io::BufWriter<std::fs::File>, PathBuf)> = None;
    let mut index_keys = Vec::new();
    // Step 1: quarantine file.
    for item in store.iter_from(from_seq) {
        let (seq, value) = item.map_err(se)?;
        let raw = value.as_ref();
        let decoded = decode_record::<S>(seq, raw);
        let what = match (&decoded, &reason) {
            (Err(RecordFault::Bad(w)), _) => w.clone(),
            (Err(RecordFault::Unsupported { .. }), Reason::TailCorruption) => {
                // Recovery never removes these (it refuses instead); be safe.
                return Err(JournalError::InvalidArgument {
                    what: format!("refusing to quarantine seq {seq}: it is a newer format"),
                });
            }
            (Err(f), Reason::Operator) => format!("removed by operator ({f})"),
            (Ok(_), Reason::TailCorruption) => "tail record removed with the corrupt ones".into(),
            (Ok(_), Reason::Operator) => format!("removed by truncate_from({from_seq})"),
        };
        let envelope_json = match &decoded {
            Ok(env) => crate::json::envelope_to_json(env)?,
            Err(_) => serde_json::Value::Null,
        };
        if let Ok(env) = &decoded {
            if let Some(pool) = &env.pool_id {
                index_keys.push(index_key(pool, seq));
            }
        }
        if file.is_none() {
            let (f, path) = create_quarantine_file(dir, from_seq)?;
            file = Some((std::io::BufWriter::new(f), path));
        }
        if let Some((w, path)) = file.as_mut() {
            let line = serde_json::json!({
                "seq": seq,
                "what": what,
                "raw_hex": crate::hex(raw),
                "envelope": envelope_json,
            });
            serde_json::to_writer(&mut *w, &line).map_err(|e| JournalError::Encode {
                what: format!("quarantine line: {e}"),
            })?;
            w.write_all(b"\n")
                .map_err(|e| JournalError::io(&*path, e))?;
        }
        if let Reason::TailCorruption = reason {
            tracing::warn!(seq, what = %what, dir = %dir.display(), "journal tail record quarantined");
        }
        quarantined.push((seq, what));
        report.removed_records += 1;
    }
    if let Some((w, path)) = file {
        let f = w
            .into_inner()
            .map_err(|e| JournalError::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| JournalError::io(&path, e))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent).map_err(se)?;
        }
        sync_dir(dir).map_err(se)?;
        report.quarantine_file = Some(path);
    }
    // Step 2: index.
    let high_water = store.index_high_water().map_err(se)?;
    store
        .index_remove(&index_keys, high_water.min(from_seq.saturating_sub(1)))
        .map_err(se)?;
    // Step 3: snapshots.
    for covers_seq in store.snapshot_seqs().map_err(se)? {
        if covers_seq >= from_seq {
            store.snapshot_remove(covers_seq).map_err(se)?;
            report.removed_snapshots.push(covers_seq);
        }
    }
    // Steps 4 and 5.
    store.remove_from(from_seq).map_err(se)?;
    store.sync().map_err(se)?;
    Ok(report)
}
