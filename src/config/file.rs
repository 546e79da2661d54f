//! The configuration file: read (bounded), parsed, unknown keys refused with the nearest known
//! one suggested, invalid values located, then validated table by table.
//!
//! Never: reads more than [`CONFIG_FILE_BYTES_MAX`](super::CONFIG_FILE_BYTES_MAX) bytes.

use super::{
    default_journal_dir, ApiConfig, ClusterSettings, ConfigError, EnginesSettings, GpuSettings,
    JournalSettings, LogsSettings, Origin, ReloadSettings, UnknownKey, ADDR_FORM,
    CONFIG_FILE_BYTES_MAX, DEFAULT_RUNTIME_DIR, ENV_API_TOKEN, PIDS_MAX_MAX, SUGGEST_KEY_CHARS_MAX,
};
use pool_core::{BackoffPolicy, BreakerPolicy, HealthPolicy, Policy, StopPolicy, StormPolicy};
use serde::{Deserialize, Serialize};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The keys of the file, with the same defaults as [`Config`] (private: the file's shape is
/// [`EXAMPLE_TOML`]). `journal_dir` is optional so that its absence can mean "follow
/// `runtime_dir`"; there is no `api_token` (environment only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    pub(super) addr: SocketAddr,
    pub(super) runtime_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) journal_dir: Option<PathBuf>,
    pub(super) require_gpu: bool,
    pub(super) allowed_binaries: Vec<PathBuf>,
    pub(super) engine_user: String,
    pub(super) allow_root_engines: bool,
    pub(super) stop_engines_on_shutdown: bool,
    pub(super) health: HealthPolicy,
    pub(super) stop: StopPolicy,
    pub(super) backoff: BackoffPolicy,
    pub(super) breaker: BreakerPolicy,
    pub(super) storm: StormPolicy,
    pub(super) journal: JournalSettings,
    pub(super) gpu: GpuSettings,
    pub(super) engines: EnginesSettings,
    pub(super) api: ApiConfig,
    pub(super) cluster: ClusterSettings,
    pub(super) reload: ReloadSettings,
    pub(super) logs: LogsSettings,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9200)),
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            journal_dir: None,
            require_gpu: true,
            allowed_binaries: Vec::new(),
            engine_user: String::new(),
            allow_root_engines: false,
            stop_engines_on_shutdown: false,
            health: HealthPolicy::default(),
            stop: StopPolicy::default(),
            backoff: BackoffPolicy::default(),
            breaker: BreakerPolicy::default(),
            storm: StormPolicy::default(),
            journal: JournalSettings::default(),
            gpu: GpuSettings::default(),
            engines: EnginesSettings::default(),
            cluster: ClusterSettings::default(),
            api: ApiConfig::default(),
            reload: ReloadSettings::default(),
            logs: LogsSettings::default(),
        }
    }
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let mut bytes = Vec::new();
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit_bytes: CONFIG_FILE_BYTES_MAX,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    parse_file_text(path, &text)
}

pub(super) fn parse_file_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let schema = schema();
    // toml's own messages name only the innermost table of an unknown key, and no key at all
    // for a bad value read from text: walk the parsed table against the known keys instead.
    let mut unknown = Vec::new();
    if !schema.is_empty() {
        unknown_keys(&table, &schema, &schema, "", &mut unknown);
    }
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownKeys {
            path: path.to_path_buf(),
            keys: unknown,
        });
    }
    match FileConfig::deserialize(Value::Table(table.clone())) {
        Ok(file) => Ok(file),
        Err(error) => {
            let (key, message) = locate_invalid(&table, &schema, &[])
                .unwrap_or_else(|| (String::from("(file)"), error.message().to_string()));
            Err(ConfigError::InvalidValue {
                origin: Origin::File(path.to_path_buf()),
                hint: value_hint(&key),
                key,
                message,
            })
        }
    }
}

/// The known keys as a TOML table of the defaults (with `journal_dir`, which defaults to
/// nothing in the file). Empty only if serialization failed, which a test rules out.
pub(super) fn schema() -> Table {
    let file = FileConfig {
        journal_dir: Some(default_journal_dir(Path::new(DEFAULT_RUNTIME_DIR))),
        ..FileConfig::default()
    };
    Table::try_from(&file).unwrap_or_default()
}

pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Appends every key of `user` absent from `known` (the schema's table at `prefix`). Recurses
/// only where the schema has a table, so its depth is bounded by the schema's.
pub(super) fn unknown_keys(
    user: &Table,
    known: &Table,
    root: &Table,
    prefix: &str,
    out: &mut Vec<UnknownKey>,
) {
    for (key, value) in user {
        let path = join(prefix, key);
        match known.get(key) {
            Some(Value::Table(known_sub)) => {
                if let Value::Table(user_sub) = value {
                    unknown_keys(user_sub, known_sub, root, &path, out);
                }
            }
            Some(_) => {}
            None => out.push(UnknownKey {
                hint: unknown_hint(key, &path, known, root, prefix),
                key: path,
            }),
        }
    }
}

pub(super) fn unknown_hint(
    key: &str,
    path: &str,
    known: &Table,
    root: &Table,
    prefix: &str,
) -> String {
    if path == "api_token" {
        return format!(
            "the API token is read from {ENV_API_TOKEN} only (a token in a file is too easily \
             readable): remove this key and set the variable"
        );
    }
    let mut elsewhere = Vec::new();
    all_paths(root, "", &mut elsewhere);
    let moved: Vec<&String> = elsewhere
        .iter()
        .filter(|p| p.rsplit('.').next() == Some(key) && p.as_str() != path)
        .collect();
    if let Some(first) = moved.first() {
        return format!(
            "did you mean `{first}`? (a key belongs to the nearest [table] header above it; \
             top-level keys go before the first one)"
        );
    }
    if let Some(near) = known
        .keys()
        .filter(|k| is_near(key, k))
        .min_by_key(|k| edit_distance(key, k))
    {
        return format!("did you mean `{}`?", join(prefix, near));
    }
    let names: Vec<&str> = known.keys().map(String::as_str).collect();
    let table = if prefix.is_empty() {
        "the top-level keys".to_string()
    } else {
        format!("the keys of [{prefix}]")
    };
    format!("remove it; {table} are: {}", names.join(", "))
}

pub(super) fn all_paths(table: &Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = join(prefix, key);
        if let Value::Table(sub) = value {
            all_paths(sub, &path, out);
        }
        out.push(path);
    }
}

pub(super) fn is_near(a: &str, b: &str) -> bool {
    if a.len() > SUGGEST_KEY_CHARS_MAX || b.len() > SUGGEST_KEY_CHARS_MAX {
        return false;
    }
    let d = edit_distance(a, b);
    d <= 2.max(b.chars().count() / 4)
}

/// Levenshtein distance over chars (inputs bounded by [`SUGGEST_KEY_CHARS_MAX`]).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = i;
        let mut next = Vec::with_capacity(row.len());
        next.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX) + 1;
            let left = next.last().copied().unwrap_or(usize::MAX) + 1;
            diagonal = row.get(j + 1).copied().unwrap_or(0);
            next.push(substitute.min(above).min(left));
        }
        row = next;
    }
    row.last().copied().unwrap_or(0)
}

/// Finds the key whose value fails to deserialize: tries each key alone (within its tables),
/// descending into tables. All keys are known by now. At most one trial per key of the file
/// that the schema knows, so bounded by the schema's size.
pub(super) fn locate_invalid(
    user: &Table,
    known: &Table,
    prefix: &[&str],
) -> Option<(String, String)> {
    for (key, value) in user {
        let mut single = Table::new();
        single.insert(key.clone(), value.clone());
        let mut doc = single;
        for table in prefix.iter().rev() {
            let mut outer = Table::new();
            outer.insert((*table).to_string(), Value::Table(doc));
            doc = outer;
        }
        let Err(error) = FileConfig::deserialize(Value::Table(doc)) else {
            continue;
        };
        if let (Value::Table(user_sub), Some(Value::Table(known_sub))) = (value, known.get(key)) {
            let mut deeper = prefix.to_vec();
            deeper.push(key);
            if let Some(found) = locate_invalid(user_sub, known_sub, &deeper) {
                return Some(found);
            }
        }
        let mut path = prefix.join(".");
        path = join(&path, key);
        return Some((path, error.message().to_string()));
    }
    None
}

