//! # Millrace mux
//!
//! Many unary calls over one long-lived gRPC bidirectional stream: each call gets an id, calls
//! ready together travel in one message, and so do their answers, in whatever order they
//! finish. A small call then costs a slot in a message instead of an HTTP/2 stream of its own
//! (headers, trailers and a task on each side), which for small writes costs more CPU than the
//! write. The client's PutRecords and the nodes' Raft messages both use it.
//!
//! A [`Pipeline`] belongs to one endpoint. The first call opens the stream; the first call
//! after the stream ended opens a new one. When a stream ends, every call sent on it fails
//! with the stream's status (a connection that never opened: nothing was sent; one lost after
//! sending: an unknown outcome, as for a unary call), and calls still queued are handed back
//! unsent. An endpoint that answers the stream with UNIMPLEMENTED (it predates it) is
//! remembered: calls are then handed back for the caller to send unary.
//!
//! [`serve`] is the server half: it runs each call as a task of its own, a bounded number at
//! a time, and streams the answers back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

/// How one kind of call is carried: the messages both ways and how the stream is opened.
pub trait Protocol: Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// One outbound message: calls sent together, with their ids.
    type Calls: Send + 'static;
    /// One inbound message: answers received together, with their calls' ids.
    type Answers: Send + 'static;

    /// The bytes `req` adds to a message (to bound messages; an estimate is fine).
    fn request_bytes(req: &Self::Request) -> usize;
    fn pack(calls: Vec<(u64, Self::Request)>) -> Self::Calls;
    fn unpack(answers: Self::Answers) -> Vec<(u64, Result<Self::Response, Status>)>;
    /// What a stream is opened on: a [`tonic::transport::Channel`], or a service wrapping one (that signs
    /// requests, say).
    type Channel: Clone + Send + Sync + 'static;

    /// Opens the stream on `channel`, sending `calls`.
    fn open(channel: Self::Channel, calls: Outbound<Self::Calls>) -> Opening<Self::Answers>;
}

/// A stream being opened: its inbound messages once the server accepted it.
pub type Opening<A> = Pin<Box<dyn Future<Output = Result<tonic::Streaming<A>, Status>> + Send>>;

/// The outbound messages of a stream, as [`Protocol::open`] sends them.
pub type Outbound<T> = tokio_stream::wrappers::UnboundedReceiverStream<T>;

/// Calls queued for a pipeline before it takes them.
const QUEUED_CALLS_MAX: usize = 4096;
/// Waiters given up (their caller stopped waiting) are forgotten every this many calls.
const PURGE_EVERY: u64 = 1024;
/// One outbound message holds at most this many calls, and stops growing past this many bytes.
pub const CALLS_PER_MESSAGE_MAX: usize = 256;
pub const MESSAGE_BYTES_SOFT_MAX: usize = 4 * 1024 * 1024;

pub type Answer<P> = Result<<P as Protocol>::Response, Status>;
/// What a pipeline says of a call: its answer, or the request handed back unsent.
pub type Reply<P> = Result<Answer<P>, <P as Protocol>::Request>;
type Call<P> = (<P as Protocol>::Request, oneshot::Sender<Reply<P>>);
type Waiting<P> = HashMap<u64, oneshot::Sender<Reply<P>>>;

/// The calls of one endpoint, over at most one open stream at a time.
pub struct Pipeline<P: Protocol> {
    channel: P::Channel,
    calls: Mutex<Option<mpsc::Sender<Call<P>>>>,
    /// Set once the endpoint refused the stream (UNIMPLEMENTED): calls then go unary.
    unsupported: Arc<AtomicBool>,
}

