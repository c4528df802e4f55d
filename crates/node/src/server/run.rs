//! `millrace serve`: start storage, the metadata group, the API servers and background loops.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use millrace_proto::internal::internal_server::InternalServer;
use millrace_proto::v1::millrace_server::MillraceServer;
use millrace_raft::network::{Transport, PIPELINE_STREAM_WINDOW_BYTES, RAFT_MESSAGE_BYTES_MAX};
use millrace_raft::{GroupManager, GroupSettings, SnapshotMode};
use millrace_storage::{FlushCoordinator, NodeMeta};

use super::config::ServeConfig;
use super::node::Node;
use super::reconcile;
use super::security::NodeSecurity;
use crate::api::error::ApiError;
use crate::api::grpc::MillraceService;
use crate::api::internal::InternalService;
use crate::metadata::machine::{MetaMachine, MetaShared};
use crate::metadata::state::METADATA_GROUP_ID;
use millrace_security::access_sig::{AccessGuard, AccessRefusal};

/// The metadata state is snapshotted into sled after this many metadata entries; openraft then
/// purges the log it covers (keeping its default 1,000 entries for lagging peers).
const METADATA_SNAPSHOT_ENTRIES: u64 = 1000;

/// Largest public gRPC message (a PutRecords of up to 10 MiB, a GetRecords of 10 MiB, framing).
const GRPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The 5 bytes before each gRPC message (compressed flag and length).
const GRPC_FRAME_HEADER_BYTES: usize = 5;

/// A public gRPC call refused by its signature check, with its row of the error table.
fn refuse_call(r: AccessRefusal) -> tonic::Status {
    match r {
        AccessRefusal::TooLarge(_) => ApiError::InvalidArgument(r.to_string()),
        _ => ApiError::Unauthenticated(r.to_string()),
    }
    .into()
}

