//! The public gRPC API (`millrace.v1.Millrace`).

use std::sync::Arc;
use std::time::Duration;

use millrace_proto::v1 as pb;
use millrace_proto::v1::millrace_server::Millrace;
use millrace_security::access_sig::KeyStore;
use tonic::{Request, Response, Status};

use super::access::{consumer_target, principal_of, resource_target, Target};
use super::error::ApiError;
use super::records::RECORD_BYTES_DEFAULT;
use crate::metadata::access::AccessCommand;
use crate::metadata::state::{
    MetaCommand, MetaResponse, ShardMeta, StreamMeta, StreamMode, StreamStatus,
};
use crate::metadata::tags::TAGS_PER_STREAM_MAX;
use crate::server::node::{Node, LEADER_SEARCH_TIMEOUT, META_WAIT_ON_WRITE};
use crate::server::now_ms;
use crate::shard::sequence::SequenceNumber;

use millrace_proto::limits::{MAX_RECORD_SIZE_KIB_MAX, MAX_RECORD_SIZE_KIB_MIN};
pub use millrace_proto::limits::{
    NAME_CHARS_MAX as STREAM_NAME_CHARS_MAX, RETENTION_HOURS_DEFAULT,
};

pub struct MillraceService {
    pub node: Arc<Node>,
}

type Reply<T> = Result<Response<T>, Status>;

/// Accepts a stream name or a StreamARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
pub fn stream_name_from(input: &str) -> Result<String, ApiError> {
    let name = match input.rsplit_once(":stream/") {
        Some((prefix, name)) if prefix.starts_with("arn:") => name,
        _ => input,
    };
    if !crate::metadata::groups::is_resource_name(name, STREAM_NAME_CHARS_MAX) {
        return Err(ApiError::InvalidArgument(format!(
            "StreamName {input:?} must be 1-{STREAM_NAME_CHARS_MAX} characters of [a-zA-Z0-9_.-]"
        )));
    }
    Ok(name.to_string())
}

impl MillraceService {
    /// The stream as this node knows it; if unknown here, catches up with the metadata leader
    /// first, so a stream created through another node is found.
    pub(super) async fn stream(&self, name: &str) -> Result<StreamMeta, ApiError> {
        self.stream_within(name, LEADER_SEARCH_TIMEOUT).await
    }

    /// [`MillraceService::stream`] for a write: waits at most [`META_WAIT_ON_WRITE`] for the
    /// metadata leader when the stream is not known here.
    pub(super) async fn stream_for_write(&self, name: &str) -> Result<StreamMeta, ApiError> {
        self.stream_within(name, META_WAIT_ON_WRITE).await
    }

    async fn stream_within(&self, name: &str, wait: Duration) -> Result<StreamMeta, ApiError> {
        let name = stream_name_from(name)?;
        let lookup = || self.node.meta.read(|s| s.streams.get(&name).cloned());
        if let Some(s) = lookup() {
            return Ok(s);
        }
        self.node.sync_meta_within(wait).await?;
        lookup().ok_or_else(|| ApiError::ResourceNotFound(crate::messages::stream_not_found(&name)))
    }

    /// The key of iterator MACs (catching up with the metadata leader if not yet known here).
    pub(super) async fn secret(&self) -> Result<Vec<u8>, ApiError> {
        if let Some(s) = self.node.meta.cluster_secret() {
            return Ok(s);
        }
        self.node.sync_meta().await?;
        self.node
            .meta
            .cluster_secret()
            .ok_or_else(|| ApiError::Unavailable("the cluster secret is not created yet".into()))
    }

    /// A shard iterator as this node reads it: its MAC checked with the cluster secret, its
    /// age with this node's clock and the configured lifetime.
    pub(super) async fn decode_iterator(
        &self,
        text: &str,
    ) -> Result<super::iterator::IteratorToken, ApiError> {
        let secret = self.secret().await?;
        self.decode_iterator_with(text, &secret)
    }

    /// [`Self::decode_iterator`] with the secret already in hand.
    pub(super) fn decode_iterator_with(
        &self,
        text: &str,
        secret: &[u8],
    ) -> Result<super::iterator::IteratorToken, ApiError> {
        super::iterator::IteratorToken::decode(
            text,
            secret,
            crate::server::now_ms(),
            self.node.config.iterator_ttl_ms,
        )
    }

