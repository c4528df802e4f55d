//! The metadata state machine: members, streams, shards and their placement. Pure: applying a
//! command is a function of the state and the command, so every replica computes the same state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::placement::NodeId;
use crate::shard::hashing::even_ranges;

/// Raft group id of the metadata group; shard groups get ids from 1 up.
pub const METADATA_GROUP_ID: u64 = 0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    pub zone: String,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Being decommissioned: takes no new replicas; its replicas move away, then it leaves.
    #[serde(default)]
    pub decommissioning: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    #[default]
    Creating,
    Active,
    Updating,
    Deleting,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// `shardId-000000000000`, Kinesis style.
    pub shard_id: String,
    pub group_id: u64,
    #[serde(with = "u128_decimal")]
    pub starting_hash_key: u128,
    #[serde(with = "u128_decimal")]
    pub ending_hash_key: u128,
    /// Replica nodes; the first was the preferred leader at creation.
    pub replicas: Vec<NodeId>,
    /// The shards this one was split or merged from (at most two for Split/Merge; possibly more
    /// for UpdateShardCount). A reader finishes every parent before reading this shard.
    #[serde(default)]
    pub parent_shard_ids: Vec<String>,
    #[serde(default)]
    pub status: ShardStatus,
    /// Sequence number of the parent's seal entry, once the shard is closed.
    #[serde(default)]
    pub ending_sequence_number: Option<String>,
    #[serde(default)]
    pub created_ms: i64,
    #[serde(default)]
    pub closed_ms: Option<i64>,
    /// A replica move in progress: (from, to). `to` hosts a learner until the move completes.
    #[serde(default)]
    pub moving: Option<(NodeId, NodeId)>,
}

/// Where a shard is in its life (DESIGN decision 7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardStatus {
    /// Takes writes.
    #[default]
    Open,
    /// Being split or merged: its leader is appending the seal; writes are refused after it.
    Closing,
    /// Sealed: readable up to its ending sequence number, never written again.
    Closed,
    /// A child whose parents are not yet all sealed; takes no writes yet.
    Pending,
}

impl ShardMeta {
    pub fn contains(&self, hash_key: u128) -> bool {
        hash_key >= self.starting_hash_key && hash_key <= self.ending_hash_key
    }

    /// Open or closing: the shard that currently owns its hash range for writers.
    pub fn is_current(&self) -> bool {
        matches!(self.status, ShardStatus::Open | ShardStatus::Closing)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub name: String,
    pub status: StreamStatus,
    pub creation_timestamp_ms: i64,
    pub retention_period_hours: u32,
    pub replication_factor: u32,
    pub shards: Vec<ShardMeta>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Largest record data this stream accepts (1-10 MiB; default 1 MiB).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Registered (enhanced fan-out) consumers by name.
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerMeta>,
    /// Kinesis capacity mode, recorded and reported (Millrace does not bill or autoscale).
    #[serde(default)]
    pub stream_mode: StreamMode,
    /// Kinesis enhanced monitoring: the shard-level metrics enabled (recorded and reported).
    #[serde(default)]
    pub shard_level_metrics: BTreeSet<String>,
    /// Kinesis server-side encryption: the KMS key id while enabled (recorded and reported;
    /// Millrace does not encrypt with it).
    #[serde(default)]
    pub encryption_key_id: Option<String>,
    /// Kinesis warm throughput (ON_DEMAND streams): the write MiB/s the stream is kept scaled
    /// for, one shard per MiB/s; 0 for none.
    #[serde(default)]
    pub warm_throughput_mibps: u32,
    /// Kinesis record distribution strategy (ON_DEMAND streams): AUTO spreads records evenly
    /// over the open shards, ignoring partition keys.
    #[serde(default)]
    pub record_distribution_auto: bool,
}

/// Kinesis capacity modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMode {
    #[default]
    Provisioned,
    OnDemand,
}

impl StreamMode {
    pub fn as_kinesis(self) -> &'static str {
        match self {
            StreamMode::Provisioned => "PROVISIONED",
            StreamMode::OnDemand => "ON_DEMAND",
        }
    }
}

