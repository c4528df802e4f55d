//! A batching producer: records are grouped per shard into PutRecords calls (by record count,
//! bytes and linger time), with a bounded number of calls in flight per shard, backpressure when
//! its buffer is full, and a result per record.
//!
//! Order: records of one partition key always travel in the same *lane* (a shard and one of its
//! `in_flight_per_shard` slots, chosen by the key's hash), and a lane has at most one call in
//! flight, retried in place; a shard's batch is one Raft entry, so it is written all or nothing.
//! So records of one partition key are written in the order they were sent. When the shard map
//! changes (a reshard), the producer waits for every call in flight before using the new map.
//!
//! Idempotent mode ([`ProducerConfig::idempotent`]): each lane's calls carry the producer's id
//! and the sequence number of their first record, so a call whose outcome is unknown is sent
//! again as it was and the shard writes its records once (a retry is answered with the first
//! write's sequence numbers). Without it, an unknown outcome is reported for those records.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use millrace_client::{Client, Producer, ProducerConfig, PutRecord};
//! let client = Client::connect(["http://127.0.0.1:7101"])?;
//! let producer = Producer::new(client, "orders", ProducerConfig::default()).await?;
//! let pending = producer.send(PutRecord::new("customer-42", b"order placed".to_vec())).await?;
//! producer.flush().await?;
//! let written = pending.await?; // shard and sequence number
//! println!("{} {}", written.shard_id, written.sequence_number);
//! producer.close().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::limits::PUT_RECORDS_RECORDS_MAX;
use crate::routes::hash_of;
use crate::{Client, ClientError, PutRecord, PutResult, RecordError};

/// How a [`Producer`] batches and paces its writes.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a record may wait for its batch to fill before the batch is sent.
    pub linger: Duration,
    /// Records per PutRecords call (at most 500, the Kinesis limit).
    pub batch_records_max: usize,
    /// Data and partition-key bytes per call (at most 5 MiB).
    pub batch_bytes_max: usize,
    /// Calls in flight per shard (lanes); records of one partition key share a lane.
    pub in_flight_per_shard: usize,
    /// Records accepted but not yet written; `send` waits while this many are pending.
    pub buffer_records: usize,
    /// Times a record refused for a retryable reason (throttling, no leader) is sent again.
    pub retries: u32,
    /// First pause before such a retry; doubled each time, with jitter.
    pub retry_backoff: Duration,
    /// Idempotent mode: every call carries this producer's id and a per-(shard, lane) sequence,
    /// so a call whose outcome is unknown (a leader died mid-write, a connection dropped) is
    /// simply sent again — the cluster never writes its records twice.
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_records_max: PUT_RECORDS_RECORDS_MAX,
            batch_bytes_max: 1024 * 1024,
            in_flight_per_shard: 4,
            buffer_records: 10_000,
            retries: 10,
            retry_backoff: Duration::from_millis(50),
            idempotent: false,
        }
    }
}

/// Why a record was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The cluster refused the record (per-record error code and message).
    #[error("record refused: {} {}", .0.code, .0.message)]
    Refused(RecordError),
    /// The call failed; `ClientError::outcome_unknown` tells whether it may have been written.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The producer was closed (or failed) before the record was written.
    #[error("the producer is closed")]
    Closed,
    #[error("{0}")]
    Invalid(String),
}

/// The eventual result of one sent record.
pub struct RecordFuture(oneshot::Receiver<Result<PutResult, ProduceError>>);

impl Future for RecordFuture {
    type Output = Result<PutResult, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ProduceError::Closed)))
    }
}

enum Msg {
    Record(PutRecord, oneshot::Sender<Result<PutResult, ProduceError>>),
    Flush(oneshot::Sender<()>),
}

