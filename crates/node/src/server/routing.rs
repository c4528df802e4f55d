//! Routing shard operations to the shard's leader: local when this node leads, otherwise one
//! forwarded hop to the leader (found from hints, local Raft metrics, or by asking replicas).

use std::time::Duration;

use millrace_proto::internal::{ShardAppendRequest, ShardReadRequest};
use millrace_proto::storage::BatchRecord;

use super::node::{transport_error, LocalWrite, Node, LEADER_SEARCH_TIMEOUT};
use crate::api::error::ApiError;
use crate::shard::read::{ReadBounds, ReadOutcome};

/// Pause between attempts while a group elects a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

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

    /// Appends a batch to a shard; returns the Raft log index that holds it.
    pub async fn shard_append(
        &self,
        group_id: u64,
        replicas: &[u64],
        records: Vec<BatchRecord>,
    ) -> Result<u64, ApiError> {
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH_TIMEOUT;
        let mut rotation = 0usize;
        loop {
            let target = self.pick_target(group_id, replicas, &mut rotation);
            if target == self.id {
                match self.append_local(group_id, records.clone()).await? {
                    LocalWrite::Done(index) => return Ok(index),
                    LocalWrite::NotLeader(hint) => {
                        self.set_leader_hint(group_id, hint.filter(|h| *h != self.id))
                    }
                }
            } else if let Some(addr) = self.addr_of(target) {
                let mut client = self
                    .groups
                    .transport()
                    .client(&addr)
                    .map_err(ApiError::Internal)?;
                let req = ShardAppendRequest {
                    group_id,
                    records: Vec::new(),
                    batch: records.clone(),
                };
                match client.shard_append(req).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        if let Some(nl) = reply.not_leader {
                            let hint = (nl.leader_id != 0 && nl.leader_id != target)
                                .then_some(nl.leader_id);
                            self.set_leader_hint(group_id, hint);
                        } else if !reply.error_code.is_empty() {
                            return Err(remote_error(&reply.error_code, reply.error));
                        } else {
                            self.set_leader_hint(group_id, Some(target));
                            return Ok(reply.log_index);
                        }
                    }
                    Err(status) => match transport_error(&status) {
                        e @ ApiError::UnknownOutcome(_) => return Err(e),
                        _ => self.set_leader_hint(group_id, None),
                    },
                }
            } else {
                self.set_leader_hint(group_id, None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "no leader for shard group {group_id} within {LEADER_SEARCH_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Reads a shard at its leader. Returns the outcome, the applied index and the latest
    /// arrival time seen by the serving replica.
    pub async fn shard_read(
        &self,
        group_id: u64,
        replicas: &[u64],
        bounds: ReadBounds,
    ) -> Result<(ReadOutcome, Option<u64>, i64), ApiError> {
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH_TIMEOUT;
        let mut rotation = 0usize;
        loop {
            let target = self.pick_target(group_id, replicas, &mut rotation);
            if target == self.id {
                if self.local_leader(group_id) == Some(self.id) {
                    return self.read_local(group_id, bounds);
                }
                self.set_leader_hint(
                    group_id,
                    self.local_leader(group_id).filter(|l| *l != self.id),
                );
            } else if let Some(addr) = self.addr_of(target) {
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
                };
                match client.shard_read(req).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        if let Some(nl) = reply.not_leader {
                            let hint = (nl.leader_id != 0 && nl.leader_id != target)
                                .then_some(nl.leader_id);
                            self.set_leader_hint(group_id, hint);
                        } else if !reply.error_code.is_empty() {
                            return Err(remote_error(&reply.error_code, reply.error));
                        } else {
                            self.set_leader_hint(group_id, Some(target));
                            let applied = reply.has_applied.then_some(reply.applied_index);
                            return Ok((
                                ReadOutcome {
                                    records: reply.records,
                                    next_index: reply.next_index,
                                    next_position: reply.next_position,
                                },
                                applied,
                                reply.latest_arrival_timestamp_ms,
                            ));
                        }
                    }
                    Err(_) => self.set_leader_hint(group_id, None),
                }
            } else {
                self.set_leader_hint(group_id, None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "no leader for shard group {group_id} within {LEADER_SEARCH_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Rebuilds an error another node reported by its symbol.
pub fn remote_error(symbol: &str, message: String) -> ApiError {
    match symbol {
        "RESOURCE_NOT_FOUND" => ApiError::ResourceNotFound(message),
        "RESOURCE_IN_USE" => ApiError::ResourceInUse(message),
        "INVALID_ARGUMENT" => ApiError::InvalidArgument(message),
        "LIMIT_EXCEEDED" => ApiError::LimitExceeded(message),
        "UNAVAILABLE" => ApiError::Unavailable(message),
        "UNKNOWN_OUTCOME" => ApiError::UnknownOutcome(message),
        _ => ApiError::Internal(message),
    }
}
