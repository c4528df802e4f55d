//! The Kinesis actions: each reads its input (validated as Kinesis validates it), calls the
//! native handler, and shapes the answer as Kinesis does.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use millrace_proto::v1 as pb;
use serde_json::{Map, Value};

use super::input::{is_stream_arn, Input, STREAM_ARN_PATTERN};
use super::wire::{Encoding, Out};
use super::{eventstream, unknown_operation, KinesisApi, KinesisError, Reply};
use crate::api::consumers::parse_consumer_arn;
use crate::api::error::ApiError;
use crate::api::grpc::{meta_result, stream_name_from, MillraceService};
use crate::metadata::state::{
    MetaCommand, ShardStatus, StreamMeta, StreamMode, StreamStatus, SHARD_LEVEL_METRICS,
};
use crate::metadata::tags::TAGS_PER_STREAM_MAX;
use millrace_security::resource_policy::RESOURCE_POLICY_CHARS_MAX;

type Result<T> = std::result::Result<T, KinesisError>;

const ITERATOR_TYPES: [&str; 5] = [
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "TRIM_HORIZON",
    "LATEST",
    "AT_TIMESTAMP",
];
const SHARD_FILTER_TYPES: [&str; 6] = [
    "AFTER_SHARD_ID",
    "AT_TRIM_HORIZON",
    "FROM_TRIM_HORIZON",
    "AT_LATEST",
    "AT_TIMESTAMP",
    "FROM_TIMESTAMP",
];
const STREAM_MODES: [&str; 2] = ["PROVISIONED", "ON_DEMAND"];
/// Shards of an ON_DEMAND stream created without a ShardCount (Kinesis starts at 4).
/// An ON_DEMAND stream created without a ShardCount starts with the scaler's floor.
const ON_DEMAND_INITIAL_SHARDS: u32 = crate::metadata::autoscale::ON_DEMAND_SHARDS_MIN;
use millrace_proto::limits::{
    LIST_RESULTS_MAX, MAX_RECORD_SIZE_KIB_MAX, MAX_RECORD_SIZE_KIB_MIN, NEXT_TOKEN_CHARS_MAX,
    PUT_RECORDS_RECORDS_MAX, RECORD_BYTES_MAX,
};

fn hash_key_pattern(s: &str) -> bool {
    s == "0"
        || (!s.is_empty()
            && s.len() <= 39
            && !s.starts_with('0')
            && s.bytes().all(|b| b.is_ascii_digit()))
}
const HASH_KEY_PATTERN: &str = "0|([1-9]\\d{0,38})";

fn sequence_pattern(s: &str) -> bool {
    s == "0"
        || (!s.is_empty()
            && s.len() <= 129
            && !s.starts_with('0')
            && s.bytes().all(|b| b.is_ascii_digit()))
}
const SEQUENCE_PATTERN: &str = "0|([1-9]\\d{0,128})";

/// Runs one action.
pub(super) async fn dispatch(
    api: &KinesisApi,
    action: &str,
    body: &Map<String, Value>,
    encoding: Encoding,
    principal: Option<&str>,
) -> Result<Reply> {
    let svc = &api.svc;
    let mut i = Input::new(body, encoding == Encoding::Cbor);
    let out = match action {
        "CreateStream" => create_stream(svc, i).await?,
        "DeleteStream" => delete_stream(svc, i).await?,
        "DescribeStream" => describe_stream(svc, i).await?,
        "DescribeStreamSummary" => describe_stream_summary(svc, i).await?,
        "ListStreams" => list_streams(svc, i, principal).await?,
        "ListShards" => list_shards(svc, i).await?,
        "PutRecord" => put_record(svc, i).await?,
        "PutRecords" => put_records(svc, i).await?,
        "GetShardIterator" => get_shard_iterator(svc, i).await?,
        "GetRecords" => get_records(svc, i).await?,
        "SplitShard" => split_shard(svc, i).await?,
        "MergeShards" => merge_shards(svc, i).await?,
        "UpdateShardCount" => update_shard_count(svc, i).await?,
        "IncreaseStreamRetentionPeriod" => retention(svc, i, true).await?,
        "DecreaseStreamRetentionPeriod" => retention(svc, i, false).await?,
        "AddTagsToStream" => {
            let stream = i.stream();
            let tags = i.string_map("Tags", true, (1, 10));
            i.finish()?;
            add_tags(svc, required_stream(stream)?, tags.unwrap_or_default()).await?
        }
        "TagResource" => {
            let arn = resource_arn(&mut i);
            let tags = i.string_map("Tags", true, (1, TAGS_PER_STREAM_MAX));
            i.finish()?;
            add_tags(svc, stream_of_resource(arn)?, tags.unwrap_or_default()).await?
        }
        "RemoveTagsFromStream" => {
            let stream = i.stream();
            let keys = i.strings("TagKeys", true, (1, TAGS_PER_STREAM_MAX));
            i.finish()?;
            remove_tags(svc, required_stream(stream)?, keys.unwrap_or_default()).await?
        }
        "UntagResource" => {
            let arn = resource_arn(&mut i);
            let keys = i.strings("TagKeys", true, (1, TAGS_PER_STREAM_MAX));
            i.finish()?;
            remove_tags(svc, stream_of_resource(arn)?, keys.unwrap_or_default()).await?
        }
        "ListTagsForStream" => list_tags_for_stream(svc, i).await?,
        "ListTagsForResource" => {
            let arn = resource_arn(&mut i);
            i.finish()?;
            let s = svc.stream_fresh(&stream_of_resource(arn)?).await?;
            Out::map(vec![("Tags", tags_out(s.tags.into_iter()))])
        }
        "DescribeLimits" => {
            i.finish()?;
            describe_limits(svc).await?
        }
        "RegisterStreamConsumer" => register_consumer(svc, i).await?,
        "DeregisterStreamConsumer" => deregister_consumer(svc, i).await?,
        "ListStreamConsumers" => list_consumers(svc, i).await?,
        "DescribeStreamConsumer" => describe_consumer(svc, i).await?,
        "SubscribeToShard" => return subscribe_to_shard(svc, i, encoding).await,
        "UpdateStreamMode" => update_stream_mode(svc, i).await?,
        "UpdateMaxRecordSize" => update_max_record_size(svc, i).await?,
        "UpdateStreamWarmThroughput" => update_warm_throughput(svc, i).await?,
        "UpdateStreamRecordDistributionStrategy" => update_record_distribution(svc, i).await?,
        "DescribeAccountSettings" => {
            i.finish()?;
            svc.node.sync_meta().await?;
            account_settings_out(svc)
        }
        "UpdateAccountSettings" => update_account_settings(svc, i).await?,
        "EnableEnhancedMonitoring" => monitoring(svc, i, true).await?,
        "DisableEnhancedMonitoring" => monitoring(svc, i, false).await?,
        "StartStreamEncryption" => encryption(svc, i, true).await?,
        "StopStreamEncryption" => encryption(svc, i, false).await?,
        "PutResourcePolicy" => {
            let arn = resource_arn(&mut i);
            let policy = i.string("Policy", true, (1, RESOURCE_POLICY_CHARS_MAX), None);
            i.finish()?;
            svc.put_resource_policy_impl(arn.unwrap_or_default(), policy.unwrap_or_default())
                .await?;
            no_output()
        }
        "GetResourcePolicy" => {
            let arn = resource_arn(&mut i);
            i.finish()?;
            let policy = svc
                .get_resource_policy_impl(&arn.unwrap_or_default())
                .await?;
            Out::map(vec![("Policy", Out::str(policy))])
        }
        "DeleteResourcePolicy" => {
            let arn = resource_arn(&mut i);
            i.finish()?;
            svc.delete_resource_policy_impl(arn.unwrap_or_default())
                .await?;
            no_output()
        }
        other => return Err(unknown_operation(&format!("Kinesis_20131202.{other}"))),
    };
    Ok(Reply::Body(out))
}

