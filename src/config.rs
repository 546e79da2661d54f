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
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use pool_core::{BackoffPolicy, BreakerPolicy, HealthPolicy, Policy, StopPolicy, StormPolicy};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

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
pub const EXAMPLE_TOML: &str = r#"# pool-managerd configuration (SPEC section 11). Every key is optional; the values shown
# are the defaults. Precedence: this file < environment < flags. Unknown keys are refused.
# The API token is never read from this file: set LLORCH_API_TOKEN.

addr = "127.0.0.1:9200"             # POOL_MANAGERD_ADDR, --addr. A non-loopback address needs
                                    # LLORCH_API_TOKEN and a non-empty allowed_binaries.
runtime_dir = ".runtime"            # logs/, pids/, engines/ (handoff files);
                                    # POOL_MANAGERD_RUNTIME_DIR, --runtime-dir
# journal_dir = ".runtime/journal"  # default <runtime_dir>/journal (follows runtime_dir);
                                    # POOL_MANAGERD_JOURNAL_DIR, --journal-dir
require_gpu = true                  # --dev sets false
allowed_binaries = []               # absolute paths or directory prefixes; [] = any, loopback only
engine_user = ""                    # when running as root: user the engines run as
allow_root_engines = false          # as root without engine_user: true lets engines run as
                                    # root; false refuses every start (SPAWN_FAILED). --dev sets true
stop_engines_on_shutdown = false    # false: engines outlive the daemon, which adopts them again
                                    # when it restarts; true: stopping the daemon stops them

[health]
preload_interval_ms = 500           # poll interval while preloading
preload_timeout_ms = 120000         # give up a preload after this long
ready_interval_ms = 5000            # probe interval while ready
failures_to_crash = 3               # consecutive failed probes that mean "hung"

[stop]
grace_ms = 5000                     # SIGTERM grace before SIGKILL

[backoff]
initial_ms = 1000                   # first restart delay
min_ms = 500                        # no delay is shorter
factor = 2.0                        # growth per attempt
max_ms = 60000                      # no delay is longer
jitter = 0.1                        # +-10 %
reset_after_ms = 300000             # stable running that resets the attempt count

[backoff.reason_multiplier]         # per exit reason
crash = 1.0
signal = 1.0
oom_killed = 1.0
cuda_error = 2.0
vram_oom = 2.0
driver_error = 2.0
health_timeout = 1.0
unknown = 1.0

[breaker]
failure_threshold = 5               # consecutive failures of one class that open it
open_ms = 300000                    # how long it stays open the first time
close_after_stable_ms = 60000       # stable running of the trial that closes it

[storm]
max_restarts = 10                   # more restarts than this in the window is a storm
window_ms = 60000

[journal]
snapshot_every = 10000              # events between snapshots; >= 1
retain_bytes = 1073741824           # retention by size: the oldest sealed segments are dropped
                                    # while they take more (never what the newest snapshot
                                    # needs); 1 GiB
retain_ms = 2592000000              # retention by age: segments older than this are dropped
                                    # (same limits); 30 days
segment_records = 16384             # records per sealed segment (the live store holds at most
                                    # about this many); 1..=1000000

[gpu]
poll_interval_ms = 5000             # GPU observation interval (VRAM, processes, Xid events)
placement_timeout_ms = 10000        # with require_gpu: after health passes, how long NVML may
                                    # take to list the engine on a GPU of its mask before the
                                    # start fails with CPU_SPILLOVER
fixture = ""                        # testing aid: GPUs from a JSON file instead of NVML
                                    # ("" = NVML); --gpu-fixture
allow_sharing = false               # true: two pools may claim the same GPU (or MIG device);
                                    # false: a mask overlapping another pool's is refused

