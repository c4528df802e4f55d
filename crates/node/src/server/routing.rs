//! Routing shard operations to the shard's leader: local when this node leads, otherwise one
//! forwarded hop to the leader (found from hints, local Raft metrics, or by asking replicas).

use std::future::Future;
use std::time::Duration;

use millrace_proto::internal::{NotLeader, ShardAppendRequest, ShardReadRequest};
use millrace_proto::storage::BatchRecord;

use super::node::{transport_error, LocalWrite, Node, LEADER_SEARCH_TIMEOUT};
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

/// A committed read: records, the serving replica's applied index and latest arrival time.
pub type ShardRead = (ReadOutcome, Option<u64>, i64);

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

    /// Appends a batch to a shard; returns the Raft log index that holds it.
    pub async fn shard_append(
        &self,
        group_id: u64,
        replicas: &[u64],
        records: Vec<BatchRecord>,
    ) -> Result<u64, ApiError> {
        self.route(group_id, replicas, |target| {
            let records = records.clone();
            async move {
                if target == self.id {
                    return Ok(match self.append_local(group_id, records).await? {
                        LocalWrite::Done(index) => Attempt::Done(index),
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
                let req = ShardAppendRequest {
                    group_id,
                    records: Vec::new(),
                    batch: records,
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
                Ok(Attempt::Done(reply.log_index))
            }
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
            let outcome = ReadOutcome {
                records: reply.records,
                next_index: reply.next_index,
                next_position: reply.next_position,
            };
            let applied = reply.has_applied.then_some(reply.applied_index);
            Ok(Attempt::Done((
                outcome,
                applied,
                reply.latest_arrival_timestamp_ms,
            )))
        })
        .await
    }
}

/// Rebuilds an error another node reported by its symbol.
pub fn remote_error(symbol: &str, message: String) -> ApiError {
    ApiError::from_symbol(symbol, message)
}
