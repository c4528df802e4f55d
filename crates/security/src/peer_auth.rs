//! The cluster secret: how nodes of a plaintext cluster prove to each other that a request
//! comes from a node of the cluster (with TLS, the node certificate does that instead).
//!
//! Every internal request carries four headers (format version 1, documented in
//! `docs/security.md`):
//!
//! - `x-millrace-peer`: the sending node's id;
//! - `x-millrace-peer-time`: when it was signed, in milliseconds since the Unix epoch;
//! - `x-millrace-peer-nonce`: `BOOT.COUNTER` in hex — a random id of the sender's process and a
//!   counter that process never repeats;
//! - `x-millrace-peer-signature`: hex HMAC-SHA256, keyed with the secret, over
//!   `millrace-peer-v1\n{path}\n{node}\n{time}\n{nonce}` (`path` is the gRPC method's path).
//!
//! The secret never crosses the wire. A receiver refuses a signature that is wrong, older or
//! newer than [`PEER_CLOCK_SKEW_MAX`], older than the receiver's own start (so nothing
//! captured before a restart can be replayed after it), or whose nonce it has already seen
//! (see [`ReplayWindow`]). Comparison of signatures takes the same time whatever they hold.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::{now_ms, TlsError};

pub const HEADER_NODE: &str = "x-millrace-peer";
pub const HEADER_TIME: &str = "x-millrace-peer-time";
pub const HEADER_NONCE: &str = "x-millrace-peer-nonce";
pub const HEADER_SIGNATURE: &str = "x-millrace-peer-signature";
const SIGNED_PREFIX: &str = "millrace-peer-v1";

/// How far a signature's time may be from the receiver's clock, either way.
pub const PEER_CLOCK_SKEW_MAX: Duration = Duration::from_secs(300);
/// Shortest cluster secret accepted, in bytes (`millrace dev` makes 32 random bytes, in hex).
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;
/// Nonces a receiver remembers behind the highest it saw from one sender process: a request
/// delayed past this many newer ones from the same process is refused (and retried).
pub const REPLAY_WINDOW_NONCES: u64 = 65_536;

/// The secret every node of a plaintext cluster shares. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// Reads the secret from a file (surrounding whitespace ignored). The file must not be
    /// world-readable, and the secret must be at least [`CLUSTER_SECRET_BYTES_MIN`] bytes.
    pub fn load(path: &Path) -> Result<ClusterSecret, TlsError> {
        crate::files::refuse_world_readable(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| TlsError::file(path, e))?;
        ClusterSecret::new(text.trim().as_bytes()).map_err(|e| TlsError::file(path, e))
    }

    pub fn new(key: &[u8]) -> Result<ClusterSecret, String> {
        if key.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(format!(
                "a cluster secret must be at least {CLUSTER_SECRET_BYTES_MIN} bytes (it has {})",
                key.len()
            ));
        }
        Ok(ClusterSecret { key: key.to_vec() })
    }

    /// A fresh secret, as the text a secret file holds (64 hex digits).
    pub fn generate_text() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    /// Writes a fresh secret to `path` (mode 0600) unless the file exists already.
    pub fn create_file(path: &Path) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => f
                .write_all(Self::generate_text().as_bytes())
                .map_err(|e| TlsError::file(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(TlsError::file(path, e)),
        }
    }

    fn mac(&self, path: &str, node: u64, time_ms: u64, nonce: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{SIGNED_PREFIX}\n{path}\n{node}\n{time_ms}\n{nonce}").as_bytes());
        mac
    }
}

/// Signs this node's internal requests.
#[derive(Debug)]
pub struct PeerSigner {
    node_id: u64,
    secret: ClusterSecret,
    boot: u64,
    counter: AtomicU64,
}

