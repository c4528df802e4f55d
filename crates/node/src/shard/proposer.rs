//! Coalescing on the shard leader (DESIGN decision 12): concurrent writes to one shard are
//! merged into one Raft entry while earlier entries are still in flight.
//!
//! A write that finds a free proposal slot is proposed at once, alone: nothing waits for
//! company when nothing is in flight. While [`ENTRIES_IN_FLIGHT_MAX`] entries are in flight,
//! writes queue; as each entry completes, the writes queued meanwhile become the next entry,
//! bounded by [`ENTRY_RECORDS_MAX`] and [`ENTRY_BYTES_MAX`]. Each write keeps its own positions
//! inside the entry, so its sequence numbers stay `(log index, position)` and per-key order
//! holds (writes are taken in arrival order), and its idempotent-producer tag travels in the
//! entry's header.

use std::collections::VecDeque;
use std::sync::Mutex;

use millrace_proto::storage::BatchRecord;
use tokio::sync::oneshot;

use super::machine::RequestOutcome;
use crate::api::error::ApiError;

/// Entries one shard leader proposes before further writes queue for the next entry. Two keep
/// the log busy (one replicating while the next fills) without cutting batches small.
pub const ENTRIES_IN_FLIGHT_MAX: usize = 2;
/// Records merged into one entry at most (a single request may hold up to 500).
pub const ENTRY_RECORDS_MAX: usize = 8 * 1024;
/// Bytes (data plus partition keys) merged into one entry at most; one request larger than
/// this (up to a 10 MiB record) still goes alone.
pub const ENTRY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Bytes queued behind the entries in flight at most; past it writes are refused as
/// throttled (retryable), never buffered without bound.
pub const QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// An idempotent producer's id and the sequence of a request's first record.
pub type ProducerTag = Option<(String, u64)>;

/// How a proposed write ended.
#[derive(Debug, Clone)]
pub enum Proposed {
    /// Applied in the entry at `index`, with this outcome for the write. `first` is set for
    /// the entry's first write only, so that per-entry work (telling quiet followers about the
    /// commit) runs once per entry whatever each write's outcome.
    Applied {
        index: u64,
        outcome: RequestOutcome,
        first: bool,
    },
    /// This replica does not lead (the hint names who does, when known): nothing was written.
    NotLeader(Option<u64>),
    Failed(ApiError),
}

/// One write waiting for (or riding in) an entry.
#[derive(Debug)]
pub struct Pending {
    pub records: Vec<BatchRecord>,
    pub producer: ProducerTag,
    /// Data plus partition key bytes: what entries and the throttle count.
    pub bytes: usize,
    reply: oneshot::Sender<Proposed>,
}

impl Pending {
    pub fn new(
        records: Vec<BatchRecord>,
        producer: ProducerTag,
    ) -> (Pending, oneshot::Receiver<Proposed>) {
        let bytes = records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum();
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            records,
            producer,
            bytes,
            reply,
        };
        (pending, rx)
    }

    /// Answers the writer (who may have given up waiting: then nobody hears it).
    pub fn answer(self, result: Proposed) {
        let _ = self.reply.send(result);
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    in_flight: usize,
}

/// The write queue of one shard replica (used while it leads).
#[derive(Default)]
pub struct ShardProposer {
    state: Mutex<State>,
}

impl ShardProposer {
    /// Queues a write. When a proposal slot is free, the slot is taken and the writes to put
    /// in its entry are returned: the caller proposes them, then asks [`Self::next`].
    pub fn submit(&self, pending: Pending) -> Result<Option<Vec<Pending>>, ApiError> {
        let mut s = self.state.lock().expect("proposer lock");
        if s.in_flight >= ENTRIES_IN_FLIGHT_MAX && s.queued_bytes + pending.bytes > QUEUE_BYTES_MAX
        {
            return Err(ApiError::ProvisionedThroughputExceeded(format!(
                "the shard's write queue holds {} bytes (at most {QUEUE_BYTES_MAX}); retry",
                s.queued_bytes
            )));
        }
        s.queued_bytes += pending.bytes;
        s.queue.push_back(pending);
        if s.in_flight >= ENTRIES_IN_FLIGHT_MAX {
            return Ok(None);
        }
        s.in_flight += 1;
        Ok(Some(take_entry(&mut s)))
    }

