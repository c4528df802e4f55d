//! Connections to the cluster: seed endpoints, fail-over, deadlines and retries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_proto::v1 as pb;
use millrace_proto::v1::millrace_client::MillraceClient;
use millrace_security::access_sig::{Credentials, SigningChannel};
use rand::Rng;
use tonic::transport::Endpoint;

use crate::pipeline::Pipelines;
use crate::routes::Routes;
use crate::{ClientError, PutRecord, PutResult, Record, RecordError, RecordsPage, StartPosition};

/// Largest gRPC message the client sends or accepts.
pub(crate) const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Timeouts and retry policy.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of one attempt.
    pub request_timeout: Duration,
    /// Deadline of a whole call, retries included.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The CA (PEM) that `https://` endpoints' certificates must chain to; without one, the
    /// system's trusted roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// The access key every call is signed with (a cluster with `--access-keys` refuses
    /// unsigned calls). Its `Debug` shows the key id only.
    pub credentials: Option<Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            ca_cert: None,
            credentials: None,
        }
    }
}

/// TLS for `https://` endpoints: the configured CA, else the system's roots.
fn client_tls(config: &ClientConfig) -> Result<millrace_security::ClientTls, ClientError> {
    let tls = match &config.ca_cert {
        Some(ca) => millrace_security::ClientTls::with_ca_file(ca),
        None => millrace_security::ClientTls::with_system_roots(),
    };
    tls.map_err(|e| ClientError::InvalidArgument(format!("TLS: {e}")))
}

/// The URL of a member at `grpc_addr` (`HOST:PORT`), in the scheme of the endpoints this
/// client was given: a cluster reached over TLS is reached over TLS everywhere.
pub(crate) fn member_url(endpoints: &[String], grpc_addr: &str) -> String {
    let scheme = if endpoints.iter().any(|u| u.starts_with("https://")) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{grpc_addr}")
}

/// A handle to a Millrace cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    channels: Vec<SigningChannel>,
    current: AtomicUsize,
    config: ClientConfig,
    /// Where writes go first (see [`crate::routes`]).
    routes: Routes,
    /// One PutRecords pipeline per endpoint (see [`crate::pipeline`]).
    pipelines: Pipelines,
}

