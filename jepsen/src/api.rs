//! The two ways the workload reaches the cluster: the native gRPC client, and the Kinesis HTTP
//! API (JSON, as the AWS SDKs speak it). Both classify every error the way the history needs:
//! `Fail` only when the operation definitely did not happen, `Info` when it may have.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use millrace_client::{Client, ClientConfig, ClientError, PutRecord, StartPosition};
use rand::Rng;
use serde_json::{json, Value};

/// Why an operation did not complete `ok`.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Definitely did not happen.
    Fail(String),
    /// May have happened.
    Info(String),
    /// The shard iterator expired (definite; take a new one).
    Expired,
}

impl Failure {
    pub fn text(&self) -> String {
        match self {
            Failure::Fail(t) | Failure::Info(t) => t.clone(),
            Failure::Expired => "iterator expired".into(),
        }
    }
}

/// One record read.
#[derive(Debug, Clone)]
pub struct Got {
    pub sequence: String,
    pub data: Vec<u8>,
}

/// A page of records; `next` is `None` at a closed shard's end.
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<Got>,
    pub next: Option<String>,
}

/// Client timeouts: short, so that an op stuck behind a fault ends (`info`) and the worker
/// goes on.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(3),
        call_timeout: Duration::from_secs(6),
        connect_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

/// The data path of the workload.
#[derive(Clone)]
pub enum Api {
    Native(Client),
    Kinesis(Box<KinesisHttp>),
}

fn classify(e: ClientError) -> Failure {
    match &e {
        ClientError::Server { symbol, .. } if symbol == "EXPIRED_ITERATOR" => Failure::Expired,
        _ if e.outcome_unknown() => Failure::Info(e.to_string()),
        _ => Failure::Fail(e.to_string()),
    }
}

impl Api {
    /// Writes `values` (one record each, data = the value in decimal) to the shard owning
    /// `hash_key`; returns (shard id, sequence number) of each.
    pub async fn put(
        &self,
        stream: &str,
        hash_key: &str,
        values: &[u64],
        producer: Option<(&str, u64)>,
    ) -> Result<Vec<(String, String)>, Failure> {
        match self {
            Api::Native(c) => {
                let records = values
                    .iter()
                    .map(|v| PutRecord {
                        partition_key: format!("v{v}"),
                        data: v.to_string().into_bytes().into(),
                        explicit_hash_key: Some(hash_key.to_string()),
                    })
                    .collect();
                let results = c
                    .put_records_as(stream, records, producer)
                    .await
                    .map_err(classify)?;
                let mut out = Vec::new();
                for r in results {
                    match r {
                        Ok(p) => out.push((p.shard_id, p.sequence_number)),
                        // Every record of the call went to one shard in one batch: one fate.
                        Err(e) if e.code == "UNKNOWN_OUTCOME" => {
                            return Err(Failure::Info(format!("{}: {}", e.code, e.message)))
                        }
                        Err(e) => return Err(Failure::Fail(format!("{}: {}", e.code, e.message))),
                    }
                }
                Ok(out)
            }
            Api::Kinesis(k) => k.put(stream, hash_key, values).await,
        }
    }

    pub async fn iterator(
        &self,
        stream: &str,
        shard: &str,
        after: Option<&str>,
    ) -> Result<String, Failure> {
        match self {
            Api::Native(c) => {
                let from = match after {
                    Some(s) => StartPosition::AfterSequenceNumber(s.to_string()),
                    None => StartPosition::TrimHorizon,
                };
                c.get_shard_iterator(stream, shard, from)
                    .await
                    .map_err(classify)
            }
            Api::Kinesis(k) => k.iterator(stream, shard, after).await,
        }
    }

    pub async fn records(&self, iterator: &str, limit: u32) -> Result<Page, Failure> {
        match self {
            Api::Native(c) => {
                let page = c.get_records(iterator, limit).await.map_err(classify)?;
                Ok(Page {
                    records: page
                        .records
                        .into_iter()
                        .map(|r| Got {
                            sequence: r.sequence_number,
                            data: r.data.to_vec(),
                        })
                        .collect(),
                    next: (!page.next_shard_iterator.is_empty())
                        .then_some(page.next_shard_iterator),
                })
            }
            Api::Kinesis(k) => k.records(iterator, limit).await,
        }
    }
}

