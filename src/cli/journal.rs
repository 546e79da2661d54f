//! `pool-managerd journal ...`: show, export, import, verify, stats and repair.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::ser::SerializeMap as _;
use serde::Serialize;

use super::{open_dir, open_existing, open_existing_with, JournalDirArg, OpenPurpose};
use crate::schema::PoolEnvelope;
use crate::table::{format_ts_ms, timeline_line};

/// The most events `journal show` prints unless told otherwise.
const SHOW_LIMIT_DEFAULT: usize = 1_000;

/// `journal` subcommands.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Print events as a readable timeline, oldest first.
    Show {
        #[command(flatten)]
        dir: JournalDirArg,
        /// Only this pool's events.
        #[arg(long, value_name = "ID")]
        pool: Option<String>,
        /// Start at this seq.
        #[arg(long, default_value_t = 1, value_name = "SEQ")]
        since: u64,
        /// Print at most this many events.
        #[arg(long, default_value_t = SHOW_LIMIT_DEFAULT, value_name = "N")]
        limit: usize,
        /// One JSON envelope per line (the export format) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write every event as NDJSON, one envelope per line, oldest first.
    Export {
        #[command(flatten)]
        dir: JournalDirArg,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Load an NDJSON export into a new, empty journal.
    Import {
        /// The NDJSON file, or '-' for standard input.
        file: PathBuf,
        #[command(flatten)]
        dir: JournalDirArg,
    },
    /// Check every record: CRC, decoding, and gap-free sequence numbers. Exits 1 on damage.
    Verify {
        #[command(flatten)]
        dir: JournalDirArg,
    },
    /// Count events per kind, first and last seq and time, size on disk.
    Stats {
        #[command(flatten)]
        dir: JournalDirArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move every record from SEQ on into a quarantine file and drop it: the repair for a
    /// journal that refuses to open because of corruption before its tail.
    Repair {
        #[command(flatten)]
        dir: JournalDirArg,
        /// The first seq to remove (the seq named by the corruption error).
        #[arg(long, value_name = "SEQ")]
        from_seq: u64,
    },
}

pub(super) fn run(command: JournalCommand) -> anyhow::Result<ExitCode> {
    match command {
        JournalCommand::Show {
            dir,
            pool,
            since,
            limit,
            json,
        } => show(&dir, pool.as_deref(), since, limit, json),
        JournalCommand::Export { dir, output } => export(&dir, output),
        JournalCommand::Import { file, dir } => import(&dir, &file),
        JournalCommand::Verify { dir } => verify(&dir),
        JournalCommand::Stats { dir, json } => stats(&dir, json),
        JournalCommand::Repair { dir, from_seq } => repair(&dir, from_seq),
    }
}

fn show(
    dir: &JournalDirArg,
    pool: Option<&str>,
    since: u64,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let journal = open_existing(&dir.journal_dir)?;
    // One more than asked, to tell the reader when the limit cut the timeline short.
    let wanted = limit.saturating_add(1);
    let mut envelopes = match pool {
        Some(pool) => journal.read_pool(pool, since, wanted)?,
        None => journal
            .read_from(since.max(1))
            .take(wanted)
            .collect::<Result<Vec<_>, _>>()?,
    };
    let cut_short = envelopes.len() > limit;
    envelopes.truncate(limit);
    let mut out = BufWriter::new(io::stdout().lock());
    for envelope in &envelopes {
        if json {
            writeln!(out, "{}", export_line(envelope)?)?;
        } else {
            writeln!(out, "{}", timeline_line(envelope))?;
        }
    }
    out.flush()?;
    journal.close()?;
    if cut_short {
        let next = envelopes.last().map_or(since, |e| e.seq.saturating_add(1));
        eprintln!(
            "(stopped after {limit} event(s); pass --since {next} for the next ones, or a \
             larger --limit)"
        );
    } else if envelopes.is_empty() {
        match pool {
            Some(pool) => eprintln!(
                "(no events of pool '{pool}' from seq {since} in {})",
                dir.journal_dir.display()
            ),
            None => eprintln!(
                "(no events from seq {since} in {})",
                dir.journal_dir.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One envelope as a line of `journal export` (same keys in the same order:
/// `{"seq","ts_ms","pool_id","cause","event":{"kind",..fields}}`), so that `show --json`
/// output can be fed to `journal import` or compared with an export.
fn export_line(envelope: &PoolEnvelope) -> anyhow::Result<String> {
    /// The event object with `kind` first, then the fields (as the exporter writes it).
    struct KindFirst(serde_json::Map<String, serde_json::Value>);

    impl Serialize for KindFirst {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            if let Some(kind) = self.0.get("kind") {
                map.serialize_entry("kind", kind)?;
            }
            for (key, value) in self.0.iter().filter(|(key, _)| *key != "kind") {
                map.serialize_entry(key, value)?;
            }
            map.end()
        }
    }

    #[derive(Serialize)]
    struct Line<'a> {
        seq: u64,
        ts_ms: u64,
        pool_id: &'a Option<String>,
        cause: Option<u64>,
        event: KindFirst,
    }

    let event = match pool_journal::event_to_json(&envelope.event)? {
        serde_json::Value::Object(fields) => fields,
        other => bail!(
            "seq {}: the event's JSON form is not an object: {other}",
            envelope.seq
        ),
    };
    let line = Line {
        seq: envelope.seq,
        ts_ms: envelope.ts_ms,
        pool_id: &envelope.pool_id,
        cause: envelope.cause,
        event: KindFirst(event),
    };
    Ok(serde_json::to_string(&line)?)
}

fn export(dir: &JournalDirArg, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // A journal damaged before its tail refuses a normal open, but the corruption error
    // advises exporting it before `journal repair`: then export what comes before the damage
    // (and fail naming it) rather than nothing.
    let (journal, damaged) = match open_existing(&dir.journal_dir) {
        Ok(journal) => (journal, false),
        Err(error) => {
            let Some(seq) = corrupt_seq(&error) else {
                return Err(error);
            };
            eprintln!(
                "warning: the journal at {} is damaged at seq {seq}; exporting the events \
                 before it only",
                dir.journal_dir.display()
            );
            (
                open_existing_with(&dir.journal_dir, OpenPurpose::Repair)?,
                true,
            )
        }
    };
    let stopped = |error: pool_journal::JournalError| {
        let error = anyhow::Error::new(error);
        if damaged {
            error.context(format!(
                "the export of {} stopped at the damage (the events before it were written)",
                dir.journal_dir.display()
            ))
        } else {
            error
        }
    };
    let count = match &output {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create the export file {}", path.display()))?;
            let mut out = BufWriter::new(file);
            let count = journal.export(&mut out);
            out.flush()
                .with_context(|| format!("cannot write the export file {}", path.display()))?;
            count.map_err(stopped)?
        }
        None => {
            let mut out = BufWriter::new(io::stdout().lock());
            let count = journal.export(&mut out);
            out.flush()?;
            count.map_err(stopped)?
        }
    };
    journal.close()?;
    eprintln!(
        "exported {count} event(s) from {}",
        dir.journal_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn import(dir: &JournalDirArg, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let mut input: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(BufReader::new(io::stdin().lock()))
    } else {
        let opened = File::open(file)
            .with_context(|| format!("cannot read the NDJSON file {}", file.display()))?;
        Box::new(BufReader::new(opened))
    };
    check_import_target(&dir.journal_dir)?;
    let journal = open_dir(&dir.journal_dir)?;
    let count = journal
        .import(&mut input)
        .with_context(|| format!("import of {} failed", file.display()))?;
    journal.close()?;
    eprintln!(
        "imported {count} event(s) into {}",
        dir.journal_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The seq of the damage when `error` is (or wraps) a journal's corruption report.
fn corrupt_seq(error: &anyhow::Error) -> Option<u64> {
    match error.downcast_ref::<pool_journal::JournalError>() {
        Some(pool_journal::JournalError::Corruption { seq, .. }) => Some(*seq),
        _ => None,
    }
}

/// `journal import` creates a journal only in a new or empty directory, or fills an empty
/// existing journal: never sled files among somebody else's.
fn check_import_target(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!(
            "cannot import into {}: it is not a directory; pass --journal-dir a new directory",
            dir.display()
        );
    }
    if dir.join("db").exists() || dir.join("conf").exists() {
        return Ok(()); // a journal: the import itself refuses one that holds events
    }
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "cannot import into {}: the directory holds files but no journal; import creates a \
             journal only in a new or empty directory (pass another --journal-dir)",
            dir.display()
        );
    }
    Ok(())
}

fn verify(dir: &JournalDirArg) -> anyhow::Result<ExitCode> {
    // Verify must be able to list damage that plain open refuses: open it as for a repair.
    let journal = open_existing_with(&dir.journal_dir, OpenPurpose::Repair)?;
    let report = journal.verify();
    journal.close()?;
    println!(
        "{}: {} record(s), seq {}..={}",
        dir.journal_dir.display(),
        report.records,
        report.first_seq,
        report.last_seq
    );
    if report.problems.is_empty() {
        println!("ok: every record passes its CRC and decodes; seqs are gap-free");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("seq {}: {}", problem.seq, problem.what);
    }
    let first = report.problems.iter().map(|p| p.seq).min().unwrap_or(0);
    println!(
        "{} problem(s). To drop the damaged part (records from seq {first} on are moved to a \
         quarantine file), run: pool-managerd journal repair --journal-dir {} --from-seq {first}",
        report.problems.len(),
        dir.journal_dir.display()
    );
    Ok(ExitCode::FAILURE)
}

fn stats(dir: &JournalDirArg, json: bool) -> anyhow::Result<ExitCode> {
    let journal = open_existing(&dir.journal_dir)?;
    let stats = journal.stats()?;
    journal.close()?;
    if json {
        // Spelled out here, so that the JSON keys are the CLI's contract, not a derive's.
        let json = serde_json::json!({
            "records": stats.records,
            "by_kind": stats.by_kind,
            "first_seq": stats.first_seq,
            "last_seq": stats.last_seq,
            "first_ts_ms": stats.first_ts_ms,
            "last_ts_ms": stats.last_ts_ms,
            "size_on_disk_bytes": stats.size_on_disk_bytes,
            "snapshot_seqs": stats.snapshot_seqs,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("journal:      {}", dir.journal_dir.display());
    println!("events:       {}", stats.records);
    if stats.records == 0 {
        println!("seq:          (empty)");
    } else {
        println!("seq:          {}..={}", stats.first_seq, stats.last_seq);
        println!("first event:  {}", format_ts_ms(stats.first_ts_ms));
        println!("last event:   {}", format_ts_ms(stats.last_ts_ms));
    }
    println!("size on disk: {} bytes", stats.size_on_disk_bytes);
    println!("snapshots:    {:?}", stats.snapshot_seqs);
    println!("by kind:");
    for (kind, count) in &stats.by_kind {
        println!("  {kind:<28} {count}");
    }
    Ok(ExitCode::SUCCESS)
}

fn repair(dir: &JournalDirArg, from_seq: u64) -> anyhow::Result<ExitCode> {
    if from_seq == 0 {
        bail!("--from-seq must be at least 1 (seqs start at 1)");
    }
    let journal = open_existing_with(&dir.journal_dir, OpenPurpose::Repair)?;
    let report = journal.truncate_from(from_seq)?;
    journal.close()?;
    println!(
        "removed {} record(s) from seq {} on and the snapshot(s) {:?}; journal {} now ends at seq {}",
        report.removed_records,
        report.from_seq,
        report.removed_snapshots,
        dir.journal_dir.display(),
        report.last_seq
    );
    if let Some(path) = &report.quarantine_file {
        println!("the removed records are in {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
