//! Routing shard operations to the shard's leader: local when this node leads, otherwise one
//! forwarded hop to the leader (found from hints, local Raft metrics, or by asking replicas).

use millrace_storage::calibration::{self, InjectedBug};
use std::future::Future;
use std::time::Duration;

use millrace_proto::internal::{
    NotLeader, ShardAppendRequest, ShardMembershipRequest, ShardReadRequest,
};
use millrace_proto::storage::BatchRecord;

use super::node::{transport_error, LocalWrite, Node, ShardRead, LEADER_SEARCH_TIMEOUT};
use crate::api::error::ApiError;
use crate::shard::read::{ReadBounds, ReadOutcome};

/// Pause between attempts while a group elects a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What one attempt at a target node achieved.
enum Attempt<T> {
    Done(T),
    /// Nothing happened there; try again, at the hinted leader if one is given.
    Retry(Option<u64>),
}

pub use crate::shard::proposer::ProducerTag;

/// What appending to a shard achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The batch is committed in the entry at `index`, its records at positions `position`,
    /// `position + 1`, ….
    At { index: u64, position: u32 },
    /// The shard is sealed; nothing was appended (write to its children).
    Closed,
}

/// The leader hint in a NotLeader answer from `target`.
fn hint_from(nl: &NotLeader, target: u64) -> Option<u64> {
    (nl.leader_id != 0 && nl.leader_id != target).then_some(nl.leader_id)
}

impl Node {
    fn pick_target(&self, group_id: u64, replicas: &[u64], rotation: &mut usize) -> u64 {
        if let Some(h) = self.leader_hint(group_id) {
            return h;
        }
        if let Some(l) = self.local_leader(group_id) {
            return l;
        }
        let t = replicas[*rotation % replicas.len()];
        *rotation += 1;
        t
    }

