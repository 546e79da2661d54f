//! What [`Config::load`](super::Config::load) reads, gathered by the caller (the file's path,
//! the environment, the flags), the origin of each value, and the parsing of one value from
//! the environment or a flag.
//!
//! Never: reads the process environment itself.

use super::{ConfigError, ENV_ADDR, ENV_API_TOKEN, ENV_JOURNAL_DIR, ENV_KEYS, ENV_RUNTIME_DIR};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Everything [`Config::load`](super::Config::load) reads, gathered by the caller.
#[derive(Clone, Default)]
pub struct Sources {
    /// The `--config` file; `None` runs with the defaults (no file is looked for).
    pub file: Option<PathBuf>,
    /// The process environment, passed in by the caller (see [`relevant_env`](super::relevant_env)); variables
    /// other than [`ENV_KEYS`] are ignored.
    pub env: BTreeMap<String, String>,
    /// The command-line flags.
    pub flags: Overrides,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the variables we read, and never the token's value.
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .filter(|(k, _)| ENV_KEYS.contains(&k.as_str()))
            .map(|(k, v)| {
                let v = if k == ENV_API_TOKEN {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Sources")
            .field("file", &self.file)
            .field("env", &env)
            .field("flags", &self.flags)
            .finish()
    }
}

/// The flags that override the file and the environment (SPEC section 11). Flatten it into a
/// `serve` command with `#[command(flatten)]`. It deliberately reads no environment variable
/// through clap: [`Config::load`](super::Config::load) does that, so that errors name the variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Overrides {
    /// Address to listen on, IP:PORT [env: POOL_MANAGERD_ADDR] [default: 127.0.0.1:9200].
    #[arg(long, value_name = "IP:PORT")]
    pub addr: Option<SocketAddr>,
    /// Directory of logs, pid files and engine handoff files [env: POOL_MANAGERD_RUNTIME_DIR]
    /// [default: .runtime].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Journal directory [env: POOL_MANAGERD_JOURNAL_DIR] [default: journal/ in the runtime dir].
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Development mode: allow CPU-only engines (sets require_gpu = false).
    #[arg(long)]
    pub dev: bool,
    /// Stop every engine when the daemon shuts down cleanly (SIGTERM, ctrl-c), instead of
    /// leaving them serving for the next start to adopt (sets stop_engines_on_shutdown = true).
    #[arg(long)]
    pub stop_engines_on_shutdown: bool,
    /// Testing aid: read the GPUs from this JSON file instead of NVML (sets gpu.fixture).
    #[arg(long, value_name = "FILE")]
    pub gpu_fixture: Option<PathBuf>,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in defaults (an error here is a bug).
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(&'static str),
    /// This flag (`--addr`).
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "built-in defaults"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

pub(super) fn env_key(var: &str) -> &'static str {
    match var {
        ENV_ADDR => "addr",
        ENV_RUNTIME_DIR => "runtime_dir",
        ENV_JOURNAL_DIR => "journal_dir",
        _ => "api_token",
    }
}

pub(super) fn default_journal_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("journal")
}

pub(super) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

pub(super) fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    value
        .parse()
        .map_err(|e| format!("`{value}` is not an IP:PORT address ({e})"))
}

pub(super) fn env_dir(var: &'static str, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::InvalidValue {
            origin: Origin::Env(var),
            key: key.into(),
            message: "empty".into(),
            hint: format!("give {var} a directory or unset it"),
        });
    }
    Ok(PathBuf::from(value))
}

pub(super) fn flag_dir(flag: &'static str, key: &str, dir: &Path) -> Result<PathBuf, ConfigError> {
    if dir.as_os_str().is_empty() {
        return Err(ConfigError::InvalidValue {
            origin: Origin::Flag(flag),
            key: key.into(),
            message: "empty".into(),
            hint: format!("give {flag} a directory or leave it out"),
        });
    }
    Ok(dir.to_path_buf())
}

/// Empty means no token. The value is never echoed in an error.
pub(super) fn parse_token(value: &str) -> Result<Option<String>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::InvalidValue {
            origin: Origin::Env(ENV_API_TOKEN),
            key: "api_token".into(),
            message: "contains whitespace or control characters (a trailing newline?), \
                      so no Authorization header could ever match it"
                .into(),
            hint: format!("set {ENV_API_TOKEN} to the bare token, or to empty for none"),
        });
    }
    Ok(Some(value.to_string()))
}
