//! The shard state machine. Records live in the Raft log itself (DESIGN decision 2), so
//! applying an entry only advances the shard's high-watermark (the applied index, above which
//! nothing is ever read) and remembers arrival times.

use std::sync::Mutex;

use millrace_raft::types::LogId;
use millrace_raft::GroupStateMachine;
use prost::Message;
use tokio::sync::watch;

/// What readers of a shard replica on this node can see.
pub struct ShardShared {
    /// Highest applied log index (`None` until the first entry applies).
    applied: watch::Sender<Option<u64>>,
    latest_arrival_ms: Mutex<i64>,
}

impl ShardShared {
    pub fn new() -> ShardShared {
        ShardShared {
            applied: watch::channel(None).0,
            latest_arrival_ms: Mutex::new(0),
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
        if let Ok(cmd) = millrace_proto::storage::ShardCommand::decode(data) {
            if let Some(millrace_proto::storage::shard_command::Command::Put(batch)) = cmd.command {
                let mut latest = self.shared.latest_arrival_ms.lock().expect("arrival lock");
                *latest = (*latest).max(batch.arrival_timestamp_ms);
            }
        }
        self.advance(log_id.index);
        Vec::new()
    }

    fn apply_empty(&mut self, log_id: &LogId) {
        self.advance(log_id.index);
    }

    fn snapshot(&self) -> Vec<u8> {
        // The records stay in the log; a shard snapshot carries no state of its own yet.
        Vec::new()
    }

    fn restore(&mut self, last_log_id: Option<&LogId>, _data: &[u8]) -> Result<(), String> {
        if let Some(l) = last_log_id {
            self.shared.applied.send_replace(Some(l.index));
        }
        Ok(())
    }
}
