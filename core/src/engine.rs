//! What an engine is: the provisioner's [`PreparedEngine`], the [`Handoff`] document that
//! announces a ready engine, and the node's GPUs ([`GpuInfo`]; masks and placement are in
//! [`crate::gpu`]).
//!
//! Owns: the shape and validation of these documents, and pure helpers over them (the reload
//! rewrite of the model path).
//! Never: spawns, reads files or talks to NVML; the shell does that and reports observations.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::progress::ProgressRequest;

// The mask helpers moved to `crate::gpu`; re-exported here so older paths still compile.
pub use crate::gpu::{mask_covers, mask_tokens, token_matches, validate_mask};

/// The most flags a prepared engine may carry.
pub const FLAGS_MAX: usize = 512;
/// The most environment variables a prepared engine may carry.
pub const ENV_MAX: usize = 256;
/// The longest string field of a prepared engine or handoff, in bytes.
pub const FIELD_LEN_MAX: usize = 4096;
/// The most slots a pool may announce; bounds the lease set kept in the state.
pub const SLOTS_MAX: u32 = 4096;

/// The engine provisioner's output (SPEC section 5): everything needed to spawn one engine.
///
/// Recorded whole in `PreloadRequested` / `EngineStartRequested`, so a restart, a rollback or
/// a replay can spawn it again without the provisioner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparedEngine {
    /// Absolute path of the engine binary (checked against `allowed_binaries` by the shell).
    pub binary_path: String,
    /// Arguments, in order.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Host the engine listens on; the health probe goes there.
    pub host: String,
    /// Port the engine listens on.
    pub port: u16,
    /// The model file; a reload replaces it (and equal flags).
    pub model_path: String,
    /// The engine's version as the provisioner knows it (the health check may refine it).
    pub engine_version: String,
    /// Must equal the pool id of the request.
    pub pool_id: String,
    /// Replica id, part of the handoff file name; preserved by reload.
    pub replica_id: String,
    /// GPUs the engine may use (`"0,1"`, `"GPU0"`, UUIDs); `None` = no mask given.
    #[serde(default)]
    pub device_mask: Option<String>,
    /// Engine kind for display (`"llamacpp"`, `"vllm"`); defaults to the binary's file name.
    #[serde(default)]
    pub engine: Option<String>,
    /// Extra environment (besides PATH, HOME, LANG and the CUDA variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Health route, `/health` unless told.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Slots the engine serves; when absent the shell asks `/props` or reads `--parallel`.
    #[serde(default)]
    pub slots_total: Option<u32>,
    /// VRAM the engine needs (checked against free VRAM by the shell).
    #[serde(default)]
    pub vram_required_bytes: Option<u64>,
    /// Host RAM the engine needs.
    #[serde(default)]
    pub ram_required_bytes: Option<u64>,
    /// Multi-GPU split: `"auto"` or explicit ratios; `None` = no split. A preload records an
    /// `"auto"` split already planned (as `Ratios`), so restarts and replays reuse the plan.
    #[serde(default)]
    pub tensor_split: Option<TensorSplit>,
    /// The engine's own progress probe; `None`: read `/slots` or `/metrics` as its kind
    /// offers (see [`crate::progress`]).
    #[serde(default)]
    pub progress: Option<Box<ProgressRequest>>,
}

fn default_health_path() -> String {
    "/health".to_string()
}

