//! `millrace`: the server (`serve`), a local cluster (`dev`) and the client CLI.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use millrace_cli::{self as cli, ClientCommand};
use millrace_node::server::config::{
    parse_peers, AccessKeys, KinesisConfig, LimitsConfig, SecurityConfig,
};
use millrace_node::server::{serve, ServeConfig};

#[derive(Parser)]
#[command(
    name = "millrace",
    version,
    about = "Millrace: a replicated, Kinesis-compatible data-streaming service"
)]
struct Cli {
    /// Cluster endpoint(s) for client commands, comma separated (default: $MILLRACE_ENDPOINT,
    /// else http://127.0.0.1:7101).
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// The CA certificate (PEM) that https:// endpoints must present a certificate from
    /// (default: the system's trusted roots).
    #[arg(long, global = true, env = "MILLRACE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The access key id client commands sign their calls with (default:
    /// $MILLRACE_ACCESS_KEY_ID, else $AWS_ACCESS_KEY_ID).
    #[arg(long, global = true, env = "MILLRACE_ACCESS_KEY_ID")]
    access_key_id: Option<String>,
    /// Its secret (default: $MILLRACE_SECRET_ACCESS_KEY, else $AWS_SECRET_ACCESS_KEY; prefer
    /// the environment to keep it out of `ps`). Never sent: calls carry an HMAC signature.
    #[arg(
        long,
        global = true,
        env = "MILLRACE_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    secret_access_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Run a local cluster of N nodes as child processes.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value = "./millrace-data")]
        data_dir: PathBuf,
        /// Serve both ports over TLS, with a throwaway CA and node certificates made in the
        /// data dir (printed: how to point clients at them).
        #[arg(long)]
        tls: bool,
    },
    /// Check that the node on this machine answers (exit 0) or not (exit 1): for container
    /// health checks and probes.
    Health {
        /// The node's HTTP address; a wildcard address (0.0.0.0) is reached on loopback.
        #[arg(long, env = "MILLRACE_HTTP_ADDR", default_value = "127.0.0.1:4567")]
        http_addr: std::net::SocketAddr,
        /// Also require the node to be ready (registered, metadata leader known): /readyz
        /// instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file of settings: each key is one of these flags without `--` (see
    /// deploy/millrace.toml). Flags and MILLRACE_* variables override it.
    #[arg(long, env = "MILLRACE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "MILLRACE_NODE_ID")]
    node_id: u64,
    #[arg(long, env = "MILLRACE_DATA_DIR")]
    data_dir: PathBuf,
    #[arg(long, env = "MILLRACE_GRPC_ADDR", default_value = "127.0.0.1:7101")]
    grpc_addr: std::net::SocketAddr,
    #[arg(long, env = "MILLRACE_HTTP_ADDR", default_value = "127.0.0.1:4567")]
    http_addr: std::net::SocketAddr,
    /// The gRPC address peers and clients reach this node at (HOST:PORT; a name such as a
    /// container's works). Default: --grpc-addr.
    #[arg(long, env = "MILLRACE_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// The HTTP address the cluster records for this node (HOST:PORT). Default: --http-addr.
    #[arg(long, env = "MILLRACE_ADVERTISE_HTTP_ADDR")]
    advertise_http_addr: Option<String>,
    #[arg(long, env = "MILLRACE_ZONE", default_value = "default")]
    zone: String,
    /// Initial metadata voters: ID=HOST:PORT,… (the same list on every initial node).
    #[arg(long, env = "MILLRACE_PEERS", default_value = "")]
    peers: String,
    /// Join a running cluster through any live node's gRPC address (HOST:PORT), instead of --peers.
    #[arg(long, env = "MILLRACE_JOIN")]
    join: Option<String>,
    #[arg(long, env = "MILLRACE_HEARTBEAT_INTERVAL_MS", default_value_t = 200)]
    heartbeat_interval_ms: u64,
    #[arg(long, env = "MILLRACE_ELECTION_TIMEOUT_MIN_MS", default_value_t = 1000)]
    election_timeout_min_ms: u64,
    #[arg(long, env = "MILLRACE_ELECTION_TIMEOUT_MAX_MS", default_value_t = 2000)]
    election_timeout_max_ms: u64,
    #[arg(long, env = "MILLRACE_SHARDS_PER_STREAM_MAX", default_value_t = 1000)]
    shards_per_stream_max: u32,
    #[arg(
        long,
        env = "MILLRACE_SHARDS_PER_CLUSTER_MAX",
        default_value_t = 10_000
    )]
    shards_per_cluster_max: u32,
    #[arg(long, env = "MILLRACE_REPLICATION_FACTOR", default_value_t = 3)]
    replication_factor: u32,
    /// Test-only: shard iterator lifetime (Kinesis: 5 minutes, the default).
    #[arg(
        long,
        env = "MILLRACE_TEST_ITERATOR_TTL_MS",
        default_value_t = 300_000,
        hide = true
    )]
    test_iterator_ttl_ms: i64,
    /// Test-only: how long an ON_DEMAND shard stays hot before it is split (30 s).
    #[arg(
        long,
        env = "MILLRACE_TEST_ON_DEMAND_SPLIT_AFTER_MS",
        default_value_t = 30_000,
        hide = true
    )]
    test_on_demand_split_after_ms: u64,
    #[arg(
        long,
        env = "MILLRACE_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 60_000
    )]
    retention_check_interval_ms: u64,
    /// Test-only: read every stream's retention period as seconds instead of hours.
    #[arg(long, env = "MILLRACE_TEST_RETENTION_SECONDS", hide = true)]
    test_retention_seconds: Option<u64>,
    #[arg(long, env = "MILLRACE_SEGMENT_BYTES_MAX", default_value_t = 64 * 1024 * 1024)]
    segment_bytes_max: u64,
    /// How a flush round makes segment files durable: `auto` syncs the filesystem once
    /// (`syncfs`) when a round covers several files on it, else `fdatasync`s the file;
    /// `per-file` always `fdatasync`s each file (for a data dir on a filesystem shared with
    /// heavy writers).
    #[arg(long, env = "MILLRACE_FLUSH_SYNC", default_value = "auto")]
    flush_sync: millrace_storage::SyncMethod,
    /// Enforce Kinesis's per-shard limits: 1 MiB/s or 1,000 records/s in, 2 MiB/s and
    /// 5 GetRecords calls/s out (ProvisionedThroughputExceeded beyond them).
    #[arg(long, env = "MILLRACE_SHARD_THROTTLING")]
    shard_throttling: bool,
    /// A node unreachable for longer than this has its replicas re-created on live nodes.
    #[arg(long, env = "MILLRACE_DEAD_NODE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    dead_node_timeout: std::time::Duration,
    /// The region that StreamARNs name (Kinesis HTTP API).
    #[arg(long, env = "MILLRACE_REGION", default_value = "us-east-1")]
    region: String,
    /// The account id that StreamARNs name (Kinesis HTTP API).
    #[arg(long, env = "MILLRACE_ACCOUNT_ID", default_value = "123456789012")]
    account_id: String,
    /// SigV4 access keys the Kinesis HTTP API accepts: KEY_ID:SECRET,… (prefer the environment
    /// variable to keep secrets out of `ps`). Without any, every signature is accepted.
    #[arg(
        long,
        env = "MILLRACE_ACCESS_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    access_keys: String,
    /// Serve gRPC and HTTP over TLS with this certificate (PEM, leaf first; for node-to-node
    /// mutual TLS it names the node: URI SAN urn:millrace:node:ID). Reloaded when the file
    /// changes or on SIGHUP. Needs --tls-key and --tls-ca.
    #[arg(long, env = "MILLRACE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; refused if world-readable).
    #[arg(long, env = "MILLRACE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed that names a member.
    #[arg(long, env = "MILLRACE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Serve both ports without TLS, for a network you trust with everything on it (`millrace
    /// dev` does). Without it `serve` needs --tls-cert, --tls-key and --tls-ca: a node never
    /// runs unencrypted by accident.
    #[arg(long, env = "MILLRACE_PLAINTEXT")]
    plaintext: bool,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line:
    /// timestamp, level, target, fields, span) for log shippers. Which lines: MILLRACE_LOG,
    /// a filter such as `info,millrace_node=debug,openraft=warn` (see docs/operations.md).
    #[arg(long, env = "MILLRACE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// A file holding the cluster secret (at least 16 bytes; refused if world-readable): every
    /// internal request is signed with it, so only nodes holding it can send Raft messages.
    /// The same file on every node; needed when nodes do not use TLS.
    #[arg(long, env = "MILLRACE_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// A file holding a token (at least 16 bytes; refused if world-readable) that `/metrics`
    /// accepts as `Authorization: Bearer <token>` when access keys are configured, so that
    /// Prometheus can scrape without SigV4. It grants nothing else.
    #[arg(long, env = "MILLRACE_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// A new connection must finish its TLS handshake (without TLS: send its first bytes)
    /// within this time, else it is closed.
    #[arg(long, env = "MILLRACE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: std::time::Duration,
    /// An HTTP request's head must arrive within this time, else the connection is closed.
    #[arg(long, env = "MILLRACE_HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    http_header_read_timeout: std::time::Duration,
    /// A Kinesis request's body must arrive whole within this time, else 408.
    #[arg(long, env = "MILLRACE_HTTP_BODY_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    http_body_read_timeout: std::time::Duration,
    /// Requests the public APIs (gRPC and Kinesis) handle at once; more are refused at once
    /// with a retryable error.
    #[arg(long, env = "MILLRACE_REQUESTS_IN_FLIGHT_MAX", default_value_t = 4096)]
    requests_in_flight_max: usize,
    /// A public gRPC call must be received whole and answered within this time, else it is
    /// ended with DEADLINE_EXCEEDED (a call stalled mid-frame holds nothing for long).
    #[arg(long, env = "MILLRACE_GRPC_CALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    grpc_call_timeout: std::time::Duration,
    /// Requests per second each access key may make of this node (0: unlimited); more are
    /// refused with LimitExceededException.
    #[arg(long, env = "MILLRACE_KEY_REQUESTS_PER_SECOND", default_value_t = 0)]
    key_requests_per_second: u32,
    /// NOT A FEATURE. Injects a known bug (ack-before-fsync, skip-fsync, skip-sequence-number,
    /// uncommitted-reads, ignore-transfer-leader) to prove the jepsen harness catches it. Only debug builds and builds
    /// with the `calibration-bugs` feature accept it.
    #[arg(long, env = "MILLRACE_CALIBRATION_INJECT_BUG_UNSAFE", hide = true)]
    calibration_inject_bug_unsafe: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn")
    });
    // Colours only on a terminal: a log file or a shipper gets plain text.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

