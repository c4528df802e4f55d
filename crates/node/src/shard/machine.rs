//! The shard state machine. Records live in the Raft log itself (DESIGN decision 2), so
//! applying an entry only advances the shard's high-watermark (the applied index, above which
//! nothing is ever read) and remembers arrival times.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use millrace_proto::storage::shard_command::Command;
use millrace_raft::types::LogId;
use millrace_raft::GroupStateMachine;
use prost::Message;

/// The apply response of a batch refused because the shard is sealed.
pub const APPLY_CLOSED: &[u8] = b"closed";
/// The apply response of an idempotent producer's retry: this prefix, then the decimal log
/// index of the batch it repeats (or nothing when that batch is too old to name).
pub const APPLY_DUPLICATE_OF: &[u8] = b"duplicate-of:";
/// Batches remembered per (producer, shard): a retry repeats one of the last few batches.
const PRODUCER_BATCHES_KEPT: usize = 32;

/// One idempotent producer's recent batches on this shard: (first sequence, records, log index).
type ProducerBatches = VecDeque<(u64, u64, u64)>;
use tokio::sync::watch;

use super::throttle::ShardThrottle;

/// What readers of a shard replica on this node can see.
pub struct ShardShared {
    /// Highest applied log index (`None` until the first entry applies).
    applied: watch::Sender<Option<u64>>,
    latest_arrival_ms: Mutex<i64>,
    /// Log index of the shard's seal, once applied: the shard's end.
    sealed_at: Mutex<Option<u64>>,
    /// Highest retention mark applied: entries up to it may be purged.
    retention_mark: Mutex<Option<u64>>,
    /// Optional throughput limits, enforced while this replica leads.
    pub throttle: Mutex<ShardThrottle>,
    /// (arrival time, log index) of the first entry of each arrival second: a sparse index
    /// for AT_TIMESTAMP iterators (at most one sample per second of writes).
    arrival_samples: Mutex<Vec<(i64, u64)>>,
    /// Idempotent producers' recent batches, by producer id.
    producers: Mutex<BTreeMap<String, ProducerBatches>>,
    /// Log indexes of batches that repeat an earlier one: readers skip them.
    duplicates: Mutex<BTreeSet<u64>>,
}

/// Milliseconds between arrival-time samples.
const ARRIVAL_SAMPLE_MS: i64 = 1000;

impl ShardShared {
    pub fn new() -> ShardShared {
        ShardShared {
            applied: watch::channel(None).0,
            latest_arrival_ms: Mutex::new(0),
            arrival_samples: Mutex::new(Vec::new()),
            sealed_at: Mutex::new(None),
            retention_mark: Mutex::new(None),
            throttle: Mutex::new(ShardThrottle::new(std::time::Instant::now())),
            producers: Mutex::new(BTreeMap::new()),
            duplicates: Mutex::new(BTreeSet::new()),
        }
    }

    /// Is the entry at `index` an idempotent producer's retry (not part of the shard's records)?
    pub fn is_duplicate(&self, index: u64) -> bool {
        self.duplicates
            .lock()
            .expect("duplicates lock")
            .contains(&index)
    }

    /// Applies an idempotent producer's batch: `None` if new (remembered), else the apply
    /// response naming the batch it repeats.
    fn check_producer(&self, id: &str, sequence: u64, records: u64, index: u64) -> Option<Vec<u8>> {
        let mut producers = self.producers.lock().expect("producers lock");
        let batches = producers.entry(id.to_string()).or_default();
        let next = batches.back().map_or(0, |(first, n, _)| first + n);
        if batches.is_empty() || sequence >= next {
            batches.push_back((sequence, records, index));
            if batches.len() > PRODUCER_BATCHES_KEPT {
                batches.pop_front();
            }
            return None;
        }
        self.duplicates
            .lock()
            .expect("duplicates lock")
            .insert(index);
        let original = batches
            .iter()
            .find(|(first, _, _)| *first == sequence)
            .map(|(_, _, at)| at.to_string())
            .unwrap_or_default();
        Some([APPLY_DUPLICATE_OF, original.as_bytes()].concat())
    }

    /// Forgets duplicates and producers wholly at or below a retention mark (purged anyway).
    fn forget_upto(&self, mark: u64) {
        self.duplicates
            .lock()
            .expect("duplicates lock")
            .retain(|i| *i > mark);
        self.producers
            .lock()
            .expect("producers lock")
            .retain(|_, b| b.back().is_some_and(|(_, _, at)| *at > mark));
    }

    /// The highest retention mark applied so far.
    pub fn retention_mark(&self) -> Option<u64> {
        *self.retention_mark.lock().expect("mark lock")
    }

