//! The record format: [`Envelope`], [`Draft`], [`EventSchema`] and the byte framing.
//!
//! Owns: turning an envelope into record bytes and back, including the CRC check, the
//! version dispatch (current version: bincode; older: [`EventSchema::upcast`]) and the
//! `key == envelope.seq` check.
//!
//! **Must never:** panic or allocate unboundedly on bytes read from disk, or turn a bad record
//! into anything but an error. It does no I/O.
//!
//! # Layout
//!
//! ```text
//! record  = { version: u8 | crc32c: u32 LE | payload: [u8] }      (RECORD_HEADER_BYTES = 5)
//! payload = bincode 1, default options (fixint, little endian) of Envelope<E>
//! crc32c  = CRC-32C (Castagnoli) of `payload` only
//! key     = seq: u64 big-endian; seqs start at 1 and have no gaps
//! ```
//!
//! The same framing (with the caller's `state_version` in place of `version`) is used for
//! snapshots.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bytes before the payload: version (1) + crc32c (4).
pub const RECORD_HEADER_BYTES: usize = 5;

/// Upper bound on one encoded event record. Kept well below sled 0.34's blob threshold
/// (`segment_size / 4 - 20` = 131 052 bytes with the default 512 KiB segments) so event
/// records are always inline in sled's log.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One journaled event with its metadata: what the journal stores and returns.
///
/// Stored as a record (see the [module docs](self)): `version u8 | crc32c u32 (LE) | payload`,
/// payload = bincode 1 (default options) of this struct; key = `seq` as u64 big-endian, from 1,
/// gap-free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<E> {
    /// Position in the journal, assigned by the writer: 1, 2, 3, ...
    pub seq: u64,
    /// Wall clock when the event was decided, ms since the Unix epoch (caller-supplied).
    pub ts_ms: u64,
    /// Opaque partition key (a pool id); `None` for node-level events. Never contains 0x00.
    pub pool_id: Option<String>,
    /// Seq of the event that caused this one, if any.
    pub cause: Option<u64>,
    /// The event itself.
    pub event: E,
}

/// An event not yet sequenced: what callers hand to `append`.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft<E> {
    /// See [`Envelope::ts_ms`].
    pub ts_ms: u64,
    /// See [`Envelope::pool_id`].
    pub pool_id: Option<String>,
    /// See [`Envelope::cause`].
    pub cause: Option<u64>,
    /// The event.
    pub event: E,
}

impl<E> Draft<E> {
    /// Stamps the draft with its seq.
    pub fn into_envelope(self, seq: u64) -> Envelope<E> {
        Envelope {
            seq,
            ts_ms: self.ts_ms,
            pool_id: self.pool_id,
            cause: self.cause,
            event: self.event,
        }
    }
}

impl<E> From<Envelope<E>> for Draft<E> {
    /// The envelope without its seq: to append a recorded history again (import, tests).
    fn from(envelope: Envelope<E>) -> Draft<E> {
        Draft {
            ts_ms: envelope.ts_ms,
            pool_id: envelope.pool_id,
            cause: envelope.cause,
            event: envelope.event,
        }
    }
}

/// Why an old record could not be brought up to today's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot upcast a version {version} record: {what}")]
pub struct UpcastError {
    /// The record's version.
    pub version: u8,
    /// Why.
    pub what: String,
}

impl UpcastError {
    /// Builds an error for `version`.
    pub fn new(version: u8, what: impl Into<String>) -> Self {
        UpcastError {
            version,
            what: what.into(),
        }
    }
}

/// What the journal needs to know about the event type it stores.
///
/// # Adding a format version
///
/// 1. Copy today's event type into a frozen `vN` module (it must never change again) and
///    change the live type.
/// 2. Bump `CURRENT_VERSION` to N+1.
/// 3. In `upcast`, decode version N with [`decode_payload`] into `Envelope<vN::Event>` and map
///    it to today's type; keep older arms, chaining oldest first (v1 -> v2 -> ... -> current).
/// 4. Check in a fixture written by version N (see `tests/fixtures/`) and a test that reads it.
pub trait EventSchema: Send + Sync + 'static {
    /// The event type stored in the journal.
    type Event: Serialize + DeserializeOwned + Clone + Send + Sync + std::fmt::Debug + 'static;
    /// Format version stamped on records written today (>= 1).
    const CURRENT_VERSION: u8;
    /// The event's kind name, e.g. "EngineSpawned" (used by stats).
    fn kind(event: &Self::Event) -> &'static str;
    /// Decode a payload written with an older `version` (< CURRENT_VERSION) into today's
    /// envelope. Implementations upcast oldest first (v1 -> v2 -> ... -> current).
    /// Default: unsupported -> error.
    fn upcast(version: u8, payload: &[u8]) -> Result<Envelope<Self::Event>, UpcastError> {
        let _ = payload;
        Err(UpcastError::new(
            version,
            "this schema has no upcaster for that version",
        ))
    }
    /// The event that records an accepted loss: the events of seqs `from_seq..=to_seq` are
    /// gone, and this event takes seq `to_seq` in their place (`journal repair
    /// --accept-loss`). `None` (the default): this schema cannot record a loss, so a journal
    /// of it cannot be repaired with loss.
    fn loss_accepted(from_seq: u64, to_seq: u64, reason: &str) -> Option<Self::Event> {
        let _ = (from_seq, to_seq, reason);
        None
    }
    /// The `(from_seq, to_seq)` of an event made by [`EventSchema::loss_accepted`]; `None`
    /// for every other event. Readers accept the seqs `from_seq..to_seq` as absent only when
    /// the record at `to_seq` says so.
    fn loss_range(event: &Self::Event) -> Option<(u64, u64)> {
        let _ = event;
        None
    }
}

