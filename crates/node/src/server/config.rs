//! The `serve` configuration: one typed struct, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a node needs to start. Built from flags (and `MILLRACE_*` environment variables).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where the gRPC server listens (`0.0.0.0:7101` to listen on every interface).
    pub grpc_addr: SocketAddr,
    /// Where the HTTP server (Kinesis API, status pages) listens.
    pub http_addr: SocketAddr,
    /// The gRPC address peers and clients use to reach this node (`HOST:PORT`, a name or an
    /// IP): what `--peers` lists for it and what the cluster records. Defaults to `grpc_addr`.
    pub advertise_grpc_addr: String,
    /// The HTTP address the cluster records for this node. Defaults to `http_addr`.
    pub advertise_http_addr: String,
    pub zone: String,
    /// Initial metadata voters: node id → gRPC address (`HOST:PORT`). Every initial node gets
    /// the same list.
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
    /// How long an ON_DEMAND stream's shard must stay over its write capacity before it is
    /// split (`metadata/autoscale.rs`; 30 s, shortened only by tests,
    /// `MILLRACE_TEST_ON_DEMAND_SPLIT_AFTER_MS`).
    pub on_demand_split_after_ms: u64,
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
    /// TLS on both ports and between nodes, and the cluster secret.
    pub security: SecurityConfig,
    /// Limits that protect the node from slow or oversized requests.
    pub limits: LimitsConfig,
}

/// Limits on what one client may hold of a node (`docs/security.md`, "Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// A new connection must finish its TLS handshake (without TLS: send its first bytes)
    /// within this time, else it is closed.
    pub handshake_timeout: std::time::Duration,
    /// An HTTP request's head (request line and headers) must arrive within this time, else
    /// the connection is closed (slowloris).
    pub http_header_read_timeout: std::time::Duration,
    /// A Kinesis request's body must arrive whole within this time, else 408.
    pub http_body_read_timeout: std::time::Duration,
    /// Requests both public APIs handle at once; more are refused at once (retryable).
    pub requests_in_flight_max: usize,
    /// A public gRPC call must be received and answered (its response head) within this time.
    pub grpc_call_timeout: std::time::Duration,
    /// Requests per second each access key may make of one node (0: unlimited).
    pub key_requests_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout: millrace_security::incoming::HANDSHAKE_TIMEOUT,
            http_header_read_timeout: std::time::Duration::from_secs(10),
            http_body_read_timeout: std::time::Duration::from_secs(60),
            requests_in_flight_max: 4_096,
            grpc_call_timeout: std::time::Duration::from_secs(60),
            key_requests_per_second: 0,
        }
    }
}

/// How a node protects its ports and proves itself to its peers (`docs/security.md`).
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// This node's certificate (PEM, leaf first): both ports serve TLS with it.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM; must not be world-readable).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA: peers must present a certificate it signed, naming a member's node id.
    pub tls_ca: Option<PathBuf>,
    /// A file holding the cluster secret that signs every internal request.
    pub cluster_secret_file: Option<PathBuf>,
    /// A file holding a bearer token that `/metrics` accepts besides SigV4 (for Prometheus).
    pub metrics_token_file: Option<PathBuf>,
    /// Serve without TLS: the operator's explicit choice (`--plaintext`), never a default.
    pub plaintext: bool,
}

impl SecurityConfig {
    /// The TLS files, when TLS is on (validated: all three or none).
    pub fn tls_files(&self) -> Option<millrace_security::TlsFiles> {
        Some(millrace_security::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
        })
    }
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

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl millrace_security::access_sig::KeyStore for AccessKeys {
    fn enforced(&self) -> bool {
        !self.is_empty()
    }

    fn secret(&self, key_id: &str) -> Option<String> {
        AccessKeys::secret(self, key_id).map(str::to_string)
    }
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A setting that is out of bounds or contradicts another, named by its key: the `serve` flag
/// without its dashes, which is also its key in a config file (`deploy/millrace.toml`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        key,
        message: message.into(),
    })
}