/// How long a starting node waits for its data directory's lock: a previous instance may still
/// be exiting (its threads finishing an fsync hold the lock after the process looks gone).
const DATA_DIR_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens the node metadata, waiting up to [`DATA_DIR_LOCK_WAIT`] while another process (a
/// previous instance still exiting) holds its lock.
async fn open_node_meta(path: &std::path::Path) -> anyhow::Result<NodeMeta> {
    let deadline = tokio::time::Instant::now() + DATA_DIR_LOCK_WAIT;
    let mut logged = false;
    loop {
        match NodeMeta::open(path) {
            Ok(meta) => return Ok(meta),
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && tokio::time::Instant::now() < deadline =>
            {
                if !logged {
                    tracing::warn!(path = %path.display(), "the data directory is locked by another process (a previous instance still exiting?); waiting up to 30 s");
                    logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("opening node metadata")),
        }
    }
}

/// Creates the data directory, the node user's alone (0700) when Millrace makes it, and makes
/// the two directories that hold records and secrets — `meta` (the metadata store, with the
/// created access keys) and `groups` (the Raft logs, the metadata group's among them) — 0700
/// whatever made them: other users of the machine cannot read them.
fn prepare_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(dir)?;
    for sub in ["meta", "groups"] {
        let path = dir.join(sub);
        builder.create(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The node metadata store is damaged: the votes, purge points and snapshots of every replica
/// here are gone, so the logs cannot be trusted or replayed either. Moves `meta` and `groups`
/// aside into `damaged-<unix time>/` (kept for inspection; delete it once done), starts afresh,
/// and marks every replica found for repair up to the last index its log holds: each refuses
/// votes and leadership until its group's leader has rebuilt it (`docs/operations.md`,
/// "damaged replicas").
fn set_aside_damaged_data(config: &ServeConfig, error: &anyhow::Error) -> anyhow::Result<NodeMeta> {
    let dir = &config.data_dir;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.join(format!("damaged-{stamp}"));
    std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    let mut targets = Vec::new();
    if let Ok(groups) = std::fs::read_dir(dir.join("groups")) {
        for g in groups.filter_map(Result::ok) {
            let Some(group_id) = g.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if let Ok(Some(last)) = millrace_raft::log_store::last_log_id_on_disk(&g.path()) {
                targets.push((group_id, last));
            }
        }
    }
    let seal = NodeMeta::seal_path(&dir.join("meta"));
    let moves = [
        (dir.join("meta"), aside.join("meta")),
        (dir.join("groups"), aside.join("groups")),
        (
            seal.clone(),
            aside.join(seal.file_name().unwrap_or_default()),
        ),
    ];
    for (from, to) in moves {
        if from.exists() {
            std::fs::rename(&from, to)
                .with_context(|| format!("moving {} aside", from.display()))?;
        }
    }
    tracing::error!(
        error = %format!("{error:#}"),
        moved_to = %aside.display(),
        replicas = targets.len(),
        "node metadata damaged: moved it and the logs aside; every replica here will be rebuilt from the others"
    );
    prepare_data_dir(dir).with_context(|| format!("preparing data dir {}", dir.display()))?;
    let meta = NodeMeta::open(&dir.join("meta")).context("opening new node metadata")?;
    for (group_id, last) in targets {
        millrace_raft::log_store::mark_for_repair(&meta.group(group_id)?, last)?;
    }
    meta.flush_blocking()?;
    Ok(meta)
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    crate::messages::set_account_id(&config.kinesis.account_id);
    prepare_data_dir(&config.data_dir)
        .with_context(|| format!("preparing data dir {}", config.data_dir.display()))?;
    let meta_db = match open_node_meta(&config.data_dir.join("meta")).await {
        Ok(meta) => meta,
        Err(e)
            if e.downcast_ref::<millrace_storage::StorageError>()
                .is_some_and(|e| e.is_corruption()) =>
        {
            set_aside_damaged_data(&config, &e)?
        }
        Err(e) => return Err(e),
    };
    match meta_db.node_get::<u64>("node_id")? {
        Some(id) if id != config.node_id => anyhow::bail!(
            "data dir {} belongs to node {id}, not node {}",
            config.data_dir.display(),
            config.node_id
        ),
        Some(_) => {}
        None => {
            meta_db.node_put("node_id", &config.node_id)?;
            meta_db.flush().await?;
        }
    }
    let security = Arc::new(NodeSecurity::load(&config)?);
    let flusher = FlushCoordinator::start(config.flush_sync)?;
    let settings = GroupSettings {
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        election_timeout_min_ms: config.election_timeout_min_ms,
        election_timeout_max_ms: config.election_timeout_max_ms,
        segment_bytes_max: config.segment_bytes_max,
    };
    let groups = GroupManager::new(
        config.node_id,
        config.data_dir.clone(),
        meta_db,
        flusher,
        Transport::new(security.peer_security()),
        settings,
    )?;
    let meta = MetaShared::new();
    let meta_group = groups
        .open_group(
            METADATA_GROUP_ID,
            Box::new(MetaMachine::new(meta.clone())),
            SnapshotMode::EveryEntries {
                entries: METADATA_SNAPSHOT_ENTRIES,
                keep_entries: METADATA_SNAPSHOT_ENTRIES,
            },
            // Its snapshots are built at the applied index, with the membership applied.
            &Default::default(),
        )
        .await?;
    let node = Arc::new(Node {
        id: config.node_id,
        config: config.clone(),
        groups,
        meta,
        meta_group,
        shards: Mutex::new(HashMap::new()),
        leader_hints: Mutex::new(HashMap::new()),
        registered: AtomicBool::new(false),
        liveness: Mutex::new(Default::default()),
        leave: tokio::sync::Notify::new(),
        quiet: Mutex::new(Default::default()),
        stats: Default::default(),
        metrics: Default::default(),
        subscriptions: Default::default(),
        security: security.clone(),
        admission: Arc::new(super::admission::Admission::new(
            config.limits.requests_in_flight_max,
            config.limits.grpc_call_timeout,
            Some(config.limits.key_requests_per_second)
                .filter(|r| *r > 0)
                .map(f64::from),
        )),
    });

    // Pipelines carry many calls on one HTTP/2 stream: give streams a window of a few entries.
    // (HTTP/2 adaptive windows broke bursts of forwarded calls on fresh connections with
    // "h2 protocol error"; fixed windows do not.)
    let grpc = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(PIPELINE_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * PIPELINE_STREAM_WINDOW_BYTES))
        .max_concurrent_streams(Some(super::admission::STREAMS_PER_CONNECTION_MAX))
        .add_service(
            security.guard(
                InternalServer::new(InternalService { node: node.clone() })
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
                node.clone(),
            ),
        )
        .add_service(
            node.admission.grpc(AccessGuard::new(
                MillraceServer::new(MillraceService { node: node.clone() })
                    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
                node.clone(),
                GRPC_MESSAGE_BYTES_MAX + GRPC_FRAME_HEADER_BYTES,
                refuse_call,
            )),
        );
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP address {}", config.http_addr))?;
    tracing::info!(
        node_id = config.node_id,
        grpc = %config.grpc_addr,
        http = %config.http_addr,
        advertised = %config.advertise_grpc_addr,
        zone = %config.zone,
        tls = security.tls.is_some(),
        "millrace node starting"
    );
    // Both ports share one accept loop: TLS handshakes (bounded in time) off the accept path,
    // a bounded number of connections, TCP_NODELAY (Nagle's algorithm plus delayed ACKs would
    // add ~40 ms to every small Raft round trip).
    let incoming = millrace_security::incoming::into_stream(
        security.accept(grpc_listener, security.grpc_accepts.clone()),
    );
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut grpc_task = tokio::spawn(grpc.serve_with_incoming_shutdown(incoming, async {
        let _ = grpc_stopped.await;
    }));
    let http_router = crate::api::http::router(node.clone());
    let http_conns = security.accept(http_listener, security.http_accepts.clone());
    let mut http_task = tokio::spawn(super::http_serve::serve(
        http_conns,
        http_router,
        config.limits.http_header_read_timeout,
    ));
    security.spawn_reload()?;

    reconcile::bootstrap(&node).await;
    tokio::spawn(reconcile::register(node.clone()));
    tokio::spawn(reconcile::reconcile_groups(node.clone()));
    tokio::spawn(reconcile::leader_loop(node.clone()));
    tokio::spawn(super::on_demand::scale_loop(node.clone()));
    tokio::spawn(super::retention::retention_loop(node.clone()));
    tokio::spawn(super::cluster::report_loop(node.clone()));
    tokio::spawn(super::quiesce::quiesce_loop(node.clone()));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = &mut grpc_task => anyhow::bail!("gRPC server stopped: {r:?}"),
        r = &mut http_task => anyhow::bail!("HTTP server stopped: {r:?}"),
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = node.leave.notified() => tracing::info!("decommissioned and removed from the cluster: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    transfer_leaderships(&node).await;
    // Stop taking requests and let in-flight ones finish (bounded); pipelines (peers',
    // clients') end once their calls under way are answered.
    node.groups.registry().stop_pipelines();
    let _ = stop_grpc.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), grpc_task).await;
    node.groups.shutdown_all().await;
    tracing::info!("stopped");
    Ok(())
}

/// Graceful shutdown, step 1: hand every leadership this node holds to another voter, so
/// writes fail only while a leadership moves.
async fn transfer_leaderships(node: &Node) {
    for group_id in node.groups.group_ids() {
        let Some(h) = node.groups.get(group_id) else {
            continue;
        };
        if !h.raft.is_leader() {
            continue;
        }
        let voters: Vec<u64> = h.raft.voter_ids().filter(|v| *v != node.id).collect();
        for to in voters {
            if crate::server::node::ready_for_transfer(&h.raft, to)
                .await
                .is_err()
            {
                continue;
            }
            if h.raft.trigger().transfer_leader(to).await.is_err() {
                break;
            }
            let moved = h
                .raft
                .wait(Some(std::time::Duration::from_secs(3)))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != node.id),
                    "leadership moved",
                )
                .await;
            if moved.is_ok() {
                tracing::info!(group_id, to, "leadership transferred before shutdown");
                break;
            }
        }
    }
}
