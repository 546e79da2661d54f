//! `pool-managerd explain ID [--at-seq N]`: why a pool is in its phase, since when, the steps
//! that led there (each with its seq and time), what the daemon does next and when, and what an
//! operator can do. Asks a running daemon (`GET /v2/pools/{id}/explain`, `--addr`), or reads a
//! journal directory offline (`--journal-dir`, read-only: it works on a copied journal in a
//! post-mortem); both answer with the core's explanation of the same history.
//!
//! Owns: the command's arguments, the printout (text, or `--json`) and its error messages.
//! Never: changes a journal or a pool.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use pool_core::Explanation;

use super::client::{Client, DaemonAddr};
use super::open_existing;
use crate::projection::{explain_pool, replay, ReplayLimit};

/// Arguments of `explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The pool.
    #[arg(value_name = "ID")]
    pub pool_id: String,
    /// Explain the pool as it was right after this event (default: the last).
    #[arg(long, value_name = "N")]
    pub at_seq: Option<u64>,
    #[command(flatten)]
    pub daemon: DaemonAddr,
    /// Read this journal directory instead of asking a daemon (read-only; a copy works).
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Print the explanation as JSON (the API's answer) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `explain`.
pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let explanation = match &args.journal_dir {
        Some(dir) => offline(&args, dir)?,
        None => online(&args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", pool_core::render_text(&explanation));
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's answer.
fn online(args: &ExplainArgs) -> anyhow::Result<Explanation> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = Client::new(&args.daemon)?;
    let mut path = format!("/v2/pools/{}/explain", args.pool_id);
    if let Some(seq) = args.at_seq {
        path.push_str(&format!("?at_seq={seq}"));
    }
    let body = runtime.block_on(client.get_json(&path))?;
    serde_json::from_value(body).with_context(|| {
        format!(
            "pool-managerd at {} sent an explanation this client does not understand (another \
             version?); --json prints it as it is",
            args.daemon.addr
        )
    })
}

/// The explanation read from a journal directory.
fn offline(args: &ExplainArgs, dir: &std::path::Path) -> anyhow::Result<Explanation> {
    let journal = open_existing(dir)?;
    let last = journal.last_seq();
    let at = args.at_seq.unwrap_or(last);
    if at > last {
        bail!(
            "--at-seq {at} is beyond the last event of the journal at {} (seq {last})",
            dir.display()
        );
    }
    let limit = ReplayLimit {
        until_seq: Some(at),
        until_ts_ms: None,
    };
    let state = replay(&journal, limit)
        .with_context(|| format!("cannot replay the journal at {} to seq {at}", dir.display()))?
        .state;
    let explanation = explain_pool(&journal, &args.pool_id, Some(at), Some(&state.node))
        .with_context(|| {
            format!(
                "cannot read the history of pool {} in the journal at {}",
                args.pool_id,
                dir.display()
            )
        })?;
    match explanation {
        Some(explanation) => Ok(explanation),
        None => bail!(
            "pool {} does not exist at seq {at} in the journal at {} (never preloaded, or \
             removed); `pool-managerd replay --journal-dir {} --until-seq {at}` lists the pools \
             there",
            args.pool_id,
            dir.display(),
            dir.display()
        ),
    }
}
