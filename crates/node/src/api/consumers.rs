//! Registered stream consumers and SubscribeToShard (enhanced fan-out over a gRPC server stream).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use millrace_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::error::ApiError;
use super::grpc::{meta_result, stream_name_from, MillraceService};
use super::records::{child_shards, records_proto, GET_RECORDS_BYTES_MAX, GET_RECORDS_RECORDS_MAX};
use crate::metadata::state::{ConsumerMeta, MetaCommand, StreamMeta};
use crate::server::config::KinesisConfig;
use crate::server::now_ms;
use crate::shard::read::ReadBounds;
use crate::shard::sequence::SequenceNumber;

/// A subscription lasts at most this long, as in Kinesis; the client resubscribes from the last
/// continuation sequence number.
const SUBSCRIPTION_MS: i64 = 5 * 60 * 1000;
/// An event (possibly empty) at least this often, so clients see the subscription is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Events buffered per subscription before the reader waits for the client.
const EVENTS_BUFFERED_MAX: usize = 4;
pub use millrace_proto::limits::NAME_CHARS_MAX as CONSUMER_NAME_CHARS_MAX;

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeToShardEvent, Status>> + Send>>;

/// `arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM/consumer/NAME:CREATED_SECONDS`.
pub(super) fn consumer_arn(k: &KinesisConfig, stream: &StreamMeta, c: &ConsumerMeta) -> String {
    format!(
        "{}/consumer/{}:{}",
        k.stream_arn(&stream.name),
        c.name,
        c.created_ms / 1000
    )
}

/// (stream name, consumer name) from a consumer ARN.
pub(super) fn parse_consumer_arn(arn: &str) -> Result<(String, String), ApiError> {
    let invalid =
        || ApiError::InvalidArgument(format!("ConsumerARN {arn:?} is not a consumer ARN"));
    let (stream_part, consumer_part) = arn.split_once("/consumer/").ok_or_else(invalid)?;
    let name = consumer_part
        .rsplit_once(':')
        .map_or(consumer_part, |(n, _)| n);
    Ok((stream_name_from(stream_part)?, name.to_string()))
}

fn consumer_proto(k: &KinesisConfig, stream: &StreamMeta, c: &ConsumerMeta) -> pb::Consumer {
    pb::Consumer {
        consumer_name: c.name.clone(),
        consumer_arn: consumer_arn(k, stream, c),
        consumer_status: "ACTIVE".into(),
        consumer_creation_timestamp_ms: c.created_ms,
        stream_arn: k.stream_arn(&stream.name),
    }
}

fn validate_consumer_name(name: &str) -> Result<(), ApiError> {
    if crate::metadata::groups::is_resource_name(name, CONSUMER_NAME_CHARS_MAX) {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "ConsumerName {name:?} must be 1-{CONSUMER_NAME_CHARS_MAX} characters of [a-zA-Z0-9_.-]"
        )))
    }
}

impl MillraceService {
    pub(super) async fn register_consumer_impl(
        &self,
        req: pb::RegisterStreamConsumerRequest,
    ) -> Result<pb::Consumer, ApiError> {
        let name = stream_name_from(&req.stream_arn)?;
        validate_consumer_name(&req.consumer_name)?;
        let cmd = MetaCommand::RegisterConsumer {
            name: name.clone(),
            consumer: req.consumer_name.clone(),
            created_ms: now_ms(),
        };
        meta_result(self.node.propose_meta(&cmd).await?)?;
        self.find_consumer(&name, &req.consumer_name).await
    }

    async fn find_consumer(&self, stream: &str, consumer: &str) -> Result<pb::Consumer, ApiError> {
        let s = self.stream_fresh(stream).await?;
        let c = s.consumers.get(consumer).ok_or_else(|| {
            ApiError::ResourceNotFound(format!("Consumer {consumer} not found on {stream}"))
        })?;
        Ok(consumer_proto(&self.node.config.kinesis, &s, c))
    }