impl PeerSigner {
    pub fn new(node_id: u64, secret: ClusterSecret) -> PeerSigner {
        PeerSigner {
            node_id,
            secret,
            boot: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    /// Adds the four headers for a request to `path` (the gRPC method's path).
    pub fn sign(&self, path: &str, headers: &mut HeaderMap) {
        self.sign_at(path, now_ms(), headers);
    }

    fn sign_at(&self, path: &str, time_ms: u64, headers: &mut HeaderMap) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nonce = format!("{:x}.{n:x}", self.boot);
        let signature = hex::encode(
            self.secret
                .mac(path, self.node_id, time_ms, &nonce)
                .finalize()
                .into_bytes(),
        );
        let value = |s: String| HeaderValue::from_str(&s).expect("digits are a header value");
        headers.insert(HEADER_NODE, value(self.node_id.to_string()));
        headers.insert(HEADER_TIME, value(time_ms.to_string()));
        headers.insert(HEADER_NONCE, value(nonce));
        headers.insert(HEADER_SIGNATURE, value(signature));
    }
}

/// Why a peer request was refused. The message is safe to send back: it never holds the
/// secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("internal services answer only nodes of this cluster: the request is not signed with the cluster secret (header {0} missing or malformed)")]
    Unsigned(&'static str),
    #[error(
        "internal request signature does not match: the sender does not hold this cluster's secret"
    )]
    BadSignature,
    #[error("internal request signed at {signed_ms} ms, {skew_ms} ms from this node's clock (at most {max_s} s either way, and not before this node started): check the nodes' clocks")]
    Stale {
        signed_ms: u64,
        skew_ms: i64,
        max_s: u64,
    },
    #[error("internal request replayed: its nonce was already used")]
    Replayed,
}

/// Checks the signatures of internal requests and remembers the nonces it accepted.
pub struct PeerVerifier {
    secret: ClusterSecret,
    started_ms: u64,
    seen: Mutex<HashMap<(u64, u64), ReplayWindow>>,
}

