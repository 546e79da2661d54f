//! `pool-managerd replay`: the registry as it was after a given event or time, rebuilt from a
//! journal directory, or (`--nats`) from one node's events in the NATS stream the daemons
//! publish to: the same fold, the same printout.

use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context as _};
use pool_core::{PoolStatus, State};

use super::cluster::block_on;
use super::nats::AccessArgs;
use super::{open_existing, JournalDirArg};
use crate::cluster::read::Source;
use crate::config::DEFAULT_CLUSTER_STREAM;
use crate::projection::{apply_in_place, replay, ReplayLimit};
use crate::table::{format_ts_ms, registry_table};

/// Arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    dir: JournalDirArg,
    /// Rebuild from this NATS server's stream (`nats://HOST:PORT`) instead of a journal
    /// directory: the events node --node published.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "journal_dir",
        requires = "node"
    )]
    nats: Option<String>,
    /// With --nats: the node whose registry to rebuild (its `[cluster] node_id`).
    #[arg(long, value_name = "ID", requires = "nats")]
    node: Option<String>,
    /// With --nats: the JetStream stream the daemons publish to (`[cluster] stream`).
    #[arg(long, default_value = DEFAULT_CLUSTER_STREAM, value_name = "NAME")]
    stream: String,
    #[command(flatten)]
    access: AccessArgs,
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

impl ReplayArgs {
    /// Whether it rebuilds from NATS (`--nats`).
    pub fn reads_nats(&self) -> bool {
        self.nats.is_some()
    }
}

/// A registry rebuilt, and what it was rebuilt from.
struct Rebuilt {
    state: State,
    as_of_ts_ms: Option<u64>,
    /// The last seq of the history it was rebuilt from.
    last_seq: u64,
    /// That history, for the text printout ("journal", "node n1 on the stream S").
    history: String,
}

pub(super) fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let limit = ReplayLimit {
        until_seq: args.until_seq,
        until_ts_ms: args
            .until
            .as_deref()
            .map(|text| parse_time_ms("--until", text))
            .transpose()?,
    };
    let rebuilt = match (&args.nats, &args.node) {
        (Some(url), Some(node)) => block_on(from_stream(&args, url, node, limit))?,
        _ => from_journal(&args, limit)?,
    };
    print(&args, rebuilt)
}

fn from_journal(args: &ReplayArgs, limit: ReplayLimit) -> anyhow::Result<Rebuilt> {
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
    let replayed = replay(&journal, limit)?;
    journal.close()?;
    Ok(Rebuilt {
        state: replayed.state,
        as_of_ts_ms: replayed.as_of_ts_ms,
        last_seq,
        history: "journal".to_string(),
    })
}

/// The fold of `projection::replay` over the node's published events, from the empty
/// registry (the stream holds no snapshot). The whole history is read, so that a gap after
/// the limit is found too and the last seq is known.
async fn from_stream(
    args: &ReplayArgs,
    url: &str,
    node: &str,
    limit: ReplayLimit,
) -> anyhow::Result<Rebuilt> {
    let source = Source::connect(url, &args.stream, &args.access.access()).await?;
    let mut reader = source.node(node).await?;
    let mut state = State::default();
    let (mut as_of_ts_ms, mut last_seq, mut folding) = (None, 0, true);
    while let Some(batch) = reader.next_batch().await? {
        for published in batch {
            let envelope = &published.envelope;
            last_seq = envelope.seq;
            folding = folding
                && limit.until_seq.is_none_or(|seq| envelope.seq <= seq)
                && limit.until_ts_ms.is_none_or(|ts| envelope.ts_ms <= ts);
            if folding {
                apply_in_place(&mut state, envelope);
                as_of_ts_ms = Some(envelope.ts_ms);
            }
        }
    }
    reader.close().await;
    let stream = &args.stream;
    if last_seq == 0 {
        bail!(
            "the stream {stream} at {url} holds no event of node {node}; run pool-managerd \
             cluster events --nats {url} to see which nodes published there"
        );
    }
    if let Some(seq) = args.until_seq.filter(|seq| *seq > last_seq) {
        bail!(
            "--until-seq {seq} is past node {node}'s last seq on the stream {stream} ({last_seq}); \
             pass a seq up to {last_seq}, or leave --until-seq out for the registry as it is now"
        );
    }
    Ok(Rebuilt {
        state,
        as_of_ts_ms,
        last_seq,
        history: format!("node {node} on the stream {stream}"),
    })
}

fn print(args: &ReplayArgs, rebuilt: Rebuilt) -> anyhow::Result<ExitCode> {
    let mut statuses: Vec<PoolStatus> = rebuilt.state.statuses();
    if let Some(pool) = &args.pool {
        statuses.retain(|status| status.pool_id.as_str() == pool);
        if statuses.is_empty() {
            bail!(
                "pool '{pool}' is not in the registry as of seq {} (run without --pool to list \
                 the pools)",
                rebuilt.state.last_seq()
            );
        }
    }
    let as_of_seq = rebuilt.state.last_seq();
    if args.json {
        let out = serde_json::json!({
            "as_of_seq": as_of_seq,
            "as_of_ts_ms": rebuilt.as_of_ts_ms,
            "pools": statuses,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let when = rebuilt
            .as_of_ts_ms
            .map(|ts| format!(" ({})", format_ts_ms(ts)))
            .unwrap_or_default();
        println!(
            "registry as of seq {as_of_seq}{when}, {} last seq {}",
            rebuilt.history, rebuilt.last_seq
        );
        print!("{}", registry_table(&statuses));
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses the RFC 3339 time of `flag` ("2026-11-23T10:00:00Z", or without the zone, taken as
/// UTC).
pub(super) fn parse_time_ms(flag: &str, text: &str) -> anyhow::Result<u64> {
    let time = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!(
            "{flag} '{text}' is not a time; give RFC 3339 in UTC, e.g. 2026-11-23T10:00:00Z \
             (or 2026-11-23T10:00:00.250Z)"
        )
    })?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .with_context(|| format!("{flag} '{text}' is before 1970"))?;
    u64::try_from(since_epoch.as_millis())
        .with_context(|| format!("{flag} is too far in the future"))
}