    /// (stream, consumer) named by an ARN, or by a stream and a consumer name.
    fn consumer_ref(stream_arn: &str, name: &str, arn: &str) -> Result<(String, String), ApiError> {
        if !arn.is_empty() {
            return parse_consumer_arn(arn);
        }
        if stream_arn.is_empty() || name.is_empty() {
            return Err(ApiError::InvalidArgument(
                "give ConsumerARN, or StreamARN and ConsumerName".into(),
            ));
        }
        Ok((stream_name_from(stream_arn)?, name.to_string()))
    }

    pub(super) async fn deregister_consumer_impl(
        &self,
        req: pb::DeregisterStreamConsumerRequest,
    ) -> Result<(), ApiError> {
        let (stream, consumer) =
            Self::consumer_ref(&req.stream_arn, &req.consumer_name, &req.consumer_arn)?;
        meta_result(
            self.node
                .propose_meta(&MetaCommand::DeregisterConsumer {
                    name: stream,
                    consumer,
                })
                .await?,
        )
    }

    pub(super) async fn describe_consumer_impl(
        &self,
        req: pb::DescribeStreamConsumerRequest,
    ) -> Result<pb::Consumer, ApiError> {
        let (stream, consumer) =
            Self::consumer_ref(&req.stream_arn, &req.consumer_name, &req.consumer_arn)?;
        self.find_consumer(&stream, &consumer).await
    }

    pub(super) async fn list_consumers_impl(
        &self,
        req: pb::ListStreamConsumersRequest,
    ) -> Result<Vec<pb::Consumer>, ApiError> {
        let s = self
            .stream_fresh(&stream_name_from(&req.stream_arn)?)
            .await?;
        Ok(s.consumers
            .values()
            .map(|c| consumer_proto(&self.node.config.kinesis, &s, c))
            .collect())
    }

    /// Starts a subscription: checks the consumer and the shard, resolves the starting position,
    /// then pushes events from a task until the shard's end, five minutes, or the client leaves.
    pub(super) async fn subscribe_impl(
        &self,
        req: pb::SubscribeToShardRequest,
    ) -> Result<EventStream, ApiError> {
        let outcome = self.subscribe_counted(req).await;
        let action = crate::server::metrics::Action::SubscribeToShard;
        self.node.metrics.call(action, &outcome);
        outcome
    }