impl ServeConfig {
    /// Checks every bound and every rule between settings; the error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_node()?;
        self.validate_timing()?;
        self.validate_limits()?;
        self.validate_kinesis()?;
        self.validate_security()?;
        self.validate_request_limits()
    }

    fn validate_request_limits(&self) -> Result<(), ConfigError> {
        let bounds = std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(600);
        if !bounds.contains(&self.limits.handshake_timeout) {
            return invalid("handshake-timeout", "must be between 100ms and 10m");
        }
        if !bounds.contains(&self.limits.http_header_read_timeout) {
            return invalid("http-header-read-timeout", "must be between 100ms and 10m");
        }
        if !bounds.contains(&self.limits.http_body_read_timeout) {
            return invalid("http-body-read-timeout", "must be between 100ms and 10m");
        }
        if !bounds.contains(&self.limits.grpc_call_timeout) {
            return invalid("grpc-call-timeout", "must be between 100ms and 10m");
        }
        if !(1..=1_000_000).contains(&self.limits.requests_in_flight_max) {
            return invalid("requests-in-flight-max", "must be between 1 and 1000000");
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        let s = &self.security;
        match (&s.tls_cert, &s.tls_key, &s.tls_ca) {
            (None, None, None) if s.plaintext => Ok(()),
            (None, None, None) => invalid(
                "tls-cert",
                "required: a node serves both ports over TLS (tls-cert, tls-key and tls-ca; docs/security.md). \
                 To serve unencrypted on a network you trust, set plaintext (millrace dev does)",
            ),
            (Some(_), Some(_), Some(_)) if s.plaintext => invalid(
                "plaintext",
                "contradicts tls-cert: give either the TLS files or plaintext, not both",
            ),
            (Some(_), Some(_), Some(_)) => Ok(()),
            (Some(_), None, _) => invalid("tls-key", "required with tls-cert: the certificate's private key"),
            (None, Some(_), _) => invalid("tls-cert", "required with tls-key: the certificate the key belongs to"),
            (Some(_), Some(_), None) => invalid(
                "tls-ca",
                "required with tls-cert: the cluster CA that signed every node's certificate (nodes use mutual TLS with it)",
            ),
            (None, None, Some(_)) => invalid(
                "tls-cert",
                "tls-ca needs this node's own tls-cert and tls-key too",
            ),
        }
    }

    fn validate_node(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return invalid("node-id", "must be at least 1");
        }
        if self.zone.is_empty() {
            return invalid("zone", "must not be empty");
        }
        check_host_port(&self.advertise_grpc_addr).or_else(|e| invalid("advertise-addr", e))?;
        check_host_port(&self.advertise_http_addr)
            .or_else(|e| invalid("advertise-http-addr", e))?;
        if self.peers.is_empty() == self.join.is_none() {
            return invalid(
                "peers",
                "give exactly one of peers (an initial node) and join (a new node)",
            );
        }
        if let Some(join) = &self.join {
            check_host_port(join).or_else(|e| invalid("join", e))?;
        }
        if self.peers.is_empty() {
            return Ok(());
        }
        match self.peers.get(&self.node_id) {
            None => invalid(
                "peers",
                format!(
                    "must include this node ({}) among the initial voters",
                    self.node_id
                ),
            ),
            Some(addr) if *addr != self.advertise_grpc_addr => invalid(
                "peers",
                format!(
                    "lists node {} at {addr}, but its advertise-addr is {} (grpc-addr {} unless set)",
                    self.node_id, self.advertise_grpc_addr, self.grpc_addr
                ),
            ),
            Some(_) if self.peers.len() < self.default_replication_factor as usize => invalid(
                "replication-factor",
                format!(
                    "{} replicas per shard cannot be placed on the {} initial peers",
                    self.default_replication_factor,
                    self.peers.len()
                ),
            ),
            Some(_) => Ok(()),
        }
    }

    fn validate_timing(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return invalid("heartbeat-interval-ms", "must be at least 1");
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return invalid(
                "election-timeout-min-ms",
                format!(
                    "must exceed heartbeat-interval-ms ({})",
                    self.heartbeat_interval_ms
                ),
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return invalid(
                "election-timeout-max-ms",
                format!(
                    "must exceed election-timeout-min-ms ({})",
                    self.election_timeout_min_ms
                ),
            );
        }
        if !(1_000..=300_000).contains(&self.iterator_ttl_ms) {
            return invalid(
                "test-iterator-ttl-ms",
                "the iterator lifetime must be between 1 s and 5 minutes",
            );
        }
        if !(100..=3_600_000).contains(&self.retention_check_interval_ms) {
            return invalid(
                "retention-check-interval-ms",
                "must be between 100 (ms) and 3600000 (1 hour)",
            );
        }
        if self.dead_node_timeout < std::time::Duration::from_secs(2) {
            return invalid("dead-node-timeout", "must be at least 2s");
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.shards_per_stream_max == 0
            || self.shards_per_stream_max > self.shards_per_cluster_max
        {
            return invalid(
                "shards-per-stream-max",
                format!(
                    "must be between 1 and shards-per-cluster-max ({})",
                    self.shards_per_cluster_max
                ),
            );
        }
        if !(4096..=1 << 30).contains(&self.segment_bytes_max) {
            return invalid(
                "segment-bytes-max",
                "must be between 4096 (4 KiB) and 1073741824 (1 GiB)",
            );
        }
        if !matches!(self.default_replication_factor, 1 | 3 | 5) {
            return invalid("replication-factor", "must be 1, 3 or 5");
        }
        Ok(())
    }

    fn validate_kinesis(&self) -> Result<(), ConfigError> {
        let k = &self.kinesis;
        let region_ok = !k.region.is_empty()
            && k.region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return invalid(
                "region",
                format!("{:?} must be lowercase letters, digits and '-'", k.region),
            );
        }
        if k.account_id.len() != 12 || !k.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return invalid(
                "account-id",
                format!("{:?} must be 12 digits", k.account_id),
            );
        }
        Ok(())
    }
}

