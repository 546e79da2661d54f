//! The operator tools on a journal: verify, stats, export, import, repair.
//!
//! Owns: their procedures over the read paths. **Must never:** change a journal except
//! through `import` (into an empty one) and `repair`.

use std::collections::BTreeMap;
use std::io::BufRead;

use crate::config::JournalConfig;
use crate::journal::Journal;
use crate::json::{parse_import_line, write_export_line, MAX_IMPORT_LINE_BYTES};
use crate::layout::Layout;
use crate::load::{Depth, LoadOptions, Loaded};
use crate::record::{Draft, EventSchema};
use crate::report::{Problem, RepairReport, SegmentStat, Stats, VerifyReport, MAX_VERIFY_PROBLEMS};
use crate::JournalError;

fn verify_report(loaded: &Loaded) -> VerifyReport {
    let mut report = VerifyReport {
        records: loaded.records_checked,
        first_seq: if loaded.held_last() == 0 {
            0
        } else {
            loaded.manifest.first_retained()
        },
        last_seq: loaded.held_last(),
        segments: loaded.manifest.segments.len(),
        snapshots: loaded.snapshots.len(),
        witness_seq: loaded
            .witness
            .as_ref()
            .and_then(|w| w.vouch())
            .map(|v| v.seq),
        ..VerifyReport::default()
    };
    for f in &loaded.findings {
        if report.problems.len() < MAX_VERIFY_PROBLEMS {
            report.problems.push(Problem {
                seq: f.seq.unwrap_or(0),
                file: f.file.clone(),
                what: f.what.clone(),
                loss: f.loss,
            });
        } else {
            report.problems_omitted += 1;
        }
    }
    report.problems_omitted += loaded.findings_omitted as u64;
    for (seq, what, _) in &loaded.torn {
        if report.problems.len() < MAX_VERIFY_PROBLEMS {
            report.problems.push(Problem {
                seq: *seq,
                file: Layout::new(".").store_dir().join("db"),
                what: format!("{what} (never acknowledged: a write torn by a crash; the next open quarantines it)"),
                loss: false,
            });
        }
    }
    report
}

/// Checks every file of the journal at `config.dir` without writing anything: what start-up
/// checks (the manifest, every segment's header and trailer, every record of the live store,
/// the witness, the newest snapshot), plus every entry of every segment and every snapshot.
/// Works on a read-only or full file system and beside a running daemon.
pub fn verify_dir<S: EventSchema>(config: &JournalConfig) -> Result<VerifyReport, JournalError> {
    let (loaded, _) = crate::open::load_read_only::<S>(config, Depth::Full)?;
    Ok(verify_report(&loaded))
}

/// `journal repair` (see `repair`).
pub fn repair_dir<S: EventSchema>(
    config: JournalConfig,
    accept_loss: bool,
) -> Result<RepairReport, JournalError> {
    crate::repair::repair::<S>(config, accept_loss)
}

impl<S: EventSchema> Journal<S> {
    /// Checks this open journal's files and its in-memory tail as `verify_dir` does.
    pub fn verify(&self) -> VerifyReport {
        let shared = self.shared();
        let (manifest, tail) = {
            let view = shared.read_view();
            ((*view.manifest).clone(), view.tail.clone())
        };
        let mut loaded = Loaded {
            manifest,
            tail,
            witness: Some(crate::journal::witness_reading(&shared.layout)),
            ..Loaded::default()
        };
        loaded.records_checked = loaded.tail.len() as u64;
        let options = LoadOptions {
            depth: Depth::Full,
            legacy: false,
            concurrent: true,
        };
        let mut result = crate::load::check::<S>(&shared.layout, &mut loaded, options)
            .and_then(|()| crate::load::check_tail_records::<S>(&shared.layout, &mut loaded));
        if let Err(e) = result.as_mut() {
            loaded.findings.push(crate::load::Finding {
                file: shared.layout.dir.clone(),
                seq: None,
                what: e.to_string(),
                loss: false,
            });
        }
        verify_report(&loaded)
    }

