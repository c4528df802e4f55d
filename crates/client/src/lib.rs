//! # Millrace client
//!
//! The Rust client for Millrace's native gRPC API. It depends only on the wire contract
//! (`millrace-proto`), never on server code, and carries no CLI: the `millrace` command's
//! client subcommands live in `millrace-cli`, on top of this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), millrace_client::ClientError> {
//! use millrace_client::{Client, PutRecord, StartPosition};
//!
//! let client = Client::connect(["http://127.0.0.1:7101", "http://127.0.0.1:7102"])?;
//! client.create_stream("orders", 4).await?;
//! client.wait_for_active("orders", std::time::Duration::from_secs(30)).await?;
//! let results = client
//!     .put_records("orders", vec![PutRecord::new("customer-17", b"hello".to_vec())])
//!     .await?;
//! let shard_id = results[0].as_ref().unwrap().shard_id.clone();
//! let mut iterator = client
//!     .get_shard_iterator("orders", &shard_id, StartPosition::TrimHorizon)
//!     .await?;
//! let page = client.get_records(&iterator, 100).await?;
//! assert_eq!(page.records[0].data, &b"hello"[..]);
//! iterator = page.next_shard_iterator;
//! # let _ = iterator;
//! # Ok(()) }
//! ```
//!
//! Every call has a deadline. Calls that cannot have taken effect (a refused connection, a
//! `NOT_LEADER` answer) are retried on the next endpoint with exponential backoff and jitter;
//! a write whose outcome is unknown returns [`ClientError::Unknown`] and is never retried
//! blindly. Reads (describe, list, shard iterators, GetRecords) change nothing, so they are
//! also retried on the next endpoint after an unknown outcome (no answer in time), until the
//! call's deadline.
//!
//! ## Producing: batches, backpressure, and exactly-once writes
//!
//! Calling `put_records` yourself is fine for a few records. For a steady flow, a [`Producer`]
//! groups records per shard (up to `batch_records_max` records or `batch_bytes_max` bytes,
//! waiting at most `linger`), keeps a few calls in flight per shard without ever reordering the
//! records of one partition key, makes `send` wait when its buffer is full, and hands back one
//! result per record. With `idempotent: true` every call carries a producer id and sequence, so
//! a call whose outcome is unknown (its shard's leader died mid-write) is simply sent again and
//! the cluster writes its records once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use millrace_client::{Client, Producer, ProducerConfig, PutRecord};
//!
//! let client = Client::connect(["http://127.0.0.1:7101"])?;
//! let config = ProducerConfig { idempotent: true, ..ProducerConfig::default() };
//! let producer = Producer::new(client, "orders", config).await?;
//! let mut results = Vec::new();
//! for i in 0..1000 {
//!     let record = PutRecord::new(format!("customer-{}", i % 10), format!("order {i}").into_bytes());
//!     results.push(producer.send(record).await?); // waits only if the buffer is full
//! }
//! producer.flush().await?;
//! for r in results {
//!     let written = r.await?; // the record's shard and sequence number
//!     # let _ = written;
//! }
//! producer.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Consuming one shard
//!
//! A [`ShardReader`] pulls pages through shard iterators (replacing expired ones itself); a
//! [`ShardSubscription`] is pushed records as they commit, for a registered consumer
//! (`register_consumer`). Both end at a closed shard's end, naming its children, and both tell
//! where to resume (`resume_position`): store it, and a new reader continues exactly after the
//! last record you saw.
//!
//! ```no_run
//! # async fn demo() -> Result<(), millrace_client::ClientError> {
//! use millrace_client::{Client, ShardSubscription, StartPosition};
//!
//! let client = Client::connect(["http://127.0.0.1:7101"])?;
//! let consumer = client.register_consumer("orders", "billing").await?;
//! let mut sub = ShardSubscription::new(
//!     client.clone(),
//!     &consumer.consumer_arn,
//!     "shardId-000000000000",
//!     StartPosition::TrimHorizon,
//! );
//! while let Some(event) = sub.next_event().await? {
//!     for record in &event.records {
//!         println!("{} {}", record.sequence_number, String::from_utf8_lossy(&record.data));
//!     }
//!     if !event.child_shard_ids.is_empty() {
//!         println!("shard closed; continue with {:?}", event.child_shard_ids);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Consumer groups
//!
//! A group shares a stream's shards among its workers: the cluster keeps one lease per shard
//! (owner, epoch, expiry on the server's clock) and its checkpoint. A [`GroupWorker`]
//! heartbeats (renewing its leases, taking free ones and its fair share from busier workers),
//! reads each leased shard from its checkpoint, checkpoints after each page it hands out (a
//! checkpoint from a worker whose lease moved on is refused), starts a closed shard's children
//! only after the shard is finished, and releases its leases when it stops. Delivery is
//! at-least-once. `millrace group consume` and `millrace group describe` are built on it.
//!
//! ## Finding the cluster
//!
//! [`Client::discover`] connects through one or more seeds and learns every member's address
//! (and node id), so the client survives the loss of its seeds and the producer sends each
//! shard's batches straight to the shard leader's node.
//!
//! Runnable versions are in `crates/client/examples/` (`producer`, `consumer`, `group_worker`;
//! e.g. `cargo run -p millrace-client --example producer` against `millrace dev`).

