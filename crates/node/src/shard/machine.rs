//! The shard state machine. Records live in the Raft log itself (DESIGN decision 2), so
//! applying an entry only advances the shard's high-watermark (the applied index, above which
//! nothing is ever read) and remembers arrival times.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use crate::shard::entry::{self, ShardEntry};
use millrace_proto::storage::shard_command::Command;
use millrace_raft::types::LogId;
use millrace_raft::{GroupStateMachine, UnappliableEntry};

/// Requests remembered per (producer, shard): a retry repeats one of the last few requests.
const PRODUCER_REQUESTS_KEPT: usize = 32;

/// One idempotent producer's request, as applied on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerRequest {
    /// The producer sequence of its first record.
    pub first: u64,
    pub records: u64,
    /// Where its records are: the entry's log index and the first record's position.
    pub index: u64,
    pub position: u32,
}

/// One idempotent producer's recent requests on this shard, oldest first.
type ProducerRequests = VecDeque<ProducerRequest>;

/// What applying one request of a record batch entry did (the entry's apply response holds
/// one per request, in order; see [`encode_outcomes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Its records are part of the shard from this position of the entry on.
    Appended { position: u32 },
    /// An idempotent producer's retry of the request whose records are at (index, position):
    /// not part of the shard; readers skip it.
    Duplicate { index: u64, position: u32 },
    /// A retry of a request too old to be remembered: not part of the shard either.
    DuplicateTooOld,
    /// The shard was sealed before the entry: nothing of it is part of the shard.
    Closed,
}

const OUTCOME_BYTES: usize = 1 + 8 + 4;

/// The apply response of a record batch entry: 13 bytes per request (tag, u64 LE index, u32 LE
/// position). In memory only (answers to the proposer), never on disk.
pub fn encode_outcomes(outcomes: &[RequestOutcome]) -> Vec<u8> {
    let mut out = Vec::with_capacity(outcomes.len() * OUTCOME_BYTES);
    for o in outcomes {
        let (tag, index, position) = match *o {
            RequestOutcome::Appended { position } => (0u8, 0, position),
            RequestOutcome::Duplicate { index, position } => (1, index, position),
            RequestOutcome::DuplicateTooOld => (2, 0, 0),
            RequestOutcome::Closed => (3, 0, 0),
        };
        out.push(tag);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&position.to_le_bytes());
    }
    out
}

/// Decodes [`encode_outcomes`]; `None` when the bytes are not a list of outcomes.
pub fn decode_outcomes(bytes: &[u8]) -> Option<Vec<RequestOutcome>> {
    if !bytes.len().is_multiple_of(OUTCOME_BYTES) {
        return None;
    }
    bytes
        .chunks(OUTCOME_BYTES)
        .map(|c| {
            let index = u64::from_le_bytes(c[1..9].try_into().ok()?);
            let position = u32::from_le_bytes(c[9..13].try_into().ok()?);
            Some(match c[0] {
                0 => RequestOutcome::Appended { position },
                1 => RequestOutcome::Duplicate { index, position },
                2 => RequestOutcome::DuplicateTooOld,
                3 => RequestOutcome::Closed,
                _ => return None,
            })
        })
        .collect()
}

