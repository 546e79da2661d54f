//! `pool-managerd status`: a client of a running daemon. Prints its pools as a table (`GET
//! /v2/pools`, with a `WHY` column for each pool that is not ready: its explanation's one
//! line, `GET /v2/pools/{id}/explain`), or the raw list with `--json`; `--watch` then follows
//! the live event stream (`GET /v2/events`): one line per event, and the table again once the
//! events settle.
//!
//! Owns: the command's arguments, the HTTP calls, the printout and its error messages (an
//! unreachable daemon names the address and how to start one; a 401 names
//! `LLORCH_API_TOKEN`).
//! Never: opens a journal or changes anything: it only reads what the daemon serves.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pool_core::{Event, PoolStatus};
use pool_journal::Envelope;
use serde_json::Value;

use super::client::{Client, DaemonAddr, SseFrames, SseMessage};
use crate::table::{registry_table_why, timeline_line};

/// The longest line printed per event with `--watch` (longer ones are cut).
pub const WATCH_LINE_CHARS_MAX: usize = 200;
/// With `--watch`, the table is printed again once no event came for this long after a
/// change...
const WATCH_SETTLE_MS: u64 = 1_000;
/// ... and at most this often.
const WATCH_TABLE_EVERY_MS: u64 = 5_000;

/// `status` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub daemon: DaemonAddr,
    /// Print the pools as JSON (`GET /v2/pools`, unchanged) instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Then follow the daemon's events: one line each, and the table again once they settle
    /// (at most every 5 s). Reconnects, with no gap, when the stream ends; Ctrl-C to stop.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many events.
    #[arg(long, value_name = "N", requires = "watch")]
    pub max_events: Option<u64>,
}

/// Runs `status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(status(args))
}

/// What `status` reads of a daemon, on top of the shared [`Client`].
impl Client {
    async fn pools(&self) -> anyhow::Result<(Vec<PoolStatus>, Value)> {
        let raw = self.get_json("/v2/pools").await?;
        let statuses: Vec<PoolStatus> = serde_json::from_value(raw.clone()).with_context(|| {
            format!(
                "pool-managerd at {} sent pools this client does not understand (another \
                 version?); --json prints them as they are",
                self.addr
            )
        })?;
        Ok((statuses, raw))
    }

    /// One line of the explanation of each pool that is not ready (`GET
    /// /v2/pools/{id}/explain`'s `why`); a pool whose explanation cannot be had (a daemon
    /// without the route, a pool removed meanwhile) has none.
    async fn whys(&self, statuses: &[PoolStatus]) -> std::collections::BTreeMap<String, String> {
        let mut whys = std::collections::BTreeMap::new();
        for status in statuses.iter().filter(|s| !s.ready) {
            let id = status.pool_id.as_str();
            if let Ok(explanation) = self.get_json(&format!("/v2/pools/{id}/explain")).await {
                if let Some(why) = explanation["why"].as_str() {
                    whys.insert(id.to_string(), why.to_string());
                }
            }
        }
        whys
    }