/// Checks `HOST:PORT`, where HOST is a name or an IP address (IPv6 in brackets).
fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{addr:?} is not HOST:PORT");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Parses `1=127.0.0.1:7101,2=node2:7101` (each address `HOST:PORT`, a name or an IP).
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
        check_host_port(addr).map_err(|e| format!("--peers entry {part:?}: {e}"))?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("--peers names node {id} twice"));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 3 of a three-node cluster on loopback, valid as it is.
    fn node3() -> ServeConfig {
        ServeConfig {
            node_id: 3,
            data_dir: "/tmp/x".into(),
            grpc_addr: "127.0.0.1:7103".parse().unwrap(),
            http_addr: "127.0.0.1:4569".parse().unwrap(),
            advertise_grpc_addr: "127.0.0.1:7103".into(),
            advertise_http_addr: "127.0.0.1:4569".into(),
            zone: "c".into(),
            peers: parse_peers("1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103").unwrap(),
            join: None,
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            shards_per_stream_max: 1000,
            shards_per_cluster_max: 10_000,
            default_replication_factor: 3,
            iterator_ttl_ms: 300_000,
            on_demand_split_after_ms: 30_000,
            retention_check_interval_ms: 60_000,
            test_retention_seconds: None,
            segment_bytes_max: 64 * 1024 * 1024,
            flush_sync: millrace_storage::SyncMethod::Auto,
            shard_throttling: false,
            dead_node_timeout: std::time::Duration::from_secs(300),
            kinesis: KinesisConfig::default(),
            security: SecurityConfig {
                plaintext: true,
                ..SecurityConfig::default()
            },
            limits: LimitsConfig::default(),
        }
    }

    fn key_at_fault(cfg: &ServeConfig) -> &'static str {
        cfg.validate().expect_err("should be refused").key
    }

    #[test]
    fn peers_parse_names_and_ips() {
        let p = parse_peers("1=127.0.0.1:7101, 2=node2:7101, 3=[::1]:7103").unwrap();
        assert_eq!(p[&2], "node2:7101");
        assert_eq!(p.len(), 3);
        assert!(parse_peers("1=nope").is_err());
        assert!(parse_peers("1=node1:port").is_err());
        assert!(parse_peers("1=no_underscores:1").is_err());
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
    }

    #[test]
    fn validate_names_the_key_at_fault() {
        assert_eq!(node3().validate(), Ok(()));

        let mut cfg = node3();
        cfg.peers.remove(&3);
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.key, "peers");
        assert!(
            e.to_string()
                .starts_with("peers: must include this node (3)"),
            "{e}"
        );

        // A node behind a name (a container) listens on every interface and advertises its
        // name, which is what the peers list.
        let mut cfg = node3();
        cfg.grpc_addr = "0.0.0.0:7101".parse().unwrap();
        cfg.peers = parse_peers("1=node1:7101,2=node2:7101,3=node3:7101").unwrap();
        assert_eq!(key_at_fault(&cfg), "peers");
        cfg.advertise_grpc_addr = "node3:7101".into();
        assert_eq!(cfg.validate(), Ok(()));

        let mut cfg = node3();
        cfg.default_replication_factor = 5;
        assert_eq!(key_at_fault(&cfg), "replication-factor");

        let mut cfg = node3();
        cfg.election_timeout_min_ms = 200;
        assert_eq!(key_at_fault(&cfg), "election-timeout-min-ms");
        let mut cfg = node3();
        cfg.election_timeout_max_ms = 1000;
        assert_eq!(key_at_fault(&cfg), "election-timeout-max-ms");

        let mut cfg = node3();
        cfg.join = Some("node1:7101".into());
        assert_eq!(key_at_fault(&cfg), "peers");
        cfg.peers.clear();
        assert_eq!(cfg.validate(), Ok(()));
        cfg.join = Some("node1".into());
        assert_eq!(key_at_fault(&cfg), "join");

        let mut cfg = node3();
        cfg.segment_bytes_max = 100;
        assert_eq!(key_at_fault(&cfg), "segment-bytes-max");
        let mut cfg = node3();
        cfg.kinesis.account_id = "12".into();
        assert_eq!(key_at_fault(&cfg), "account-id");

        let mut cfg = node3();
        cfg.security.tls_cert = Some("node.pem".into());
        assert_eq!(key_at_fault(&cfg), "tls-key");
        cfg.security.tls_key = Some("node.key".into());
        assert_eq!(key_at_fault(&cfg), "tls-ca");
        cfg.security.tls_ca = Some("ca.pem".into());
        // TLS and plaintext together contradict each other.
        assert_eq!(key_at_fault(&cfg), "plaintext");
        cfg.security.plaintext = false;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.security.tls_cert = None;
        assert_eq!(key_at_fault(&cfg), "tls-cert");

        // No TLS is an explicit choice: without plaintext, serve refuses to start.
        let mut cfg = node3();
        cfg.security.plaintext = false;
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.key, "tls-cert");
        assert!(e.message.contains("set plaintext"), "{e}");
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
