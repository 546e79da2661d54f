//! The JSON (NDJSON) form of events and envelopes: export, import, quarantine lines.
//!
//! Owns: the mapping between serde's externally tagged enum JSON (`{"EngineSpawned":{..}}`,
//! `"CircuitHalfOpened"`) and the journal's `{"kind":"EngineSpawned", ..fields}` form, and
//! the export line layout:
//!
//! ```text
//! {"seq":1,"ts_ms":..,"pool_id":"p1","cause":null,"event":{"kind":"EngineSpawned",..fields}}
//! ```
//!
//! **Must never:** panic on any JSON input, or accept a shape it cannot turn back exactly
//! (newtype/tuple variants, a field named "kind").

use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{Draft, Envelope};
use crate::JournalError;

/// Most bytes in one import line (a record is at most 64 KiB of bincode; JSON is larger).
pub const MAX_IMPORT_LINE_BYTES: usize = 1024 * 1024;

fn json_err(what: impl Into<String>) -> JournalError {
    JournalError::EventJson { what: what.into() }
}

/// Turns an event into `{"kind": "Variant", ..fields}` (`{"kind": "Variant"}` for unit
/// variants).
pub fn event_to_json<E: Serialize>(event: &E) -> Result<Value, JournalError> {
    let value = serde_json::to_value(event).map_err(|e| json_err(e.to_string()))?;
    let fields = event_fields(value)?;
    Ok(Value::Object(fields))
}