[engines]
env_allow = ["CUDA_*", "NCCL_*", "HF_*", "OMP_*", "LLAMA_*", "VLLM_*", "TORCH_*", "PYTORCH_*", "TRANSFORMERS_*", "TZ", "LC_*"]
                                    # the env{} keys a prepared engine may set ("X_*" = prefix);
                                    # loader and shell hooks (LD_*, BASH_ENV, PYTHONPATH...) are
                                    # refused whatever this says
cgroup = "auto"                     # a cgroup v2 leaf per engine (memory.max from
                                    # ram_required_bytes, pids.max, exact OOM kills and memory):
                                    # "auto" = where the daemon may create one, else logged and
                                    # skipped; "required" = refuse to start without; "off"
pids_max = 32768                    # pids.max of each engine's leaf (threads count); 1..=4194304
logs_group = ""                     # a group that may read the engine logs (logs/ 0750, logs
                                    # 0640); "" = the daemon's user only (0700, 0600)

[api]
allowed_origins = []                # exact Origin values of web pages allowed to call the API
                                    # (a browser console); any other Origin is refused (403)
max_connections = 1024              # open API connections at most (1..=1000000), lowered to fit
                                    # the open-file limit; at the cap the oldest idle connection
                                    # is closed, and with all busy a new one gets 503 OVERLOADED
header_read_timeout_ms = 10000      # a request head must arrive within this (from the accept,
                                    # or from its first byte on a keep-alive connection)
body_read_timeout_ms = 30000        # a request body must arrive whole within this; else 408
idle_timeout_ms = 60000             # a keep-alive connection with no request is closed after this
"#;

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
}

/// `[api]`: who may call the API from a web page, and how the HTTP layer bounds its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Exact `Origin` values accepted (`https://console.example:8443`); default none: a
    /// request that carries an `Origin` (a browser's, cross-origin) is refused.
    pub allowed_origins: Vec<String>,
    /// Open API connections at most (1..=API_MAX_CONNECTIONS_MAX), lowered at start to fit
    /// the open-file limit. At the cap the oldest connection with no request in flight is
    /// closed; when all are busy a new one is answered `503 OVERLOADED`.
    pub max_connections: u64,
    /// A request head must arrive within this (ms), from the accept or from its first byte.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole within this (ms); else 408.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request is closed after this (ms).
    pub idle_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            allowed_origins: Vec::new(),
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// Largest `api.max_connections`.
pub const API_MAX_CONNECTIONS_MAX: u64 = 1_000_000;
/// Largest `api.*_timeout_ms` (one hour).
pub const API_TIMEOUT_MS_MAX: u64 = 3_600_000;

impl ApiConfig {
    /// `Err((key, message))` for a value out of bounds.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 || self.max_connections > API_MAX_CONNECTIONS_MAX {
            return Err((
                "api.max_connections",
                format!(
                    "{} is outside 1..={API_MAX_CONNECTIONS_MAX}",
                    self.max_connections
                ),
            ));
        }
        for (key, value) in [
            ("api.header_read_timeout_ms", self.header_read_timeout_ms),
            ("api.body_read_timeout_ms", self.body_read_timeout_ms),
            ("api.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value == 0 || value > API_TIMEOUT_MS_MAX {
                return Err((key, format!("{value} is outside 1..={API_TIMEOUT_MS_MAX}")));
            }
        }
        Ok(())
    }
}

/// `[engines]`: what a prepared engine may bring with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnginesSettings {
    /// The `env{}` keys a prepared engine may set: whole names, or prefixes ending in `*`.
    /// Loader and shell hooks are refused whatever this says
    /// (`ENV_HOOKS` of the supervisor's admission).
    pub env_allow: Vec<String>,
    /// Whether each engine gets its own cgroup v2 leaf (see [`CgroupMode`]).
    pub cgroup: CgroupMode,
    /// `pids.max` of each engine's leaf (tasks: processes and threads), 1..=[`PIDS_MAX_MAX`].
    pub pids_max: u64,
    /// A group that may read the engine logs: `logs/` becomes 0750 and each log 0640, both
    /// owned by that group. Empty (the default): the daemon's user only.
    pub logs_group: String,
}

