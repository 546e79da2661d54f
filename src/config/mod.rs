//! The daemon's configuration (SPEC section 11): a TOML file, overridden by the environment,
//! overridden by flags.
//!
//! Owns: the shape of the configuration ([`Config`]) and its defaults (the top-level keys,
//! `[journal]` and `[gpu]` here; the supervision tables `[health]`, `[stop]`, `[backoff]`,
//! `[breaker]`, `[storm]` reuse `pool_core::policy`'s types, so their defaults live in one
//! place), the layering ([`Config::load`] over [`Sources`]), validation (unknown keys, invalid values, and the
//! security rule in [`Config::check_security`]), and printing the effective configuration
//! ([`Config::to_toml`], for `serve --print-config`).
//!
//! **Architecture Invariant:** this module never reads the process environment itself (the
//! caller passes it in as [`Sources::env`], so tests never mutate the real environment), never
//! touches the journal or creates directories, and never spawns anything. Its only I/O is
//! reading the one file named by `--config`, bounded by [`CONFIG_FILE_BYTES_MAX`].
//!
//! # Layering
//!
//! Each key takes its value from the highest layer that sets it: flags (`--addr`,
//! `--runtime-dir`, `--journal-dir`, `--dev`, `--gpu-fixture`) over the environment
//! ([`ENV_ADDR`], [`ENV_RUNTIME_DIR`], [`ENV_JOURNAL_DIR`], [`ENV_API_TOKEN`]) over the file
//! over the built-in defaults. `--dev` sets `require_gpu = false`; `--gpu-fixture FILE` sets
//! `gpu.fixture` (a testing aid: GPUs from a JSON file instead of NVML).
//!
//! `journal_dir` defaults to `<runtime_dir>/journal`, computed *after* layering: when only
//! `runtime_dir` is overridden (in any layer), the journal follows it. A `journal_dir` set
//! explicitly in any layer always wins over the derived one, even when `runtime_dir` comes
//! from a higher layer. Relative paths are relative to the daemon's working directory.
//!
//! # Secrets
//!
//! The API token is read from [`ENV_API_TOKEN`] only, never from the file: a token in a
//! configuration file is too easily world-readable or committed. An `api_token` key in the
//! file is refused with a message saying so. An empty variable means "no token". The token is
//! redacted from `Debug` and from [`Config::to_toml`].
//!
//! # Errors
//!
//! Every [`ConfigError`] stops start-up and says where the bad value came from (the file's
//! path, the variable or the flag), names the key with its table (`health.preload_interval_ms`)
//! and says what to do.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pool_core::{BackoffPolicy, BreakerPolicy, HealthPolicy, Policy, StopPolicy, StormPolicy};

mod error;
mod file;
mod sections;
mod sources;
#[cfg(test)]
mod tests;

pub use error::*;
use file::*;
pub use sections::*;
pub use sources::*;

/// Overrides `addr`.
pub const ENV_ADDR: &str = "POOL_MANAGERD_ADDR";
/// Overrides `runtime_dir`.
pub const ENV_RUNTIME_DIR: &str = "POOL_MANAGERD_RUNTIME_DIR";
/// Overrides `journal_dir`.
pub const ENV_JOURNAL_DIR: &str = "POOL_MANAGERD_JOURNAL_DIR";
/// The API token (the only source of it); empty means unset.
pub const ENV_API_TOKEN: &str = "LLORCH_API_TOKEN";
/// Every environment variable the configuration reads.
pub const ENV_KEYS: [&str; 4] = [ENV_ADDR, ENV_RUNTIME_DIR, ENV_JOURNAL_DIR, ENV_API_TOKEN];