/// Positions `[start, end)` of one entry that hold an idempotent producer's retry.
pub type Span = (u32, u32);
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
    /// Records each applied entry added (for consumer groups' lag in records).
    record_counts: Mutex<super::record_counts::RecordCounts>,
    /// Records and entry bytes this replica applied since it started (its load, for ON_DEMAND
    /// scaling; only the leader's are used).
    records_applied: std::sync::atomic::AtomicU64,
    bytes_applied: std::sync::atomic::AtomicU64,
    /// Arrival times of entries read for consumer groups' lag in time (a few: each group's
    /// first unprocessed entry), by log index.
    arrivals_read: Mutex<BTreeMap<u64, i64>>,
    /// Idempotent producers' recent requests, by producer id.
    producers: Mutex<BTreeMap<String, ProducerRequests>>,
    /// Log index → the positions in that entry of requests that repeat an earlier one:
    /// readers skip them.
    duplicates: Mutex<BTreeMap<u64, Vec<Span>>>,
    /// Coalesces this replica's writes into entries while it leads.
    pub proposer: super::proposer::ShardProposer,
    /// Pages read ahead for consumers while this replica leads.
    pub read_ahead: super::read_ahead::ReadAhead,
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
            record_counts: Mutex::default(),
            arrivals_read: Mutex::default(),
            records_applied: Default::default(),
            bytes_applied: Default::default(),
            producers: Mutex::new(BTreeMap::new()),
            duplicates: Mutex::new(BTreeMap::new()),
            proposer: super::proposer::ShardProposer::default(),
            read_ahead: Default::default(),
        }
    }

    /// The positions of the entry at `index` that repeat an earlier request (an idempotent
    /// producer's retries: not part of the shard's records), if any.
    pub fn duplicate_spans(&self, index: u64) -> Option<Vec<Span>> {
        self.duplicates
            .lock()
            .expect("duplicates lock")
            .get(&index)
            .cloned()
    }

    /// Applies an idempotent producer's request: new (remembered), or a retry of a request
    /// applied before.
    fn check_producer(
        &self,
        id: &str,
        sequence: u64,
        records: u64,
        index: u64,
        position: u32,
    ) -> RequestOutcome {
        let mut producers = self.producers.lock().expect("producers lock");
        let requests = producers.entry(id.to_string()).or_default();
        let next = requests.back().map_or(0, |r| r.first + r.records);
        if requests.is_empty() || sequence >= next {
            requests.push_back(ProducerRequest {
                first: sequence,
                records,
                index,
                position,
            });
            if requests.len() > PRODUCER_REQUESTS_KEPT {
                requests.pop_front();
            }
            return RequestOutcome::Appended { position };
        }
        let end = position.saturating_add(records as u32);
        self.duplicates
            .lock()
            .expect("duplicates lock")
            .entry(index)
            .or_default()
            .push((position, end));
        match requests.iter().find(|r| r.first == sequence) {
            Some(original) => RequestOutcome::Duplicate {
                index: original.index,
                position: original.position,
            },
            None => RequestOutcome::DuplicateTooOld,
        }
    }

    /// Forgets duplicates, producers and record counts wholly at or below a retention mark
    /// (purged anyway).
    fn forget_upto(&self, mark: u64) {
        self.record_counts
            .lock()
            .expect("record counts lock")
            .forget_upto(mark);
        self.duplicates
            .lock()
            .expect("duplicates lock")
            .retain(|i, _| *i > mark);
        self.producers
            .lock()
            .expect("producers lock")
            .retain(|_, b| b.back().is_some_and(|r| r.index > mark));
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

    /// (records, bytes) this replica applied since it started.
    pub fn applied_load(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.records_applied.load(Relaxed),
            self.bytes_applied.load(Relaxed),
        )
    }

    /// The arrival time of the entry at `index`, read with `read` unless read before.
    pub fn arrival_of(
        &self,
        index: u64,
        read: impl FnOnce() -> Result<Option<i64>, String>,
    ) -> Result<Option<i64>, String> {
        /// Arrival times kept: the lowest indexes go first (consumers move forward).
        const KEPT: usize = 256;
        if let Some(at) = self
            .arrivals_read
            .lock()
            .expect("arrivals lock")
            .get(&index)
        {
            return Ok(Some(*at));
        }
        let arrival = read()?;
        if let Some(at) = arrival {
            let mut kept = self.arrivals_read.lock().expect("arrivals lock");
            kept.insert(index, at);
            while kept.len() > KEPT {
                kept.pop_first();
            }
        }
        Ok(arrival)
    }

    /// How far a consumer whose checkpoint is the record at `(log index, position)` (or none)
    /// is behind this replica's applied entries.
    pub fn behind(&self, checkpoint: Option<(u64, u32)>) -> super::record_counts::Behind {
        let duplicates = checkpoint
            .and_then(|(index, _)| self.duplicate_spans(index))
            .unwrap_or_default();
        self.record_counts
            .lock()
            .expect("record counts lock")
            .behind(checkpoint, &duplicates)
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

    /// Applies the requests `(records, producer id, producer sequence)` of a record batch
    /// entry, reading nothing but its header; also returns the records it added to the shard.
    fn apply_batch(
        &mut self,
        index: u64,
        arrival: i64,
        requests: &[(u64, &str, u64)],
    ) -> (Vec<u8>, u64) {
        // A batch ordered after the seal is not part of this shard: refuse it.
        if self.shared.sealed_at().is_some() {
            let closed = vec![RequestOutcome::Closed; requests.len()];
            return (encode_outcomes(&closed), 0);
        }
        let mut position = 0u32;
        let mut any_new = false;
        let mut added = 0u64;
        let outcomes: Vec<RequestOutcome> = requests
            .iter()
            .map(|&(records, producer, sequence)| {
                let outcome = if producer.is_empty() {
                    RequestOutcome::Appended { position }
                } else {
                    self.shared
                        .check_producer(producer, sequence, records, index, position)
                };
                if matches!(outcome, RequestOutcome::Appended { .. }) {
                    any_new = true;
                    added += records;
                }
                position = position.saturating_add(records as u32);
                outcome
            })
            .collect();
        if any_new {
            self.note_arrival(arrival, index);
        }
        (encode_outcomes(&outcomes), added)
    }

    fn advance(&mut self, index: u64, records: u64) {
        self.shared
            .record_counts
            .lock()
            .expect("record counts lock")
            .push(index, records);
        self.shared.applied.send_if_modified(|a| {
            debug_assert!(a.is_none_or(|a| a < index), "applied index went backwards");
            *a = Some(index);
            true
        });
    }
}

