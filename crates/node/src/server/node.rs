//! The node: its Raft groups, the applied metadata, and the operations the API layer calls.

use millrace_storage::calibration::{self, InjectedBug};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace_proto::internal::{MetaProposeRequest, StoredRecord};
use millrace_proto::storage::{shard_command, BatchRecord, Seal};
use millrace_raft::group::GroupHandle;
use millrace_raft::{GroupManager, Request};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};

use super::config::ServeConfig;
use super::now_ms;
use crate::api::error::ApiError;
use crate::metadata::machine::{decode_response, encode_command, MetaShared};
use crate::metadata::state::{MetaCommand, MetaResponse};
use crate::shard::entry::{self, RequestRecords};
use crate::shard::machine::{decode_outcomes, RequestOutcome, ShardShared};
use crate::shard::proposer::{Pending, Proposed};
use crate::shard::read::{read_records, ReadBounds, ReadOutcome};

/// How long a request keeps looking for a leader before giving up (nothing was applied).
pub const LEADER_SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for the metadata leader when it names a stream this node does not know
/// yet (or must refresh its routes after a reshard): shorter than clients' deadlines (3–4 s for
/// the SDKs' defaults and the harness), so the client hears a retryable error instead of timing
/// out, and longer than a metadata read index takes when the leader answers (milliseconds).
pub const META_WAIT_ON_WRITE: Duration = Duration::from_secs(2);
/// How long a leader may take to confirm its leadership for a read.
pub const LINEARIZABLE_READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Node {
    pub id: u64,
    pub config: ServeConfig,
    pub groups: GroupManager,
    pub meta: Arc<MetaShared>,
    pub meta_group: GroupHandle,
    pub(super) shards: Mutex<HashMap<u64, Arc<ShardShared>>>,
    /// Last known leader of each group (a hint; verified by the answer).
    pub(super) leader_hints: Mutex<HashMap<u64, u64>>,
    pub(super) registered: AtomicBool,
    pub(super) liveness: Mutex<super::cluster::Liveness>,
    /// Fired when this node has been decommissioned and removed: the process exits cleanly.
    pub(super) leave: tokio::sync::Notify,
    pub(super) quiet: Mutex<super::quiesce::Quiet>,
    /// Write-path counters (see [`super::stats`]).
    pub(super) stats: Arc<super::stats::WriteStats>,
    /// TLS, the cluster secret and their counters (see [`super::security`]).
    pub security: Arc<super::security::NodeSecurity>,
    /// Limits on the public APIs' requests (in flight, call time, rate per key).
    pub admission: Arc<super::admission::Admission>,
    /// What `/metrics` reports beyond the counters above (see [`super::metrics`]).
    pub(crate) metrics: super::metrics::NodeMetrics,
    /// SubscribeToShard calls of the last 5 seconds (see [`super::subscriptions`]).
    pub(crate) subscriptions: Mutex<super::subscriptions::RecentSubscriptions>,
}

/// Outcome of a local write attempt.
pub enum LocalWrite {
    /// Written (or found written, for an idempotent retry): the records are at these positions
    /// on from `position` in the entry at `index`.
    Done {
        index: u64,
        position: u32,
    },
    NotLeader(Option<u64>),
    /// The shard is sealed; nothing was appended.
    Closed,
}

/// A committed read of a shard replica.
#[derive(Debug)]
pub struct ShardRead {
    pub outcome: ReadOutcome,
    /// Highest applied log index of the serving replica.
    pub applied: Option<u64>,
    pub latest_arrival_ms: i64,
    /// The seal's log index when the shard is sealed.
    pub sealed_at: Option<u64>,
}

/// What a replica may serve: up to its applied index, and nothing after the seal (it does
/// not belong to the shard).
fn readable_index(applied: Option<u64>, sealed_at: Option<u64>) -> Option<u64> {
    match (applied, sealed_at) {
        (Some(a), Some(s)) => Some(a.min(s)),
        (a, _) => a,
    }
}

impl ShardRead {
    /// The read reached a closed shard's end: nothing more will ever be readable.
    pub fn at_end(&self) -> bool {
        self.sealed_at
            .is_some_and(|seal| self.outcome.next_index > seal)
    }

