//! `pool-managerd gpus`: the GPU inventory as the daemon would see it, read once, as a table
//! (or `--json`); with no GPU, the reason. Exit 0 either way: "no GPU" is an answer, not an
//! error.
//!
//! With `--addr`, the running daemon there is asked which GPUs it holds quarantined (`GET
//! /v2/gpus`): the table's QUARANTINED column says yes or no (without it, `-`: the quarantine
//! is the daemon's, recorded in its journal).
//!
//! Owns: the command's arguments and printout.
//! Never: touches a journal or changes anything (`GET /v2/gpus` shows the daemon's own view,
//! with each process's pool).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::config::GpuSettings;
use crate::gpu;
use crate::table;

/// `gpus` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GpusArgs {
    /// Testing aid: read the GPUs from this JSON file instead of NVML.
    #[arg(long, value_name = "FILE")]
    pub gpu_fixture: Option<PathBuf>,
    /// Load the NVIDIA management library from this file instead of the `libnvidia-ml.so.1`
    /// the dynamic loader finds (as `[gpu] nvml_library` does for the daemon).
    #[arg(long, value_name = "FILE")]
    pub nvml_library: Option<PathBuf>,
    /// Print JSON: `{"source", "available", "reason"?, "gpus": [Gpu], "quarantined"}` (the
    /// `gpus` as in `GET /v2/gpus`; `quarantined`: the UUIDs, with `--addr`, else null).
    #[arg(long)]
    pub json: bool,
    /// Ask the daemon at this address (`host:port` or an `http://` URL) which GPUs are
    /// quarantined (`LLORCH_API_TOKEN` is sent when set).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
}

/// How long the daemon may take to answer.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The UUIDs of the GPUs a `GET /v2/gpus` answer marks `quarantined`.
pub(crate) fn quarantined_uuids(answer: &Value) -> BTreeSet<String> {
    answer
        .as_array()
        .into_iter()
        .flatten()
        .filter(|gpu| gpu["quarantined"].as_bool() == Some(true))
        .filter_map(|gpu| gpu["uuid"].as_str().map(str::to_string))
        .collect()
}

/// The GPUs the daemon at `addr` holds quarantined.
fn ask_daemon(addr: &str) -> anyhow::Result<BTreeSet<String>> {
    let addr = addr.trim().trim_end_matches('/');
    let base = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let answer: Value = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("{base}/v2/gpus"))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        if let Some(token) = std::env::var("LLORCH_API_TOKEN").ok().filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach pool-managerd at {addr}: is it running there? (--addr)")
        })?;
        let status = response.status();
        if !status.is_success() {
            bail!("pool-managerd at {addr} answered {status} to GET /v2/gpus (a 401 wants LLORCH_API_TOKEN)");
        }
        let body = response
            .bytes()
            .await
            .with_context(|| format!("pool-managerd at {addr} did not finish its answer"))?;
        serde_json::from_slice(&body)
            .with_context(|| format!("pool-managerd at {addr} sent GPUs that are not JSON"))
    })?;
    Ok(quarantined_uuids(&answer))
}

/// Reads the inventory once and prints it.
pub fn run(args: GpusArgs) -> anyhow::Result<ExitCode> {
    let settings = GpuSettings {
        fixture: args.gpu_fixture.unwrap_or_default(),
        nvml_library: args.nvml_library.unwrap_or_default(),
        ..GpuSettings::default()
    };
    let inventory = gpu::open_inventory(&settings);
    let source = inventory.source();
    let reading = inventory.observe();
    let quarantined = args.addr.as_deref().map(ask_daemon).transpose()?;
    if args.json {
        let body = match &reading {
            Ok(snapshot) => json!({
                "source": source,
                "available": true,
                "gpus": snapshot.gpus,
                "quarantined": quarantined,
            }),
            Err(no_gpu) => json!({
                "source": source,
                "available": false,
                "reason": no_gpu.reason,
                "gpus": [],
            }),
        };
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &reading {
        Ok(snapshot) => {
            println!("GPUs from {source}:");
            print!(
                "{}",
                table::gpus_table(&snapshot.gpus, quarantined.as_ref())
            );
        }
        Err(no_gpu) => {
            println!("no usable GPU ({source}): {}", no_gpu.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}
