//! The event shapes of format versions 1 to 3 that version 4 changed, frozen, and the decoder
//! of an old record into today's [`Event`].
//!
//! Version 4 reshaped two variants (each gained a last field): `EngineSpawned` (`boot_id`)
//! and `HealthCheckPassed` (`exe`). A record of versions 1 to 3 is read as [`EventV3`]: the
//! variant index first (bincode encodes it as a `u32`), then that variant's old fields for
//! the two reshaped ones (upcast with the new field `None`: unknown), the shapes of `v4.rs` for
//! the two variants version 5 reshaped, or today's variant for every other index (unchanged
//! since: versions 2 and 3 only appended variants).
//!
//! Owns: the frozen shapes. Never: changes (they stand for records already on disk).

use std::fmt;

use pool_core::Event;
use serde::de::{self, Deserializer, EnumAccess, IntoDeserializer, Visitor};
use serde::Deserialize;

/// `Event::EngineSpawned`'s variant index (bincode).
const ENGINE_SPAWNED: u32 = 8;
/// `Event::HealthCheckPassed`'s variant index (bincode).
const HEALTH_CHECK_PASSED: u32 = 9;

/// `EngineSpawned` as versions 1 to 3 wrote it: no `boot_id`.
#[derive(Debug, Deserialize)]
struct EngineSpawnedV3 {
    pid: u32,
    start_time: u64,
    log_path: String,
    pid_path: String,
    attempt: u32,
    health_deadline_at_ms: u64,
}

/// `HealthCheckPassed` as versions 1 to 3 wrote it: no `exe`.
#[derive(Debug, Deserialize)]
struct HealthCheckPassedV3 {
    after_ms: u64,
    engine_version: String,
    slots_total: u32,
}

/// An event of format versions 1 to 3, already upcast to today's [`Event`].
#[derive(Debug)]
pub struct EventV3(pub Event);

impl<'de> Deserialize<'de> for EventV3 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // bincode ignores the name and the variant list: it reads the index.
        deserializer.deserialize_enum("Event", &[], V3Visitor)
    }
}

struct V3Visitor;

impl<'de> Visitor<'de> for V3Visitor {
    type Value = EventV3;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event of format version 1, 2 or 3")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<EventV3, A::Error> {
        use de::VariantAccess as _;
        let (index, variant): (u32, A::Variant) = data.variant()?;
        let event = match index {
            // A struct variant's fields are a newtype's struct fields in bincode: in order.
            ENGINE_SPAWNED => {
                let old: EngineSpawnedV3 = variant.newtype_variant()?;
                Event::EngineSpawned {
                    pid: old.pid,
                    start_time: old.start_time,
                    log_path: old.log_path,
                    pid_path: old.pid_path,
                    attempt: old.attempt,
                    health_deadline_at_ms: old.health_deadline_at_ms,
                    boot_id: None,
                }
            }
            HEALTH_CHECK_PASSED => {
                let old: HealthCheckPassedV3 = variant.newtype_variant()?;
                Event::HealthCheckPassed {
                    after_ms: old.after_ms,
                    engine_version: old.engine_version,
                    slots_total: old.slots_total,
                    exe: None,
                }
            }
            // Reshaped by version 5 (the prepared engine's `progress`), or unchanged since:
            // today's type reads the rest of the record.
            _ => match super::v4::engine_variant(index, variant)? {
                Ok(event) => event,
                Err(variant) => Event::deserialize(ReadIndex { index, variant })?,
            },
        };
        Ok(EventV3(event))
    }
}

/// A deserializer that hands today's [`Event`] an enum whose index was already read.
pub(super) struct ReadIndex<V> {
    pub(super) index: u32,
    pub(super) variant: V,
}

impl<'de, A: de::VariantAccess<'de>> Deserializer<'de> for ReadIndex<A> {
    type Error = A::Error;

    fn deserialize_any<W: Visitor<'de>>(self, _visitor: W) -> Result<W::Value, A::Error> {
        Err(de::Error::custom("an event is read as an enum only"))
    }

    fn deserialize_enum<W: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: W,
    ) -> Result<W::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de, V: de::VariantAccess<'de>> EnumAccess<'de> for ReadIndex<V> {
    type Error = V::Error;
    type Variant = V;

    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, V), V::Error> {
        let index: de::value::U32Deserializer<V::Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self.variant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal's bincode (fixed-width little-endian integers, strings as a `u64` length
    /// and their bytes), written by hand as versions 1 to 3 wrote these records.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(self, v: &str) -> Self {
            let mut this = self.u64(v.len() as u64);
            this.0.extend_from_slice(v.as_bytes());
            this
        }
    }

    fn read(payload: &[u8]) -> Result<Event, pool_journal::UpcastError> {
        pool_journal::decode_payload::<EventV3>(3, payload).map(|e| e.0)
    }

    /// `EngineSpawned { pid 7, start_time 99, "l", "p", attempt 2, deadline 5 }` of version 3.
    fn old_spawned() -> Vec<u8> {
        let b = Bytes::default().u32(ENGINE_SPAWNED).u32(7).u64(99);
        b.str("l").str("p").u32(2).u64(5).0
    }

    #[test]
    fn the_reshaped_variants_read_with_their_new_field_unknown() {
        assert_eq!(
            read(&old_spawned()).unwrap(),
            Event::EngineSpawned {
                pid: 7,
                start_time: 99,
                log_path: "l".into(),
                pid_path: "p".into(),
                attempt: 2,
                health_deadline_at_ms: 5,
                boot_id: None,
            }
        );
        let passed = Bytes::default()
            .u32(HEALTH_CHECK_PASSED)
            .u64(1)
            .str("b1")
            .u32(3);
        assert_eq!(
            read(&passed.0).unwrap(),
            Event::HealthCheckPassed {
                after_ms: 1,
                engine_version: "b1".into(),
                slots_total: 3,
                exe: None,
            }
        );
        // Cut short, or with a byte more: refused, not padded or ignored.
        let bytes = old_spawned();
        assert!(read(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).is_err());
    }

    #[test]
    fn every_other_variant_reads_as_today() {
        // `DaemonStarted { version "1", pid 3 }` (index 0), `EngineAdopted { pid 9 }` (22),
        // `CircuitHalfOpened` (18), `UntrackedEngineStopped { "p", 4, "r" }` (43).
        let cases = [
            (
                Bytes::default().u32(0).str("1").u32(3),
                Event::DaemonStarted {
                    version: "1".into(),
                    pid: 3,
                },
            ),
            (
                Bytes::default().u32(22).u32(9),
                Event::EngineAdopted { pid: 9 },
            ),
            (Bytes::default().u32(18), Event::CircuitHalfOpened),
            (
                Bytes::default().u32(43).str("p").u32(4).str("r"),
                Event::UntrackedEngineStopped {
                    pool_id: "p".into(),
                    pid: 4,
                    reason: "r".into(),
                },
            ),
        ];
        for (bytes, event) in cases {
            assert_eq!(read(&bytes.0).unwrap(), event);
        }
        assert!(read(&Bytes::default().u32(999).0).is_err());
    }
}
