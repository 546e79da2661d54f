//! The event shapes of format versions 1 to 4 that version 5 changed, frozen, and the decoder
//! of a version-4 record into today's [`Event`].
//!
//! Version 5 gave the prepared engine a last field, `progress` (its declared progress probe),
//! which reshapes the two variants that record an engine whole: `PreloadRequested` and
//! `EngineStartRequested`. A record of version 4 is read as [`EventV4`]: the variant index
//! first (bincode encodes it as a `u32`), then, for those two, the old engine (upcast with
//! `progress: None`: none declared), or today's variant for every other index (unchanged
//! since). Records of versions 1 to 3 read those two variants through `engine_variant` too
//! (see `v3.rs`).
//!
//! Owns: the frozen shapes. Never: changes (they stand for records already on disk).

use std::collections::BTreeMap;
use std::fmt;

use pool_core::{Event, PreparedEngine, StartPurpose, TensorSplit};
use serde::de::{self, Deserializer, EnumAccess, Visitor};
use serde::Deserialize;

use super::v3::ReadIndex;

/// `Event::PreloadRequested`'s variant index (bincode).
const PRELOAD_REQUESTED: u32 = 6;
/// `Event::EngineStartRequested`'s variant index (bincode).
const ENGINE_START_REQUESTED: u32 = 37;

/// The prepared engine as versions 1 to 4 wrote it: no `progress`.
#[derive(Debug, Deserialize)]
struct PreparedEngineV4 {
    binary_path: String,
    flags: Vec<String>,
    host: String,
    port: u16,
    model_path: String,
    engine_version: String,
    pool_id: String,
    replica_id: String,
    device_mask: Option<String>,
    engine: Option<String>,
    env: BTreeMap<String, String>,
    health_path: String,
    slots_total: Option<u32>,
    vram_required_bytes: Option<u64>,
    ram_required_bytes: Option<u64>,
    tensor_split: Option<TensorSplit>,
}

impl From<PreparedEngineV4> for PreparedEngine {
    fn from(old: PreparedEngineV4) -> PreparedEngine {
        PreparedEngine {
            binary_path: old.binary_path,
            flags: old.flags,
            host: old.host,
            port: old.port,
            model_path: old.model_path,
            engine_version: old.engine_version,
            pool_id: old.pool_id,
            replica_id: old.replica_id,
            device_mask: old.device_mask,
            engine: old.engine,
            env: old.env,
            health_path: old.health_path,
            slots_total: old.slots_total,
            vram_required_bytes: old.vram_required_bytes,
            ram_required_bytes: old.ram_required_bytes,
            tensor_split: old.tensor_split,
            progress: None,
        }
    }
}

/// `PreloadRequested` as versions 1 to 4 wrote it.
#[derive(Debug, Deserialize)]
struct PreloadRequestedV4 {
    engine: PreparedEngineV4,
}

/// `EngineStartRequested` as versions 1 to 4 wrote it.
#[derive(Debug, Deserialize)]
struct EngineStartRequestedV4 {
    engine: PreparedEngineV4,
    attempt: u32,
    purpose: StartPurpose,
}

/// The variants of index `index` that record a prepared engine, read in their shape of
/// versions 1 to 4; `Ok(None)` for any other index (the variant is left unread).
pub(super) fn engine_variant<'de, V: de::VariantAccess<'de>>(
    index: u32,
    variant: V,
) -> Result<Result<Event, V>, V::Error> {
    // A struct variant's fields are a newtype's struct fields in bincode: in order.
    Ok(Ok(match index {
        PRELOAD_REQUESTED => {
            let old: PreloadRequestedV4 = variant.newtype_variant()?;
            Event::PreloadRequested {
                engine: Box::new(old.engine.into()),
            }
        }
        ENGINE_START_REQUESTED => {
            let old: EngineStartRequestedV4 = variant.newtype_variant()?;
            Event::EngineStartRequested {
                engine: Box::new(old.engine.into()),
                attempt: old.attempt,
                purpose: old.purpose,
            }
        }
        _ => return Ok(Err(variant)),
    }))
}