    /// The stream, read after catching up with the metadata leader (describe and list calls).
    pub(super) async fn stream_fresh(&self, name: &str) -> Result<StreamMeta, ApiError> {
        let name = stream_name_from(name)?;
        self.node.sync_meta().await?;
        self.node
            .meta
            .read(|s| s.streams.get(&name).cloned())
            .ok_or_else(|| ApiError::ResourceNotFound(crate::messages::stream_not_found(&name)))
    }

    pub(super) fn shard_proto(&self, sh: &ShardMeta) -> pb::Shard {
        let leader = self
            .node
            .local_leader(sh.group_id)
            .or_else(|| self.node.leader_hint(sh.group_id))
            .unwrap_or(0);
        pb::Shard {
            shard_id: sh.shard_id.clone(),
            parent_shard_id: sh.parent_shard_ids.first().cloned().unwrap_or_default(),
            adjacent_parent_shard_id: sh.parent_shard_ids.get(1).cloned().unwrap_or_default(),
            hash_key_range: Some(pb::HashKeyRange {
                starting_hash_key: sh.starting_hash_key.to_string(),
                ending_hash_key: sh.ending_hash_key.to_string(),
            }),
            sequence_number_range: Some(pb::SequenceNumberRange {
                starting_sequence_number: SequenceNumber::new(0, 0).to_string(),
                ending_sequence_number: sh.ending_sequence_number.clone().unwrap_or_default(),
            }),
            replica_node_ids: sh.replicas.clone(),
            leader_node_id: leader,
        }
    }

    pub(super) async fn create_stream_impl(
        &self,
        req: pb::CreateStreamRequest,
        req_mode: StreamMode,
    ) -> Result<(), ApiError> {
        let name = stream_name_from(&req.stream_name)?;
        let max = self.node.config.shards_per_stream_max;
        if req.shard_count == 0 {
            return Err(ApiError::InvalidArgument(
                "ShardCount must be at least 1".into(),
            ));
        }
        if req.shard_count > max {
            return Err(ApiError::LimitExceeded(format!(
                "ShardCount {} exceeds the limit of {max} shards per stream",
                req.shard_count
            )));
        }
        let rf = match req.replication_factor {
            0 => self.node.config.default_replication_factor,
            rf @ (1 | 3 | 5) => rf,
            rf => {
                return Err(ApiError::InvalidArgument(format!(
                    "ReplicationFactor {rf} must be 1, 3 or 5"
                )))
            }
        };
        let placements = self.place_shards(req.shard_count, rf);
        let placements = placements.map_err(|e| ApiError::LimitExceeded(e.to_string()))?;
        let cluster_max = self.node.config.shards_per_cluster_max as usize;
        let existing = self.node.meta.read(|s| s.shard_count());
        if existing + req.shard_count as usize > cluster_max {
            return Err(ApiError::LimitExceeded(format!(
                "the cluster has {existing} shards; {} more would exceed its limit of {cluster_max}",
                req.shard_count
            )));
        }
        let max_record_bytes = match req.max_record_size_kib {
            0 => RECORD_BYTES_DEFAULT,
            kib @ MAX_RECORD_SIZE_KIB_MIN..=MAX_RECORD_SIZE_KIB_MAX => kib as usize * 1024,
            kib => {
                return Err(ApiError::InvalidArgument(format!(
                    "MaxRecordSizeInKiB {kib} must be between {MAX_RECORD_SIZE_KIB_MIN} and \
                     {MAX_RECORD_SIZE_KIB_MAX}"
                )))
            }
        };
        let cmd = MetaCommand::CreateStream {
            max_record_bytes,
            name,
            creation_timestamp_ms: now_ms(),
            retention_period_hours: RETENTION_HOURS_DEFAULT,
            replication_factor: rf,
            placements,
            stream_mode: req_mode,
        };
        meta_result(self.node.propose_meta(&cmd).await?)
    }
}

impl MillraceService {
    pub(super) async fn set_retention(
        &self,
        req: pb::UpdateRetentionPeriodRequest,
        increase: bool,
    ) -> Result<(), ApiError> {
        let cmd = MetaCommand::SetRetention {
            name: stream_name_from(&req.stream_name)?,
            hours: req.retention_period_hours,
            increase,
        };
        meta_result(self.node.propose_meta(&cmd).await?)
    }
}

