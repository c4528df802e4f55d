//! The data plane of the public API: PutRecords, GetShardIterator, GetRecords.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::Status;

use millrace_proto::internal::StoredRecord;
use millrace_proto::storage::BatchRecord;
use millrace_proto::v1 as pb;

use super::error::ApiError;
use super::grpc::{stream_name_from, MillraceService};
use super::iterator::IteratorToken;
use crate::metadata::state::StreamMeta;
use crate::metadata::write_routes::WriteRoutes;
use crate::server::metrics::{StreamCounters, WrittenSizes};
use crate::server::node::{LEADER_SEARCH_TIMEOUT, META_WAIT_ON_WRITE};
use crate::server::now_ms;
use crate::server::routing::Appended;
use crate::shard::hashing::{parse_explicit_hash_key, partition_key_hash};
use crate::shard::read::ReadBounds;
use crate::shard::sequence::SequenceNumber;

pub use millrace_proto::limits::{
    GET_RECORDS_BYTES_MAX, GET_RECORDS_RECORDS_MAX, PARTITION_KEY_CHARS_MAX, PUT_RECORDS_BYTES_MAX,
    PUT_RECORDS_RECORDS_MAX, RECORD_BYTES_DEFAULT,
};

/// PutRecords calls one pipeline runs at a time (the next message waits for a slot).
pub const PIPELINE_CALLS_MAX: usize = 1024;

/// The answers of a PutRecords pipeline, in the order the calls finish.
pub type PipelineAnswers =
    Pin<Box<dyn Stream<Item = Result<pb::PipelinedPutRecordsResults, Status>> + Send>>;

/// How often a write to a sealed shard re-checks whether its children are open.
const RESHARD_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Writes a PutRecords call's records in rounds until each has an outcome: `write` writes the
/// pending records with the routes it is given and hands back those whose shard was sealed by a
/// reshard (not written: retried with fresh routes from `refresh`). When the routes cannot be
/// refreshed (the metadata leader out of reach, the stream deleted) or the deadline passes, only
/// the records still pending fail, with that error; records already written keep their
/// sequence numbers. Failing the whole call instead would report committed records as failed,
/// and a retry would write them twice.
async fn write_in_rounds<R, W, WF, F, FF>(
    mut routes: R,
    mut pending: Vec<(usize, BatchRecord)>,
    mut results: Vec<pb::PutRecordsResultEntry>,
    deadline: tokio::time::Instant,
    mut write: W,
    mut refresh: F,
) -> Vec<pb::PutRecordsResultEntry>
where
    W: FnMut(R, Vec<(usize, BatchRecord)>, Vec<pb::PutRecordsResultEntry>) -> WF,
    WF: std::future::Future<Output = (Vec<(usize, BatchRecord)>, Vec<pb::PutRecordsResultEntry>)>,
    F: FnMut() -> FF,
    FF: std::future::Future<Output = Result<R, ApiError>>,
    R: Clone,
{
    loop {
        (pending, results) = write(routes.clone(), pending, results).await;
        if pending.is_empty() {
            return results;
        }
        let unplaced = if tokio::time::Instant::now() >= deadline {
            ApiError::Unavailable("the shard is being resharded; retry".into())
        } else {
            tokio::time::sleep(RESHARD_RETRY_PAUSE).await;
            match refresh().await {
                Ok(fresh) => {
                    routes = fresh;
                    continue;
                }
                Err(e) => e,
            }
        };
        for (i, _) in pending {
            results[i].error_code = unplaced.symbol().to_string();
            results[i].error_message = unplaced.to_string();
        }
        return results;
    }
}

fn hash_of(r: &BatchRecord) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&r.hash_key);
    u128::from_be_bytes(b)
}