impl<P: Protocol> Pipeline<P> {
    pub fn new(channel: P::Channel) -> Pipeline<P> {
        Pipeline {
            channel,
            calls: Mutex::new(None),
            unsupported: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends `req`, opening the stream if needed, and waits for its answer; hands `req` back
    /// when the endpoint serves only unary calls (nothing was sent). Dropping the future
    /// abandons the call (its answer, if any, is dropped).
    pub async fn call(&self, req: P::Request) -> Result<Answer<P>, P::Request> {
        let mut req = req;
        // A stream that ended before sending the call hands it back: the next try opens a
        // new one.
        for _ in 0..3 {
            match self.send(req).await {
                Err(back) => return Err(back),
                Ok(pending) => match pending.await {
                    Ok(answer) => return Ok(answer),
                    Err(back) => req = back,
                },
            }
        }
        Ok(Err(not_sent()))
    }

    /// Queues `req` on the stream and returns at once, without waiting for the answer: calls
    /// queued one after another by one task leave in that order, on one stream (what ordered
    /// pipelining, e.g. of one Raft group's AppendEntries, relies on). Hands `req` back when
    /// the endpoint serves only unary calls.
    pub async fn send(&self, req: P::Request) -> Result<Pending<P>, P::Request> {
        if self.unsupported.load(Ordering::Relaxed) {
            return Err(req);
        }
        let (done, answer) = oneshot::channel();
        match self.sender().send((req, done)).await {
            Ok(()) => Ok(Pending {
                answer,
                unsupported: self.unsupported.clone(),
            }),
            // The stream ended before taking it: a new stream is opened for the next call.
            Err(mpsc::error::SendError((back, _))) => {
                let (done, answer) = oneshot::channel();
                let _ = done.send(Err(back));
                Ok(Pending {
                    answer,
                    unsupported: self.unsupported.clone(),
                })
            }
        }
    }

    /// The running stream's queue, or a new stream's.
    fn sender(&self) -> mpsc::Sender<Call<P>> {
        // The slot holds a sender only: nothing a panic could leave half-written.
        let mut slot = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(QUEUED_CALLS_MAX);
                tokio::spawn(run::<P>(self.channel.clone(), rx, self.unsupported.clone()));
                *slot = Some(tx.clone());
                tx
            }
        }
    }
}

/// A call queued on a stream (see [`Pipeline::send`]): resolves to its answer, or to the
/// request handed back unsent (its stream ended before sending it).
pub struct Pending<P: Protocol> {
    answer: oneshot::Receiver<Reply<P>>,
    unsupported: Arc<AtomicBool>,
}

impl<P: Protocol> Future for Pending<P> {
    type Output = Reply<P>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Reply<P>> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|reply| match reply {
                Ok(Ok(Err(status))) if status.code() == tonic::Code::Unimplemented => {
                    // The endpoint refused the stream itself: the call was not served.
                    self.unsupported.store(true, Ordering::Relaxed);
                    Ok(Err(not_sent()))
                }
                Ok(reply) => reply,
                Err(_) => Ok(Err(Status::unknown(
                    "the call's stream stopped before answering",
                ))),
            })
    }
}

/// The status of a call no stream would take: it never left this process.
fn not_sent() -> Status {
    let mut status = Status::unavailable("the call's stream kept closing before sending it");
    status.set_source(Arc::new(NeverSent));
    status
}

/// The source of a status whose call was never sent (see [`never_sent`]).
#[derive(Debug)]
pub struct NeverSent;

impl std::fmt::Display for NeverSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call was never sent")
    }
}

impl std::error::Error for NeverSent {}

