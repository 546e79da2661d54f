//! [`ConfigError`]: every way a configuration is refused, each naming where the value came
//! from, the key and what to do.

use super::{Origin, API_TOKEN_CHARS_MIN, ENV_ADDR, ENV_API_TOKEN};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A key of the file that the configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Full dotted path (`health.bogus`).
    pub key: String,
    /// What to do: a likely intended key, or the keys of its table.
    pub hint: String,
}

/// Why the configuration was refused; each stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file does not exist.
    #[error(
        "config file {} does not exist; check the path given to --config, or leave --config \
         out to run with the defaults",
        path.display()
    )]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("config file {}: cannot read it: {source}", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`CONFIG_FILE_BYTES_MAX`](super::CONFIG_FILE_BYTES_MAX).
    #[error(
        "config file {}: larger than {limit_bytes} bytes; is it the right file?",
        path.display()
    )]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// [`CONFIG_FILE_BYTES_MAX`](super::CONFIG_FILE_BYTES_MAX).
        limit_bytes: u64,
    },
    /// The file is not valid UTF-8 TOML.
    #[error("config file {}: not valid TOML: {message}", path.display())]
    Syntax {
        /// The path given.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file has keys the configuration does not know (all of them are listed).
    #[error("{}", unknown_keys_message(path, keys))]
    UnknownKeys {
        /// The path given.
        path: PathBuf,
        /// Every unknown key, sorted by table then key.
        keys: Vec<UnknownKey>,
    },
    /// A value is of the wrong type or out of range.
    #[error("{origin}: invalid value for `{key}`: {message}; {hint}")]
    InvalidValue {
        /// Where the value came from.
        origin: Origin,
        /// Full dotted key (`health.preload_interval_ms`).
        key: String,
        /// What is wrong with it.
        message: String,
        /// What to do (the accepted form, the default).
        hint: String,
    },
    /// The SPEC 11 rule: a non-loopback address needs a token and an allow-list.
    #[error("{}", insecure_message(addr, *token_missing, *allow_list_missing))]
    Insecure {
        /// The address asked for.
        addr: SocketAddr,
        /// No [`ENV_API_TOKEN`].
        token_missing: bool,
        /// `allowed_binaries` is empty.
        allow_list_missing: bool,
    },
    /// A non-loopback address with a token too short to resist guessing.
    #[error(
        "refusing to listen on {addr}: {ENV_API_TOKEN} is {chars} character(s), and a \
         non-loopback address needs at least {API_TOKEN_CHARS_MIN}; set a random one, e.g. \
         `head -c 32 /dev/urandom | base64`"
    )]
    WeakToken {
        /// The address asked for.
        addr: SocketAddr,
        /// The token's length in characters.
        chars: usize,
    },
}

impl ConfigError {
    /// The dotted key the error is about, where there is exactly one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidValue { key, .. } => Some(key),
            ConfigError::UnknownKeys { keys, .. } if keys.len() == 1 => {
                keys.first().map(|k| k.key.as_str())
            }
            _ => None,
        }
    }
}

pub(super) fn unknown_keys_message(path: &Path, keys: &[UnknownKey]) -> String {
    let mut out = format!(
        "config file {}: unknown key{} (a typo, or a key under the wrong [table]):",
        path.display(),
        if keys.len() == 1 { "" } else { "s" }
    );
    for k in keys {
        out.push_str(&format!("\n  `{}`: {}", k.key, k.hint));
    }
    out
}

pub(super) fn insecure_message(
    addr: &SocketAddr,
    token_missing: bool,
    allow_list_missing: bool,
) -> String {
    let mut missing = Vec::new();
    let mut todo = Vec::new();
    if token_missing {
        missing.push("no API token is set");
        todo.push(format!(
            "set {ENV_API_TOKEN} (every route but GET /health then needs \
             `Authorization: Bearer <token>`)"
        ));
    }
    if allow_list_missing {
        missing.push("allowed_binaries is empty");
        todo.push(
            "list the engine binaries (absolute paths or directory prefixes) in \
             `allowed_binaries` in the config file"
                .to_string(),
        );
    }
    format!(
        "refusing to listen on {addr}: it is not a loopback address, and {}; {}; \
         or listen on a loopback address such as 127.0.0.1:9200 (--addr, {ENV_ADDR} or `addr`)",
        missing.join(" and "),
        todo.join(", and ")
    )
}