/// A batching producer for one stream. Cheap to share behind an `Arc`; `send` may be called
/// from many tasks.
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    /// Starts a producer for `stream` (which must exist).
    pub async fn new(
        client: Client,
        stream: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ProduceError> {
        if config.batch_records_max == 0 || config.batch_records_max > PUT_RECORDS_RECORDS_MAX {
            return Err(ProduceError::Invalid(format!(
                "batch_records_max must be 1-{PUT_RECORDS_RECORDS_MAX}"
            )));
        }
        if config.in_flight_per_shard == 0 || config.buffer_records == 0 {
            return Err(ProduceError::Invalid(
                "in_flight_per_shard and buffer_records must be at least 1".into(),
            ));
        }
        let map = ShardMap::load(&client, stream).await?;
        let (tx, rx) = mpsc::channel(config.buffer_records);
        let producer_id = format!("{:016x}", rand::random::<u64>());
        let dispatcher = Dispatcher {
            client,
            stream: stream.to_string(),
            config,
            producer_id,
            sequences: BTreeMap::new(),
            map,
            lanes: BTreeMap::new(),
            in_flight: 0,
            flushes: Vec::new(),
            refresh_map: false,
        };
        let task = tokio::spawn(dispatcher.run(rx));
        Ok(Producer { tx, task })
    }

    /// Queues a record; waits while the buffer is full. The returned future resolves once the
    /// record is written (or finally refused).
    pub async fn send(&self, record: PutRecord) -> Result<RecordFuture, ProduceError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Msg::Record(record, done))
            .await
            .map_err(|_| ProduceError::Closed)?;
        Ok(RecordFuture(result))
    }

    /// Sends everything queued so far at once and waits until it is written or refused.
    pub async fn flush(&self) -> Result<(), ProduceError> {
        let (done, flushed) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .await
            .map_err(|_| ProduceError::Closed)?;
        flushed.await.map_err(|_| ProduceError::Closed)
    }

    /// Flushes, then stops the producer.
    pub async fn close(self) -> Result<(), ProduceError> {
        self.flush().await?;
        drop(self.tx);
        self.task.await.map_err(|_| ProduceError::Closed)
    }
}

/// The open shards' hash ranges and leaders.
struct ShardMap {
    /// (starting hash key, ending hash key, shard id), by starting key.
    ranges: Vec<(u128, u128, String)>,
    /// Shard id → the node that led it when the map was read (0: unknown). Calls go there
    /// first; a stale leader only costs the cluster one forwarding hop.
    leaders: BTreeMap<String, u64>,
}

impl ShardMap {
    async fn load(client: &Client, stream: &str) -> Result<ShardMap, ClientError> {
        let shards = client.list_shards(stream).await?;
        let leaders = shards
            .iter()
            .map(|s| (s.shard_id.clone(), s.leader_node_id))
            .collect();
        let ranges = crate::open_shard_ranges(shards);
        Ok(ShardMap { ranges, leaders })
    }

    /// Index of the shard owning `hash` (the last shard if the map has a gap).
    fn shard_of(&self, hash: u128) -> usize {
        self.ranges
            .iter()
            .position(|(start, end, _)| *start <= hash && hash <= *end)
            .unwrap_or(self.ranges.len().saturating_sub(1))
    }
}

type Waiter = oneshot::Sender<Result<PutResult, ProduceError>>;

#[derive(Default)]
struct Lane {
    queue: VecDeque<(PutRecord, Waiter)>,
    /// When the oldest queued record arrived.
    oldest: Option<Instant>,
    busy: bool,
}

struct Dispatcher {
    client: Client,
    stream: String,
    config: ProducerConfig,
    /// This producer's id (idempotent mode; one per lane: `<id>-<lane>`).
    producer_id: String,
    /// Next sequence per (shard id, lane) (idempotent mode).
    sequences: BTreeMap<(String, usize), u64>,
    map: ShardMap,
    /// (shard index, lane) → lane.
    lanes: BTreeMap<(usize, usize), Lane>,
    in_flight: usize,
    flushes: Vec<oneshot::Sender<()>>,
    /// A write saw a shard id outside the map: reload it once nothing is in flight.
    refresh_map: bool,
}