/// `[engines] env_allow` by default: the variables inference engines read. A pattern ending
/// in `*` is a prefix; any other is a whole name.
pub const DEFAULT_ENV_ALLOW: [&str; 11] = [
    "CUDA_*",
    "NCCL_*",
    "HF_*",
    "OMP_*",
    "LLAMA_*",
    "VLLM_*",
    "TORCH_*",
    "PYTORCH_*",
    "TRANSFORMERS_*",
    "TZ",
    "LC_*",
];

/// Largest `engines.pids_max` (the kernel's `pid_max` limit).
pub const PIDS_MAX_MAX: u64 = 4_194_304;

/// `engines.cgroup`: whether each engine runs in a cgroup v2 leaf of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Where the daemon may create one; otherwise the reason is logged and engines run in
    /// the daemon's cgroup.
    #[default]
    Auto,
    /// Refuse to start without a leaf per engine with the memory and pids controllers.
    Required,
    /// Never: engines run in the daemon's cgroup.
    Off,
}

impl Default for EnginesSettings {
    fn default() -> Self {
        EnginesSettings {
            env_allow: DEFAULT_ENV_ALLOW.iter().map(|p| p.to_string()).collect(),
            cgroup: CgroupMode::Auto,
            pids_max: 32_768,
            logs_group: String::new(),
        }
    }
}

/// `[gpu]`: how the daemon looks at its GPUs (SPEC section 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuSettings {
    /// Interval of the GPU observation loop (VRAM per engine, processes outside their mask,
    /// Xid events), in ms; 1..=3600000.
    pub poll_interval_ms: u64,
    /// With `require_gpu` and GPUs: after an engine's health passes, how long (ms,
    /// 1..=600000) NVML may take to list it (its pid or a process of its session) on a GPU of
    /// its mask before the start fails with `CPU_SPILLOVER` (OC-POOL-3012).
    pub placement_timeout_ms: u64,
    /// A testing aid: read the GPUs from this JSON file instead of NVML (empty: NVML). See
    /// `gpu::FixtureInventory` for its format. `--gpu-fixture FILE` sets it.
    pub fixture: PathBuf,
    /// Whether two pools may claim the same GPU (or MIG device). False (the default): a
    /// preload whose device mask overlaps that of a pool holding its GPUs is refused with
    /// `INVALID_DEVICE_MASK` naming the other pool (OC-POOL-3020).
    pub allow_sharing: bool,
}

impl GpuSettings {
    /// `Err((key, message))` for a value out of bounds.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.poll_interval_ms == 0 || self.poll_interval_ms > GPU_POLL_INTERVAL_MS_MAX {
            return Err((
                "gpu.poll_interval_ms",
                format!(
                    "{} is outside 1..={GPU_POLL_INTERVAL_MS_MAX}",
                    self.poll_interval_ms
                ),
            ));
        }
        if self.placement_timeout_ms == 0
            || self.placement_timeout_ms > GPU_PLACEMENT_TIMEOUT_MS_MAX
        {
            return Err((
                "gpu.placement_timeout_ms",
                format!(
                    "{} is outside 1..={GPU_PLACEMENT_TIMEOUT_MS_MAX}",
                    self.placement_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

impl Default for GpuSettings {
    fn default() -> Self {
        GpuSettings {
            poll_interval_ms: DEFAULT_GPU_POLL_INTERVAL_MS,
            placement_timeout_ms: DEFAULT_GPU_PLACEMENT_TIMEOUT_MS,
            fixture: PathBuf::new(),
            allow_sharing: false,
        }
    }
}

/// `[journal]`: how the daemon uses its journal (where it lives is `journal_dir`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSettings {
    /// Events between two snapshots of the registry (>= 1).
    pub snapshot_every: u64,
    /// Retention by size of the sealed history (>= 1).
    pub retain_bytes: u64,
    /// Retention by age of the sealed history (>= 1).
    pub retain_ms: u64,
    /// Records per sealed segment (1..=SEGMENT_RECORDS_MAX).
    pub segment_records: u64,
}

impl JournalSettings {
    /// `Err((key, message))` for a value out of bounds.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.snapshot_every == 0 {
            return Err(("journal.snapshot_every", "must be >= 1".into()));
        }
        if self.retain_bytes == 0 {
            return Err(("journal.retain_bytes", "must be >= 1".into()));
        }
        if self.retain_ms == 0 {
            return Err(("journal.retain_ms", "must be >= 1".into()));
        }
        if self.segment_records == 0 || self.segment_records > SEGMENT_RECORDS_MAX {
            return Err((
                "journal.segment_records",
                format!(
                    "{} is outside 1..={SEGMENT_RECORDS_MAX}",
                    self.segment_records
                ),
            ));
        }
        Ok(())
    }
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            retain_bytes: DEFAULT_RETAIN_BYTES,
            retain_ms: DEFAULT_RETAIN_MS,
            segment_records: DEFAULT_SEGMENT_RECORDS,
        }
    }
}

