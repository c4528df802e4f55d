//! Access-key signatures on the native gRPC API (format version 1, `docs/security.md`): the
//! same keys as the Kinesis API's SigV4, with a simpler canonical form, since a gRPC call has
//! no query string and no headers worth signing beyond these.
//!
//! Every call carries:
//!
//! - `x-millrace-access-key-id`: the key id;
//! - `x-millrace-date`: when it was signed, milliseconds since the Unix epoch;
//! - `x-millrace-content-sha256`: the hex SHA-256 of the request body (the gRPC-framed
//!   message), or `STREAMING` for the calls whose request is a stream
//!   ([`STREAMING_METHODS`]): their messages are not known when the call starts;
//! - `x-millrace-signature`: hex HMAC-SHA256, keyed with the secret access key, over
//!   `MILLRACE-HMAC-SHA256-v1\n{path}\n{key id}\n{date}\n{content sha256}`.
//!
//! The secret never crosses the wire. The server refuses a call whose date is more than
//! [`REQUEST_TIME_SKEW_MAX`] from its clock, whose body does not hash to the signed digest, or
//! whose signature does not match; the comparison takes the same time whatever it compares.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::now_ms;

pub const HEADER_KEY_ID: &str = "x-millrace-access-key-id";
pub const HEADER_DATE: &str = "x-millrace-date";
pub const HEADER_CONTENT_SHA256: &str = "x-millrace-content-sha256";
pub const HEADER_SIGNATURE: &str = "x-millrace-signature";
/// The content digest of a call whose request is a stream.
pub const STREAMING: &str = "STREAMING";
const SIGNED_PREFIX: &str = "MILLRACE-HMAC-SHA256-v1";
/// How far a call's date may be from the server's clock, either way (as SigV4's).
pub const REQUEST_TIME_SKEW_MAX: Duration = Duration::from_secs(300);

/// The public gRPC methods whose request is a stream of messages.
pub const STREAMING_METHODS: &[&str] = &["/millrace.v1.Millrace/PutRecordsPipeline"];

/// An access key. Its `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ..)", self.key_id)
    }
}

impl Credentials {
    pub fn new(key_id: impl Into<String>, secret: impl Into<String>) -> Credentials {
        Credentials {
            key_id: key_id.into(),
            secret: secret.into(),
        }
    }
}

fn mac(secret: &str, path: &str, key_id: &str, date_ms: u64, digest: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{SIGNED_PREFIX}\n{path}\n{key_id}\n{date_ms}\n{digest}").as_bytes());
    mac
}

/// The hex SHA-256 of a request body.
pub fn content_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Adds the four headers of a call to `path` whose body hashes to `digest`.
pub fn sign(creds: &Credentials, path: &str, digest: &str, date_ms: u64, headers: &mut HeaderMap) {
    let signature = hex::encode(
        mac(&creds.secret, path, &creds.key_id, date_ms, digest)
            .finalize()
            .into_bytes(),
    );
    let value = |s: &str| HeaderValue::from_str(s);
    if let (Ok(id), Ok(date), Ok(digest), Ok(sig)) = (
        value(&creds.key_id),
        value(&date_ms.to_string()),
        value(digest),
        value(&signature),
    ) {
        headers.insert(HEADER_KEY_ID, id);
        headers.insert(HEADER_DATE, date);
        headers.insert(HEADER_CONTENT_SHA256, digest);
        headers.insert(HEADER_SIGNATURE, sig);
    }
}

