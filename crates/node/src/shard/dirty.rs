//! Calibration only ([`InjectedBug::UncommittedReads`]): writes still in flight at this node,
//! which the broken read path serves before they commit. Never used unless that bug is
//! injected (see `millrace_storage::calibration`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use millrace_proto::internal::StoredRecord;
use millrace_proto::storage::BatchRecord;
use millrace_storage::calibration::{self, InjectedBug};

/// (write id, records) of one write not yet answered.
type Write = (u64, Vec<BatchRecord>);

/// Group id → writes not yet answered.
static IN_FLIGHT: Mutex<BTreeMap<u64, Vec<Write>>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A write registered as in flight until dropped.
pub struct InFlight {
    group_id: u64,
    id: u64,
}

/// Registers `records` as in flight on `group_id` while the guard lives (bug injected only).
pub fn begin(group_id: u64, records: &[BatchRecord]) -> Option<InFlight> {
    if !calibration::is(InjectedBug::UncommittedReads) {
        return None;
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    IN_FLIGHT
        .lock()
        .expect("in-flight lock")
        .entry(group_id)
        .or_default()
        .push((id, records.to_vec()));
    Some(InFlight { group_id, id })
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut all = IN_FLIGHT.lock().expect("in-flight lock");
        if let Some(v) = all.get_mut(&self.group_id) {
            v.retain(|(id, _)| *id != self.id);
        }
    }
}

/// The in-flight writes of `group_id` as records, numbered as if they were the next entries
/// after `next_index` (which is not advanced: a later read serves them again).
pub fn records(group_id: u64, next_index: u64, arrival_ms: i64) -> Vec<StoredRecord> {
    let all = IN_FLIGHT.lock().expect("in-flight lock");
    all.get(&group_id)
        .into_iter()
        .flatten()
        .enumerate()
        .flat_map(|(k, (_, records))| {
            records
                .iter()
                .enumerate()
                .map(move |(pos, r)| StoredRecord {
                    log_index: next_index + k as u64,
                    position: pos as u32,
                    arrival_timestamp_ms: arrival_ms,
                    partition_key: r.partition_key.clone(),
                    data: r.data.clone(),
                })
        })
        .collect()
}