    /// Counts per kind, first/last seq and ts_ms, sizes, segments, snapshots.
    pub fn stats(&self) -> Result<Stats, JournalError> {
        let mut stats = Stats::default();
        let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
        for item in self.read_from(0) {
            let env = item?;
            if stats.records == 0 {
                stats.first_seq = env.seq;
                stats.first_ts_ms = env.ts_ms;
            }
            stats.records += 1;
            stats.last_seq = env.seq;
            stats.last_ts_ms = env.ts_ms;
            *by_kind.entry(S::kind(&env.event)).or_insert(0) += 1;
        }
        stats.by_kind = by_kind
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        stats.size_on_disk_bytes = crate::layout::dir_bytes(self.dir());
        stats.snapshot_seqs = self.snapshot_seqs();
        let manifest = self.shared().manifest();
        stats.segments = manifest
            .segments
            .iter()
            .map(|s| SegmentStat {
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                records: s.records,
                bytes: s.bytes,
            })
            .collect();
        stats.expired_through = manifest.expired_through;
        stats.time_travel_from = self.time_travel_from();
        stats.usage = self.usage();
        Ok(stats)
    }

    /// Writes NDJSON, one envelope per line (see `json` module docs), from the earliest
    /// retained seq; returns the line count.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<u64, JournalError> {
        let mut buf = Vec::with_capacity(256);
        let mut lines = 0u64;
        for item in self.read_from(0) {
            let env = item?;
            write_export_line(&env, &mut buf)?;
            out.write_all(&buf)
                .map_err(|e| JournalError::io("<export output>", e))?;
            lines += 1;
        }
        out.flush()
            .map_err(|e| JournalError::io("<export output>", e))?;
        Ok(lines)
    }

    /// Imports NDJSON (the export format) into an empty journal; lines must carry seq 1, 2,
    /// 3, ... (blank lines are skipped; a loss marker may stand for the seqs before it). On any
    /// error, records already imported by this call are removed again (to a quarantine file)
    /// and the error names the line. Blocks: do not call from a tokio runtime worker thread.
    pub fn import(&self, input: &mut dyn BufRead) -> Result<u64, JournalError> {
        if self.last_seq() != 0 {
            return Err(JournalError::NotEmpty {
                dir: self.dir().to_path_buf(),
            });
        }
        match self.import_lines(input) {
            Ok(n) => Ok(n),
            Err(e) => {
                if self.last_seq() > 0 {
                    if let Err(rollback) = self.truncate_from(1) {
                        tracing::error!(dir = %self.dir().display(), error = %rollback, "import rollback failed");
                    }
                }
                Err(e)
            }
        }
    }

    fn import_lines(&self, input: &mut dyn BufRead) -> Result<u64, JournalError> {
        let max = self.inner.max_batch_records;
        let mut line_no = 0u64;
        let mut expected_seq = 1u64;
        let mut chunk: Vec<Draft<S::Event>> = Vec::with_capacity(max);
        let mut line = String::new();
        let import_err = |line: u64, what: String| JournalError::Import { line, what };
        loop {
            line.clear();
            let read = std::io::Read::take(&mut *input, MAX_IMPORT_LINE_BYTES as u64 + 1)
                .read_line(&mut line)
                .map_err(|e| import_err(line_no + 1, format!("cannot read: {e}")))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            if read > MAX_IMPORT_LINE_BYTES {
                return Err(import_err(
                    line_no,
                    format!("line longer than {MAX_IMPORT_LINE_BYTES} bytes"),
                ));
            }
            let text = line.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let (seq, draft) =
                parse_import_line::<S::Event>(text).map_err(|what| import_err(line_no, what))?;
            let declared = S::loss_range(&draft.event)
                .is_some_and(|(from, to)| to == seq && from == expected_seq);
            if seq != expected_seq && !declared {
                return Err(import_err(
                    line_no,
                    format!("seq {seq}, expected {expected_seq} (seqs must be 1, 2, 3, ... without gaps)"),
                ));
            }
            expected_seq = seq + 1;
            chunk.push(draft);
            if chunk.len() >= max {
                self.import_chunk(&mut chunk, line_no)?;
            }
        }
        self.import_chunk(&mut chunk, line_no)?;
        Ok(expected_seq - 1)
    }

    fn import_chunk(
        &self,
        chunk: &mut Vec<Draft<S::Event>>,
        line_no: u64,
    ) -> Result<(), JournalError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let first_expected = self.last_seq() + 1;
        let envelopes = self.append_blocking(std::mem::take(chunk))?;
        let first = envelopes.first().map(|e| (e.seq, S::loss_range(&e.event)));
        let ok = match first {
            Some((seq, _)) if seq == first_expected => true,
            Some((seq, Some((from, to)))) => to == seq && from == first_expected,
            _ => false,
        };
        if !ok {
            return Err(JournalError::Import {
                line: line_no,
                what: "another writer appended during the import".into(),
            });
        }
        Ok(())
    }
}
