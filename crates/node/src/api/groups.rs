//! Consumer groups over the native API: heartbeats, checkpoints, releases and descriptions
//! (the state and its rules live in `metadata/groups.rs`).

use millrace_proto::v1 as pb;

use super::error::ApiError;
use super::grpc::{meta_result, stream_name_from, MillraceService};
use crate::metadata::groups::{
    group_key, validate_group_name, ConsumerGroup, Lease, LEASE_MS_MAX, LEASE_MS_MIN,
};
use crate::metadata::state::MetaCommand;
use crate::server::now_ms;

const DEFAULT_LEASE_MS: i64 = 10_000;
const WORKER_ID_CHARS_MAX: usize = 256;

fn lease_proto(shard_id: &str, l: &Lease) -> pb::ShardLease {
    pb::ShardLease {
        shard_id: shard_id.to_string(),
        owner: l.owner.clone().unwrap_or_default(),
        epoch: l.epoch,
        expires_ms: l.expires_ms,
        checkpoint: l.checkpoint.clone().unwrap_or_default(),
        finished: l.finished,
    }
}

fn check_names(stream: &str, group: &str, worker: Option<&str>) -> Result<String, ApiError> {
    let stream = stream_name_from(stream)?;
    validate_group_name(group).map_err(ApiError::InvalidArgument)?;
    if let Some(w) = worker {
        if w.is_empty() || w.chars().count() > WORKER_ID_CHARS_MAX {
            return Err(ApiError::InvalidArgument(format!(
                "WorkerId must be 1-{WORKER_ID_CHARS_MAX} characters"
            )));
        }
    }
    Ok(stream)
}

impl MillraceService {
    /// The group as the metadata leader has it (after catching up).
    async fn group_state(&self, stream: &str, group: &str) -> Result<ConsumerGroup, ApiError> {
        self.node.sync_meta().await?;
        self.node
            .meta
            .read(|s| s.consumer_groups.get(&group_key(stream, group)).cloned())
            .ok_or_else(|| {
                ApiError::ResourceNotFound(format!("consumer group {group} of {stream} not found"))
            })
    }

    pub(super) async fn group_heartbeat_impl(
        &self,
        req: pb::ConsumerGroupHeartbeatRequest,
    ) -> Result<pb::ConsumerGroupHeartbeatResponse, ApiError> {
        let stream = check_names(&req.stream_name, &req.group, Some(&req.worker_id))?;
        let lease_ms = match i64::from(req.lease_ms) {
            0 => DEFAULT_LEASE_MS,
            ms if (LEASE_MS_MIN..=LEASE_MS_MAX).contains(&ms) => ms,
            ms => {
                return Err(ApiError::InvalidArgument(format!(
                    "LeaseMs {ms} must be between {LEASE_MS_MIN} and {LEASE_MS_MAX}"
                )))
            }
        };
        let now = now_ms();
        let cmd = MetaCommand::GroupHeartbeat {
            stream: stream.clone(),
            group: req.group.clone(),
            worker: req.worker_id.clone(),
            now_ms: now,
            lease_ms,
        };
        meta_result(self.node.propose_meta(&cmd).await?)?;
        let g = self.group_state(&stream, &req.group).await?;
        Ok(pb::ConsumerGroupHeartbeatResponse {
            leases: g
                .leases
                .iter()
                .filter(|(_, l)| l.owner.as_deref() == Some(req.worker_id.as_str()))
                .map(|(id, l)| lease_proto(id, l))
                .collect(),
            server_time_ms: now,
        })
    }

    pub(super) async fn checkpoint_impl(
        &self,
        req: pb::CheckpointLeaseRequest,
    ) -> Result<(), ApiError> {
        let stream = check_names(&req.stream_name, &req.group, Some(&req.worker_id))?;
        let cmd = MetaCommand::GroupCheckpoint {
            stream,
            group: req.group,
            shard_id: req.shard_id,
            worker: req.worker_id,
            epoch: req.epoch,
            sequence: (!req.sequence_number.is_empty()).then_some(req.sequence_number),
            finished: req.shard_finished,
        };
        meta_result(self.node.propose_meta(&cmd).await?)
    }

    pub(super) async fn release_impl(&self, req: pb::ReleaseLeasesRequest) -> Result<(), ApiError> {
        let stream = check_names(&req.stream_name, &req.group, Some(&req.worker_id))?;
        let cmd = MetaCommand::GroupRelease {
            stream,
            group: req.group,
            worker: req.worker_id,
        };
        meta_result(self.node.propose_meta(&cmd).await?)
    }

    pub(super) async fn describe_group_impl(
        &self,
        req: pb::DescribeConsumerGroupRequest,
    ) -> Result<pb::DescribeConsumerGroupResponse, ApiError> {
        let stream = check_names(&req.stream_name, &req.group, None)?;
        let g = self.group_state(&stream, &req.group).await?;
        Ok(pb::DescribeConsumerGroupResponse {
            leases: g.leases.iter().map(|(id, l)| lease_proto(id, l)).collect(),
            workers: g.workers.keys().cloned().collect(),
            server_time_ms: now_ms(),
        })
    }
}
