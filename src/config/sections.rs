//! The tables of the configuration that are ours (`[api]`, `[engines]`, `[gpu]`, `[journal]`,
//! `[cluster]`, `[reload]`, `[logs]`):
//! their shapes, defaults and bounds, each validated on its own.
//!
//! Never: reads a file or the environment (the layering does).

use super::{
    DEFAULT_GPU_PLACEMENT_TIMEOUT_MS, DEFAULT_GPU_POLL_INTERVAL_MS,
    DEFAULT_GPU_RELEASE_SLACK_BYTES, DEFAULT_GPU_RELEASE_TIMEOUT_MS, DEFAULT_RETAIN_BYTES,
    DEFAULT_RETAIN_MS, DEFAULT_SEGMENT_RECORDS, DEFAULT_SNAPSHOT_EVERY,
    GPU_PLACEMENT_TIMEOUT_MS_MAX, GPU_POLL_INTERVAL_MS_MAX, GPU_RELEASE_TIMEOUT_MS_MAX,
    SEGMENT_RECORDS_MAX,
};
use pool_core::QuarantinePolicy;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
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
    /// The NVIDIA management library to load (a path to `libnvidia-ml.so.1`), for a driver
    /// installed outside the dynamic loader's path; empty (the default): the
    /// `libnvidia-ml.so.1` that the dynamic loader finds. A file that cannot be loaded is a
    /// "no GPU" state naming it.
    pub nvml_library: PathBuf,
    /// Whether two pools may claim the same GPU (or MIG device). False (the default): a
    /// preload whose device mask overlaps that of a pool holding its GPUs is refused with
    /// `INVALID_DEVICE_MASK` naming the other pool (OC-POOL-3020).
    pub allow_sharing: bool,
    /// Before a restart, trial or reload starts on the GPUs of the last engine: how long (ms,
    /// 1..=600000) NVML may take to list none of that engine's session's processes on them
    /// and to show their memory free again; past it the start fails, naming what is held.
    pub release_timeout_ms: u64,
    /// How much of the last engine's memory may still show as used when it counts as freed
    /// (bytes per GPU; the driver's own bookkeeping moves a little).
    pub release_slack_bytes: u64,
    /// Hardware-class faults of one GPU (hardware Xids, uncorrectable ECC, driver resets)
    /// within `quarantine_window_ms` that quarantine it: no engine starts on it until
    /// `POST /v2/gpus/{uuid}/unquarantine`. 1..=64.
    pub quarantine_after: u32,
    /// The sliding window of `quarantine_after`, in ms (>= 1).
    pub quarantine_window_ms: u64,
}

impl GpuSettings {
    /// The quarantine policy of these settings (for the core).
    pub fn quarantine(&self) -> QuarantinePolicy {
        QuarantinePolicy {
            after: self.quarantine_after,
            window_ms: self.quarantine_window_ms,
        }
    }