pub(super) fn meta_result(r: MetaResponse) -> Result<(), ApiError> {
    match r {
        MetaResponse::Ok => Ok(()),
        MetaResponse::ResourceInUse(m) => Err(ApiError::ResourceInUse(m)),
        MetaResponse::ResourceNotFound(m) => Err(ApiError::ResourceNotFound(m)),
        MetaResponse::InvalidArgument(m) => Err(ApiError::InvalidArgument(m)),
        MetaResponse::LimitExceeded(m) => Err(ApiError::LimitExceeded(m)),
    }
}

fn status_proto(s: StreamStatus) -> i32 {
    (match s {
        StreamStatus::Creating => pb::StreamStatus::Creating,
        StreamStatus::Active => pb::StreamStatus::Active,
        StreamStatus::Updating => pb::StreamStatus::Updating,
        StreamStatus::Deleting => pb::StreamStatus::Deleting,
    }) as i32
}

#[tonic::async_trait]
impl Millrace for MillraceService {
    type SubscribeToShardStream = super::consumers::EventStream;
    type PutRecordsPipelineStream = super::records::PipelineAnswers;

    async fn get_node_stats(
        &self,
        req: Request<pb::GetNodeStatsRequest>,
    ) -> Reply<pb::GetNodeStatsResponse> {
        self.allow(&req, "GetNodeStats", Target::default())?;
        Ok(Response::new(self.node.write_stats()))
    }

    async fn put_records_pipeline(
        &self,
        req: Request<tonic::Streaming<pb::PipelinedPutRecordsBatch>>,
    ) -> Reply<Self::PutRecordsPipelineStream> {
        let principal = principal_of(&req);
        Ok(Response::new(
            self.put_records_pipeline_impl(principal, req.into_inner()),
        ))
    }

    async fn register_stream_consumer(
        &self,
        req: Request<pb::RegisterStreamConsumerRequest>,
    ) -> Reply<pb::RegisterStreamConsumerResponse> {
        self.allow(
            &req,
            "RegisterStreamConsumer",
            Target::stream(&req.get_ref().stream_arn),
        )?;
        let consumer = self.register_consumer_impl(req.into_inner()).await?;
        Ok(Response::new(pb::RegisterStreamConsumerResponse {
            consumer: Some(consumer),
        }))
    }

    async fn deregister_stream_consumer(
        &self,
        req: Request<pb::DeregisterStreamConsumerRequest>,
    ) -> Reply<pb::DeregisterStreamConsumerResponse> {
        let r = req.get_ref();
        let target = consumer_target(&r.stream_arn, &r.consumer_name, &r.consumer_arn);
        self.allow(&req, "DeregisterStreamConsumer", target.as_target())?;
        self.deregister_consumer_impl(req.into_inner()).await?;
        Ok(Response::new(pb::DeregisterStreamConsumerResponse {}))
    }

    async fn list_stream_consumers(
        &self,
        req: Request<pb::ListStreamConsumersRequest>,
    ) -> Reply<pb::ListStreamConsumersResponse> {
        self.allow(
            &req,
            "ListStreamConsumers",
            Target::stream(&req.get_ref().stream_arn),
        )?;
        let consumers = self.list_consumers_impl(req.into_inner()).await?;
        Ok(Response::new(pb::ListStreamConsumersResponse { consumers }))
    }

    async fn describe_stream_consumer(
        &self,
        req: Request<pb::DescribeStreamConsumerRequest>,
    ) -> Reply<pb::DescribeStreamConsumerResponse> {
        let r = req.get_ref();
        let target = consumer_target(&r.stream_arn, &r.consumer_name, &r.consumer_arn);
        self.allow(&req, "DescribeStreamConsumer", target.as_target())?;
        let consumer = self.describe_consumer_impl(req.into_inner()).await?;
        Ok(Response::new(pb::DescribeStreamConsumerResponse {
            consumer: Some(consumer),
        }))
    }