/// Everything [`Config::load`] reads, gathered by the caller.
#[derive(Clone, Default)]
pub struct Sources {
    /// The `--config` file; `None` runs with the defaults (no file is looked for).
    pub file: Option<PathBuf>,
    /// The process environment, passed in by the caller (see [`relevant_env`]); variables
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
/// through clap: [`Config::load`] does that, so that errors name the variable.
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
    /// The file is larger than [`CONFIG_FILE_BYTES_MAX`].
    #[error(
        "config file {}: larger than {limit_bytes} bytes; is it the right file?",
        path.display()
    )]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// [`CONFIG_FILE_BYTES_MAX`].
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

fn unknown_keys_message(path: &Path, keys: &[UnknownKey]) -> String {
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

fn insecure_message(addr: &SocketAddr, token_missing: bool, allow_list_missing: bool) -> String {
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

/// The keys of the file, with the same defaults as [`Config`] (private: the file's shape is
/// [`EXAMPLE_TOML`]). `journal_dir` is optional so that its absence can mean "follow
/// `runtime_dir`"; there is no `api_token` (environment only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    addr: SocketAddr,
    runtime_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    journal_dir: Option<PathBuf>,
    require_gpu: bool,
    allowed_binaries: Vec<PathBuf>,
    engine_user: String,
    allow_root_engines: bool,
    stop_engines_on_shutdown: bool,
    health: HealthPolicy,
    stop: StopPolicy,
    backoff: BackoffPolicy,
    breaker: BreakerPolicy,
    storm: StormPolicy,
    journal: JournalSettings,
    gpu: GpuSettings,
    engines: EnginesSettings,
    api: ApiConfig,
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
            api: ApiConfig::default(),
        }
    }
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
            .field("api", &self.api)
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
                allow_sharing: self.gpu.allow_sharing,
            },
            engines: self.engines.clone(),
            api: self.api.clone(),
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
            api: file.api,
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

fn env_key(var: &str) -> &'static str {
    match var {
        ENV_ADDR => "addr",
        ENV_RUNTIME_DIR => "runtime_dir",
        ENV_JOURNAL_DIR => "journal_dir",
        _ => "api_token",
    }
}

fn default_journal_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("journal")
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    value
        .parse()
        .map_err(|e| format!("`{value}` is not an IP:PORT address ({e})"))
}