impl PreparedEngine {
    /// Checks the fields the core can check without I/O; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_strings()?;
        if self.port == 0 {
            return Err("prepared.port must be 1..=65535".to_string());
        }
        if !self.health_path.starts_with('/') {
            return Err("prepared.health_path must start with '/'".to_string());
        }
        self.validate_lists()?;
        if let Some(mask) = &self.device_mask {
            if mask.len() > FIELD_LEN_MAX || mask_tokens(mask).next().is_none() {
                return Err("prepared.device_mask is empty or too long".to_string());
            }
        }
        if self
            .engine
            .as_ref()
            .is_some_and(|e| e.len() > FIELD_LEN_MAX)
        {
            return Err("prepared.engine is too long".to_string());
        }
        if let Some(progress) = &self.progress {
            progress.validate()?;
        }
        self.validate_placement()
    }

    /// The string fields: none longer than `FIELD_LEN_MAX`, the required ones not empty.
    fn validate_strings(&self) -> Result<(), String> {
        let strings: [(&str, &str); 7] = [
            ("binary_path", &self.binary_path),
            ("host", &self.host),
            ("model_path", &self.model_path),
            ("engine_version", &self.engine_version),
            ("pool_id", &self.pool_id),
            ("replica_id", &self.replica_id),
            ("health_path", &self.health_path),
        ];
        for (name, value) in strings {
            if value.len() > FIELD_LEN_MAX {
                return Err(format!(
                    "prepared.{name} is longer than {FIELD_LEN_MAX} bytes"
                ));
            }
        }
        for (name, value) in [
            ("binary_path", &self.binary_path),
            ("host", &self.host),
            ("model_path", &self.model_path),
            ("replica_id", &self.replica_id),
        ] {
            if value.trim().is_empty() {
                return Err(format!("prepared.{name} is empty"));
            }
        }
        Ok(())
    }

    /// `flags` and `env`: bounded in count and length; env names valid.
    fn validate_lists(&self) -> Result<(), String> {
        if self.flags.len() > FLAGS_MAX {
            return Err(format!("prepared.flags has more than {FLAGS_MAX} entries"));
        }
        if self.flags.iter().any(|f| f.len() > FIELD_LEN_MAX) {
            return Err(format!(
                "prepared.flags has an entry longer than {FIELD_LEN_MAX} bytes"
            ));
        }
        if self.env.len() > ENV_MAX {
            return Err(format!("prepared.env has more than {ENV_MAX} entries"));
        }
        if self.env.iter().any(|(k, v)| {
            k.is_empty() || k.contains('=') || k.len() > FIELD_LEN_MAX || v.len() > FIELD_LEN_MAX
        }) {
            return Err("prepared.env has an invalid name or an over-long value".to_string());
        }
        Ok(())
    }

    /// `slots_total` and `tensor_split`.
    fn validate_placement(&self) -> Result<(), String> {
        match self.slots_total {
            Some(0) => return Err("prepared.slots_total must be at least 1".to_string()),
            Some(n) if n > SLOTS_MAX => {
                return Err(format!("prepared.slots_total must be at most {SLOTS_MAX}"))
            }
            _ => {}
        }
        if let Some(TensorSplit::Ratios(ratios)) = &self.tensor_split {
            if ratios.is_empty()
                || ratios.len() > 64
                || ratios.iter().any(|r| !r.is_finite() || *r < 0.0)
            {
                return Err(
                    "prepared.tensor_split ratios must be 1..=64 finite non-negative numbers"
                        .to_string(),
                );
            }
        }
        Ok(())
    }

    /// The engine kind shown in status: `engine` when given, else the binary's file name.
    pub fn engine_name(&self) -> String {
        match &self.engine {
            Some(name) if !name.is_empty() => name.clone(),
            _ => self
                .binary_path
                .rsplit('/')
                .next()
                .unwrap_or(&self.binary_path)
                .to_string(),
        }
    }

    /// The engine a reload starts: the same one with `model_path` and every flag equal to the
    /// old path replaced by `new_model_path` (pool id, replica id and device mask preserved).
    pub fn with_model(&self, new_model_path: &str) -> PreparedEngine {
        let mut next = self.clone();
        for flag in &mut next.flags {
            if *flag == self.model_path {
                *flag = new_model_path.to_string();
            }
        }
        next.model_path = new_model_path.to_string();
        next
    }

    /// The engine a surge starts beside this one: the same with `port` and every flag equal
    /// to the old port (`"8080"`, or the value of `--port=8080`) replaced by `new_port`.
    pub fn with_port(&self, new_port: u16) -> PreparedEngine {
        let mut next = self.clone();
        let old = self.port.to_string();
        let new = new_port.to_string();
        for flag in &mut next.flags {
            if *flag == old {
                *flag = new.clone();
            } else if let Some((name, value)) = flag.split_once('=') {
                if value == old && name.starts_with('-') {
                    *flag = format!("{name}={new}");
                }
            }
        }
        next.port = new_port;
        next
    }

    /// The URL the engine serves (for the handoff file).
    pub fn url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// How a model is split across the GPUs of a multi-GPU mask.