/// A Kinesis HTTP API client (JSON 1.1, unsigned: the nodes run without access keys), spread
/// over every node's HTTP address.
#[derive(Clone)]
pub struct KinesisHttp {
    addrs: Vec<String>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl KinesisHttp {
    pub fn new(addrs: Vec<String>) -> KinesisHttp {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        KinesisHttp {
            addrs,
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
        }
    }

    /// One call to a random node: the JSON answer, or how it failed.
    async fn call(&self, action: &str, body: Value) -> Result<Value, Failure> {
        let addr = &self.addrs[rand::rng().random_range(0..self.addrs.len())];
        let req = hyper::Request::post(format!("http://{addr}/"))
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("Kinesis_20131202.{action}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Failure::Fail(format!("building the request: {e}")))?;
        let call = async {
            let resp = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Failure::Fail(format!("connect {addr}: {e}"))
                } else {
                    Failure::Info(format!("{addr}: {e}"))
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Info(format!("{addr}: reading the answer: {e}")))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(v);
            }
            let kind = v["__type"].as_str().unwrap_or("").to_string();
            let text = format!("{status} {kind}: {}", v["message"].as_str().unwrap_or(""));
            Err(if kind.contains("ExpiredIterator") {
                Failure::Expired
            } else if status.is_server_error() {
                // InternalFailure and the like: the write may have happened.
                Failure::Info(text)
            } else {
                Failure::Fail(text)
            })
        };
        tokio::time::timeout(Duration::from_secs(4), call)
            .await
            .unwrap_or_else(|_| Err(Failure::Info(format!("{addr}: {action} timed out"))))
    }

    async fn put(
        &self,
        stream: &str,
        hash_key: &str,
        values: &[u64],
    ) -> Result<Vec<(String, String)>, Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let records: Vec<Value> = values
            .iter()
            .map(|v| {
                json!({
                    "Data": b64.encode(v.to_string()),
                    "PartitionKey": format!("v{v}"),
                    "ExplicitHashKey": hash_key,
                })
            })
            .collect();
        let v = self
            .call(
                "PutRecords",
                json!({"StreamName": stream, "Records": records}),
            )
            .await?;
        let mut out = Vec::new();
        for r in v["Records"].as_array().into_iter().flatten() {
            if let Some(code) = r["ErrorCode"].as_str() {
                let text = format!("{code}: {}", r["ErrorMessage"].as_str().unwrap_or(""));
                return Err(if code == "InternalFailure" {
                    Failure::Info(text)
                } else {
                    Failure::Fail(text)
                });
            }
            out.push((
                r["ShardId"].as_str().unwrap_or("").to_string(),
                r["SequenceNumber"].as_str().unwrap_or("").to_string(),
            ));
        }
        if out.len() != values.len() {
            return Err(Failure::Info(format!("PutRecords answered {v}")));
        }
        Ok(out)
    }

    async fn iterator(
        &self,
        stream: &str,
        shard: &str,
        after: Option<&str>,
    ) -> Result<String, Failure> {
        let mut body = json!({"StreamName": stream, "ShardId": shard});
        match after {
            Some(s) => {
                body["ShardIteratorType"] = json!("AFTER_SEQUENCE_NUMBER");
                body["StartingSequenceNumber"] = json!(s);
            }
            None => body["ShardIteratorType"] = json!("TRIM_HORIZON"),
        }
        let v = self.call("GetShardIterator", body).await?;
        v["ShardIterator"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::Fail(format!("GetShardIterator answered {v}")))
    }

    async fn records(&self, iterator: &str, limit: u32) -> Result<Page, Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let v = self
            .call(
                "GetRecords",
                json!({"ShardIterator": iterator, "Limit": limit}),
            )
            .await
            .map_err(|f| match f {
                // A read changes nothing: however it failed, it did not happen.
                Failure::Info(t) => Failure::Fail(t),
                f => f,
            })?;
        let mut records = Vec::new();
        for r in v["Records"].as_array().into_iter().flatten() {
            records.push(Got {
                sequence: r["SequenceNumber"].as_str().unwrap_or("").to_string(),
                data: b64
                    .decode(r["Data"].as_str().unwrap_or(""))
                    .unwrap_or_default(),
            });
        }
        Ok(Page {
            records,
            next: v["NextShardIterator"].as_str().map(str::to_string),
        })
    }
}
