//! Group lifecycle: creating, looking up and removing the Raft group replicas of this node.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use millrace_storage::{FlushCoordinator, NodeMeta, SegmentLogConfig};

use crate::log_store::GroupLogStore;
use crate::network::{GroupNetworkFactory, GroupRegistry, Transport};
use crate::state_machine::{GroupSm, GroupStateMachine};
use crate::types::{NodeId, Raft};
use openraft::async_runtime::WatchReceiver;

/// Timing and sizing shared by every group on a node.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub segment_bytes_max: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            segment_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// How a group snapshots its state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Only on request, and only at the retention point set with
    /// [`GroupSm::set_snapshot_point`] (shard groups: DESIGN decision 4).
    OnRequest,
    /// After `entries` applied entries; openraft then purges the log the snapshot covers except
    /// the last `keep_entries` (for lagging peers). Used by the metadata group.
    EveryEntries { entries: u64, keep_entries: u64 },
}

impl GroupSettings {
    fn raft_config(&self, mode: SnapshotMode) -> Result<openraft::Config, GroupError> {
        let (snapshot_policy, keep) = match mode {
            SnapshotMode::OnRequest => (openraft::SnapshotPolicy::Never, 1000),
            SnapshotMode::EveryEntries {
                entries,
                keep_entries,
            } => (
                openraft::SnapshotPolicy::LogsSinceLast(entries),
                keep_entries,
            ),
        };
        openraft::Config {
            cluster_name: "millrace".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy,
            max_in_snapshot_log_to_keep: keep,
            enable_pre_vote: Some(true),
            // A restarted leader must win a new election. With restore on (openraft's default),
            // a leader restarted before anyone noticed keeps its term, and because neither the
            // commit point nor the state machines are durable here, it serves a stale prefix
            // as if it were everything committed (seen in the whole-cluster restart test).
            enable_leader_restore: Some(false),
            max_payload_entries: 256,
            // A replica repaired after damage (its log cut back, or its node's metadata set
            // aside) reports a shorter log than the leader last saw: the leader must start its
            // replication over rather than panic ("follower log reversion is not allowed",
            // seen). The repaired replica refuses votes until whole (`watch_repair`).
            allow_log_reversion: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| GroupError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("raft config: {0}")]
    Config(String),
    #[error("group {group_id}: storage: {source}")]
    Storage {
        group_id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("group {group_id}: node metadata: {source}")]
    Meta {
        group_id: u64,
        #[source]
        source: millrace_storage::StorageError,
    },
    #[error("group {group_id}: raft: {message}")]
    Raft { group_id: u64, message: String },
}

/// A group replica hosted on this node.
#[derive(Clone)]
pub struct GroupHandle {
    pub group_id: u64,
    pub raft: Raft,
    pub log: GroupLogStore,
    pub sm: GroupSm,
}

/// Owns every group replica of this node.
pub struct GroupManager {
    node_id: NodeId,
    data_dir: PathBuf,
    meta: NodeMeta,
    flusher: FlushCoordinator,
    transport: Arc<Transport>,
    registry: Arc<GroupRegistry>,
    settings: GroupSettings,
    groups: Mutex<HashMap<u64, GroupHandle>>,
}

impl GroupManager {
    pub fn new(
        node_id: NodeId,
        data_dir: PathBuf,
        meta: NodeMeta,
        flusher: FlushCoordinator,
        transport: Arc<Transport>,
        settings: GroupSettings,
    ) -> Result<GroupManager, GroupError> {
        settings.raft_config(SnapshotMode::OnRequest)?;
        Ok(GroupManager {
            node_id,
            data_dir,
            meta,
            flusher,
            transport,
            registry: Arc::new(GroupRegistry::default()),
            settings,
            groups: Mutex::new(HashMap::new()),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn registry(&self) -> &Arc<GroupRegistry> {
        &self.registry
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    pub fn flusher(&self) -> &FlushCoordinator {
        &self.flusher
    }

    fn group_dir(&self, group_id: u64) -> PathBuf {
        self.data_dir.join("groups").join(format!("{group_id:020}"))
    }

    pub fn get(&self, group_id: u64) -> Option<GroupHandle> {
        self.groups
            .lock()
            .expect("groups lock")
            .get(&group_id)
            .cloned()
    }

    /// Calls `f` with every group's Raft handle, under the groups' lock (`f` must not block):
    /// a scan of thousands of groups without copying the list.
    pub fn for_each_raft(&self, mut f: impl FnMut(u64, &Raft)) {
        for (id, h) in self.groups.lock().expect("groups lock").iter() {
            f(*id, &h.raft);
        }
    }

    pub fn group_ids(&self) -> Vec<u64> {
        self.groups
            .lock()
            .expect("groups lock")
            .keys()
            .copied()
            .collect()
    }

    /// Every group with any trace on this node: open, with a log directory, or with metadata.
    pub fn stored_group_ids(&self) -> Vec<u64> {
        let mut ids = self.group_ids();
        ids.extend(self.meta.group_ids());
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("groups")) {
            ids.extend(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok()));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Opens the local replica of `group_id` (recovering its log), or returns it if open.
    /// `placed`: the replicas the cluster's metadata places the group on, with their addresses
    /// (empty when not known); a stored snapshot that lost its membership is given them (see
    /// [`GroupSm::restate_lost_membership`]).
    pub async fn open_group(
        &self,
        group_id: u64,
        machine: Box<dyn GroupStateMachine>,
        snapshots: SnapshotMode,
        placed: &BTreeMap<NodeId, openraft::BasicNode>,
    ) -> Result<GroupHandle, GroupError> {
        if let Some(h) = self.get(group_id) {
            return Ok(h);
        }
        let meta = self
            .meta
            .group(group_id)
            .map_err(|source| GroupError::Meta { group_id, source })?;
        let sm = GroupSm::persistent(machine, meta.clone())
            .map_err(|source| GroupError::Storage { group_id, source })?;
        if sm
            .restate_lost_membership(placed)
            .await
            .map_err(|source| GroupError::Storage { group_id, source })?
        {
            tracing::warn!(
                group_id,
                voters = ?placed.keys().collect::<Vec<_>>(),
                "the stored snapshot named no voters (written before the membership fix): \
                 gave it the replicas the metadata places the group on"
            );
        }
        let sm = match snapshots {
            SnapshotMode::OnRequest => sm.build_only_at_points(),
            SnapshotMode::EveryEntries { .. } => sm,
        };
        let dir = self.group_dir(group_id);
        let segment_config = SegmentLogConfig {
            segment_bytes_max: self.settings.segment_bytes_max,
        };
        let flusher = self.flusher.clone();
        let log = tokio::task::spawn_blocking(move || {
            GroupLogStore::open(&dir, segment_config, meta, flusher)
        })
        .await
        .map_err(|e| GroupError::Raft {
            group_id,
            message: e.to_string(),
        })?
        .map_err(|source| GroupError::Storage { group_id, source })?;
        let network = GroupNetworkFactory {
            transport: self.transport.clone(),
            group_id,
            self_id: self.node_id,
        };
        let repair = log.repair();
        let mut config = self.settings.raft_config(snapshots)?;
        // A replica under repair must not stand for election (see `watch_repair`).
        config.enable_elect &= repair.is_none();
        let raft = Raft::new(
            self.node_id,
            Arc::new(config),
            network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| GroupError::Raft {
            group_id,
            message: e.to_string(),
        })?;
        let handle = GroupHandle {
            group_id,
            raft: raft.clone(),
            log,
            sm,
        };
        let existing = {
            let mut groups = self.groups.lock().expect("groups lock");
            match groups.get(&group_id) {
                Some(existing) => Some(existing.clone()),
                None => {
                    groups.insert(group_id, handle.clone());
                    None
                }
            }
        };
        if let Some(existing) = existing {
            // Lost a race with another opener; keep the first.
            let _ = raft.shutdown().await;
            return Ok(existing);
        }
        if let Some(repair) = repair {
            self.registry.repairing(group_id, handle.log.clone());
            crate::events::repair_started();
            tokio::spawn(watch_repair(
                group_id,
                repair.until,
                handle.clone(),
                self.registry.clone(),
            ));
        }
        self.registry.insert(group_id, raft);
        Ok(handle)
    }

    /// Stops the local replica of `group_id` and deletes its log and metadata.
    pub async fn remove_group(&self, group_id: u64) -> Result<(), GroupError> {
        let handle = self.groups.lock().expect("groups lock").remove(&group_id);
        self.registry.remove(group_id);
        self.registry.repaired(group_id);
        if let Some(h) = handle {
            let _ = h.raft.shutdown().await;
        }
        let dir = self.group_dir(group_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|source| GroupError::Storage { group_id, source })?;
        }
        self.meta
            .drop_group(group_id)
            .await
            .map_err(|source| GroupError::Meta { group_id, source })
    }

    /// Stops every group (for shutdown).
    pub async fn shutdown_all(&self) {
        let handles: Vec<GroupHandle> = self
            .groups
            .lock()
            .expect("groups lock")
            .values()
            .cloned()
            .collect();
        for h in handles {
            let _ = h.raft.shutdown().await;
        }
        // Hints written since sled's last background flush (synced marks, commit points).
        if let Err(e) = self.meta.flush().await {
            tracing::warn!(error = %e, "could not flush node metadata at shutdown");
        }
    }
}

/// Ends the repair of a damaged replica once the leader has filled its log in again up to the
/// index it had reached (durably): from then on it votes and may lead like any replica.
async fn watch_repair(group_id: u64, until: u64, h: GroupHandle, registry: Arc<GroupRegistry>) {
    tracing::warn!(
        group_id,
        repair_until = until,
        "repairing this replica: it refuses votes and leadership until the leader has rebuilt its log"
    );
    loop {
        let reached = h
            .raft
            .wait(None)
            .metrics(
                |m| {
                    m.last_log_index.is_some_and(|i| i >= until)
                        || m.state == openraft::ServerState::Shutdown
                },
                "the repaired log reaches its former end",
            )
            .await;
        if reached.is_err()
            || h.raft.metrics().borrow_watched().state == openraft::ServerState::Shutdown
        {
            return; // the replica stopped; the repair resumes at its next start
        }
        match h.log.finish_repair().await {
            Ok(true) => break,
            Ok(false) => {} // appended, not yet synced
            Err(e) => tracing::warn!(group_id, error = %e, "could not record the end of a repair"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    registry.repaired(group_id);
    // Groups whose elections the node drives itself (quiet shard groups) keep their timers off:
    // their tick is stopped, so this only restores timer elections where they run.
    h.raft.runtime_config().elect(true);
    crate::events::repair_finished();
    tracing::info!(
        group_id,
        repair_until = until,
        "replica repaired: it votes again"
    );
}
