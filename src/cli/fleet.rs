//! `pool-managerd cluster status`: every node's pools as one table, read from the NATS
//! key-value buckets the daemons keep (`[cluster]`), from any machine that reaches NATS.
//! A node whose heartbeat key expired (or is older than its life) is shown `DOWN` with the
//! pools it last reported; `--watch` prints the table again whenever it changes.
//!
//! Owns: the command's arguments and printout. Never: writes to NATS, or contacts a daemon.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use serde_json::json;

use super::nats::AccessArgs;
use crate::clock::{Clock as _, SystemClock};
use crate::cluster::fleet::{Fleet, FleetReader};
use crate::config::{DEFAULT_CLUSTER_NODES_BUCKET, DEFAULT_CLUSTER_REGISTRY_BUCKET};
use crate::table::{fleet_table, FleetRow};

/// With `--watch`, the buckets are read again at least this often (a node's heartbeat
/// expires without a change to watch) and at most once per change.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// `cluster status` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetStatusArgs {
    /// The NATS server(s), `nats://HOST:PORT` (several comma-separated).
    #[arg(long, value_name = "URL")]
    pub nats: String,
    #[command(flatten)]
    pub access: AccessArgs,
    /// The registry's bucket (`[cluster] registry_bucket`).
    #[arg(long, default_value = DEFAULT_CLUSTER_REGISTRY_BUCKET, value_name = "NAME")]
    pub registry_bucket: String,
    /// The heartbeats' bucket (`[cluster] nodes_bucket`).
    #[arg(long, default_value = DEFAULT_CLUSTER_NODES_BUCKET, value_name = "NAME")]
    pub nodes_bucket: String,
    /// Print JSON (`{"nodes": [...], "pools": [...]}`) instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Print the table again whenever it changes (Ctrl-C to stop).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after printing this many tables.
    #[arg(long, value_name = "N", requires = "watch")]
    pub max_tables: Option<u64>,
}

/// Runs `cluster status`.
pub fn run(args: FleetStatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(status(args))
}

async fn status(args: FleetStatusArgs) -> anyhow::Result<ExitCode> {
    let reader = FleetReader::open(
        &args.nats,
        &args.access.access(),
        &args.registry_bucket,
        &args.nodes_bucket,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let fleet = reader.read().await.map_err(anyhow::Error::msg)?;
    let now_ms = SystemClock.now_ms();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&fleet_json(&fleet, now_ms))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown = render(&fleet, now_ms);
    print!("{shown}");
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let mut tables = 1;
    let mut changes = reader.changes().await.map_err(anyhow::Error::msg)?;
    while args.max_tables.is_none_or(|max| tables < max) {
        // A change, or the tick that notices an expired heartbeat.
        if let Ok(None) = tokio::time::timeout(WATCH_EVERY, changes.next()).await {
            bail!("the watch of the buckets ended (the server went away?)");
        }
        let fleet = reader.read().await.map_err(anyhow::Error::msg)?;
        let now_ms = SystemClock.now_ms();
        let table = render(&fleet, now_ms);
        if table != shown {
            println!("\n{}", crate::table::format_ts_ms(now_ms));
            print!("{table}");
            shown = table;
            tables += 1;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The table: each node's pools, a node without pools on a row of its own.
fn render(fleet: &Fleet, now_ms: u64) -> String {
    let mut rows = Vec::new();
    for node in fleet.node_ids() {
        let up = fleet.is_up(&node, now_ms);
        let pools: Vec<_> = fleet.pools.iter().filter(|e| e.node == node).collect();
        if pools.is_empty() {
            rows.push((node.clone(), up, None));
        }
        rows.extend(
            pools
                .into_iter()
                .map(|e| (node.clone(), up, Some(&e.status))),
        );
    }
    let rows: Vec<FleetRow<'_>> = rows
        .iter()
        .map(|(node, up, pool)| FleetRow {
            node,
            up: *up,
            pool: *pool,
        })
        .collect();
    fleet_table(&rows)
}

/// The JSON form: each node with its state and heartbeat, each pool with its node and seq.
fn fleet_json(fleet: &Fleet, now_ms: u64) -> serde_json::Value {
    let nodes: Vec<_> = fleet
        .node_ids()
        .into_iter()
        .map(|node| {
            let seen = fleet.nodes.get(&node);
            json!({
                "node": node,
                "up": fleet.is_up(&node, now_ms),
                "heartbeat": seen.map(|s| &s.beat),
                "heartbeat_age_ms": seen.map(|s| now_ms.saturating_sub(s.at_ms)),
            })
        })
        .collect();
    json!({ "nodes": nodes, "pools": fleet.pools })
}