fn required_stream(stream: Option<String>) -> Result<String> {
    stream.ok_or_else(|| {
        KinesisError::client(
            "InvalidArgumentException",
            "Either StreamName or StreamARN must be provided",
        )
    })
}

fn resource_arn(i: &mut Input<'_>) -> Option<String> {
    i.string("ResourceARN", true, (1, 2048), None)
}

/// The stream a ResourceARN names (tags are kept on streams only).
fn stream_of_resource(arn: Option<String>) -> Result<String> {
    let arn = arn.unwrap_or_default();
    if arn.contains("/consumer/") {
        return Err(KinesisError::client(
            "InvalidArgumentException",
            "ResourceARN names a consumer; Millrace keeps tags on streams only",
        ));
    }
    if !is_stream_arn(&arn) {
        return Err(KinesisError::client(
            "InvalidArgumentException",
            format!("ResourceARN {arn:?} must match {STREAM_ARN_PATTERN}"),
        ));
    }
    Ok(stream_name_from(&arn)?)
}

fn no_output() -> Out {
    Out::map(Vec::new())
}

fn status_name(s: StreamStatus) -> &'static str {
    match s {
        StreamStatus::Creating => "CREATING",
        StreamStatus::Active => "ACTIVE",
        StreamStatus::Updating => "UPDATING",
        StreamStatus::Deleting => "DELETING",
    }
}

fn mode_out(mode: StreamMode) -> Out {
    Out::map(vec![("StreamMode", Out::str(mode.as_kinesis()))])
}

fn mode_from(name: &str) -> StreamMode {
    if name == "ON_DEMAND" {
        StreamMode::OnDemand
    } else {
        StreamMode::Provisioned
    }
}

fn hash_range_out(r: Option<pb::HashKeyRange>) -> Out {
    let r = r.unwrap_or_default();
    Out::map(vec![
        ("StartingHashKey", Out::str(r.starting_hash_key)),
        ("EndingHashKey", Out::str(r.ending_hash_key)),
    ])
}

fn shard_out(s: pb::Shard) -> Out {
    let seq = s.sequence_number_range.unwrap_or_default();
    Out::map(vec![
        ("ShardId", Out::str(s.shard_id)),
        ("ParentShardId", Out::opt_str(&s.parent_shard_id)),
        (
            "AdjacentParentShardId",
            Out::opt_str(&s.adjacent_parent_shard_id),
        ),
        ("HashKeyRange", hash_range_out(s.hash_key_range)),
        (
            "SequenceNumberRange",
            Out::map(vec![
                (
                    "StartingSequenceNumber",
                    Out::str(seq.starting_sequence_number),
                ),
                (
                    "EndingSequenceNumber",
                    Out::opt_str(&seq.ending_sequence_number),
                ),
            ]),
        ),
    ])
}

fn child_shards_out(children: Vec<pb::ChildShard>) -> Out {
    Out::List(
        children
            .into_iter()
            .map(|c| {
                Out::map(vec![
                    ("ShardId", Out::str(c.shard_id)),
                    ("ParentShards", Out::strs(c.parent_shards)),
                    ("HashKeyRange", hash_range_out(c.hash_key_range)),
                ])
            })
            .collect(),
    )
}

fn records_out(records: Vec<pb::Record>) -> Out {
    Out::List(
        records
            .into_iter()
            .map(|r| {
                Out::map(vec![
                    ("SequenceNumber", Out::str(r.sequence_number)),
                    (
                        "ApproximateArrivalTimestamp",
                        Out::Timestamp(r.approximate_arrival_timestamp_ms),
                    ),
                    ("Data", Out::Blob(r.data)),
                    ("PartitionKey", Out::str(r.partition_key)),
                ])
            })
            .collect(),
    )
}

fn tags_out(tags: impl Iterator<Item = (String, String)>) -> Out {
    Out::List(
        tags.map(|(k, v)| Out::map(vec![("Key", Out::Str(k)), ("Value", Out::Str(v))]))
            .collect(),
    )
}

fn monitoring_out(s: &StreamMeta) -> Out {
    Out::List(vec![Out::map(vec![(
        "ShardLevelMetrics",
        Out::strs(s.shard_level_metrics.iter().cloned()),
    )])])
}

fn encryption_type(s: &StreamMeta) -> Out {
    Out::str(if s.encryption_key_id.is_some() {
        "KMS"
    } else {
        "NONE"
    })
}

fn key_id(s: &StreamMeta) -> Out {
    s.encryption_key_id.as_deref().map_or(Out::Null, Out::str)
}

