//! `pool-managerd replay`: the registry as it was after a given event or time.

use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context as _};
use pool_core::PoolStatus;

use super::{open_existing, JournalDirArg};
use crate::projection::{replay, ReplayLimit};
use crate::table::{format_ts_ms, registry_table};

/// Arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    dir: JournalDirArg,
    /// Stop after the event with this seq.
    #[arg(long, value_name = "N")]
    until_seq: Option<u64>,
    /// Stop after the last event at or before this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Show only this pool.
    #[arg(long, value_name = "ID")]
    pool: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let until_ts_ms = args.until.as_deref().map(parse_time_ms).transpose()?;
    let journal = open_existing(&args.dir.journal_dir)?;
    let last_seq = journal.last_seq();
    if let Some(seq) = args.until_seq {
        if seq > last_seq {
            bail!(
                "--until-seq {seq} is past the end of the journal at {} (last seq {last_seq}); \
                 pass a seq up to {last_seq}, or leave --until-seq out for the registry as it is \
                 now",
                args.dir.journal_dir.display()
            );
        }
    }
    let limit = ReplayLimit {
        until_seq: args.until_seq,
        until_ts_ms,
    };
    let replayed = replay(&journal, limit)?;
    journal.close()?;
    let mut statuses: Vec<PoolStatus> = replayed.state.statuses();
    if let Some(pool) = &args.pool {
        statuses.retain(|status| status.pool_id.as_str() == pool);
        if statuses.is_empty() {
            bail!(
                "pool '{pool}' is not in the registry as of seq {} (run without --pool to list \
                 the pools)",
                replayed.state.last_seq()
            );
        }
    }
    let as_of_seq = replayed.state.last_seq();
    if args.json {
        let out = serde_json::json!({
            "as_of_seq": as_of_seq,
            "as_of_ts_ms": replayed.as_of_ts_ms,
            "pools": statuses,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let when = replayed
            .as_of_ts_ms
            .map(|ts| format!(" ({})", format_ts_ms(ts)))
            .unwrap_or_default();
        println!("registry as of seq {as_of_seq}{when}, journal last seq {last_seq}");
        print!("{}", registry_table(&statuses));
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses an RFC 3339 time ("2026-11-23T10:00:00Z", or without the zone, taken as UTC).
fn parse_time_ms(text: &str) -> anyhow::Result<u64> {
    let time = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!(
            "--until '{text}' is not a time; give RFC 3339 in UTC, e.g. 2026-11-23T10:00:00Z \
             (or 2026-11-23T10:00:00.250Z)"
        )
    })?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .with_context(|| format!("--until '{text}' is before 1970"))?;
    u64::try_from(since_epoch.as_millis()).context("--until is too far in the future")
}
