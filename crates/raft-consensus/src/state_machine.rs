//! `RaftStateMachine` adapter: openraft bookkeeping (applied log id, membership, snapshots)
//! around a [`GroupStateMachine`] that gives the entries their meaning.
//!
//! The applied state is not persisted: after a restart the state machine starts empty (or from
//! its stored snapshot) and openraft re-applies the committed log. So `applied_state()` never
//! runs ahead of the durable log, which openraft would otherwise "repair" by purging the log.
//!
//! Snapshots are persisted in sled (`snapshot_meta` + `snapshot_data`, one atomic batch,
//! flushed before the builder or installer returns, so before openraft purges the log they
//! cover). For the metadata group the snapshot *is* the metadata state; a shard group's
//! snapshot is tiny (its records stay in the log).

use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;

use millrace_storage::GroupMeta;

use crate::types::{LogId, Response, SnapshotMeta, StoredMembership, TypeConfig};

const KEY_SNAPSHOT_META: &str = "snapshot_meta";
const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// The meaning of a group's entries. Implemented by the node for the metadata group and for
/// shard groups. Calls are serialised by the adapter.
pub trait GroupStateMachine: Send + 'static {
    /// Applies a committed normal entry and returns the answer for the proposer. An entry this
    /// machine cannot give a meaning to (it does not decode: damaged, or written by a newer
    /// version) is an [`UnappliableEntry`]: the group stops there, since a replica that skipped
    /// a committed entry would silently differ from the others.
    fn apply(&mut self, log_id: &LogId, data: &[u8]) -> Result<Vec<u8>, UnappliableEntry>;
    /// A committed blank or membership entry (no data) was applied.
    fn apply_empty(&mut self, _log_id: &LogId) {}
    /// Serialises the whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Serialises the state as of log index `at` (≤ applied), for a retention snapshot.
    /// Only groups snapshotted at a retention point need more than [`Self::snapshot`].
    fn snapshot_at(&self, _at: &LogId) -> Vec<u8> {
        self.snapshot()
    }
    /// Replaces the whole state with a snapshot taken at `last_log_id`.
    fn restore(&mut self, last_log_id: Option<&LogId>, data: &[u8]) -> Result<(), String>;
}

/// A committed entry its group's state machine cannot apply; the group stops at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("committed entry {index} of this group cannot be applied ({reason}); the group stops here rather than skip it and differ from its other replicas")]
pub struct UnappliableEntry {
    pub index: u64,
    /// What is wrong with it (never its content: it may hold a secret).
    pub reason: String,
}

pub type SnapshotData = Vec<u8>;
type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

struct Inner {
    machine: Box<dyn GroupStateMachine>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    current_snapshot: Option<(SnapshotMeta, SnapshotData)>,
    /// Every membership since the current snapshot, to state the membership as of a point.
    membership_history: Vec<StoredMembership>,
    /// Retention mode: snapshots are built only at this point (DESIGN decision 4).
    snapshot_point: Option<LogId>,
    point_only: bool,
}

impl Inner {
    /// A membership entry was applied: it is the last membership, and part of the history a
    /// retention snapshot states its membership from.
    fn record_membership(&mut self, membership: StoredMembership) {
        self.last_membership = membership.clone();
        self.membership_history.push(membership);
    }

    fn membership_as_of(&self, index: u64) -> StoredMembership {
        self.membership_history
            .iter()
            .rev()
            .find(|m| m.log_id().is_some_and(|l| l.index <= index))
            .cloned()
            .unwrap_or_default()
    }

    fn current(&self) -> Option<Snapshot> {
        self.current_snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: data.clone(),
        })
    }
}

/// The state machine handed to openraft. Clones share state (it is also its snapshot builder).
#[derive(Clone)]
pub struct GroupSm {
    inner: Arc<Mutex<Inner>>,
    store: Option<GroupMeta>,
}

