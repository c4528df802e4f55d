//! The Kinesis Data Streams HTTP API on the node's HTTP port: `POST /` with
//! `X-Amz-Target: Kinesis_20131202.<Action>`, bodies in `application/x-amz-json-1.1` or
//! `application/x-amz-cbor-1.1`, over HTTP/1.1 or cleartext HTTP/2. Each action validates its
//! input as Kinesis does and calls the same handlers as the native gRPC API.

mod actions;
pub mod eventstream;
mod input;
pub mod sigv4;
pub mod wire;

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use millrace_security::access_sig::KeyStore;
use serde_json::{Map, Value};

use super::access::{consumer_target, resource_target, ResourceTarget};
use super::error::ApiError;
use super::grpc::{stream_name_from, MillraceService};
use crate::server::node::Node;
use wire::{Encoding, Out};

/// The target prefix of every Kinesis action.
pub const TARGET_PREFIX: &str = "Kinesis_20131202.";
/// Largest request body: a 10 MiB record in base64 plus its envelope.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// An error as Kinesis reports it: the exception name (`__type`), a message, an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisError {
    pub type_name: Cow<'static, str>,
    pub message: String,
    pub status: StatusCode,
}

impl KinesisError {
    /// A client error (HTTP 400).
    pub fn client(type_name: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        KinesisError {
            type_name: type_name.into(),
            message: message.into(),
            status: StatusCode::BAD_REQUEST,
        }
    }

    fn body(&self) -> Out {
        Out::map(vec![
            ("__type", Out::str(self.type_name.clone())),
            ("message", Out::str(self.message.clone())),
        ])
    }
}

impl From<ApiError> for KinesisError {
    fn from(e: ApiError) -> Self {
        let status = match e.kinesis_name() {
            "InternalFailure" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        KinesisError {
            type_name: Cow::Borrowed(e.kinesis_name()),
            message: e.to_string(),
            status,
        }
    }
}

/// What an action answers: a body, or an event stream (SubscribeToShard).
pub enum Reply {
    Body(Out),
    Events(Body),
}

pub struct KinesisApi {
    pub(crate) svc: MillraceService,
}

impl KinesisApi {
    pub fn new(node: Arc<Node>) -> Arc<KinesisApi> {
        Arc::new(KinesisApi {
            svc: MillraceService { node },
        })
    }
}

/// `POST /`, the Kinesis API. Bodies are read by [`read_body`], within its limits.
pub fn router(api: Arc<KinesisApi>) -> Router {
    Router::new().route("/", post(handle)).with_state(api)
}

/// A request body, within the limits that protect the node: a declared `Content-Length`
/// over [`REQUEST_BYTES_MAX`] is refused at once (413) without reading anything, as is a body
/// that grows past it; a body not received whole within `timeout` is refused with 408.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    timeout: std::time::Duration,
) -> Result<Bytes, KinesisError> {
    let too_large = |size: String| KinesisError {
        type_name: Cow::Borrowed("RequestEntityTooLargeException"),
        message: format!(
            "the request body ({size}) is larger than the limit of {REQUEST_BYTES_MAX} bytes"
        ),
        status: StatusCode::PAYLOAD_TOO_LARGE,
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > REQUEST_BYTES_MAX as u64) {
        return Err(too_large(format!("{n} bytes")));
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, REQUEST_BYTES_MAX)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                Err(too_large("more bytes than declared".into()))
            } else {
                Err(KinesisError::client(
                    "SerializationException",
                    format!("the request body could not be read: {e}"),
                ))
            }
        }
        Err(_) => Err(KinesisError {
            type_name: Cow::Borrowed("RequestTimeoutException"),
            message: format!(
                "the request body was not received within {} s",
                timeout.as_secs_f64()
            ),
            status: StatusCode::REQUEST_TIMEOUT,
        }),
    }
}