    /// The log index of the seal, if the shard is sealed.
    pub fn sealed_at(&self) -> Option<u64> {
        *self.sealed_at.lock().expect("seal lock")
    }

    /// A log index at or before the first entry that arrived at or after `ts_ms`.
    pub fn scan_start_for(&self, ts_ms: i64) -> u64 {
        let samples = self.arrival_samples.lock().expect("samples lock");
        let after = samples.partition_point(|(arrival, _)| *arrival < ts_ms);
        match after {
            0 => 0,
            n => samples[n - 1].1,
        }
    }

    pub fn applied_index(&self) -> Option<u64> {
        *self.applied.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.applied.subscribe()
    }

    pub fn latest_arrival_ms(&self) -> i64 {
        *self.latest_arrival_ms.lock().expect("arrival lock")
    }
}

impl Default for ShardShared {
    fn default() -> Self {
        ShardShared::new()
    }
}

/// The [`GroupStateMachine`] of a shard group.
pub struct ShardMachine {
    shared: std::sync::Arc<ShardShared>,
}

impl ShardMachine {
    pub fn new(shared: std::sync::Arc<ShardShared>) -> ShardMachine {
        ShardMachine { shared }
    }

    fn note_arrival(&self, arrival: i64, index: u64) {
        let mut latest = self.shared.latest_arrival_ms.lock().expect("arrival lock");
        *latest = (*latest).max(arrival);
        let mut samples = self.shared.arrival_samples.lock().expect("samples lock");
        if samples
            .last()
            .is_none_or(|(t, _)| arrival >= t + ARRIVAL_SAMPLE_MS)
        {
            samples.push((arrival, index));
        }
    }

    fn advance(&mut self, index: u64) {
        self.shared.applied.send_if_modified(|a| {
            debug_assert!(a.is_none_or(|a| a < index), "applied index went backwards");
            *a = Some(index);
            true
        });
    }
}

impl GroupStateMachine for ShardMachine {
    fn apply(&mut self, log_id: &LogId, data: &[u8]) -> Vec<u8> {
        let command = millrace_proto::storage::ShardCommand::decode(data)
            .ok()
            .and_then(|c| c.command);
        let sealed = self.shared.sealed_at();
        let response = match command {
            // A batch ordered after the seal is not part of this shard: refuse it.
            Some(Command::Put(_)) if sealed.is_some() => APPLY_CLOSED.to_vec(),
            Some(Command::Put(batch)) if !batch.producer_id.is_empty() => self
                .shared
                .check_producer(
                    &batch.producer_id,
                    batch.producer_sequence,
                    batch.records.len() as u64,
                    log_id.index,
                )
                .unwrap_or_else(|| {
                    self.note_arrival(batch.arrival_timestamp_ms, log_id.index);
                    Vec::new()
                }),
            Some(Command::Put(batch)) => {
                self.note_arrival(batch.arrival_timestamp_ms, log_id.index);
                Vec::new()
            }
            Some(Command::RetentionMark(mark)) => {
                let mut m = self.shared.retention_mark.lock().expect("mark lock");
                if m.is_none_or(|m| m < mark.upto_index) && mark.upto_index < log_id.index {
                    *m = Some(mark.upto_index);
                    self.shared.forget_upto(mark.upto_index);
                }
                Vec::new()
            }
            Some(Command::Seal(_)) => {
                let mut seal = self.shared.sealed_at.lock().expect("seal lock");
                seal.get_or_insert(log_id.index);
                Vec::new()
            }
            None => {
                tracing::error!(index = log_id.index, "undecodable shard command");
                Vec::new()
            }
        };
        self.advance(log_id.index);
        response
    }

    fn apply_empty(&mut self, log_id: &LogId) {
        self.advance(log_id.index);
    }

    fn snapshot(&self) -> Vec<u8> {
        let at = self.shared.applied_index();
        ShardSnapshot {
            sealed_at: self.shared.sealed_at(),
            applied: at,
            producers: self
                .shared
                .producers
                .lock()
                .expect("producers lock")
                .clone(),
            duplicates: self
                .shared
                .duplicates
                .lock()
                .expect("duplicates lock")
                .clone(),
        }
        .encode()
    }

    /// The shard as of `at`: its records stay in the log, so only the seal and the idempotent
    /// producers' state (each as of `at`: later entries re-apply after a restore) are state of
    /// its own.
    fn snapshot_at(&self, at: &LogId) -> Vec<u8> {
        let producers = self
            .shared
            .producers
            .lock()
            .expect("producers lock")
            .iter()
            .map(|(id, batches)| {
                let kept: ProducerBatches = batches
                    .iter()
                    .copied()
                    .filter(|b| b.2 <= at.index)
                    .collect();
                (id.clone(), kept)
            })
            .filter(|(_, kept)| !kept.is_empty())
            .collect();
        let duplicates = self
            .shared
            .duplicates
            .lock()
            .expect("duplicates lock")
            .range(..=at.index)
            .copied()
            .collect();
        ShardSnapshot {
            sealed_at: self.shared.sealed_at().filter(|s| *s <= at.index),
            applied: Some(at.index),
            producers,
            duplicates,
        }
        .encode()
    }