    /// An entry completed: the writes for the next entry of the same slot, or `None` when
    /// nothing is queued (the slot is freed).
    pub fn next(&self) -> Option<Vec<Pending>> {
        let mut s = self.state.lock().expect("proposer lock");
        if s.queue.is_empty() {
            s.in_flight -= 1;
            return None;
        }
        Some(take_entry(&mut s))
    }

    /// (entries in flight, writes queued).
    pub fn load(&self) -> (usize, usize) {
        let s = self.state.lock().expect("proposer lock");
        (s.in_flight, s.queue.len())
    }
}

/// Takes the oldest queued writes that fit in one entry (at least one).
fn take_entry(s: &mut State) -> Vec<Pending> {
    let mut entry = Vec::new();
    let (mut records, mut bytes) = (0usize, 0usize);
    while let Some(next) = s.queue.front() {
        let fits = records + next.records.len() <= ENTRY_RECORDS_MAX
            && bytes + next.bytes <= ENTRY_BYTES_MAX;
        if !entry.is_empty() && !fits {
            break;
        }
        let next = s.queue.pop_front().expect("front exists");
        records += next.records.len();
        bytes += next.bytes;
        s.queued_bytes -= next.bytes;
        entry.push(next);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(records: usize, data_bytes: usize) -> (Pending, oneshot::Receiver<Proposed>) {
        let record = BatchRecord {
            partition_key: String::new(),
            data: vec![0; data_bytes].into(),
            hash_key: Default::default(),
        };
        Pending::new(vec![record; records], None)
    }

    #[test]
    fn a_lone_write_goes_at_once_and_writes_queued_behind_busy_slots_share_an_entry() {
        let p = ShardProposer::default();
        let first = p.submit(write(1, 10).0).unwrap().expect("a free slot");
        assert_eq!(first.len(), 1);
        let second = p
            .submit(write(1, 10).0)
            .unwrap()
            .expect("a second free slot");
        assert_eq!(second.len(), 1);
        // Both slots busy: the next writes queue.
        for _ in 0..5 {
            assert!(p.submit(write(2, 10).0).unwrap().is_none());
        }
        assert_eq!(p.load(), (2, 5));
        // The first entry completes: the five queued writes become one entry, in order.
        let merged = p.next().expect("queued writes");
        assert_eq!(merged.len(), 5);
        assert_eq!(p.load(), (2, 0));
        // Nothing queued: completions free the slots.
        assert!(p.next().is_none());
        assert!(p.next().is_none());
        assert_eq!(p.load(), (0, 0));
        assert_eq!(p.submit(write(1, 1).0).unwrap().map(|e| e.len()), Some(1));
    }

    #[test]
    fn entries_are_bounded_by_records_and_bytes_and_the_queue_by_bytes() {
        let p = ShardProposer::default();
        for _ in 0..ENTRIES_IN_FLIGHT_MAX {
            p.submit(write(1, 1).0).unwrap().expect("slot");
        }
        // 500-record writes: an entry takes as many as fit in ENTRY_RECORDS_MAX.
        let n = ENTRY_RECORDS_MAX / 500 + 3;
        for _ in 0..n {
            assert!(p.submit(write(500, 1).0).unwrap().is_none());
        }
        let entry = p.next().unwrap();
        assert_eq!(entry.len(), ENTRY_RECORDS_MAX / 500);
        assert_eq!(p.next().unwrap().len(), 3);
        // A write larger than an entry's byte bound still goes, alone.
        p.submit(write(1, ENTRY_BYTES_MAX + 1).0).unwrap();
        p.submit(write(1, 1).0).unwrap();
        assert_eq!(p.next().unwrap().len(), 1);
        assert_eq!(p.next().unwrap().len(), 1);
        // The queue refuses writes past its byte bound, naming it.
        let big = QUEUE_BYTES_MAX / 4;
        for _ in 0..4 {
            p.submit(write(1, big - 1).0).unwrap();
        }
        let refused = p.submit(write(1, big).0).unwrap_err();
        assert!(refused.to_string().contains(&QUEUE_BYTES_MAX.to_string()));
    }
}
