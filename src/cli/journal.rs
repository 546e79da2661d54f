//! `pool-managerd journal ...`: show, export, import, verify, stats, repair and restore (its
//! body in `restore.rs`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::ser::SerializeMap as _;
use serde::Serialize;

use super::{check_holds_journal, open_dir, open_existing, JournalDirArg};
use crate::schema::{PoolEnvelope, PoolJournal, PoolSchema};
use crate::table::{format_ts_ms, timeline_line};

/// The most events `journal show` prints unless told otherwise.
pub(super) const SHOW_LIMIT_DEFAULT: usize = 1_000;

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
    /// Check every file of the journal (segments, live store, snapshots, witness, manifest)
    /// without writing anything: CRC, decoding, gap-free seqs, nothing shorter than the
    /// witnesses prove. Exits 1 on damage, naming the way out.
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
    /// Rebuild a damaged journal's files from what is readable (the daemon must be stopped).
    /// Refuses, changing nothing, when an acknowledged event would be lost, unless
    /// --accept-loss: then everything readable is kept and each lost range becomes a
    /// JournalLossAccepted event. The replaced files are kept under quarantine/.
    Repair {
        #[command(flatten)]
        dir: JournalDirArg,
        /// Keep what is readable even though acknowledged events are lost, and record the loss.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Rebuild a lost or damaged journal from the events its node published to NATS JetStream
    /// (`[cluster] nats_url`), as a new journal at --journal-dir (refused where one is): every
    /// event from seq 1 with its seq and time, exactly as `journal import` of their export;
    /// refused when the stream misses a seq.
    Restore {
        #[command(flatten)]
        source: super::cluster::NatsArgs,
        /// The node whose journal to rebuild (its `[cluster] node_id`).
        #[arg(long, value_name = "ID")]
        node: String,
        #[command(flatten)]
        dir: JournalDirArg,
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
        JournalCommand::Repair { dir, accept_loss } => repair(&dir, accept_loss),
        JournalCommand::Restore { source, node, dir } => super::restore::run(&source, &node, &dir),
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
pub(super) fn export_line(envelope: &PoolEnvelope) -> anyhow::Result<String> {
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
    // A damaged journal refuses a normal open; export still saves what can be read before
    // the damage (and fails naming it), so that nothing readable is lost to a repair.
    check_holds_journal(&dir.journal_dir)?;
    let (journal, refusal) = PoolJournal::open_read_only_despite_damage(
        pool_journal::JournalConfig::new(&dir.journal_dir),
    )
    .with_context(|| format!("cannot read the journal at {}", dir.journal_dir.display()))?;
    let damaged = refusal.is_some();
    if let Some(refusal) = &refusal {
        eprintln!("warning: {refusal}\nwarning: exporting the events that can be read");
    }
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
    if damaged {
        // What could be read was written, but it is not the whole history: never a success.
        bail!(
            "the journal at {} is damaged: the {count} event(s) exported are what could be \
             read, not its whole history (see the warning above for the way out)",
            dir.journal_dir.display()
        );
    }
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
    if pool_journal::layout::Layout::new(dir).holds_journal() {
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
    check_holds_journal(&dir.journal_dir)?;
    let config = pool_journal::JournalConfig::new(&dir.journal_dir);
    let report = pool_journal::verify_dir::<PoolSchema>(&config)
        .with_context(|| format!("cannot verify the journal at {}", dir.journal_dir.display()))?;
    println!(
        "{}: {} record(s) checked, seq {}..={}, {} segment(s), {} snapshot(s), witness {}",
        dir.journal_dir.display(),
        report.records,
        report.first_seq,
        report.last_seq,
        report.segments,
        report.snapshots,
        report.witness_seq.map_or_else(
            || "unreadable".to_string(),
            |seq| format!("vouches for seq {seq}")
        ),
    );
    if report.is_ok() {
        println!(
            "ok: every record passes its CRC and decodes, seqs are gap-free, and the journal \
             holds everything its witnesses prove"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        let at = if problem.seq > 0 {
            format!("seq {}: ", problem.seq)
        } else {
            String::new()
        };
        println!("{}: {at}{}", problem.file.display(), problem.what);
    }
    if report.problems_omitted > 0 {
        println!("... and {} more problem(s)", report.problems_omitted);
    }
    let count = report.problems.len() as u64 + report.problems_omitted;
    if report.loses_events() {
        println!(
            "{count} problem(s); acknowledged events are unreadable or gone. Stop the daemon, then \
             keep what is readable and record the loss as an event: pool-managerd journal repair \
             --journal-dir {} --accept-loss (or restore the journal directory from a backup)",
            dir.journal_dir.display()
        );
    } else {
        println!(
            "{count} problem(s); no acknowledged event is lost. Stop the daemon, then rebuild the \
             damaged files: pool-managerd journal repair --journal-dir {}",
            dir.journal_dir.display()
        );
    }
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
            "expired_through": stats.expired_through,
            "time_travel_from": stats.time_travel_from,
            "segments": stats.segments,
            "bytes": {
                "segments": stats.usage.segment_bytes,
                "live_store": stats.usage.live_bytes,
                "snapshots": stats.usage.snapshot_bytes,
            },
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
    if stats.expired_through > 0 {
        println!(
            "retained:     from seq {} (seqs up to {} were dropped by retention)",
            stats.expired_through + 1,
            stats.expired_through
        );
    } else {
        println!("retained:     everything (retention has dropped nothing)");
    }
    if stats.time_travel_from > 0 {
        println!(
            "time travel:  replay --until-seq / ?at_seq reach back to seq {}",
            stats.time_travel_from
        );
    }
    println!(
        "size on disk: {} bytes (segments {}, live store {}, snapshots {})",
        stats.size_on_disk_bytes,
        stats.usage.segment_bytes,
        stats.usage.live_bytes,
        stats.usage.snapshot_bytes
    );
    println!("segments:     {}", stats.segments.len());
    for segment in &stats.segments {
        println!(
            "  seqs {}..={}: {} record(s), {} bytes",
            segment.first_seq, segment.last_seq, segment.records, segment.bytes
        );
    }
    println!("snapshots:    {:?}", stats.snapshot_seqs);
    println!("by kind:");
    for (kind, count) in &stats.by_kind {
        println!("  {kind:<28} {count}");
    }
    Ok(ExitCode::SUCCESS)
}

fn repair(dir: &JournalDirArg, accept_loss: bool) -> anyhow::Result<ExitCode> {
    check_holds_journal(&dir.journal_dir)?;
    let config = pool_journal::JournalConfig::new(&dir.journal_dir);
    let report = pool_journal::repair_dir::<PoolSchema>(config, accept_loss)
        .with_context(|| format!("cannot repair the journal at {}", dir.journal_dir.display()))?;
    if report.nothing_to_do {
        println!(
            "{}: nothing to repair (every check passes); nothing was changed",
            dir.journal_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("found: {problem}");
    }
    for (from, to) in &report.lost {
        println!("lost: seqs {from}..={to} (recorded as a JournalLossAccepted event at seq {to})");
    }
    println!(
        "repaired {}: {} record(s) kept, last seq {}",
        dir.journal_dir.display(),
        report.kept_records,
        report.last_seq
    );
    if let Some(moved) = &report.moved_to {
        println!("the replaced files are in {}", moved.display());
    }
    if !report.lost.is_empty() {
        println!(
            "the next start of the daemon reconciles the engines it finds running (pid and \
             handoff files) with what the journal still knows"
        );
    }
    Ok(ExitCode::SUCCESS)
}
