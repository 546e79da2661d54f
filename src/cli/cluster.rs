//! `pool-managerd cluster ...`: the fleet as NATS holds it, read from any machine that reaches
//! the server. `cluster events` prints the merged history of every node's journal from the
//! JetStream stream the daemons publish to (`[cluster] nats_url`), ordered by event time.
//!
//! Owns: the commands' arguments (and [`NatsArgs`], shared with `journal restore`), the merge
//! by time (bounded by `--limit`: the earliest events are kept, never the whole stream in
//! memory) and the printout. Never: writes to NATS or to a journal, or contacts a daemon.

use std::collections::BinaryHeap;
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::journal::{export_line, SHOW_LIMIT_DEFAULT};
use super::nats::AccessArgs;
use super::replay::parse_time_ms;
use crate::cluster::read::{Published, Source};
use crate::config::DEFAULT_CLUSTER_STREAM;
use crate::table::{format_ts_ms, timeline_line};

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print every node's pools as one table, from the NATS key-value buckets the daemons keep
    /// (a node that stopped heartbeating is shown DOWN); --watch prints it again on change.
    Status(super::fleet::FleetStatusArgs),
    /// Print the merged history of every node's journal from the NATS stream, ordered by event
    /// time (ties by node, then seq), each event with its node and seq.
    Events(EventsArgs),
}

/// Where the published journals are: the server, its access, the stream.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// The NATS server(s), `nats://HOST:PORT` (several comma-separated).
    #[arg(long, value_name = "URL")]
    pub nats: String,
    #[command(flatten)]
    pub access: AccessArgs,
    /// The JetStream stream the daemons publish to (`[cluster] stream`).
    #[arg(long, default_value = DEFAULT_CLUSTER_STREAM, value_name = "NAME")]
    pub stream: String,
}

impl NatsArgs {
    /// Connects and checks that the stream exists.
    pub async fn source(&self) -> anyhow::Result<Source> {
        Ok(Source::connect(&self.nats, &self.stream, &self.access.access()).await?)
    }
}

/// `cluster events` arguments.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub source: NatsArgs,
    /// Only this node's events.
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    /// Only this pool's events (node events are left out).
    #[arg(long, value_name = "ID")]
    pub pool: Option<String>,
    /// Only events at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Print at most this many events (the earliest).
    #[arg(long, default_value_t = SHOW_LIMIT_DEFAULT, value_name = "N")]
    pub limit: usize,
    /// One JSON object per line: the envelope (the export format) with "node" first.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `cluster` subcommand.
pub fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Status(args) => super::fleet::run(args),
        ClusterCommand::Events(args) => block_on(events(args)),
    }
}

/// Runs `future` on a runtime of the command's own.
pub(super) fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// An event in the merge, ordered by (time, node, seq).
struct Timed(Published);

impl Timed {
    fn key(&self) -> (u64, &str, u64) {
        (self.0.envelope.ts_ms, &self.0.node, self.0.envelope.seq)
    }
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Timed {}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The earliest `limit + 1` events (one more than asked, to tell when the limit cut the
/// history short), as a max-heap: never more in memory.
struct Earliest {
    heap: BinaryHeap<Timed>,
    keep: usize,
}

impl Earliest {
    fn new(limit: usize) -> Earliest {
        let keep = limit.saturating_add(1);
        Earliest {
            heap: BinaryHeap::with_capacity(keep.min(4_096)),
            keep,
        }
    }

    fn offer(&mut self, event: Published) {
        self.heap.push(Timed(event));
        if self.heap.len() > self.keep {
            self.heap.pop();
        }
    }

    /// Oldest first.
    fn into_sorted(self) -> Vec<Published> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|t| t.0)
            .collect()
    }
}

async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let since_ms = args
        .since
        .as_deref()
        .map(|text| parse_time_ms("--since", text))
        .transpose()?;
    let source = args.source.source().await?;
    let mut reader = source
        .events(args.node.as_deref(), args.pool.as_deref())
        .await?;
    let mut earliest = Earliest::new(args.limit);
    while let Some(batch) = reader.next_batch().await? {
        for event in batch {
            if since_ms.is_none_or(|since| event.envelope.ts_ms >= since) {
                earliest.offer(event);
            }
        }
    }
    let duplicates = reader.duplicates();
    reader.close().await;
    let mut events = earliest.into_sorted();
    let next = (events.len() > args.limit).then(|| events[args.limit].envelope.ts_ms);
    events.truncate(args.limit);
    print_events(&events, args.json)?;
    if duplicates > 0 {
        eprintln!(
            "({duplicates} message(s) repeated a node's seq already read (published again after \
             the server's duplicate window) and were skipped)"
        );
    }
    if let Some(next) = next {
        eprintln!(
            "(stopped after {} event(s); the next is at {}: pass --since {} for the rest (events \
             of that very time print again), or a larger --limit)",
            args.limit,
            format_ts_ms(next),
            format_ts_ms(next)
        );
    } else if events.is_empty() {
        eprintln!(
            "(no events in the stream {} at {} match)",
            source.stream_name(),
            source.url()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_events(events: &[Published], json: bool) -> anyhow::Result<()> {
    let width = events.iter().map(|e| e.node.len()).max().unwrap_or(0);
    let mut out = BufWriter::new(io::stdout().lock());
    for event in events {
        if json {
            writeln!(out, "{}", json_line(event)?)?;
        } else {
            let line = timeline_line(&event.envelope);
            writeln!(out, "{:<width$}  {line}", event.node)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The export line of the envelope with `"node"` first.
fn json_line(event: &Published) -> anyhow::Result<String> {
    let line = export_line(&event.envelope)?;
    let fields = line
        .strip_prefix('{')
        .context("an export line is a JSON object")?;
    Ok(format!(
        "{{\"node\":{},{fields}",
        serde_json::to_string(&event.node)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_core::Event;

    fn event(node: &str, seq: u64, ts_ms: u64) -> Published {
        Published {
            node: node.to_string(),
            stream_seq: seq,
            envelope: crate::schema::PoolEnvelope {
                seq,
                ts_ms,
                pool_id: None,
                cause: None,
                event: Event::DaemonStopped {
                    reason: "r".to_string(),
                },
            },
        }
    }

    #[test]
    fn the_earliest_are_kept_by_time_then_node_then_seq() {
        let mut earliest = Earliest::new(3);
        for (node, seq, ts) in [
            ("n2", 1, 10),
            ("n1", 5, 30),
            ("n1", 4, 10),
            ("n2", 2, 5),
            ("n1", 6, 40),
        ] {
            earliest.offer(event(node, seq, ts));
        }
        let kept: Vec<_> = earliest
            .into_sorted()
            .into_iter()
            .map(|e| (e.node, e.envelope.seq))
            .collect();
        // One more than the limit.
        let want = [("n2", 2), ("n1", 4), ("n2", 1), ("n1", 5)];
        let want: Vec<_> = want.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn a_json_line_is_the_export_line_with_its_node_first() {
        let line = json_line(&event("n.1", 3, 9)).unwrap();
        assert!(
            line.starts_with(r#"{"node":"n.1","seq":3,"ts_ms":9,"#),
            "{line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"]["kind"], "DaemonStopped");
    }
}