/// The command line, with the settings of `serve --config FILE` added as the flags they stand
/// for (flags and environment variables win over the file).
fn parse_cli() -> Result<Cli, clap::Error> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A first look that tolerates what the file may still supply (required flags), to find the
    // file and which settings flags and variables already made.
    let first = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)?;
    let config = match first.subcommand() {
        Some(("serve", serve)) => serve.get_one::<PathBuf>("config").map(|p| (serve, p)),
        _ => None,
    };
    let Some((serve, path)) = config else {
        return Cli::try_parse_from(&args);
    };
    let shown = path.display().to_string();
    let fail =
        |message: String| Cli::command().error(clap::error::ErrorKind::InvalidValue, message);
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("{shown}: {e}")))?;
    if millrace_node::config_file::holds_secrets(&text) {
        millrace_security::files::refuse_world_readable(path)
            .map_err(|e| fail(format!("{e} (it sets access-keys)")))?;
    }
    let command = Cli::command();
    let serve_command = command
        .find_subcommand("serve")
        .expect("serve is a subcommand");
    let extra = millrace_node::config_file::file_flags(serve_command, serve, &shown, &text)
        .map_err(fail)?;
    let matches = Cli::command()
        .try_get_matches_from(args.into_iter().chain(extra.into_iter().map(Into::into)))?;
    Cli::from_arg_matches(&matches)
}

