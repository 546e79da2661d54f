//! Binds the core's [`Event`] to the journal: the format version stamped on records, the kind
//! name used by `stats`, the upcasters that turn records of older format versions into
//! today's events, and the loss marker (`JournalLossAccepted`) of `journal repair
//! --accept-loss`.
//!
//! Owns: [`PoolSchema`] and the journal type aliases the rest of the crate uses.
//! Never: decides anything about pools; it only says how events are stored.
//!
//! Format versions:
//! - 1: the first.
//! - 2: appends the event `MigInventoryObserved` and the start failure `CpuSpillover` (at the
//!   end of their enums). Every version-1 record is, byte for byte, a valid version-2 record
//!   with the same meaning (bincode encodes a variant by its index, and no existing variant or
//!   field changed), so version 1 upcasts by decoding as today's type. The version still
//!   changed so that a build that knows only version 1 refuses a version-2 journal as "newer
//!   than this build" rather than calling its new records corrupt.
//! - 3: appends the event `JournalLossAccepted`, the loss marker that `journal repair
//!   --accept-loss` writes at the last seq of each lost range ([`EventSchema::loss_accepted`],
//!   [`EventSchema::loss_range`]), and `UntrackedEngineStopped`. Again only appended.
//! - 4: an engine's identity that survives launchers and upgrades. Reshaped:
//!   `EngineSpawned` gains `boot_id` and `HealthCheckPassed` gains `exe` (each a last
//!   `Option` field); appended: the start failure `PortInUse`, the exit reason
//!   `Stalled` (an engine that reports work in progress and makes none). Records of versions 1 to 3
//!   are read through the frozen shapes of [`v3`] and upcast with both fields `None`
//!   (unknown): such an engine is adopted after a restart by its pid and start time alone,
//!   with a warning that its boot was not recorded. Later additions of version 4 (appended
//!   variants only) are listed here too.
//! - 5: the prepared engine gains its declared progress probe, `progress` (a last
//!   `Option` field), which reshapes `PreloadRequested` and `EngineStartRequested`. Records of
//!   version 4 are read through the frozen shapes of [`v4`] (and those of versions 1 to 3
//!   through [`v3`], which reads these two variants by [`v4`]'s shapes), upcast with
//!   `progress: None`: no declared probe, the engine's progress is read by its kind as before.
//! - 6 (current): reload without a gap. Appended only: the events `ReloadStrategyChosen`,
//!   `SurgeStartRequested`, `SurgeSpawned`, `SurgeHealthPassed`, `SurgeSwitched`,
//!   `SecondStopRequested`, `SecondEngineEnded` and the reload stage `Surging`, so a version-5
//!   record decodes as today's type.
//!
//! To change an event's shape, add a variant or field under a new `EVENT_FORMAT_VERSION`, keep
//! the old shape as a frozen type here when it differs, and upcast from it in
//! [`PoolSchema::upcast`]; `tests/formats.rs` keeps a journal of every version
//! (`tests/fixtures/pool-events-vN.records`, never regenerated: a new version's fixture is
//! written beside the old ones, see that file's header).

use pool_core::Event;
use pool_journal::{decode_payload, Envelope, EventSchema, Journal, UpcastError};

pub mod v3;
pub mod v4;

/// The schema of pool-managerd's journal: core events at `pool_core::EVENT_FORMAT_VERSION`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSchema;

impl EventSchema for PoolSchema {
    type Event = Event;
    const CURRENT_VERSION: u8 = pool_core::EVENT_FORMAT_VERSION;

    fn kind(event: &Event) -> &'static str {
        event.kind()
    }

    fn upcast(version: u8, payload: &[u8]) -> Result<Envelope<Event>, UpcastError> {
        match version {
            // Versions 2, 3 and 6 only appended variants; version 4 reshaped `EngineSpawned`
            // and `HealthCheckPassed`, version 5 `PreloadRequested` and `EngineStartRequested`:
            // a payload of an older version reads through their frozen shapes.
            1..=3 => {
                decode_payload::<Envelope<v3::EventV3>>(version, payload).map(|old| Envelope {
                    seq: old.seq,
                    ts_ms: old.ts_ms,
                    pool_id: old.pool_id,
                    cause: old.cause,
                    event: old.event.0,
                })
            }
            4 => decode_payload::<Envelope<v4::EventV4>>(version, payload).map(|old| Envelope {
                seq: old.seq,
                ts_ms: old.ts_ms,
                pool_id: old.pool_id,
                cause: old.cause,
                event: old.event.0,
            }),
            // Version 6 only appended variants (and the reload stage `Surging`): a version 5
            // payload is a current one.
            5 => decode_payload::<Envelope<Event>>(version, payload),
            other => Err(UpcastError::new(
                other,
                "no upcaster for this format version",
            )),
        }
    }

    fn loss_accepted(from_seq: u64, to_seq: u64, reason: &str) -> Option<Event> {
        Some(Event::JournalLossAccepted {
            from_seq,
            to_seq,
            reason: reason.to_string(),
        })
    }

    fn loss_range(event: &Event) -> Option<(u64, u64)> {
        match event {
            Event::JournalLossAccepted {
                from_seq, to_seq, ..
            } => Some((*from_seq, *to_seq)),
            _ => None,
        }
    }
}

/// The daemon's journal.
pub type PoolJournal = Journal<PoolSchema>;
/// One recorded pool event with its metadata.
pub type PoolEnvelope = Envelope<Event>;