    async fn decommission_node(
        &self,
        req: Request<pb::DecommissionNodeRequest>,
    ) -> Reply<pb::DecommissionNodeResponse> {
        self.allow(&req, "DecommissionNode", Target::default())?;
        let node_id = req.into_inner().node_id;
        meta_result(
            self.node
                .propose_meta(&MetaCommand::Decommission { node_id })
                .await?,
        )?;
        Ok(Response::new(pb::DecommissionNodeResponse {}))
    }

    async fn get_cluster_status(
        &self,
        req: Request<pb::GetClusterStatusRequest>,
    ) -> Reply<pb::GetClusterStatusResponse> {
        self.allow(&req, "GetClusterStatus", Target::default())?;
        let status = self.node.fetch_cluster_status(false).await?;
        Ok(Response::new(pb::GetClusterStatusResponse {
            status_json: status.to_string(),
        }))
    }

    async fn move_shard_replica(
        &self,
        req: Request<pb::MoveShardReplicaRequest>,
    ) -> Reply<pb::MoveShardReplicaResponse> {
        self.allow(&req, "MoveShardReplica", Target::default())?;
        let req = req.into_inner();
        let cmd = MetaCommand::MoveReplica {
            name: stream_name_from(&req.stream_name)?,
            shard_id: req.shard_id,
            from: req.from_node_id,
            to: req.to_node_id,
        };
        meta_result(self.node.propose_meta(&cmd).await?)?;
        Ok(Response::new(pb::MoveShardReplicaResponse {}))
    }

    async fn subscribe_to_shard(
        &self,
        req: Request<pb::SubscribeToShardRequest>,
    ) -> Reply<Self::SubscribeToShardStream> {
        let target = resource_target(&req.get_ref().consumer_arn);
        self.allow(&req, "SubscribeToShard", target.as_target())?;
        Ok(Response::new(self.subscribe_impl(req.into_inner()).await?))
    }

