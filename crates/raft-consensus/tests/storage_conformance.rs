//! openraft's storage conformance suite against the segment-log store.

use millrace_raft::log_store::GroupLogStore;
use millrace_raft::state_machine::GroupSm;
use millrace_raft::types::LogId;
use millrace_raft::{GroupStateMachine, TypeConfig};
use millrace_storage::{FlushCoordinator, NodeMeta, SegmentLogConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

/// A state machine that just counts applied entries.
#[derive(Default)]
struct Counter {
    applied: u64,
}

impl GroupStateMachine for Counter {
    fn apply(
        &mut self,
        _log_id: &LogId,
        _data: &[u8],
    ) -> Result<Vec<u8>, millrace_raft::UnappliableEntry> {
        self.applied += 1;
        Ok(self.applied.to_le_bytes().to_vec())
    }
    fn snapshot(&self) -> Vec<u8> {
        self.applied.to_le_bytes().to_vec()
    }
    fn restore(&mut self, _last: Option<&LogId>, data: &[u8]) -> Result<(), String> {
        self.applied = u64::from_le_bytes(data.try_into().map_err(|_| "bad snapshot")?);
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, GroupLogStore, GroupSm, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, GroupLogStore, GroupSm), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = NodeMeta::open(&dir.path().join("meta")).expect("sled");
        let flusher = FlushCoordinator::start(millrace_storage::SyncMethod::Auto).expect("flusher");
        let log = GroupLogStore::open(
            &dir.path().join("log"),
            SegmentLogConfig {
                segment_bytes_max: 4096,
            },
            meta.group(1).expect("group meta"),
            flusher,
        )
        .expect("open log");
        Ok((dir, log, GroupSm::new(Box::new(Counter::default()))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder)
        .await
        .expect("storage conformance suite");
}