    /// How far the read position is behind the newest record (0 when caught up).
    pub fn millis_behind(&self) -> i64 {
        let caught_up = self.at_end() || self.applied.is_none_or(|a| self.outcome.next_index > a);
        match self.outcome.records.last() {
            _ if caught_up => 0,
            Some(last) => (self.latest_arrival_ms - last.arrival_timestamp_ms).max(0),
            None => 0,
        }
    }
}

impl Node {
    /// gRPC address of a node, from the metadata members or the initial peers.
    pub fn addr_of(&self, node_id: u64) -> Option<String> {
        self.meta
            .read(|s| s.members.get(&node_id).map(|m| m.grpc_addr.clone()))
            .or_else(|| self.config.peers.get(&node_id).cloned())
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// The metadata leader as this node sees it.
    pub fn metadata_leader(&self) -> Option<u64> {
        self.meta_group
            .raft
            .metrics()
            .borrow_watched()
            .current_leader
    }

    /// Current leader of a group hosted here, per its Raft metrics.
    pub fn local_leader(&self, group_id: u64) -> Option<u64> {
        let h = self.groups.get(group_id)?;
        let leader = h.raft.metrics().borrow_watched().current_leader;
        leader
    }

    pub fn shard_shared(&self, group_id: u64) -> Option<Arc<ShardShared>> {
        self.shards
            .lock()
            .expect("shards lock")
            .get(&group_id)
            .cloned()
    }

    pub fn leader_hint(&self, group_id: u64) -> Option<u64> {
        self.leader_hints
            .lock()
            .expect("hints lock")
            .get(&group_id)
            .copied()
    }

    pub fn set_leader_hint(&self, group_id: u64, leader: Option<u64>) {
        let mut hints = self.leader_hints.lock().expect("hints lock");
        match leader {
            Some(l) => hints.insert(group_id, l),
            None => hints.remove(&group_id),
        };
    }

    /// Proposes a metadata command, forwarding to the metadata leader, until it is applied.
    pub async fn propose_meta(&self, cmd: &MetaCommand) -> Result<MetaResponse, ApiError> {
        let bytes = encode_command(cmd);
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH_TIMEOUT;
        loop {
            let leader = match self.propose_meta_local(&bytes).await? {
                Ok(resp) => return Ok(resp),
                Err(leader) => leader,
            };
            if let Some(addr) = leader
                .filter(|l| *l != self.id)
                .and_then(|l| self.addr_of(l))
            {
                match self.forward_meta(&addr, &bytes).await {
                    Ok(Some(resp)) => return Ok(resp),
                    Ok(None) => {}
                    Err(e) if !e.retryable() => return Err(e),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "the metadata group has no reachable leader".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ok(Ok(response)) when applied here; Ok(Err(leader hint)) when another node leads.
    pub async fn propose_meta_local(
        &self,
        bytes: &[u8],
    ) -> Result<Result<MetaResponse, Option<u64>>, ApiError> {
        // A command this binary cannot decode (sent by a newer node during a rolling upgrade)
        // is refused here, before it is committed: once committed, every replica that cannot
        // apply it stops its metadata group.
        if let Err(e) = serde_json::from_slice::<crate::metadata::state::MetaCommand>(bytes) {
            return Err(ApiError::InvalidArgument(format!(
                "a metadata command this node's version does not know ({:?} at column {}); \
                 upgrade every node before using a new action",
                e.classify(),
                e.column()
            )));
        }
        match self
            .meta_group
            .raft
            .client_write(Request(bytes.to_vec().into()))
            .await
        {
            Ok(resp) => decode_response(&resp.data.0)
                .map(Ok)
                .map_err(ApiError::Internal),
            Err(e) => match not_leader(&e) {
                Some(hint) => Ok(Err(hint)),
                None => Err(write_error(e)),
            },
        }
    }

    async fn forward_meta(
        &self,
        addr: &str,
        bytes: &[u8],
    ) -> Result<Option<MetaResponse>, ApiError> {
        let mut client = self
            .groups
            .transport()
            .client(addr)
            .map_err(ApiError::Internal)?;
        let reply = client
            .meta_propose(MetaProposeRequest {
                command: bytes.to_vec(),
            })
            .await
            .map_err(|s| transport_error(&s))?
            .into_inner();
        if reply.not_leader.is_some() {
            return Ok(None);
        }
        if !reply.error.is_empty() {
            return Err(ApiError::Internal(reply.error));
        }
        decode_response(&reply.response)
            .map(Some)
            .map_err(ApiError::Internal)
    }

    /// This node's write-path counters with its group commit's (`GetNodeStats`).
    pub fn write_stats(&self) -> millrace_proto::v1::GetNodeStatsResponse {
        self.stats.snapshot(
            self.id,
            self.groups.flusher().stats(),
            self.groups.transport().appends(),
        )
    }

    /// Appends a batch to a shard group hosted here, if this replica leads it.
    pub async fn append_local(
        &self,
        group_id: u64,
        records: Vec<BatchRecord>,
        producer: Option<(String, u64)>,
    ) -> Result<LocalWrite, ApiError> {
        let (Some(h), Some(shared)) = (self.groups.get(group_id), self.shard_shared(group_id))
        else {
            return Ok(LocalWrite::NotLeader(None));
        };
        if shared.sealed_at().is_some() {
            return Ok(LocalWrite::Closed);
        }
        let (pending, answer) = Pending::new(records, producer);
        if self.config.shard_throttling {
            shared
                .throttle
                .lock()
                .expect("throttle lock")
                .admit_write(
                    pending.records.len(),
                    pending.bytes,
                    std::time::Instant::now(),
                )
                .map_err(ApiError::ProvisionedThroughputExceeded)?;
        }
        if let Some(entry) = shared.proposer.submit(pending)? {
            let stats = self.stats.clone();
            tokio::spawn(propose_entries(
                h.raft.clone(),
                shared.clone(),
                stats,
                entry,
            ));
        }
        // The proposing task always answers (a dropped sender means it died: unknown outcome).
        let proposed = answer.await.map_err(|_| {
            ApiError::UnknownOutcome("the shard's proposer stopped before answering".into())
        })?;
        if let Proposed::Applied { first, .. } = proposed {
            self.stats.led();
            if first {
                self.announce_commit(group_id);
            }
        }
        match proposed {
            Proposed::Applied { index, outcome, .. } => match outcome {
                RequestOutcome::Appended { position } => Ok(LocalWrite::Done { index, position }),
                // An idempotent producer's retry: answer with the request it repeats.
                RequestOutcome::Duplicate { index, position } => {
                    Ok(LocalWrite::Done { index, position })
                }
                RequestOutcome::DuplicateTooOld => Err(ApiError::InvalidArgument(
                    "ProducerSequence repeats a batch too old to name; it was not written again"
                        .into(),
                )),
                RequestOutcome::Closed => Ok(LocalWrite::Closed),
            },
            Proposed::NotLeader(hint) => Ok(LocalWrite::NotLeader(hint)),
            Proposed::Failed(e) => Err(e),
        }
    }

    /// Seals a shard group hosted here if this replica leads it; answers the seal's log index
    /// (the existing one if the shard is already sealed).
    pub async fn seal_local(&self, group_id: u64) -> Result<LocalWrite, ApiError> {
        let (Some(h), Some(shared)) = (self.groups.get(group_id), self.shard_shared(group_id))
        else {
            return Ok(LocalWrite::NotLeader(None));
        };
        if let Some(at) = shared.sealed_at() {
            return Ok(LocalWrite::Done {
                index: at,
                position: 0,
            });
        }
        let seal = entry::encode_command(shard_command::Command::Seal(Seal {}));
        match h.raft.client_write(Request(seal.into())).await {
            // The first seal in the log is the shard's end (a retried seal may land later).
            Ok(resp) => Ok(LocalWrite::Done {
                index: shared.sealed_at().unwrap_or(resp.log_id.index),
                position: 0,
            }),
            Err(e) => match not_leader(&e) {
                Some(hint) => {
                    refresh_lease(&h.raft).await;
                    Ok(LocalWrite::NotLeader(hint))
                }
                None => Err(write_error(e)),
            },
        }
    }

    /// Reads committed records of a shard group hosted here (the caller checked leadership
    /// when it matters). `max_records == 0` only reports the applied index.
    pub fn read_local(&self, group_id: u64, bounds: ReadBounds) -> Result<ShardRead, ApiError> {
        let (h, shared) = self.hosted_shard(group_id)?;
        Ok(self.read_replica(&h, &shared, bounds, None)?.0)
    }

    fn hosted_shard(&self, group_id: u64) -> Result<(GroupHandle, Arc<ShardShared>), ApiError> {
        match (self.groups.get(group_id), self.shard_shared(group_id)) {
            (Some(h), Some(shared)) => Ok((h, shared)),
            _ => Err(ApiError::Unavailable(format!(
                "group {group_id} is not hosted here"
            ))),
        }
    }

    /// [`Node::read_local`] on the leader: serves the page read ahead for `bounds` when there
    /// is one, and reads the next page ahead (`shard/read_ahead.rs`).
    async fn read_local_ahead(
        &self,
        group_id: u64,
        bounds: ReadBounds,
    ) -> Result<ShardRead, ApiError> {
        let (h, shared) = self.hosted_shard(group_id)?;
        let ahead_allowed = bounds.max_records > 0
            && bounds.at_timestamp_ms.is_none()
            && !calibration::is(InjectedBug::UncommittedReads);
        let readable = readable_index(shared.applied_index(), shared.sealed_at());
        let ahead = match readable {
            Some(r) if ahead_allowed => shared.read_ahead.take(&bounds, r).await,
            _ => None,
        };
        let (read, readable) = self.read_replica(&h, &shared, bounds, ahead)?;
        if let (true, Some(readable)) = (ahead_allowed, readable) {
            shared
                .read_ahead
                .start_after(&read.outcome, &bounds, readable, &h.log, &shared);
        }
        Ok(read)
    }

    /// Reads a hosted replica (or takes `ahead`, a page already read for `bounds`); also
    /// returns the readable index the read was bounded by.
    fn read_replica(
        &self,
        h: &GroupHandle,
        shared: &ShardShared,
        bounds: ReadBounds,
        ahead: Option<ReadOutcome>,
    ) -> Result<(ShardRead, Option<u64>), ApiError> {
        let applied = shared.applied_index();
        let latest = shared.latest_arrival_ms();
        let sealed_at = shared.sealed_at();
        let readable = readable_index(applied, sealed_at);
        let readable = if calibration::is(InjectedBug::UncommittedReads) {
            // Calibration bug: the whole local log, committed or not.
            h.log.bounds().1.or(readable)
        } else {
            readable
        };
        let mut bounds = bounds;
        if let Some(ts) = bounds.at_timestamp_ms {
            let start = shared.scan_start_for(ts);
            bounds.from_index = match readable {
                Some(a) => crate::shard::read::find_index_at_timestamp(&h.log, a, start, ts)
                    .map_err(ApiError::Internal)?,
                None => 0,
            };
            bounds.from_position = 0;
        }
        let outcome = match readable {
            _ if ahead.is_some() => ahead.expect("a page read ahead"),
            Some(readable) if bounds.max_records > 0 => {
                let duplicates = |index| shared.duplicate_spans(index);
                read_records(&h.log, readable, bounds, &duplicates).map_err(ApiError::Internal)?
            }
            _ => ReadOutcome {
                records: Vec::<StoredRecord>::new(),
                next_index: bounds.from_index,
                next_position: bounds.from_position,
            },
        };
        let read = ShardRead {
            outcome,
            applied,
            latest_arrival_ms: latest,
            sealed_at,
        };
        Ok((read, readable))
    }

    /// Reads a shard hosted here if this replica is its leader, after confirming leadership
    /// with a quorum (ReadIndex) and waiting until everything committed before the read is
    /// applied: a new leader never serves a stale prefix. `Ok(Err(hint))` when not the leader.
    pub async fn read_as_leader(
        &self,
        group_id: u64,
        bounds: ReadBounds,
    ) -> Result<Result<ShardRead, Option<u64>>, ApiError> {
        let Some(h) = self.groups.get(group_id) else {
            return Ok(Err(None));
        };
        let confirm = h.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(LINEARIZABLE_READ_TIMEOUT, confirm).await {
            Err(_) => Err(ApiError::Unavailable(format!(
                "shard group {group_id}: leadership not confirmed within {LINEARIZABLE_READ_TIMEOUT:?}"
            ))),
            Ok(Ok(_)) => {
                let throttled = self.config.shard_throttling && bounds.max_records > 0;
                let shared = self.shard_shared(group_id);
                if let (true, Some(shared)) = (throttled, &shared) {
                    let mut t = shared.throttle.lock().expect("throttle lock");
                    t.admit_read(std::time::Instant::now())
                        .map_err(ApiError::ProvisionedThroughputExceeded)?;
                }
                let read = self.read_local_ahead(group_id, bounds).await?;
                if let (true, Some(shared)) = (throttled, &shared) {
                    let bytes = read.outcome.records.iter().map(|r| r.data.len()).sum();
                    let mut t = shared.throttle.lock().expect("throttle lock");
                    t.charge_read(bytes, std::time::Instant::now());
                }
                Ok(Ok(read))
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Ok(Err(f.leader_id.filter(|l| *l != self.id)))
            }
            Ok(Err(e)) => Err(ApiError::Unavailable(format!("shard group {group_id}: {e}"))),
        }
    }

    /// The metadata read index if this node leads the metadata group (`Ok(Err(hint))` if not).
    pub async fn meta_read_index(&self) -> Result<Result<Option<u64>, Option<u64>>, ApiError> {
        let confirm = self
            .meta_group
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(LINEARIZABLE_READ_TIMEOUT, confirm).await {
            Err(_) => Err(ApiError::Unavailable(
                "metadata leadership not confirmed in time".into(),
            )),
            Ok(Ok(read)) => Ok(Ok(Some(read.index()))),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Ok(Err(f.leader_id.filter(|l| *l != self.id)))
            }
            Ok(Err(e)) => Err(ApiError::Unavailable(format!("metadata group: {e}"))),
        }
    }

    /// Brings this node's metadata up to date with every write acknowledged before the call
    /// (read-your-writes through any node): gets the leader's read index and waits until the
    /// local replica has applied it.
    pub async fn sync_meta(&self) -> Result<(), ApiError> {
        self.sync_meta_within(LEADER_SEARCH_TIMEOUT).await
    }

    /// [`Node::sync_meta`], answered within `wait` in all: a metadata leader that stopped
    /// answering (paused, or cut off with its packets dropped) held the call until the peer
    /// connection's keep-alive gave up, and the client's deadline passed first (issue 18 point 7:
    /// a Kinesis PutRecords for a stream this node did not know yet hung). Fails with a retryable
    /// `Unavailable`.
    pub async fn sync_meta_within(&self, wait: Duration) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        match tokio::time::timeout_at(deadline, self.sync_meta_until(deadline)).await {
            Ok(synced) => synced,
            Err(_) => Err(ApiError::Unavailable(format!(
                "the metadata group's leader did not answer within {wait:?}; retry"
            ))),
        }
    }

    async fn sync_meta_until(&self, deadline: tokio::time::Instant) -> Result<(), ApiError> {
        let index = loop {
            let hint = match self.meta_read_index().await? {
                Ok(index) => break index,
                Err(hint) => hint,
            };
            if let Some(addr) = hint.and_then(|l| self.addr_of(l)) {
                let mut client = self
                    .groups
                    .transport()
                    .client(&addr)
                    .map_err(ApiError::Internal)?;
                if let Ok(reply) = client
                    .meta_read_index(millrace_proto::internal::MetaReadIndexRequest {})
                    .await
                {
                    let reply = reply.into_inner();
                    if reply.not_leader.is_none() && reply.error.is_empty() {
                        break reply.has_read_index.then_some(reply.read_index);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "the metadata group has no reachable leader".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(index) = index {
            self.meta_group
                .raft
                .wait(Some(LINEARIZABLE_READ_TIMEOUT))
                .applied_index_at_least(Some(index), "metadata catch-up")
                .await
                .map_err(|e| ApiError::Unavailable(format!("metadata not caught up: {e}")))?;
        }
        Ok(())
    }

    /// On the shard group's leader: adds `learner` (blocking until it has caught up, through a
    /// snapshot if the log it needs is purged), then makes `voters` the voter set.
    /// `Ok(Err(hint))` when this replica does not lead.
    pub async fn membership_local(
        &self,
        group_id: u64,
        learner: u64,
        learner_addr: &str,
        voters: &[u64],
    ) -> Result<Result<(), Option<u64>>, ApiError> {
        let Some(h) = self.groups.get(group_id) else {
            return Ok(Err(None));
        };
        if !h.raft.is_leader() {
            return Ok(Err(self.local_leader(group_id).filter(|l| *l != self.id)));
        }
        let already_voter = h.raft.voter_ids().any(|v| v == learner);
        if !already_voter {
            let added = h
                .raft
                .add_learner(learner, openraft::BasicNode::new(learner_addr), true)
                .await;
            if let Err(e) = added {
                return match not_leader(&e) {
                    Some(hint) => {
                        refresh_lease(&h.raft).await;
                        Ok(Err(hint))
                    }
                    None => Err(ApiError::Unavailable(format!(
                        "adding learner {learner}: {e}"
                    ))),
                };
            }
        }
        let voters: std::collections::BTreeSet<u64> = voters.iter().copied().collect();
        match h.raft.change_membership(voters, false).await {
            Ok(_) => {
                self.announce_commit(group_id);
                Ok(Ok(()))
            }
            Err(e) => match not_leader(&e) {
                Some(hint) => {
                    refresh_lease(&h.raft).await;
                    Ok(Err(hint))
                }
                None => Err(ApiError::Unavailable(format!("changing voters: {e}"))),
            },
        }
    }

    /// Members with their addresses, for DescribeCluster.
    pub fn members(&self) -> BTreeMap<u64, crate::metadata::state::Member> {
        self.meta.read(|s| s.members.clone())
    }
}

/// Proposes coalesced writes on a shard leader, one entry at a time in this slot, until the
/// proposer has nothing queued (see [`crate::shard::proposer`]); answers every write.
async fn propose_entries(
    raft: millrace_raft::Raft,
    shared: Arc<ShardShared>,
    stats: Arc<super::stats::WriteStats>,
    mut entry: Vec<Pending>,
) {
    loop {
        let parts: Vec<RequestRecords<'_>> = entry
            .iter()
            .map(|p| RequestRecords {
                records: &p.records,
                producer: p.producer.as_ref().map(|(id, seq)| (id.as_str(), *seq)),
            })
            .collect();
        let bytes = entry::encode_batch(now_ms(), &parts);
        let records = parts.iter().map(|p| p.records.len()).sum();
        drop(parts);
        let proposed_at = std::time::Instant::now();
        match raft.client_write(Request(bytes.into())).await {
            Ok(resp) => {
                stats.commit_seconds.observe(proposed_at.elapsed());
                stats.proposed(records);
                let index = resp.log_id.index;
                match decode_outcomes(&resp.data.0).filter(|o| o.len() == entry.len()) {
                    Some(outcomes) => {
                        for (i, (pending, outcome)) in entry.drain(..).zip(outcomes).enumerate() {
                            pending.answer(Proposed::Applied {
                                index,
                                outcome,
                                first: i == 0,
                            });
                        }
                    }
                    None => {
                        tracing::error!(index, "a record batch's apply response does not match it");
                        for pending in entry.drain(..) {
                            pending.answer(Proposed::Failed(ApiError::Internal(format!(
                                "entry {index}: unreadable apply response"
                            ))));
                        }
                    }
                }
            }
            Err(e) => {
                // Either another replica leads (nothing was written) or the outcome is as
                // `write_error` says: the same for every write of the entry.
                let failure = match not_leader(&e) {
                    Some(hint) => {
                        refresh_lease(&raft).await;
                        Proposed::NotLeader(hint)
                    }
                    None => Proposed::Failed(write_error(e)),
                };
                for pending in entry.drain(..) {
                    pending.answer(failure.clone());
                }
            }
        }
        match shared.proposer.next() {
            Some(next) => entry = next,
            None => return,
        }
    }
}

/// A quiet shard group sends no periodic heartbeats, so an idle leader's lease runs out and
/// openraft refuses writes (`LeaseExpired`) until a quorum acknowledges it again: one heartbeat
/// round renews it, and the caller's retry goes through.
async fn refresh_lease(raft: &millrace_raft::Raft) {
    if raft.is_leader() {
        let _ = raft.trigger().heartbeat().await;
    }
}

/// The leader hint when a write failed only because this node does not lead.
fn not_leader(
    e: &RaftError<millrace_raft::TypeConfig, ClientWriteError<millrace_raft::TypeConfig>>,
) -> Option<Option<u64>> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(f.leader_id),
        _ => None,
    }
}

fn write_error(
    e: RaftError<millrace_raft::TypeConfig, ClientWriteError<millrace_raft::TypeConfig>>,
) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            ApiError::UnknownOutcome("the entry was discarded after a leader change".into())
        }
        RaftError::Fatal(f) => ApiError::UnknownOutcome(format!("raft group stopped: {f}")),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Maps a failed node-to-node call: a connection never made means nothing was sent (read from
/// the error's types: `millrace_mux::never_sent`).
pub fn transport_error(status: &tonic::Status) -> ApiError {
    if millrace_mux::never_sent(status) {
        ApiError::Unavailable(format!("peer unreachable: {}", status.message()))
    } else {
        ApiError::UnknownOutcome(format!("peer call failed: {}", status.message()))
    }
}

/// A leadership transfer that has not happened after this long is handed on to another voter
/// (then after twice, four times... as long, up to [`TRANSFER_STALL_AFTER_MAX`]). More than the
/// target's own wait for its log (`TRANSFER_CATCH_UP_MAX`, 1 s) plus an election.
const TRANSFER_STALL_AFTER: Duration = Duration::from_secs(3);
const TRANSFER_STALL_AFTER_MAX: Duration = Duration::from_secs(24);

/// Watches a leadership transfer this leader started toward `to`. A leader that started a
/// transfer proposes nothing until some replica wins an election, and a quiet shard group holds
/// none by itself: if the target never stands (the message was lost, the target paused or died,
/// or openraft ignored it), the shard would take no writes for good. So while the leadership
/// has not moved, the transfer is handed on, after [`TRANSFER_STALL_AFTER`] and then less and
/// less often, to a voter whose log is complete and whose node answers pings: the one tried
/// least recently (never, first). The watch ends when this replica stops leading in the term
/// it started in, or the group stops.
pub fn watch_transfer(node: Arc<Node>, raft: millrace_raft::types::Raft, group_id: u64, to: u64) {
    tokio::spawn(async move {
        let (me, term) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            (m.id, m.current_term)
        };
        // Per voter: the attempt that last chose it (0: none yet).
        let mut last_tried: BTreeMap<u64, usize> = BTreeMap::from([(to, 1)]);
        let mut stall_after = TRANSFER_STALL_AFTER;
        for attempt in 2.. {
            let moved = raft
                .wait(Some(stall_after))
                .metrics(
                    |m| !m.state.is_leader() || m.current_term != term,
                    "leadership moved",
                )
                .await;
            // Moved, or the group is shutting down: nothing left to watch.
            if !matches!(moved, Err(openraft::metrics::WaitError::Timeout(..))) {
                return;
            }
            stall_after = (stall_after * 2).min(TRANSFER_STALL_AFTER_MAX);
            let up: Vec<u64> = node
                .peers_up()
                .into_iter()
                .filter_map(|(peer, up)| up.then_some(peer))
                .collect();
            let m = raft.metrics().borrow_watched().clone();
            let next = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != me && up.contains(v))
                .filter(|v| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(v).cloned().flatten());
                    matched.map(|l| l.index) == m.last_log_index
                })
                .min_by_key(|v| last_tried.get(v).copied().unwrap_or(0));
            let Some(next) = next else {
                continue;
            };
            tracing::warn!(
                group_id,
                to,
                next,
                "leadership transfer stalled; handing the leadership to another voter"
            );
            last_tried.insert(next, attempt);
            if raft.trigger().transfer_leader(next).await.is_err() {
                return; // the group stopped
            }
        }
    });
}

/// Whether leader `raft` may hand its leadership to `to` now: `to` must hold the leader's
/// whole log and have answered a heartbeat of this leader. openraft refuses a transfer to a
/// replica that has not heard this leader (a quiet group sends no heartbeats between writes,
/// so a replica restarted since the last write has not), and a leader with a transfer pending
/// proposes nothing until an election: the jepsen harness caught a shard kept unavailable
/// that way.
pub async fn ready_for_transfer(raft: &millrace_raft::types::Raft, to: u64) -> Result<(), String> {
    let heard = |m: &openraft::RaftMetrics<millrace_raft::types::TypeConfig>| {
        m.heartbeat
            .as_ref()
            .and_then(|h| h.get(&to).cloned().flatten())
    };
    let before = {
        let m = raft.metrics().borrow_watched().clone();
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&to).cloned().flatten())
            .map(|l| l.index);
        if matched.is_none() || matched != m.last_log_index {
            return Err(format!(
                "node {to} has the log up to {matched:?}, the leader up to {:?}",
                m.last_log_index
            ));
        }
        heard(&m)
    };
    raft.trigger()
        .heartbeat()
        .await
        .map_err(|e| e.to_string())?;
    let answered = raft
        .wait(Some(std::time::Duration::from_secs(1)))
        .metrics(
            |m| heard(m).is_some_and(|t| Some(t) != before),
            "heartbeat answered",
        )
        .await;
    answered
        .map(|_| ())
        .map_err(|_| format!("node {to} did not answer a heartbeat within 1s"))
}
