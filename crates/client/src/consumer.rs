//! Reading one shard: [`ShardReader`] pulls pages with GetRecords and shard iterators;
//! [`ShardSubscription`] is pushed records through SubscribeToShard. Both remember the last
//! sequence number they returned, so a reader can resume after it (`StartPosition::
//! AfterSequenceNumber`), and both end at a closed shard's end with its children.
//!
//! ```no_run
//! # async fn demo() -> Result<(), millrace_client::ClientError> {
//! use millrace_client::{Client, ShardReader, StartPosition};
//! let client = Client::connect(["http://127.0.0.1:7101"])?;
//! let mut reader =
//!     ShardReader::new(client, "orders", "shardId-000000000000", StartPosition::TrimHorizon).await?;
//! while let Some(page) = reader.next_page(1000).await? {
//!     for r in &page.records {
//!         println!("{} {:?}", r.sequence_number, r.data);
//!     }
//!     if page.records.is_empty() && page.millis_behind_latest == 0 {
//!         break; // caught up
//!     }
//! }
//! // Later: carry on after the last record handed out.
//! let resume = reader.resume_position();
//! # let _ = resume; Ok(()) }
//! ```

use crate::proto as pb;
use crate::{Client, ClientError, Record, RecordsPage, StartPosition};

/// Just after the last record handed out, or `otherwise` before the first.
fn resume_after(last_sequence: &Option<String>, otherwise: &StartPosition) -> StartPosition {
    match last_sequence {
        Some(seq) => StartPosition::AfterSequenceNumber(seq.clone()),
        None => otherwise.clone(),
    }
}

/// How long a subscription's renewal waits out a recent subscription of the same consumer and
/// shard (Kinesis refuses one within 5 s of the last), and how often it tries meanwhile.
const RESUBSCRIBE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(6);
const RESUBSCRIBE_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// A pull reader of one shard over shard iterators. An expired iterator is replaced
/// transparently, from just after the last record returned.
pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: String,
    start: StartPosition,
    iterator: Option<String>,
    last_sequence: Option<String>,
    ended: bool,
}

impl ShardReader {
    pub async fn new(
        client: Client,
        stream: &str,
        shard_id: &str,
        from: StartPosition,
    ) -> Result<ShardReader, ClientError> {
        let iterator = client
            .get_shard_iterator(stream, shard_id, from.clone())
            .await?;
        Ok(ShardReader {
            client,
            stream: stream.to_string(),
            shard_id: shard_id.to_string(),
            start: from,
            iterator: Some(iterator),
            last_sequence: None,
            ended: false,
        })
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Where to start a new reader so that it continues exactly after this one.
    pub fn resume_position(&self) -> StartPosition {
        resume_after(&self.last_sequence, &self.start)
    }

    /// The next page (possibly empty when caught up); `None` once the shard is closed and read
    /// to its end (the last page names its children in `child_shard_ids`).
    pub async fn next_page(&mut self, limit: u32) -> Result<Option<RecordsPage>, ClientError> {
        if self.ended {
            return Ok(None);
        }
        let iterator = match self.iterator.take() {
            Some(it) => it,
            None => {
                self.client
                    .get_shard_iterator(&self.stream, &self.shard_id, self.resume_position())
                    .await?
            }
        };
        let page = match self.client.get_records(&iterator, limit).await {
            Ok(page) => page,
            Err(ClientError::Server { symbol, .. }) if symbol == "EXPIRED_ITERATOR" => {
                // Resume from where this reader stopped with a fresh iterator.
                let fresh = self
                    .client
                    .get_shard_iterator(&self.stream, &self.shard_id, self.resume_position())
                    .await?;
                self.client.get_records(&fresh, limit).await?
            }
            Err(e) => {
                self.iterator = Some(iterator);
                return Err(e);
            }
        };
        if let Some(last) = page.records.last() {
            self.last_sequence = Some(last.sequence_number.clone());
        }
        if page.next_shard_iterator.is_empty() {
            self.ended = true;
        } else {
            self.iterator = Some(page.next_shard_iterator.clone());
        }
        Ok(Some(page))
    }
}

/// One event of a [`ShardSubscription`].
#[derive(Debug, Clone)]
pub struct ShardEvent {
    pub records: Vec<Record>,
    pub millis_behind_latest: i64,
    /// Set on the last event of a closed shard.
    pub child_shard_ids: Vec<String>,
}

/// A push reader of one shard for a registered consumer (SubscribeToShard). Subscriptions end
/// after 5 minutes; this renews them from the continuation point.
pub struct ShardSubscription {
    client: Client,
    consumer_arn: String,
    shard_id: String,
    position: StartPosition,
    events: Option<tonic::Streaming<pb::SubscribeToShardEvent>>,
    last_sequence: Option<String>,
    ended: bool,
}

impl ShardSubscription {
    pub fn new(
        client: Client,
        consumer_arn: &str,
        shard_id: &str,
        from: StartPosition,
    ) -> ShardSubscription {
        ShardSubscription {
            client,
            consumer_arn: consumer_arn.to_string(),
            shard_id: shard_id.to_string(),
            position: from,
            events: None,
            last_sequence: None,
            ended: false,
        }
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Where to start again to continue right after the last record returned.
    pub fn resume_position(&self) -> StartPosition {
        resume_after(&self.last_sequence, &self.position)
    }

    /// Subscribes from the current position. As in Kinesis, a consumer may subscribe to a
    /// shard again only 5 s after its last subscription (`RESOURCE_IN_USE` before): a renewal
    /// right after an error waits that out.
    async fn subscribe(
        &self,
    ) -> Result<tonic::Streaming<crate::proto::SubscribeToShardEvent>, ClientError> {
        let deadline = tokio::time::Instant::now() + RESUBSCRIBE_WAIT_MAX;
        loop {
            let attempt = self
                .client
                .subscribe_to_shard(&self.consumer_arn, &self.shard_id, self.position.clone())
                .await;
            match attempt {
                Err(e)
                    if e.symbol() == Some("RESOURCE_IN_USE")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// The next event; `None` after the closed shard's last event.
    pub async fn next_event(&mut self) -> Result<Option<ShardEvent>, ClientError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let events = match self.events.as_mut() {
                Some(events) => events,
                None => {
                    let events = self.subscribe().await?;
                    self.events.insert(events)
                }
            };
            match events.message().await {
                Ok(Some(e)) => {
                    self.position = StartPosition::AtSequenceNumber(e.continuation_sequence_number);
                    if let Some(last) = e.records.last() {
                        self.last_sequence = Some(last.sequence_number.clone());
                    }
                    self.ended = !e.child_shards.is_empty();
                    return Ok(Some(ShardEvent {
                        records: e.records.into_iter().map(Record::from).collect(),
                        millis_behind_latest: e.millis_behind_latest,
                        child_shard_ids: e.child_shards.into_iter().map(|c| c.shard_id).collect(),
                    }));
                }
                // The subscription's 5 minutes are up: renew it from the continuation point.
                Ok(None) => self.events = None,
                Err(status) => {
                    self.events = None;
                    return Err(ClientError::from_status(status));
                }
            }
        }
    }
}