impl Client {
    /// Connects (lazily) to the given seed endpoints, e.g. `http://127.0.0.1:7101`.
    pub fn connect<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_config(endpoints, ClientConfig::default())
    }

    pub fn with_config<I, S>(endpoints: I, config: ClientConfig) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut urls = Vec::new();
        let mut channels = Vec::new();
        let mut tls: Option<millrace_security::ClientTls> = None;
        let credentials = config.credentials.clone().map(std::sync::Arc::new);
        for e in endpoints {
            let url = e.as_ref().trim().to_string();
            if url.is_empty() {
                continue;
            }
            let url = if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            };
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| ClientError::InvalidArgument(format!("endpoint {url:?}: {e}")))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true);
            let channel = if url.starts_with("https://") {
                if tls.is_none() {
                    tls = Some(client_tls(&config)?);
                }
                let tls = tls.as_ref().expect("set just above");
                endpoint.connect_with_connector_lazy(tls.connector())
            } else if url.starts_with("http://") {
                endpoint.connect_lazy()
            } else {
                return Err(ClientError::InvalidArgument(format!(
                    "endpoint {url:?}: the scheme must be http:// or https://"
                )));
            };
            channels.push(SigningChannel::new(channel, credentials.clone()));
            urls.push(url);
        }
        if channels.is_empty() {
            return Err(ClientError::InvalidArgument("no endpoint given".into()));
        }
        let start = rand::rng().random_range(0..channels.len());
        Ok(Client {
            inner: Arc::new(Inner {
                pipelines: Pipelines::new(&channels),
                urls,
                channels,
                current: AtomicUsize::new(start),
                config,
                routes: Routes::default(),
            }),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.urls
    }

    /// Connects through the seed endpoints, then to every member of the cluster: the returned
    /// client knows each node's gRPC address (DescribeCluster), so it keeps working when the
    /// seeds are down. The seeds stay in the list too.
    pub async fn discover<I, S>(seeds: I, config: ClientConfig) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let seeds: Vec<String> = seeds
            .into_iter()
            .map(|s| s.as_ref().trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let seed_client = Client::with_config(&seeds, config.clone())?;
        let cluster = seed_client.describe_cluster().await?;
        let mut all: Vec<String> = seed_client.inner.urls.clone();
        let mut nodes = BTreeMap::new();
        for node in cluster.nodes {
            if node.grpc_addr.is_empty() {
                continue;
            }
            let url = member_url(&seed_client.inner.urls, &node.grpc_addr);
            let index = match all.iter().position(|u| *u == url) {
                Some(i) => i,
                None => {
                    all.push(url);
                    all.len() - 1
                }
            };
            nodes.insert(node.node_id, index);
        }
        let client = Client::with_config(all, config)?;
        let mut inner = Arc::try_unwrap(client.inner)
            .map_err(|_| ClientError::Unknown("the new client is shared already".into()))?;
        inner.routes = Routes::with_nodes(nodes);
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// This client's endpoints and settings, widened to every member of the cluster (see
    /// [`Client::discover`]); the client itself when the cluster cannot be described (a key
    /// without the cluster permission), which still works, through forwarding hops.
    pub async fn discovered(&self) -> Client {
        match Client::discover(self.endpoints(), self.inner.config.clone()).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "could not discover the cluster's members; using the given endpoints");
                self.clone()
            }
        }
    }

    /// The endpoint index of a node, when this client knows node ids (see [`Client::discover`];
    /// otherwise learned with the first routed write).
    fn node_index(&self, node_id: u64) -> Option<usize> {
        self.inner.routes.node_index(node_id)
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.inner.routes
    }

    /// Runs `f` against the current endpoint, moving to the next one and backing off (with
    /// jitter) on failures that cannot have had an effect, until `call_timeout`.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: FnMut(MillraceClient<SigningChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_at(None, f).await
    }

    /// [`Client::call`] for a call that changes nothing (a read): an unknown outcome (no
    /// answer in time, a connection lost) is retried at the next endpoint too.
    async fn read_call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: FnMut(MillraceClient<SigningChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.attempts(None, true, f).await
    }

    /// Like [`Client::call`], with the first attempt at endpoint `first` when given (a shard
    /// leader's node: no forwarding hop).
    async fn call_at<T, F, Fut>(&self, first: Option<usize>, f: F) -> Result<T, ClientError>
    where
        F: FnMut(MillraceClient<SigningChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.attempts(first, false, f).await
    }

    /// The retry loop of every call; `read` also retries unknown outcomes.
    async fn attempts<T, F, Fut>(
        &self,
        first: Option<usize>,
        read: bool,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(MillraceClient<SigningChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.attempts_at(first, read, |idx| f(self.grpc(idx))).await
    }

    /// The gRPC client of endpoint `idx`.
    fn grpc(&self, idx: usize) -> MillraceClient<SigningChannel> {
        MillraceClient::new(self.inner.channels[idx].clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// [`Client::attempts`] with `f` given the endpoint's index.
    async fn attempts_at<T, F, Fut>(
        &self,
        first: Option<usize>,
        read: bool,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut first = first;
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.call_timeout;
        let mut backoff = cfg.backoff_initial;
        let n = self.inner.channels.len();
        let mut attempts = 0usize;
        loop {
            let idx = first
                .take()
                .unwrap_or_else(|| self.inner.current.load(Ordering::Relaxed))
                % n;
            let result = tokio::time::timeout(cfg.request_timeout, f(idx)).await;
            let err = match result {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => ClientError::from_status(status),
                Err(_) => ClientError::Unknown(format!(
                    "no answer from {} within {:?}",
                    self.inner.urls[idx], cfg.request_timeout
                )),
            };
            attempts += 1;
            if !(err.retryable() || (read && err.outcome_unknown())) {
                return Err(err);
            }
            if Instant::now() + backoff >= deadline {
                return Err(match err {
                    ClientError::Unreachable { last_error, .. } => ClientError::Unreachable {
                        deadline: cfg.call_timeout,
                        last_error,
                    },
                    other => other,
                });
            }
            // Move on to the next endpoint; back off once every endpoint was tried.
            let _ = self.inner.current.compare_exchange(
                idx,
                (idx + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if attempts.is_multiple_of(n) || !matches!(err, ClientError::Unreachable { .. }) {
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }

    pub async fn create_stream(&self, name: &str, shard_count: u32) -> Result<(), ClientError> {
        self.create_stream_with(pb::CreateStreamRequest {
            stream_name: name.into(),
            shard_count,
            ..Default::default()
        })
        .await
    }

    /// CreateStream with every option (replication factor, largest record size).
    pub async fn create_stream_with(
        &self,
        req: pb::CreateStreamRequest,
    ) -> Result<(), ClientError> {
        self.call(|mut c| {
            let req = req.clone();
            async move { c.create_stream(req).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn describe_stream(&self, name: &str) -> Result<pb::StreamDescription, ClientError> {
        let req = pb::DescribeStreamRequest {
            stream_name: name.into(),
        };
        let resp = self
            .read_call(|mut c| {
                let req = req.clone();
                async move { c.describe_stream(req).await }
            })
            .await?;
        resp.stream
            .ok_or_else(|| ClientError::Unknown("DescribeStream answered without a stream".into()))
    }

    /// Polls DescribeStream until the stream is ACTIVE or `timeout` passes.
    pub async fn wait_for_active(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<pb::StreamDescription, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.describe_stream(name).await?;
            if d.status == pb::StreamStatus::Active as i32 {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unknown(format!(
                    "stream {name} not ACTIVE after {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stream name (follows pagination).
    pub async fn list_streams(&self) -> Result<Vec<String>, ClientError> {
        let mut names = Vec::new();
        loop {
            let req = pb::ListStreamsRequest {
                limit: 1000,
                exclusive_start_stream_name: names.last().cloned().unwrap_or_default(),
            };
            let resp = self
                .read_call(|mut c| {
                    let req = req.clone();
                    async move { c.list_streams(req).await }
                })
                .await?;
            let more = resp.has_more_streams && !resp.stream_names.is_empty();
            names.extend(resp.stream_names);
            if !more {
                return Ok(names);
            }
        }
    }

    /// Every shard of a stream (follows pagination).
    pub async fn list_shards(&self, stream: &str) -> Result<Vec<pb::Shard>, ClientError> {
        self.list_shards_filtered(stream, None).await
    }

    /// The shards a ListShards filter selects (follows pagination).
    pub async fn list_shards_filtered(
        &self,
        stream: &str,
        filter: Option<pb::ShardFilter>,
    ) -> Result<Vec<pb::Shard>, ClientError> {
        let mut shards = Vec::new();
        let mut req = pb::ListShardsRequest {
            stream_name: stream.into(),
            shard_filter: filter,
            ..Default::default()
        };
        loop {
            let resp = self
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.list_shards(req).await }
                })
                .await?;
            shards.extend(resp.shards);
            if resp.next_token.is_empty() {
                return Ok(shards);
            }
            req = pb::ListShardsRequest {
                next_token: resp.next_token,
                ..Default::default()
            };
        }
    }

    /// One ListShards call as is (for callers that page themselves).
    pub async fn list_shards_page(
        &self,
        req: pb::ListShardsRequest,
    ) -> Result<pb::ListShardsResponse, ClientError> {
        self.read_call(|mut c| {
            let req = req.clone();
            async move { c.list_shards(req).await }
        })
        .await
    }

    /// Splits a shard at `new_starting_hash_key` (decimal).
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: &str,
    ) -> Result<(), ClientError> {
        let req = pb::SplitShardRequest {
            stream_name: stream.into(),
            shard_to_split: shard_id.into(),
            new_starting_hash_key: new_starting_hash_key.into(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.split_shard(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Merges two adjacent shards.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), ClientError> {
        let req = pb::MergeShardsRequest {
            stream_name: stream.into(),
            shard_to_merge: shard_id.into(),
            adjacent_shard_to_merge: adjacent_shard_id.into(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.merge_shards(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Scales the stream to `target` evenly sized shards (at most double, at least half).
    pub async fn update_shard_count(&self, stream: &str, target: u32) -> Result<(), ClientError> {
        let req = pb::UpdateShardCountRequest {
            stream_name: stream.into(),
            target_shard_count: target,
            scaling_type: pb::ScalingType::UniformScaling as i32,
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.update_shard_count(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Writes records; the result for each record says where it landed or why it failed.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<Result<PutResult, RecordError>>, ClientError> {
        self.put_records_as(stream, records, None).await
    }

    /// PutRecords as an idempotent producer: `(producer id, sequence of the first record)`,
    /// counted per (producer, shard). Sending the same call again (after an unknown outcome)
    /// never writes its records twice; the answer then carries the first write's sequence
    /// numbers.
    pub async fn put_records_as(
        &self,
        stream: &str,
        records: Vec<PutRecord>,
        producer: Option<(&str, u64)>,
    ) -> Result<Vec<Result<PutResult, RecordError>>, ClientError> {
        self.put_records_via(stream, records, producer, None).await
    }

    /// [`Client::put_records_as`], sent first to `leader`'s node when this client knows it
    /// (the shard leader: the write then needs no forwarding hop). Without `leader`, the call
    /// goes first to the node that led the first record's shard when this client last looked
    /// (see [`crate::routes`]).
    pub async fn put_records_via(
        &self,
        stream: &str,
        records: Vec<PutRecord>,
        producer: Option<(&str, u64)>,
        leader: Option<u64>,
    ) -> Result<Vec<Result<PutResult, RecordError>>, ClientError> {
        let first = match leader.and_then(|l| self.node_index(l)) {
            Some(i) => Some(i),
            None => self.leader_endpoint(stream, &records).await,
        };
        let (producer_id, producer_sequence) =
            producer.map_or((String::new(), 0), |(id, seq)| (id.to_string(), seq));
        let req = pb::PutRecordsRequest {
            producer_id,
            producer_sequence,
            stream_name: stream.into(),
            records: records
                .into_iter()
                .map(|r| pb::PutRecordsRequestEntry {
                    partition_key: r.partition_key,
                    data: r.data,
                    explicit_hash_key: r.explicit_hash_key.unwrap_or_default(),
                })
                .collect(),
        };
        // Over the endpoint's pipeline when it serves one, else as a unary call.
        let resp = self
            .attempts_at(first, false, |idx| {
                let req = req.clone();
                async move {
                    match self.inner.pipelines.call(idx, req).await {
                        Ok(answer) => answer.map(tonic::Response::new),
                        Err(req) => self.grpc(idx).put_records(req).await,
                    }
                }
            })
            .await
            .inspect_err(|e| {
                // The shard's leader may have moved; a refused request says nothing of that.
                if e.retryable() || e.outcome_unknown() {
                    self.routes().expire(stream);
                }
            })?;
        Ok(resp
            .records
            .into_iter()
            .map(|r| {
                if r.error_code.is_empty() {
                    Ok(PutResult {
                        shard_id: r.shard_id,
                        sequence_number: r.sequence_number,
                    })
                } else {
                    Err(RecordError {
                        code: r.error_code,
                        message: r.error_message,
                    })
                }
            })
            .collect())
    }

    pub async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartPosition,
    ) -> Result<String, ClientError> {
        use pb::ShardIteratorType as T;
        let (kind, seq, ts) = match position {
            StartPosition::TrimHorizon => (T::TrimHorizon, String::new(), 0),
            StartPosition::Latest => (T::Latest, String::new(), 0),
            StartPosition::AtSequenceNumber(s) => (T::AtSequenceNumber, s, 0),
            StartPosition::AfterSequenceNumber(s) => (T::AfterSequenceNumber, s, 0),
            StartPosition::AtTimestampMs(ms) => (T::AtTimestamp, String::new(), ms),
        };
        let req = pb::GetShardIteratorRequest {
            stream_name: stream.into(),
            shard_id: shard_id.into(),
            shard_iterator_type: kind as i32,
            starting_sequence_number: seq,
            timestamp_ms: ts,
        };
        let resp = self
            .read_call(|mut c| {
                let req = req.clone();
                async move { c.get_shard_iterator(req).await }
            })
            .await?;
        Ok(resp.shard_iterator)
    }

    pub async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, ClientError> {
        let req = pb::GetRecordsRequest {
            shard_iterator: iterator.into(),
            limit,
        };
        // First at the shard leader's node, which serves the read without a forwarding hop.
        let first = self.iterator_endpoint(iterator).await;
        let resp = self
            .attempts(first, true, |mut c| {
                let req = req.clone();
                async move { c.get_records(req).await }
            })
            .await?;
        Ok(RecordsPage {
            records: resp.records.into_iter().map(Record::from).collect(),
            next_shard_iterator: resp.next_shard_iterator,
            millis_behind_latest: resp.millis_behind_latest,
            child_shard_ids: resp.child_shards.into_iter().map(|c| c.shard_id).collect(),
        })
    }

    /// Deletes a stream and, on every node, its shards' data.
    pub async fn delete_stream(&self, name: &str) -> Result<(), ClientError> {
        let req = pb::DeleteStreamRequest {
            stream_name: name.into(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.delete_stream(req).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn add_tags(
        &self,
        stream: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let req = pb::AddTagsToStreamRequest {
            stream_name: stream.into(),
            tags: tags.into_iter().collect(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.add_tags_to_stream(req).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn remove_tags(&self, stream: &str, keys: Vec<String>) -> Result<(), ClientError> {
        let req = pb::RemoveTagsFromStreamRequest {
            stream_name: stream.into(),
            tag_keys: keys,
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.remove_tags_from_stream(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Every tag of a stream (follows pagination).
    pub async fn list_tags(&self, stream: &str) -> Result<BTreeMap<String, String>, ClientError> {
        let mut tags = BTreeMap::new();
        let mut start = String::new();
        loop {
            let req = pb::ListTagsForStreamRequest {
                stream_name: stream.into(),
                exclusive_start_tag_key: start.clone(),
                limit: 0,
            };
            let resp = self
                .read_call(|mut c| {
                    let req = req.clone();
                    async move { c.list_tags_for_stream(req).await }
                })
                .await?;
            if let Some(last) = resp.tags.last() {
                start = last.key.clone();
            }
            let more = resp.has_more_tags && !resp.tags.is_empty();
            tags.extend(resp.tags.into_iter().map(|t| (t.key, t.value)));
            if !more {
                return Ok(tags);
            }
        }
    }

    /// Sets the retention period, increasing or decreasing it as needed.
    pub async fn set_retention_hours(&self, stream: &str, hours: u32) -> Result<(), ClientError> {
        let current = self.describe_stream(stream).await?.retention_period_hours;
        let req = pb::UpdateRetentionPeriodRequest {
            stream_name: stream.into(),
            retention_period_hours: hours,
        };
        self.call(|mut c| {
            let req = req.clone();
            async move {
                if hours >= current {
                    c.increase_stream_retention_period(req).await
                } else {
                    c.decrease_stream_retention_period(req).await
                }
            }
        })
        .await
        .map(|_| ())
    }

    /// The cluster status as the metadata leader sees it (JSON, see `docs/operations.md`).
    pub async fn cluster_status(&self) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .read_call(
                |mut c| async move { c.get_cluster_status(pb::GetClusterStatusRequest {}).await },
            )
            .await?;
        serde_json::from_str(&resp.status_json)
            .map_err(|e| ClientError::Unknown(format!("bad status JSON: {e}")))
    }

    /// Starts decommissioning a node: its replicas and leaderships move away, then it leaves.
    pub async fn decommission_node(&self, node_id: u64) -> Result<(), ClientError> {
        self.call(|mut c| async move {
            c.decommission_node(pb::DecommissionNodeRequest { node_id })
                .await
        })
        .await
        .map(|_| ())
    }

    /// Creates an access key; its secret is answered only here. Needs the cluster permission.
    pub async fn create_access_key(&self) -> Result<pb::CreateAccessKeyResponse, ClientError> {
        self.call(|mut c| async move { c.create_access_key(pb::CreateAccessKeyRequest {}).await })
            .await
    }

    /// Every access key (bootstrap and created), without secrets.
    pub async fn list_access_keys(&self) -> Result<Vec<pb::AccessKeyInfo>, ClientError> {
        self.read_call(
            |mut c| async move { c.list_access_keys(pb::ListAccessKeysRequest {}).await },
        )
        .await
        .map(|r| r.keys)
    }

    /// Deletes an access key and its policy.
    pub async fn delete_access_key(&self, key_id: &str) -> Result<(), ClientError> {
        let access_key_id = key_id.to_string();
        self.call(|mut c| {
            let access_key_id = access_key_id.clone();
            async move {
                c.delete_access_key(pb::DeleteAccessKeyRequest { access_key_id })
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Sets an access key's policy (a JSON document; see docs/security.md).
    pub async fn put_policy(&self, key_id: &str, policy_json: &str) -> Result<(), ClientError> {
        let req = pb::PutPolicyRequest {
            access_key_id: key_id.to_string(),
            policy_json: policy_json.to_string(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.put_policy(req).await }
        })
        .await
        .map(|_| ())
    }

    /// An access key's policy (JSON).
    pub async fn get_policy(&self, key_id: &str) -> Result<String, ClientError> {
        let access_key_id = key_id.to_string();
        self.read_call(|mut c| {
            let access_key_id = access_key_id.clone();
            async move { c.get_policy(pb::GetPolicyRequest { access_key_id }).await }
        })
        .await
        .map(|r| r.policy_json)
    }

    /// Removes an access key's policy (it may then do nothing).
    pub async fn delete_policy(&self, key_id: &str) -> Result<(), ClientError> {
        let access_key_id = key_id.to_string();
        self.call(|mut c| {
            let access_key_id = access_key_id.clone();
            async move {
                c.delete_policy(pb::DeletePolicyRequest { access_key_id })
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Sets the Kinesis resource policy (IAM JSON) of a stream or consumer ARN.
    pub async fn put_resource_policy(&self, arn: &str, policy: &str) -> Result<(), ClientError> {
        let req = pb::PutResourcePolicyRequest {
            resource_arn: arn.to_string(),
            policy: policy.to_string(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.put_resource_policy(req).await }
        })
        .await
        .map(|_| ())
    }

    /// The resource policy of a stream or consumer ARN (`{}` when it has none).
    pub async fn get_resource_policy(&self, arn: &str) -> Result<String, ClientError> {
        let resource_arn = arn.to_string();
        self.read_call(|mut c| {
            let resource_arn = resource_arn.clone();
            async move {
                c.get_resource_policy(pb::GetResourcePolicyRequest { resource_arn })
                    .await
            }
        })
        .await
        .map(|r| r.policy)
    }

    /// Removes the resource policy of a stream or consumer ARN.
    pub async fn delete_resource_policy(&self, arn: &str) -> Result<(), ClientError> {
        let resource_arn = arn.to_string();
        self.call(|mut c| {
            let resource_arn = resource_arn.clone();
            async move {
                c.delete_resource_policy(pb::DeleteResourcePolicyRequest { resource_arn })
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Moves one replica of a shard from one node to another (completes in the background).
    pub async fn move_shard_replica(
        &self,
        stream: &str,
        shard_id: &str,
        from: u64,
        to: u64,
    ) -> Result<(), ClientError> {
        let req = pb::MoveShardReplicaRequest {
            stream_name: stream.into(),
            shard_id: shard_id.into(),
            from_node_id: from,
            to_node_id: to,
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.move_shard_replica(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Registers an enhanced fan-out consumer; returns it (with its ConsumerARN).
    pub async fn register_consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<pb::Consumer, ClientError> {
        let req = pb::RegisterStreamConsumerRequest {
            stream_arn: stream.into(),
            consumer_name: name.into(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_stream_consumer(req).await }
            })
            .await?;
        resp.consumer.ok_or_else(|| {
            ClientError::Unknown("RegisterStreamConsumer answered without a consumer".into())
        })
    }

    pub async fn deregister_consumer(&self, stream: &str, name: &str) -> Result<(), ClientError> {
        let req = pb::DeregisterStreamConsumerRequest {
            stream_arn: stream.into(),
            consumer_name: name.into(),
            consumer_arn: String::new(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.deregister_stream_consumer(req).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn list_consumers(&self, stream: &str) -> Result<Vec<pb::Consumer>, ClientError> {
        let req = pb::ListStreamConsumersRequest {
            stream_arn: stream.into(),
        };
        let resp = self
            .read_call(|mut c| {
                let req = req.clone();
                async move { c.list_stream_consumers(req).await }
            })
            .await?;
        Ok(resp.consumers)
    }

    pub async fn describe_consumer(&self, consumer_arn: &str) -> Result<pb::Consumer, ClientError> {
        let req = pb::DescribeStreamConsumerRequest {
            consumer_arn: consumer_arn.into(),
            ..Default::default()
        };
        let resp = self
            .read_call(|mut c| {
                let req = req.clone();
                async move { c.describe_stream_consumer(req).await }
            })
            .await?;
        resp.consumer.ok_or_else(|| {
            ClientError::Unknown("DescribeStreamConsumer answered without a consumer".into())
        })
    }

    /// Subscribes a registered consumer to one shard: records are pushed as they commit.
    pub async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: StartPosition,
    ) -> Result<tonic::Streaming<pb::SubscribeToShardEvent>, ClientError> {
        use pb::ShardIteratorType as T;
        let (kind, seq, ts) = match position {
            StartPosition::TrimHorizon => (T::TrimHorizon, String::new(), 0),
            StartPosition::Latest => (T::Latest, String::new(), 0),
            StartPosition::AtSequenceNumber(s) => (T::AtSequenceNumber, s, 0),
            StartPosition::AfterSequenceNumber(s) => (T::AfterSequenceNumber, s, 0),
            StartPosition::AtTimestampMs(ms) => (T::AtTimestamp, String::new(), ms),
        };
        let req = pb::SubscribeToShardRequest {
            consumer_arn: consumer_arn.into(),
            shard_id: shard_id.into(),
            starting_position: Some(pb::StartingPosition {
                r#type: kind as i32,
                sequence_number: seq,
                timestamp_ms: ts,
            }),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.subscribe_to_shard(req).await }
        })
        .await
    }

    /// A consumer-group worker's heartbeat: renews its leases and takes free or fair-share
    /// ones; answers the leases it holds now.
    pub async fn group_heartbeat(
        &self,
        stream: &str,
        group: &str,
        worker_id: &str,
        lease_ms: u32,
    ) -> Result<Vec<pb::ShardLease>, ClientError> {
        let req = pb::ConsumerGroupHeartbeatRequest {
            stream_name: stream.into(),
            group: group.into(),
            worker_id: worker_id.into(),
            lease_ms,
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.consumer_group_heartbeat(req).await }
            })
            .await?;
        Ok(resp.leases)
    }

    /// Stores a checkpoint for a held lease; refused (`RESOURCE_IN_USE`) once the lease moved
    /// on to another owner or epoch.
    pub async fn checkpoint_lease(
        &self,
        stream: &str,
        group: &str,
        worker_id: &str,
        lease: &pb::ShardLease,
        sequence_number: &str,
        shard_finished: bool,
    ) -> Result<(), ClientError> {
        let req = pb::CheckpointLeaseRequest {
            stream_name: stream.into(),
            group: group.into(),
            worker_id: worker_id.into(),
            shard_id: lease.shard_id.clone(),
            epoch: lease.epoch,
            sequence_number: sequence_number.into(),
            shard_finished,
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.checkpoint_lease(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Frees every lease a worker holds (when it shuts down).
    pub async fn release_leases(
        &self,
        stream: &str,
        group: &str,
        worker_id: &str,
    ) -> Result<(), ClientError> {
        let req = pb::ReleaseLeasesRequest {
            stream_name: stream.into(),
            group: group.into(),
            worker_id: worker_id.into(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.release_leases(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Every lease of a group (owner, epoch, expiry, checkpoint) and its live workers.
    pub async fn describe_consumer_group(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<pb::DescribeConsumerGroupResponse, ClientError> {
        let req = pb::DescribeConsumerGroupRequest {
            stream_name: stream.into(),
            group: group.into(),
        };
        self.read_call(|mut c| {
            let req = req.clone();
            async move { c.describe_consumer_group(req).await }
        })
        .await
    }

    /// Each endpoint's write-path counters (GetNodeStats), asked of that endpoint only: an
    /// endpoint that does not answer is left out.
    pub async fn node_stats(&self) -> Vec<pb::GetNodeStatsResponse> {
        let asks = (0..self.inner.channels.len()).map(|idx| async move {
            let mut c = self.grpc(idx);
            let ask = c.get_node_stats(pb::GetNodeStatsRequest {});
            match tokio::time::timeout(self.inner.config.request_timeout, ask).await {
                Ok(Ok(r)) => Some(r.into_inner()),
                _ => None,
            }
        });
        let mut stats: Vec<_> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        // Seeds and discovered members may name one node twice.
        stats.sort_by_key(|s| s.node_id);
        stats.dedup_by_key(|s| s.node_id);
        stats
    }

    pub async fn describe_cluster(&self) -> Result<pb::DescribeClusterResponse, ClientError> {
        self.read_call(
            |mut c| async move { c.describe_cluster(pb::DescribeClusterRequest {}).await },
        )
        .await
    }
}