/// A pipelined call's answer: what unary PutRecords would have answered.
fn pipelined(
    call_id: u64,
    outcome: Result<pb::PutRecordsResponse, ApiError>,
) -> pb::PipelinedPutRecordsResult {
    match outcome {
        Ok(response) => pb::PipelinedPutRecordsResult {
            call_id,
            response: Some(response),
            ..Default::default()
        },
        Err(e) => pb::PipelinedPutRecordsResult {
            call_id,
            response: None,
            status_code: e.grpc_code() as i32,
            error_symbol: e.symbol().to_string(),
            error_message: e.to_string(),
        },
    }
}

/// Idempotent producers' ids are 1-128 characters.
pub const PRODUCER_ID_CHARS_MAX: usize = 128;

/// The idempotent producer a PutRecords call names, if any.
fn producer_of(req: &pb::PutRecordsRequest) -> Result<Option<(String, u64)>, ApiError> {
    if req.producer_id.is_empty() {
        if req.producer_sequence != 0 {
            return Err(ApiError::InvalidArgument(
                "ProducerSequence needs a ProducerId".into(),
            ));
        }
        return Ok(None);
    }
    if req.producer_id.chars().count() > PRODUCER_ID_CHARS_MAX {
        return Err(ApiError::InvalidArgument(format!(
            "ProducerId has more than {PRODUCER_ID_CHARS_MAX} characters"
        )));
    }
    Ok(Some((req.producer_id.clone(), req.producer_sequence)))
}