/// A finished call: its lane, and whether the shard map looked stale.
struct Done {
    lane: (usize, usize),
    stale_map: bool,
}

impl Dispatcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
        let tick = (self.config.linger / 2).max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(tick);
        let mut open = true;
        loop {
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Record(record, waiter)) => self.enqueue(record, waiter),
                    Some(Msg::Flush(done)) => self.flushes.push(done),
                    None => open = false,
                },
                Some(done) = done_rx.recv() => {
                    self.in_flight -= 1;
                    if let Some(lane) = self.lanes.get_mut(&done.lane) {
                        lane.busy = false;
                    }
                    self.refresh_map |= done.stale_map;
                }
                _ = ticker.tick() => {}
            }
            if self.refresh_map && self.in_flight == 0 {
                self.reload_map().await;
            }
            self.launch_ready(&done_tx);
            let idle = self.in_flight == 0 && self.lanes.values().all(|l| l.queue.is_empty());
            if idle {
                for f in self.flushes.drain(..) {
                    let _ = f.send(());
                }
                if !open {
                    return;
                }
            }
        }
    }

    fn enqueue(&mut self, record: PutRecord, waiter: Waiter) {
        let hash = hash_of(&record);
        let lane = (
            self.map.shard_of(hash),
            (hash % self.config.in_flight_per_shard as u128) as usize,
        );
        let lane = self.lanes.entry(lane).or_default();
        lane.oldest.get_or_insert_with(Instant::now);
        lane.queue.push_back((record, waiter));
    }

    /// Re-reads the shard map and re-queues every waiting record under it, in order.
    async fn reload_map(&mut self) {
        match ShardMap::load(&self.client, &self.stream).await {
            Ok(map) => {
                self.map = map;
                self.refresh_map = false;
                let lanes = std::mem::take(&mut self.lanes);
                for (_, lane) in lanes {
                    for (record, waiter) in lane.queue {
                        self.enqueue(record, waiter);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot reload the shard map yet"),
        }
    }

    /// Sends every idle lane's batch that is full, has lingered, or is being flushed.
    fn launch_ready(&mut self, done_tx: &mpsc::Sender<Done>) {
        if self.refresh_map {
            return; // wait for calls in flight, then reload the map first
        }
        let flushing = !self.flushes.is_empty();
        let now = Instant::now();
        let keys: Vec<(usize, usize)> = self.lanes.keys().copied().collect();
        for key in keys {
            let config = self.config.clone();
            let lane = self.lanes.get_mut(&key).expect("lane");
            if lane.busy || lane.queue.is_empty() {
                continue;
            }
            let lingered = lane
                .oldest
                .is_some_and(|t| now.duration_since(t) >= config.linger);
            let full = lane.queue.len() >= config.batch_records_max;
            if !(flushing || lingered || full) {
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some((record, _)) = lane.queue.front() {
                let size = record.data.len() + record.partition_key.len();
                if batch.len() == config.batch_records_max
                    || (!batch.is_empty() && bytes + size > config.batch_bytes_max)
                {
                    break;
                }
                bytes += size;
                batch.push(lane.queue.pop_front().expect("front"));
            }
            lane.oldest = (!lane.queue.is_empty()).then_some(now);
            lane.busy = true;
            self.in_flight += 1;
            let known: Vec<String> = self.map.ranges.iter().map(|r| r.2.clone()).collect();
            let tag = config.idempotent.then(|| {
                let shard = self
                    .map
                    .ranges
                    .get(key.0)
                    .map(|r| r.2.clone())
                    .unwrap_or_default();
                let next = self.sequences.entry((shard, key.1)).or_default();
                let sequence = *next;
                *next += batch.len() as u64;
                (format!("{}-{}", self.producer_id, key.1), sequence)
            });
            let leader = self
                .map
                .ranges
                .get(key.0)
                .and_then(|r| self.map.leaders.get(&r.2))
                .copied()
                .filter(|l| *l != 0);
            let (client, stream, done_tx) =
                (self.client.clone(), self.stream.clone(), done_tx.clone());
            tokio::spawn(async move {
                let target = Target {
                    known_shards: &known,
                    leader,
                    tag,
                };
                let stale_map = write_batch(&client, &stream, batch, &config, target).await;
                let _ = done_tx
                    .send(Done {
                        lane: key,
                        stale_map,
                    })
                    .await;
            });
        }
    }
}

/// Where a batch goes: the shards the map knows (to notice a reshard), the shard leader's node
/// (tried first), and the idempotent producer's id and sequence.
struct Target<'a> {
    known_shards: &'a [String],
    leader: Option<u64>,
    tag: Option<(String, u64)>,
}

/// Is a per-record error worth sending again (nothing was written)?
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "PROVISIONED_THROUGHPUT_EXCEEDED" | "UNAVAILABLE" | "NOT_LEADER"
    )
}