/// Whether a failed call's `status` says the call never left this process, so that nothing
/// can have been applied and it may be sent anywhere again: the connection could not be made
/// (tonic's `ConnectError`: a refused or timed-out TCP connect, a failed TLS handshake), or no
/// stream would take the call ([`NeverSent`]). Read from the types in the error's source
/// chain, never from its text.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() || e.is::<NeverSent>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// One stream: sends each call with a fresh id (those queued together in one message) and
/// hands each answer to its caller; when the stream ends, fails every call sent on it.
async fn run<P: Protocol>(
    channel: P::Channel,
    mut calls: mpsc::Receiver<Call<P>>,
    unsupported: Arc<AtomicBool>,
) {
    let (out, outbound) = mpsc::unbounded_channel::<P::Calls>();
    let mut waiting = Waiting::<P>::new();
    let mut next_id = 0u64;
    let mut send =
        |first: Call<P>, calls: &mut mpsc::Receiver<Call<P>>, waiting: &mut Waiting<P>| {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some((req, done)) = next.take() {
                let id = next_id;
                next_id += 1;
                if id.is_multiple_of(PURGE_EVERY) {
                    waiting.retain(|_, d| !d.is_closed());
                }
                waiting.insert(id, done);
                bytes += P::request_bytes(&req);
                batch.push((id, req));
                if batch.len() < CALLS_PER_MESSAGE_MAX && bytes < MESSAGE_BYTES_SOFT_MAX {
                    next = calls.try_recv().ok();
                }
            }
            // The receiving half lives as long as the stream: a failed send is answered below.
            let _ = out.send(P::pack(batch));
        };
    let opening = P::open(channel, Outbound::new(outbound));
    tokio::pin!(opening);
    // Calls arriving while the stream opens are queued on it (sent once it is open).
    let mut answers = loop {
        tokio::select! {
            opened = &mut opening => match opened {
                Ok(answers) => break answers,
                Err(status) => {
                    // Learnt before the queued calls are handed back, so that their callers
                    // go unary instead of opening another stream the endpoint refuses.
                    if status.code() == tonic::Code::Unimplemented {
                        unsupported.store(true, Ordering::Relaxed);
                    }
                    return fail_all::<P>(waiting, calls, status);
                }
            },
            call = calls.recv() => match call {
                Some(call) => send(call, &mut calls, &mut waiting),
                None if waiting.is_empty() => return,
                None => {}
            },
        }
    };
    let mut open = true;
    loop {
        tokio::select! {
            call = calls.recv(), if open => match call {
                Some(call) => send(call, &mut calls, &mut waiting),
                None => open = false,
            },
            message = answers.message() => match message {
                Ok(Some(message)) => {
                    for (id, answer) in P::unpack(message) {
                        if let Some(done) = waiting.remove(&id) {
                            let _ = done.send(Ok(answer));
                        }
                    }
                }
                Ok(None) => {
                    let status = Status::unknown("the stream ended before answering");
                    return fail_all::<P>(waiting, calls, status);
                }
                Err(status) => return fail_all::<P>(waiting, calls, status),
            },
        }
        if !open && waiting.is_empty() {
            return;
        }
    }
}

/// Answers every call sent with `status`, and hands every call still queued back unsent.
fn fail_all<P: Protocol>(waiting: Waiting<P>, mut calls: mpsc::Receiver<Call<P>>, status: Status) {
    calls.close();
    while let Ok((req, done)) = calls.try_recv() {
        let _ = done.send(Err(req));
    }
    for done in waiting.into_values() {
        let _ = done.send(Ok(Err(status.clone())));
    }
}

/// Answers sent in one message at most (those ready together).
const ANSWERS_PER_MESSAGE_MAX: usize = 256;