fn env_dir(var: &'static str, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
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

fn flag_dir(flag: &'static str, key: &str, dir: &Path) -> Result<PathBuf, ConfigError> {
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
fn parse_token(value: &str) -> Result<Option<String>, ConfigError> {
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

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
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

fn parse_file_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
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
fn schema() -> Table {
    let file = FileConfig {
        journal_dir: Some(default_journal_dir(Path::new(DEFAULT_RUNTIME_DIR))),
        ..FileConfig::default()
    };
    Table::try_from(&file).unwrap_or_default()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Appends every key of `user` absent from `known` (the schema's table at `prefix`). Recurses
/// only where the schema has a table, so its depth is bounded by the schema's.
fn unknown_keys(
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

fn unknown_hint(key: &str, path: &str, known: &Table, root: &Table, prefix: &str) -> String {
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

fn all_paths(table: &Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = join(prefix, key);
        if let Value::Table(sub) = value {
            all_paths(sub, &path, out);
        }
        out.push(path);
    }
}

fn is_near(a: &str, b: &str) -> bool {
    if a.len() > SUGGEST_KEY_CHARS_MAX || b.len() > SUGGEST_KEY_CHARS_MAX {
        return false;
    }
    let d = edit_distance(a, b);
    d <= 2.max(b.chars().count() / 4)
}

/// Levenshtein distance over chars (inputs bounded by [`SUGGEST_KEY_CHARS_MAX`]).
fn edit_distance(a: &str, b: &str) -> usize {
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
fn locate_invalid(user: &Table, known: &Table, prefix: &[&str]) -> Option<(String, String)> {
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
fn value_hint(key: &str) -> String {
    let default = lookup(&schema(), key).map(|v| match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    });
    let form = match key {
        "addr" => ADDR_FORM,
        "allowed_binaries" => "give a list of absolute paths or directory prefixes",
        "engine_user" => "give a user name, or \"\" for none",
        "gpu.fixture" => "give the path of a JSON file of GPUs (a testing aid), or \"\" for NVML",
        "gpu.allow_sharing" => "give true or false",
        "engines.cgroup" => "give \"auto\", \"required\" or \"off\"",
        "engines.logs_group" => "give a group name, or \"\" for none",
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

fn lookup<'a>(table: &'a Table, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Values that deserialize but make no sense; the key is named with its table.
fn validate_file_config(file: &FileConfig, origin: &Origin) -> Result<(), ConfigError> {
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
        validate_paths(file),
        validate_names(file),
    ] {
        check.map_err(|(key, message)| invalid(key, message))?;
    }
    Ok(())
}

/// `runtime_dir` and `journal_dir` not empty; `allowed_binaries` absolute.
fn validate_paths(file: &FileConfig) -> Result<(), (&'static str, String)> {
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
fn validate_names(file: &FileConfig) -> Result<(), (&'static str, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_knows_every_key() {
        let schema = schema();
        let mut paths = Vec::new();
        all_paths(&schema, "", &mut paths);
        for key in [
            "addr",
            "journal_dir",
            "health.preload_interval_ms",
            "backoff.reason_multiplier.cuda_error",
            "journal.snapshot_every",
            "journal.retain_bytes",
            "journal.retain_ms",
            "journal.segment_records",
            "stop_engines_on_shutdown",
            "gpu.poll_interval_ms",
            "gpu.placement_timeout_ms",
            "gpu.fixture",
            "gpu.allow_sharing",
            "api.max_connections",
            "api.header_read_timeout_ms",
            "api.body_read_timeout_ms",
            "api.idle_timeout_ms",
        ] {
            assert!(
                paths.iter().any(|p| p == key),
                "{key} missing from {paths:?}"
            );
        }
        assert!(!paths.iter().any(|p| p == "api_token"));
    }

    #[test]
    fn gpu_keys_are_validated_and_the_fixture_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let load = |text: &str, flags: Overrides| {
            std::fs::write(&file, text).unwrap();
            Config::load(&Sources {
                file: Some(file.clone()),
                env: BTreeMap::new(),
                flags,
            })
        };
        let config = load(
            "[gpu]\npoll_interval_ms = 250\nfixture = \"/tmp/gpus.json\"\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.gpu.poll_interval_ms, 250);
        assert_eq!(config.gpu.fixture, PathBuf::from("/tmp/gpus.json"));
        let flagged = load(
            "[gpu]\nfixture = \"/tmp/gpus.json\"\n",
            Overrides {
                gpu_fixture: Some(PathBuf::from("/tmp/other.json")),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(flagged.gpu.fixture, PathBuf::from("/tmp/other.json"));
        assert!(flagged.to_toml().contains("/tmp/other.json"));

        let zero = load("[gpu]\npoll_interval_ms = 0\n", Overrides::default()).unwrap_err();
        assert_eq!(zero.key(), Some("gpu.poll_interval_ms"), "{zero}");
        let placement = load("[gpu]\nplacement_timeout_ms = 500\n", Overrides::default()).unwrap();
        assert_eq!(placement.gpu.placement_timeout_ms, 500);
        for bad in ["0", "600001"] {
            let err = load(
                &format!("[gpu]\nplacement_timeout_ms = {bad}\n"),
                Overrides::default(),
            )
            .unwrap_err();
            assert_eq!(err.key(), Some("gpu.placement_timeout_ms"), "{err}");
        }
        let unknown = load("[gpu]\npoll_interval = 5\n", Overrides::default()).unwrap_err();
        assert!(
            unknown.to_string().contains("gpu.poll_interval_ms"),
            "{unknown}"
        );
        let empty = load(
            "",
            Overrides {
                gpu_fixture: Some(PathBuf::new()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert_eq!(empty.key(), Some("gpu.fixture"), "{empty}");
        let sharing = load("[gpu]\nallow_sharing = true\n", Overrides::default()).unwrap();
        assert!(sharing.gpu.allow_sharing);
        assert!(
            sharing.to_toml().contains("allow_sharing = true"),
            "{}",
            sharing.to_toml()
        );
        assert!(!Config::default().gpu.allow_sharing);
        let not_bool = load("[gpu]\nallow_sharing = \"yes\"\n", Overrides::default()).unwrap_err();
        assert_eq!(not_bool.key(), Some("gpu.allow_sharing"), "{not_bool}");
        assert!(not_bool.to_string().contains("true or false"), "{not_bool}");
        assert_eq!(Config::default().gpu, GpuSettings::default());
        assert_eq!(
            Config::default().gpu.poll_interval_ms,
            DEFAULT_GPU_POLL_INTERVAL_MS
        );
    }

    #[test]
    fn api_limits_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load(&Sources {
                file: Some(file.clone()),
                env: BTreeMap::new(),
                flags: Overrides::default(),
            })
        };
        let config = load("[api]\nmax_connections = 8\nheader_read_timeout_ms = 500\n").unwrap();
        assert_eq!(config.api.max_connections, 8);
        assert_eq!(config.api.header_read_timeout_ms, 500);
        assert_eq!(config.api.idle_timeout_ms, 60_000);
        for (text, key) in [
            ("max_connections = 0", "api.max_connections"),
            ("max_connections = 1000001", "api.max_connections"),
            ("header_read_timeout_ms = 0", "api.header_read_timeout_ms"),
            ("body_read_timeout_ms = 3600001", "api.body_read_timeout_ms"),
            ("idle_timeout_ms = 0", "api.idle_timeout_ms"),
        ] {
            let err = load(&format!("[api]\n{text}\n")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(err.to_string().contains("outside"), "{err}");
        }
    }

    #[test]
    fn defaults_validate() {
        assert!(validate_file_config(&FileConfig::default(), &Origin::Default).is_ok());
        assert_eq!(DEFAULT_ADDR.parse(), Ok(FileConfig::default().addr));
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("grace_ms", "grace_ms"), 0);
        assert!(is_near("preload_intervall_ms", "preload_interval_ms"));
        assert!(!is_near("bogus", "grace_ms"));
    }
}