/// Why a record's bytes were rejected. Converted to `JournalError` with the dir by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// Version byte newer than the schema's `CURRENT_VERSION`: not corruption, refuse.
    #[error("format version {version} is newer than this build's {current}")]
    Unsupported {
        /// Found.
        version: u8,
        /// Supported.
        current: u8,
    },
    /// Anything else: short value, CRC mismatch, undecodable, version 0, key != seq.
    #[error("{0}")]
    Bad(String),
}

/// bincode 1 default encoding (fixint, little endian), strict on trailing bytes when decoding.
fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Decodes a bincode payload the way the journal writes it; for use in [`EventSchema::upcast`].
pub fn decode_payload<T: DeserializeOwned>(version: u8, payload: &[u8]) -> Result<T, UpcastError> {
    bincode_options()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| UpcastError::new(version, format!("bincode: {e}")))
}

/// Frames `value` as `version | crc32c | bincode(value)`.
pub fn encode_framed<T: Serialize + ?Sized>(
    version: u8,
    value: &T,
) -> Result<Vec<u8>, bincode::Error> {
    let payload_bytes = bincode_options().serialized_size(value)? as usize;
    let mut buf = Vec::with_capacity(RECORD_HEADER_BYTES + payload_bytes);
    buf.push(version);
    buf.extend_from_slice(&[0u8; 4]);
    bincode_options().serialize_into(&mut buf, value)?;
    let crc = crc32c::crc32c(&buf[RECORD_HEADER_BYTES..]);
    buf[1..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Splits a framed value into `(version, payload)` after checking length and CRC.
pub fn check_framed(bytes: &[u8]) -> Result<(u8, &[u8]), RecordFault> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RecordFault::Bad(format!(
            "value is {} bytes, shorter than the {RECORD_HEADER_BYTES}-byte header (torn write?)",
            bytes.len()
        )));
    }
    let version = bytes[0];
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&bytes[1..RECORD_HEADER_BYTES]);
    let stored = u32::from_le_bytes(crc_bytes);
    let payload = &bytes[RECORD_HEADER_BYTES..];
    let actual = crc32c::crc32c(payload);
    if stored != actual {
        return Err(RecordFault::Bad(format!(
            "crc32c mismatch: stored {stored:#010x}, computed {actual:#010x} over {} payload bytes",
            payload.len()
        )));
    }
    Ok((version, payload))
}

/// Decodes one event record stored under key `key_seq`.
///
/// Checks, in order: length, CRC, version (0 is bad, > current is `Unsupported`), decode
/// (bincode for the current version, [`EventSchema::upcast`] for older ones), and
/// `key_seq == envelope.seq`.
pub fn decode_record<S: EventSchema>(
    key_seq: u64,
    bytes: &[u8],
) -> Result<Envelope<S::Event>, RecordFault> {
    let (version, payload) = check_framed(bytes)?;
    let envelope: Envelope<S::Event> = if version == S::CURRENT_VERSION {
        bincode_options()
            .with_limit(payload.len() as u64)
            .deserialize(payload)
            .map_err(|e| RecordFault::Bad(format!("payload does not decode: {e}")))?
    } else if version == 0 {
        return Err(RecordFault::Bad("format version 0 is never written".into()));
    } else if version > S::CURRENT_VERSION {
        return Err(RecordFault::Unsupported {
            version,
            current: S::CURRENT_VERSION,
        });
    } else {
        S::upcast(version, payload).map_err(|e| RecordFault::Bad(e.to_string()))?
    };
    if envelope.seq != key_seq {
        return Err(RecordFault::Bad(format!(
            "stored under key {key_seq} but the envelope says seq {}",
            envelope.seq
        )));
    }
    Ok(envelope)
}

