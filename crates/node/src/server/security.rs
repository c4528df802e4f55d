//! A node's transport security (issue 15, `docs/security.md`): TLS on both ports and to peers
//! (reloaded when the files change or on SIGHUP), and the guard that lets only members of the
//! cluster reach the internal services.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use millrace_raft::network::PeerSecurity;
use millrace_security::incoming::{accept_loop, AcceptCounters, AcceptLimits};
use millrace_security::peer_auth::{BearerToken, ClusterSecret, PeerSigner, PeerVerifier};
use millrace_security::{Conn, NodeTls, PeerInfo};
use tonic::server::NamedService;

use super::config::ServeConfig;
use super::node::Node;
use crate::api::error::ApiError;

/// Connections one port holds open at once; more are closed at once (and counted).
pub const CONNECTIONS_PER_PORT_MAX: usize = 10_000;
/// How often the TLS files are checked for a change (SIGHUP reloads at once).
const TLS_RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What this node proves to its peers and checks of them.
pub struct NodeSecurity {
    pub tls: Option<Arc<NodeTls>>,
    signer: Option<Arc<PeerSigner>>,
    verifier: Option<Arc<PeerVerifier>>,
    /// See [`AcceptLimits::handshake_timeout`].
    handshake_timeout: Duration,
    /// Internal requests refused by the [`PeerGuard`].
    pub peers_refused: Arc<std::sync::atomic::AtomicU64>,
    pub grpc_accepts: Arc<AcceptCounters>,
    pub http_accepts: Arc<AcceptCounters>,
    /// The token `/metrics` also accepts (`--metrics-token-file`).
    pub metrics_token: Option<BearerToken>,
}

impl NodeSecurity {
    /// Reads the TLS files and the cluster secret named by `config` (already validated).
    pub fn load(config: &ServeConfig) -> anyhow::Result<NodeSecurity> {
        let tls = match config.security.tls_files() {
            Some(files) => {
                Some(NodeTls::load_for_node(files, config.node_id).context("loading TLS files")?)
            }
            None => None,
        };
        let secret = match &config.security.cluster_secret_file {
            Some(path) => Some(ClusterSecret::load(path).context("loading the cluster secret")?),
            None => None,
        };
        let metrics_token = match &config.security.metrics_token_file {
            Some(path) => Some(BearerToken::load(path).context("loading the metrics token")?),
            None => None,
        };
        if tls.is_none() && secret.is_none() {
            tracing::warn!(
                "no TLS and no cluster secret: anyone who can reach the gRPC port can send this node Raft messages (see docs/security.md)"
            );
        }
        Ok(NodeSecurity {
            tls,
            signer: secret
                .clone()
                .map(|s| Arc::new(PeerSigner::new(config.node_id, s))),
            verifier: secret.map(|s| Arc::new(PeerVerifier::new(s))),
            handshake_timeout: config.limits.handshake_timeout,
            peers_refused: Default::default(),
            grpc_accepts: Default::default(),
            http_accepts: Default::default(),
            metrics_token,
        })
    }

    /// How the Raft transport connects to peers.
    pub fn peer_security(&self) -> PeerSecurity {
        PeerSecurity {
            tls: self
                .tls
                .clone()
                .map(|t| t as Arc<dyn millrace_security::connector::ClientConfigSource>),
            signer: self.signer.clone(),
        }
    }

    /// The connections of one port, TLS or not.
    pub fn accept(
        &self,
        listener: tokio::net::TcpListener,
        counters: Arc<AcceptCounters>,
    ) -> tokio::sync::mpsc::Receiver<Conn> {
        let limits = AcceptLimits {
            max_connections: CONNECTIONS_PER_PORT_MAX,
            handshake_timeout: self.handshake_timeout,
        };
        accept_loop(listener, self.tls.clone(), limits, counters)
    }

