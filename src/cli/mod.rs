//! The command line (clap): `serve`, `demo`, `gpus`, `journal {show,export,import,verify,stats,
//! repair,restore}`, `replay`, `status` and `logs` (clients of a running daemon) and `explain` (a
//! client, or offline on a journal); `cluster events`,
//! `replay --nats` and `journal restore` read the journals published to NATS.
//!
//! Owns: argument parsing, opening journals for commands, exit codes, logging set-up.
//! Never: changes a journal's events except through `journal import`, `journal repair` and
//! `journal restore` (a new journal only);
//! every other command only reads them. (Opening a journal for normal use runs its recovery,
//! which may quarantine a damaged tail, with a warning, exactly as the daemon's start-up
//! would; `verify` and `repair` open it without recovery.) Errors name the path or the seq
//! and what to do.

mod client;
mod cluster;
mod demo;
mod explain;
mod fleet;
pub(crate) mod gpus;
mod journal;
mod logs;
mod nats;
mod replay;
mod restore;
mod serve;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use pool_journal::JournalConfig;

use crate::schema::PoolJournal;

pub use cluster::ClusterCommand;
pub use demo::DemoArgs;
pub use explain::ExplainArgs;
pub use gpus::GpusArgs;
pub use journal::JournalCommand;
pub use logs::LogsArgs;
pub use replay::ReplayArgs;
pub use serve::{load_config, wait_for_signal, ServeArgs, StopSignals};
pub use status::StatusArgs;

/// pool-managerd: supervises LLM inference engines on a GPU node, with a durable event journal.
#[derive(Debug, Parser)]
#[command(name = "pool-managerd", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: supervise engines and serve the HTTP API.
    Serve(ServeArgs),
    /// Run a self-contained demonstration (no GPU, no configuration needed).
    Demo(DemoArgs),
    /// Print the GPU inventory (NVML, or --gpu-fixture), or why there is no usable GPU.
    Gpus(GpusArgs),
    /// Inspect, check, export, import or repair a journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Print the registry as it was after a given event or time (for post-mortems).
    Replay(ReplayArgs),
    /// Print the pools of a running daemon as a table (or --json); --watch follows its events.
    Status(StatusArgs),
    /// Why a pool is in its phase, what happens next and what to do: from a running daemon
    /// (--addr) or offline from a journal directory (--journal-dir).
    Explain(ExplainArgs),
    /// The last lines of a pool's current engine log from a running daemon; --follow prints
    /// each new one as the engine writes it.
    Logs(LogsArgs),
    /// The fleet from NATS (`[cluster]`): `cluster events`, every node's published history.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The test engine (engine-sim), for the demo and tests: `pool-managerd engine-sim --help`.
    #[command(hide = true, disable_help_flag = true)]
    EngineSim {
        /// engine-sim's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The journal a command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalDirArg {
    /// The journal directory (a sled database).
    #[arg(
        long,
        env = "POOL_MANAGERD_JOURNAL_DIR",
        default_value = ".runtime/journal",
        value_name = "DIR"
    )]
    pub journal_dir: PathBuf,
}

impl Cli {
    /// The log level when `RUST_LOG` is not set: none for the demo (its printout is the point;
    /// its failures and its open breaker are on purpose, and anything unplanned fails the demo
    /// itself), `warn` for the test engine, `error` for `gpus` (its printout says what is
    /// wrong), `info` otherwise.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Demo(_) => "off",
            Command::EngineSim { .. } => "warn",
            Command::Gpus(_) => "error",
            Command::Status(_) | Command::Cluster(_) | Command::Explain(_) | Command::Logs(_) => {
                "warn"
            }
            // The NATS client's connection events are no news to a command.
            Command::Journal(JournalCommand::Restore { .. }) => "info,async_nats=warn",
            Command::Replay(ref args) if args.reads_nats() => "info,async_nats=warn",
            _ => "info",
        }
    }
}

/// Sets up `tracing` on stderr; `RUST_LOG` filters (default `default_level`).
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling `run` twice) is harmless: ignore it.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Journal(command) => journal::run(command),
        Command::Replay(args) => replay::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Gpus(args) => gpus::run(args),
        Command::Status(args) => status::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Cluster(command) => cluster::run(command),
        Command::EngineSim { args } => {
            crate::engine_sim::main(std::iter::once("engine-sim".to_string()).chain(args))
        }
    }
}

/// Opens an existing journal read-only (nothing is written: it works on a read-only or full
/// file system and beside a running daemon). A missing directory, or one that holds no
/// journal, is an error (an empty history is not an answer).
pub(crate) fn open_existing(dir: &Path) -> anyhow::Result<PoolJournal> {
    check_holds_journal(dir)?;
    let (journal, report) = PoolJournal::open_read_only(JournalConfig::new(dir))
        .with_context(|| format!("cannot read the journal at {}", dir.display()))?;
    if report.legacy {
        eprintln!(
            "note: {} is a journal from before segments; the daemon migrates it at its next start",
            dir.display()
        );
    }
    Ok(journal)
}

/// Fails unless `dir` holds a journal.
pub(crate) fn check_holds_journal(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        bail!(
            "no journal at {}: the directory does not exist; pass --journal-dir DIR (or set \
             POOL_MANAGERD_JOURNAL_DIR) to the journal of a pool-managerd",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("no journal at {}: it is not a directory", dir.display());
    }
    if !pool_journal::layout::Layout::new(dir).holds_journal() {
        bail!(
            "no journal at {}: the directory holds no journal (no 'witness', 'live/' or \
             'segments/'); pass --journal-dir DIR to the journal of a pool-managerd",
            dir.display()
        );
    }
    Ok(())
}

/// Opens (creating if absent) the journal at `dir` for writing and reports what recovery did.
pub(crate) fn open_dir(dir: &Path) -> anyhow::Result<PoolJournal> {
    let (journal, report) = PoolJournal::open(JournalConfig::new(dir))
        .with_context(|| format!("cannot open the journal at {}", dir.display()))?;
    if !report.quarantined.is_empty() {
        eprintln!(
            "warning: {} unacknowledged record(s) at the tail of {} were quarantined{}",
            report.quarantined.len(),
            dir.display(),
            report
                .quarantine_file
                .as_ref()
                .map(|path| format!(" to {}", path.display()))
                .unwrap_or_default()
        );
    }
    Ok(journal)
}