/// An event of format version 4, already upcast to today's [`Event`].
#[derive(Debug)]
pub struct EventV4(pub Event);

impl<'de> Deserialize<'de> for EventV4 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // bincode ignores the name and the variant list: it reads the index.
        deserializer.deserialize_enum("Event", &[], V4Visitor)
    }
}

struct V4Visitor;

impl<'de> Visitor<'de> for V4Visitor {
    type Value = EventV4;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event of format version 4")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<EventV4, A::Error> {
        let (index, variant): (u32, A::Variant) = data.variant()?;
        let event = match engine_variant(index, variant)? {
            Ok(event) => event,
            // Unchanged since: today's type reads the rest of the record.
            Err(variant) => Event::deserialize(ReadIndex { index, variant })?,
        };
        Ok(EventV4(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::PoolSchema;
    use pool_journal::{Envelope, EventSchema, RECORD_HEADER_BYTES};

    fn engine() -> PreparedEngine {
        serde_json::from_value(serde_json::json!({
            "binary_path": "/opt/llama-server", "flags": ["--model", "/models/a.gguf"],
            "host": "127.0.0.1", "port": 8101, "model_path": "/models/a.gguf",
            "engine_version": "b1", "pool_id": "p1", "replica_id": "r0", "device_mask": "0",
            "env": {"A": "1"}, "slots_total": 2, "tensor_split": [0.5, 0.5],
        }))
        .unwrap()
    }

    /// Today's record payload of `event` (the envelope, without the record's header).
    fn today(event: &Event) -> Vec<u8> {
        let envelope = Envelope {
            seq: 7,
            ts_ms: 1,
            pool_id: Some("p1".to_string()),
            cause: None,
            event: event.clone(),
        };
        pool_journal::encode_record::<PoolSchema>(&envelope).unwrap()[RECORD_HEADER_BYTES..]
            .to_vec()
    }

    fn read(version: u8, payload: &[u8]) -> Result<Event, pool_journal::UpcastError> {
        PoolSchema::upcast(version, payload).map(|envelope| envelope.event)
    }

    #[test]
    fn an_engine_of_versions_1_to_4_reads_with_no_declared_progress() {
        let preload = Event::PreloadRequested {
            engine: Box::new(engine()),
        };
        // Older versions wrote the engine without its last field (`progress`, today a `None`
        // tag); the event is the envelope's last field.
        let mut old = today(&preload);
        assert_eq!(
            old.pop(),
            Some(0),
            "the `None` of `progress` is the last byte"
        );
        let start = Event::EngineStartRequested {
            engine: Box::new(engine()),
            attempt: 3,
            purpose: StartPurpose::Trial,
        };
        let mut old_start = today(&start);
        // `attempt` (u32) and `purpose` (u32 index) follow the engine.
        let tag = old_start.len() - 9;
        assert_eq!(old_start.remove(tag), 0);
        for version in 1..=4 {
            assert_eq!(read(version, &old).unwrap(), preload, "version {version}");
            assert_eq!(
                read(version, &old_start).unwrap(),
                start,
                "version {version}"
            );
            // Today's shape is not an old record: a byte too many.
            assert!(read(version, &today(&preload)).is_err());
        }
        // Today's records are read as today's type, not upcast.
        let current = pool_journal::decode_payload::<Envelope<Event>>(5, &today(&start));
        assert_eq!(current.unwrap().event, start);
    }

    #[test]
    fn every_other_variant_of_version_4_reads_as_today() {
        let adopted = Event::EngineAdopted { pid: 9 };
        assert_eq!(read(4, &today(&adopted)).unwrap(), adopted);
        let mut unknown = today(&adopted);
        let at = unknown.len() - 8; // the variant index, before `pid`
        unknown[at..at + 4].copy_from_slice(&999u32.to_le_bytes());
        assert!(read(4, &unknown).is_err());
    }
}