impl GroupSm {
    pub fn new(machine: Box<dyn GroupStateMachine>) -> GroupSm {
        GroupSm {
            inner: Arc::new(Mutex::new(Inner {
                machine,
                last_applied: None,
                last_membership: StoredMembership::default(),
                current_snapshot: None,
                membership_history: Vec::new(),
                snapshot_point: None,
                point_only: false,
            })),
            store: None,
        }
    }

    /// Retention mode: the builder builds only at the point set by [`GroupSm::set_snapshot_point`]
    /// — never at the applied index, never backwards; otherwise it returns the current snapshot.
    pub fn build_only_at_points(self) -> GroupSm {
        self.lock().point_only = true;
        self
    }

    /// Where the next snapshot is built (retention boundary R; must be ≤ applied).
    pub fn set_snapshot_point(&self, at: LogId) {
        let mut inner = self.lock();
        if inner.snapshot_point.is_none_or(|p| p < at) {
            inner.snapshot_point = Some(at);
        }
    }

    /// A state machine whose snapshots are persisted in `store`; a stored snapshot is loaded
    /// (openraft installs it at start-up).
    pub fn persistent(
        machine: Box<dyn GroupStateMachine>,
        store: GroupMeta,
    ) -> io::Result<GroupSm> {
        let sm = GroupSm::new(machine);
        let meta: Option<SnapshotMeta> = store.get(KEY_SNAPSHOT_META).map_err(io::Error::other)?;
        let data = store.get_raw(KEY_SNAPSHOT_DATA).map_err(io::Error::other)?;
        if let (Some(meta), Some(data)) = (meta, data) {
            sm.lock().current_snapshot = Some((meta, data));
        }
        Ok(GroupSm {
            store: Some(store),
            ..sm
        })
    }

    /// Gives a stored snapshot that names no voters the membership `voters`, durably, and
    /// returns whether it did. Retention snapshots written before the membership fix (jepsen seed
    /// 104) carry an empty membership: a replica restarted from one after the membership entry
    /// was purged knows no voters, so it never elects, votes or rejoins. `voters` come from the
    /// metadata group's placement of the shard; the restated membership takes the snapshot's log
    /// id, so any membership entry the log still holds after the snapshot wins over it.
    pub async fn restate_lost_membership(
        &self,
        voters: &std::collections::BTreeMap<crate::types::NodeId, openraft::BasicNode>,
    ) -> io::Result<bool> {
        let restated = {
            let inner = self.lock();
            match &inner.current_snapshot {
                Some((meta, data))
                    if !voters.is_empty()
                        && meta
                            .last_membership
                            .membership()
                            .voter_ids()
                            .next()
                            .is_none() =>
                {
                    let nodes = crate::types::Membership::new(
                        vec![voters.keys().copied().collect()],
                        voters.clone(),
                    )
                    .map_err(io::Error::other)?;
                    let meta = SnapshotMeta {
                        last_log_id: meta.last_log_id,
                        last_membership: StoredMembership::new(meta.last_log_id, nodes),
                    };
                    Some((meta, data.clone()))
                }
                _ => None,
            }
        };
        let Some((meta, data)) = restated else {
            return Ok(false);
        };
        self.persist(&meta, &data).await?;
        self.lock().current_snapshot = Some((meta, data));
        Ok(true)
    }