    /// [`Self::subscribe_impl`], counting the subscription and what it pushes per stream.
    async fn subscribe_counted(
        &self,
        req: pb::SubscribeToShardRequest,
    ) -> Result<EventStream, ApiError> {
        let (stream_name, consumer) = parse_consumer_arn(&req.consumer_arn)?;
        let stream = self.stream_fresh(&stream_name).await?;
        let registered = stream
            .consumers
            .get(&consumer)
            .map(|c| consumer_arn(&self.node.config.kinesis, &stream, c));
        if registered.as_deref() != Some(req.consumer_arn.as_str()) {
            return Err(ApiError::ResourceNotFound(format!(
                "Consumer {} is not registered on {stream_name}",
                req.consumer_arn
            )));
        }
        let start = req.starting_position.unwrap_or_default();
        let iterator = self
            .get_shard_iterator_impl(pb::GetShardIteratorRequest {
                stream_name: stream_name.clone(),
                shard_id: req.shard_id.clone(),
                shard_iterator_type: start.r#type,
                starting_sequence_number: start.sequence_number,
                timestamp_ms: start.timestamp_ms,
            })
            .await?;
        let token = self.decode_iterator(&iterator.shard_iterator).await?;
        let shard = stream.shard(&req.shard_id).cloned().ok_or_else(|| {
            ApiError::ResourceNotFound(crate::messages::shard_does_not_exist(
                &stream_name,
                &req.shard_id,
            ))
        })?;
        // One subscription per consumer and shard: refused within 5 s of a successful one,
        // and a later one takes it over.
        let started = self
            .node
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .start(&req.consumer_arn, &req.shard_id, std::time::Instant::now());
        let mut subscribed = match started {
            Ok(s) => s,
            Err(wait) => {
                return Err(ApiError::ResourceInUse(format!(
                    "Another active subscription exists for this consumer: {} subscribed to {} less than 5 seconds ago (retry in {} ms)",
                    req.consumer_arn,
                    req.shard_id,
                    wait.as_millis().max(1)
                )))
            }
        };
        let taken_over = ApiError::ResourceInUse(format!(
            "Another subscription of {} to {} took this one over",
            req.consumer_arn, req.shard_id
        ));
        let counters = self.node.metrics.stream(&stream_name);
        if let Some(c) = &counters {
            c.subscriptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let per_shard = !stream.shard_level_metrics.is_empty();
        let (tx, rx) = mpsc::channel(EVENTS_BUFFERED_MAX);
        let service = MillraceService {
            node: self.node.clone(),
        };
        tokio::spawn(async move {
            let pushed = async {
                let mut position = (token.index, token.position);
                // An AT_TIMESTAMP start still to come: skip what arrived before it.
                let mut not_before_ms = token.not_before_ms;
                let until = now_ms() + SUBSCRIPTION_MS;
                let mut last_sent = tokio::time::Instant::now();
                let mut applied_changes = service
                    .node
                    .shard_shared(shard.group_id)
                    .map(|s| s.subscribe());
                while now_ms() < until {
                    if subscribed.taken_over() {
                        let _ = tx.send(Err(Status::from(taken_over))).await;
                        return;
                    }
                    if let Some(w) = applied_changes.as_mut() {
                        w.borrow_and_update();
                    }
                    let bounds = ReadBounds {
                        from_index: position.0,
                        from_position: position.1,
                        max_records: GET_RECORDS_RECORDS_MAX as usize,
                        max_bytes: GET_RECORDS_BYTES_MAX,
                        at_timestamp_ms: not_before_ms,
                    };
                    let read = match service
                        .node
                        .shard_read(shard.group_id, &shard.replicas, bounds)
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    };
                    let at_end = read.at_end();
                    let millis_behind = read.millis_behind();
                    position = (read.outcome.next_index, read.outcome.next_position);
                    let has_records = !read.outcome.records.is_empty();
                    if has_records {
                        not_before_ms = None;
                    }
                    if has_records || at_end || last_sent.elapsed() >= HEARTBEAT {
                        // The child shards only at the shard's end, read in place (a stream's
                        // metadata is not copied per event).
                        let children = match at_end {
                            true => service.node.meta.read(|s| {
                                s.streams
                                    .get(&stream_name)
                                    .map(|st| child_shards(st, &shard.shard_id))
                                    .unwrap_or_default()
                            }),
                            false => Vec::new(),
                        };
                        let event = pb::SubscribeToShardEvent {
                            records: records_proto(read.outcome.records),
                            continuation_sequence_number: SequenceNumber::new(
                                position.0, position.1,
                            )
                            .to_string(),
                            millis_behind_latest: millis_behind,
                            child_shards: children,
                        };
                        if let Some(c) = &counters {
                            c.count_pushed(&event, per_shard.then_some(shard.shard_id.as_str()));
                        }
                        if tx.send(Ok(event)).await.is_err() {
                            return; // the client went away
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                    if at_end {
                        return;
                    }
                    if !has_records {
                        // Wake as soon as a new entry applies here (or poll if no local replica),
                        // or another subscription takes this one over.
                        let applied = async {
                            match applied_changes.as_mut() {
                                Some(w) => {
                                    let _ =
                                        tokio::time::timeout(Duration::from_secs(1), w.changed())
                                            .await;
                                }
                                None => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        };
                        tokio::select! {
                            _ = applied => {}
                            _ = subscribed.wait_taken_over() => {}
                        }
                    }
                }
            };
            pushed.await;
            service
                .node
                .subscriptions
                .lock()
                .expect("subscriptions lock")
                .finish(&subscribed);
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_arns_parse() {
        let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders/consumer/app-1:1700000000";
        assert_eq!(
            parse_consumer_arn(arn).unwrap(),
            ("orders".into(), "app-1".into())
        );
        assert!(
            parse_consumer_arn("arn:aws:kinesis:us-east-1:123456789012:stream/orders").is_err()
        );
        assert!(validate_consumer_name("app-1.x_y").is_ok());
        assert!(validate_consumer_name("bad name").is_err());
    }
}