/// Finds every current-version record framed in `bytes` (a damaged sled file, read raw):
/// at each offset whose byte is `CURRENT_VERSION`, the bytes after it must be a CRC, then an
/// envelope whose bincode payload has exactly that CRC. Returns `(seq, record bytes)`, each
/// checked again with [`decode_record`]. Repair's last resort: sled stores a record's bytes
/// as they are, so they survive in its log even where sled cannot read its own structure.
pub fn scan_records<S: EventSchema>(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + RECORD_HEADER_BYTES < bytes.len() {
        if bytes[at] != S::CURRENT_VERSION {
            at += 1;
            continue;
        }
        match record_at::<S>(&bytes[at..]) {
            Some((seq, len)) => {
                out.push((seq, bytes[at..at + len].to_vec()));
                at += len;
            }
            None => at += 1,
        }
    }
    out
}

/// The record starting at `bytes[0]`, if one does: `(seq, its length)`.
fn record_at<S: EventSchema>(bytes: &[u8]) -> Option<(u64, usize)> {
    let crc = u32::from_le_bytes(bytes.get(1..RECORD_HEADER_BYTES)?.try_into().ok()?);
    let window = &bytes[RECORD_HEADER_BYTES..];
    let window = &window[..window.len().min(MAX_RECORD_BYTES)];
    let mut reader = window;
    let envelope: Envelope<S::Event> = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(window.len() as u64)
        .deserialize_from(&mut reader)
        .ok()?;
    let used = window.len() - reader.len();
    if used == 0 || crc32c::crc32c(&window[..used]) != crc {
        return None;
    }
    let len = RECORD_HEADER_BYTES + used;
    decode_record::<S>(envelope.seq, &bytes[..len]).ok()?;
    Some((envelope.seq, len))
}

/// Encodes `envelope` as a current-version record.
pub fn encode_record<S: EventSchema>(
    envelope: &Envelope<S::Event>,
) -> Result<Vec<u8>, bincode::Error> {
    encode_framed(S::CURRENT_VERSION, envelope)
}

/// The CRC stored in a record's framing (what the witness and snapshots vouch for), if the
/// value is long enough to have one.
pub fn framed_crc(bytes: &[u8]) -> Option<u32> {
    let b = bytes.get(1..RECORD_HEADER_BYTES)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes a framed value written with `expected_version` (snapshots, the manifest).
pub fn decode_framed<T: DeserializeOwned>(expected_version: u8, bytes: &[u8]) -> Result<T, String> {
    let (version, payload) = check_framed(bytes).map_err(|e| e.to_string())?;
    if version != expected_version {
        return Err(format!("version {version}, wanted {expected_version}"));
    }
    bincode_options()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| format!("does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Schema;
    impl EventSchema for Schema {
        type Event = String;
        const CURRENT_VERSION: u8 = 1;
        fn kind(_: &String) -> &'static str {
            "S"
        }
    }

    fn env(seq: u64) -> Envelope<String> {
        Envelope {
            seq,
            ts_ms: 7,
            pool_id: Some("p".into()),
            cause: None,
            event: "hello".into(),
        }
    }

    #[test]
    fn roundtrip_and_layout() {
        let bytes = encode_record::<Schema>(&env(3)).unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(
            &bytes[RECORD_HEADER_BYTES..],
            &bincode::serialize(&env(3)).unwrap()[..],
            "payload must be plain bincode 1 default options"
        );
        assert_eq!(decode_record::<Schema>(3, &bytes).unwrap(), env(3));
    }

    #[test]
    fn records_are_found_in_raw_bytes_around_garbage() {
        let mut raw = vec![1u8, 0, 0, 0, 0, 9, 9];
        for seq in 3..=5 {
            raw.extend_from_slice(&encode_record::<Schema>(&env(seq)).unwrap());
            raw.extend_from_slice(&[1, 7, 7, 1]);
        }
        let mut damaged = encode_record::<Schema>(&env(6)).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        raw.extend_from_slice(&damaged);
        let found = scan_records::<Schema>(&raw);
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(decode_record::<Schema>(4, &found[1].1).unwrap(), env(4));
    }

    #[test]
    fn every_fault_is_an_error() {
        let bytes = encode_record::<Schema>(&env(3)).unwrap();
        assert!(matches!(
            decode_record::<Schema>(4, &bytes),
            Err(RecordFault::Bad(_))
        ));
        for cut in 0..bytes.len() {
            assert!(
                decode_record::<Schema>(3, &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode_record::<Schema>(3, &b).is_err(), "flip {i}");
        }
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert_eq!(
            decode_record::<Schema>(3, &newer),
            Err(RecordFault::Unsupported {
                version: 9,
                current: 1
            })
        );
        let mut trailing = bytes;
        trailing.push(0);
        let crc = crc32c::crc32c(&trailing[RECORD_HEADER_BYTES..]);
        trailing[1..5].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_record::<Schema>(3, &trailing).is_err());
    }
}
