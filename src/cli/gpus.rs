//! `pool-managerd gpus`: the GPU inventory as the daemon would see it, read once, as a table
//! (or `--json`); with no GPU, the reason. Exit 0 either way: "no GPU" is an answer, not an
//! error.
//!
//! Owns: the command's arguments and printout.
//! Never: talks to a running daemon or touches a journal (`GET /v2/gpus` shows the daemon's
//! own view, with each process's pool).

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::config::GpuSettings;
use crate::gpu;
use crate::table;

/// `gpus` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GpusArgs {
    /// Testing aid: read the GPUs from this JSON file instead of NVML.
    #[arg(long, value_name = "FILE")]
    pub gpu_fixture: Option<PathBuf>,
    /// Print JSON: `{"source", "available", "reason"?, "gpus": [Gpu]}` (the `gpus` as in
    /// `GET /v2/gpus`).
    #[arg(long)]
    pub json: bool,
}

/// Reads the inventory once and prints it.
pub fn run(args: GpusArgs) -> anyhow::Result<ExitCode> {
    let settings = GpuSettings {
        fixture: args.gpu_fixture.unwrap_or_default(),
        ..GpuSettings::default()
    };
    let inventory = gpu::open_inventory(&settings);
    let source = inventory.source();
    let reading = inventory.observe();
    if args.json {
        let body = match &reading {
            Ok(snapshot) => json!({
                "source": source,
                "available": true,
                "gpus": snapshot.gpus,
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
            print!("{}", table::gpus_table(&snapshot.gpus));
        }
        Err(no_gpu) => {
            println!("no usable GPU ({source}): {}", no_gpu.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}
