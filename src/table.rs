//! Renders registries and timelines for people: fixed-width tables and one-line event
//! summaries. Reads the JSON form of the public types, so it shows exactly what the API shows.
//!
//! Owns: text layout only.
//! Never: computes state; everything it prints comes from `PoolStatus` and `Envelope`.

use std::time::{Duration, UNIX_EPOCH};

use pool_core::PoolStatus;
use serde_json::Value;

use crate::schema::PoolEnvelope;

/// Columns of the registry table: header and the `PoolStatus` field it shows.
const REGISTRY_COLUMNS: &[(&str, &str)] = &[
    ("POOL", "pool_id"),
    ("PHASE", "phase"),
    ("READY", "ready"),
    ("DRAINING", "draining"),
    ("PID", "pid"),
    ("SLOTS", "slots_total"),
    ("FREE", "slots_free"),
    ("LEASES", "active_leases"),
    ("RESTARTS", "restart_count"),
    ("CRASHES", "crash_count"),
    ("BACKOFF_MS", "backoff_ms"),
    ("BREAKER", "breaker"),
    ("ENGINE", "engine_version"),
    ("LAST_SEQ", "last_seq"),
    ("LAST_ERROR", "last_error"),
];

/// The longest cell printed; longer values (engine log tails in `last_error`) are cut.
const CELL_CHARS_MAX: usize = 60;

/// Formats a wall-clock time in ms since the epoch as RFC 3339 with milliseconds (UTC).
pub fn format_ts_ms(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string()
}

fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() > CELL_CHARS_MAX {
        let cut: String = one_line.chars().take(CELL_CHARS_MAX - 1).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// A fixed-width table of pools, one row each, in the order given (the registry sorts by id).
pub fn registry_table(statuses: &[PoolStatus]) -> String {
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            let json = serde_json::to_value(status).unwrap_or(Value::Null);
            REGISTRY_COLUMNS
                .iter()
                .map(|(_, field)| cell(json.get(field)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = REGISTRY_COLUMNS.iter().map(|(h, _)| h.len()).collect();
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = REGISTRY_COLUMNS
        .iter()
        .map(|(h, _)| h.to_string())
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if statuses.is_empty() {
        out.push_str("(no pools)\n");
    }
    out
}

/// One line of a timeline: `seq  time  pool  Kind  {fields}`.
pub fn timeline_line(envelope: &PoolEnvelope) -> String {
    let mut fields = pool_journal::event_to_json(&envelope.event).unwrap_or(Value::Null);
    let kind = fields
        .as_object_mut()
        .and_then(|object| object.remove("kind"))
        .and_then(|kind| kind.as_str().map(str::to_string))
        .unwrap_or_else(|| envelope.event.kind().to_string());
    compact(&mut fields);
    let detail = match &fields {
        Value::Object(object) if object.is_empty() => String::new(),
        Value::Object(_) => fields.to_string(),
        _ => String::new(),
    };
    let cause = envelope
        .cause
        .map(|cause| format!(" (cause #{cause})"))
        .unwrap_or_default();
    format!(
        "#{:<6} {}  {:<16} {}{}{}",
        envelope.seq,
        format_ts_ms(envelope.ts_ms),
        envelope.pool_id.as_deref().unwrap_or("(node)"),
        kind,
        if detail.is_empty() {
            String::new()
        } else {
            format!(" {detail}")
        },
        cause
    )
}

/// Shortens event fields for a timeline: drops nulls and empty collections, and shows a
/// prepared engine as its command line (`binary flags...`); `journal export` keeps all.
fn compact(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(engine) = object.get_mut("engine") {
                if let Some(command) = engine_command(engine) {
                    *engine = Value::String(command);
                }
            }
            object.retain(|_, v| match v {
                Value::Null => false,
                Value::Object(o) => !o.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            });
            for field in object.values_mut() {
                compact(field);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(compact),
        _ => {}
    }
}

fn engine_command(engine: &Value) -> Option<String> {
    let binary = engine.get("binary_path")?.as_str()?;
    let flags: Vec<&str> = engine
        .get("flags")
        .and_then(Value::as_array)
        .map(|flags| flags.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some(if flags.is_empty() {
        binary.to_string()
    } else {
        format!("{binary} {}", flags.join(" "))
    })
}
