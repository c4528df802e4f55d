//! The shard state machine. Records live in the Raft log itself (DESIGN decision 2), so
//! applying an entry only advances the shard's high-watermark (the applied index, above which
//! nothing is ever read) and remembers arrival times.

use std::sync::Mutex;

use millrace_proto::storage::shard_command::Command;
use millrace_raft::types::LogId;
use millrace_raft::GroupStateMachine;
use prost::Message;

/// The apply response of a batch refused because the shard is sealed.
pub const APPLY_CLOSED: &[u8] = b"closed";
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
        }
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
            Some(Command::Put(batch)) => {
                let arrival = batch.arrival_timestamp_ms;
                let mut latest = self.shared.latest_arrival_ms.lock().expect("arrival lock");
                *latest = (*latest).max(arrival);
                let mut samples = self.shared.arrival_samples.lock().expect("samples lock");
                if samples
                    .last()
                    .is_none_or(|(t, _)| arrival >= t + ARRIVAL_SAMPLE_MS)
                {
                    samples.push((arrival, log_id.index));
                }
                Vec::new()
            }
            Some(Command::RetentionMark(mark)) => {
                let mut m = self.shared.retention_mark.lock().expect("mark lock");
                if m.is_none_or(|m| m < mark.upto_index) && mark.upto_index < log_id.index {
                    *m = Some(mark.upto_index);
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
        }
        .encode()
    }

    /// The shard as of `at`: its records stay in the log, so only the seal (if at or before
    /// `at`) is state of its own.
    fn snapshot_at(&self, at: &LogId) -> Vec<u8> {
        ShardSnapshot {
            sealed_at: self.shared.sealed_at().filter(|s| *s <= at.index),
            applied: Some(at.index),
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
        if let Some(l) = last_log_id {
            self.shared.applied.send_replace(Some(l.index));
        }
        Ok(())
    }
}

/// A shard snapshot (JSON, format version 1).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ShardSnapshot {
    sealed_at: Option<u64>,
    applied: Option<u64>,
}

impl ShardSnapshot {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("shard snapshot serialises")
    }
}