    /// Persists the current snapshot durably (sled batch + flush).
    async fn persist(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        store
            .put_batch(&[
                (KEY_SNAPSHOT_META, meta_json),
                (KEY_SNAPSHOT_DATA, data.to_vec()),
            ])
            .map_err(io::Error::other)?;
        store.flush().await.map_err(io::Error::other)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state machine lock poisoned")
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSm {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let inner = self.lock();
            let current_at = inner
                .current_snapshot
                .as_ref()
                .and_then(|(m, _)| m.last_log_id);
            match (inner.point_only, inner.snapshot_point) {
                (true, Some(point)) if Some(point) > current_at => {
                    let meta = SnapshotMeta {
                        last_log_id: Some(point),
                        last_membership: inner.membership_as_of(point.index),
                    };
                    (meta, inner.machine.snapshot_at(&point))
                }
                (true, _) if inner.current_snapshot.is_some() => {
                    // At or below the current snapshot: never build backwards.
                    return Ok(inner.current().expect("checked"));
                }
                _ => {
                    let meta = SnapshotMeta {
                        last_log_id: inner.last_applied,
                        last_membership: inner.last_membership.clone(),
                    };
                    (meta, inner.machine.snapshot())
                }
            }
        };
        self.persist(&meta, &data).await?;
        self.lock().current_snapshot = Some((meta.clone(), data.clone()));
        crate::events::snapshot_built();
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for GroupSm {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = GroupSm;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut inner = self.lock();
                let response = match &entry.payload {
                    EntryPayload::Blank => {
                        inner.machine.apply_empty(&entry.log_id);
                        Vec::new()
                    }
                    EntryPayload::Normal(req) => {
                        match inner.machine.apply(&entry.log_id, &req.0) {
                            Ok(response) => response,
                            Err(e) => {
                                // Not applied: openraft stops the group on this error (its
                                // proposer hears that the group stopped), and a restart replays
                                // the entry again rather than starting past it.
                                tracing::error!(index = e.index, reason = %e.reason, "{e}");
                                return Err(io::Error::other(e));
                            }
                        }
                    }
                    EntryPayload::Membership(m) => {
                        inner.record_membership(StoredMembership::new(
                            Some(entry.log_id),
                            m.clone(),
                        ));
                        inner.machine.apply_empty(&entry.log_id);
                        Vec::new()
                    }
                };
                inner.last_applied = Some(entry.log_id);
                response
            };
            if let Some(r) = responder {
                r.send(Response(response));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        self.persist(meta, &snapshot).await?;
        let mut inner = self.lock();
        inner
            .machine
            .restore(meta.last_log_id.as_ref(), &snapshot)
            .map_err(io::Error::other)?;
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        inner.membership_history = vec![meta.last_membership.clone()];
        inner.current_snapshot = Some((meta.clone(), snapshot));
        crate::events::snapshot_installed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let inner = self.lock();
        Ok(inner
            .current_snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: data.clone(),
            }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::RaftSnapshotBuilder;
    use openraft::Membership;

    use super::*;
    use crate::types::log_id;

    struct Nothing;

    impl GroupStateMachine for Nothing {
        fn apply(&mut self, _log_id: &LogId, _data: &[u8]) -> Result<Vec<u8>, UnappliableEntry> {
            Ok(Vec::new())
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _last: Option<&LogId>, _data: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    /// Found by the jepsen harness (seed 104): a retention snapshot stated an empty membership
    /// because applied membership entries never reached the history, so a replica restarted
    /// from it after the membership entry was purged knew no voters and never rejoined.
    #[tokio::test]
    async fn a_retention_snapshot_keeps_the_membership_applied_before_its_point() {
        let mut sm = GroupSm::new(Box::new(Nothing)).build_only_at_points();
        let voters = BTreeSet::from([1, 2, 3]);
        let membership = StoredMembership::new(
            Some(log_id(1, 1, 1)),
            Membership::new_with_defaults(vec![voters.clone()], [1, 2, 3]),
        );
        {
            let mut inner = sm.lock();
            inner.record_membership(membership.clone());
            inner.last_applied = Some(log_id(1, 1, 5));
        }
        sm.set_snapshot_point(log_id(1, 1, 3));
        let snapshot = sm.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(snapshot.meta.last_membership, membership);
        let stated: BTreeSet<u64> = snapshot
            .meta
            .last_membership
            .membership()
            .voter_ids()
            .collect();
        assert_eq!(stated, voters);
    }
}