/// Writes one lane's batch, retrying refused records in place (so nothing behind them in the
/// lane overtakes them). Returns whether a record landed on a shard the map does not know.
async fn write_batch(
    client: &Client,
    stream: &str,
    mut batch: Vec<(PutRecord, Waiter)>,
    config: &ProducerConfig,
    target: Target<'_>,
) -> bool {
    let Target {
        known_shards,
        leader,
        tag,
    } = target;
    let mut stale_map = false;
    let mut attempt = 0u32;
    loop {
        let records: Vec<PutRecord> = batch.iter().map(|(r, _)| r.clone()).collect();
        let producer = tag.as_ref().map(|(id, seq)| (id.as_str(), *seq));
        let results = match client
            .put_records_via(stream, records, producer, leader)
            .await
        {
            Ok(results) => results,
            // Idempotent: whatever happened, sending the same call again is safe.
            Err(e) if tag.is_some() && attempt < config.retries && resendable(&e) => {
                tracing::debug!(error = %e, attempt, "resending an idempotent batch");
                pause(config, attempt).await;
                attempt += 1;
                continue;
            }
            Err(e) => {
                for (_, waiter) in batch {
                    let _ = waiter.send(Err(ProduceError::Client(e.clone())));
                }
                return stale_map;
            }
        };
        let mut again = Vec::new();
        for ((record, waiter), result) in batch.into_iter().zip(results) {
            match result {
                Ok(put) => {
                    stale_map |= !known_shards.contains(&put.shard_id);
                    let _ = waiter.send(Ok(put));
                }
                // Idempotent: a record whose outcome is unknown is sent again as it was.
                Err(e)
                    if (retryable(&e.code) || (tag.is_some() && e.code == "UNKNOWN_OUTCOME"))
                        && attempt < config.retries =>
                {
                    again.push((record, waiter))
                }
                Err(e) => {
                    let _ = waiter.send(Err(ProduceError::Refused(e)));
                }
            }
        }
        if again.is_empty() {
            return stale_map;
        }
        pause(config, attempt).await;
        attempt += 1;
        batch = again;
    }
}

/// Backoff before retry `attempt`: doubling from `retry_backoff`, with jitter.
async fn pause(config: &ProducerConfig, attempt: u32) {
    let backoff = config.retry_backoff * 2u32.saturating_pow(attempt.min(6));
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    tokio::time::sleep(backoff.mul_f64(jitter)).await;
}

/// May an idempotent call that failed this way be sent again? Everything but a refusal of the
/// request itself (which would fail again).
fn resendable(e: &ClientError) -> bool {
    match e {
        ClientError::Server { symbol, .. } => !matches!(
            symbol.as_str(),
            "INVALID_ARGUMENT" | "RESOURCE_NOT_FOUND" | "VALIDATION" | "LIMIT_EXCEEDED"
        ),
        ClientError::InvalidArgument(_) => false,
        _ => true,
    }
}
