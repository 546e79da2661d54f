//! `pool-managerd logs ID [--tail N] [-f|--follow] [--addr ADDR]`: the last lines of a pool's
//! current engine log from a running daemon (`GET /v2/pools/{id}/logs`), and with `--follow`
//! each new line as the engine writes it (the route's event stream). Lines the daemon wrote
//! into the log (start headers, rotation marks) are printed as they are: they start with
//! `==== pool-managerd:`.
//!
//! Owns: the command's arguments, the printout and its error messages (naming the pool and
//! the daemon's address).
//! Never: reads the log files itself (the daemon knows which lane's log is current).

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::client::{Client, DaemonAddr, SseFrames};

/// Arguments of `logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The pool.
    #[arg(value_name = "ID")]
    pub pool_id: String,
    /// How many of the last lines (the daemon answers at most 10000).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub tail: usize,
    /// Then print each new line as the engine writes it, until interrupted or the daemon
    /// stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub daemon: DaemonAddr,
}

/// Runs `logs`.
pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = Client::new(&args.daemon)?;
    let what = || {
        format!(
            "cannot read the log of pool {} from pool-managerd at {}",
            args.pool_id, args.daemon.addr
        )
    };
    if args.follow {
        runtime.block_on(follow(&client, &args)).with_context(what)
    } else {
        runtime.block_on(tail(&client, &args)).with_context(what)
    }
}

async fn tail(client: &Client, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/v2/pools/{}/logs?tail={}", args.pool_id, args.tail);
    let body = client.get_json(&path).await?;
    let Some(lines) = body["lines"].as_array() else {
        bail!("the answer has no lines (another version?): {body}");
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{}", line["text"].as_str().unwrap_or_default())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn follow(client: &Client, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/v2/pools/{}/logs?tail={}&follow=true",
        args.pool_id, args.tail
    );
    let request = client.get(&path).header("accept", "text/event-stream");
    let mut response = client.send(request).await?;
    let mut frames = SseFrames::default();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => bail!("the stream ended without a reason"),
            Err(e) => bail!("the stream broke: {e}"),
        };
        for message in frames.feed(&chunk)? {
            let data: Value = serde_json::from_str(&message.data).unwrap_or_default();
            if message.event == "line" {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", data["text"].as_str().unwrap_or_default())?;
                out.flush()?;
                continue;
            }
            eprintln!(
                "[{}] {}",
                message.event,
                data["reason"].as_str().unwrap_or(&message.data)
            );
            let code = if message.event == "shutdown" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            return Ok(code);
        }
    }
}