/// A configuration file larger than this is refused (it is a few hundred bytes in practice).
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Default of `addr`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9200";
/// Default of `runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = ".runtime";
/// Default of `journal.snapshot_every`.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// Default of `journal.retain_bytes` (1 GiB).
pub const DEFAULT_RETAIN_BYTES: u64 = pool_journal::config::DEFAULT_RETAIN_BYTES;
/// Default of `journal.retain_ms` (30 days).
pub const DEFAULT_RETAIN_MS: u64 = pool_journal::config::DEFAULT_RETAIN_MS;
/// Default of `journal.segment_records`.
pub const DEFAULT_SEGMENT_RECORDS: u64 = pool_journal::config::DEFAULT_SEGMENT_RECORDS as u64;
/// Largest `journal.segment_records`.
pub const SEGMENT_RECORDS_MAX: u64 = 1_000_000;
/// Default of `gpu.poll_interval_ms`.
pub const DEFAULT_GPU_POLL_INTERVAL_MS: u64 = 5_000;
/// Largest `gpu.poll_interval_ms` (one hour).
pub const GPU_POLL_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Default of `gpu.placement_timeout_ms`.
pub const DEFAULT_GPU_PLACEMENT_TIMEOUT_MS: u64 = 10_000;
/// Largest `gpu.placement_timeout_ms` (ten minutes).
pub const GPU_PLACEMENT_TIMEOUT_MS_MAX: u64 = 600_000;
/// Default of `gpu.release_timeout_ms`.
pub const DEFAULT_GPU_RELEASE_TIMEOUT_MS: u64 = 30_000;
/// Largest `gpu.release_timeout_ms` (ten minutes).
pub const GPU_RELEASE_TIMEOUT_MS_MAX: u64 = 600_000;
/// Default of `gpu.release_slack_bytes` (256 MiB).
pub const DEFAULT_GPU_RELEASE_SLACK_BYTES: u64 = 256 << 20;
/// How `addr` is written.
const ADDR_FORM: &str =
    "give IP:PORT such as 127.0.0.1:9200 or [::1]:9200 (host names are not resolved)";
/// The shortest API token accepted for a non-loopback address.
pub const API_TOKEN_CHARS_MIN: usize = 16;
/// Keys longer than this get no spelling suggestion (bounds the edit-distance work).
const SUGGEST_KEY_CHARS_MAX: usize = 64;

/// The SPEC's example configuration: every key with its default value, commented. Parses to
/// exactly [`Config::default()`] (a test checks it). `journal_dir` is commented out on purpose:
/// written out, it would stop following `runtime_dir` in a copy of this file.
pub const EXAMPLE_TOML: &str = include_str!("example.toml");

