//! The `serve` configuration: one typed struct, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a node needs to start. Built from flags (and `MILLRACE_*` environment variables).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub zone: String,
    /// Initial metadata voters: node id → gRPC address. Every initial node gets the same list.
    pub peers: BTreeMap<u64, String>,
    /// Join a running cluster through this node's gRPC address (instead of `peers`).
    pub join: Option<String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Shards one stream may have.
    pub shards_per_stream_max: u32,
    /// Shards the whole cluster may have (checked when a stream is created).
    pub shards_per_cluster_max: u32,
    /// Replicas per shard when CreateStream does not say.
    pub default_replication_factor: u32,
    /// Shard iterator lifetime. Kinesis fixes it at 5 minutes; only tests shorten it
    /// (`MILLRACE_TEST_ITERATOR_TTL_MS`).
    pub iterator_ttl_ms: i64,
    /// How often each shard leader looks for expired records (and replicas apply marks).
    pub retention_check_interval_ms: u64,
    /// Test-only: retention periods are read as this many *seconds* for every stream
    /// (`MILLRACE_TEST_RETENTION_SECONDS`); production bounds (24-8760 hours) stay as they are.
    pub test_retention_seconds: Option<u64>,
    /// Size at which a segment file is sealed and a new one started.
    pub segment_bytes_max: u64,
    /// How a flush round makes the segment files it covers durable.
    pub flush_sync: millrace_storage::SyncMethod,
    /// Enforce Kinesis's per-shard throughput limits (off by default).
    pub shard_throttling: bool,
    /// A node silent for longer than this has its replicas re-created elsewhere.
    pub dead_node_timeout: std::time::Duration,
    /// The Kinesis HTTP API: ARNs and request authentication.
    pub kinesis: KinesisConfig,
}

/// What the Kinesis HTTP API needs beyond the cluster: the region and account that ARNs name,
/// and the access keys whose SigV4 signatures it accepts (none: any signature is accepted).
#[derive(Debug, Clone)]
pub struct KinesisConfig {
    pub region: String,
    pub account_id: String,
    pub access_keys: AccessKeys,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            access_keys: AccessKeys::default(),
        }
    }
}

impl KinesisConfig {
    /// `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
    pub fn stream_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{name}",
            self.region, self.account_id
        )
    }
}

/// Access key id → secret access key. Its `Debug` shows the key ids only, never a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AccessKeys(BTreeMap<String, String>);

impl AccessKeys {
    /// Parses `KEY_ID:SECRET,KEY_ID:SECRET`.
    pub fn parse(text: &str) -> Result<AccessKeys, String> {
        let mut keys = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, secret) = part
                .split_once(':')
                .filter(|(id, secret)| !id.is_empty() && !secret.is_empty())
                .ok_or("--access-keys entries must be KEY_ID:SECRET")?;
            if keys.insert(id.to_string(), secret.to_string()).is_some() {
                return Err(format!("--access-keys names key {id} twice"));
            }
        }
        Ok(AccessKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn secret(&self, key_id: &str) -> Option<&str> {
        self.0.get(key_id).map(String::as_str)
    }
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl ServeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("--node-id must be at least 1".into());
        }
        if self.zone.is_empty() {
            return Err("--zone must not be empty".into());
        }
        if self.peers.is_empty() == self.join.is_none() {
            return Err(
                "give exactly one of --peers (an initial node) and --join (a new node)".into(),
            );
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return Err(format!(
                "--peers must include this node ({}) among the initial voters",
                self.node_id
            ));
        }
        if let Some(addr) = self.peers.get(&self.node_id) {
            if addr.parse::<SocketAddr>().ok() != Some(self.grpc_addr) {
                return Err(format!(
                    "--peers lists node {} at {addr}, but --grpc-addr is {}",
                    self.node_id, self.grpc_addr
                ));
            }
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err("election timeout must exceed the heartbeat interval".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("election timeout max must exceed its min".into());
        }
        if self.shards_per_stream_max == 0
            || self.shards_per_stream_max > self.shards_per_cluster_max
        {
            return Err(
                "--shards-per-stream-max must be between 1 and --shards-per-cluster-max".into(),
            );
        }
        if !(1_000..=300_000).contains(&self.iterator_ttl_ms) {
            return Err("the iterator lifetime must be between 1 s and 5 minutes".into());
        }
        if !(100..=3_600_000).contains(&self.retention_check_interval_ms) {
            return Err("the retention check interval must be between 100 ms and 1 hour".into());
        }
        if !(4096..=1 << 30).contains(&self.segment_bytes_max) {
            return Err("the segment size must be between 4 KiB and 1 GiB".into());
        }
        if self.dead_node_timeout < std::time::Duration::from_secs(2) {
            return Err("--dead-node-timeout must be at least 2s".into());
        }
        if !matches!(self.default_replication_factor, 1 | 3 | 5) {
            return Err("replication factor must be 1, 3 or 5".into());
        }
        let k = &self.kinesis;
        let region_ok = !k.region.is_empty()
            && k.region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(format!(
                "--region {:?} must be lowercase letters, digits and '-'",
                k.region
            ));
        }
        if k.account_id.len() != 12 || !k.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("--account-id {:?} must be 12 digits", k.account_id));
        }
        Ok(())
    }
}

/// Parses `1=127.0.0.1:7101,2=127.0.0.1:7102`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--peers entry {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--peers entry {part:?}: node id is not a number"))?;
        let addr = addr.trim();
        addr.parse::<SocketAddr>()
            .map_err(|_| format!("--peers entry {part:?}: {addr:?} is not HOST:PORT"))?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("--peers names node {id} twice"));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_validate() {
        let p = parse_peers("1=127.0.0.1:7101, 2=127.0.0.1:7102").unwrap();
        assert_eq!(p.len(), 2);
        assert!(parse_peers("1=nope").is_err());
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        let cfg = ServeConfig {
            node_id: 3,
            data_dir: "/tmp/x".into(),
            grpc_addr: "127.0.0.1:7103".parse().unwrap(),
            http_addr: "127.0.0.1:4569".parse().unwrap(),
            zone: "c".into(),
            peers: p,
            join: None,
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            shards_per_stream_max: 1000,
            shards_per_cluster_max: 10_000,
            default_replication_factor: 3,
            iterator_ttl_ms: 300_000,
            retention_check_interval_ms: 60_000,
            test_retention_seconds: None,
            segment_bytes_max: 64 * 1024 * 1024,
            flush_sync: millrace_storage::SyncMethod::Auto,
            shard_throttling: false,
            dead_node_timeout: std::time::Duration::from_secs(300),
            kinesis: KinesisConfig::default(),
        };
        assert!(cfg.validate().unwrap_err().contains("--peers must include"));
    }

    #[test]
    fn access_keys_parse_and_never_show_secrets() {
        let keys = AccessKeys::parse("AKID1:s3cret, AKID2:other").unwrap();
        assert_eq!(keys.secret("AKID1"), Some("s3cret"));
        assert_eq!(keys.secret("nope"), None);
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("AKID1") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(AccessKeys::parse("AKID1").is_err());
        assert!(AccessKeys::parse("A:1,A:2").is_err());
        assert!(AccessKeys::parse("").unwrap().is_empty());
    }
}
