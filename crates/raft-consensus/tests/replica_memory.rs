//! A probe, not a test (ignored; run by hand): the resident memory each group replica costs,
//! split into its log store, the opened Raft group and its first election. Used for issue 12's
//! scale target (`docs/benchmarks.md`, session 8):
//! `N=1000 cargo test -p millrace-raft --test replica_memory -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::time::Duration;

use millrace_raft::log_store::GroupLogStore;
use millrace_raft::network::Transport;
use millrace_raft::types::LogId;
use millrace_raft::{GroupManager, GroupSettings, GroupStateMachine, SnapshotMode};
use millrace_storage::segment::SegmentLogConfig;
use millrace_storage::{FlushCoordinator, NodeMeta, SyncMethod};
use openraft::BasicNode;

struct Nothing;

impl GroupStateMachine for Nothing {
    fn apply(
        &mut self,
        _log_id: &LogId,
        _data: &[u8],
    ) -> Result<Vec<u8>, millrace_raft::UnappliableEntry> {
        Ok(Vec::new())
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _last: Option<&LogId>, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// This process's resident memory, in bytes.
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a memory probe, run by hand"]
async fn resident_memory_per_group_replica() {
    let n: i64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = NodeMeta::open(&dir.path().join("meta")).expect("meta");
    let flusher = FlushCoordinator::start(SyncMethod::Auto).expect("flusher");
    let settings = GroupSettings {
        heartbeat_interval_ms: 500,
        election_timeout_min_ms: 1500,
        election_timeout_max_ms: 3000,
        segment_bytes_max: 64 << 20,
    };
    let groups = GroupManager::new(
        1,
        dir.path().to_path_buf(),
        meta.clone(),
        flusher.clone(),
        Transport::new(Default::default()),
        settings,
    )
    .expect("manager");
    let per = |from: i64, to: i64| (to - from) / n;

    let r0 = rss();
    let mut logs = Vec::new();
    for g in 0..n {
        let log = GroupLogStore::open(
            &dir.path().join(format!("log-only-{g}")),
            SegmentLogConfig {
                segment_bytes_max: 64 << 20,
            },
            meta.group(1_000_000 + g as u64).expect("group meta"),
            flusher.clone(),
        )
        .expect("log store");
        logs.push(log);
    }
    let r1 = rss();
    let mut handles = Vec::new();
    for g in 1..=n as u64 {
        let h = groups
            .open_group(
                g,
                Box::new(Nothing),
                SnapshotMode::OnRequest,
                &Default::default(),
            )
            .await
            .expect("open");
        handles.push(h);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r2 = rss();
    for h in &handles {
        let voters: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("127.0.0.1:1"))].into();
        h.raft.initialize(voters).await.expect("initialize");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r3 = rss();
    eprintln!(
        "{n} groups: log store alone {} B each; opened group (log store, state machine, Raft) {} B each; initialised and leading {} B more each",
        per(r0, r1),
        per(r1, r2),
        per(r2, r3)
    );
}