impl PeerVerifier {
    pub fn new(secret: ClusterSecret) -> PeerVerifier {
        PeerVerifier {
            secret,
            started_ms: now_ms(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The node id a request to `path` proves it comes from.
    pub fn verify(&self, path: &str, headers: &HeaderMap) -> Result<u64, PeerRefusal> {
        self.verify_at(path, headers, now_ms())
    }

    fn verify_at(&self, path: &str, headers: &HeaderMap, now: u64) -> Result<u64, PeerRefusal> {
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(PeerRefusal::Unsigned(name))
        };
        let node: u64 = text(HEADER_NODE)?
            .parse()
            .map_err(|_| PeerRefusal::Unsigned(HEADER_NODE))?;
        let time_ms: u64 = text(HEADER_TIME)?
            .parse()
            .map_err(|_| PeerRefusal::Unsigned(HEADER_TIME))?;
        let nonce = text(HEADER_NONCE)?;
        let (boot, counter) = nonce
            .split_once('.')
            .and_then(|(b, c)| {
                Some((
                    u64::from_str_radix(b, 16).ok()?,
                    u64::from_str_radix(c, 16).ok()?,
                ))
            })
            .ok_or(PeerRefusal::Unsigned(HEADER_NONCE))?;
        let signature = hex::decode(text(HEADER_SIGNATURE)?)
            .map_err(|_| PeerRefusal::Unsigned(HEADER_SIGNATURE))?;
        // `verify_slice` compares in constant time.
        self.secret
            .mac(path, node, time_ms, nonce)
            .verify_slice(&signature)
            .map_err(|_| PeerRefusal::BadSignature)?;
        let skew_ms = time_ms as i64 - now as i64;
        let max = PEER_CLOCK_SKEW_MAX.as_millis() as i64;
        if skew_ms.abs() > max || time_ms < self.started_ms {
            return Err(PeerRefusal::Stale {
                signed_ms: time_ms,
                skew_ms,
                max_s: PEER_CLOCK_SKEW_MAX.as_secs(),
            });
        }
        let mut seen = self.seen.lock().expect("replay lock poisoned");
        if seen.len() > 64 {
            // Processes not heard from for twice the clock window can send nothing valid.
            seen.retain(|_, w| w.last_used.elapsed() < 2 * PEER_CLOCK_SKEW_MAX);
        }
        if seen
            .entry((node, boot))
            .or_insert_with(ReplayWindow::new)
            .accept(counter)
        {
            Ok(node)
        } else {
            Err(PeerRefusal::Replayed)
        }
    }
}

/// The nonces one sender process used, as a sliding window behind the highest counter seen
/// (as IPsec's anti-replay window): bounded memory however many requests arrive.
pub struct ReplayWindow {
    top: Option<u64>,
    bits: Vec<u64>,
    last_used: Instant,
}

impl ReplayWindow {
    fn new() -> ReplayWindow {
        ReplayWindow {
            top: None,
            bits: vec![0; (REPLAY_WINDOW_NONCES / 64) as usize],
            last_used: Instant::now(),
        }
    }

    fn slot(n: u64) -> (usize, u64) {
        let i = n % REPLAY_WINDOW_NONCES;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Whether `n` is new (and now remembered).
    fn accept(&mut self, n: u64) -> bool {
        self.last_used = Instant::now();
        match self.top {
            Some(top) if n <= top => {
                if top - n >= REPLAY_WINDOW_NONCES {
                    return false;
                }
                let (word, bit) = Self::slot(n);
                if self.bits[word] & bit != 0 {
                    return false;
                }
                self.bits[word] |= bit;
                true
            }
            top => {
                let from = top.map_or(0, |t| t + 1);
                if n - from >= REPLAY_WINDOW_NONCES {
                    self.bits.iter_mut().for_each(|w| *w = 0);
                } else {
                    for m in from..n {
                        let (word, bit) = Self::slot(m);
                        self.bits[word] &= !bit;
                    }
                }
                let (word, bit) = Self::slot(n);
                self.bits[word] |= bit;
                self.top = Some(n);
                true
            }
        }
    }
}

/// A gRPC channel to a peer that signs every request with this node's [`PeerSigner`] (when
/// the cluster has a secret) — what [`tonic`] clients of the internal services are built on.
#[derive(Clone)]
pub struct PeerChannel {
    inner: tonic::transport::Channel,
    signer: Option<std::sync::Arc<PeerSigner>>,
}

impl PeerChannel {
    pub fn new(
        inner: tonic::transport::Channel,
        signer: Option<std::sync::Arc<PeerSigner>>,
    ) -> PeerChannel {
        PeerChannel { inner, signer }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for PeerChannel {
    type Response = <tonic::transport::Channel as tower_service::Service<
        http::Request<tonic::body::Body>,
    >>::Response;
    type Error = <tonic::transport::Channel as tower_service::Service<
        http::Request<tonic::body::Body>,
    >>::Error;
    type Future = <tonic::transport::Channel as tower_service::Service<
        http::Request<tonic::body::Body>,
    >>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(signer) = &self.signer {
            let path = req.uri().path().to_string();
            signer.sign(&path, req.headers_mut());
        }
        self.inner.call(req)
    }
}

/// A bearer token for one purpose (the metrics scrape: `serve --metrics-token-file`), read from
/// a file like the cluster secret: not world-readable, at least [`CLUSTER_SECRET_BYTES_MIN`]
/// bytes. It never prints.
#[derive(Clone)]
pub struct BearerToken {
    /// HMAC of a fixed message under the token: what a presented token must reproduce.
    proof: Vec<u8>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    const CONTEXT: &'static [u8] = b"millrace bearer token v1";

    pub fn load(path: &Path) -> Result<BearerToken, TlsError> {
        crate::files::refuse_world_readable(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| TlsError::file(path, e))?;
        BearerToken::new(text.trim()).map_err(|e| TlsError::file(path, e))
    }

    pub fn new(token: &str) -> Result<BearerToken, String> {
        if token.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(format!(
                "a token must be at least {CLUSTER_SECRET_BYTES_MIN} bytes (it has {})",
                token.len()
            ));
        }
        Ok(BearerToken {
            proof: Self::mac(token).finalize().into_bytes().to_vec(),
        })
    }

    fn mac(token: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
        mac.update(Self::CONTEXT);
        mac
    }

    /// Whether an `Authorization` header value is `Bearer <this token>` (compared in constant
    /// time).
    pub fn admits(&self, authorization: &str) -> bool {
        let Some(presented) = authorization.strip_prefix("Bearer ") else {
            return false;
        };
        Self::mac(presented.trim())
            .verify_slice(&self.proof)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (PeerSigner, PeerVerifier) {
        let secret = ClusterSecret::new(b"0123456789abcdef0123").unwrap();
        (
            PeerSigner::new(7, secret.clone()),
            PeerVerifier::new(secret),
        )
    }

    const PATH: &str = "/millrace.internal.Internal/Raft";

    #[test]
    fn a_signed_request_names_its_node_and_only_once() {
        let (signer, verifier) = pair();
        let mut h = HeaderMap::new();
        signer.sign(PATH, &mut h);
        assert_eq!(verifier.verify(PATH, &h), Ok(7));
        assert_eq!(verifier.verify(PATH, &h), Err(PeerRefusal::Replayed));
        // The same signature on another method does not verify.
        let mut h = HeaderMap::new();
        signer.sign(PATH, &mut h);
        assert_eq!(
            verifier.verify("/millrace.internal.Internal/ShardAppend", &h),
            Err(PeerRefusal::BadSignature)
        );
    }

    #[test]
    fn wrong_secrets_forged_ids_and_stale_times_are_refused() {
        let (_, verifier) = pair();
        let stranger = PeerSigner::new(
            7,
            ClusterSecret::new(b"another secret, long enough").unwrap(),
        );
        let mut h = HeaderMap::new();
        stranger.sign(PATH, &mut h);
        assert_eq!(verifier.verify(PATH, &h), Err(PeerRefusal::BadSignature));

        let (signer, verifier) = pair();
        let mut h = HeaderMap::new();
        signer.sign(PATH, &mut h);
        h.insert(HEADER_NODE, HeaderValue::from_static("8"));
        assert_eq!(verifier.verify(PATH, &h), Err(PeerRefusal::BadSignature));

        let mut h = HeaderMap::new();
        signer.sign_at(PATH, now_ms() + 301_000, &mut h);
        assert!(matches!(
            verifier.verify(PATH, &h),
            Err(PeerRefusal::Stale { .. })
        ));
        // Signed before the verifier started (a capture replayed after a restart).
        let mut h = HeaderMap::new();
        signer.sign_at(PATH, verifier.started_ms - 1_000, &mut h);
        assert!(matches!(
            verifier.verify(PATH, &h),
            Err(PeerRefusal::Stale { .. })
        ));
        assert_eq!(
            verifier.verify(PATH, &HeaderMap::new()),
            Err(PeerRefusal::Unsigned(HEADER_NODE))
        );
        let shown = PeerRefusal::BadSignature.to_string() + &format!("{:?}", signer);
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    #[test]
    fn the_replay_window_takes_late_nonces_once_and_refuses_those_behind_it() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(5));
        assert!(w.accept(3), "late but inside the window");
        assert!(!w.accept(3));
        assert!(!w.accept(5));
        assert!(w.accept(5 + REPLAY_WINDOW_NONCES));
        assert!(!w.accept(5), "behind the window");
        assert!(
            w.accept(4 + REPLAY_WINDOW_NONCES),
            "inside the window, unseen"
        );
        assert!(!w.accept(5 + REPLAY_WINDOW_NONCES));
        assert!(w.accept(10 * REPLAY_WINDOW_NONCES));
        assert!(!w.accept(10 * REPLAY_WINDOW_NONCES));
        assert!(w.accept(10 * REPLAY_WINDOW_NONCES - 1));
    }

    #[test]
    fn short_secrets_and_world_readable_files_are_refused() {
        assert!(ClusterSecret::new(b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, ClusterSecret::generate_text()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterSecret::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by every user"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterSecret::load(&path).is_ok());
    }

    #[test]
    fn a_bearer_token_admits_only_itself_and_never_prints() {
        assert!(BearerToken::new("short").is_err());
        let t = BearerToken::new("metrics-token-0123456789").unwrap();
        assert!(t.admits("Bearer metrics-token-0123456789"));
        assert!(!t.admits("Bearer metrics-token-012345678"));
        assert!(!t.admits("metrics-token-0123456789"));
        assert!(!t.admits("Basic metrics-token-0123456789"));
        assert!(!format!("{t:?}").contains("metrics-token"));
    }
}
