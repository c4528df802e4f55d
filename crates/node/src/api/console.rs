//! `GET /console`: a read-only web console (one embedded page, no external assets) that polls
//! `GET /console/state`, the detailed cluster status from the metadata leader.
//!
//! With access keys configured both need a key allowed `GetClusterStatus`: presented with HTTP
//! Basic authentication (the access key id as the user name, the secret access key as the
//! password, so a browser asks for it; use HTTPS), or signed with SigV4 like the status pages.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::access::Target;
use crate::server::node::Node;

/// How often the page asks for the state again.
pub const REFRESH_MS: u64 = 2_000;

/// The action a key must be allowed to see the console.
const CONSOLE_ACTION: &str = "GetClusterStatus";

const PAGE: &str = include_str!("console.html");

/// The page itself.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but the page's own inline script and style and its same-origin fetches.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE.replace("__REFRESH_MS__", &REFRESH_MS.to_string()),
    )
        .into_response()
}

/// The detailed cluster status the page shows, with the node that served it.
pub async fn state(State(node): State<Arc<Node>>) -> Response {
    match node.fetch_cluster_status(true).await {
        Ok(mut s) => {
            s["served_by"] = json!(node.id);
            s["refresh_ms"] = json!(REFRESH_MS);
            ([(header::CACHE_CONTROL, "no-store")], Json(s)).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"error": e.to_string(), "served_by": node.id})),
        )
            .into_response(),
    }
}

/// Lets a request through with the credentials the API takes (see the module's doc).
pub async fn viewer(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    use millrace_security::access_sig::KeyStore;
    if !node.enforced() {
        return next.run(req).await;
    }
    match basic_credentials(req.headers()) {
        Some(Ok((key_id, secret))) => {
            let known = node.secret(&key_id);
            if !known.is_some_and(|k| same_secret(&k, &secret)) {
                return challenge("The access key id or secret access key is not right");
            }
            match node.authorize(Some(&key_id), CONSOLE_ACTION, Target::default()) {
                Ok(()) => next.run(req).await,
                Err(e) => {
                    // As the status pages answer: over the key's rate 429, else 403.
                    let status = match e.kinesis_name() {
                        "LimitExceededException" => StatusCode::TOO_MANY_REQUESTS,
                        _ => StatusCode::FORBIDDEN,
                    };
                    let body = json!({"__type": e.kinesis_name(), "message": e.to_string()});
                    (status, Json(body)).into_response()
                }
            }
        }
        Some(Err(why)) => challenge(why),
        None if req.headers().contains_key(header::AUTHORIZATION) => {
            match super::http::allow_status(
                &node,
                CONSOLE_ACTION,
                req.method(),
                req.uri(),
                req.headers(),
            ) {
                Ok(()) => next.run(req).await,
                Err(refused) => refused.into_response(),
            }
        }
        None => challenge("The console needs an access key allowed GetClusterStatus"),
    }
}

/// A 401 that makes a browser ask for the key.
fn challenge(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="Millrace console", charset="UTF-8""#,
        )],
        Json(json!({"__type": "UnrecognizedClientException", "message": why})),
    )
        .into_response()
}

/// `Authorization: Basic base64(id:secret)`: `None` without Basic, an error if malformed.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), &'static str>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let parsed = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|text| {
            let (id, secret) = text.split_once(':')?;
            Some((id.to_string(), secret.to_string()))
        });
    Some(parsed.ok_or("The Basic credentials are not base64 of KEY_ID:SECRET"))
}

/// Compares two secrets in time independent of where they differ (through their MACs).
fn same_secret(known: &str, presented: &str) -> bool {
    let tag = |s: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"millrace console").expect("any key length");
        mac.update(s.as_bytes());
        mac
    };
    tag(presented)
        .verify_slice(&tag(known).finalize().into_bytes())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_or_refused_by_name() {
        let mut h = HeaderMap::new();
        assert!(basic_credentials(&h).is_none());
        let encoded = base64::engine::general_purpose::STANDARD.encode("AKID:se:cret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(Ok(("AKID".to_string(), "se:cret".to_string())))
        );
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(matches!(basic_credentials(&h), Some(Err(_))));
        h.insert(header::AUTHORIZATION, "AWS4-HMAC-SHA256 x".parse().unwrap());
        assert!(basic_credentials(&h).is_none());
    }

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3cres"));
        assert!(!same_secret("s3cret", ""));
    }
}