/// Why a call was refused. Safe to send back: never holds a secret or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefusal {
    #[error("the call is not signed: sign calls with an access key (--access-key-id and --secret-access-key, or MILLRACE_ACCESS_KEY_ID and MILLRACE_SECRET_ACCESS_KEY); header {0} is missing or malformed")]
    Unsigned(&'static str),
    #[error("the access key id {0} is not known to this cluster")]
    UnknownKey(String),
    #[error("the call's signature does not match: check the secret access key of {0}")]
    BadSignature(String),
    #[error("the call was signed at {signed_ms} ms, {skew_ms} ms from the server's clock (at most {max_s} s either way): check the client's clock")]
    Stale {
        signed_ms: u64,
        skew_ms: i64,
        max_s: u64,
    },
    #[error("the call's body does not match its signed digest ({HEADER_CONTENT_SHA256})")]
    BodyMismatch,
    #[error("the call's body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Checks the signature of a call to `path` (its headers, and the SHA-256 of its body, or
/// `None` for a streaming call); `secret_of` finds a key's secret. Returns the key id.
pub fn verify(
    secret_of: impl Fn(&str) -> Option<String>,
    path: &str,
    headers: &HeaderMap,
    body_sha256: Option<&str>,
    now: u64,
) -> Result<String, AccessRefusal> {
    let text = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or(AccessRefusal::Unsigned(name))
    };
    let key_id = text(HEADER_KEY_ID)?;
    let date_ms: u64 = text(HEADER_DATE)?
        .parse()
        .map_err(|_| AccessRefusal::Unsigned(HEADER_DATE))?;
    let digest = text(HEADER_CONTENT_SHA256)?;
    let signature = hex::decode(text(HEADER_SIGNATURE)?)
        .map_err(|_| AccessRefusal::Unsigned(HEADER_SIGNATURE))?;
    let secret = secret_of(key_id).ok_or_else(|| AccessRefusal::UnknownKey(key_id.to_string()))?;
    // `verify_slice` compares in constant time.
    mac(&secret, path, key_id, date_ms, digest)
        .verify_slice(&signature)
        .map_err(|_| AccessRefusal::BadSignature(key_id.to_string()))?;
    let skew_ms = date_ms as i64 - now as i64;
    if skew_ms.unsigned_abs() > REQUEST_TIME_SKEW_MAX.as_millis() as u64 {
        return Err(AccessRefusal::Stale {
            signed_ms: date_ms,
            skew_ms,
            max_s: REQUEST_TIME_SKEW_MAX.as_secs(),
        });
    }
    let body_ok = match body_sha256 {
        Some(sha) => sha == digest,
        None => digest == STREAMING,
    };
    if !body_ok {
        return Err(AccessRefusal::BodyMismatch);
    }
    Ok(key_id.to_string())
}

/// Reads a whole request body (at most `limit` bytes) and returns it with its SHA-256.
pub async fn read_body(
    body: tonic::body::Body,
    limit: usize,
) -> Result<(bytes::Bytes, String), AccessRefusal> {
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| AccessRefusal::TooLarge(limit))?
        .to_bytes();
    let sha = content_sha256(&bytes);
    Ok((bytes, sha))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Responding =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>>;

/// A client channel that signs every call with `credentials` (none: calls go unsigned).
/// Unary calls' bodies are read whole to be hashed (they are one message already).
#[derive(Clone)]
pub struct SigningChannel {
    inner: tonic::transport::Channel,
    credentials: Option<Arc<Credentials>>,
}

impl SigningChannel {
    pub fn new(
        inner: tonic::transport::Channel,
        credentials: Option<Arc<Credentials>>,
    ) -> SigningChannel {
        SigningChannel { inner, credentials }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for SigningChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Responding;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Responding {
        // The instance polled ready takes the call; a clone stays for the next one.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let Some(creds) = self.credentials.clone() else {
            return Box::pin(async move { inner.call(req).await.map_err(Into::into) });
        };
        let path = req.uri().path().to_string();
        if STREAMING_METHODS.contains(&path.as_str()) {
            sign(&creds, &path, STREAMING, now_ms(), req.headers_mut());
            return Box::pin(async move { inner.call(req).await.map_err(Into::into) });
        }
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            sign(
                &creds,
                &path,
                &content_sha256(&bytes),
                now_ms(),
                &mut parts.headers,
            );
            let req = http::Request::from_parts(
                parts,
                tonic::body::Body::new(http_body_util::Full::new(bytes)),
            );
            inner.call(req).await.map_err(Into::into)
        })
    }
}

/// The access key a call was signed with (in the request's extensions, once verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// The server side: a service (the public gRPC API) behind signature checks. Refusals are
/// answered with the gRPC status `refuse` makes of them.
pub struct AccessGuard<S, K> {
    inner: S,
    keys: Arc<K>,
    body_limit: usize,
    refuse: fn(AccessRefusal) -> tonic::Status,
}

/// Where an [`AccessGuard`] finds the secret of a key id.
pub trait KeyStore: Send + Sync + 'static {
    /// False when no key is configured: every call is accepted unsigned.
    fn enforced(&self) -> bool;
    fn secret(&self, key_id: &str) -> Option<String>;
}

impl<S: Clone, K> Clone for AccessGuard<S, K> {
    fn clone(&self) -> Self {
        AccessGuard {
            inner: self.inner.clone(),
            keys: self.keys.clone(),
            body_limit: self.body_limit,
            refuse: self.refuse,
        }
    }
}