    /// Reloads the TLS files when they change, and on SIGHUP. A file that does not load (half
    /// written, wrong key) is logged and the settings in use are kept.
    pub fn spawn_reload(&self) -> anyhow::Result<()> {
        let Some(tls) = self.tls.clone() else {
            return Ok(());
        };
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TLS_RELOAD_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    _ = hup.recv() => true,
                };
                let result = if forced {
                    tls.reload().map(|()| true)
                } else {
                    tls.reload_if_changed()
                };
                match result {
                    Ok(true) => tracing::info!(
                        cert = %tls.files().cert.display(),
                        sighup = forced,
                        "TLS certificate, key and CA reloaded: new connections use them"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS files did not load; the certificate in use is kept"
                    ),
                }
            }
        });
        Ok(())
    }

    /// What `/v1/node/status` shows of this node's security: settings and refusals, never a
    /// key or a secret.
    pub fn status_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let port = |c: &AcceptCounters| {
            serde_json::json!({
                "connections_accepted": c.accepted.load(Relaxed),
                "tls_handshakes_failed": c.handshakes_failed.load(Relaxed),
                "handshakes_timed_out": c.handshakes_timed_out.load(Relaxed),
                "connections_refused_over_limit": c.refused_over_limit.load(Relaxed),
            })
        };
        serde_json::json!({
            "tls": self.tls.is_some(),
            "cluster_secret": self.verifier.is_some(),
            "internal_requests_refused": self.peers_refused.load(Relaxed),
            "grpc": port(&self.grpc_accepts),
            "http": port(&self.http_accepts),
        })
    }

    /// Wraps the internal services so that only members of the cluster reach them.
    pub fn guard<S>(&self, inner: S, node: Arc<Node>) -> PeerGuard<S> {
        PeerGuard {
            inner,
            node,
            tls: self.tls.is_some(),
            verifier: self.verifier.clone(),
            refused: self.peers_refused.clone(),
        }
    }
}

/// The node id the guard proved a request comes from (in the request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvenPeer(pub u64);

/// The internal services (Raft messages, forwarding, membership) behind a check of who calls:
/// with TLS, the peer's certificate (signed by the cluster CA) must name a member's node id;
/// with a cluster secret, the request must carry a valid, fresh, unreplayed signature of a
/// member. `JoinCluster` is the one call a node that is not yet a member may make (it must
/// still prove its id, and may only join as that id).
#[derive(Clone)]
pub struct PeerGuard<S> {
    inner: S,
    node: Arc<Node>,
    tls: bool,
    verifier: Option<Arc<PeerVerifier>>,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl<S: NamedService> NamedService for PeerGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> PeerGuard<S> {
    /// The proven node id of a request (none on an open plaintext cluster), or why it is
    /// refused.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Option<u64>, tonic::Status> {
        let path = req.uri().path();
        let mut proven = None;
        if self.tls {
            let id = req
                .extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.node_id)
                .ok_or_else(|| {
                    tonic::Status::from(ApiError::Unauthenticated(
                        "internal services answer only nodes of this cluster: connect with a node certificate signed by the cluster CA".into(),
                    ))
                })?;
            proven = Some(id);
        }
        if let Some(verifier) = &self.verifier {
            let id = verifier
                .verify(path, req.headers())
                .map_err(|e| tonic::Status::from(ApiError::Unauthenticated(e.to_string())))?;
            if proven.is_some_and(|p| p != id) {
                return Err(ApiError::AccessDenied(format!(
                    "the request is signed as node {id} but the certificate names node {}",
                    proven.unwrap_or_default()
                ))
                .into());
            }
            proven = Some(id);
        }
        let Some(id) = proven else {
            return Ok(None);
        };
        if path.ends_with("/JoinCluster") || self.is_member(id) {
            Ok(Some(id))
        } else {
            Err(ApiError::AccessDenied(format!("node {id} is not a member of this cluster")).into())
        }
    }

    /// Whether `id` is a member of the cluster: a registered node, an initial peer of the
    /// configuration, or a voter or learner of the metadata group. A node that knows no
    /// cluster yet (started with `--join`, before the metadata reached it) takes every node
    /// that proved itself: the cluster it joins must be able to reach it.
    fn is_member(&self, id: u64) -> bool {
        use openraft::async_runtime::WatchReceiver;
        let node = &self.node;
        if node.config.peers.contains_key(&id) || node.meta.read(|m| m.members.contains_key(&id)) {
            return true;
        }
        let metrics = node.meta_group.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let mut known = membership
            .voter_ids()
            .chain(membership.learner_ids())
            .peekable();
        let knows_no_cluster = known.peek().is_none()
            && node.config.peers.is_empty()
            && node.meta.read(|m| m.members.is_empty());
        knows_no_cluster || known.any(|v| v == id)
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for PeerGuard<S>
where
    S: tower_service::Service<
        http::Request<B>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.check(&req) {
            Ok(proven) => {
                if let Some(id) = proven {
                    req.extensions_mut().insert(ProvenPeer(id));
                }
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(status) => {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    path = req.uri().path(),
                    remote = ?req.extensions().get::<PeerInfo>().and_then(|p| p.remote),
                    reason = status.message(),
                    "internal request refused"
                );
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}