///
/// Human-readable formats (JSON, TOML) use the SPEC's form: the string `"auto"` or a list of
/// ratios. Binary formats (bincode in the journal) use `Option<Vec<f64>>` (`None` = auto),
/// because bincode cannot decode self-describing ("untagged") forms.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorSplit {
    /// Ratios computed from free VRAM by the core's planner (`gpu::auto_split_units`) when
    /// the preload is decided; recorded as `Ratios` from then on.
    Auto,
    /// Explicit ratios, one per GPU of the mask.
    Ratios(Vec<f64>),
}

impl Serialize for TensorSplit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self {
                TensorSplit::Auto => serializer.serialize_str("auto"),
                TensorSplit::Ratios(r) => r.serialize(serializer),
            }
        } else {
            let compact: Option<&Vec<f64>> = match self {
                TensorSplit::Auto => None,
                TensorSplit::Ratios(r) => Some(r),
            };
            compact.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for TensorSplit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            struct SplitVisitor;
            impl<'de> Visitor<'de> for SplitVisitor {
                type Value = TensorSplit;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("\"auto\" or a list of ratios")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<TensorSplit, E> {
                    if v == "auto" {
                        Ok(TensorSplit::Auto)
                    } else {
                        Err(E::invalid_value(de::Unexpected::Str(v), &self))
                    }
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TensorSplit, A::Error> {
                    let mut ratios = Vec::new();
                    while let Some(r) = seq.next_element::<f64>()? {
                        if ratios.len() >= 64 {
                            return Err(de::Error::custom("more than 64 tensor_split ratios"));
                        }
                        ratios.push(r);
                    }
                    Ok(TensorSplit::Ratios(ratios))
                }
            }
            deserializer.deserialize_any(SplitVisitor)
        } else {
            let compact = Option::<Vec<f64>>::deserialize(deserializer)?;
            Ok(match compact {
                None => TensorSplit::Auto,
                Some(r) => TensorSplit::Ratios(r),
            })
        }
    }
}

/// The `model` object of a handoff file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffModel {
    /// The model file the engine serves.
    pub path: String,
}

/// The handoff document (SPEC section 6): written by us when a pool becomes ready, or by an
/// engine provisioner that started an engine itself (then registered through
/// `Command::RegisterHandoff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Engine kind (`"llamacpp"`).
    pub engine: String,
    /// Engine version reported by the engine.
    pub engine_version: String,
    /// Where the engine serves.
    pub url: String,
    /// The pool.
    pub pool_id: String,
    /// The replica.
    pub replica_id: String,
    /// The model served.
    pub model: HandoffModel,
    /// The engine's arguments.
    #[serde(default)]
    pub flags: Vec<String>,
    /// GPUs the engine uses.
    #[serde(default)]
    pub device_mask: Option<String>,
    /// Slots the engine serves.
    pub slots_total: u32,
    /// The engine's pid, when known; watched like an adopted engine.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl Handoff {
    /// Checks the fields; the error names the field (for `HandoffRejected`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, why: &str| Err((field.to_string(), why.to_string()));
        for (name, value) in [
            ("engine", &self.engine),
            ("engine_version", &self.engine_version),
            ("url", &self.url),
            ("pool_id", &self.pool_id),
            ("replica_id", &self.replica_id),
            ("model.path", &self.model.path),
        ] {
            if value.len() > FIELD_LEN_MAX {
                return bad(name, "too long");
            }
        }
        if crate::PoolId::new(&self.pool_id).is_err() {
            return bad("pool_id", "not a valid pool id");
        }
        if self.url.trim().is_empty() {
            return bad("url", "empty");
        }
        if let Err(why) = handoff_url_host_port(&self.url) {
            return bad("url", why);
        }
        if self.slots_total == 0 || self.slots_total > SLOTS_MAX {
            return bad("slots_total", "must be 1..=4096");
        }
        if self.flags.len() > FLAGS_MAX || self.flags.iter().any(|f| f.len() > FIELD_LEN_MAX) {
            return bad("flags", "too many or too long");
        }
        if let Some(mask) = &self.device_mask {
            if mask.len() > FIELD_LEN_MAX || mask_tokens(mask).next().is_none() {
                return bad("device_mask", "empty or too long");
            }
        }
        if self.pid == Some(0) {
            return bad("pid", "must not be 0");
        }
        Ok(())
    }
}