impl GroupStateMachine for ShardMachine {
    fn apply(&mut self, log_id: &LogId, data: &[u8]) -> Result<Vec<u8>, UnappliableEntry> {
        let (response, records) = match entry::decode(data) {
            Ok(ShardEntry::Batch { header, .. }) => {
                let requests: Vec<(u64, &str, u64)> = header
                    .requests
                    .iter()
                    .map(|r| {
                        (
                            r.records as u64,
                            r.producer_id.as_str(),
                            r.producer_sequence,
                        )
                    })
                    .collect();
                self.apply_batch(log_id.index, header.arrival_timestamp_ms, &requests)
            }
            // Format version 1: one request per entry.
            Ok(ShardEntry::Command(Command::Put(batch))) => {
                let request = (
                    batch.records.len() as u64,
                    batch.producer_id.as_str(),
                    batch.producer_sequence,
                );
                self.apply_batch(log_id.index, batch.arrival_timestamp_ms, &[request])
            }
            Ok(ShardEntry::Command(Command::RetentionMark(mark))) => {
                let mut m = self.shared.retention_mark.lock().expect("mark lock");
                if m.is_none_or(|m| m < mark.upto_index) && mark.upto_index < log_id.index {
                    *m = Some(mark.upto_index);
                    self.shared.forget_upto(mark.upto_index);
                }
                (Vec::new(), 0)
            }
            Ok(ShardEntry::Command(Command::Seal(_))) => {
                let mut seal = self.shared.sealed_at.lock().expect("seal lock");
                seal.get_or_insert(log_id.index);
                (Vec::new(), 0)
            }
            Ok(ShardEntry::Empty) => (Vec::new(), 0),
            Err(e) => {
                return Err(UnappliableEntry {
                    index: log_id.index,
                    reason: format!("shard entry does not decode: {e}"),
                })
            }
        };
        if records > 0 {
            use std::sync::atomic::Ordering::Relaxed;
            self.shared.records_applied.fetch_add(records, Relaxed);
            self.shared
                .bytes_applied
                .fetch_add(data.len() as u64, Relaxed);
        }
        self.advance(log_id.index, records);
        Ok(response)
    }

    fn apply_empty(&mut self, log_id: &LogId) {
        self.advance(log_id.index, 0);
    }

    fn snapshot(&self) -> Vec<u8> {
        match self.shared.applied_index() {
            Some(at) => self.snapshot_as_of(at),
            None => ShardSnapshot::default().encode(),
        }
    }