    /// `Err((key, message))` for a value out of bounds.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
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
        if self.release_timeout_ms == 0 || self.release_timeout_ms > GPU_RELEASE_TIMEOUT_MS_MAX {
            return Err((
                "gpu.release_timeout_ms",
                format!(
                    "{} is outside 1..={GPU_RELEASE_TIMEOUT_MS_MAX}",
                    self.release_timeout_ms
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
            nvml_library: PathBuf::new(),
            allow_sharing: false,
            release_timeout_ms: DEFAULT_GPU_RELEASE_TIMEOUT_MS,
            release_slack_bytes: DEFAULT_GPU_RELEASE_SLACK_BYTES,
            quarantine_after: QuarantinePolicy::default().after,
            quarantine_window_ms: QuarantinePolicy::default().window_ms,
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
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
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

/// The JetStream stream the journal is published to, by default.
pub const DEFAULT_CLUSTER_STREAM: &str = "POOL_EVENTS";
/// The most replicas a stream may ask for (a JetStream cluster of at most 5 servers).
pub const CLUSTER_REPLICAS_MAX: u64 = 5;
/// The key-value bucket of the current registry (`<node>.<pool>`), by default.
pub const DEFAULT_CLUSTER_REGISTRY_BUCKET: &str = "POOL_REGISTRY";
/// The key-value bucket of the nodes' heartbeats (keys expire), by default.
pub const DEFAULT_CLUSTER_NODES_BUCKET: &str = "POOL_NODES";
/// How often a node heartbeats into the nodes bucket, by default (its key lives 3 times this).
pub const DEFAULT_CLUSTER_HEARTBEAT_MS: u64 = 5_000;
/// The least time between two rounds of puts into the registry bucket, by default.
pub const DEFAULT_CLUSTER_REGISTRY_EVERY_MS: u64 = 250;
/// The most bytes of unpublished sealed segments retention keeps beyond `[journal]
/// retain_bytes` while NATS is away, by default (8 GiB).
pub const DEFAULT_CLUSTER_UNPUBLISHED_BYTES_MAX: u64 = 8 << 30;

/// `[cluster]`: publishing the journal to NATS JetStream (off while `nats_url` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// The NATS server(s) (`nats://HOST:PORT`, several separated by commas); empty: this
    /// node publishes nothing.
    pub nats_url: String,
    /// This node's name in subjects and keys; empty: the host name.
    pub node_id: String,
    /// The JetStream stream of the events.
    pub stream: String,
    /// Its replicas (1..=[`CLUSTER_REPLICAS_MAX`]; at most the servers of the cluster), and
    /// the key-value buckets'.
    pub replicas: u64,
    /// The key-value bucket of the current registry.
    pub registry_bucket: String,
    /// The key-value bucket of the nodes' heartbeats.
    pub nodes_bucket: String,
    /// How often this node heartbeats (1000..=60000 ms); a node is shown down once its last
    /// heartbeat is older than 3 times this.
    pub heartbeat_ms: u64,
    /// The least time between two rounds of puts into the registry bucket (0..=60000 ms): a
    /// pool that changed meanwhile is put once, at its last seq (the bucket's staleness bound).
    pub registry_every_ms: u64,
    /// Retention keeps unpublished events beyond `[journal] retain_bytes` up to this many
    /// bytes of sealed segments (then drops the oldest anyway, counted by
    /// `cluster_unpublished_dropped_events_total`).
    pub unpublished_bytes_max: u64,
    /// A NATS credentials file (user JWT and NKey seed, as `nsc` writes it); "" = none.
    pub creds_file: String,
    /// A file holding a token for the server's `authorization { token }`; "" = none.
    pub token_file: String,
    /// CA certificates (PEM) that verify the servers; set, TLS is required.
    pub tls_ca_file: String,
    /// A client certificate (PEM) for mutual TLS, with `tls_key_file`.
    pub tls_cert_file: String,
    /// The client certificate's private key (PEM).
    pub tls_key_file: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            nats_url: String::new(),
            node_id: String::new(),
            stream: DEFAULT_CLUSTER_STREAM.to_string(),
            replicas: 1,
            registry_bucket: DEFAULT_CLUSTER_REGISTRY_BUCKET.to_string(),
            nodes_bucket: DEFAULT_CLUSTER_NODES_BUCKET.to_string(),
            heartbeat_ms: DEFAULT_CLUSTER_HEARTBEAT_MS,
            registry_every_ms: DEFAULT_CLUSTER_REGISTRY_EVERY_MS,
            unpublished_bytes_max: DEFAULT_CLUSTER_UNPUBLISHED_BYTES_MAX,
            creds_file: String::new(),
            token_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

impl ClusterSettings {
    /// Node id and stream name as NATS allows them (no `.`, `*`, `>` or space in a stream
    /// name; a node id of at most 64 letters, digits, `.`, `_` or `-`), replicas in bounds.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let id_ok = |id: &str| {
            id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !id_ok(&self.node_id) {
            let why = format!(
                "{:?}: at most 64 letters, digits, '.', '_' or '-'",
                self.node_id
            );
            return Err(("cluster.node_id", why));
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        };
        for (key, name) in [
            ("cluster.stream", &self.stream),
            ("cluster.registry_bucket", &self.registry_bucket),
            ("cluster.nodes_bucket", &self.nodes_bucket),
        ] {
            if !name_ok(name) {
                return Err((
                    key,
                    format!("{name:?}: 1 to 64 letters, digits, '_' or '-'"),
                ));
            }
        }
        for server in self
            .nats_url
            .split(',')
            .filter(|_| !self.nats_url.is_empty())
        {
            let server = server.trim();
            let rest = server
                .split_once("://")
                .map_or(Some(server), |(scheme, rest)| {
                    matches!(scheme, "nats" | "tls" | "ws" | "wss").then_some(rest)
                });
            if rest.is_none_or(|rest| rest.is_empty() || rest.contains(char::is_whitespace)) {
                let why = format!(
                    "{server:?}: each server is nats://HOST:PORT (or tls://, ws://, wss://)"
                );
                return Err(("cluster.nats_url", why));
            }
        }
        if self.replicas == 0 || self.replicas > CLUSTER_REPLICAS_MAX {
            let why = format!("{} is outside 1..={CLUSTER_REPLICAS_MAX}", self.replicas);
            return Err(("cluster.replicas", why));
        }
        if !(1_000..=60_000).contains(&self.heartbeat_ms) {
            let why = format!("{} is outside 1000..=60000", self.heartbeat_ms);
            return Err(("cluster.heartbeat_ms", why));
        }
        if self.registry_every_ms > 60_000 {
            let why = format!("{} is over 60000", self.registry_every_ms);
            return Err(("cluster.registry_every_ms", why));
        }
        if self.unpublished_bytes_max == 0 {
            return Err(("cluster.unpublished_bytes_max", "must be >= 1".into()));
        }
        self.validate_access()
    }

    /// The credential and TLS files: absolute paths, a certificate only with its key.
    fn validate_access(&self) -> Result<(), (&'static str, String)> {
        for (key, path) in [
            ("cluster.creds_file", &self.creds_file),
            ("cluster.token_file", &self.token_file),
            ("cluster.tls_ca_file", &self.tls_ca_file),
            ("cluster.tls_cert_file", &self.tls_cert_file),
            ("cluster.tls_key_file", &self.tls_key_file),
        ] {
            if !path.is_empty() && !path.starts_with('/') {
                return Err((key, format!("{path:?} is not an absolute path")));
            }
        }
        if !self.creds_file.is_empty() && !self.token_file.is_empty() {
            let why = "set creds_file or token_file, not both".to_string();
            return Err(("cluster.token_file", why));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            let why = "tls_cert_file and tls_key_file go together (mutual TLS)".to_string();
            return Err(("cluster.tls_key_file", why));
        }
        Ok(())
    }
}

/// `[reload]`: how a reload may start the new engine beside the old one (a surge).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// The ports a surge's new engine may listen on, `"START-END"` (inclusive, both > 0,
    /// START <= END); `""` (the default): none, so `auto` reloads drain first and `surge` is
    /// refused.
    pub surge_ports: String,
}

impl ReloadSettings {
    /// The range of `surge_ports`; `None` when it is empty (or invalid, which
    /// the configuration refuses at start).
    pub fn surge_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        parse_port_range(&self.surge_ports).ok().flatten()
    }

    /// `Err((key, message))` for a value that is no port range.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        parse_port_range(&self.surge_ports)
            .map(|_| ())
            .map_err(|message| ("reload.surge_ports", message))
    }
}

/// `[logs]`: how large an engine's log may grow before it is rotated (copy-truncate, see
/// `supervisor::logrotate`), and how many rotated parts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsSettings {
    /// A live engine log over this many bytes is rotated (before each start, and while the
    /// engine runs: checked every few seconds), at least [`LOGS_MAX_BYTES_MIN`].
    pub max_bytes: u64,
    /// Rotated parts kept: `<log>.1` (newest) to `<log>.<keep>`, 1..=[`LOGS_KEEP_MAX`].
    pub keep: u32,
}