/// The `{"kind": .., ..fields}` map of an externally tagged enum value.
fn event_fields(value: Value) -> Result<Map<String, Value>, JournalError> {
    match value {
        Value::String(kind) => {
            let mut out = Map::new();
            out.insert("kind".into(), Value::String(kind));
            Ok(out)
        }
        Value::Object(map) if map.len() == 1 => {
            let Some((kind, inner)) = map.into_iter().next() else {
                return Err(json_err("empty object"));
            };
            match inner {
                Value::Object(fields) => {
                    if fields.contains_key("kind") {
                        return Err(json_err(format!(
                            "variant {kind} has a field named \"kind\", which the journal's JSON form reserves"
                        )));
                    }
                    let mut out = Map::new();
                    out.insert("kind".into(), Value::String(kind));
                    out.extend(fields);
                    Ok(out)
                }
                other => Err(json_err(format!(
                    "variant {kind} is a newtype or tuple variant ({}); only unit and struct variants have a JSON form",
                    type_name(&other)
                ))),
            }
        }
        other => Err(json_err(format!(
            "expected an enum value (a string or a one-key object), got {}",
            type_name(&other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reverses [`event_to_json`].
pub fn event_from_json<E: DeserializeOwned>(value: Value) -> Result<E, JournalError> {
    let Value::Object(mut fields) = value else {
        return Err(json_err(format!(
            "an event must be an object with a \"kind\", got {}",
            type_name(&value)
        )));
    };
    let kind = match fields.remove("kind") {
        Some(Value::String(kind)) => kind,
        Some(other) => {
            return Err(json_err(format!(
                "\"kind\" must be a string, got {}",
                type_name(&other)
            )))
        }
        None => return Err(json_err("the event object has no \"kind\"")),
    };
    if fields.is_empty() {
        // A unit variant, or a struct variant with no fields.
        if let Ok(e) = serde_json::from_value(Value::String(kind.clone())) {
            return Ok(e);
        }
    }
    let mut outer = Map::new();
    outer.insert(kind.clone(), Value::Object(fields));
    serde_json::from_value(Value::Object(outer)).map_err(|e| json_err(format!("kind {kind}: {e}")))
}

/// Serializes `{"kind": ..}` first, then the other fields in the map's order.
struct KindFirst<'a>(&'a Map<String, Value>);

impl Serialize for KindFirst<'_> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        if let Some(kind) = self.0.get("kind") {
            map.serialize_entry("kind", kind)?;
        }
        for (k, v) in self.0 {
            if k != "kind" {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ExportLine<'a> {
    seq: u64,
    ts_ms: u64,
    pool_id: &'a Option<String>,
    cause: Option<u64>,
    event: KindFirst<'a>,
}

/// Writes one export line (with the trailing newline) into `buf`, which is cleared first.
pub(crate) fn write_export_line<E: Serialize>(
    env: &Envelope<E>,
    buf: &mut Vec<u8>,
) -> Result<(), JournalError> {
    let fields = event_fields(
        serde_json::to_value(&env.event).map_err(|e| json_err(format!("seq {}: {e}", env.seq)))?,
    )?;
    buf.clear();
    let line = ExportLine {
        seq: env.seq,
        ts_ms: env.ts_ms,
        pool_id: &env.pool_id,
        cause: env.cause,
        event: KindFirst(&fields),
    };
    serde_json::to_writer(&mut *buf, &line).map_err(|e| JournalError::Encode {
        what: format!("export line for seq {}: {e}", env.seq),
    })?;
    buf.push(b'\n');
    Ok(())
}

/// The export form of an envelope as a JSON value (quarantine files, the HTTP API).
pub fn envelope_to_json<E: Serialize>(env: &Envelope<E>) -> Result<Value, JournalError> {
    Ok(serde_json::json!({
        "seq": env.seq,
        "ts_ms": env.ts_ms,
        "pool_id": env.pool_id,
        "cause": env.cause,
        "event": event_to_json(&env.event)?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    seq: u64,
    ts_ms: u64,
    pool_id: Option<String>,
    cause: Option<u64>,
    event: Value,
}

/// Parses one export line into its seq and a draft.
pub(crate) fn parse_import_line<E: DeserializeOwned>(
    line: &str,
) -> Result<(u64, Draft<E>), String> {
    let parsed: ImportLine = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let event = event_from_json(parsed.event).map_err(|e| format!("seq {}: {e}", parsed.seq))?;
    Ok((
        parsed.seq,
        Draft {
            ts_ms: parsed.ts_ms,
            pool_id: parsed.pool_id,
            cause: parsed.cause,
            event,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Ev {
        EngineSpawned { pid: u32, model: String },
        CircuitHalfOpened,
        Empty {},
        Newtype(u32),
        Tuple(u32, u32),
        HasKind { kind: String },
    }

    fn check(event: Ev, expected: Value) {
        let j = event_to_json(&event).unwrap();
        assert_eq!(j, expected);
        assert_eq!(event_from_json::<Ev>(j).unwrap(), event);
    }

    #[test]
    fn struct_unit_and_empty_variants_roundtrip() {
        check(
            Ev::EngineSpawned {
                pid: 1,
                model: "m".into(),
            },
            json!({"kind":"EngineSpawned","pid":1,"model":"m"}),
        );
        check(Ev::CircuitHalfOpened, json!({"kind":"CircuitHalfOpened"}));
        check(Ev::Empty {}, json!({"kind":"Empty"}));
    }

    #[test]
    fn unsupported_shapes_are_errors() {
        assert!(event_to_json(&Ev::Newtype(1)).is_err());
        assert!(event_to_json(&Ev::Tuple(1, 2)).is_err());
        assert!(event_to_json(&Ev::HasKind { kind: "x".into() }).is_err());
        assert!(event_to_json(&5u32).is_err());
        for bad in [
            json!(null),
            json!("EngineSpawned"),
            json!({"pid": 1}),
            json!({"kind": 5}),
            json!({"kind": "Nope"}),
            json!({"kind": "EngineSpawned", "pid": "x", "model": "m"}),
            json!({"kind": "EngineSpawned", "pid": 1}),
        ] {
            assert!(event_from_json::<Ev>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn export_line_layout() {
        let env = Envelope {
            seq: 1,
            ts_ms: 2,
            pool_id: Some("p1".into()),
            cause: None,
            event: Ev::EngineSpawned {
                pid: 1,
                model: "m".into(),
            },
        };
        let mut buf = Vec::new();
        write_export_line(&env, &mut buf).unwrap();
        let line = String::from_utf8(buf).unwrap();
        assert!(
            line.starts_with(
                r#"{"seq":1,"ts_ms":2,"pool_id":"p1","cause":null,"event":{"kind":"EngineSpawned","#
            ),
            "{line}"
        );
        assert!(line.ends_with("}}\n"));
        let (seq, draft) = parse_import_line::<Ev>(line.trim_end()).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(draft.into_envelope(1), env);
    }
}