    /// The shard as of `at`: its records stay in the log, so only the seal and the idempotent
    /// producers' state (each as of `at`: later entries re-apply after a restore) are state of
    /// its own.
    fn snapshot_at(&self, at: &LogId) -> Vec<u8> {
        self.snapshot_as_of(at.index)
    }

    fn restore(&mut self, last_log_id: Option<&LogId>, data: &[u8]) -> Result<(), String> {
        let snap = if data.is_empty() {
            ShardSnapshot::default()
        } else {
            serde_json::from_slice::<ShardSnapshot>(data)
                .map_err(|e| format!("bad shard snapshot: {e}"))?
        };
        let (producers, duplicates) = snap.upgraded();
        *self.shared.sealed_at.lock().expect("seal lock") = snap.sealed_at;
        *self.shared.producers.lock().expect("producers lock") = producers;
        *self.shared.duplicates.lock().expect("duplicates lock") = duplicates;
        if let Some(l) = last_log_id {
            self.shared.applied.send_replace(Some(l.index));
        }
        Ok(())
    }
}

impl ShardMachine {
    fn snapshot_as_of(&self, at: u64) -> Vec<u8> {
        let producer_requests = self
            .shared
            .producers
            .lock()
            .expect("producers lock")
            .iter()
            .map(|(id, requests)| {
                let kept: ProducerRequests =
                    requests.iter().copied().filter(|r| r.index <= at).collect();
                (id.clone(), kept)
            })
            .filter(|(_, kept)| !kept.is_empty())
            .collect();
        let duplicate_spans = self
            .shared
            .duplicates
            .lock()
            .expect("duplicates lock")
            .range(..=at)
            .map(|(i, spans)| (*i, spans.clone()))
            .collect();
        ShardSnapshot {
            sealed_at: self.shared.sealed_at().filter(|s| *s <= at),
            applied: Some(at),
            producer_requests,
            duplicate_spans,
            ..Default::default()
        }
        .encode()
    }
}

/// A shard snapshot (JSON, format version 1, fields only added). `producers` and
/// `duplicates` are what snapshots written before record batch format 2 hold (whole entries:
/// one request each); they are read, upgraded, and never written again.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ShardSnapshot {
    sealed_at: Option<u64>,
    applied: Option<u64>,
    /// Before format 2: producer id → `[first sequence, records, log index]` of its batches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    producers: BTreeMap<String, VecDeque<(u64, u64, u64)>>,
    /// Before format 2: log indexes of whole entries that repeat an earlier batch.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    duplicates: BTreeSet<u64>,
    #[serde(default)]
    producer_requests: BTreeMap<String, ProducerRequests>,
    #[serde(default)]
    duplicate_spans: BTreeMap<u64, Vec<Span>>,
}

