//! PutRecords over one long-lived stream per endpoint (the `PutRecordsPipeline` RPC, over
//! [`millrace_mux`]): calls are multiplexed by id and those ready together share a message,
//! so a small write costs a slot in a message instead of an HTTP/2 stream of its own.
//!
//! A call on a stream that ends fails with the stream's status: a connection that never
//! opened means nothing was sent (retryable); one lost after sending is an unknown outcome,
//! as for a unary call. An endpoint that does not serve the RPC (an older node) is called
//! with unary PutRecords instead.

use millrace_mux::{Opening, Outbound, Pipeline, Protocol};
use millrace_proto::v1 as pb;
use millrace_proto::v1::millrace_client::MillraceClient;
use millrace_security::access_sig::SigningChannel;
use tonic::Status;

/// PutRecords calls as [`millrace_mux`] carries them.
pub(crate) struct PutRecordsCalls;

impl Protocol for PutRecordsCalls {
    type Request = pb::PutRecordsRequest;
    type Response = pb::PutRecordsResponse;
    type Calls = pb::PipelinedPutRecordsBatch;
    type Answers = pb::PipelinedPutRecordsResults;
    type Channel = SigningChannel;

    fn request_bytes(req: &pb::PutRecordsRequest) -> usize {
        req.records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum()
    }

    fn pack(calls: Vec<(u64, pb::PutRecordsRequest)>) -> pb::PipelinedPutRecordsBatch {
        pb::PipelinedPutRecordsBatch {
            calls: calls
                .into_iter()
                .map(|(call_id, request)| pb::PipelinedPutRecords {
                    call_id,
                    request: Some(request),
                })
                .collect(),
        }
    }

    fn unpack(
        answers: pb::PipelinedPutRecordsResults,
    ) -> Vec<(u64, Result<pb::PutRecordsResponse, Status>)> {
        answers
            .results
            .into_iter()
            .map(|r| (r.call_id, answer_of(r)))
            .collect()
    }

    fn open(
        channel: SigningChannel,
        calls: Outbound<pb::PipelinedPutRecordsBatch>,
    ) -> Opening<Self::Answers> {
        Box::pin(async move {
            let mut client = MillraceClient::new(channel)
                .max_decoding_message_size(crate::connection::GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(crate::connection::GRPC_MESSAGE_BYTES_MAX);
            Ok(client.put_records_pipeline(calls).await?.into_inner())
        })
    }
}

/// The pipelines of one client, one per endpoint.
pub(crate) struct Pipelines {
    endpoints: Vec<Pipeline<PutRecordsCalls>>,
}

impl Pipelines {
    pub(crate) fn new(channels: &[SigningChannel]) -> Pipelines {
        Pipelines {
            endpoints: channels.iter().cloned().map(Pipeline::new).collect(),
        }
    }

    /// Sends `req` on endpoint `idx`'s pipeline; hands `req` back when that endpoint serves
    /// only unary PutRecords (nothing was sent).
    pub(crate) async fn call(
        &self,
        idx: usize,
        req: pb::PutRecordsRequest,
    ) -> Result<Result<pb::PutRecordsResponse, Status>, pb::PutRecordsRequest> {
        self.endpoints[idx].call(req).await
    }
}

/// A pipelined answer as the unary call would have answered it.
fn answer_of(result: pb::PipelinedPutRecordsResult) -> Result<pb::PutRecordsResponse, Status> {
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
