//! Binds the core's [`Event`] to the journal: the format version stamped on records, the kind
//! name used by `stats`, and the upcasters that turn records of older format versions into
//! today's events.
//!
//! Owns: [`PoolSchema`] and the journal type aliases the rest of the crate uses.
//! Never: decides anything about pools; it only says how events are stored.
//!
//! Format versions: 1 is the first and current one. To change an event's shape, add a variant
//! or field under a new `EVENT_FORMAT_VERSION`, keep the old shape as a frozen type here, and
//! upcast from it in [`PoolSchema::upcast`]; `tests/formats.rs` keeps a journal of every version
//! (`tests/fixtures/pool-events-vN.records`, never regenerated: a new version's fixture is
//! written beside the old ones, see that file's header).

use pool_core::Event;
use pool_journal::{Envelope, EventSchema, Journal};

/// The schema of pool-managerd's journal: core events at `pool_core::EVENT_FORMAT_VERSION`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSchema;

impl EventSchema for PoolSchema {
    type Event = Event;
    const CURRENT_VERSION: u8 = pool_core::EVENT_FORMAT_VERSION;

    fn kind(event: &Event) -> &'static str {
        event.kind()
    }
}

/// The daemon's journal.
pub type PoolJournal = Journal<PoolSchema>;
/// One recorded pool event with its metadata.
pub type PoolEnvelope = Envelope<Event>;