/// The shard-level metrics enhanced monitoring knows (Kinesis names).
pub const SHARD_LEVEL_METRICS: [&str; 7] = [
    "IncomingBytes",
    "IncomingRecords",
    "OutgoingBytes",
    "OutgoingRecords",
    "WriteProvisionedThroughputExceeded",
    "ReadProvisionedThroughputExceeded",
    "IteratorAgeMilliseconds",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMeta {
    pub name: String,
    pub created_ms: i64,
}

fn default_max_record_bytes() -> usize {
    1024 * 1024
}

/// Registered consumers per stream (Kinesis quota).
pub const CONSUMERS_PER_STREAM_MAX: usize = 20;

impl StreamMeta {
    pub fn shard(&self, shard_id: &str) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.shard_id == shard_id)
    }

    /// The current (open or closing) shard owning `hash_key`.
    pub fn shard_for_hash(&self, hash_key: u128) -> Option<&ShardMeta> {
        self.shards
            .iter()
            .find(|s| s.is_current() && s.contains(hash_key))
    }

    /// Shards that name `shard_id` among their parents.
    pub fn children_of<'a>(
        &'a self,
        shard_id: &'a str,
    ) -> impl Iterator<Item = &'a ShardMeta> + 'a {
        self.shards
            .iter()
            .filter(move |s| s.parent_shard_ids.iter().any(|p| p == shard_id))
    }
}

/// Replicated metadata commands. Everything non-deterministic (time, placement) is decided by
/// the proposer and carried in the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    RegisterNode(Member),
    CreateStream {
        name: String,
        creation_timestamp_ms: i64,
        retention_period_hours: u32,
        replication_factor: u32,
        /// One replica list per shard, in shard order.
        placements: Vec<Vec<NodeId>>,
        #[serde(default = "default_max_record_bytes")]
        max_record_bytes: usize,
        #[serde(default)]
        stream_mode: StreamMode,
    },
    SetStreamStatus {
        name: String,
        status: StreamStatus,
    },
    /// DeleteStream: the stream goes DELETING; its replicas are then removed.
    DeleteStream {
        name: String,
    },
    /// The stream's record is dropped; nodes delete any replica of a group id below
    /// `next_group_id` that no stream owns any more.
    RemoveStream {
        name: String,
    },
    AddTags {
        name: String,
        tags: BTreeMap<String, String>,
    },
    /// SplitShard / MergeShards / UpdateShardCount: `parents` start closing and `children`
    /// (covering exactly the parents' hash range) are created pending.
    Reshard {
        name: String,
        parents: Vec<String>,
        /// (starting hash key, ending hash key) of each child, in hash order.
        #[serde(with = "ranges_decimal")]
        children: Vec<(u128, u128)>,
        placements: Vec<Vec<NodeId>>,
        timestamp_ms: i64,
    },
    /// The parents' seals have committed: parents close at the given seal log indexes and
    /// children whose parents are all closed open.
    CompleteReshard {
        name: String,
        /// (parent shard id, log index of its seal entry).
        seals: Vec<(String, u64)>,
        timestamp_ms: i64,
    },
    RegisterConsumer {
        name: String,
        consumer: String,
        created_ms: i64,
    },
    DeregisterConsumer {
        name: String,
        consumer: String,
    },
    /// Starts moving a shard replica from one node to another (add learner → catch up →
    /// promote → remove the old one; driven by the metadata leader).
    MoveReplica {
        name: String,
        shard_id: String,
        from: NodeId,
        to: NodeId,
    },
    /// The shard group's membership now has `to` instead of `from`.
    CompleteMove {
        name: String,
        shard_id: String,
        from: NodeId,
        to: NodeId,
    },
    /// Starts decommissioning a node.
    Decommission {
        node_id: NodeId,
    },
    /// A decommissioned node that holds no open replica leaves the cluster.
    RemoveMember {
        node_id: NodeId,
    },
    /// Sets the cluster secret if none is set yet (first writer wins).
    InitClusterSecret {
        secret_hex: super::access::Secret,
    },
    RemoveTags {
        name: String,
        keys: Vec<String>,
    },
    /// Increase (`increase = true`) or decrease the retention period.
    SetRetention {
        name: String,
        hours: u32,
        increase: bool,
    },
    /// UpdateStreamMode.
    SetStreamMode {
        name: String,
        mode: StreamMode,
    },
    /// UpdateStreamWarmThroughput's target (added with issue 17): checked against the stream's
    /// mode and the account's commitment as of `at_ms`; the shards are added by a reshard after.
    SetWarmThroughput {
        name: String,
        mibps: u32,
        at_ms: i64,
    },
    /// UpdateStreamRecordDistributionStrategy (added with issue 17): `auto` for AUTO, which
    /// only ON_DEMAND streams take; false for USER_PARTITION_KEY.
    SetRecordDistribution {
        name: String,
        auto: bool,
    },
    /// UpdateAccountSettings' minimum throughput billing commitment, at the proposer's time
    /// (added with issue 17).
    SetAccountCommitment {
        enable: bool,
        at_ms: i64,
    },
    /// UpdateMaxRecordSize (added with issue 17: a metadata log holding it is not readable by
    /// an older node).
    SetMaxRecordSize {
        name: String,
        max_record_bytes: usize,
    },
    /// Enable/DisableEnhancedMonitoring ("ALL" stands for every metric).
    SetShardLevelMetrics {
        name: String,
        metrics: Vec<String>,
        enable: bool,
    },
    /// Start (`Some(key id)`) or stop (`None`) stream encryption.
    SetEncryption {
        name: String,
        key_id: Option<String>,
    },
    /// A consumer-group worker's heartbeat: renew, take free or fair-share leases. `now_ms` is
    /// the metadata leader's clock when it proposed the command.
    GroupHeartbeat {
        stream: String,
        group: String,
        worker: String,
        now_ms: i64,
        lease_ms: i64,
    },
    /// A checkpoint (and, at a closed shard's end, `finished`), fenced by the lease epoch.
    GroupCheckpoint {
        stream: String,
        group: String,
        shard_id: String,
        worker: String,
        epoch: u64,
        sequence: Option<String>,
        finished: bool,
    },
    /// A worker leaving its group: its leases are free at once.
    GroupRelease {
        stream: String,
        group: String,
        worker: String,
    },
    /// Access keys, policies and resource policies.
    Access(super::access::AccessCommand),
}

