//! The tail: every acknowledged record not yet sealed into a segment, in memory.
//!
//! Owns: the records between the last sealed seq and the last acknowledged one, with a per-pool
//! index of them. Readers of recent history read here, never sled (see `store`). It is
//! bounded: the maintenance thread seals its oldest records into a segment once it holds
//! `segment_records` records or `segment_bytes` bytes, and the writer waits (then refuses)
//! when sealing falls behind by [`TAIL_HARD_CAP_FACTOR`] times that.
//!
//! **Must never:** hold a record that is not durable in the live store, or lose one that is
//! not yet in a durable segment listed by the manifest.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The tail may grow to this many times the seal thresholds while sealing is slow; past that,
/// appends wait for sealing (and fail if it does not catch up).
pub const TAIL_HARD_CAP_FACTOR: usize = 4;

/// One record of the tail.
#[derive(Debug, Clone)]
pub struct TailRecord {
    /// Its seq.
    pub seq: u64,
    /// Its stored bytes (`record` framing).
    pub value: Arc<[u8]>,
    /// Its envelope's pool id.
    pub pool_id: Option<Arc<str>>,
    /// Its envelope's `ts_ms`.
    pub ts_ms: u64,
}

/// The unsealed records, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    records: VecDeque<TailRecord>,
    bytes: usize,
    pools: HashMap<Arc<str>, VecDeque<u64>>,
}

impl Tail {
    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// Bytes of the values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The oldest record's seq.
    pub fn first_seq(&self) -> Option<u64> {
        self.records.front().map(|r| r.seq)
    }
    /// The newest record's seq.
    pub fn last_seq(&self) -> Option<u64> {
        self.records.back().map(|r| r.seq)
    }

    /// Appends a record (its seq above every held one).
    pub fn push(&mut self, record: TailRecord) {
        debug_assert!(self.last_seq().is_none_or(|last| record.seq > last));
        self.bytes += record.value.len();
        if let Some(pool) = &record.pool_id {
            self.pools
                .entry(Arc::clone(pool))
                .or_default()
                .push_back(record.seq);
        }
        self.records.push_back(record);
    }

    fn position(&self, seq: u64) -> usize {
        self.records.partition_point(|r| r.seq < seq)
    }

    /// The record with this seq.
    pub fn get(&self, seq: u64) -> Option<&TailRecord> {
        self.records
            .get(self.position(seq))
            .filter(|r| r.seq == seq)
    }

    /// Up to `max` records with `from <= seq <= to`, oldest first.
    pub fn range(&self, from: u64, to: u64, max: usize) -> Vec<(u64, Arc<[u8]>)> {
        self.records
            .range(self.position(from)..)
            .take_while(|r| r.seq <= to)
            .take(max)
            .map(|r| (r.seq, Arc::clone(&r.value)))
            .collect()
    }

    /// The oldest records to seal: at most `max_records` and (beyond the first) `max_bytes`.
    pub fn oldest(&self, max_records: usize, max_bytes: usize) -> Vec<TailRecord> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for record in self.records.iter().take(max_records) {
            if !out.is_empty() && bytes + record.value.len() > max_bytes {
                break;
            }
            bytes += record.value.len();
            out.push(record.clone());
        }
        out
    }

    /// Seqs of `pool_id`'s records with `seq >= since`, oldest first, at most `limit`.
    pub fn pool_seqs(&self, pool_id: &str, since: u64, limit: usize) -> Vec<u64> {
        self.pools.get(pool_id).map_or_else(Vec::new, |seqs| {
            let start = seqs.partition_point(|s| *s < since);
            seqs.range(start..).take(limit).copied().collect()
        })
    }

    /// Drops the records with `seq <= through` (they are sealed).
    pub fn pop_through(&mut self, through: u64) {
        while self.first_seq().is_some_and(|s| s <= through) {
            if let Some(record) = self.records.pop_front() {
                self.bytes -= record.value.len();
                self.unindex_front(&record);
            }
        }
    }

    fn unindex_front(&mut self, record: &TailRecord) {
        if let Some(pool) = &record.pool_id {
            if let Some(seqs) = self.pools.get_mut(pool) {
                if seqs.front() == Some(&record.seq) {
                    seqs.pop_front();
                }
                if seqs.is_empty() {
                    self.pools.remove(pool);
                }
            }
        }
    }

    /// Drops the records with `seq >= from` (truncation).
    pub fn truncate_from(&mut self, from: u64) {
        while self.last_seq().is_some_and(|s| s >= from) {
            if let Some(record) = self.records.pop_back() {
                self.bytes -= record.value.len();
                if let Some(pool) = &record.pool_id {
                    if let Some(seqs) = self.pools.get_mut(pool) {
                        seqs.pop_back();
                        if seqs.is_empty() {
                            self.pools.remove(pool);
                        }
                    }
                }
            }
        }
    }

    /// Every record, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &TailRecord> {
        self.records.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, pool: Option<&str>) -> TailRecord {
        TailRecord {
            seq,
            value: Arc::from(vec![seq as u8; 10]),
            pool_id: pool.map(Arc::from),
            ts_ms: seq,
        }
    }

    #[test]
    fn push_range_pop_and_truncate_keep_the_pool_index_in_step() {
        let mut tail = Tail::default();
        for seq in 5..=14 {
            tail.push(rec(seq, if seq % 2 == 0 { Some("a") } else { None }));
        }
        assert_eq!(tail.bytes(), 100);
        assert_eq!(
            tail.range(7, 9, 100)
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        assert_eq!(tail.pool_seqs("a", 7, 2), vec![8, 10]);
        tail.pop_through(9);
        assert_eq!(tail.first_seq(), Some(10));
        assert_eq!(tail.pool_seqs("a", 0, 10), vec![10, 12, 14]);
        tail.truncate_from(13);
        assert_eq!(tail.last_seq(), Some(12));
        assert_eq!(tail.pool_seqs("a", 0, 10), vec![10, 12]);
        assert_eq!(tail.oldest(2, 1000).len(), 2);
        assert_eq!(tail.oldest(10, 15).len(), 1);
        assert!(tail.get(11).is_some() && tail.get(13).is_none());
    }
}
