//! Creating, snapshotting, reopening and removing a group replica through the GroupManager.

use std::collections::BTreeMap;
use std::time::Duration;

use millrace_raft::network::Transport;
use millrace_raft::types::LogId;
use millrace_raft::{GroupManager, GroupSettings, GroupStateMachine, Request, SnapshotMode};
use millrace_storage::{FlushCoordinator, NodeMeta};
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;

/// Counts applied entries; the count is its whole state.
#[derive(Default)]
struct Counter(u64);

impl GroupStateMachine for Counter {
    fn apply(
        &mut self,
        _log_id: &LogId,
        _data: &[u8],
    ) -> Result<Vec<u8>, millrace_raft::UnappliableEntry> {
        self.0 += 1;
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, _last: Option<&LogId>, data: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(data.try_into().map_err(|_| "bad snapshot")?);
        Ok(())
    }
}

/// The node metadata in `dir`. A manager dropped just before may still be shutting its groups'
/// tasks down, which hold the database (and its file lock) until they finish: waits for the
/// lock, with a deadline.
fn open_meta(dir: &std::path::Path) -> NodeMeta {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match NodeMeta::open(&dir.join("meta")) {
            Ok(meta) => break meta,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("sled: {e:?}"),
        }
    }
}

fn manager(dir: &std::path::Path) -> GroupManager {
    let meta = open_meta(dir);
    GroupManager::new(
        1,
        dir.to_path_buf(),
        meta,
        FlushCoordinator::start(millrace_storage::SyncMethod::Auto).expect("flusher"),
        Transport::new(Default::default()),
        GroupSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            segment_bytes_max: 4096,
        },
    )
    .expect("manager")
}

/// Opens `group_id` on the single node of `groups` (initialising it as the only voter when
/// `fresh`) and waits until it leads.
async fn open_leading(
    groups: &GroupManager,
    group_id: u64,
    machine: Box<dyn GroupStateMachine>,
    mode: SnapshotMode,
    fresh: bool,
) -> millrace_raft::group::GroupHandle {
    let h = groups
        .open_group(group_id, machine, mode, &Default::default())
        .await
        .expect("open");
    if fresh {
        let voters: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("127.0.0.1:1"))].into();
        h.raft.initialize(voters).await.expect("initialize");
    }
    h.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the single node leads")
        .await
        .expect("leader");
    h
}

async fn write(raft: &millrace_raft::Raft) -> u64 {
    let resp = raft
        .client_write(Request(bytes::Bytes::from_static(b"x")))
        .await
        .expect("write");
    u64::from_le_bytes(resp.data.0.as_slice().try_into().unwrap())
}

/// On a fresh single-node group: 25 writes, then waits for a snapshot (past the initial
/// membership entry) and the purge of the log it covers; stops the manager.
async fn write_25_and_snapshot(dir: &std::path::Path, group_id: u64, mode: SnapshotMode) {
    let groups = manager(dir);
    let h = open_leading(&groups, group_id, Box::new(Counter::default()), mode, true).await;
    for i in 1..=25 {
        assert_eq!(write(&h.raft).await, i);
    }
    h.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= 10) && m.purged.is_some(),
            "a snapshot was built and the log it covers purged",
        )
        .await
        .expect("snapshot");
    groups.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_survives_reopen_and_remove_deletes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let group_id = 7;
    let mode = SnapshotMode::EveryEntries {
        entries: 10,
        keep_entries: 0,
    };
    write_25_and_snapshot(dir.path(), group_id, mode).await;
    let groups = manager(dir.path());
    // Reopen: the state comes back from the persisted snapshot plus the log after it.
    let h = open_leading(&groups, group_id, Box::new(Counter::default()), mode, false).await;
    let m = h.raft.metrics().borrow_watched().clone();
    assert!(
        m.purged.is_some(),
        "the log before the snapshot stays purged: {m:?}"
    );
    assert!(
        m.snapshot.is_some(),
        "the persisted snapshot was loaded: {m:?}"
    );
    assert_eq!(
        write(&h.raft).await,
        26,
        "no applied entry lost or applied twice"
    );
    assert_eq!(groups.group_ids(), vec![group_id]);

    let group_dir = dir.path().join("groups").join(format!("{group_id:020}"));
    assert!(group_dir.exists());
    groups.remove_group(group_id).await.expect("remove");
    assert!(
        !group_dir.exists(),
        "the replica's segment files are deleted"
    );
    assert!(groups.group_ids().is_empty());
    assert!(groups.registry().get(group_id).is_none());
    let meta = NodeMeta::open(&dir.path().join("meta2")).unwrap();
    drop(meta);
}

