//! Mirrors of the core types the API reads as request bodies (`PreparedEngine`, `Handoff`) and
//! of the journal's envelope, for the document only; `tests/mirrors.rs` keeps each equal to its
//! type. What the API answers about pools and GPUs is not mirrored: those wire types are
//! `api/dto.rs`, and their `ToSchema` derives are the schemas.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder};
use utoipa::openapi::{RefOr, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// Multi-GPU split: `"auto"` or explicit ratios, one per GPU of the mask.
#[derive(Serialize)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct TensorSplitSchema;

impl PartialSchema for TensorSplitSchema {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["auto"])),
            )
            .item(
                ArrayBuilder::new().items(
                    ObjectBuilder::new()
                        .schema_type(Type::Number)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
                ),
            )
            .description(Some(
                "Multi-GPU split: \"auto\" or explicit ratios, one per GPU of the mask",
            ))
            .into()
    }
}

impl ToSchema for TensorSplitSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TensorSplit")
    }
}

/// The engine provisioner's output (SPEC section 5): what to spawn and how to reach it.
#[derive(Serialize, ToSchema)]
#[schema(as = PreparedEngine)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct PreparedEngineSchema {
    /// Absolute path of the engine binary (checked against `allowed_binaries`).
    pub(in crate::api) binary_path: String,
    /// Arguments, in order.
    #[serde(default)]
    pub(in crate::api) flags: Vec<String>,
    /// Host the engine listens on; the health probe goes there.
    pub(in crate::api) host: String,
    /// Port the engine listens on.
    #[schema(maximum = 65535)]
    pub(in crate::api) port: u16,
    /// The model file.
    pub(in crate::api) model_path: String,
    /// The engine's version as the provisioner knows it.
    pub(in crate::api) engine_version: String,
    /// Must equal the pool id of the path.
    pub(in crate::api) pool_id: String,
    /// Replica id, part of the handoff file name.
    pub(in crate::api) replica_id: String,
    /// GPUs the engine may use (`"0,1"`, `"GPU0"`, UUIDs).
    #[serde(default)]
    pub(in crate::api) device_mask: Option<String>,
    /// Engine kind for display; defaults to the binary's file name.
    #[serde(default)]
    pub(in crate::api) engine: Option<String>,
    /// Extra environment (besides PATH, HOME, LANG and the CUDA variables).
    #[serde(default)]
    pub(in crate::api) env: BTreeMap<String, String>,
    /// Health route.
    #[serde(default)]
    #[schema(default = "/health")]
    pub(in crate::api) health_path: String,
    /// Slots the engine serves; when absent the daemon asks `/props` or reads `--parallel`.
    #[serde(default)]
    pub(in crate::api) slots_total: Option<u32>,
    /// VRAM the engine needs.
    #[serde(default)]
    pub(in crate::api) vram_required_bytes: Option<u64>,
    /// Host RAM the engine needs.
    #[serde(default)]
    pub(in crate::api) ram_required_bytes: Option<u64>,
    /// Multi-GPU split.
    #[serde(default)]
    pub(in crate::api) tensor_split: Option<TensorSplitSchema>,
    /// The engine's own progress probe; when absent its progress is read from `/slots` or
    /// `/metrics` as its kind offers.
    #[serde(default)]
    pub(in crate::api) progress: Option<ProgressRequestSchema>,
}

/// A progress probe the engine declares: while its pool holds leases, this request is sent
/// every `[health] progress_interval_ms`; an answer with `expect_status` within
/// `[health] stall_after_ms` is progress, anything else is none, and an engine that makes
/// none for `stall_after_ms` is restarted as `stalled`.
#[derive(Serialize, ToSchema)]
#[schema(as = ProgressRequest)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct ProgressRequestSchema {
    /// The route, starting with `/`.
    #[schema(max_length = 1024, pattern = "^/")]
    pub(in crate::api) path: String,
    /// `GET`, `POST` or `PUT`.
    #[serde(default)]
    #[schema(default = "GET", pattern = "^(GET|POST|PUT)$")]
    pub(in crate::api) method: String,
    /// The body, sent as `application/json` (`POST` and `PUT` only).
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub(in crate::api) body: Option<String>,
    /// The status a working engine answers.
    #[serde(default)]
    #[schema(default = 200, minimum = 100, maximum = 599)]
    pub(in crate::api) expect_status: u16,
}

/// The model of a handoff.
#[derive(Serialize, ToSchema)]
#[schema(as = HandoffModel)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct HandoffModelSchema {
    /// The model file the engine serves.
    pub(in crate::api) path: String,
}

/// The handoff document of an engine started by someone else (SPEC section 6).
#[derive(Serialize, ToSchema)]
#[schema(as = Handoff)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct HandoffSchema {
    /// Engine kind (`"llamacpp"`).
    pub(in crate::api) engine: String,
    /// Engine version reported by the engine.
    pub(in crate::api) engine_version: String,
    /// Where the engine serves; `{url}/health` must answer 200.
    pub(in crate::api) url: String,
    /// The pool: must equal the path's id.
    pub(in crate::api) pool_id: String,
    /// The replica.
    pub(in crate::api) replica_id: String,
    /// The model served.
    pub(in crate::api) model: HandoffModelSchema,
    /// The engine's arguments.
    #[serde(default)]
    pub(in crate::api) flags: Vec<String>,
    /// GPUs the engine uses.
    #[serde(default)]
    pub(in crate::api) device_mask: Option<String>,
    /// Slots the engine serves (1..=4096).
    #[schema(minimum = 1, maximum = 4096)]
    pub(in crate::api) slots_total: u32,
    /// The engine's pid, when known (not 0).
    #[serde(default)]
    pub(in crate::api) pid: Option<u32>,
}

/// An event as the journal's JSON form shows it: `kind` and the event's fields.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct EventSchema {
    /// The event's kind (`EngineSpawned`, `PoolReady`, ...); its fields follow.
    pub(in crate::api) kind: String,
}

/// A journaled event with its position.
#[derive(Serialize, ToSchema)]
#[schema(as = Envelope)]
#[allow(dead_code)] // read by the documentation only
pub(in crate::api) struct EnvelopeSchema {
    /// Position in the journal (1, 2, 3, ...).
    pub(in crate::api) seq: u64,
    /// When it was decided, ms since the Unix epoch.
    pub(in crate::api) ts_ms: u64,
    /// The pool; absent (null) for node-level events.
    pub(in crate::api) pool_id: Option<String>,
    /// Seq of the event that caused this one.
    pub(in crate::api) cause: Option<u64>,
    /// The event.
    pub(in crate::api) event: EventSchema,
}