/// The effective configuration of the daemon. Built by [`Config::load`] (or
/// [`Config::default`]), then read-only: `serve` hands clones or parts of it to the modules
/// that need them ([`Config::policy`] for the supervisor).
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Where the HTTP API listens (`IP:PORT`; host names are not resolved).
    pub addr: SocketAddr,
    /// Logs, pid files and engine handoff files live under it.
    pub runtime_dir: PathBuf,
    /// The journal (a sled database). Defaults to `<runtime_dir>/journal`, see the module doc.
    pub journal_dir: PathBuf,
    /// Without a usable GPU, refuse preloads (`GPU_REQUIRED`). `--dev` sets it to false.
    pub require_gpu: bool,
    /// Absolute paths or directory prefixes of the binaries that may be spawned; empty means
    /// any binary, which is allowed on a loopback address only.
    pub allowed_binaries: Vec<PathBuf>,
    /// When the daemon runs as root: the user the engines run as (empty: none given).
    pub engine_user: String,
    /// As root without `engine_user`: let engines run as root. False (the default) refuses
    /// every start with `SPAWN_FAILED` naming `engine_user`; `--dev` sets it.
    pub allow_root_engines: bool,
    /// Bearer token every route but `GET /health` needs; from [`ENV_API_TOKEN`] only.
    /// Redacted from `Debug` and [`Config::to_toml`].
    pub api_token: Option<String>,
    /// Stop the engines when the daemon shuts down. Default false: engines outlive the daemon
    /// (a daemon restart or upgrade does not interrupt serving) and are adopted again from the
    /// journal at the next start.
    pub stop_engines_on_shutdown: bool,
    /// `[health]`.
    pub health: HealthPolicy,
    /// `[stop]`.
    pub stop: StopPolicy,
    /// `[backoff]`.
    pub backoff: BackoffPolicy,
    /// `[breaker]`.
    pub breaker: BreakerPolicy,
    /// `[storm]`.
    pub storm: StormPolicy,
    /// `[journal]`.
    pub journal: JournalSettings,
    /// `[gpu]`.
    pub gpu: GpuSettings,
    /// `[engines]`.
    pub engines: EnginesSettings,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[cluster]`.
    pub cluster: ClusterSettings,
    /// `[reload]`.
    pub reload: ReloadSettings,
    /// `[logs]`.
    pub logs: LogsSettings,
}

impl Default for Config {
    /// The built-in defaults (SPEC section 11), equal to [`EXAMPLE_TOML`].
    fn default() -> Self {
        Config::from_file_config(FileConfig::default(), None)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("runtime_dir", &self.runtime_dir)
            .field("journal_dir", &self.journal_dir)
            .field("require_gpu", &self.require_gpu)
            .field("allowed_binaries", &self.allowed_binaries)
            .field("engine_user", &self.engine_user)
            .field("allow_root_engines", &self.allow_root_engines)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("stop_engines_on_shutdown", &self.stop_engines_on_shutdown)
            .field("health", &self.health)
            .field("stop", &self.stop)
            .field("backoff", &self.backoff)
            .field("breaker", &self.breaker)
            .field("storm", &self.storm)
            .field("journal", &self.journal)
            .field("gpu", &self.gpu)
            .field("engines", &self.engines)
            .field("cluster", &self.cluster)
            .field("api", &self.api)
            .field("reload", &self.reload)
            .field("logs", &self.logs)
            .finish()
    }
}

impl Config {
    /// Builds the effective configuration: defaults < `sources.file` < `sources.env` <
    /// `sources.flags`, then resolves `journal_dir` and applies [`Config::check_security`].
    /// Reads the file (if any) and nothing else.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let (file, origin) = match &sources.file {
            Some(path) => (read_file(path)?, Origin::File(path.clone())),
            None => (FileConfig::default(), Origin::Default),
        };
        validate_file_config(&file, &origin)?;
        let mut explicit_journal_dir = file.journal_dir.clone();
        let mut config = Config::from_file_config(file, None);

        // Environment.
        let env = |var: &str| sources.env.get(var).map(String::as_str);
        if let Some(value) = env(ENV_ADDR) {
            config.addr = parse_addr(value).map_err(|message| ConfigError::InvalidValue {
                origin: Origin::Env(ENV_ADDR),
                key: "addr".into(),
                message,
                hint: format!("{ADDR_FORM}, or unset {ENV_ADDR}"),
            })?;
        }
        if let Some(value) = env(ENV_RUNTIME_DIR) {
            config.runtime_dir = env_dir(ENV_RUNTIME_DIR, "runtime_dir", value)?;
        }
        if let Some(value) = env(ENV_JOURNAL_DIR) {
            explicit_journal_dir = Some(env_dir(ENV_JOURNAL_DIR, "journal_dir", value)?);
        }
        if let Some(value) = env(ENV_API_TOKEN) {
            config.api_token = parse_token(value)?;
        }

        // Flags.
        let flags = &sources.flags;
        if let Some(addr) = flags.addr {
            config.addr = addr;
        }
        if let Some(dir) = &flags.runtime_dir {
            config.runtime_dir = flag_dir("--runtime-dir", "runtime_dir", dir)?;
        }
        if let Some(dir) = &flags.journal_dir {
            explicit_journal_dir = Some(flag_dir("--journal-dir", "journal_dir", dir)?);
        }
        if flags.dev {
            config.require_gpu = false;
            config.allow_root_engines = true;
        }
        if flags.stop_engines_on_shutdown {
            config.stop_engines_on_shutdown = true;
        }
        if let Some(file) = &flags.gpu_fixture {
            if file.as_os_str().is_empty() {
                return Err(ConfigError::InvalidValue {
                    origin: Origin::Flag("--gpu-fixture"),
                    key: "gpu.fixture".into(),
                    message: "empty".into(),
                    hint: "give --gpu-fixture a JSON file of GPUs, or leave it out to use NVML"
                        .into(),
                });
            }
            config.gpu.fixture = file.clone();
        }

        config.journal_dir =
            explicit_journal_dir.unwrap_or_else(|| default_journal_dir(&config.runtime_dir));
        config.check_security()?;
        Ok(config)
    }

    /// SPEC section 11: listening on a non-loopback address needs an API token and a non-empty
    /// `allowed_binaries`; otherwise start-up is refused with a message saying what to set.
    /// (IPv4-mapped loopback such as `[::ffff:127.0.0.1]` counts as loopback.)
    pub fn check_security(&self) -> Result<(), ConfigError> {
        if is_loopback(self.addr.ip()) {
            return Ok(());
        }
        let token_missing = self.api_token.is_none();
        let allow_list_missing = self.allowed_binaries.is_empty();
        if token_missing || allow_list_missing {
            return Err(ConfigError::Insecure {
                addr: self.addr,
                token_missing,
                allow_list_missing,
            });
        }
        let chars = self.api_token.as_deref().map_or(0, |t| t.chars().count());
        if chars < API_TOKEN_CHARS_MIN {
            return Err(ConfigError::WeakToken {
                addr: self.addr,
                chars,
            });
        }
        Ok(())
    }

    /// The supervision policy of the `[health]`, `[stop]`, `[backoff]`, `[breaker]` and
    /// `[storm]` tables.
    pub fn policy(&self) -> Policy {
        Policy {
            health: self.health.clone(),
            stop: self.stop.clone(),
            backoff: self.backoff.clone(),
            breaker: self.breaker.clone(),
            storm: self.storm.clone(),
            quarantine: self.gpu.quarantine(),
        }
    }

    /// The effective configuration as TOML (for `serve --print-config`), with `journal_dir`
    /// written out. The token is never printed: a comment says only whether it is set. The
    /// output, used as a config file, gives this configuration back (less the token). Paths
    /// that are not UTF-8 are printed lossily.
    pub fn to_toml(&self) -> String {
        let lossy = |p: &Path| PathBuf::from(p.to_string_lossy().into_owned());
        let file = FileConfig {
            addr: self.addr,
            runtime_dir: lossy(&self.runtime_dir),
            journal_dir: Some(lossy(&self.journal_dir)),
            require_gpu: self.require_gpu,
            allowed_binaries: self.allowed_binaries.iter().map(|p| lossy(p)).collect(),
            engine_user: self.engine_user.clone(),
            allow_root_engines: self.allow_root_engines,
            stop_engines_on_shutdown: self.stop_engines_on_shutdown,
            health: self.health.clone(),
            stop: self.stop.clone(),
            backoff: self.backoff.clone(),
            breaker: self.breaker.clone(),
            storm: self.storm.clone(),
            journal: self.journal.clone(),
            gpu: GpuSettings {
                poll_interval_ms: self.gpu.poll_interval_ms,
                placement_timeout_ms: self.gpu.placement_timeout_ms,
                fixture: lossy(&self.gpu.fixture),
                nvml_library: lossy(&self.gpu.nvml_library),
                allow_sharing: self.gpu.allow_sharing,
                release_timeout_ms: self.gpu.release_timeout_ms,
                release_slack_bytes: self.gpu.release_slack_bytes,
                quarantine_after: self.gpu.quarantine_after,
                quarantine_window_ms: self.gpu.quarantine_window_ms,
            },
            engines: self.engines.clone(),
            cluster: self.cluster.clone(),
            api: self.api.clone(),
            reload: self.reload.clone(),
            logs: self.logs,
        };
        let body = toml::to_string(&file)
            .unwrap_or_else(|e| format!("# cannot print the configuration as TOML: {e}\n"));
        let token = if self.api_token.is_some() {
            "set (redacted)"
        } else {
            "not set"
        };
        format!(
            "# Effective configuration of pool-managerd (file < environment < flags).\n\
             # API token: {token}; it is read from {ENV_API_TOKEN} only, never from this file.\n\
             {body}"
        )
    }

    fn from_file_config(file: FileConfig, api_token: Option<String>) -> Config {
        let journal_dir = file
            .journal_dir
            .unwrap_or_else(|| default_journal_dir(&file.runtime_dir));
        Config {
            addr: file.addr,
            runtime_dir: file.runtime_dir,
            journal_dir,
            require_gpu: file.require_gpu,
            allowed_binaries: file.allowed_binaries,
            engine_user: file.engine_user,
            allow_root_engines: file.allow_root_engines,
            api_token,
            stop_engines_on_shutdown: file.stop_engines_on_shutdown,
            health: file.health,
            stop: file.stop,
            backoff: file.backoff,
            breaker: file.breaker,
            storm: file.storm,
            journal: file.journal,
            gpu: file.gpu,
            engines: file.engines,
            cluster: file.cluster,
            api: file.api,
            reload: file.reload,
            logs: file.logs,
        }
    }
}

/// Keeps the variables of [`ENV_KEYS`] from a process environment, for [`Sources::env`]:
/// `relevant_env(std::env::vars_os())`. Unlike `std::env::vars`, it does not panic on a
/// variable that is not UTF-8; one of ours that is not is an error naming it.
pub fn relevant_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in vars {
        let Some(&var) = ENV_KEYS.iter().find(|k| name.to_str() == Some(**k)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::InvalidValue {
            origin: Origin::Env(var),
            key: env_key(var).into(),
            message: "not valid UTF-8".into(),
            hint: format!("give {var} a UTF-8 value or unset it"),
        })?;
        out.insert(var.to_string(), value);
    }
    Ok(out)
}