mod connection;
mod consumer;
mod error;
mod group;
mod pipeline;
mod producer;
mod routes;

pub use connection::{Client, ClientConfig};
pub use consumer::{ShardEvent, ShardReader, ShardSubscription};
pub use error::ClientError;
pub use group::GroupWorker;
pub use millrace_proto::limits;
pub use millrace_proto::v1 as proto;
pub use millrace_security::access_sig::Credentials;
pub use producer::{ProduceError, Producer, ProducerConfig, RecordFuture};

/// One record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    pub partition_key: String,
    /// Shared bytes: a retry or a forwarded hop moves them, never copies them.
    pub data: bytes::Bytes,
    pub explicit_hash_key: Option<String>,
}

impl PutRecord {
    pub fn new(partition_key: impl Into<String>, data: impl Into<bytes::Bytes>) -> PutRecord {
        PutRecord {
            partition_key: partition_key.into(),
            data: data.into(),
            explicit_hash_key: None,
        }
    }
}

/// Where a written record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub shard_id: String,
    pub sequence_number: String,
}

/// A per-record failure inside a PutRecords call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub code: String,
    pub message: String,
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtSequenceNumber(String),
    AfterSequenceNumber(String),
    AtTimestampMs(i64),
}

impl std::str::FromStr for StartPosition {
    type Err = String;

    /// `trim-horizon`, `latest`, `at:SEQ`, `after:SEQ`, `at-timestamp:MS`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trim-horizon" => Ok(StartPosition::TrimHorizon),
            "latest" => Ok(StartPosition::Latest),
            _ => {
                if let Some(seq) = s.strip_prefix("at:") {
                    Ok(StartPosition::AtSequenceNumber(seq.into()))
                } else if let Some(seq) = s.strip_prefix("after:") {
                    Ok(StartPosition::AfterSequenceNumber(seq.into()))
                } else if let Some(ms) = s.strip_prefix("at-timestamp:") {
                    ms.parse()
                        .map(StartPosition::AtTimestampMs)
                        .map_err(|_| format!("bad timestamp in {s:?}"))
                } else {
                    Err(format!(
                        "unknown position {s:?}: use trim-horizon, latest, at:SEQ, after:SEQ or at-timestamp:MS"
                    ))
                }
            }
        }
    }
}

/// The open shards of a ListShards answer as (first hash key, last hash key, shard id),
/// sorted by hash key.
pub fn open_shard_ranges(shards: Vec<proto::Shard>) -> Vec<(u128, u128, String)> {
    let mut ranges: Vec<(u128, u128, String)> = shards
        .into_iter()
        .filter(|s| {
            s.sequence_number_range
                .as_ref()
                .is_none_or(|r| r.ending_sequence_number.is_empty())
        })
        .filter_map(|s| {
            let r = s.hash_key_range?;
            Some((
                r.starting_hash_key.parse().ok()?,
                r.ending_hash_key.parse().ok()?,
                s.shard_id,
            ))
        })
        .collect();
    ranges.sort();
    ranges
}

/// A record read from a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence_number: String,
    pub partition_key: String,
    /// A slice of the response it arrived in (no copy).
    pub data: bytes::Bytes,
    pub approximate_arrival_timestamp_ms: i64,
}

impl From<proto::Record> for Record {
    fn from(r: proto::Record) -> Record {
        Record {
            sequence_number: r.sequence_number,
            partition_key: r.partition_key,
            data: r.data,
            approximate_arrival_timestamp_ms: r.approximate_arrival_timestamp_ms,
        }
    }
}

/// One GetRecords answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsPage {
    pub records: Vec<Record>,
    /// Empty once a closed shard is read to its end.
    pub next_shard_iterator: String,
    pub millis_behind_latest: i64,
    pub child_shard_ids: Vec<String>,
}