pub use millrace_proto::limits::{RETENTION_HOURS_MAX, RETENTION_HOURS_MIN};

/// The outcome of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Ok,
    ResourceInUse(String),
    ResourceNotFound(String),
    InvalidArgument(String),
    LimitExceeded(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub members: BTreeMap<NodeId, Member>,
    pub streams: BTreeMap<String, StreamMeta>,
    /// Next shard Raft group id to hand out.
    pub next_group_id: u64,
    /// Key of the shard iterators' MAC (hex), created once by the first metadata leader.
    #[serde(default)]
    pub cluster_secret: Option<super::access::Secret>,
    /// Consumer groups by `stream/group` (leases and checkpoints).
    #[serde(default)]
    pub consumer_groups: BTreeMap<String, super::groups::ConsumerGroup>,
    /// Access keys, their policies and resource policies.
    #[serde(default)]
    pub access: super::access::AccessState,
    /// Account settings (DescribeAccountSettings), stored and reported.
    #[serde(default)]
    pub account: super::account::AccountSettings,
}

impl MetaState {
    pub fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        match command {
            MetaCommand::RegisterNode(member) => {
                let decommissioning = self
                    .members
                    .get(&member.node_id)
                    .is_some_and(|m| m.decommissioning);
                let mut m = member.clone();
                m.decommissioning = decommissioning;
                self.members.insert(member.node_id, m);
                MetaResponse::Ok
            }
            MetaCommand::Decommission { node_id } => match self.members.get_mut(node_id) {
                Some(m) => {
                    m.decommissioning = true;
                    MetaResponse::Ok
                }
                None => MetaResponse::ResourceNotFound(format!("node {node_id} is not a member")),
            },
            MetaCommand::RemoveMember { node_id } => {
                let holds = self
                    .shards_on(*node_id)
                    .any(|(_, sh)| sh.status != ShardStatus::Closed);
                match self.members.get(node_id) {
                    Some(m) if m.decommissioning && !holds => {
                        self.members.remove(node_id);
                        MetaResponse::Ok
                    }
                    Some(_) => {
                        MetaResponse::ResourceInUse(format!("node {node_id} still holds replicas"))
                    }
                    None => {
                        MetaResponse::ResourceNotFound(format!("node {node_id} is not a member"))
                    }
                }
            }
            MetaCommand::CreateStream {
                name,
                creation_timestamp_ms,
                retention_period_hours,
                replication_factor,
                placements,
                max_record_bytes,
                stream_mode,
            } => {
                if self.streams.contains_key(name) {
                    return MetaResponse::ResourceInUse(crate::messages::stream_exists(name));
                }
                if placements.is_empty() {
                    return MetaResponse::InvalidArgument(
                        "a stream needs at least one shard".into(),
                    );
                }
                if let Some(bad) = placements
                    .iter()
                    .flatten()
                    .find(|n| !self.members.contains_key(n))
                {
                    return MetaResponse::InvalidArgument(format!(
                        "placement names node {bad}, which is not a member"
                    ));
                }
                let first_group = self.next_group_id.max(METADATA_GROUP_ID + 1);
                let ranges = even_ranges(placements.len() as u32);
                let shards = ranges
                    .into_iter()
                    .zip(placements)
                    .enumerate()
                    .map(|(i, ((start, end), replicas))| ShardMeta {
                        shard_id: shard_id(i as u64),
                        group_id: first_group + i as u64,
                        starting_hash_key: start,
                        ending_hash_key: end,
                        replicas: replicas.clone(),
                        parent_shard_ids: Vec::new(),
                        status: ShardStatus::Open,
                        ending_sequence_number: None,
                        created_ms: *creation_timestamp_ms,
                        closed_ms: None,
                        moving: None,
                    })
                    .collect();
                self.next_group_id = first_group + placements.len() as u64;
                self.streams.insert(
                    name.clone(),
                    StreamMeta {
                        name: name.clone(),
                        status: StreamStatus::Creating,
                        creation_timestamp_ms: *creation_timestamp_ms,
                        retention_period_hours: *retention_period_hours,
                        replication_factor: *replication_factor,
                        shards,
                        tags: BTreeMap::new(),
                        consumers: BTreeMap::new(),
                        max_record_bytes: *max_record_bytes,
                        stream_mode: *stream_mode,
                        shard_level_metrics: BTreeSet::new(),
                        encryption_key_id: None,
                        warm_throughput_mibps: 0,
                        record_distribution_auto: false,
                    },
                );
                MetaResponse::Ok
            }
            MetaCommand::SetStreamStatus { name, status } => match self.streams.get_mut(name) {
                Some(s) if s.status == StreamStatus::Deleting => {
                    MetaResponse::ResourceInUse(format!("Stream {name} is being deleted"))
                }
                Some(s) => {
                    s.status = *status;
                    MetaResponse::Ok
                }
                None => MetaResponse::ResourceNotFound(crate::messages::stream_not_found(name)),
            },
            MetaCommand::DeleteStream { name } => match self.streams.get_mut(name) {
                Some(s) => {
                    s.status = StreamStatus::Deleting;
                    MetaResponse::Ok
                }
                None => MetaResponse::ResourceNotFound(crate::messages::stream_not_found(name)),
            },
            MetaCommand::RemoveStream { name } => match self.streams.get(name) {
                Some(s) if s.status == StreamStatus::Deleting => {
                    self.streams.remove(name);
                    self.consumer_groups.retain(|_, g| g.stream != *name);
                    self.access.forget_resource(name, None);
                    MetaResponse::Ok
                }
                Some(_) => {
                    MetaResponse::ResourceInUse(format!("Stream {name} is not being deleted"))
                }
                None => MetaResponse::ResourceNotFound(crate::messages::stream_not_found(name)),
            },
            MetaCommand::AddTags { name, tags } => match self.live_stream(name) {
                Ok(s) => match super::tags::merged(&s.tags, tags) {
                    Ok(merged) => {
                        s.tags = merged;
                        MetaResponse::Ok
                    }
                    Err(super::tags::TagError::TooMany(_)) => MetaResponse::LimitExceeded(
                        crate::messages::too_many_tags(name, super::tags::TAGS_PER_STREAM_MAX),
                    ),
                    Err(super::tags::TagError::Invalid(e)) => MetaResponse::InvalidArgument(e),
                },
                Err(r) => r,
            },
            MetaCommand::Reshard {
                name,
                parents,
                children,
                placements,
                timestamp_ms,
            } => self.apply_reshard(name, parents, children, placements, *timestamp_ms),
            MetaCommand::CompleteReshard {
                name,
                seals,
                timestamp_ms,
            } => self.apply_complete_reshard(name, seals, *timestamp_ms),
            MetaCommand::RegisterConsumer {
                name,
                consumer,
                created_ms,
            } => match self.live_stream(name) {
                Ok(s) if s.consumers.contains_key(consumer) => MetaResponse::ResourceInUse(
                    format!("Consumer {consumer} is already registered on {name}"),
                ),
                Ok(s) if s.consumers.len() >= CONSUMERS_PER_STREAM_MAX => {
                    MetaResponse::LimitExceeded(format!(
                    "Stream {name} already has {CONSUMERS_PER_STREAM_MAX} consumers, the maximum"
                ))
                }
                Ok(s) => {
                    s.consumers.insert(
                        consumer.clone(),
                        ConsumerMeta {
                            name: consumer.clone(),
                            created_ms: *created_ms,
                        },
                    );
                    MetaResponse::Ok
                }
                Err(r) => r,
            },
            MetaCommand::DeregisterConsumer { name, consumer } => match self.live_stream(name) {
                Ok(s) => match s.consumers.remove(consumer) {
                    Some(_) => {
                        self.access.forget_resource(name, Some(consumer));
                        MetaResponse::Ok
                    }
                    None => MetaResponse::ResourceNotFound(format!(
                        "Consumer {consumer} not found on {name}"
                    )),
                },
                Err(r) => r,
            },
            MetaCommand::MoveReplica {
                name,
                shard_id,
                from,
                to,
            } => {
                let known = self.members.contains_key(to);
                let s = match self.live_stream(name) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let Some(sh) = s.shards.iter_mut().find(|sh| &sh.shard_id == shard_id) else {
                    return MetaResponse::ResourceNotFound(format!(
                        "Shard {shard_id} not found in {name}"
                    ));
                };
                if !known {
                    return MetaResponse::InvalidArgument(format!("node {to} is not a member"));
                }
                if sh.moving.is_some() {
                    return MetaResponse::ResourceInUse(format!(
                        "a replica of {shard_id} is already moving"
                    ));
                }
                if !sh.replicas.contains(from) || sh.replicas.contains(to) {
                    return MetaResponse::InvalidArgument(format!(
                        "{shard_id} must have a replica on node {from} and none on node {to}"
                    ));
                }
                sh.moving = Some((*from, *to));
                MetaResponse::Ok
            }
            MetaCommand::CompleteMove {
                name,
                shard_id,
                from,
                to,
            } => {
                let s = match self.live_stream(name) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                match s.shards.iter_mut().find(|sh| &sh.shard_id == shard_id) {
                    Some(sh) if sh.moving == Some((*from, *to)) => {
                        sh.replicas.retain(|r| r != from);
                        sh.replicas.push(*to);
                        sh.moving = None;
                        MetaResponse::Ok
                    }
                    Some(_) => MetaResponse::ResourceInUse(format!(
                        "no such move of {shard_id} in progress"
                    )),
                    None => MetaResponse::ResourceNotFound(format!(
                        "Shard {shard_id} not found in {name}"
                    )),
                }
            }
            MetaCommand::InitClusterSecret { secret_hex } => {
                if self.cluster_secret.is_none() {
                    self.cluster_secret = Some(secret_hex.clone());
                }
                MetaResponse::Ok
            }
            MetaCommand::RemoveTags { name, keys } => match self.live_stream(name) {
                Ok(s) => {
                    for k in keys {
                        s.tags.remove(k);
                    }
                    MetaResponse::Ok
                }
                Err(r) => r,
            },
            MetaCommand::SetWarmThroughput { name, mibps, at_ms } => {
                let committed = self.account.view(*at_ms).status != "DISABLED";
                match self.live_stream(name) {
                    Ok(s) if s.stream_mode != StreamMode::OnDemand => MetaResponse::InvalidArgument(
                        format!("Stream {name} is PROVISIONED: warm throughput is for ON_DEMAND streams"),
                    ),
                    Ok(_) if !committed => MetaResponse::InvalidArgument(
                        "Warm throughput needs the account's MinimumThroughputBillingCommitment ENABLED (UpdateAccountSettings)".into(),
                    ),
                    Ok(s) => {
                        s.warm_throughput_mibps = *mibps;
                        MetaResponse::Ok
                    }
                    Err(r) => r,
                }
            }
            MetaCommand::SetRecordDistribution { name, auto } => match self.live_stream(name) {
                Ok(s) if *auto && s.stream_mode != StreamMode::OnDemand => {
                    MetaResponse::InvalidArgument(format!(
                        "Stream {name} is PROVISIONED: the AUTO record distribution strategy is for ON_DEMAND streams"
                    ))
                }
                Ok(s) => {
                    s.record_distribution_auto = *auto;
                    MetaResponse::Ok
                }
                Err(r) => r,
            },
            MetaCommand::SetAccountCommitment { enable, at_ms } => {
                self.account.set_commitment(*enable, *at_ms);
                MetaResponse::Ok
            }
            MetaCommand::SetMaxRecordSize {
                name,
                max_record_bytes,
            } => match self.live_stream(name) {
                Ok(s) if s.status != StreamStatus::Active => {
                    let state = format!("{:?}", s.status).to_uppercase();
                    MetaResponse::ResourceInUse(crate::messages::stream_not_active(name, &state))
                }
                Ok(s) => {
                    s.max_record_bytes = *max_record_bytes;
                    MetaResponse::Ok
                }
                Err(r) => r,
            },
            MetaCommand::SetStreamMode { name, mode } => match self.live_stream(name) {
                Ok(s) if s.status != StreamStatus::Active => MetaResponse::ResourceInUse(format!(
                    "Stream {name} is not ACTIVE; its mode can change once it is"
                )),
                Ok(s) => {
                    s.stream_mode = *mode;
                    MetaResponse::Ok
                }
                Err(r) => r,
            },
            MetaCommand::SetShardLevelMetrics {
                name,
                metrics,
                enable,
            } => {
                let s = match self.live_stream(name) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                if let Some(bad) = metrics
                    .iter()
                    .find(|m| *m != "ALL" && !SHARD_LEVEL_METRICS.contains(&m.as_str()))
                {
                    return MetaResponse::InvalidArgument(format!(
                        "ShardLevelMetrics {bad:?} is not one of ALL, {}",
                        SHARD_LEVEL_METRICS.join(", ")
                    ));
                }
                let named: BTreeSet<String> = if metrics.iter().any(|m| m == "ALL") {
                    SHARD_LEVEL_METRICS.iter().map(|m| m.to_string()).collect()
                } else {
                    metrics.iter().cloned().collect()
                };
                if *enable {
                    s.shard_level_metrics.extend(named);
                } else {
                    s.shard_level_metrics.retain(|m| !named.contains(m));
                }
                MetaResponse::Ok
            }
            MetaCommand::GroupHeartbeat {
                stream,
                group,
                worker,
                now_ms,
                lease_ms,
            } => {
                let s = match self.live_stream(stream) {
                    Ok(s) => s.clone(),
                    Err(r) => return r,
                };
                let key = super::groups::group_key(stream, group);
                let g = self.consumer_groups.entry(key).or_insert_with(|| {
                    super::groups::ConsumerGroup {
                        stream: stream.clone(),
                        name: group.clone(),
                        ..Default::default()
                    }
                });
                g.heartbeat(&s, worker, *now_ms, *lease_ms);
                MetaResponse::Ok
            }
            MetaCommand::GroupCheckpoint {
                stream,
                group,
                shard_id,
                worker,
                epoch,
                sequence,
                finished,
            } => match self
                .consumer_groups
                .get_mut(&super::groups::group_key(stream, group))
            {
                Some(g) => g.checkpoint(shard_id, worker, *epoch, sequence.clone(), *finished),
                None => MetaResponse::ResourceNotFound(format!(
                    "consumer group {group} of {stream} not found"
                )),
            },
            MetaCommand::GroupRelease {
                stream,
                group,
                worker,
            } => {
                if let Some(g) = self
                    .consumer_groups
                    .get_mut(&super::groups::group_key(stream, group))
                {
                    g.release(worker);
                }
                MetaResponse::Ok
            }
            MetaCommand::Access(cmd) => {
                let streams = &self.streams;
                self.access.apply(cmd, |stream, consumer| {
                    streams.get(stream).is_some_and(|s| {
                        s.status != StreamStatus::Deleting
                            && consumer.is_none_or(|c| s.consumers.contains_key(c))
                    })
                })
            }
            MetaCommand::SetEncryption { name, key_id } => match self.live_stream(name) {
                Ok(s) => {
                    s.encryption_key_id = key_id.clone();
                    MetaResponse::Ok
                }
                Err(r) => r,
            },
            MetaCommand::SetRetention {
                name,
                hours,
                increase,
            } => {
                let s = match self.live_stream(name) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                use crate::messages as m;
                let current = s.retention_period_hours;
                let refused = if *hours < RETENTION_HOURS_MIN {
                    Some(m::retention_too_short(*hours, RETENTION_HOURS_MIN))
                } else if *hours > RETENTION_HOURS_MAX {
                    Some(m::retention_too_long(*hours, RETENTION_HOURS_MAX))
                } else if *increase && *hours < current {
                    Some(m::retention_not_shorter(name, *hours, current))
                } else if !*increase && *hours > current {
                    Some(m::retention_not_longer(name, *hours, current))
                } else {
                    None
                };
                if let Some(message) = refused {
                    return MetaResponse::InvalidArgument(message);
                }
                s.retention_period_hours = *hours;
                MetaResponse::Ok
            }
        }
    }

    /// A stream that exists and is not being deleted.
    pub(super) fn live_stream(&mut self, name: &str) -> Result<&mut StreamMeta, MetaResponse> {
        match self.streams.get_mut(name) {
            Some(s) if s.status == StreamStatus::Deleting => Err(MetaResponse::ResourceInUse(
                format!("Stream {name} is being deleted"),
            )),
            Some(s) => Ok(s),
            None => Err(MetaResponse::ResourceNotFound(
                crate::messages::stream_not_found(name),
            )),
        }
    }

    /// Shards in the cluster that are not closed (for the per-cluster limit).
    pub fn shard_count(&self) -> usize {
        self.streams
            .values()
            .flat_map(|s| &s.shards)
            .filter(|s| s.status != ShardStatus::Closed)
            .count()
    }

    /// Every shard replica placed on `node_id`: (stream, shard).
    pub fn shards_on(&self, node_id: NodeId) -> impl Iterator<Item = (&StreamMeta, &ShardMeta)> {
        self.streams.values().flat_map(move |s| {
            s.shards
                .iter()
                .filter(move |sh| {
                    sh.replicas.contains(&node_id) || sh.moving.is_some_and(|(_, to)| to == node_id)
                })
                .map(move |sh| (s, sh))
        })
    }

    pub fn group(&self, group_id: u64) -> Option<(&StreamMeta, &ShardMeta)> {
        self.streams
            .values()
            .flat_map(|s| s.shards.iter().map(move |sh| (s, sh)))
            .find(|(_, sh)| sh.group_id == group_id)
    }
}