impl ShardSnapshot {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("shard snapshot serialises")
    }

    /// The producers and duplicates in today's form, whichever form the snapshot has.
    fn upgraded(&self) -> (BTreeMap<String, ProducerRequests>, BTreeMap<u64, Vec<Span>>) {
        let mut producers = self.producer_requests.clone();
        for (id, batches) in &self.producers {
            let requests = batches
                .iter()
                .map(|&(first, records, index)| ProducerRequest {
                    first,
                    records,
                    index,
                    position: 0,
                });
            producers.entry(id.clone()).or_default().extend(requests);
        }
        let mut duplicates = self.duplicate_spans.clone();
        for index in &self.duplicates {
            duplicates.entry(*index).or_default().push((0, u32::MAX));
        }
        (producers, duplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::entry::{encode_batch, encode_command, RequestRecords};
    use millrace_proto::storage::{BatchRecord, RecordBatch, RetentionMark, ShardCommand};
    use millrace_raft::types::log_id;
    use prost::Message;
    use RequestOutcome::{Appended, Duplicate, DuplicateTooOld};

    /// One entry coalescing `(producer, sequence, records)` requests.
    fn merged(requests: &[(&str, u64, usize)]) -> Vec<u8> {
        let records: Vec<Vec<BatchRecord>> = requests
            .iter()
            .map(|r| vec![BatchRecord::default(); r.2])
            .collect();
        let parts: Vec<RequestRecords<'_>> = requests
            .iter()
            .zip(&records)
            .map(|(r, recs)| RequestRecords {
                records: recs,
                producer: (!r.0.is_empty()).then_some((r.0, r.1)),
            })
            .collect();
        encode_batch(1, &parts)
    }

    fn put(producer: &str, sequence: u64, records: usize) -> Vec<u8> {
        merged(&[(producer, sequence, records)])
    }

    fn apply(m: &mut ShardMachine, index: u64, data: &[u8]) -> Vec<RequestOutcome> {
        decode_outcomes(&m.apply(&log_id(2, 2, index), data).expect("applies")).expect("outcomes")
    }

    fn dup(shared: &ShardShared, index: u64) -> Vec<Span> {
        shared.duplicate_spans(index).unwrap_or_default()
    }

    #[test]
    fn an_idempotent_producers_retries_are_marked_and_answered_with_the_original() {
        let shared = std::sync::Arc::new(ShardShared::new());
        let mut m = ShardMachine::new(shared.clone());
        assert_eq!(
            apply(&mut m, 1, &put("p", 0, 3)),
            [Appended { position: 0 }]
        );
        // A retry of the same request (e.g. after a leader change) at a later index.
        let original = Duplicate {
            index: 1,
            position: 0,
        };
        assert_eq!(apply(&mut m, 2, &put("p", 0, 3)), [original]);
        assert_eq!(dup(&shared, 2), [(0, 3)]);
        assert!(dup(&shared, 1).is_empty());
        // The next request, then a retry of it, then plain requests and another producer.
        assert_eq!(
            apply(&mut m, 3, &put("p", 3, 2)),
            [Appended { position: 0 }]
        );
        let original = Duplicate {
            index: 3,
            position: 0,
        };
        assert_eq!(apply(&mut m, 4, &put("p", 3, 2)), [original]);
        assert_eq!(apply(&mut m, 5, &put("", 0, 2)), [Appended { position: 0 }]);
        assert_eq!(
            apply(&mut m, 6, &put("q", 0, 1)),
            [Appended { position: 0 }]
        );
        assert!(dup(&shared, 5).is_empty() && dup(&shared, 6).is_empty());
        // A gap (an earlier request was given up) is accepted.
        assert_eq!(
            apply(&mut m, 7, &put("p", 10, 1)),
            [Appended { position: 0 }]
        );
        // The retries are not records of the shard: a consumer with no checkpoint is behind
        // 3 + 2 + 2 + 1 + 1 records, the first of them at index 1.
        assert_eq!(shared.behind(None).records, 9);
        assert_eq!(shared.behind(None).first_index, Some(1));
        // Past the first request: the second (index 3) is next, its retry (index 4) is not.
        assert_eq!(shared.behind(Some((2, 2))).records, 6);
        assert_eq!(shared.behind(Some((3, 1))).first_index, Some(5));

        // The state survives a snapshot as of index 4: entries after it re-apply the same way.
        let snap = m.snapshot_at(&log_id(2, 2, 4));
        let restored_shared = std::sync::Arc::new(ShardShared::new());
        let mut restored = ShardMachine::new(restored_shared.clone());
        restored.restore(Some(&log_id(2, 2, 4)), &snap).unwrap();
        assert_eq!(dup(&restored_shared, 2), [(0, 3)]);
        assert_eq!(dup(&restored_shared, 4), [(0, 2)]);
        assert_eq!(
            apply(&mut restored, 5, &put("", 0, 2)),
            [Appended { position: 0 }]
        );
        assert_eq!(
            apply(&mut restored, 6, &put("q", 0, 1)),
            [Appended { position: 0 }]
        );
        assert_eq!(
            apply(&mut restored, 7, &put("p", 10, 1)),
            [Appended { position: 0 }]
        );
        let original = Duplicate {
            index: 7,
            position: 0,
        };
        assert_eq!(apply(&mut restored, 8, &put("p", 10, 1)), [original]);

        // A retention mark forgets what it purges.
        let mark = encode_command(Command::RetentionMark(RetentionMark { upto_index: 4 }));
        restored.apply(&log_id(2, 2, 9), &mark).unwrap();
        assert!(dup(&restored_shared, 2).is_empty() && dup(&restored_shared, 4).is_empty());
        assert_eq!(dup(&restored_shared, 8), [(0, 1)]);
    }

    #[test]
    fn requests_coalesced_into_one_entry_keep_their_own_positions_and_de_duplication() {
        let shared = std::sync::Arc::new(ShardShared::new());
        let mut m = ShardMachine::new(shared.clone());
        // Three requests in one entry: plain, producer p, producer q.
        let first = apply(&mut m, 1, &merged(&[("", 0, 2), ("p", 0, 3), ("q", 0, 1)]));
        assert_eq!(
            first,
            [
                Appended { position: 0 },
                Appended { position: 2 },
                Appended { position: 5 }
            ]
        );
        // A later entry repeats p's request between two new ones: only p's span is skipped,
        // and p is answered with where its records first landed.
        let second = apply(&mut m, 2, &merged(&[("q", 1, 2), ("p", 0, 3), ("", 0, 1)]));
        assert_eq!(
            second,
            [
                Appended { position: 0 },
                Duplicate {
                    index: 1,
                    position: 2
                },
                Appended { position: 5 }
            ]
        );
        assert_eq!(dup(&shared, 2), [(2, 5)]);
        // A retry of a request no longer remembered is refused, not written again.
        for i in 0..PRODUCER_REQUESTS_KEPT as u64 {
            apply(&mut m, 3 + i, &put("p", 3 + i, 1));
        }
        assert_eq!(apply(&mut m, 100, &put("p", 0, 3)), [DuplicateTooOld]);
        // After the seal every request of an entry is refused.
        m.apply(
            &log_id(2, 2, 101),
            &encode_command(Command::Seal(Default::default())),
        )
        .unwrap();
        let closed = apply(&mut m, 102, &merged(&[("", 0, 1), ("r", 0, 1)]));
        assert_eq!(closed, [RequestOutcome::Closed, RequestOutcome::Closed]);
    }

    #[test]
    fn an_entry_that_does_not_decode_is_refused_and_the_replica_stays_where_it_was() {
        let shared = std::sync::Arc::new(ShardShared::new());
        let mut m = ShardMachine::new(shared.clone());
        apply(&mut m, 1, &put("", 0, 2));
        let refused = m
            .apply(&log_id(2, 2, 2), b"\xff\xfe not an entry")
            .unwrap_err();
        assert_eq!(refused.index, 2);
        assert!(refused.reason.contains("does not decode"), "{refused}");
        assert!(refused.to_string().contains("stops"), "{refused}");
        // Nothing of it was applied: the replica's applied index is still the entry before.
        assert_eq!(shared.applied_index(), Some(1));
    }

    #[test]
    fn format_1_entries_and_snapshots_still_apply() {
        let shared = std::sync::Arc::new(ShardShared::new());
        let mut m = ShardMachine::new(shared.clone());
        let v1 = |sequence| {
            ShardCommand {
                command: Some(Command::Put(RecordBatch {
                    arrival_timestamp_ms: 1,
                    records: vec![BatchRecord::default(); 2],
                    producer_id: "p".into(),
                    producer_sequence: sequence,
                })),
            }
            .encode_to_vec()
        };
        assert_eq!(apply(&mut m, 1, &v1(0)), [Appended { position: 0 }]);
        let original = Duplicate {
            index: 1,
            position: 0,
        };
        assert_eq!(apply(&mut m, 2, &v1(0)), [original]);
        // A snapshot written before format 2: whole-entry duplicates and 3-field batches.
        let old = br#"{"sealed_at":null,"applied":5,"producers":{"p":[[0,2,1]]},"duplicates":[2]}"#;
        let restored_shared = std::sync::Arc::new(ShardShared::new());
        let mut restored = ShardMachine::new(restored_shared.clone());
        restored.restore(Some(&log_id(1, 1, 5)), old).unwrap();
        assert_eq!(dup(&restored_shared, 2), [(0, u32::MAX)]);
        assert_eq!(apply(&mut restored, 6, &put("p", 0, 2)), [original]);
        assert_eq!(
            apply(&mut restored, 7, &put("p", 2, 1)),
            [Appended { position: 0 }]
        );
    }
}
