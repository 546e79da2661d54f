//! What the journal handle, the writer thread and the maintenance thread share: the view
//! readers read (manifest + tail), the last acknowledged seq, the witness, and the journal's
//! health (writable or not, and why).
//!
//! Owns: that state and its locking rules. **Must never:** hold the view lock across file I/O
//! (readers clone what they need and let go), or report the journal writable while the
//! writer refuses appends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::config::JournalConfig;
use crate::error::WriteErrorKind;
use crate::layout::Layout;
use crate::manifest::Manifest;
use crate::tail::Tail;
use crate::witness::Witness;

/// What readers see: the sealed segments and the unsealed tail, changed together.
#[derive(Debug, Default)]
pub struct View {
    /// The sealed segments.
    pub manifest: Arc<Manifest>,
    /// The records after `manifest.sealed_through()`.
    pub tail: Tail,
}

/// The journal's ability to take writes, as operators and metrics see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalHealth {
    /// Appends are accepted.
    pub writable: bool,
    /// Why not, when not: the operating system's error as seen.
    pub error: Option<String>,
    /// Its kind.
    pub kind: Option<WriteErrorKind>,
    /// When appends started to be refused (ms since the epoch, the journal's clock).
    pub since_ms: Option<u64>,
    /// Failed writes since open, by kind.
    pub write_errors: BTreeMap<WriteErrorKind, u64>,
    /// The witness could not be written or synced this many times (it then lags, which is
    /// safe: it only ever proves less).
    pub witness_errors: u64,
    /// Damage the background scrub found in sealed segments since open (each names the file
    /// and the way out). Appends go on; reads that reach the damage fail.
    pub damage: Vec<String>,
    /// Sealed segments the scrub has read whole since open.
    pub scrubbed_segments: u64,
}

/// Shared state (see the module docs).
pub struct Shared {
    /// The directory's paths.
    pub layout: Layout,
    /// The options it was opened with.
    pub config: JournalConfig,
    /// Readers' view.
    pub view: RwLock<View>,
    /// Last acknowledged seq; written only by the writer (and by open, repair).
    pub last_seq: AtomicU64,
    /// `None` for a read-only journal.
    pub witness: Option<Witness>,
    health: Mutex<JournalHealth>,
    writable: AtomicBool,
    /// Held while sealing or truncating: the two never interleave.
    pub seal_lock: Mutex<()>,
    /// Snapshot files are written and pruned one at a time.
    pub snapshot_lock: Mutex<()>,
    /// Wakes the maintenance thread (seal, retention, witness sync, recovery).
    pub wake: Condvar,
    /// Its flag: `stop` set when the journal goes away.
    pub wake_state: Mutex<WakeState>,
    /// Signalled when the tail shrank (the writer waits on it when the tail is full).
    pub tail_shrank: Condvar,
    /// The lock `tail_shrank` is waited on with.
    pub tail_wait: Mutex<()>,
    /// The last sealing failure, if sealing is failing.
    pub seal_error: Mutex<Option<String>>,
    /// The bytes of the live store's and the snapshots' files, and when they were read.
    file_bytes: Mutex<Option<(std::time::Instant, (u64, u64))>>,
}

/// See [`Shared::wake_state`].
#[derive(Debug, Default)]
pub struct WakeState {
    /// Work was signalled.
    pub pending: bool,
    /// The journal is going away.
    pub stop: bool,
}

impl Shared {
    /// New shared state.
    pub fn new(
        layout: Layout,
        config: JournalConfig,
        view: View,
        last_seq: u64,
        witness: Option<Witness>,
        writable: bool,
    ) -> Shared {
        Shared {
            layout,
            config,
            view: RwLock::new(view),
            last_seq: AtomicU64::new(last_seq),
            witness,
            health: Mutex::new(JournalHealth {
                writable,
                ..JournalHealth::default()
            }),
            writable: AtomicBool::new(writable),
            seal_lock: Mutex::new(()),
            snapshot_lock: Mutex::new(()),
            wake: Condvar::new(),
            wake_state: Mutex::new(WakeState::default()),
            tail_shrank: Condvar::new(),
            tail_wait: Mutex::new(()),
            seal_error: Mutex::new(None),
            file_bytes: Mutex::new(None),
        }
    }

    /// The bytes of the live store's and of the snapshots' files, read at most once a second
    /// (an unauthenticated `/health` may ask often).
    pub fn file_bytes(&self) -> (u64, u64) {
        let mut cached = self.file_bytes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, bytes)) = *cached {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return bytes;
            }
        }
        let bytes = (
            crate::layout::dir_bytes(&self.layout.live()),
            crate::layout::dir_bytes(&self.layout.snapshots()),
        );
        *cached = Some((std::time::Instant::now(), bytes));
        bytes
    }

    /// The last acknowledged seq.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Reads the view (a poisoned lock is still read: the data is never left half-changed,
    /// every writer of it changes it in one step).
    pub fn read_view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the view.
    pub fn write_view(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest now.
    pub fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.read_view().manifest)
    }

    /// Whether appends are accepted.
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// The health now.
    pub fn health(&self) -> JournalHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends are refused from now on, because of `error`; counts it. Returns whether it was
    /// writable before (the first failure is logged at error by the caller).
    pub fn set_unavailable(&self, kind: WriteErrorKind, error: String) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let was = health.writable;
        *health.write_errors.entry(kind).or_insert(0) += 1;
        health.writable = false;
        health.kind = Some(kind);
        health.error = Some(error);
        if was {
            health.since_ms = Some(self.config.clock.now_ms());
        }
        self.writable.store(false, Ordering::Release);
        drop(health);
        self.poke();
        was
    }

    /// Counts a failed write without changing availability (a failed recovery attempt).
    pub fn count_write_error(&self, kind: WriteErrorKind, error: String) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        *health.write_errors.entry(kind).or_insert(0) += 1;
        health.kind = Some(kind);
        health.error = Some(error);
    }

    /// Appends are accepted again.
    pub fn set_writable(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.writable = true;
        health.error = None;
        health.kind = None;
        health.since_ms = None;
        self.writable.store(true, Ordering::Release);
    }

    /// Records what the scrub found in a segment (`None`: it is whole).
    pub fn scrubbed(&self, damage: Option<String>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.scrubbed_segments += 1;
        if let Some(damage) = damage {
            if health.damage.len() < 64 && !health.damage.contains(&damage) {
                health.damage.push(damage);
            }
        }
    }

    /// Counts a witness write or sync failure.
    pub fn count_witness_error(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.witness_errors += 1;
    }

    /// Wakes the maintenance thread.
    pub fn poke(&self) {
        let mut state = self.wake_state.lock().unwrap_or_else(|p| p.into_inner());
        state.pending = true;
        self.wake.notify_all();
    }

    /// Tells the maintenance thread to exit.
    pub fn stop(&self) {
        let mut state = self.wake_state.lock().unwrap_or_else(|p| p.into_inner());
        state.stop = true;
        self.wake.notify_all();
    }

    /// Whether the tail holds enough to seal a segment.
    pub fn tail_wants_seal(&self) -> bool {
        let view = self.read_view();
        view.tail.len() >= self.config.segment_records
            || view.tail.bytes() >= self.config.segment_bytes
    }

    /// Whether the tail is past its hard cap (appends wait for sealing).
    pub fn tail_is_full(&self) -> bool {
        let factor = crate::tail::TAIL_HARD_CAP_FACTOR;
        let view = self.read_view();
        view.tail.len() >= self.config.segment_records.saturating_mul(factor)
            || view.tail.bytes() >= self.config.segment_bytes.saturating_mul(factor)
    }
}