    async fn journal_seq(&self) -> anyhow::Result<u64> {
        let health = self.get_json("/health").await?;
        Ok(health["journal_seq"].as_u64().unwrap_or(0))
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.daemon)?;
    if !args.watch {
        let (statuses, raw) = client.pools().await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&raw)?)?;
        } else {
            let whys = client.whys(&statuses).await;
            write!(
                out,
                "{}",
                registry_table_why(&statuses, |id| whys.get(id).cloned())
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    watch(&client, args.max_events).await
}

/// The table, then the events as they come, until `max_events` (or forever).
async fn watch(client: &Client, max_events: Option<u64>) -> anyhow::Result<ExitCode> {
    // The seq first, then the table: an event between the two is printed (again), never lost.
    let last_id = client.journal_seq().await?;
    print_table(client, last_id).await?;
    let mut watch = Watch {
        client,
        max_events,
        last_id,
        seen: 0,
        dirty: false,
        last_event: Instant::now(),
        last_table: Instant::now(),
    };
    loop {
        let request = client
            .get("/v2/events")
            .header("accept", "text/event-stream")
            .header("last-event-id", watch.last_id.to_string());
        let response = match client.send(request).await {
            Ok(response) => response,
            Err(e) if watch.seen > 0 || watch.last_id > 0 => {
                // The daemon went away after we saw it: wait for it to come back.
                eprintln!("{e:#}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let ended = match watch.follow(response).await? {
            Followed::Done => return Ok(ExitCode::SUCCESS),
            Followed::Ended(why) => why,
        };
        eprintln!(
            "{ended}; reconnecting to {} after event {}",
            client.addr, watch.last_id
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where `status --watch` is: the last event printed, how many, and when the table was last
/// shown (it is shown again once the stream is quiet and something changed).
struct Watch<'a> {
    client: &'a Client,
    max_events: Option<u64>,
    last_id: u64,
    seen: u64,
    dirty: bool,
    last_event: Instant,
    last_table: Instant,
}

/// How following one stream ended.
enum Followed {
    /// `max_events` were printed.
    Done,
    /// The stream ended or broke (why): reconnect after the last event.
    Ended(String),
}

impl Watch<'_> {
    /// Prints the stream's events until it ends, or `max_events` were printed.
    async fn follow(&mut self, mut response: reqwest::Response) -> anyhow::Result<Followed> {
        let mut frames = SseFrames::default();
        loop {
            let settle = Duration::from_millis(WATCH_SETTLE_MS);
            let chunk = match tokio::time::timeout(settle, response.chunk()).await {
                Err(_) => {
                    self.quiet().await?;
                    continue;
                }
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok(Followed::Ended("the stream ended".to_string())),
                Ok(Err(e)) => return Ok(Followed::Ended(format!("the stream broke: {e}"))),
            };
            for message in frames.feed(&chunk)? {
                if self.message(message).await? {
                    return Ok(Followed::Done);
                }
            }
        }
    }

    /// The stream is quiet: the table again if something changed (at most every
    /// `WATCH_TABLE_EVERY_MS`).
    async fn quiet(&mut self) -> anyhow::Result<()> {
        let settled = self.last_event.elapsed() >= Duration::from_millis(WATCH_SETTLE_MS);
        let due = self.last_table.elapsed() >= Duration::from_millis(WATCH_TABLE_EVERY_MS);
        if self.dirty && settled && due {
            print_table(self.client, self.last_id).await?;
            self.dirty = false;
            self.last_table = Instant::now();
        }
        Ok(())
    }

    /// Prints one message; `true` once `max_events` events were printed (the table last).
    async fn message(&mut self, message: SseMessage) -> anyhow::Result<bool> {
        if let "dropped" | "shutdown" | "error" = message.event.as_str() {
            let data: Value = serde_json::from_str(&message.data).unwrap_or_default();
            eprintln!(
                "[{}] {}",
                message.event,
                data["reason"].as_str().unwrap_or(&message.data)
            );
            return Ok(false);
        }
        if let Some(id) = message.id {
            self.last_id = id;
        }
        println!("{}", event_line(&message.data));
        self.seen += 1;
        self.dirty = true;
        self.last_event = Instant::now();
        if self.max_events.is_some_and(|max| self.seen >= max) {
            print_table(self.client, self.last_id).await?;
            return Ok(true);
        }
        Ok(false)
    }
}

async fn print_table(client: &Client, seq: u64) -> anyhow::Result<()> {
    let (statuses, _) = client.pools().await?;
    println!("pools at {} (journal seq {seq}):", client.addr);
    let whys = client.whys(&statuses).await;
    print!(
        "{}",
        registry_table_why(&statuses, |id| whys.get(id).cloned())
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// One event of the stream as a timeline line (as `journal show` prints it), cut to
/// [`WATCH_LINE_CHARS_MAX`].
fn event_line(data: &str) -> String {
    let line = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|value| {
            let event: Event = pool_journal::event_from_json(value["event"].clone()).ok()?;
            Some(timeline_line(&Envelope {
                seq: value["seq"].as_u64()?,
                ts_ms: value["ts_ms"].as_u64().unwrap_or(0),
                pool_id: value["pool_id"].as_str().map(str::to_string),
                cause: value["cause"].as_u64(),
                event,
            }))
        })
        // An event this client does not know (a newer daemon): as it came.
        .unwrap_or_else(|| data.to_string());
    if line.chars().count() > WATCH_LINE_CHARS_MAX {
        let cut: String = line.chars().take(WATCH_LINE_CHARS_MAX - 1).collect();
        format!("{cut}…")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_lines_are_cut() {
        let data = serde_json::json!({
            "seq": 3, "ts_ms": 0, "pool_id": "p", "cause": null,
            "event": {"kind": "PreloadRejected", "code": "X", "reason": "y".repeat(500)},
        });
        let line = event_line(&data.to_string());
        assert!(line.chars().count() <= WATCH_LINE_CHARS_MAX, "{line}");
    }
}