/// Kinesis-style shard id.
pub fn shard_id(n: u64) -> String {
    format!("shardId-{n:012}")
}

/// Serialises hash ranges as decimal strings.
mod ranges_decimal {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[(u128, u128)], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u128, u128)>, D::Error> {
        Vec::<(String, String)>::deserialize(d)?
            .into_iter()
            .map(|(a, b)| {
                Ok((
                    a.parse().map_err(serde::de::Error::custom)?,
                    b.parse().map_err(serde::de::Error::custom)?,
                ))
            })
            .collect()
    }
}

/// Serialises u128 as a decimal string (JSON and MessagePack have no 128-bit integers).
mod u128_decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, zone: &str) -> MetaCommand {
        MetaCommand::RegisterNode(Member {
            node_id: id,
            zone: zone.into(),
            grpc_addr: format!("127.0.0.1:{}", 7100 + id),
            http_addr: format!("127.0.0.1:{}", 4566 + id),
            decommissioning: false,
        })
    }

    #[test]
    fn create_stream_assigns_groups_and_ranges() {
        let mut st = MetaState::default();
        for (id, z) in [(1, "a"), (2, "b"), (3, "c")] {
            assert_eq!(st.apply(&member(id, z)), MetaResponse::Ok);
        }
        let create = |name: &str| MetaCommand::CreateStream {
            name: name.into(),
            creation_timestamp_ms: 1,
            retention_period_hours: 24,
            replication_factor: 3,
            placements: vec![vec![1, 2, 3]; 4],
            max_record_bytes: 1 << 20,
            stream_mode: StreamMode::Provisioned,
        };
        assert_eq!(st.apply(&create("s")), MetaResponse::Ok);
        assert!(matches!(
            st.apply(&create("s")),
            MetaResponse::ResourceInUse(_)
        ));
        assert_eq!(st.apply(&create("t")), MetaResponse::Ok);
        let s = &st.streams["s"];
        assert_eq!(s.shards.len(), 4);
        assert_eq!(s.shards[0].group_id, 1);
        assert_eq!(st.streams["t"].shards[0].group_id, 5);
        assert_eq!(s.shards[3].ending_hash_key, u128::MAX);
        assert_eq!(s.shards[0].shard_id, "shardId-000000000000");
        assert_eq!(st.shards_on(2).count(), 8);
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<MetaState>(&json).unwrap(), st);
    }

    #[test]
    fn delete_tags_and_retention() {
        let mut st = MetaState::default();
        st.apply(&member(1, "a"));
        let create = MetaCommand::CreateStream {
            name: "s".into(),
            creation_timestamp_ms: 1,
            retention_period_hours: 24,
            replication_factor: 1,
            placements: vec![vec![1]; 2],
            max_record_bytes: 1 << 20,
            stream_mode: StreamMode::OnDemand,
        };
        assert_eq!(st.apply(&create), MetaResponse::Ok);
        let tags: BTreeMap<String, String> = [("team".into(), "x".into())].into();
        let add = MetaCommand::AddTags {
            name: "s".into(),
            tags,
        };
        assert_eq!(st.apply(&add), MetaResponse::Ok);
        assert_eq!(st.streams["s"].tags["team"], "x");
        let rm = MetaCommand::RemoveTags {
            name: "s".into(),
            keys: vec!["team".into(), "none".into()],
        };
        assert_eq!(st.apply(&rm), MetaResponse::Ok);
        assert!(st.streams["s"].tags.is_empty());
        let ret = |hours, increase| MetaCommand::SetRetention {
            name: "s".into(),
            hours,
            increase,
        };
        assert_eq!(st.apply(&ret(48, true)), MetaResponse::Ok);
        assert!(matches!(
            st.apply(&ret(24, true)),
            MetaResponse::InvalidArgument(_)
        ));
        assert!(matches!(
            st.apply(&ret(72, false)),
            MetaResponse::InvalidArgument(_)
        ));
        assert!(matches!(
            st.apply(&ret(9000, true)),
            MetaResponse::InvalidArgument(_)
        ));
        assert_eq!(st.apply(&ret(24, false)), MetaResponse::Ok);
        // Removing is only allowed once deleting; a deleted name can be reused with new groups.
        let remove = MetaCommand::RemoveStream { name: "s".into() };
        assert!(matches!(st.apply(&remove), MetaResponse::ResourceInUse(_)));
        assert_eq!(
            st.apply(&MetaCommand::DeleteStream { name: "s".into() }),
            MetaResponse::Ok
        );
        assert!(matches!(st.apply(&add), MetaResponse::ResourceInUse(_)));
        assert_eq!(st.apply(&remove), MetaResponse::Ok);
        assert!(st.streams.is_empty());
        assert_eq!(st.apply(&create), MetaResponse::Ok);
        assert_eq!(
            st.streams["s"].shards[0].group_id, 3,
            "group ids are never reused"
        );
    }

    #[test]
    fn stream_mode_monitoring_and_encryption_are_recorded() {
        let mut st = MetaState::default();
        st.apply(&MetaCommand::RegisterNode(Member {
            node_id: 1,
            zone: "a".into(),
            grpc_addr: "x".into(),
            http_addr: "y".into(),
            decommissioning: false,
        }));
        st.apply(&MetaCommand::CreateStream {
            name: "s".into(),
            creation_timestamp_ms: 1,
            retention_period_hours: 24,
            replication_factor: 1,
            placements: vec![vec![1]],
            max_record_bytes: 1 << 20,
            stream_mode: StreamMode::OnDemand,
        });
        assert_eq!(st.streams["s"].stream_mode, StreamMode::OnDemand);
        let mode = MetaCommand::SetStreamMode {
            name: "s".into(),
            mode: StreamMode::Provisioned,
        };
        // Not while CREATING.
        assert!(matches!(st.apply(&mode), MetaResponse::ResourceInUse(_)));
        st.apply(&MetaCommand::SetStreamStatus {
            name: "s".into(),
            status: StreamStatus::Active,
        });
        assert_eq!(st.apply(&mode), MetaResponse::Ok);
        assert_eq!(st.streams["s"].stream_mode, StreamMode::Provisioned);
        let metrics = |metrics: &[&str], enable| MetaCommand::SetShardLevelMetrics {
            name: "s".into(),
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            enable,
        };
        assert_eq!(st.apply(&metrics(&["ALL"], true)), MetaResponse::Ok);
        assert_eq!(
            st.streams["s"].shard_level_metrics.len(),
            SHARD_LEVEL_METRICS.len()
        );
        assert_eq!(
            st.apply(&metrics(&["IncomingBytes"], false)),
            MetaResponse::Ok
        );
        assert!(!st.streams["s"]
            .shard_level_metrics
            .contains("IncomingBytes"));
        assert!(matches!(
            st.apply(&metrics(&["Bogus"], true)),
            MetaResponse::InvalidArgument(_)
        ));
        let enc = MetaCommand::SetEncryption {
            name: "s".into(),
            key_id: Some("alias/aws/kinesis".into()),
        };
        assert_eq!(st.apply(&enc), MetaResponse::Ok);
        assert_eq!(
            st.streams["s"].encryption_key_id.as_deref(),
            Some("alias/aws/kinesis")
        );
        // Older state (without these fields) still loads.
        let mut json = serde_json::to_value(&st.streams["s"]).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("stream_mode");
        obj.remove("shard_level_metrics");
        obj.remove("encryption_key_id");
        let old: StreamMeta = serde_json::from_value(json).unwrap();
        assert_eq!(old.stream_mode, StreamMode::Provisioned);
        assert!(old.shard_level_metrics.is_empty() && old.encryption_key_id.is_none());
    }

    #[test]
    fn unknown_placement_nodes_are_rejected() {
        let mut st = MetaState::default();
        let r = st.apply(&MetaCommand::CreateStream {
            name: "s".into(),
            creation_timestamp_ms: 1,
            retention_period_hours: 24,
            replication_factor: 1,
            placements: vec![vec![9]],
            max_record_bytes: 1 << 20,
            stream_mode: StreamMode::Provisioned,
        });
        assert!(matches!(r, MetaResponse::InvalidArgument(_)));
        assert!(st.streams.is_empty());
    }
}
