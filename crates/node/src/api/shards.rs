//! Shard administration: ListShards (filters, pagination), SplitShard, MergeShards,
//! UpdateShardCount, and placing new shards' replicas.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use millrace_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::grpc::{meta_result, stream_name_from, MillraceService};
use crate::metadata::placement::{place_replicas, NodeId, NodeLoad, PlacementError};
use crate::metadata::reshard::{
    plan_merge, plan_split, plan_uniform_scaling, plan_warm_throughput, shards_for_mibps,
    PlanError, ReshardPlan,
};
use crate::metadata::state::{MetaCommand, ShardMeta, ShardStatus, StreamMeta};
use crate::server::now_ms;
use crate::shard::hashing::parse_explicit_hash_key;

/// ListShards page size bounds (Kinesis: MaxResults 1-10000, default 1000).
const LIST_SHARDS_DEFAULT: usize = 1000;
const LIST_SHARDS_MAX: u32 = millrace_proto::limits::LIST_RESULTS_MAX as u32;
/// A NextToken is valid for 5 minutes, as in Kinesis.
const NEXT_TOKEN_TTL_MS: i64 = 5 * 60 * 1000;

/// What a ListShards NextToken remembers (base64url JSON; it only selects, so it needs no MAC).
#[derive(Serialize, Deserialize)]
struct NextToken {
    stream: String,
    after_shard_id: String,
    filter_type: i32,
    filter_shard_id: String,
    filter_timestamp_ms: i64,
    max_results: u32,
    expires_ms: i64,
}

/// The stream a ListShards NextToken names (`None` when it is not a token).
pub(crate) fn next_token_stream(token: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    serde_json::from_slice::<NextToken>(&raw)
        .ok()
        .map(|t| t.stream)
}

/// Does the filter select this shard? `trim_horizon_ms` is now minus the retention period.
fn selected(s: &ShardMeta, f: &pb::ShardFilter, trim_horizon_ms: i64) -> Result<bool, ApiError> {
    use pb::ShardFilterType as F;
    let open_at = |t: i64| s.created_ms <= t && s.closed_ms.is_none_or(|c| c > t);
    let open_since = |t: i64| s.closed_ms.is_none_or(|c| c > t);
    Ok(match F::try_from(f.r#type).unwrap_or(F::Unspecified) {
        F::Unspecified => true,
        F::AfterShardId => s.shard_id.as_str() > f.shard_id.as_str(),
        F::AtTrimHorizon => open_at(trim_horizon_ms),
        F::FromTrimHorizon => open_since(trim_horizon_ms),
        F::AtLatest => matches!(s.status, ShardStatus::Open | ShardStatus::Closing),
        F::AtTimestampFilter => open_at(f.timestamp_ms),
        F::FromTimestamp => open_since(f.timestamp_ms),
    })
}

impl MillraceService {
    /// Chooses replicas for `count` new shards, spreading zones, replicas and leaders.
    pub(super) fn place_shards(
        &self,
        count: u32,
        rf: u32,
    ) -> Result<Vec<Vec<NodeId>>, PlacementError> {
        self.node.meta.read(|s| {
            let mut loads: Vec<NodeLoad> = s
                .members
                .values()
                .filter(|m| !m.decommissioning)
                .map(|m| NodeLoad {
                    node_id: m.node_id,
                    zone: m.zone.clone(),
                    replicas: 0,
                    leaders: 0,
                })
                .collect();
            let live = s
                .streams
                .values()
                .flat_map(|st| &st.shards)
                .filter(|sh| sh.status != ShardStatus::Closed);
            for sh in live {
                for (i, r) in sh.replicas.iter().enumerate() {
                    if let Some(l) = loads.iter_mut().find(|l| l.node_id == *r) {
                        l.replicas += 1;
                        l.leaders += usize::from(i == 0);
                    }
                }
            }
            (0..count)
                .map(|_| place_replicas(&mut loads, rf as usize))
                .collect()
        })
    }