    fn restore(&mut self, last_log_id: Option<&LogId>, data: &[u8]) -> Result<(), String> {
        let snap = if data.is_empty() {
            ShardSnapshot::default()
        } else {
            serde_json::from_slice::<ShardSnapshot>(data)
                .map_err(|e| format!("bad shard snapshot: {e}"))?
        };
        *self.shared.sealed_at.lock().expect("seal lock") = snap.sealed_at;
        *self.shared.producers.lock().expect("producers lock") = snap.producers;
        *self.shared.duplicates.lock().expect("duplicates lock") = snap.duplicates;
        if let Some(l) = last_log_id {
            self.shared.applied.send_replace(Some(l.index));
        }
        Ok(())
    }
}

/// A shard snapshot (JSON, format version 1; `producers` and `duplicates` were added later and
/// default to empty).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ShardSnapshot {
    sealed_at: Option<u64>,
    applied: Option<u64>,
    #[serde(default)]
    producers: BTreeMap<String, ProducerBatches>,
    #[serde(default)]
    duplicates: BTreeSet<u64>,
}

impl ShardSnapshot {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("shard snapshot serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::storage::{BatchRecord, RecordBatch, ShardCommand};
    use millrace_raft::types::log_id;

    fn put(producer: &str, sequence: u64, records: usize) -> Vec<u8> {
        ShardCommand {
            command: Some(Command::Put(RecordBatch {
                arrival_timestamp_ms: 1,
                records: vec![BatchRecord::default(); records],
                producer_id: producer.into(),
                producer_sequence: sequence,
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn an_idempotent_producers_retries_are_marked_and_answered_with_the_original() {
        let shared = std::sync::Arc::new(ShardShared::new());
        let mut m = ShardMachine::new(shared.clone());
        assert_eq!(m.apply(&log_id(1, 1, 1), &put("p", 0, 3)), b"");
        // A retry of the same batch (e.g. after a leader change) at a later index.
        assert_eq!(
            m.apply(&log_id(2, 2, 2), &put("p", 0, 3)),
            b"duplicate-of:1"
        );
        assert!(shared.is_duplicate(2) && !shared.is_duplicate(1));
        // The next batch, then a retry of it, then plain batches and another producer.
        assert_eq!(m.apply(&log_id(2, 2, 3), &put("p", 3, 2)), b"");
        assert_eq!(
            m.apply(&log_id(2, 2, 4), &put("p", 3, 2)),
            b"duplicate-of:3"
        );
        assert_eq!(m.apply(&log_id(2, 2, 5), &put("", 0, 2)), b"");
        assert_eq!(m.apply(&log_id(2, 2, 6), &put("q", 0, 1)), b"");
        assert!(!shared.is_duplicate(5) && !shared.is_duplicate(6));
        // A gap (an earlier batch was given up) is accepted.
        assert_eq!(m.apply(&log_id(2, 2, 7), &put("p", 10, 1)), b"");

        // The state survives a snapshot as of index 4: entries after it re-apply the same way.
        let snap = m.snapshot_at(&log_id(2, 2, 4));
        let restored_shared = std::sync::Arc::new(ShardShared::new());
        let mut restored = ShardMachine::new(restored_shared.clone());
        restored.restore(Some(&log_id(2, 2, 4)), &snap).unwrap();
        assert!(restored_shared.is_duplicate(2) && restored_shared.is_duplicate(4));
        assert_eq!(restored.apply(&log_id(2, 2, 5), &put("", 0, 2)), b"");
        assert_eq!(restored.apply(&log_id(2, 2, 6), &put("q", 0, 1)), b"");
        assert_eq!(restored.apply(&log_id(2, 2, 7), &put("p", 10, 1)), b"");
        assert_eq!(
            restored.apply(&log_id(2, 2, 8), &put("p", 10, 1)),
            b"duplicate-of:7"
        );

        // A retention mark forgets what it purges.
        let mark = ShardCommand {
            command: Some(Command::RetentionMark(
                millrace_proto::storage::RetentionMark { upto_index: 4 },
            )),
        }
        .encode_to_vec();
        restored.apply(&log_id(2, 2, 9), &mark);
        assert!(!restored_shared.is_duplicate(2) && !restored_shared.is_duplicate(4));
        assert!(restored_shared.is_duplicate(8));
    }
}