/// Issue 18 point 7: retention snapshots written before the membership fix (jepsen seed 104)
/// name no voters; a replica restarted from one after its membership entry was purged knew no
/// voters and never elected or rejoined. Opened with the placement the metadata knows, the
/// snapshot is given that membership, and the group runs on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_lost_its_membership_is_given_the_placed_replicas() {
    use millrace_raft::types::{SnapshotMeta, StoredMembership};
    let dir = tempfile::tempdir().unwrap();
    let group_id = 11;
    let mode = SnapshotMode::EveryEntries {
        entries: 10,
        keep_entries: 0,
    };
    write_25_and_snapshot(dir.path(), group_id, mode).await;
    {
        // What an older build wrote: the same snapshot with an empty membership
        // (`<group>/snapshot_meta`, docs/storage-format.md).
        let meta = open_meta(dir.path());
        let group = meta.group(group_id).unwrap();
        let mut snapshot: SnapshotMeta = group.get("snapshot_meta").unwrap().expect("stored");
        assert!(snapshot
            .last_membership
            .membership()
            .voter_ids()
            .next()
            .is_some());
        snapshot.last_membership = StoredMembership::default();
        group.put("snapshot_meta", &snapshot).unwrap();
        group.flush_blocking().unwrap();
    }
    let groups = manager(dir.path());
    let placed: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("127.0.0.1:1"))].into();
    let h = groups
        .open_group(group_id, Box::new(Counter::default()), mode, &placed)
        .await
        .expect("open");
    h.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .collect::<Vec<_>>()
                    == vec![1]
                    && m.snapshot.is_some()
            },
            "the snapshot is loaded with the placed replica as its voter",
        )
        .await
        .expect("membership");
    h.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the restarted replica elects itself again")
        .await
        .expect("leader");
    assert_eq!(
        write(&h.raft).await,
        26,
        "the state goes on from the snapshot"
    );
    groups.shutdown_all().await;
    drop((h, groups));
    // The restated membership was stored: it holds without the placement too.
    let groups = manager(dir.path());
    let h = groups
        .open_group(
            group_id,
            Box::new(Counter::default()),
            mode,
            &BTreeMap::new(),
        )
        .await
        .expect("open");
    h.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the stored membership elects it")
        .await
        .expect("leader");
    groups.shutdown_all().await;
}

/// Records what it applies; while `refuse` is set, an entry holding `poison` cannot be applied
/// (as if written by a newer version, or damaged).
struct Picky {
    refuse: bool,
    applied: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl GroupStateMachine for Picky {
    fn apply(
        &mut self,
        log_id: &LogId,
        data: &[u8],
    ) -> Result<Vec<u8>, millrace_raft::UnappliableEntry> {
        if self.refuse && data == b"poison" {
            return Err(millrace_raft::UnappliableEntry {
                index: log_id.index,
                reason: "unknown to this version".into(),
            });
        }
        self.applied.lock().unwrap().push(data.to_vec());
        Ok(Vec::new())
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _last: Option<&LogId>, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// A committed entry the state machine cannot apply stops the group (its writer hears so)
/// instead of being skipped; a replica that can apply it (an upgraded node) applies it on
/// restart, so no replica ever moves past an entry it did not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_applied_stops_the_group_and_is_applied_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let group_id = 9;
    let mode = SnapshotMode::EveryEntries {
        entries: 1000,
        keep_entries: 0,
    };
    let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let groups = manager(dir.path());
        let machine = Picky {
            refuse: true,
            applied: applied.clone(),
        };
        let h = open_leading(&groups, group_id, Box::new(machine), mode, true).await;
        let put = |data: &'static [u8]| {
            h.raft
                .client_write(Request(bytes::Bytes::from_static(data)))
        };
        put(b"first").await.expect("an ordinary entry applies");
        let refused = tokio::time::timeout(Duration::from_secs(10), put(b"poison"))
            .await
            .expect("the writer hears within 10 s");
        assert!(
            matches!(refused, Err(openraft::errors::RaftError::Fatal(_))),
            "the group stopped: {refused:?}"
        );
        let after = tokio::time::timeout(Duration::from_secs(10), put(b"after"))
            .await
            .expect("answered");
        assert!(after.is_err(), "a stopped group takes no writes");
        assert_eq!(*applied.lock().unwrap(), [b"first".to_vec()]);
        groups.shutdown_all().await;
    }
    applied.lock().unwrap().clear();
    let groups = manager(dir.path());
    let machine = Picky {
        refuse: false,
        applied: applied.clone(),
    };
    let h = open_leading(&groups, group_id, Box::new(machine), mode, false).await;
    h.raft
        .client_write(Request(bytes::Bytes::from_static(b"later")))
        .await
        .expect("writes go on");
    assert_eq!(
        *applied.lock().unwrap(),
        [b"first".to_vec(), b"poison".to_vec(), b"later".to_vec()],
        "the entry refused before is applied on restart, in its place"
    );
    groups.shutdown_all().await;
}