impl<S, K> AccessGuard<S, K> {
    pub fn new(
        inner: S,
        keys: Arc<K>,
        body_limit: usize,
        refuse: fn(AccessRefusal) -> tonic::Status,
    ) -> AccessGuard<S, K> {
        AccessGuard {
            inner,
            keys,
            body_limit,
            refuse,
        }
    }
}

impl<S: tonic::server::NamedService, K> tonic::server::NamedService for AccessGuard<S, K> {
    const NAME: &'static str = S::NAME;
}

impl<S, K> tower_service::Service<http::Request<tonic::body::Body>> for AccessGuard<S, K>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    K: KeyStore,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        if !self.keys.enforced() {
            return Box::pin(inner.call(req));
        }
        let keys = self.keys.clone();
        let limit = self.body_limit;
        let refuse = self.refuse;
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let refused = |r: AccessRefusal| {
                tracing::debug!(path = %path, reason = %r, "gRPC call refused");
                Ok(refuse(r).into_http())
            };
            let now = now_ms();
            let mut req = req;
            let key_id = if STREAMING_METHODS.contains(&path.as_str()) {
                match verify(|k| keys.secret(k), &path, req.headers(), None, now) {
                    Ok(k) => k,
                    Err(r) => return refused(r),
                }
            } else {
                // Cheap checks first: an unsigned or unknown caller's body is never read.
                if let Err(r) = verify(|k| keys.secret(k), &path, req.headers(), Some(""), now) {
                    if r != AccessRefusal::BodyMismatch {
                        return refused(r);
                    }
                }
                let (parts, body) = req.into_parts();
                let (bytes, sha) = match read_body(body, limit).await {
                    Ok(b) => b,
                    Err(r) => return refused(r),
                };
                let k = match verify(|k| keys.secret(k), &path, &parts.headers, Some(&sha), now) {
                    Ok(k) => k,
                    Err(r) => return refused(r),
                };
                req = http::Request::from_parts(
                    parts,
                    tonic::body::Body::new(http_body_util::Full::new(bytes)),
                );
                k
            };
            req.extensions_mut().insert(Principal(key_id));
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/millrace.v1.Millrace/PutRecords";

    fn keys(id: &str) -> Option<String> {
        (id == "AKID").then(|| "s3cret-access-key".to_string())
    }

    #[test]
    fn signed_calls_verify_and_everything_else_is_refused() {
        let creds = Credentials::new("AKID", "s3cret-access-key");
        let now = now_ms();
        let body = content_sha256(b"a body");
        let mut h = HeaderMap::new();
        sign(&creds, PATH, &body, now, &mut h);
        assert_eq!(verify(keys, PATH, &h, Some(&body), now), Ok("AKID".into()));
        assert_eq!(
            verify(keys, PATH, &h, Some(&content_sha256(b"another")), now),
            Err(AccessRefusal::BodyMismatch)
        );
        assert_eq!(
            verify(
                keys,
                "/millrace.v1.Millrace/DeleteStream",
                &h,
                Some(&body),
                now
            ),
            Err(AccessRefusal::BadSignature("AKID".into()))
        );
        assert!(matches!(
            verify(keys, PATH, &h, Some(&body), now + 301_000),
            Err(AccessRefusal::Stale { .. })
        ));
        assert_eq!(
            verify(keys, PATH, &HeaderMap::new(), Some(&body), now),
            Err(AccessRefusal::Unsigned(HEADER_KEY_ID))
        );
        let wrong = Credentials::new("AKID", "not the secret");
        let mut h = HeaderMap::new();
        sign(&wrong, PATH, &body, now, &mut h);
        assert_eq!(
            verify(keys, PATH, &h, Some(&body), now),
            Err(AccessRefusal::BadSignature("AKID".into()))
        );
        let stranger = Credentials::new("NOBODY", "x");
        let mut h = HeaderMap::new();
        sign(&stranger, PATH, &body, now, &mut h);
        assert_eq!(
            verify(keys, PATH, &h, Some(&body), now),
            Err(AccessRefusal::UnknownKey("NOBODY".into()))
        );
        // A streaming call must say so, and a unary one may not claim to be one.
        let mut h = HeaderMap::new();
        sign(&creds, PATH, STREAMING, now, &mut h);
        assert_eq!(
            verify(keys, PATH, &h, Some(&body), now),
            Err(AccessRefusal::BodyMismatch)
        );
        assert_eq!(verify(keys, PATH, &h, None, now), Ok("AKID".into()));
        let shown = format!("{creds:?} {:?}", AccessRefusal::BadSignature("AKID".into()));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