    pub(super) async fn list_shards_impl(
        &self,
        req: pb::ListShardsRequest,
    ) -> Result<pb::ListShardsResponse, ApiError> {
        let (name, after, filter, max) = if !req.next_token.is_empty() {
            let with_token = [
                ("StreamName", !req.stream_name.is_empty()),
                (
                    "ExclusiveStartShardId",
                    !req.exclusive_start_shard_id.is_empty(),
                ),
                ("ShardFilter", req.shard_filter.is_some()),
            ];
            if let Some((other, _)) = with_token.iter().find(|(_, given)| *given) {
                return Err(ApiError::InvalidArgument(crate::messages::not_together(
                    "NextToken",
                    other,
                )));
            }
            let t: NextToken = URL_SAFE_NO_PAD
                .decode(&req.next_token)
                .ok()
                .and_then(|raw| serde_json::from_slice(&raw).ok())
                .ok_or_else(|| {
                    ApiError::InvalidArgument("NextToken is not a valid token".into())
                })?;
            if t.expires_ms < now_ms() {
                return Err(ApiError::ExpiredNextToken(
                    "NextToken expired; list the shards again".into(),
                ));
            }
            let filter = pb::ShardFilter {
                r#type: t.filter_type,
                shard_id: t.filter_shard_id,
                timestamp_ms: t.filter_timestamp_ms,
            };
            (t.stream, t.after_shard_id, filter, t.max_results)
        } else {
            let filter = req.shard_filter.unwrap_or_default();
            let needs_id = filter.r#type == pb::ShardFilterType::AfterShardId as i32;
            if needs_id && filter.shard_id.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "ShardFilter AFTER_SHARD_ID needs a ShardId".into(),
                ));
            }
            (
                req.stream_name,
                req.exclusive_start_shard_id,
                filter,
                req.max_results,
            )
        };
        if max > LIST_SHARDS_MAX {
            return Err(ApiError::InvalidArgument(format!(
                "MaxResults {max} must be 1-{LIST_SHARDS_MAX}"
            )));
        }
        let limit = if max == 0 {
            LIST_SHARDS_DEFAULT
        } else {
            max as usize
        };
        let stream = self.stream_fresh(&name).await?;
        // The oldest moment with retained data: no earlier than the stream's creation.
        let trim_horizon_ms = (now_ms() - i64::from(stream.retention_period_hours) * 3_600_000)
            .max(stream.creation_timestamp_ms);
        let mut matching = Vec::new();
        for s in stream
            .shards
            .iter()
            .filter(|s| after.is_empty() || s.shard_id > after)
        {
            if selected(s, &filter, trim_horizon_ms)? {
                matching.push(s);
            }
        }
        let more = matching.len() > limit;
        matching.truncate(limit);
        let next_token = match matching.last() {
            Some(last) if more => URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&NextToken {
                    stream: stream.name.clone(),
                    after_shard_id: last.shard_id.clone(),
                    filter_type: filter.r#type,
                    filter_shard_id: filter.shard_id.clone(),
                    filter_timestamp_ms: filter.timestamp_ms,
                    max_results: max,
                    expires_ms: now_ms() + NEXT_TOKEN_TTL_MS,
                })
                .expect("token serialises"),
            ),
            _ => String::new(),
        };
        Ok(pb::ListShardsResponse {
            shards: matching.into_iter().map(|s| self.shard_proto(s)).collect(),
            next_token,
        })
    }

    /// Proposes a reshard plan with placements for its children.
    async fn reshard(&self, stream: &StreamMeta, plan: ReshardPlan) -> Result<(), ApiError> {
        let placements = self
            .place_shards(plan.children.len() as u32, stream.replication_factor)
            .map_err(|e| ApiError::LimitExceeded(e.to_string()))?;
        let cmd = MetaCommand::Reshard {
            name: stream.name.clone(),
            parents: plan.parents,
            children: plan.children,
            placements,
            timestamp_ms: now_ms(),
        };
        meta_result(self.node.propose_meta(&cmd).await?)
    }

    /// UpdateStreamWarmThroughput: records the target (ON_DEMAND streams of an account with
    /// the billing commitment) and, when the open shards cannot take it, reshards the stream to
    /// one shard per MiB/s. Answers the open shards' capacity before the change, in MiB/s.
    pub(super) async fn update_warm_throughput_impl(
        &self,
        name: &str,
        mibps: u32,
    ) -> Result<u32, ApiError> {
        let stream = self.stream_fresh(&stream_name_from(name)?).await?;
        let max = self.node.config.shards_per_stream_max;
        let target = shards_for_mibps(mibps);
        if target > max {
            return Err(ApiError::LimitExceeded(format!(
                "WarmThroughputMiBps {mibps} needs {target} shards; the limit is {max} shards per stream"
            )));
        }
        if stream.status != crate::metadata::state::StreamStatus::Active {
            let state = format!("{:?}", stream.status).to_uppercase();
            let message = crate::messages::stream_not_active(&stream.name, &state);
            return Err(ApiError::ResourceInUse(message));
        }
        let current = stream.shards.iter().filter(|s| s.is_current()).count() as u32;
        // The cluster's shard limit is checked before the target is recorded, so that a
        // refused scale-up records nothing.
        let plan = plan_warm_throughput(&stream, mibps);
        if let Some(plan) = &plan {
            self.check_shard_limit(plan.children.len() - plan.parents.len())?;
        }
        let cmd = MetaCommand::SetWarmThroughput {
            name: stream.name.clone(),
            mibps,
            at_ms: now_ms(),
        };
        meta_result(self.node.propose_meta(&cmd).await?)?;
        if let Some(plan) = plan {
            self.reshard(&stream, plan).await?;
        }
        Ok(current)
    }

    pub(crate) async fn split_shard_impl(
        &self,
        req: pb::SplitShardRequest,
    ) -> Result<(), ApiError> {
        let stream = self
            .stream_fresh(&stream_name_from(&req.stream_name)?)
            .await?;
        let key = parse_explicit_hash_key(&req.new_starting_hash_key).map_err(|e| {
            ApiError::InvalidArgument(e.replace("ExplicitHashKey", "NewStartingHashKey"))
        })?;
        let plan =
            plan_split(&stream, &req.shard_to_split, key).map_err(|e| shard_error(&stream, e))?;
        self.check_shard_limit(plan.children.len() - plan.parents.len())?;
        self.reshard(&stream, plan).await
    }

    pub(crate) async fn merge_shards_impl(
        &self,
        req: pb::MergeShardsRequest,
    ) -> Result<(), ApiError> {
        let stream = self
            .stream_fresh(&stream_name_from(&req.stream_name)?)
            .await?;
        let plan = plan_merge(&stream, &req.shard_to_merge, &req.adjacent_shard_to_merge)
            .map_err(|e| shard_error(&stream, e))?;
        self.reshard(&stream, plan).await
    }

    pub(super) async fn update_shard_count_impl(
        &self,
        req: pb::UpdateShardCountRequest,
    ) -> Result<pb::UpdateShardCountResponse, ApiError> {
        if req.scaling_type != pb::ScalingType::UniformScaling as i32 {
            return Err(ApiError::InvalidArgument(
                "ScalingType must be UNIFORM_SCALING".into(),
            ));
        }
        let max = self.node.config.shards_per_stream_max;
        if req.target_shard_count > max {
            return Err(ApiError::LimitExceeded(format!(
                "TargetShardCount {} exceeds the limit of {max} shards per stream",
                req.target_shard_count
            )));
        }
        let stream = self
            .stream_fresh(&stream_name_from(&req.stream_name)?)
            .await?;
        let plan = plan_uniform_scaling(&stream, req.target_shard_count)
            .map_err(ApiError::InvalidArgument)?;
        let current = plan.parents.len() as u32;
        self.check_shard_limit((req.target_shard_count as usize).saturating_sub(current as usize))?;
        self.reshard(&stream, plan).await?;
        Ok(pb::UpdateShardCountResponse {
            stream_name: stream.name,
            current_shard_count: current,
            target_shard_count: req.target_shard_count,
        })
    }

    fn check_shard_limit(&self, added: usize) -> Result<(), ApiError> {
        let cluster_max = self.node.config.shards_per_cluster_max as usize;
        let existing = self.node.meta.read(|s| s.shard_count());
        if existing + added > cluster_max {
            return Err(ApiError::LimitExceeded(format!(
                "the cluster has {existing} open shards; {added} more would exceed its limit of {cluster_max}"
            )));
        }
        Ok(())
    }
}

/// A planning error: an unknown shard is RESOURCE_NOT_FOUND, a closed one RESOURCE_IN_USE
/// while the stream is resharding (not ACTIVE) and INVALID_ARGUMENT after, anything else
/// INVALID_ARGUMENT.
fn shard_error(stream: &StreamMeta, e: PlanError) -> ApiError {
    use crate::metadata::state::StreamStatus;
    match e {
        PlanError::ShardNotFound { .. } => ApiError::ResourceNotFound(e.to_string()),
        PlanError::ShardNotOpen { .. } if stream.status != StreamStatus::Active => {
            let state = format!("{:?}", stream.status).to_uppercase();
            ApiError::ResourceInUse(crate::messages::stream_not_active(&stream.name, &state))
        }
        PlanError::ShardNotOpen { .. } | PlanError::Invalid(_) => {
            ApiError::InvalidArgument(e.to_string())
        }
    }
}
