//! Counters of a node's write path: where PutRecords requests went, how they merged into
//! entries, (from the flush coordinator) how the entries shared fsyncs, and (from the
//! transport) how AppendEntries were pipelined. Served by
//! `GetNodeStats` and `/v1/node/status`; `millrace bench produce` prints them.

use std::sync::atomic::{AtomicU64, Ordering};

use millrace_proto::v1 as pb;
use millrace_raft::network::AppendCounters;
use millrace_storage::FlushStats;

#[derive(Debug, Default)]
pub struct WriteStats {
    /// Requests appended here as their shard's leader (whatever API or node they came from).
    requests_led: AtomicU64,
    /// Requests handed on to another node, the shard's leader.
    requests_forwarded: AtomicU64,
    /// Record batch entries proposed here as a leader, and the records in them.
    entries_proposed: AtomicU64,
    records_proposed: AtomicU64,
    /// From proposing a record batch entry to its commit and apply here, as the leader.
    pub commit_seconds: millrace_storage::LatencyHistogram,
}

impl WriteStats {
    pub fn led(&self) {
        self.requests_led.fetch_add(1, Ordering::Relaxed);
    }

    pub fn forwarded(&self) {
        self.requests_forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn proposed(&self, records: usize) {
        self.entries_proposed.fetch_add(1, Ordering::Relaxed);
        self.records_proposed
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    /// The counters as `GetNodeStats` answers them.
    pub fn snapshot(
        &self,
        node_id: u64,
        flush: &FlushStats,
        appends: &AppendCounters,
    ) -> pb::GetNodeStatsResponse {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        pb::GetNodeStatsResponse {
            node_id,
            requests_led: get(&self.requests_led),
            requests_forwarded: get(&self.requests_forwarded),
            entries_proposed: get(&self.entries_proposed),
            records_proposed: get(&self.records_proposed),
            flush_rounds: get(&flush.rounds),
            flush_requests: get(&flush.requests),
            fsyncs: get(&flush.fsyncs),
            flush_micros: get(&flush.sync_micros),
            filesystem_syncs: get(&flush.filesystem_syncs),
            appends_streamed: get(&appends.streamed),
            appends_pipelined: get(&appends.pipelined),
        }
    }
}

/// The counters as `/v1/node/status` shows them (`write_path`).
pub fn to_json(s: &pb::GetNodeStatsResponse) -> serde_json::Value {
    serde_json::json!({
        "requests_led": s.requests_led,
        "requests_forwarded": s.requests_forwarded,
        "entries_proposed": s.entries_proposed,
        "records_proposed": s.records_proposed,
        "flush_rounds": s.flush_rounds,
        "flush_requests": s.flush_requests,
        "fsyncs": s.fsyncs,
        "flush_micros": s.flush_micros,
        "filesystem_syncs": s.filesystem_syncs,
        "appends_streamed": s.appends_streamed,
        "appends_pipelined": s.appends_pipelined,
    })
}
