//! Limits that keep one client, or a crowd, from taking a node down (issue 15, point 5): the
//! requests the public APIs handle at once, how long a gRPC call may take to arrive and be
//! answered (a call whose body stalls mid-frame holds nothing for long), and an optional rate
//! per access key. Each refusal is a clear error and a counter in `/v1/node/status`.
//!
//! The internal services (Raft, forwarding) are not limited here: shedding a peer's heartbeat
//! under client load would turn overload into elections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::api::error::ApiError;

/// Concurrent HTTP/2 streams (requests) one connection may have open, on both ports; the
/// protocol's SETTINGS tell the client, which waits for a stream to end before it opens
/// another. (HTTP/1.1 carries one request at a time.)
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

/// The node's admission state, shared by both public APIs.
pub struct Admission {
    in_flight: AtomicUsize,
    in_flight_max: usize,
    call_timeout: Duration,
    /// Requests per second per access key (`None`: unlimited).
    key_rate: Option<f64>,
    buckets: Mutex<HashMap<String, Bucket>>,
    pub refused_in_flight: AtomicU64,
    pub calls_timed_out: AtomicU64,
    pub refused_key_rate: AtomicU64,
    pub kinesis_bodies_too_large: AtomicU64,
    pub kinesis_bodies_timed_out: AtomicU64,
}

/// A token bucket holding up to one second of the rate.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A request being handled; the slot frees when it drops.
pub struct InFlight(Arc<Admission>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Admission {
    pub fn new(in_flight_max: usize, call_timeout: Duration, key_rate: Option<f64>) -> Admission {
        Admission {
            in_flight: AtomicUsize::new(0),
            in_flight_max,
            call_timeout,
            key_rate,
            buckets: Mutex::new(HashMap::new()),
            refused_in_flight: AtomicU64::new(0),
            calls_timed_out: AtomicU64::new(0),
            refused_key_rate: AtomicU64::new(0),
            kinesis_bodies_too_large: AtomicU64::new(0),
            kinesis_bodies_timed_out: AtomicU64::new(0),
        }
    }

    /// Takes a slot for one request, or refuses it (nothing was done: safe to retry).
    pub fn enter(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        let before = self.in_flight.fetch_add(1, Relaxed);
        let slot = InFlight(self.clone());
        if before >= self.in_flight_max {
            self.refused_in_flight.fetch_add(1, Relaxed);
            return Err(ApiError::Unavailable(format!(
                "the node is handling {} requests, its limit (--requests-in-flight-max); retry later",
                self.in_flight_max
            )));
        }
        Ok(slot)
    }

    /// Spends one of `key`'s requests for this second, or refuses with Kinesis's throttling
    /// error.
    pub fn spend(&self, key: &str) -> Result<(), ApiError> {
        let Some(rate) = self.key_rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate buckets lock");
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            drop(buckets);
            self.refused_key_rate.fetch_add(1, Relaxed);
            Err(ApiError::LimitExceeded(format!(
                "Rate exceeded for access key {key}: at most {rate} requests per second on each node (--key-requests-per-second)"
            )))
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let c = self.counts();
        serde_json::json!({
            "requests_in_flight": c.in_flight,
            "requests_in_flight_max": self.in_flight_max,
            "requests_refused_in_flight": c.refused_in_flight,
            "grpc_call_timeout_ms": self.call_timeout.as_millis() as u64,
            "grpc_calls_timed_out": c.calls_timed_out,
            "key_requests_per_second": self.key_rate,
            "requests_refused_key_rate": c.refused_key_rate,
            "kinesis_bodies_too_large": c.kinesis_bodies_too_large,
            "kinesis_bodies_timed_out": c.kinesis_bodies_timed_out,
        })
    }

    /// The counters now (for the status page and the metrics).
    pub fn counts(&self) -> AdmissionCounts {
        AdmissionCounts {
            in_flight: self.in_flight.load(Relaxed) as u64,
            refused_in_flight: self.refused_in_flight.load(Relaxed),
            calls_timed_out: self.calls_timed_out.load(Relaxed),
            refused_key_rate: self.refused_key_rate.load(Relaxed),
            kinesis_bodies_too_large: self.kinesis_bodies_too_large.load(Relaxed),
            kinesis_bodies_timed_out: self.kinesis_bodies_timed_out.load(Relaxed),
        }
    }

    /// Wraps the public gRPC service in these limits.
    pub fn grpc<S>(self: &Arc<Self>, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// [`Admission`]'s counters at one moment: requests being served, and those refused or ended
/// by each limit since the node started.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmissionCounts {
    pub in_flight: u64,
    pub refused_in_flight: u64,
    pub calls_timed_out: u64,
    pub refused_key_rate: u64,
    pub kinesis_bodies_too_large: u64,
    pub kinesis_bodies_timed_out: u64,
}

/// The public gRPC service behind [`Admission`]: a call takes a slot until its response head
/// is ready and must be received and answered within the call timeout (streams' later messages
/// are not bounded: a subscription or a pipeline lasts as long as it lasts).
pub struct Admitted<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S: Clone> Clone for Admitted<S> {
    fn clone(&self) -> Self {
        Admitted {
            inner: self.inner.clone(),
            admission: self.admission.clone(),
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Admitted<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
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
        let admission = self.admission.clone();
        Box::pin(async move {
            let slot = match admission.enter() {
                Ok(slot) => slot,
                Err(e) => return Ok(tonic::Status::from(e).into_http()),
            };
            let answer = tokio::time::timeout(admission.call_timeout, inner.call(req)).await;
            drop(slot);
            match answer {
                Ok(response) => response,
                Err(_) => {
                    admission.calls_timed_out.fetch_add(1, Relaxed);
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "the call was not received and answered within {:?} (--grpc-call-timeout)",
                        admission.call_timeout
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_free_when_dropped_and_rates_refill() {
        let a = Arc::new(Admission::new(2, Duration::from_secs(1), Some(2.0)));
        let one = a.enter().unwrap();
        let _two = a.enter().unwrap();
        let err = a.enter().err().expect("a third request is refused");
        assert!(
            err.to_string().contains("--requests-in-flight-max"),
            "{err}"
        );
        drop(one);
        let _three = a.enter().expect("a slot freed");
        assert_eq!(a.refused_in_flight.load(Relaxed), 1);

        assert!(a.spend("K").is_ok() && a.spend("K").is_ok());
        let err = a.spend("K").unwrap_err();
        assert!(matches!(err, ApiError::LimitExceeded(_)), "{err}");
        assert!(a.spend("OTHER").is_ok(), "buckets are per key");
        std::thread::sleep(Duration::from_millis(600));
        assert!(a.spend("K").is_ok(), "half a second refills one request");
        let unlimited = Admission::new(1, Duration::from_secs(1), None);
        assert!((0..100).all(|_| unlimited.spend("K").is_ok()));
    }
}
