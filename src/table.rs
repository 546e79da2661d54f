//! Renders registries, GPU inventories and timelines for people: fixed-width tables and
//! one-line event summaries. Reads the JSON form of the public types, so it shows exactly what
//! the API shows.
//!
//! Owns: text layout only.
//! Never: computes state; everything it prints comes from `PoolStatus`, `gpu::Gpu` and
//! `Envelope`.

use pool_core::{Event, PoolStatus};
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

pub use crate::clock::format_ts_ms;

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
    let headers: Vec<&str> = REGISTRY_COLUMNS.iter().map(|(h, _)| *h).collect();
    let mut out = fixed_width(&headers, &rows);
    if statuses.is_empty() {
        out.push_str("(no pools)\n");
    }
    out
}

/// The longest `WHY` cell of [`registry_table_why`].
const WHY_CHARS_MAX: usize = 120;

/// [`registry_table`] with a last `WHY` column: `why(pool_id)` for each pool that is not
/// ready (one line of its explanation), `-` for the others.
pub fn registry_table_why(statuses: &[PoolStatus], why: impl Fn(&str) -> Option<String>) -> String {
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            let json = serde_json::to_value(status).unwrap_or(Value::Null);
            let mut row: Vec<String> = REGISTRY_COLUMNS
                .iter()
                .map(|(_, field)| cell(json.get(field)))
                .collect();
            let text = if status.ready {
                None
            } else {
                why(status.pool_id.as_str())
            };
            row.push(text.map_or_else(|| "-".to_string(), |t| cut_to(&t, WHY_CHARS_MAX)));
            row
        })
        .collect();
    let mut headers: Vec<&str> = REGISTRY_COLUMNS.iter().map(|(h, _)| *h).collect();
    headers.push("WHY");
    let mut out = fixed_width(&headers, &rows);
    if statuses.is_empty() {
        out.push_str("(no pools)\n");
    }
    out
}

fn cut_to(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() > max {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// One row of the fleet table: a node, whether it heartbeats, and one of its pools (`None`: a
/// node with no pool).
pub struct FleetRow<'a> {
    /// The node's id.
    pub node: &'a str,
    /// It heartbeats.
    pub up: bool,
    /// One of its pools.
    pub pool: Option<&'a PoolStatus>,
}

/// The fleet as one table: the node and its state (`up`, or `DOWN`: no heartbeat), then the
/// registry's columns.
pub fn fleet_table(rows: &[FleetRow<'_>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let json = row.pool.map_or(Value::Null, |s| {
                serde_json::to_value(s).unwrap_or(Value::Null)
            });
            let state = if row.up { "up" } else { "DOWN" };
            let mut cells = vec![row.node.to_string(), state.to_string()];
            cells.extend(
                REGISTRY_COLUMNS
                    .iter()
                    .map(|(_, field)| cell(json.get(field))),
            );
            cells
        })
        .collect();
    let mut headers = vec!["NODE", "NODE_STATE"];
    headers.extend(REGISTRY_COLUMNS.iter().map(|(h, _)| *h));
    let mut out = fixed_width(&headers, &cells);
    if rows.is_empty() {
        out.push_str("(no nodes)\n");
    }
    out
}

/// Lays `rows` out under `headers`, columns as wide as their widest cell, two spaces apart.
fn fixed_width(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Bytes for people: `80.0 GiB`, `512 MiB`, `0 B`.
pub fn format_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

fn processes_cell(processes: &[crate::gpu::GpuProcess]) -> String {
    if processes.is_empty() {
        return "-".to_string();
    }
    let list: Vec<String> = processes
        .iter()
        .map(|p| match &p.pool_id {
            Some(pool) => format!("{} ({pool}) {}", p.pid, format_bytes(p.used_bytes)),
            None => format!("{} {}", p.pid, format_bytes(p.used_bytes)),
        })
        .collect();
    cell(Some(&Value::String(list.join(", "))))
}

/// A fixed-width table of GPUs, one row each, then one row per MIG device under its GPU.
pub fn gpus_table(
    gpus: &[crate::gpu::Gpu],
    quarantined: Option<&std::collections::BTreeSet<String>>,
) -> String {
    let headers = [
        "INDEX",
        "UUID",
        "NAME",
        "CC",
        "VRAM_TOTAL",
        "VRAM_FREE",
        "PROCESSES",
        "QUARANTINED",
    ];
    let quarantine_cell = |uuid: &str| match quarantined {
        Some(set) if set.contains(uuid) => "yes".to_string(),
        Some(_) => "no".to_string(),
        None => "-".to_string(),
    };
    let mut rows = Vec::new();
    for gpu in gpus {
        let info = &gpu.info;
        rows.push(vec![
            info.index.to_string(),
            info.uuid.clone(),
            cell(Some(&Value::String(info.name.clone()))),
            info.compute_capability.clone(),
            format_bytes(info.vram_total_bytes),
            format_bytes(info.vram_free_bytes),
            processes_cell(&gpu.processes),
            quarantine_cell(&info.uuid),
        ]);
        for mig in &gpu.mig_devices {
            let m = &mig.info;
            rows.push(vec![
                format!("{}/mig", m.parent_index),
                m.uuid.clone(),
                cell(Some(&Value::String(m.name.clone()))),
                "-".to_string(),
                format_bytes(m.vram_total_bytes),
                format_bytes(m.vram_free_bytes),
                processes_cell(&mig.processes),
                "-".to_string(),
            ]);
        }
    }
    let mut out = fixed_width(&headers, &rows);
    if gpus.is_empty() {
        out.push_str("(no GPUs)\n");
    }
    out
}

/// One line of a timeline: `seq  time  pool  Kind  {fields}`. A loss marker says in words
/// what was lost: `JournalLossAccepted journal loss accepted: seqs 8..=10 lost (reason)`.
pub fn timeline_line(envelope: &PoolEnvelope) -> String {
    let mut fields = pool_journal::event_to_json(&envelope.event).unwrap_or(Value::Null);
    let kind = fields
        .as_object_mut()
        .and_then(|object| object.remove("kind"))
        .and_then(|kind| kind.as_str().map(str::to_string))
        .unwrap_or_else(|| envelope.event.kind().to_string());
    compact(&mut fields);
    let detail = match (&envelope.event, &fields) {
        (
            Event::JournalLossAccepted {
                from_seq,
                to_seq,
                reason,
            },
            _,
        ) => loss_accepted_detail(*from_seq, *to_seq, reason),
        (_, Value::Object(object)) if object.is_empty() => String::new(),
        (_, Value::Object(_)) => fields.to_string(),
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

/// The words of a loss marker: `journal loss accepted: seqs 8..=10 lost (reason)`, on one
/// line (control characters in the operator's reason are escaped).
fn loss_accepted_detail(from_seq: u64, to_seq: u64, reason: &str) -> String {
    let seqs = if from_seq == to_seq {
        format!("seq {to_seq}")
    } else {
        format!("seqs {from_seq}..={to_seq}")
    };
    let mut line = format!("journal loss accepted: {seqs} lost");
    let reason = reason.trim();
    if !reason.is_empty() {
        line.push_str(" (");
        for c in reason.chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        line.push(')');
    }
    line
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