/// The host and port of a handoff URL, which must be `http://HOST:PORT` (a trailing `/`
/// allowed) with HOST an IP address (`[...]` for IPv6) or a host name: the daemon probes
/// `{url}/health` and nothing else, so no user, path, query or fragment is taken. (Whether
/// HOST is this node's is the shell's check, for handoffs that come from outside.)
pub fn handoff_url_host_port(url: &str) -> Result<(&str, u16), &'static str> {
    const SHAPE: &str = "must be http://HOST:PORT, HOST an IP address of this node or \
                         localhost, with no user, path, query or fragment";
    let is_name = |host: &str| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    let rest = url.strip_prefix("http://").ok_or(SHAPE)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(SHAPE);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6.split_once("]:").ok_or(SHAPE)?;
        (host, port)
    } else {
        authority.rsplit_once(':').ok_or(SHAPE)?
    };
    let port: u16 = port.parse().map_err(|_| SHAPE)?;
    let is_ip = host.parse::<core::net::IpAddr>().is_ok();
    if port == 0 || !(is_ip || is_name(host)) {
        return Err(SHAPE);
    }
    Ok((host, port))
}

/// One GPU of the node's inventory (SPEC section 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index (PCI bus order).
    pub index: u32,
    /// `GPU-...` UUID (MIG devices are `gpu::MigDeviceInfo`).
    pub uuid: String,
    /// Marketing name.
    pub name: String,
    /// `"8.6"`.
    pub compute_capability: String,
    /// Total VRAM.
    pub vram_total_bytes: u64,
    /// Free VRAM when observed.
    pub vram_free_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_urls_name_a_host_and_port_only() {
        assert_eq!(
            handoff_url_host_port("http://127.0.0.1:8080"),
            Ok(("127.0.0.1", 8080))
        );
        assert_eq!(handoff_url_host_port("http://[::1]:9/"), Ok(("::1", 9)));
        assert_eq!(
            handoff_url_host_port("http://gpu-node-1.local:80"),
            Ok(("gpu-node-1.local", 80))
        );
        for bad in [
            "https://127.0.0.1:1",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "http://u:p@127.0.0.1:1",
            "http://127.0.0.1:1/health",
            "http://127.0.0.1:1?x",
            "http://127.0.0.1:1#x",
            "http://bad host:1",
        ] {
            assert!(handoff_url_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tensor_split_json_and_bincode() {
        let auto: TensorSplit = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(auto, TensorSplit::Auto);
        let r: TensorSplit = serde_json::from_str("[0.5,0.5]").unwrap();
        assert_eq!(r, TensorSplit::Ratios(vec![0.5, 0.5]));
        for v in [auto, r] {
            let bytes = bincode::serialize(&v).unwrap();
            assert_eq!(bincode::deserialize::<TensorSplit>(&bytes).unwrap(), v);
        }
    }
}
