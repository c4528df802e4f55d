//! PutRecords over one long-lived stream per endpoint (the `PutRecordsPipeline` RPC): calls
//! are multiplexed by id, so a small write costs one message on an open HTTP/2 stream instead
//! of a stream of its own (headers, trailers and a task on each side).
//!
//! Each endpoint has at most one pipeline, opened by the first call and reopened by the first
//! call after it ends. When a pipeline ends, every call still waiting on it fails with the
//! stream's status: a connection that never opened means nothing was sent (retryable); one
//! lost after sending is an unknown outcome, as for a unary call. An endpoint that does not
//! serve the RPC (an older node) is remembered and called with unary PutRecords instead.

use std::collections::HashMap;
use std::sync::Mutex;

use millrace_proto::v1 as pb;
use millrace_proto::v1::millrace_client::MillraceClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

/// The answer of one call.
type Answer = Result<pb::PutRecordsResponse, Status>;
/// What a pipeline says of a call: its answer, or the request given back unsent (the
/// pipeline ended before sending it).
type Reply = Result<Answer, pb::PutRecordsRequest>;
type Call = (pb::PutRecordsRequest, oneshot::Sender<Reply>);
type Waiting = HashMap<u64, oneshot::Sender<Reply>>;

/// Calls queued for a pipeline before it takes them (each waits for its answer anyway).
const QUEUED_CALLS_MAX: usize = 4096;
/// Waiters given up (their call timed out) are forgotten every this many calls.
const PURGE_EVERY: u64 = 1024;

/// The pipelines of one client, one slot per endpoint.
pub(crate) struct Pipelines {
    slots: Vec<Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    calls: Option<mpsc::Sender<Call>>,
    /// The endpoint answered UNIMPLEMENTED: it predates pipelines.
    unsupported: bool,
}

impl Pipelines {
    pub(crate) fn new(endpoints: usize) -> Pipelines {
        Pipelines {
            slots: (0..endpoints).map(|_| Mutex::default()).collect(),
        }
    }

    fn slot(&self, idx: usize) -> std::sync::MutexGuard<'_, Slot> {
        // A slot holds a sender and a flag: nothing a panic could leave half-written.
        self.slots[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` on endpoint `idx`'s pipeline, opening it if needed; gives `req` back when
    /// that endpoint serves only unary PutRecords (nothing was sent).
    pub(crate) async fn call(
        &self,
        idx: usize,
        channel: &Channel,
        req: pb::PutRecordsRequest,
    ) -> Result<Answer, pb::PutRecordsRequest> {
        // A pipeline that ended before sending the call gives it back untouched: the next try
        // opens a new one.
        let mut req = req;
        for _ in 0..3 {
            let (done, answer) = oneshot::channel();
            let calls = {
                let mut slot = self.slot(idx);
                if slot.unsupported {
                    return Err(req);
                }
                match &slot.calls {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        let (tx, rx) = mpsc::channel(QUEUED_CALLS_MAX);
                        tokio::spawn(run(channel.clone(), rx));
                        slot.calls = Some(tx.clone());
                        tx
                    }
                }
            };
            if let Err(mpsc::error::SendError((back, _))) = calls.send((req, done)).await {
                req = back;
                continue;
            }
            return Ok(match answer.await {
                Ok(Ok(Err(status))) if status.code() == tonic::Code::Unimplemented => {
                    // The endpoint refused the stream itself: the call was not served, and
                    // its retry goes unary.
                    self.slot(idx).unsupported = true;
                    Err(not_sent())
                }
                Ok(Ok(answer)) => answer,
                Ok(Err(back)) => {
                    req = back;
                    continue;
                }
                Err(_) => Err(Status::unknown(
                    "the PutRecords pipeline stopped before answering",
                )),
            });
        }
        Ok(Err(not_sent()))
    }
}

/// One pipeline: opens the stream, sends each call with a fresh id and hands each answer to
/// its caller; when the stream ends, fails every call still waiting with its status.
async fn run(channel: Channel, mut calls: mpsc::Receiver<Call>) {
    let (out, outbound) = mpsc::unbounded_channel::<pb::PipelinedPutRecords>();
    let mut waiting = Waiting::new();
    let mut next_id = 0u64;
    let mut send = |(req, done): Call, waiting: &mut Waiting| {
        let call_id = next_id;
        next_id += 1;
        if call_id.is_multiple_of(PURGE_EVERY) {
            waiting.retain(|_, d| !d.is_closed());
        }
        waiting.insert(call_id, done);
        // The receiving half lives as long as the stream: a failed send is answered below.
        let _ = out.send(pb::PipelinedPutRecords {
            call_id,
            request: Some(req),
        });
    };
    let mut client = MillraceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let opening = client.put_records_pipeline(
        tokio_stream::wrappers::UnboundedReceiverStream::new(outbound),
    );
    tokio::pin!(opening);
    // Calls arriving while the stream opens are queued on it (sent once it is open).
    let mut answers = loop {
        tokio::select! {
            opened = &mut opening => match opened {
                Ok(response) => break response.into_inner(),
                Err(status) => return fail_all(waiting, calls, status),
            },
            call = calls.recv() => match call {
                Some(call) => send(call, &mut waiting),
                None if waiting.is_empty() => return,
                None => {}
            },
        }
    };
    let mut open = true;
    loop {
        tokio::select! {
            call = calls.recv(), if open => match call {
                Some(call) => send(call, &mut waiting),
                None => open = false,
            },
            answer = answers.message() => match answer {
                Ok(Some(result)) => {
                    if let Some(done) = waiting.remove(&result.call_id) {
                        let _ = done.send(Ok(answer_of(result)));
                    }
                }
                Ok(None) => {
                    let status = Status::unknown("the PutRecords pipeline ended before answering");
                    return fail_all(waiting, calls, status);
                }
                Err(status) => return fail_all(waiting, calls, status),
            },
        }
        if !open && waiting.is_empty() {
            return;
        }
    }
}

/// Answers every call sent with `status`, and gives every call still queued back unsent.
fn fail_all(waiting: Waiting, mut calls: mpsc::Receiver<Call>, status: Status) {
    calls.close();
    while let Ok((req, done)) = calls.try_recv() {
        let _ = done.send(Err(req));
    }
    for done in waiting.into_values() {
        let _ = done.send(Ok(Err(status.clone())));
    }
}

/// The status of a call no pipeline would take: it never left this process.
fn not_sent() -> Status {
    // `ClientError::from_status` reads this as a connection never made: safe to retry.
    Status::unavailable("connection refused: the PutRecords pipeline kept closing")
}

/// A pipelined answer as the unary call would have answered it.
fn answer_of(result: pb::PipelinedPutRecordsResult) -> Answer {
    if let Some(response) = result.response {
        return Ok(response);
    }
    let mut status = Status::new(
        tonic::Code::from_i32(result.status_code),
        result.error_message,
    );
    if let Ok(symbol) = result.error_symbol.parse() {
        status
            .metadata_mut()
            .insert(millrace_proto::ERROR_METADATA_KEY, symbol);
    }
    Err(status)
}