    /// Runs `attempt` against the group's likely leader until it is done, an attempt fails
    /// for good, or no leader answers within [`LEADER_SEARCH_TIMEOUT`].
    async fn route<T, F, Fut>(
        &self,
        group_id: u64,
        replicas: &[u64],
        mut attempt: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, ApiError>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH_TIMEOUT;
        let mut rotation = 0usize;
        loop {
            let target = self.pick_target(group_id, replicas, &mut rotation);
            match attempt(target).await? {
                Attempt::Done(v) => {
                    self.set_leader_hint(group_id, Some(target));
                    return Ok(v);
                }
                Attempt::Retry(hint) => {
                    self.set_leader_hint(group_id, hint.filter(|h| *h != target))
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "no leader for shard group {group_id} within {LEADER_SEARCH_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Appends a batch to a shard at its leader.
    pub async fn shard_append(
        &self,
        group_id: u64,
        replicas: &[u64],
        records: &[BatchRecord],
        producer: ProducerTag,
    ) -> Result<Appended, ApiError> {
        self.shard_write(group_id, replicas, Some((records, producer)))
            .await
    }

    /// Appends the shard's seal at its leader; `Appended::At` the seal's log index.
    pub async fn shard_seal(&self, group_id: u64, replicas: &[u64]) -> Result<Appended, ApiError> {
        self.shard_write(group_id, replicas, None).await
    }

    /// Appends `records` (as an idempotent producer's batch when it names one), or the seal
    /// when `None`.
    async fn shard_write(
        &self,
        group_id: u64,
        replicas: &[u64],
        records: Option<(&[BatchRecord], ProducerTag)>,
    ) -> Result<Appended, ApiError> {
        self.route(group_id, replicas, |target| {
            // Each attempt sends its own copy: the caller keeps the records to retry them
            // elsewhere after a reshard.
            let records = records
                .as_ref()
                .map(|(records, producer)| (records.to_vec(), producer.clone()));
            async move {
                if target == self.id {
                    let local = match records {
                        Some((records, producer)) => {
                            self.append_local(group_id, records, producer).await?
                        }
                        None => self.seal_local(group_id).await?,
                    };
                    return Ok(match local {
                        LocalWrite::Done { index, position } => {
                            Attempt::Done(Appended::At { index, position })
                        }
                        LocalWrite::Closed => Attempt::Done(Appended::Closed),
                        LocalWrite::NotLeader(hint) => Attempt::Retry(hint),
                    });
                }
                let Some(addr) = self.addr_of(target) else {
                    return Ok(Attempt::Retry(None));
                };
                let mut client = self
                    .groups
                    .transport()
                    .client(&addr)
                    .map_err(ApiError::Internal)?;
                let seal = records.is_none();
                if !seal {
                    self.stats.forwarded();
                }
                let (batch, producer) = records.unwrap_or_default();
                let (producer_id, producer_sequence) = producer.unwrap_or_default();
                let request_id = super::request_id::current();
                tracing::debug!(%request_id, group_id, to = target, "forwarding a write to the shard leader's node");
                let req = ShardAppendRequest {
                    group_id,
                    seal,
                    batch,
                    producer_id,
                    producer_sequence,
                    request_id,
                };
                let reply = match client.shard_append(req).await {
                    Ok(r) => r.into_inner(),
                    // Only a refused connection is safe to retry; anything else may have applied.
                    Err(status) => {
                        return match transport_error(&status) {
                            e @ ApiError::UnknownOutcome(_) => Err(e),
                            _ => Ok(Attempt::Retry(None)),
                        }
                    }
                };
                if let Some(nl) = &reply.not_leader {
                    return Ok(Attempt::Retry(hint_from(nl, target)));
                }
                if !reply.error_code.is_empty() {
                    return Err(remote_error(&reply.error_code, reply.error));
                }
                if reply.closed {
                    return Ok(Attempt::Done(Appended::Closed));
                }
                Ok(Attempt::Done(Appended::At {
                    index: reply.log_index,
                    position: reply.first_position,
                }))
            }
        })
        .await
    }

    /// Replaces voters of a shard group at its leader (see [`Node::membership_local`]).
    pub async fn shard_membership(
        &self,
        group_id: u64,
        replicas: &[u64],
        learner: u64,
        learner_addr: &str,
        voters: &[u64],
    ) -> Result<(), ApiError> {
        self.route(group_id, replicas, |target| async move {
            if target == self.id {
                return Ok(
                    match self
                        .membership_local(group_id, learner, learner_addr, voters)
                        .await?
                    {
                        Ok(()) => Attempt::Done(()),
                        Err(hint) => Attempt::Retry(hint),
                    },
                );
            }
            let Some(addr) = self.addr_of(target) else {
                return Ok(Attempt::Retry(None));
            };
            let mut client = self
                .groups
                .transport()
                .client(&addr)
                .map_err(ApiError::Internal)?;
            let req = ShardMembershipRequest {
                group_id,
                learner_id: learner,
                learner_grpc_addr: learner_addr.to_string(),
                voters: voters.to_vec(),
            };
            // Membership changes are idempotent here: retry on any transport failure.
            let Ok(reply) = client.shard_membership(req).await.map(|r| r.into_inner()) else {
                return Ok(Attempt::Retry(None));
            };
            if let Some(nl) = &reply.not_leader {
                return Ok(Attempt::Retry(hint_from(nl, target)));
            }
            if !reply.error.is_empty() {
                return Err(ApiError::Unavailable(reply.error));
            }
            Ok(Attempt::Done(()))
        })
        .await
    }

    /// Reads a shard at its leader (linearizable: see [`Node::read_as_leader`]).
    pub async fn shard_read(
        &self,
        group_id: u64,
        replicas: &[u64],
        bounds: ReadBounds,
    ) -> Result<ShardRead, ApiError> {
        if calibration::is(InjectedBug::UncommittedReads) && self.groups.get(group_id).is_some() {
            // Calibration bug: the local replica, leader or not, and at its end the writes
            // still in flight here, before they commit.
            let mut read = self.read_local(group_id, bounds)?;
            if read.outcome.records.len() < bounds.max_records {
                let dirty = crate::shard::dirty::records(
                    group_id,
                    read.outcome.next_index,
                    crate::server::now_ms(),
                );
                read.outcome.records.extend(dirty);
            }
            return Ok(read);
        }
        self.route(group_id, replicas, |target| async move {
            if target == self.id {
                return Ok(match self.read_as_leader(group_id, bounds).await? {
                    Ok(read) => Attempt::Done(read),
                    Err(hint) => Attempt::Retry(hint),
                });
            }
            let Some(addr) = self.addr_of(target) else {
                return Ok(Attempt::Retry(None));
            };
            let mut client = self
                .groups
                .transport()
                .client(&addr)
                .map_err(ApiError::Internal)?;
            let req = ShardReadRequest {
                group_id,
                from_index: bounds.from_index,
                from_position: bounds.from_position,
                max_records: bounds.max_records as u32,
                max_bytes: bounds.max_bytes as u64,
                by_timestamp: bounds.at_timestamp_ms.is_some(),
                at_timestamp_ms: bounds.at_timestamp_ms.unwrap_or(0),
            };
            // Reads change nothing: any transport failure may be retried.
            let Ok(reply) = client.shard_read(req).await.map(|r| r.into_inner()) else {
                return Ok(Attempt::Retry(None));
            };
            if let Some(nl) = &reply.not_leader {
                return Ok(Attempt::Retry(hint_from(nl, target)));
            }
            if !reply.error_code.is_empty() {
                return Err(remote_error(&reply.error_code, reply.error));
            }
            Ok(Attempt::Done(ShardRead {
                outcome: ReadOutcome {
                    records: reply.records,
                    next_index: reply.next_index,
                    next_position: reply.next_position,
                },
                applied: reply.has_applied.then_some(reply.applied_index),
                latest_arrival_ms: reply.latest_arrival_timestamp_ms,
                sealed_at: reply.sealed.then_some(reply.sealed_at),
            }))
        })
        .await
    }
}

/// Rebuilds an error another node reported by its symbol.
pub fn remote_error(symbol: &str, message: String) -> ApiError {
    ApiError::from_symbol(symbol, message)
}