async fn create_stream(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let name = i.name("StreamName", true, 128);
    let count = i.int("ShardCount", false, (1, 100_000));
    let mode = i.nested("StreamModeDetails", false, |m| {
        m.enumeration("StreamMode", true, &STREAM_MODES)
    });
    let tags = i.string_map("Tags", false, (0, TAGS_PER_STREAM_MAX));
    let max_kib = i.int(
        "MaxRecordSizeInKiB",
        false,
        (
            MAX_RECORD_SIZE_KIB_MIN.into(),
            MAX_RECORD_SIZE_KIB_MAX.into(),
        ),
    );
    let warm = i.int("WarmThroughputMiBps", false, (0, i32::MAX.into()));
    i.finish()?;
    let name = name.unwrap_or_default();
    let mode = mode_from(mode.flatten().as_deref().unwrap_or("PROVISIONED"));
    let warm = warm.unwrap_or(0) as u32;
    if warm > 0 {
        // Checked before the stream exists, so that a refusal creates nothing.
        svc.node.sync_meta().await?;
        let committed = svc
            .node
            .meta
            .read(|s| s.account.view(crate::server::now_ms()).status != "DISABLED");
        let refusal = match (mode, committed) {
            (StreamMode::Provisioned, _) => Some("WarmThroughputMiBps is for ON_DEMAND streams"),
            (_, false) => Some("WarmThroughputMiBps needs the account's MinimumThroughputBillingCommitment ENABLED (UpdateAccountSettings)"),
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(KinesisError::client("InvalidArgumentException", why));
        }
    }
    let shard_count = match (count, mode) {
        (Some(n), _) => n as u32,
        (None, StreamMode::OnDemand) => {
            ON_DEMAND_INITIAL_SHARDS.max(crate::metadata::reshard::shards_for_mibps(warm))
        }
        (None, StreamMode::Provisioned) => {
            return Err(KinesisError::client(
                "InvalidArgumentException",
                "ShardCount is required for a PROVISIONED stream",
            ))
        }
    };
    let req = pb::CreateStreamRequest {
        stream_name: name.clone(),
        shard_count,
        replication_factor: 0,
        max_record_size_kib: max_kib.unwrap_or(0) as u32,
    };
    svc.create_stream_impl(req, mode).await?;
    if warm > 0 {
        let cmd = MetaCommand::SetWarmThroughput {
            name: name.clone(),
            mibps: warm,
            at_ms: crate::server::now_ms(),
        };
        meta_result(svc.node.propose_meta(&cmd).await?)?;
    }
    if let Some(tags) = tags.filter(|t| !t.is_empty()) {
        add_tags(svc, name, tags).await?;
    }
    Ok(no_output())
}

async fn delete_stream(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let enforce = i.boolean("EnforceConsumerDeletion").unwrap_or(false);
    i.finish()?;
    let s = svc.stream_fresh(&required_stream(stream)?).await?;
    if !enforce && !s.consumers.is_empty() {
        return Err(KinesisError::client(
            "ResourceInUseException",
            crate::messages::stream_has_consumers(&s.name),
        ));
    }
    let cmd = MetaCommand::DeleteStream { name: s.name };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    Ok(no_output())
}

async fn describe_stream(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let limit = i.int("Limit", false, (1, LIST_RESULTS_MAX)).unwrap_or(100) as usize;
    let after = i.name("ExclusiveStartShardId", false, 128);
    i.finish()?;
    let s = svc.stream_fresh(&required_stream(stream)?).await?;
    let mut shards = s
        .shards
        .iter()
        .filter(|sh| sh.status != ShardStatus::Pending)
        .filter(|sh| after.as_ref().is_none_or(|a| sh.shard_id > *a));
    let page: Vec<Out> = shards
        .by_ref()
        .take(limit)
        .map(|sh| shard_out(svc.shard_proto(sh)))
        .collect();
    let more = shards.next().is_some();
    Ok(Out::map(vec![(
        "StreamDescription",
        Out::map(vec![
            ("StreamName", Out::str(&s.name)),
            (
                "StreamARN",
                Out::str(svc.node.config.kinesis.stream_arn(&s.name)),
            ),
            ("StreamStatus", Out::str(status_name(s.status))),
            ("StreamModeDetails", mode_out(s.stream_mode)),
            ("Shards", Out::List(page)),
            ("HasMoreShards", Out::Bool(more)),
            (
                "RetentionPeriodHours",
                Out::Int(s.retention_period_hours.into()),
            ),
            (
                "StreamCreationTimestamp",
                Out::Timestamp(s.creation_timestamp_ms),
            ),
            ("EnhancedMonitoring", monitoring_out(&s)),
            ("EncryptionType", encryption_type(&s)),
            ("KeyId", key_id(&s)),
        ]),
    )]))
}

async fn describe_stream_summary(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    i.finish()?;
    let s = svc.stream_fresh(&required_stream(stream)?).await?;
    let open = s.shards.iter().filter(|sh| sh.is_current()).count();
    Ok(Out::map(vec![(
        "StreamDescriptionSummary",
        Out::map(vec![
            ("StreamName", Out::str(&s.name)),
            (
                "StreamARN",
                Out::str(svc.node.config.kinesis.stream_arn(&s.name)),
            ),
            ("StreamStatus", Out::str(status_name(s.status))),
            ("StreamModeDetails", mode_out(s.stream_mode)),
            (
                "RetentionPeriodHours",
                Out::Int(s.retention_period_hours.into()),
            ),
            (
                "StreamCreationTimestamp",
                Out::Timestamp(s.creation_timestamp_ms),
            ),
            ("EnhancedMonitoring", monitoring_out(&s)),
            ("EncryptionType", encryption_type(&s)),
            ("KeyId", key_id(&s)),
            ("OpenShardCount", Out::Int(open as i64)),
            ("ConsumerCount", Out::Int(s.consumers.len() as i64)),
            (
                "MaxRecordSizeInKiB",
                Out::Int((s.max_record_bytes / 1024) as i64),
            ),
            ("WarmThroughput", warm_throughput_out(&s, open)),
            (
                "RecordDistributionStrategy",
                match s.record_distribution_auto {
                    true => Out::str("AUTO"),
                    false => Out::str("USER_PARTITION_KEY"),
                },
            ),
        ]),
    )]))
}

fn invalid_token(what: &str) -> KinesisError {
    KinesisError::client(
        "InvalidArgumentException",
        format!("{what} is not a valid token"),
    )
}

/// The name a listing's NextToken continues after (the token is that name, base64url).
fn name_after(token: &str) -> Result<String> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(|| invalid_token("NextToken"))
}