/// `logs.max_bytes` by default (64 MiB).
pub const DEFAULT_LOGS_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// `logs.keep` by default.
pub const DEFAULT_LOGS_KEEP: u32 = 3;
/// Smallest `logs.max_bytes`: a log smaller than a page would rotate at every look.
pub const LOGS_MAX_BYTES_MIN: u64 = 4_096;
/// Largest `logs.keep`.
pub const LOGS_KEEP_MAX: u32 = 100;

impl Default for LogsSettings {
    fn default() -> Self {
        LogsSettings {
            max_bytes: DEFAULT_LOGS_MAX_BYTES,
            keep: DEFAULT_LOGS_KEEP,
        }
    }
}

impl LogsSettings {
    /// `Err((key, message))` for a value out of bounds.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_bytes < LOGS_MAX_BYTES_MIN {
            return Err((
                "logs.max_bytes",
                format!(
                    "{} is below {LOGS_MAX_BYTES_MIN}; give at least {LOGS_MAX_BYTES_MIN} bytes",
                    self.max_bytes
                ),
            ));
        }
        if self.keep == 0 || self.keep > LOGS_KEEP_MAX {
            return Err((
                "logs.keep",
                format!(
                    "{} is outside 1..={LOGS_KEEP_MAX}; keep at least one rotated part",
                    self.keep
                ),
            ));
        }
        Ok(())
    }
}

/// `"START-END"` as an inclusive range (`""`: none); `Err` says what is wrong.
fn parse_port_range(text: &str) -> Result<Option<std::ops::RangeInclusive<u16>>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let port = |part: &str| match part.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "{text:?}: {part:?} is not a port (1..=65535); give \"START-END\" such as \
             \"9300-9309\""
        )),
        Ok(port) => Ok(port),
    };
    let (start, end) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not a range; give \"START-END\" such as \"9300-9309\"")
    })?;
    let (start, end) = (port(start)?, port(end)?);
    if start > end {
        return Err(format!("{text:?}: START {start} is above END {end}"));
    }
    Ok(Some(start..=end))
}