/// The server half: unpacks each inbound message into calls, calls `handler` on each in the
/// order they arrived and runs the future it returns as a task (at most `in_flight_max` at
/// once; reading the next message waits for a slot), and streams the answers back, those
/// ready together in one message. The answer stream ends once the
/// client's side has ended (or `stop` is ready: the server is stopping) and every call taken
/// is answered.
pub fn serve<In, Req, Resp, Out, H, Fut>(
    mut inbound: tonic::Streaming<In>,
    unpack: fn(In) -> Vec<(u64, Req)>,
    pack: fn(Vec<(u64, Resp)>) -> Out,
    handler: H,
    in_flight_max: usize,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Stream<Item = Result<Out, Status>> + Send>>
where
    In: Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
    Out: Send + 'static,
    H: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (answers, rx) = mpsc::channel::<(u64, Resp)>(in_flight_max.max(1));
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(in_flight_max.max(1)));
        // The client ended its side, the stream broke, or the server is stopping (`stop`):
        // the calls under way still answer (into a closed stream, if it broke), then the
        // answers' stream ends, so a stopping server is not held open by a pipeline.
        tokio::pin!(stop);
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = &mut stop => break,
            };
            let Ok(Some(message)) = message else {
                break;
            };
            for (id, req) in unpack(message) {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                // Called here, in arrival order: what a handler does before its future is
                // first polled (e.g. queue the call behind the ones before it) keeps the
                // order in which the client sent the calls.
                // Boxed once here: a call's future is kilobytes (a PutRecords is ~3.5 KB), and
                // the task would otherwise copy all of it on every move — into its cell when
                // spawned, and again when its output replaces it.
                let call = Box::pin(handler(req));
                let answers = answers.clone();
                tokio::spawn(async move {
                    let resp = call.await;
                    let _ = answers.send((id, resp)).await;
                    drop(slot);
                });
            }
        }
    });
    Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .ready_chunks(ANSWERS_PER_MESSAGE_MAX)
            .map(move |answers| Ok(pack(answers))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::Channel;

    /// A protocol whose streams never open: `open` fails with UNIMPLEMENTED or with a
    /// refused connection.
    struct Refused<const UNIMPLEMENTED: bool>;

    impl<const UNIMPLEMENTED: bool> Protocol for Refused<UNIMPLEMENTED> {
        type Request = String;
        type Response = String;
        type Calls = Vec<(u64, String)>;
        type Answers = ();
        type Channel = Channel;

        fn request_bytes(req: &String) -> usize {
            req.len()
        }
        fn pack(calls: Vec<(u64, String)>) -> Vec<(u64, String)> {
            calls
        }
        fn unpack(_: ()) -> Vec<(u64, Result<String, Status>)> {
            Vec::new()
        }
        fn open(_: Channel, _: Outbound<Vec<(u64, String)>>) -> Opening<()> {
            Box::pin(async {
                Err(if UNIMPLEMENTED {
                    Status::unimplemented("no such method")
                } else {
                    // As tonic reports a refused connection: a `ConnectError` source.
                    let mut refused = Status::unavailable("tcp connect error");
                    refused.set_source(Arc::new(tonic::ConnectError("connection refused".into())));
                    refused
                })
            })
        }
    }

    fn channel() -> Channel {
        // Never connected: the test protocols do not use it.
        tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
    }

    #[tokio::test]
    async fn a_call_is_known_never_sent_by_the_types_of_its_error_not_its_words() {
        // A real connection refused: nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let refused = millrace_proto::v1::millrace_client::MillraceClient::new(channel)
            .list_streams(millrace_proto::v1::ListStreamsRequest::default())
            .await
            .unwrap_err();
        assert!(never_sent(&refused), "{refused:?}");
        assert!(never_sent(&refused.clone()), "a clone keeps its source");
        assert!(never_sent(&not_sent()));
        // The same words without the types say nothing.
        assert!(!never_sent(&Status::unavailable(
            "tcp connect error: connection refused"
        )));
        assert!(!never_sent(&Status::unknown(
            "the stream ended before answering"
        )));
    }

    #[tokio::test]
    async fn a_stream_that_cannot_open_fails_its_calls_with_its_status() {
        let pipeline = Pipeline::<Refused<false>>::new(channel());
        let answer = pipeline
            .call("a".into())
            .await
            .expect("sent, not handed back");
        let status = answer.unwrap_err();
        // The stream's own status, or (when the call was handed back and no stream took it)
        // the mux's: both say the call was never sent.
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(never_sent(&status), "{status:?}");
        // The next call opens a new stream (and fails the same way).
        assert!(pipeline.call("b".into()).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_endpoint_without_the_stream_gets_its_calls_handed_back() {
        let pipeline = Pipeline::<Refused<true>>::new(channel());
        // The first call learns it: not served. Depending on whether the refusal came before
        // or after the call left the queue, it is handed back or reported as never sent
        // (safe to retry); it is never answered as if served.
        match pipeline.call("a".into()).await {
            Err(back) => assert_eq!(back, "a"),
            Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable),
            Ok(Ok(answer)) => panic!("a refused stream answered {answer:?}"),
        }
        // From then on calls come back untouched, for the caller to send unary.
        assert_eq!(pipeline.call("b".into()).await.unwrap_err(), "b");
    }

    #[tokio::test]
    async fn calls_queued_behind_a_stream_that_ended_are_handed_back_unsent() {
        let (tx, rx) = mpsc::channel::<Call<Refused<false>>>(8);
        let mut answers = Vec::new();
        for i in 0..3 {
            let (done, answer) = oneshot::channel();
            tx.try_send((format!("r{i}"), done)).unwrap();
            answers.push(answer);
        }
        let mut waiting = Waiting::<Refused<false>>::new();
        let (done, sent) = oneshot::channel();
        waiting.insert(7, done);
        fail_all::<Refused<false>>(waiting, rx, Status::unknown("lost"));
        assert_eq!(
            sent.await.unwrap().unwrap().unwrap_err().code(),
            tonic::Code::Unknown
        );
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap().unwrap_err(), format!("r{i}"));
        }
        assert!(tx.is_closed());
    }
}