/// Validates and routes every record before anything is written: a bad record fails the
/// whole call, naming the record and the limit.
fn validate(
    req: pb::PutRecordsRequest,
    max_record_bytes: usize,
) -> Result<Vec<BatchRecord>, ApiError> {
    // With larger records allowed, a request may carry one of them (Kinesis: up to 10 MiB).
    let request_bytes_max = PUT_RECORDS_BYTES_MAX.max(max_record_bytes);
    if req.records.is_empty() || req.records.len() > PUT_RECORDS_RECORDS_MAX {
        return Err(ApiError::InvalidArgument(format!(
            "Records has {} entries; it must have 1-{PUT_RECORDS_RECORDS_MAX}",
            req.records.len()
        )));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(req.records.len());
    for (i, r) in req.records.into_iter().enumerate() {
        let chars = r.partition_key.chars().count();
        if chars == 0 || chars > PARTITION_KEY_CHARS_MAX {
            return Err(ApiError::InvalidArgument(format!(
                "Records[{i}].PartitionKey has {chars} characters; it must have 1-{PARTITION_KEY_CHARS_MAX}"
            )));
        }
        if r.data.len() > max_record_bytes {
            return Err(ApiError::InvalidArgument(format!(
                "Records[{i}].Data has {} bytes; the stream's limit is {max_record_bytes}",
                r.data.len()
            )));
        }
        // As in Kinesis, a record's size is its data plus its partition key.
        let record_bytes = r.data.len() + r.partition_key.len();
        if record_bytes > max_record_bytes {
            return Err(ApiError::InvalidArgument(format!(
                "Records[{i}] is {record_bytes} bytes of Data and PartitionKey together; the stream's limit is {max_record_bytes}"
            )));
        }
        total += record_bytes;
        if total > request_bytes_max {
            // Kinesis's words (its limit is in MiB, which it calls MB).
            return Err(ApiError::InvalidArgument(format!(
                "Records size exceeds {} MB limit",
                request_bytes_max >> 20
            )));
        }
        let hash = if r.explicit_hash_key.is_empty() {
            partition_key_hash(&r.partition_key)
        } else {
            parse_explicit_hash_key(&r.explicit_hash_key)
                .map_err(|e| ApiError::InvalidArgument(format!("Records[{i}].{e}")))?
        };
        out.push(BatchRecord {
            partition_key: r.partition_key,
            data: r.data,
            hash_key: hash.to_be_bytes().to_vec(),
        });
    }
    Ok(out)
}

impl MillraceService {
    /// Writes each shard's records as one batch at its leader. Records bound for a shard that a
    /// reshard sealed are re-routed, in order, to its children once they open.
    pub(super) async fn put_records_impl(
        &self,
        req: pb::PutRecordsRequest,
    ) -> Result<pb::PutRecordsResponse, ApiError> {
        let started = std::time::Instant::now();
        let mut sizes = WrittenSizes::default();
        let mut counters = None;
        let id = crate::server::request_id::new();
        let span = tracing::debug_span!(
            "request",
            id = %format_args!("{id:016x}"),
            action = "PutRecords"
        );
        let outcome = crate::server::request_id::scope(
            id,
            tracing::Instrument::instrument(
                self.put_records_measured(req, &mut sizes, &mut counters),
                span,
            ),
        )
        .await;
        let metrics = &self.node.metrics;
        metrics.produce_seconds.observe(started.elapsed());
        metrics.call(crate::server::metrics::Action::PutRecords, &outcome);
        if let Some(c) = counters {
            c.calls
                .count(crate::server::metrics::Action::PutRecords, &outcome);
            if let Ok(resp) = &outcome {
                c.count_written(resp, &sizes);
            }
        }
        outcome
    }

    /// [`Self::put_records_impl`], also giving, for the metrics, the records' data bytes
    /// (`sizes`) and the stream's counters once the stream is known (`counters`).
    async fn put_records_measured(
        &self,
        req: pb::PutRecordsRequest,
        sizes: &mut WrittenSizes,
        counters: &mut Option<Arc<StreamCounters>>,
    ) -> Result<pb::PutRecordsResponse, ApiError> {
        let name = stream_name_from(&req.stream_name)?;
        let routes = self.write_routes(&name).await?;
        *counters = self.node.metrics.stream(&routes.name);
        if routes.deleting {
            return Err(ApiError::ResourceNotFound(format!(
                "Stream {} is being deleted",
                routes.name
            )));
        }
        let producer = producer_of(&req)?;
        let mut records = validate(req, routes.max_record_bytes)?;
        if routes.auto_distribution {
            // AUTO: partition keys and explicit hash keys do not place records. An idempotent
            // producer's records are placed by (producer, sequence, position), so that a retry
            // reaches the shards that may hold the first attempt, and is found there.
            for (i, r) in records.iter_mut().enumerate() {
                let key = match &producer {
                    Some((id, sequence)) => {
                        Some(partition_key_hash(&format!("{id}\u{0}{sequence}\u{0}{i}")))
                    }
                    None => routes.any_shard_key(),
                };
                if let Some(key) = key {
                    r.hash_key = key.to_be_bytes().to_vec();
                }
            }
        }
        sizes.note(
            records.iter().map(|r| r.data.len()),
            routes.shard_level_metrics,
        );
        let results = vec![pb::PutRecordsResultEntry::default(); records.len()];
        let pending: Vec<(usize, BatchRecord)> = records.into_iter().enumerate().collect();
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH_TIMEOUT;
        let producer = &producer;
        let name = &name;
        let results = write_in_rounds(
            routes,
            pending,
            results,
            deadline,
            |routes, pending, mut results| async move {
                let pending = self
                    .write_round(&routes, pending, producer, &mut results)
                    .await;
                (pending, results)
            },
            || async move {
                self.node.sync_meta_within(META_WAIT_ON_WRITE).await?;
                self.write_routes(name).await
            },
        )
        .await;
        let failed = results.iter().filter(|r| !r.error_code.is_empty()).count() as u32;
        let resp = pb::PutRecordsResponse {
            failed_record_count: failed,
            records: results,
        };
        Ok(resp)
    }

    /// The stream's write routes; if unknown here, catches up with the metadata leader
    /// first, so a stream created through another node is found.
    async fn write_routes(&self, name: &str) -> Result<Arc<WriteRoutes>, ApiError> {
        if let Some(r) = self.node.meta.write_routes(name) {
            return Ok(r);
        }
        self.node.sync_meta_within(META_WAIT_ON_WRITE).await?;
        self.node
            .meta
            .write_routes(name)
            .ok_or_else(|| ApiError::ResourceNotFound(crate::messages::stream_not_found(name)))
    }

    /// Serves a PutRecords pipeline (see [`millrace_mux::serve`]): each call runs as a task
    /// of its own, at most [`PIPELINE_CALLS_MAX`] at once.
    /// Every call is authorised like a PutRecords call by `principal`.
    pub(super) fn put_records_pipeline_impl(
        &self,
        principal: Option<String>,
        calls: tonic::Streaming<pb::PipelinedPutRecordsBatch>,
    ) -> PipelineAnswers {
        let principal: Option<std::sync::Arc<str>> = principal.map(Into::into);
        let node = self.node.clone();
        millrace_mux::serve(
            calls,
            |batch: pb::PipelinedPutRecordsBatch| {
                batch
                    .calls
                    .into_iter()
                    .map(|c| (c.call_id, c.request.unwrap_or_default()))
                    .collect()
            },
            |answers| pb::PipelinedPutRecordsResults {
                results: answers
                    .into_iter()
                    .map(|(id, outcome)| pipelined(id, outcome))
                    .collect(),
            },
            move |req: pb::PutRecordsRequest| {
                let service = MillraceService { node: node.clone() };
                let principal = principal.clone();
                async move {
                    service.allow_key(
                        principal.as_deref(),
                        "PutRecords",
                        super::access::Target::stream(&req.stream_name),
                    )?;
                    service.put_records_impl(req).await
                }
            },
            PIPELINE_CALLS_MAX,
            self.node.groups.registry().stopping(),
        )
    }

    /// One round of writes; returns the records whose shard was sealed (to retry).
    async fn write_round(
        &self,
        routes: &WriteRoutes,
        pending: Vec<(usize, BatchRecord)>,
        producer: &Option<(String, u64)>,
        results: &mut [pb::PutRecordsResultEntry],
    ) -> Vec<(usize, BatchRecord)> {
        let mut per_shard: BTreeMap<usize, (Vec<usize>, Vec<BatchRecord>)> = BTreeMap::new();
        let mut retry = Vec::new();
        for (i, r) in pending {
            match routes.shard_of(hash_of(&r)) {
                Some(shard) => {
                    let (slots, batch) = per_shard.entry(shard).or_default();
                    slots.push(i);
                    batch.push(r);
                }
                // Children not open yet.
                None => retry.push((i, r)),
            }
        }
        let write = |shard: usize, slots: Vec<usize>, batch: Vec<BatchRecord>| {
            let sh = routes.shard(shard);
            async move {
                let _dirty = crate::shard::dirty::begin(sh.group_id, &batch);
                let r = self
                    .node
                    .shard_append(sh.group_id, &sh.replicas, &batch, producer.clone())
                    .await;
                (sh, slots, batch, r)
            }
        };
        // A write's future is kilobytes (the append under way): a request to one shard awaits
        // it where it is; several are boxed, as join_all moves a finished future's whole state
        // to take its output.
        let done = if per_shard.len() == 1 {
            let (shard, (slots, batch)) = per_shard.pop_first().expect("one shard");
            vec![write(shard, slots, batch).await]
        } else {
            let writes = per_shard
                .into_iter()
                .map(|(shard, (slots, batch))| Box::pin(write(shard, slots, batch)));
            futures::future::join_all(writes).await
        };
        for (sh, slots, batch, r) in done {
            match r {
                Ok(Appended::Closed) => retry.extend(slots.into_iter().zip(batch)),
                Ok(Appended::At { index, position }) => {
                    for (pos, i) in slots.into_iter().enumerate() {
                        let sequence = SequenceNumber::new(index, position + pos as u32);
                        results[i] = pb::PutRecordsResultEntry {
                            shard_id: sh.shard_id.clone(),
                            sequence_number: sequence.to_string(),
                            ..Default::default()
                        };
                    }
                }
                Err(e) => {
                    for i in slots {
                        results[i] = pb::PutRecordsResultEntry {
                            shard_id: sh.shard_id.clone(),
                            error_code: e.symbol().to_string(),
                            error_message: e.to_string(),
                            ..Default::default()
                        };
                    }
                }
            }
        }
        retry.sort_by_key(|(i, _)| *i);
        retry
    }

    pub(super) async fn get_shard_iterator_impl(
        &self,
        req: pb::GetShardIteratorRequest,
    ) -> Result<pb::GetShardIteratorResponse, ApiError> {
        let stream = self.stream(&req.stream_name).await?;
        let shard = stream.shard(&req.shard_id).cloned().ok_or_else(|| {
            ApiError::ResourceNotFound(crate::messages::shard_does_not_exist(
                &stream.name,
                &req.shard_id,
            ))
        })?;
        let mut not_before_ms = None;
        use pb::ShardIteratorType as T;
        let kind = T::try_from(req.shard_iterator_type).unwrap_or(T::Unspecified);
        let parse_seq = || {
            SequenceNumber::parse("StartingSequenceNumber", &req.starting_sequence_number).map_err(
                |_| {
                    ApiError::InvalidArgument(crate::messages::sequence_number_invalid(
                        &req.starting_sequence_number,
                        &stream.name,
                        &shard.shard_id,
                    ))
                },
            )
        };
        let (index, position) = match kind {
            T::TrimHorizon => (0, 0),
            T::AtSequenceNumber => {
                let s = parse_seq()?;
                (s.log_index, s.position)
            }
            T::AfterSequenceNumber => {
                let s = parse_seq()?.next();
                (s.log_index, s.position)
            }
            T::Latest => {
                let read = self
                    .node
                    .shard_read(shard.group_id, &shard.replicas, ReadBounds::probe(None))
                    .await?;
                (read.applied.map_or(0, |a| a + 1), 0)
            }
            T::AtTimestamp => {
                // A time still to come is accepted, as Kinesis does: the iterator reads
                // nothing until records arrive at or after it.
                if req.timestamp_ms > now_ms() {
                    not_before_ms = Some(req.timestamp_ms);
                }
                let probe = ReadBounds::probe(Some(req.timestamp_ms));
                let read = self.node.shard_read(shard.group_id, &shard.replicas, probe).await?;
                (read.outcome.next_index, 0)
            }
            T::Unspecified => {
                return Err(ApiError::InvalidArgument(
                    "ShardIteratorType must be TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER or AT_TIMESTAMP".into(),
                ))
            }
        };
        let token = IteratorToken {
            version: 1,
            stream: stream.name.clone(),
            shard_id: shard.shard_id.clone(),
            group_id: shard.group_id,
            index,
            position,
            expires_ms: now_ms() + self.node.config.iterator_ttl_ms,
            not_before_ms,
        };
        Ok(pb::GetShardIteratorResponse {
            shard_iterator: token.encode(&self.secret().await?),
        })
    }

    /// Reads committed records after the iterator; at a closed shard's end there is no next
    /// iterator and the child shards are returned.
    pub(super) async fn get_records_impl(
        &self,
        req: pb::GetRecordsRequest,
    ) -> Result<pb::GetRecordsResponse, ApiError> {
        let started = std::time::Instant::now();
        let mut counters = None;
        let outcome = self.get_records_measured(req, &mut counters).await;
        let metrics = &self.node.metrics;
        let action = crate::server::metrics::Action::GetRecords;
        metrics.get_records_seconds.observe(started.elapsed());
        metrics.call(action, &outcome);
        if let Some(c) = counters {
            c.calls.count(action, &outcome);
            if let Ok((shard_id, resp)) = &outcome {
                c.count_read(resp, shard_id.as_deref());
            }
        }
        outcome.map(|(_, resp)| resp)
    }

    /// [`Self::get_records_impl`], also giving, for the metrics, the stream's counters once
    /// the stream is known, and the shard's id when the stream counts per shard (enhanced
    /// monitoring).
    async fn get_records_measured(
        &self,
        req: pb::GetRecordsRequest,
        counters: &mut Option<Arc<StreamCounters>>,
    ) -> Result<(Option<String>, pb::GetRecordsResponse), ApiError> {
        let secret = self.secret().await?;
        let token = self.decode_iterator_with(&req.shard_iterator, &secret)?;
        let limit = match req.limit {
            0 => GET_RECORDS_RECORDS_MAX,
            l if l > GET_RECORDS_RECORDS_MAX => {
                return Err(ApiError::InvalidArgument(format!(
                    "Limit {l} exceeds the maximum of {GET_RECORDS_RECORDS_MAX}"
                )))
            }
            l => l,
        };
        let stream = self.stream(&token.stream).await?;
        *counters = self.node.metrics.stream(&stream.name);
        let shard = stream
            .shard(&token.shard_id)
            .filter(|s| s.group_id == token.group_id)
            .cloned()
            .ok_or_else(|| {
                ApiError::ResourceNotFound(crate::messages::shard_does_not_exist(
                    &stream.name,
                    &token.shard_id,
                ))
            })?;
        let bounds = ReadBounds {
            from_index: token.index,
            from_position: token.position,
            max_records: limit as usize,
            max_bytes: GET_RECORDS_BYTES_MAX,
            at_timestamp_ms: token.not_before_ms,
        };
        let read = self
            .node
            .shard_read(shard.group_id, &shard.replicas, bounds)
            .await?;
        let next_index = read.outcome.next_index;
        // Once a record at or after an early AT_TIMESTAMP iterator's time is read, the
        // iterator goes on by position.
        let not_before_ms = token
            .not_before_ms
            .filter(|_| read.outcome.records.is_empty());
        let at_end = read.at_end();
        let millis_behind = read.millis_behind();
        let next = IteratorToken {
            index: next_index,
            position: read.outcome.next_position,
            expires_ms: now_ms() + self.node.config.iterator_ttl_ms,
            not_before_ms,
            ..token
        };
        let child_shards = if at_end {
            child_shards(&stream, &shard.shard_id)
        } else {
            Vec::new()
        };
        let resp = pb::GetRecordsResponse {
            records: records_proto(read.outcome.records),
            next_shard_iterator: if at_end {
                String::new()
            } else {
                next.encode(&secret)
            },
            millis_behind_latest: millis_behind,
            child_shards,
        };
        let per_shard = !stream.shard_level_metrics.is_empty();
        Ok((per_shard.then_some(shard.shard_id), resp))
    }
}

/// Records as the public API shows them.
pub(super) fn records_proto(records: Vec<StoredRecord>) -> Vec<pb::Record> {
    records
        .into_iter()
        .map(|r| pb::Record {
            sequence_number: SequenceNumber::new(r.log_index, r.position).to_string(),
            approximate_arrival_timestamp_ms: r.arrival_timestamp_ms,
            data: r.data,
            partition_key: r.partition_key,
        })
        .collect()
}

/// The children of a closed shard, as returned at its end.
pub(super) fn child_shards(stream: &StreamMeta, shard_id: &str) -> Vec<pb::ChildShard> {
    stream
        .children_of(shard_id)
        .map(|c| pb::ChildShard {
            shard_id: c.shard_id.clone(),
            parent_shards: c.parent_shard_ids.clone(),
            hash_key_range: Some(pb::HashKeyRange {
                starting_hash_key: c.starting_hash_key.to_string(),
                ending_hash_key: c.ending_hash_key.to_string(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn records(n: usize) -> Vec<(usize, BatchRecord)> {
        (0..n)
            .map(|i| {
                (
                    i,
                    BatchRecord {
                        data: vec![i as u8].into(),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    /// A round that writes every record whose slot `keep_pending` rejects, as shard
    /// `shardId-<routes>`, and leaves the others pending (their shard sealed by a reshard).
    fn commit(
        results: &mut [pb::PutRecordsResultEntry],
        routes: u32,
        pending: Vec<(usize, BatchRecord)>,
        keep_pending: impl Fn(usize) -> bool,
    ) -> Vec<(usize, BatchRecord)> {
        let mut left = Vec::new();
        for (i, r) in pending {
            if keep_pending(i) {
                left.push((i, r));
            } else {
                results[i].shard_id = format!("shardId-{routes}");
                results[i].sequence_number = format!("{}", 100 + i);
            }
        }
        left
    }

    /// Issue 18 point 7: the metadata leader out of reach after a reshard left some records
    /// pending used to fail the whole call, although the other records were committed.
    #[tokio::test]
    async fn a_failed_refresh_fails_only_the_records_still_pending() {
        let n = 4;
        let results = write_in_rounds(
            0u32,
            records(n),
            vec![pb::PutRecordsResultEntry::default(); n],
            tokio::time::Instant::now() + Duration::from_secs(5),
            |routes, pending, mut results| async move {
                let left = commit(&mut results, routes, pending, |i| i % 2 == 1);
                (left, results)
            },
            || async { Err(ApiError::Unavailable("no metadata leader".into())) },
        )
        .await;
        for i in [0, 2] {
            assert_eq!(results[i].sequence_number, format!("{}", 100 + i));
            assert!(results[i].error_code.is_empty(), "{:?}", results[i]);
        }
        for i in [1, 3] {
            assert!(results[i].sequence_number.is_empty());
            assert_eq!(
                results[i].error_code,
                ApiError::Unavailable(String::new()).symbol()
            );
            assert!(
                results[i].error_message.contains("no metadata leader"),
                "{:?}",
                results[i]
            );
        }
    }

    #[tokio::test]
    async fn records_left_by_a_reshard_are_written_with_fresh_routes() {
        let n = 3;
        let seen = Mutex::new(Vec::new());
        let refreshes = Mutex::new(0u32);
        let results = write_in_rounds(
            0u32,
            records(n),
            vec![pb::PutRecordsResultEntry::default(); n],
            tokio::time::Instant::now() + Duration::from_secs(5),
            |routes, pending, mut results| {
                seen.lock().unwrap().push(routes);
                async move {
                    // Routes 0: record 1's shard is sealed; routes 1 place it.
                    let left = commit(&mut results, routes, pending, |i| routes == 0 && i == 1);
                    (left, results)
                }
            },
            || {
                *refreshes.lock().unwrap() += 1;
                async { Ok(1u32) }
            },
        )
        .await;
        assert_eq!(*seen.lock().unwrap(), vec![0, 1]);
        assert_eq!(*refreshes.lock().unwrap(), 1);
        assert!(results.iter().all(|r| r.error_code.is_empty()));
        assert_eq!(results[1].shard_id, "shardId-1");
        assert_eq!(results[0].shard_id, "shardId-0");
    }

    #[tokio::test]
    async fn records_still_pending_at_the_deadline_fail_without_another_refresh() {
        let n = 2;
        let results = write_in_rounds(
            0u32,
            records(n),
            vec![pb::PutRecordsResultEntry::default(); n],
            tokio::time::Instant::now(),
            |routes, pending, mut results| async move {
                let left = commit(&mut results, routes, pending, |i| i == 0);
                (left, results)
            },
            || async { panic!("no refresh after the deadline") },
        )
        .await;
        assert_eq!(results[1].sequence_number, "101");
        assert_eq!(
            results[0].error_code,
            ApiError::Unavailable(String::new()).symbol()
        );
        assert!(results[0].error_message.contains("resharded"));
    }
}