fn request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn handle(
    State(api): State<Arc<KinesisApi>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding =
        Encoding::from_content_type(headers.get("content-type").and_then(|v| v.to_str().ok()));
    let id = request_id();
    let node = &api.svc.node;
    let timeout = node.config.limits.http_body_read_timeout;
    let result = match read_body(&headers, body, timeout).await {
        Ok(body) => serve(&api, encoding, &method, &uri, &headers, &body).await,
        Err(e) => {
            let counter = match e.status {
                StatusCode::PAYLOAD_TOO_LARGE => Some(&node.admission.kinesis_bodies_too_large),
                StatusCode::REQUEST_TIMEOUT => Some(&node.admission.kinesis_bodies_timed_out),
                _ => None,
            };
            if let Some(c) = counter {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e)
        }
    };
    let mut response = match result {
        Ok(Reply::Body(out)) => {
            let mut r = Response::new(Body::from(encoding.encode(&out)));
            set_content_type(&mut r, encoding.content_type());
            r
        }
        Ok(Reply::Events(body)) => {
            let mut r = Response::new(body);
            set_content_type(&mut r, eventstream::CONTENT_TYPE);
            r
        }
        Err(e) => {
            tracing::debug!(error = %e.type_name, message = %e.message, "Kinesis request failed");
            let mut r = Response::new(Body::from(encoding.encode(&e.body())));
            *r.status_mut() = e.status;
            set_content_type(&mut r, encoding.content_type());
            if let Ok(v) = HeaderValue::from_str(&e.type_name) {
                r.headers_mut().insert("x-amzn-errortype", v);
            }
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

fn set_content_type(r: &mut Response, ct: &'static str) {
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(ct));
}

async fn serve(
    api: &KinesisApi,
    encoding: Encoding,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, KinesisError> {
    let node = &*api.svc.node;
    let signed = sigv4::SignedRequest {
        method,
        uri,
        headers,
        body,
    };
    let now_secs = crate::server::now_ms() / 1000;
    let principal = sigv4::verify(node, &node.config.kinesis.region, &signed, now_secs)?;
    // A slot is taken once the caller proved who it is (its body is bounded by the body-read
    // timeout and the connection limit): strangers cannot fill the node's slots.
    let _slot = node.admission.enter()?;
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(action) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(unknown_operation(target));
    };
    let input = encoding
        .decode(body)
        .map_err(|m| KinesisError::client("SerializationException", m))?;
    tracing::debug!(action, "Kinesis request");
    if node.enforced() {
        let target = target_of(&api.svc, action, &input).await;
        node.authorize(principal.as_deref(), action, target.as_target())?;
    }
    actions::dispatch(api, action, &input, encoding, principal.as_deref()).await
}

/// What a request acts on, read from its input before the action validates it, from exactly
/// the members the action reads, with the same precedence (a StreamARN wins over a
/// StreamName; a ConsumerARN over a StreamARN and ConsumerName). Members an action does not
/// read play no part: a request cannot have one stream checked and another acted on.
async fn target_of(
    svc: &MillraceService,
    action: &str,
    input: &Map<String, Value>,
) -> ResourceTarget {
    let field = |k: &str| input.get(k).and_then(Value::as_str);
    let named = |s: Option<&str>| ResourceTarget::stream(s.and_then(|s| stream_name_from(s).ok()));
    let stream = field("StreamARN").or(field("StreamName"));
    match action {
        "CreateStream" => named(field("StreamName")),
        "GetRecords" => match field("ShardIterator") {
            Some(iterator) => ResourceTarget::stream(svc.iterator_stream(iterator).await.ok()),
            None => ResourceTarget::default(),
        },
        "ListShards" => match (stream, field("NextToken")) {
            (None, Some(token)) => {
                ResourceTarget::stream(crate::api::shards::next_token_stream(token))
            }
            _ => named(stream),
        },
        "RegisterStreamConsumer" | "ListStreamConsumers" => named(field("StreamARN")),
        "DeregisterStreamConsumer" | "DescribeStreamConsumer" => consumer_target(
            field("StreamARN").unwrap_or(""),
            field("ConsumerName").unwrap_or(""),
            field("ConsumerARN").unwrap_or(""),
        ),
        "SubscribeToShard" => resource_target(field("ConsumerARN").unwrap_or("")),
        "TagResource"
        | "UntagResource"
        | "ListTagsForResource"
        | "PutResourcePolicy"
        | "GetResourcePolicy"
        | "DeleteResourcePolicy" => resource_target(field("ResourceARN").unwrap_or("")),
        _ => named(stream),
    }
}

fn unknown_operation(target: &str) -> KinesisError {
    KinesisError::client(
        "UnknownOperationException",
        format!("{target:?} is not a Kinesis_20131202 operation"),
    )
}