    async fn create_stream(
        &self,
        req: Request<pb::CreateStreamRequest>,
    ) -> Reply<pb::CreateStreamResponse> {
        self.allow(
            &req,
            "CreateStream",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.create_stream_impl(req.into_inner(), StreamMode::Provisioned)
            .await?;
        Ok(Response::new(pb::CreateStreamResponse {}))
    }

    async fn describe_stream(
        &self,
        req: Request<pb::DescribeStreamRequest>,
    ) -> Reply<pb::DescribeStreamResponse> {
        self.allow(
            &req,
            "DescribeStream",
            Target::stream(&req.get_ref().stream_name),
        )?;
        let s = self.stream_fresh(&req.into_inner().stream_name).await?;
        Ok(Response::new(pb::DescribeStreamResponse {
            stream: Some(pb::StreamDescription {
                stream_arn: self.node.config.kinesis.stream_arn(&s.name),
                stream_name: s.name.clone(),
                status: status_proto(s.status),
                shards: s.shards.iter().map(|sh| self.shard_proto(sh)).collect(),
                retention_period_hours: s.retention_period_hours,
                creation_timestamp_ms: s.creation_timestamp_ms,
                replication_factor: s.replication_factor,
                max_record_size_kib: (s.max_record_bytes / 1024) as u32,
            }),
        }))
    }

    async fn list_streams(
        &self,
        req: Request<pb::ListStreamsRequest>,
    ) -> Reply<pb::ListStreamsResponse> {
        self.allow(&req, "ListStreams", Target::default())?;
        let principal = principal_of(&req);
        let req = req.into_inner();
        self.node.sync_meta().await?;
        let limit = match req.limit {
            0 => 100,
            l => (l as i64).min(millrace_proto::limits::LIST_RESULTS_MAX) as usize,
        };
        let after: Vec<String> = self.node.meta.read(|s| {
            s.streams
                .keys()
                .filter(|n| {
                    req.exclusive_start_stream_name.is_empty()
                        || **n > req.exclusive_start_stream_name
                })
                .cloned()
                .collect()
        });
        // Only the streams the caller may read.
        let names: Vec<String> = after
            .into_iter()
            .filter(|n| self.node.may_read(principal.as_deref(), n))
            .take(limit + 1)
            .collect();
        let more = names.len() > limit;
        Ok(Response::new(pb::ListStreamsResponse {
            stream_names: names.into_iter().take(limit).collect(),
            has_more_streams: more,
        }))
    }

    async fn list_shards(
        &self,
        req: Request<pb::ListShardsRequest>,
    ) -> Reply<pb::ListShardsResponse> {
        let r = req.get_ref();
        let stream = match r.stream_name.as_str() {
            "" => super::shards::next_token_stream(&r.next_token).unwrap_or_default(),
            name => name.to_string(),
        };
        self.allow(&req, "ListShards", Target::stream(&stream))?;
        Ok(Response::new(
            self.list_shards_impl(req.into_inner()).await?,
        ))
    }

    async fn split_shard(
        &self,
        req: Request<pb::SplitShardRequest>,
    ) -> Reply<pb::SplitShardResponse> {
        self.allow(
            &req,
            "SplitShard",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.split_shard_impl(req.into_inner()).await?;
        Ok(Response::new(pb::SplitShardResponse {}))
    }

    async fn merge_shards(
        &self,
        req: Request<pb::MergeShardsRequest>,
    ) -> Reply<pb::MergeShardsResponse> {
        self.allow(
            &req,
            "MergeShards",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.merge_shards_impl(req.into_inner()).await?;
        Ok(Response::new(pb::MergeShardsResponse {}))
    }

    async fn update_shard_count(
        &self,
        req: Request<pb::UpdateShardCountRequest>,
    ) -> Reply<pb::UpdateShardCountResponse> {
        self.allow(
            &req,
            "UpdateShardCount",
            Target::stream(&req.get_ref().stream_name),
        )?;
        Ok(Response::new(
            self.update_shard_count_impl(req.into_inner()).await?,
        ))
    }

    async fn put_records(
        &self,
        req: Request<pb::PutRecordsRequest>,
    ) -> Reply<pb::PutRecordsResponse> {
        self.allow(
            &req,
            "PutRecords",
            Target::stream(&req.get_ref().stream_name),
        )?;
        Ok(Response::new(
            self.put_records_impl(req.into_inner()).await?,
        ))
    }

    async fn get_shard_iterator(
        &self,
        req: Request<pb::GetShardIteratorRequest>,
    ) -> Reply<pb::GetShardIteratorResponse> {
        self.allow(
            &req,
            "GetShardIterator",
            Target::stream(&req.get_ref().stream_name),
        )?;
        Ok(Response::new(
            self.get_shard_iterator_impl(req.into_inner()).await?,
        ))
    }

    async fn get_records(
        &self,
        req: Request<pb::GetRecordsRequest>,
    ) -> Reply<pb::GetRecordsResponse> {
        if self.node.enforced() {
            let stream = self.iterator_stream(&req.get_ref().shard_iterator).await?;
            self.allow(&req, "GetRecords", Target::stream(&stream))?;
        }
        Ok(Response::new(
            self.get_records_impl(req.into_inner()).await?,
        ))
    }

    async fn delete_stream(
        &self,
        req: Request<pb::DeleteStreamRequest>,
    ) -> Reply<pb::DeleteStreamResponse> {
        self.allow(
            &req,
            "DeleteStream",
            Target::stream(&req.get_ref().stream_name),
        )?;
        let name = stream_name_from(&req.into_inner().stream_name)?;
        meta_result(
            self.node
                .propose_meta(&MetaCommand::DeleteStream { name })
                .await?,
        )?;
        Ok(Response::new(pb::DeleteStreamResponse {}))
    }

    async fn add_tags_to_stream(
        &self,
        req: Request<pb::AddTagsToStreamRequest>,
    ) -> Reply<pb::AddTagsToStreamResponse> {
        self.allow(
            &req,
            "AddTagsToStream",
            Target::stream(&req.get_ref().stream_name),
        )?;
        let req = req.into_inner();
        let name = stream_name_from(&req.stream_name)?;
        if req.tags.is_empty() {
            return Err(ApiError::InvalidArgument("Tags must name at least one tag".into()).into());
        }
        let cmd = MetaCommand::AddTags {
            name,
            tags: req.tags.into_iter().collect(),
        };
        meta_result(self.node.propose_meta(&cmd).await?)?;
        Ok(Response::new(pb::AddTagsToStreamResponse {}))
    }

    async fn remove_tags_from_stream(
        &self,
        req: Request<pb::RemoveTagsFromStreamRequest>,
    ) -> Reply<pb::RemoveTagsFromStreamResponse> {
        self.allow(
            &req,
            "RemoveTagsFromStream",
            Target::stream(&req.get_ref().stream_name),
        )?;
        let req = req.into_inner();
        let name = stream_name_from(&req.stream_name)?;
        if req.tag_keys.is_empty() || req.tag_keys.len() > TAGS_PER_STREAM_MAX {
            return Err(ApiError::InvalidArgument(format!(
                "TagKeys must name 1-{TAGS_PER_STREAM_MAX} keys"
            ))
            .into());
        }
        let cmd = MetaCommand::RemoveTags {
            name,
            keys: req.tag_keys,
        };
        meta_result(self.node.propose_meta(&cmd).await?)?;
        Ok(Response::new(pb::RemoveTagsFromStreamResponse {}))
    }

    async fn list_tags_for_stream(
        &self,
        req: Request<pb::ListTagsForStreamRequest>,
    ) -> Reply<pb::ListTagsForStreamResponse> {
        self.allow(
            &req,
            "ListTagsForStream",
            Target::stream(&req.get_ref().stream_name),
        )?;
        let req = req.into_inner();
        let s = self.stream_fresh(&req.stream_name).await?;
        let limit = match req.limit {
            0 => TAGS_PER_STREAM_MAX,
            l => l as usize,
        };
        let mut tags = s
            .tags
            .into_iter()
            .filter(|(k, _)| {
                req.exclusive_start_tag_key.is_empty() || *k > req.exclusive_start_tag_key
            })
            .map(|(key, value)| pb::Tag { key, value });
        let page: Vec<pb::Tag> = tags.by_ref().take(limit).collect();
        Ok(Response::new(pb::ListTagsForStreamResponse {
            tags: page,
            has_more_tags: tags.next().is_some(),
        }))
    }

    async fn increase_stream_retention_period(
        &self,
        req: Request<pb::UpdateRetentionPeriodRequest>,
    ) -> Reply<pb::UpdateRetentionPeriodResponse> {
        self.allow(
            &req,
            "IncreaseStreamRetentionPeriod",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.set_retention(req.into_inner(), true).await?;
        Ok(Response::new(pb::UpdateRetentionPeriodResponse {}))
    }

    async fn decrease_stream_retention_period(
        &self,
        req: Request<pb::UpdateRetentionPeriodRequest>,
    ) -> Reply<pb::UpdateRetentionPeriodResponse> {
        self.allow(
            &req,
            "DecreaseStreamRetentionPeriod",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.set_retention(req.into_inner(), false).await?;
        Ok(Response::new(pb::UpdateRetentionPeriodResponse {}))
    }

    async fn consumer_group_heartbeat(
        &self,
        req: Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Reply<pb::ConsumerGroupHeartbeatResponse> {
        self.allow(
            &req,
            "ConsumerGroupHeartbeat",
            Target::stream(&req.get_ref().stream_name),
        )?;
        Ok(Response::new(
            self.group_heartbeat_impl(req.into_inner()).await?,
        ))
    }

    async fn checkpoint_lease(
        &self,
        req: Request<pb::CheckpointLeaseRequest>,
    ) -> Reply<pb::CheckpointLeaseResponse> {
        self.allow(
            &req,
            "CheckpointLease",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.checkpoint_impl(req.into_inner()).await?;
        Ok(Response::new(pb::CheckpointLeaseResponse {}))
    }

    async fn release_leases(
        &self,
        req: Request<pb::ReleaseLeasesRequest>,
    ) -> Reply<pb::ReleaseLeasesResponse> {
        self.allow(
            &req,
            "ReleaseLeases",
            Target::stream(&req.get_ref().stream_name),
        )?;
        self.release_impl(req.into_inner()).await?;
        Ok(Response::new(pb::ReleaseLeasesResponse {}))
    }

    async fn describe_consumer_group(
        &self,
        req: Request<pb::DescribeConsumerGroupRequest>,
    ) -> Reply<pb::DescribeConsumerGroupResponse> {
        self.allow(
            &req,
            "DescribeConsumerGroup",
            Target::stream(&req.get_ref().stream_name),
        )?;
        Ok(Response::new(
            self.describe_group_impl(req.into_inner()).await?,
        ))
    }

    async fn describe_cluster(
        &self,
        req: Request<pb::DescribeClusterRequest>,
    ) -> Reply<pb::DescribeClusterResponse> {
        self.allow(&req, "DescribeCluster", Target::default())?;
        self.node.sync_meta().await?;
        Ok(Response::new(pb::DescribeClusterResponse {
            nodes: self
                .node
                .members()
                .into_values()
                .map(|m| pb::ClusterNode {
                    node_id: m.node_id,
                    zone: m.zone,
                    grpc_addr: m.grpc_addr,
                    http_addr: m.http_addr,
                })
                .collect(),
            metadata_leader_id: self.node.metadata_leader().unwrap_or(0),
        }))
    }

    async fn create_access_key(
        &self,
        req: Request<pb::CreateAccessKeyRequest>,
    ) -> Reply<pb::CreateAccessKeyResponse> {
        self.allow(&req, "CreateAccessKey", Target::default())?;
        Ok(Response::new(self.create_access_key_impl().await?))
    }

    async fn list_access_keys(
        &self,
        req: Request<pb::ListAccessKeysRequest>,
    ) -> Reply<pb::ListAccessKeysResponse> {
        self.allow(&req, "ListAccessKeys", Target::default())?;
        Ok(Response::new(self.list_access_keys_impl().await?))
    }

    async fn delete_access_key(
        &self,
        req: Request<pb::DeleteAccessKeyRequest>,
    ) -> Reply<pb::DeleteAccessKeyResponse> {
        self.allow(&req, "DeleteAccessKey", Target::default())?;
        let key_id = req.into_inner().access_key_id;
        self.access_command(AccessCommand::DeleteKey { key_id })
            .await?;
        Ok(Response::new(pb::DeleteAccessKeyResponse {}))
    }

    async fn put_policy(&self, req: Request<pb::PutPolicyRequest>) -> Reply<pb::PutPolicyResponse> {
        self.allow(&req, "PutPolicy", Target::default())?;
        self.put_policy_impl(req.into_inner()).await?;
        Ok(Response::new(pb::PutPolicyResponse {}))
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Reply<pb::GetPolicyResponse> {
        self.allow(&req, "GetPolicy", Target::default())?;
        let policy_json = self.get_policy_impl(&req.get_ref().access_key_id).await?;
        Ok(Response::new(pb::GetPolicyResponse { policy_json }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Reply<pb::DeletePolicyResponse> {
        self.allow(&req, "DeletePolicy", Target::default())?;
        let key_id = req.into_inner().access_key_id;
        self.access_command(AccessCommand::DeletePolicy { key_id })
            .await?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn put_resource_policy(
        &self,
        req: Request<pb::PutResourcePolicyRequest>,
    ) -> Reply<pb::PutResourcePolicyResponse> {
        self.allow_resource(&req, "PutResourcePolicy", &req.get_ref().resource_arn)?;
        let r = req.into_inner();
        self.put_resource_policy_impl(r.resource_arn, r.policy)
            .await?;
        Ok(Response::new(pb::PutResourcePolicyResponse {}))
    }

    async fn get_resource_policy(
        &self,
        req: Request<pb::GetResourcePolicyRequest>,
    ) -> Reply<pb::GetResourcePolicyResponse> {
        self.allow_resource(&req, "GetResourcePolicy", &req.get_ref().resource_arn)?;
        let policy = self
            .get_resource_policy_impl(&req.get_ref().resource_arn)
            .await?;
        Ok(Response::new(pb::GetResourcePolicyResponse { policy }))
    }

    async fn delete_resource_policy(
        &self,
        req: Request<pb::DeleteResourcePolicyRequest>,
    ) -> Reply<pb::DeleteResourcePolicyResponse> {
        self.allow_resource(&req, "DeleteResourcePolicy", &req.get_ref().resource_arn)?;
        self.delete_resource_policy_impl(req.into_inner().resource_arn)
            .await?;
        Ok(Response::new(pb::DeleteResourcePolicyResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_arns() {
        assert_eq!(stream_name_from("orders").unwrap(), "orders");
        assert_eq!(
            stream_name_from("arn:aws:kinesis:us-east-1:123456789012:stream/orders").unwrap(),
            "orders"
        );
        assert!(stream_name_from("").is_err());
        assert!(stream_name_from("bad name").is_err());
        assert!(stream_name_from(&"x".repeat(129)).is_err());
    }
}