/// What to do about an invalid value of `key`: its accepted form where it is not obvious, and
/// its default.
pub(super) fn value_hint(key: &str) -> String {
    let default = lookup(&schema(), key).map(|v| match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    });
    let form = match key {
        "addr" => ADDR_FORM,
        "allowed_binaries" => "give a list of absolute paths or directory prefixes",
        "engine_user" => "give a user name, or \"\" for none",
        "gpu.fixture" => "give the path of a JSON file of GPUs (a testing aid), or \"\" for NVML",
        "gpu.nvml_library" => {
            "give the path of the driver's libnvidia-ml.so.1, or \"\" for the one the dynamic \
             loader finds"
        }
        "gpu.allow_sharing" => "give true or false",
        "engines.cgroup" => "give \"auto\", \"required\" or \"off\"",
        "engines.logs_group" => "give a group name, or \"\" for none",
        "reload.surge_ports" => "give \"START-END\" (inclusive), or \"\" for none",
        "logs.max_bytes" => "give a size in bytes, at least 4096",
        "logs.keep" => "give how many rotated parts to keep, 1..=100",
        _ => "fix it",
    };
    match default {
        Some(default) if key != "journal_dir" => {
            format!("{form}, or remove the key to use the default ({default})")
        }
        Some(_) => format!("{form}, or remove the key to use <runtime_dir>/journal"),
        None => form.to_string(),
    }
}

pub(super) fn lookup<'a>(table: &'a Table, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Values that deserialize but make no sense; the key is named with its table.
pub(super) fn validate_file_config(file: &FileConfig, origin: &Origin) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::InvalidValue {
        origin: origin.clone(),
        key: key.to_string(),
        message,
        hint: value_hint(key),
    };
    let policy = Policy {
        health: file.health.clone(),
        stop: file.stop.clone(),
        backoff: file.backoff.clone(),
        breaker: file.breaker.clone(),
        storm: file.storm.clone(),
        quarantine: file.gpu.quarantine(),
    };
    if let Err(message) = policy.validate() {
        // pool-core's messages start with the dotted key: "health.preload_interval_ms must be > 0".
        let (key, rest) = message.split_once(' ').unwrap_or((message.as_str(), ""));
        let rest = if rest.starts_with("must") {
            rest.to_string()
        } else {
            message.clone()
        };
        return Err(invalid(key, rest));
    }
    for check in [
        file.gpu.validate(),
        file.api.validate(),
        file.journal.validate(),
        file.cluster.validate(),
        file.reload.validate(),
        file.logs.validate(),
        validate_paths(file),
        validate_names(file),
    ] {
        check.map_err(|(key, message)| invalid(key, message))?;
    }
    Ok(())
}

/// `runtime_dir` and `journal_dir` not empty; `allowed_binaries` absolute.
pub(super) fn validate_paths(file: &FileConfig) -> Result<(), (&'static str, String)> {
    if file.runtime_dir.as_os_str().is_empty() {
        return Err(("runtime_dir", "empty".into()));
    }
    if file
        .journal_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(("journal_dir", "empty".into()));
    }
    for (i, binary) in file.allowed_binaries.iter().enumerate() {
        if !binary.is_absolute() {
            return Err((
                "allowed_binaries",
                format!(
                    "entry {i} ({:?}) is not an absolute path, so what it allows would depend \
                     on the working directory",
                    binary.display().to_string()
                ),
            ));
        }
    }
    Ok(())
}

/// `[engines] env_allow` patterns, `pids_max` bounds, and the user and group names.
pub(super) fn validate_names(file: &FileConfig) -> Result<(), (&'static str, String)> {
    for (i, pattern) in file.engines.env_allow.iter().enumerate() {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if name.contains('*') || name.contains('=') || name.chars().any(char::is_control) {
            return Err((
                "engines.env_allow",
                format!("entry {i} ({pattern:?}) is not a variable name or a prefix ending in '*'"),
            ));
        }
    }
    if file.engines.pids_max == 0 || file.engines.pids_max > PIDS_MAX_MAX {
        return Err((
            "engines.pids_max",
            format!("{} is outside 1..={PIDS_MAX_MAX}", file.engines.pids_max),
        ));
    }
    if file
        .engines
        .logs_group
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
    {
        return Err((
            "engines.logs_group",
            format!("{:?} is not a group name", file.engines.logs_group),
        ));
    }
    if file
        .engine_user
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
    {
        return Err((
            "engine_user",
            format!("{:?} is not a user name", file.engine_user),
        ));
    }
    Ok(())
}