async fn list_streams(
    svc: &MillraceService,
    mut i: Input<'_>,
    principal: Option<&str>,
) -> Result<Out> {
    let limit = i.int("Limit", false, (1, LIST_RESULTS_MAX)).unwrap_or(100) as usize;
    let start = i.name("ExclusiveStartStreamName", false, 128);
    let token = i.string("NextToken", false, (1, NEXT_TOKEN_CHARS_MAX), None);
    i.finish()?;
    // The NextToken is the last stream name listed, base64url.
    let after = match token {
        Some(t) => Some(name_after(&t)?),
        None => start,
    };
    svc.node.sync_meta().await?;
    let after: Vec<StreamMeta> = svc.node.meta.read(|st| {
        st.streams
            .values()
            .filter(|s| after.as_ref().is_none_or(|a| s.name > *a))
            .cloned()
            .collect()
    });
    // Only the streams the caller may read.
    let streams: Vec<StreamMeta> = after
        .into_iter()
        .filter(|s| svc.node.may_read(principal, &s.name))
        .take(limit + 1)
        .collect();
    let more = streams.len() > limit;
    let page = &streams[..streams.len().min(limit)];
    let k = &svc.node.config.kinesis;
    Ok(Out::map(vec![
        (
            "StreamNames",
            Out::strs(page.iter().map(|s| s.name.clone())),
        ),
        ("HasMoreStreams", Out::Bool(more)),
        (
            "NextToken",
            match (more, page.last()) {
                (true, Some(last)) => Out::str(URL_SAFE_NO_PAD.encode(&last.name)),
                _ => Out::Null,
            },
        ),
        (
            "StreamSummaries",
            Out::List(
                page.iter()
                    .map(|s| {
                        Out::map(vec![
                            ("StreamName", Out::str(&s.name)),
                            ("StreamARN", Out::str(k.stream_arn(&s.name))),
                            ("StreamStatus", Out::str(status_name(s.status))),
                            ("StreamModeDetails", mode_out(s.stream_mode)),
                            (
                                "StreamCreationTimestamp",
                                Out::Timestamp(s.creation_timestamp_ms),
                            ),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]))
}

async fn list_shards(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let (name, arn) = i.stream_members();
    let token = i.string("NextToken", false, (1, NEXT_TOKEN_CHARS_MAX), None);
    let after = i.name("ExclusiveStartShardId", false, 128);
    let max = i.int("MaxResults", false, (1, LIST_RESULTS_MAX));
    let created = i.timestamp("StreamCreationTimestamp", false);
    let filter = i.nested("ShardFilter", false, |f| {
        let kind = f.enumeration("Type", true, &SHARD_FILTER_TYPES);
        let shard_id = f.name("ShardId", false, 128);
        let ts = f.timestamp("Timestamp", false);
        (kind, shard_id, ts)
    });
    i.finish()?;
    // A NextToken carries the whole listing: Kinesis refuses it with anything that would
    // start another, naming the first parameter given with it.
    let with_token = [
        ("StreamName", name.is_some()),
        ("StreamARN", arn.is_some()),
        ("ExclusiveStartShardId", after.is_some()),
        ("ShardFilter", filter.is_some()),
        ("StreamCreationTimestamp", created.is_some()),
    ];
    if let (Some(_), Some((other, _))) = (&token, with_token.iter().find(|(_, given)| *given)) {
        return Err(KinesisError::client(
            "InvalidArgumentException",
            crate::messages::not_together("NextToken", other),
        ));
    }
    let stream = arn.or(name);
    if token.is_none() && stream.is_none() {
        return Err(KinesisError::client(
            "InvalidArgumentException",
            "Either NextToken or StreamName should be provided.",
        ));
    }
    let shard_filter = filter.map(|(kind, shard_id, ts)| {
        use pb::ShardFilterType as F;
        let t = match kind.as_deref() {
            Some("AFTER_SHARD_ID") => F::AfterShardId,
            Some("AT_TRIM_HORIZON") => F::AtTrimHorizon,
            Some("FROM_TRIM_HORIZON") => F::FromTrimHorizon,
            Some("AT_LATEST") => F::AtLatest,
            Some("AT_TIMESTAMP") => F::AtTimestampFilter,
            Some("FROM_TIMESTAMP") => F::FromTimestamp,
            _ => F::Unspecified,
        };
        pb::ShardFilter {
            r#type: t as i32,
            shard_id: shard_id.unwrap_or_default(),
            timestamp_ms: ts.unwrap_or(0),
        }
    });
    let resp = svc
        .list_shards_impl(pb::ListShardsRequest {
            stream_name: stream.unwrap_or_default(),
            next_token: token.unwrap_or_default(),
            exclusive_start_shard_id: after.unwrap_or_default(),
            max_results: max.unwrap_or(0) as u32,
            shard_filter,
        })
        .await?;
    Ok(Out::map(vec![
        (
            "Shards",
            Out::List(resp.shards.into_iter().map(shard_out).collect()),
        ),
        ("NextToken", Out::opt_str(&resp.next_token)),
    ]))
}

fn put_entry(r: &mut Input<'_>) -> Option<pb::PutRecordsRequestEntry> {
    let data = r.blob("Data", true, RECORD_BYTES_MAX);
    let key = r.string("PartitionKey", true, (1, 256), None);
    let explicit = r.string(
        "ExplicitHashKey",
        false,
        (0, 39),
        Some((HASH_KEY_PATTERN, hash_key_pattern)),
    );
    Some(pb::PutRecordsRequestEntry {
        partition_key: key?,
        data: data?.into(),
        explicit_hash_key: explicit.unwrap_or_default(),
    })
}

/// Records whose data is over the stream's record size: Kinesis answers them with the
/// ValidationException of the model's length constraint (the stream's MaxRecordSizeInKiB),
/// naming each record's member (`path_of` its index).
fn check_data_sizes(
    s: &StreamMeta,
    records: &[pb::PutRecordsRequestEntry],
    path_of: impl Fn(usize) -> String,
) -> Result<()> {
    let violations: Vec<String> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.data.len() > s.max_record_bytes)
        .map(|(i, _)| super::input::too_long(&path_of(i), s.max_record_bytes))
        .collect();
    match violations.is_empty() {
        true => Ok(()),
        false => Err(super::input::validation_error(&violations)),
    }
}

/// A failed record's error as Kinesis names it.
fn record_error(r: &pb::PutRecordsResultEntry) -> KinesisError {
    ApiError::from_symbol(&r.error_code, r.error_message.clone()).into()
}

/// A PutRecords result entry's `ErrorCode`: Kinesis names only `ProvisionedThroughputExceededException`
/// and `InternalFailure` there (and the KMS failures, which Millrace has no cause for), so any
/// other reason (e.g. the stream deleted while a reshard held the record back) is an
/// `InternalFailure`, its message saying which.
fn per_record_code(type_name: &str) -> &'static str {
    match type_name {
        "ProvisionedThroughputExceededException" => "ProvisionedThroughputExceededException",
        _ => "InternalFailure",
    }
}

async fn put_record(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let entry = put_entry(&mut i);
    let _ordering = i.string(
        "SequenceNumberForOrdering",
        false,
        (0, 129),
        Some((SEQUENCE_PATTERN, sequence_pattern)),
    );
    i.finish()?;
    let (Some(stream), Some(entry)) = (stream, entry) else {
        return Err(required_stream(None).unwrap_err());
    };
    let s = svc.stream_for_write(&stream).await?;
    check_data_sizes(&s, std::slice::from_ref(&entry), |_| "data".into())?;
    let resp = svc
        .put_records_impl(pb::PutRecordsRequest {
            stream_name: stream.clone(),
            records: vec![entry],
            ..Default::default()
        })
        .await?;
    let r = resp.records.into_iter().next().unwrap_or_default();
    if !r.error_code.is_empty() {
        return Err(record_error(&r));
    }
    Ok(Out::map(vec![
        ("ShardId", Out::str(r.shard_id)),
        ("SequenceNumber", Out::str(r.sequence_number)),
        ("EncryptionType", encryption_type(&s)),
    ]))
}

async fn put_records(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let entries = match i.list("Records", true, (1, PUT_RECORDS_RECORDS_MAX)) {
        Some(items) => i.each("Records", items, put_entry),
        None => Vec::new(),
    };
    i.finish()?;
    let stream = required_stream(stream)?;
    let records: Vec<pb::PutRecordsRequestEntry> = entries.into_iter().flatten().collect();
    let s = svc.stream_for_write(&stream).await?;
    check_data_sizes(&s, &records, |i| format!("records.{}.member.data", i + 1))?;
    let resp = svc
        .put_records_impl(pb::PutRecordsRequest {
            stream_name: stream.clone(),
            records,
            ..Default::default()
        })
        .await?;
    let results = resp
        .records
        .into_iter()
        .map(|r| {
            if r.error_code.is_empty() {
                Out::map(vec![
                    ("SequenceNumber", Out::str(r.sequence_number)),
                    ("ShardId", Out::str(r.shard_id)),
                ])
            } else {
                let e = record_error(&r);
                Out::map(vec![
                    ("ErrorCode", Out::str(per_record_code(&e.type_name))),
                    ("ErrorMessage", Out::str(e.message)),
                ])
            }
        })
        .collect();
    Ok(Out::map(vec![
        (
            "FailedRecordCount",
            Out::Int(resp.failed_record_count.into()),
        ),
        ("Records", Out::List(results)),
        ("EncryptionType", encryption_type(&s)),
    ]))
}

fn iterator_type(name: Option<&str>) -> pb::ShardIteratorType {
    use pb::ShardIteratorType as T;
    match name {
        Some("AT_SEQUENCE_NUMBER") => T::AtSequenceNumber,
        Some("AFTER_SEQUENCE_NUMBER") => T::AfterSequenceNumber,
        Some("TRIM_HORIZON") => T::TrimHorizon,
        Some("LATEST") => T::Latest,
        Some("AT_TIMESTAMP") => T::AtTimestamp,
        _ => T::Unspecified,
    }
}

/// Checks that a position's type has what it needs (Kinesis: InvalidArgumentException).
/// The starting position's members that the iterator type needs, and no others (Kinesis's
/// words: `kind_name` is the type as the request spelled it).
fn check_position(
    kind: pb::ShardIteratorType,
    kind_name: &str,
    seq: &Option<String>,
    ts: Option<i64>,
) -> Result<()> {
    use pb::ShardIteratorType as T;
    let invalid = |m: String| Err(KinesisError::client("InvalidArgumentException", m));
    let either = "Must either specify (1) AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER and StartingSequenceNumber or (2) TRIM_HORIZON or LATEST and no StartingSequenceNumber.";
    match kind {
        T::AtSequenceNumber | T::AfterSequenceNumber if seq.is_none() => invalid(format!(
            "{either} Request specified {kind_name} and no StartingSequenceNumber."
        )),
        T::TrimHorizon | T::Latest if seq.is_some() => invalid(format!(
            "{either} Request specified {kind_name} and also a StartingSequenceNumber."
        )),
        T::AtTimestamp if ts.is_none() => invalid(
            "Must specify timestampInMillis parameter for iterator of type AT_TIMESTAMP. Current request has no timestamp parameter.".into(),
        ),
        _ => Ok(()),
    }
}

async fn get_shard_iterator(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let shard_id = i.name("ShardId", true, 128);
    let kind = i.enumeration("ShardIteratorType", true, &ITERATOR_TYPES);
    let seq = i.string(
        "StartingSequenceNumber",
        false,
        (1, 129),
        Some((SEQUENCE_PATTERN, sequence_pattern)),
    );
    let ts = i.timestamp("Timestamp", false);
    i.finish()?;
    let kind_name = kind.unwrap_or_default();
    let kind = iterator_type(Some(&kind_name));
    check_position(kind, &kind_name, &seq, ts)?;
    let resp = svc
        .get_shard_iterator_impl(pb::GetShardIteratorRequest {
            stream_name: required_stream(stream)?,
            shard_id: shard_id.unwrap_or_default(),
            shard_iterator_type: kind as i32,
            starting_sequence_number: seq.unwrap_or_default(),
            timestamp_ms: ts.unwrap_or(0),
        })
        .await?;
    Ok(Out::map(vec![(
        "ShardIterator",
        Out::str(resp.shard_iterator),
    )]))
}

async fn get_records(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let iterator = i.string("ShardIterator", true, (1, 4096), None);
    let limit = i.int("Limit", false, (1, LIST_RESULTS_MAX));
    let _arn = i.string(
        "StreamARN",
        false,
        (1, 2048),
        Some((STREAM_ARN_PATTERN, is_stream_arn)),
    );
    i.finish()?;
    let resp = svc
        .get_records_impl(pb::GetRecordsRequest {
            shard_iterator: iterator.unwrap_or_default(),
            limit: limit.unwrap_or(0) as u32,
        })
        .await?;
    let at_end = resp.next_shard_iterator.is_empty();
    Ok(Out::map(vec![
        ("Records", records_out(resp.records)),
        ("NextShardIterator", Out::opt_str(&resp.next_shard_iterator)),
        ("MillisBehindLatest", Out::Int(resp.millis_behind_latest)),
        (
            "ChildShards",
            if at_end {
                child_shards_out(resp.child_shards)
            } else {
                Out::Null
            },
        ),
    ]))
}

async fn split_shard(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let shard = i.name("ShardToSplit", true, 128);
    let key = i.string(
        "NewStartingHashKey",
        true,
        (1, 39),
        Some((HASH_KEY_PATTERN, hash_key_pattern)),
    );
    i.finish()?;
    svc.split_shard_impl(pb::SplitShardRequest {
        stream_name: required_stream(stream)?,
        shard_to_split: shard.unwrap_or_default(),
        new_starting_hash_key: key.unwrap_or_default(),
    })
    .await?;
    Ok(no_output())
}

async fn merge_shards(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let shard = i.name("ShardToMerge", true, 128);
    let adjacent = i.name("AdjacentShardToMerge", true, 128);
    i.finish()?;
    svc.merge_shards_impl(pb::MergeShardsRequest {
        stream_name: required_stream(stream)?,
        shard_to_merge: shard.unwrap_or_default(),
        adjacent_shard_to_merge: adjacent.unwrap_or_default(),
    })
    .await?;
    Ok(no_output())
}

async fn update_shard_count(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let target = i.int("TargetShardCount", true, (1, 100_000));
    let _scaling = i.enumeration("ScalingType", true, &["UNIFORM_SCALING"]);
    i.finish()?;
    let resp = svc
        .update_shard_count_impl(pb::UpdateShardCountRequest {
            stream_name: required_stream(stream)?,
            target_shard_count: target.unwrap_or(0) as u32,
            scaling_type: pb::ScalingType::UniformScaling as i32,
        })
        .await?;
    Ok(Out::map(vec![
        ("StreamName", Out::str(&resp.stream_name)),
        (
            "CurrentShardCount",
            Out::Int(resp.current_shard_count.into()),
        ),
        ("TargetShardCount", Out::Int(resp.target_shard_count.into())),
        (
            "StreamARN",
            Out::str(svc.node.config.kinesis.stream_arn(&resp.stream_name)),
        ),
    ]))
}

async fn retention(svc: &MillraceService, mut i: Input<'_>, increase: bool) -> Result<Out> {
    let stream = i.stream();
    // The model puts no bounds on it: the stream's checks answer out-of-range periods with
    // Kinesis's InvalidArgumentException texts.
    let hours = i.int(
        "RetentionPeriodHours",
        true,
        (i32::MIN.into(), i32::MAX.into()),
    );
    i.finish()?;
    let req = pb::UpdateRetentionPeriodRequest {
        stream_name: required_stream(stream)?,
        retention_period_hours: hours.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
    };
    svc.set_retention(req, increase).await?;
    Ok(no_output())
}

async fn add_tags(
    svc: &MillraceService,
    stream: String,
    tags: Vec<(String, String)>,
) -> Result<Out> {
    let cmd = MetaCommand::AddTags {
        name: stream_name_from(&stream)?,
        tags: tags.into_iter().collect(),
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    Ok(no_output())
}

async fn remove_tags(svc: &MillraceService, stream: String, keys: Vec<String>) -> Result<Out> {
    let cmd = MetaCommand::RemoveTags {
        name: stream_name_from(&stream)?,
        keys,
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    Ok(no_output())
}

async fn list_tags_for_stream(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let start = i.string("ExclusiveStartTagKey", false, (1, 128), None);
    let limit = i.int("Limit", false, (1, 50)).unwrap_or(50) as usize;
    i.finish()?;
    let s = svc.stream_fresh(&required_stream(stream)?).await?;
    let mut tags = s
        .tags
        .into_iter()
        .filter(|(k, _)| start.as_ref().is_none_or(|st| k > st));
    let page: Vec<(String, String)> = tags.by_ref().take(limit).collect();
    Ok(Out::map(vec![
        ("Tags", tags_out(page.into_iter())),
        ("HasMoreTags", Out::Bool(tags.next().is_some())),
    ]))
}

/// The account settings, as DescribeAccountSettings and UpdateAccountSettings answer.
fn account_settings_out(svc: &MillraceService) -> Out {
    let now = crate::server::now_ms();
    let v = svc.node.meta.read(|s| s.account.view(now));
    let at = |ms: Option<i64>| ms.map_or(Out::Null, Out::Timestamp);
    Out::map(vec![(
        "MinimumThroughputBillingCommitment",
        Out::map(vec![
            ("Status", Out::str(v.status)),
            ("StartedAt", at(v.started_ms)),
            ("EndedAt", at(v.ended_ms)),
            ("EarliestAllowedEndAt", at(v.earliest_allowed_end_ms)),
        ]),
    )])
}

/// UpdateAccountSettings: stored and reported (Millrace bills nothing; see
/// `metadata/account.rs`).
async fn update_account_settings(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let status = i.nested("MinimumThroughputBillingCommitment", true, |c| {
        c.enumeration("Status", true, &["ENABLED", "DISABLED"])
    });
    i.finish()?;
    let cmd = MetaCommand::SetAccountCommitment {
        enable: status.flatten().as_deref() == Some("ENABLED"),
        at_ms: crate::server::now_ms(),
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    svc.node.sync_meta().await?;
    Ok(account_settings_out(svc))
}

async fn describe_limits(svc: &MillraceService) -> Result<Out> {
    svc.node.sync_meta().await?;
    let (open, on_demand) = svc.node.meta.read(|st| {
        let open = st
            .streams
            .values()
            .flat_map(|s| &s.shards)
            .filter(|sh| sh.is_current())
            .count();
        let on_demand = st
            .streams
            .values()
            .filter(|s| s.stream_mode == StreamMode::OnDemand)
            .count();
        (open, on_demand)
    });
    let shard_limit = i64::from(svc.node.config.shards_per_cluster_max);
    Ok(Out::map(vec![
        ("ShardLimit", Out::Int(shard_limit)),
        ("OpenShardCount", Out::Int(open as i64)),
        ("OnDemandStreamCount", Out::Int(on_demand as i64)),
        // On-demand streams are not limited separately; every stream needs a shard.
        ("OnDemandStreamCountLimit", Out::Int(shard_limit)),
    ]))
}

fn consumer_out(c: pb::Consumer, with_stream: bool) -> Out {
    Out::map(vec![
        ("ConsumerName", Out::str(c.consumer_name)),
        ("ConsumerARN", Out::str(c.consumer_arn)),
        ("ConsumerStatus", Out::str(c.consumer_status)),
        (
            "ConsumerCreationTimestamp",
            Out::Timestamp(c.consumer_creation_timestamp_ms),
        ),
        (
            "StreamARN",
            if with_stream {
                Out::str(c.stream_arn)
            } else {
                Out::Null
            },
        ),
    ])
}

fn consumer_arn_member(i: &mut Input<'_>, required: bool) -> Option<String> {
    i.string("ConsumerARN", required, (1, 2048), None)
}

fn stream_arn_member(i: &mut Input<'_>, required: bool) -> Option<String> {
    i.string(
        "StreamARN",
        required,
        (1, 2048),
        Some((STREAM_ARN_PATTERN, is_stream_arn)),
    )
}

async fn register_consumer(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = stream_arn_member(&mut i, true);
    let name = i.name("ConsumerName", true, 128);
    i.finish()?;
    let c = svc
        .register_consumer_impl(pb::RegisterStreamConsumerRequest {
            stream_arn: stream.unwrap_or_default(),
            consumer_name: name.unwrap_or_default(),
        })
        .await?;
    Ok(Out::map(vec![("Consumer", consumer_out(c, false))]))
}

async fn deregister_consumer(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = stream_arn_member(&mut i, false);
    let name = i.name("ConsumerName", false, 128);
    let arn = consumer_arn_member(&mut i, false);
    i.finish()?;
    svc.deregister_consumer_impl(pb::DeregisterStreamConsumerRequest {
        stream_arn: stream.unwrap_or_default(),
        consumer_name: name.unwrap_or_default(),
        consumer_arn: arn.unwrap_or_default(),
    })
    .await?;
    Ok(no_output())
}

async fn describe_consumer(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = stream_arn_member(&mut i, false);
    let name = i.name("ConsumerName", false, 128);
    let arn = consumer_arn_member(&mut i, false);
    i.finish()?;
    let c = svc
        .describe_consumer_impl(pb::DescribeStreamConsumerRequest {
            stream_arn: stream.unwrap_or_default(),
            consumer_name: name.unwrap_or_default(),
            consumer_arn: arn.unwrap_or_default(),
        })
        .await?;
    Ok(Out::map(vec![(
        "ConsumerDescription",
        consumer_out(c, true),
    )]))
}

async fn list_consumers(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = stream_arn_member(&mut i, true);
    let token = i.string("NextToken", false, (1, NEXT_TOKEN_CHARS_MAX), None);
    let max = i
        .int("MaxResults", false, (1, LIST_RESULTS_MAX))
        .unwrap_or(100) as usize;
    let _created = i.timestamp("StreamCreationTimestamp", false);
    i.finish()?;
    let after = token.as_deref().map(name_after).transpose()?;
    let all = svc
        .list_consumers_impl(pb::ListStreamConsumersRequest {
            stream_arn: stream.unwrap_or_default(),
        })
        .await?;
    let mut rest = all
        .into_iter()
        .filter(|c| after.as_ref().is_none_or(|a| c.consumer_name > *a));
    let page: Vec<pb::Consumer> = rest.by_ref().take(max).collect();
    let next = match (rest.next(), page.last()) {
        (Some(_), Some(last)) => Out::str(URL_SAFE_NO_PAD.encode(&last.consumer_name)),
        _ => Out::Null,
    };
    Ok(Out::map(vec![
        (
            "Consumers",
            Out::List(page.into_iter().map(|c| consumer_out(c, false)).collect()),
        ),
        ("NextToken", next),
    ]))
}

async fn update_stream_mode(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = stream_arn_member(&mut i, true);
    let mode = i.nested("StreamModeDetails", true, |m| {
        m.enumeration("StreamMode", true, &STREAM_MODES)
    });
    i.finish()?;
    let cmd = MetaCommand::SetStreamMode {
        name: stream_name_from(&stream.unwrap_or_default())?,
        mode: mode_from(mode.flatten().as_deref().unwrap_or("PROVISIONED")),
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    Ok(no_output())
}

/// UpdateStreamRecordDistributionStrategy: AUTO (ON_DEMAND streams) or USER_PARTITION_KEY.
async fn update_record_distribution(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let _stream_id = i.string("StreamId", false, (1, 24), None);
    let strategy = i.enumeration(
        "RecordDistributionStrategy",
        true,
        &["AUTO", "USER_PARTITION_KEY"],
    );
    i.finish()?;
    let cmd = MetaCommand::SetRecordDistribution {
        name: stream_name_from(&required_stream(stream)?)?,
        auto: strategy.as_deref() == Some("AUTO"),
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    // In effect at once for the writes this node takes next (others catch up within ms).
    svc.node.sync_meta().await?;
    Ok(no_output())
}

/// UpdateStreamWarmThroughput: scales an ON_DEMAND stream to one shard per MiB/s asked for.
async fn update_warm_throughput(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let _stream_id = i.string("StreamId", false, (1, 24), None);
    let mibps = i.int("WarmThroughputMiBps", true, (0, i32::MAX.into()));
    i.finish()?;
    let name = stream_name_from(&required_stream(stream)?)?;
    let mibps = mibps.unwrap_or(0) as u32;
    let current = svc.update_warm_throughput_impl(&name, mibps).await?;
    Ok(Out::map(vec![
        (
            "StreamARN",
            Out::str(svc.node.config.kinesis.stream_arn(&name)),
        ),
        ("StreamName", Out::str(&name)),
        (
            "WarmThroughput",
            Out::map(vec![
                ("TargetMiBps", Out::Int(mibps.into())),
                ("CurrentMiBps", Out::Int(current.into())),
            ]),
        ),
    ]))
}

/// An ON_DEMAND stream's warm throughput for DescribeStreamSummary: the target asked for (if
/// any) and what its open shards take now (1 MiB/s each).
fn warm_throughput_out(s: &StreamMeta, open: usize) -> Out {
    if s.stream_mode != StreamMode::OnDemand {
        return Out::Null;
    }
    let target = match s.warm_throughput_mibps {
        0 => Out::Null,
        n => Out::Int(n.into()),
    };
    Out::map(vec![
        ("TargetMiBps", target),
        ("CurrentMiBps", Out::Int(open as i64)),
    ])
}

/// UpdateMaxRecordSize: 1024–10240 KiB (the model's range: ValidationException outside it).
/// Records already written keep their size; the new limit applies to writes from now on.
async fn update_max_record_size(svc: &MillraceService, mut i: Input<'_>) -> Result<Out> {
    let stream = i.stream();
    let _stream_id = i.string("StreamId", false, (1, 24), None);
    let kib = i.int(
        "MaxRecordSizeInKiB",
        true,
        (
            MAX_RECORD_SIZE_KIB_MIN.into(),
            MAX_RECORD_SIZE_KIB_MAX.into(),
        ),
    );
    i.finish()?;
    let cmd = MetaCommand::SetMaxRecordSize {
        name: stream_name_from(&required_stream(stream)?)?,
        max_record_bytes: kib.unwrap_or(1024) as usize * 1024,
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    // In effect at once for the writes this node takes next (others catch up within ms).
    svc.node.sync_meta().await?;
    Ok(no_output())
}

async fn monitoring(svc: &MillraceService, mut i: Input<'_>, enable: bool) -> Result<Out> {
    let stream = i.stream();
    let metrics = i.strings("ShardLevelMetrics", true, (1, 7));
    i.finish()?;
    let metrics = metrics.unwrap_or_default();
    if let Some(bad) = metrics
        .iter()
        .find(|m| *m != "ALL" && !SHARD_LEVEL_METRICS.contains(&m.as_str()))
    {
        return Err(KinesisError::client(
            "ValidationException",
            format!(
                "1 validation error detected: Value '[{bad}]' at 'shardLevelMetrics' failed to satisfy constraint: Member must satisfy constraint: [Member must satisfy enum value set: [ALL, {}]]",
                SHARD_LEVEL_METRICS.join(", ")
            ),
        ));
    }
    let name = stream_name_from(&required_stream(stream)?)?;
    let current = svc.stream_fresh(&name).await?.shard_level_metrics;
    let cmd = MetaCommand::SetShardLevelMetrics {
        name: name.clone(),
        metrics,
        enable,
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    let desired = svc.stream_fresh(&name).await?.shard_level_metrics;
    Ok(Out::map(vec![
        ("StreamName", Out::str(&name)),
        ("CurrentShardLevelMetrics", Out::strs(current)),
        ("DesiredShardLevelMetrics", Out::strs(desired)),
        (
            "StreamARN",
            Out::str(svc.node.config.kinesis.stream_arn(&name)),
        ),
    ]))
}

async fn encryption(svc: &MillraceService, mut i: Input<'_>, start: bool) -> Result<Out> {
    let stream = i.stream();
    let kind = i.enumeration("EncryptionType", true, &["NONE", "KMS"]);
    let key = i.string("KeyId", true, (1, 2048), None);
    i.finish()?;
    if kind.as_deref() != Some("KMS") {
        return Err(KinesisError::client(
            "InvalidArgumentException",
            "EncryptionType must be KMS",
        ));
    }
    let cmd = MetaCommand::SetEncryption {
        name: stream_name_from(&required_stream(stream)?)?,
        key_id: if start { key } else { None },
    };
    meta_result(svc.node.propose_meta(&cmd).await?)?;
    Ok(no_output())
}

fn event_out(e: pb::SubscribeToShardEvent, at_end: bool) -> Out {
    Out::map(vec![
        ("Records", records_out(e.records)),
        (
            "ContinuationSequenceNumber",
            Out::str(e.continuation_sequence_number),
        ),
        ("MillisBehindLatest", Out::Int(e.millis_behind_latest)),
        (
            "ChildShards",
            if at_end {
                child_shards_out(e.child_shards)
            } else {
                Out::Null
            },
        ),
    ])
}

/// An error after a subscription started: an exception message with the Kinesis name of the
/// error (from the status's error symbol) and `{"message": …}` in the stream's encoding.
fn exception_frame(status: &tonic::Status, encoding: Encoding, content_type: &str) -> Vec<u8> {
    let symbol = status
        .metadata()
        .get(millrace_proto::ERROR_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("INTERNAL_FAILURE");
    let e: KinesisError = ApiError::from_symbol(symbol, status.message().to_string()).into();
    let body = Out::map(vec![("message", Out::str(e.message))]);
    eventstream::exception(&e.type_name, content_type, &encoding.encode(&body))
}

/// SubscribeToShard: an `initial-response` message, then one `SubscribeToShardEvent` message
/// per event; an error after the start is an exception message that ends the stream.
async fn subscribe_to_shard(
    svc: &MillraceService,
    mut i: Input<'_>,
    encoding: Encoding,
) -> Result<Reply> {
    let consumer = consumer_arn_member(&mut i, true);
    let shard_id = i.name("ShardId", true, 128);
    let start = i.nested("StartingPosition", true, |p| {
        let kind = p.enumeration("Type", true, &ITERATOR_TYPES);
        let seq = p.string(
            "SequenceNumber",
            false,
            (1, 129),
            Some((SEQUENCE_PATTERN, sequence_pattern)),
        );
        let ts = p.timestamp("Timestamp", false);
        (kind, seq, ts)
    });
    i.finish()?;
    let (kind, seq, ts) = start.unwrap_or_default();
    let kind_name = kind.unwrap_or_default();
    let kind = iterator_type(Some(&kind_name));
    check_position(kind, &kind_name, &seq, ts)?;
    let consumer = consumer.unwrap_or_default();
    parse_consumer_arn(&consumer)?;
    let events = svc
        .subscribe_impl(pb::SubscribeToShardRequest {
            consumer_arn: consumer,
            shard_id: shard_id.unwrap_or_default(),
            starting_position: Some(pb::StartingPosition {
                r#type: kind as i32,
                sequence_number: seq.unwrap_or_default(),
                timestamp_ms: ts.unwrap_or(0),
            }),
        })
        .await?;
    // Event payloads are in the request's encoding; JSON events say plain application/json.
    let event_ct = match encoding {
        Encoding::Json => "application/json",
        Encoding::Cbor => encoding.content_type(),
    };
    let initial = eventstream::event("initial-response", event_ct, &encoding.encode(&no_output()));
    let frames = events.map(move |item| {
        let frame = match item {
            Ok(e) => {
                let at_end = !e.child_shards.is_empty();
                eventstream::event(
                    "SubscribeToShardEvent",
                    event_ct,
                    &encoding.encode(&event_out(e, at_end)),
                )
            }
            Err(status) => exception_frame(&status, encoding, event_ct),
        };
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(frame))
    });
    let stream = futures::stream::once(async move {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(initial))
    })
    .chain(frames);
    Ok(Reply::Events(axum::body::Body::from_stream(stream)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_put_records_entry_names_only_the_error_codes_kinesis_documents() {
        use super::ApiError;
        let throttled = ApiError::ProvisionedThroughputExceeded("slow down".into());
        assert_eq!(
            super::per_record_code(throttled.kinesis_name()),
            "ProvisionedThroughputExceededException"
        );
        for e in [
            ApiError::ResourceNotFound("Stream s under account 1 not found.".into()),
            ApiError::Unavailable("no leader".into()),
            ApiError::InvalidArgument("bad".into()),
        ] {
            assert_eq!(super::per_record_code(e.kinesis_name()), "InternalFailure");
        }
    }

    use super::*;

    #[test]
    fn errors_after_the_start_are_exception_messages_with_kinesis_names() {
        let status: tonic::Status =
            ApiError::ResourceNotFound("Shard shardId-000000000009 not found".into()).into();
        let frame = exception_frame(&status, Encoding::Json, "application/json");
        let (msg, used) = eventstream::decode(&frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(msg.header(":message-type"), Some("exception"));
        assert_eq!(
            msg.header(":exception-type"),
            Some("ResourceNotFoundException")
        );
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(body["message"], "Shard shardId-000000000009 not found");
        // A status without a symbol (e.g. a transport failure) is an InternalFailure.
        let frame = exception_frame(&tonic::Status::unavailable("gone"), Encoding::Cbor, CBOR);
        let (msg, _) = eventstream::decode(&frame).unwrap().unwrap();
        assert_eq!(msg.header(":exception-type"), Some("InternalFailure"));
        let body: ciborium::Value = ciborium::de::from_reader(msg.payload.as_slice()).unwrap();
        assert!(matches!(body, ciborium::Value::Map(_)));
    }

    const CBOR: &str = super::super::wire::CBOR_CONTENT_TYPE;
}