/// The access key of client commands: the flags (or `MILLRACE_*` variables), else the
/// standard `AWS_*` variables; both parts or neither.
fn credentials(
    key_id: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<Option<millrace_client::Credentials>> {
    let aws = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (key_id, secret) = match (key_id, secret) {
        (None, None) => (aws("AWS_ACCESS_KEY_ID"), aws("AWS_SECRET_ACCESS_KEY")),
        given => given,
    };
    match (key_id, secret) {
        (Some(id), Some(secret)) => Ok(Some(millrace_client::Credentials::new(id, secret))),
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!(
            "--access-key-id needs its --secret-access-key (or MILLRACE_SECRET_ACCESS_KEY)"
        ),
        (None, Some(_)) => anyhow::bail!(
            "--secret-access-key needs its --access-key-id (or MILLRACE_ACCESS_KEY_ID)"
        ),
    }
}

fn main() -> std::process::ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing(match &cli.command {
        Command::Serve(a) => a.log_format,
        _ => LogFormat::Text,
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => {
                let peers = parse_peers(&a.peers).map_err(anyhow::Error::msg)?;
                let access_keys = AccessKeys::parse(&a.access_keys).map_err(anyhow::Error::msg)?;
                if let Some(bug) = &a.calibration_inject_bug_unsafe {
                    use millrace_storage::calibration;
                    let bug: calibration::InjectedBug = bug.parse().map_err(anyhow::Error::msg)?;
                    calibration::inject(bug).map_err(anyhow::Error::msg)?;
                    tracing::warn!(
                        bug = bug.name(),
                        "CALIBRATION BUG INJECTED: this node is deliberately broken and will lose or misreport data"
                    );
                }
                serve(ServeConfig {
                    node_id: a.node_id,
                    data_dir: a.data_dir,
                    advertise_grpc_addr: a
                        .advertise_addr
                        .unwrap_or_else(|| a.grpc_addr.to_string()),
                    advertise_http_addr: a
                        .advertise_http_addr
                        .unwrap_or_else(|| a.http_addr.to_string()),
                    grpc_addr: a.grpc_addr,
                    http_addr: a.http_addr,
                    zone: a.zone,
                    peers,
                    join: a.join,
                    heartbeat_interval_ms: a.heartbeat_interval_ms,
                    election_timeout_min_ms: a.election_timeout_min_ms,
                    election_timeout_max_ms: a.election_timeout_max_ms,
                    shards_per_stream_max: a.shards_per_stream_max,
                    shards_per_cluster_max: a.shards_per_cluster_max,
                    default_replication_factor: a.replication_factor,
                    iterator_ttl_ms: a.test_iterator_ttl_ms,
                    on_demand_split_after_ms: a.test_on_demand_split_after_ms,
                    retention_check_interval_ms: a.retention_check_interval_ms,
                    test_retention_seconds: a.test_retention_seconds,
                    segment_bytes_max: a.segment_bytes_max,
                    flush_sync: a.flush_sync,
                    shard_throttling: a.shard_throttling,
                    dead_node_timeout: a.dead_node_timeout,
                    kinesis: KinesisConfig {
                        region: a.region,
                        account_id: a.account_id,
                        access_keys,
                    },
                    security: SecurityConfig {
                        tls_cert: a.tls_cert,
                        tls_key: a.tls_key,
                        tls_ca: a.tls_ca,
                        cluster_secret_file: a.cluster_secret_file,
                        metrics_token_file: a.metrics_token_file,
                        plaintext: a.plaintext,
                    },
                    limits: LimitsConfig {
                        handshake_timeout: a.handshake_timeout,
                        http_header_read_timeout: a.http_header_read_timeout,
                        http_body_read_timeout: a.http_body_read_timeout,
                        requests_in_flight_max: a.requests_in_flight_max,
                        grpc_call_timeout: a.grpc_call_timeout,
                        key_requests_per_second: a.key_requests_per_second,
                    },
                })
                .await
            }
            Command::Dev {
                nodes,
                data_dir,
                tls,
            } => millrace_node::dev::run(nodes, &data_dir, tls).await,
            Command::Health { http_addr, ready } => {
                millrace_node::health::check(http_addr, ready).map_err(anyhow::Error::msg)
            }
            Command::Client(command) => {
                let config = millrace_client::ClientConfig {
                    ca_cert: cli.ca_cert,
                    credentials: credentials(cli.access_key_id, cli.secret_access_key)?,
                    ..Default::default()
                };
                let client = millrace_client::Client::with_config(
                    cli::endpoints(cli.endpoint.as_deref()),
                    config,
                )?;
                let mut out = std::io::stdout().lock();
                cli::run(&client, command, &mut out)
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
