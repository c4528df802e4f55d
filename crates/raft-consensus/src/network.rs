//! The multi-raft transport: one lazily connected gRPC channel per peer address, shared by every
//! group; each message names its group. The receiving side demultiplexes with [`GroupRegistry`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use millrace_mux::{Opening, Outbound, Pipeline, Protocol};
use millrace_proto::internal as ipb;
use millrace_proto::internal::internal_client::InternalClient;
use millrace_proto::internal::{RaftReply, RaftRequest, RaftRpc};
use millrace_security::connector::ClientConfigSource;
use millrace_security::peer_auth::{PeerChannel, PeerSigner};
use openraft::async_runtime::WatchReceiver;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::state_machine::SnapshotData;
use crate::types::{LogId, NodeId, Raft, SnapshotMeta, TypeConfig, Vote};

/// The replies of a peer's Raft pipeline.
pub type RaftAnswerStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ipb::RaftAnswers, tonic::Status>> + Send>>;

/// Deadline of one AppendEntries / Vote round trip.
const RAFT_RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of sending a whole snapshot (snapshots are small: DESIGN decision 4).
const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 flow-control window of one stream, both ways between nodes: a pipeline stream
/// carries every group's messages, so it must hold a few full entries in flight.
pub const PIPELINE_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Largest Raft message accepted or sent (a batch entry is at most a few MiB).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Raft calls one inbound pipeline runs at a time (every group's messages from one peer).
const PIPELINE_CALLS_MAX: usize = 16 * 1024;

/// AppendEntries of one group a leader has in flight to one follower at most, and the bytes
/// they may hold at most (the first always goes): replication sends the next batch while the
/// follower is still writing the one before, instead of waiting a round trip per batch.
pub const STREAM_APPEND_IN_FLIGHT_MAX: usize = 8;
pub const STREAM_APPEND_IN_FLIGHT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// A second AppendEntries goes only once those in flight hold this many bytes: large batches
/// (a follower catching up, large records) are pipelined, where the wire and the follower's
/// write are the cost; small ones wait for the answer, so that what arrives meanwhile goes in
/// one batch (pipelining small entries measured 8 % fewer records/s and 12 % more CPU at 256
/// requests in flight: more, smaller messages and fsyncs).
pub const STREAM_APPEND_PIPELINE_BYTES_MIN: usize = 1024 * 1024;
/// A follower's ordered append stream for one group and leader ends once it took no call for
/// one whole sweep period (so after 30–60 s idle; the next call starts a new one), and with it
/// openraft's task that feeds the group.
const STREAM_APPEND_SWEEP: Duration = Duration::from_secs(30);
/// How long the target of a leadership transfer waits for the entries the leader appended just
/// before it (see [`wait_for_transfer_log`]).
const TRANSFER_CATCH_UP_MAX: Duration = Duration::from_secs(1);
/// What a node that predates `STREAM_APPEND` answers it with (see [`GroupRegistry::dispatch`]):
/// the only sign an older peer gives that it needs AppendEntries one at a time.
const UNKNOWN_RPC: &str = "unknown raft rpc";

/// One channel per peer address, shared by every group on this node, and over it one Raft
/// pipeline (see [`RaftCalls`]).
#[derive(Default)]
pub struct Transport {
    security: PeerSecurity,
    channels: Mutex<HashMap<String, PeerChannel>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline<RaftCalls>>>>,
    appends: Arc<AppendCounters>,
}

/// How this node's groups sent AppendEntries as leaders (see [`GroupClient::stream_append`]).
#[derive(Debug, Default)]
pub struct AppendCounters {
    /// Sent on a follower's ordered stream (`STREAM_APPEND`)...
    pub streamed: std::sync::atomic::AtomicU64,
    /// ...of them while others of the same group were in flight to the same follower.
    pub pipelined: std::sync::atomic::AtomicU64,
}

/// Raft messages as [`millrace_mux`] carries them between two nodes.
pub struct RaftCalls;

impl Protocol for RaftCalls {
    type Request = RaftRequest;
    type Response = RaftReply;
    type Calls = ipb::RaftCalls;
    type Answers = ipb::RaftAnswers;
    type Channel = PeerChannel;

    fn request_bytes(req: &RaftRequest) -> usize {
        req.payload.len()
    }

    fn pack(calls: Vec<(u64, RaftRequest)>) -> ipb::RaftCalls {
        ipb::RaftCalls {
            calls: calls
                .into_iter()
                .map(|(call_id, request)| ipb::RaftCall {
                    call_id,
                    request: Some(request),
                })
                .collect(),
        }
    }

    fn unpack(answers: ipb::RaftAnswers) -> Vec<(u64, Result<RaftReply, tonic::Status>)> {
        answers
            .answers
            .into_iter()
            .map(|a| (a.call_id, Ok(a.reply.unwrap_or_default())))
            .collect()
    }

    fn open(channel: PeerChannel, calls: Outbound<ipb::RaftCalls>) -> Opening<ipb::RaftAnswers> {
        Box::pin(async move {
            let mut client = InternalClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
            Ok(client.raft_pipeline(calls).await?.into_inner())
        })
    }
}

/// How this node proves who it is to its peers, and checks them: mutual TLS with the cluster
/// CA, a cluster secret signing every request, both, or (a plaintext dev cluster without a
/// secret) neither.
#[derive(Default, Clone)]
pub struct PeerSecurity {
    /// TLS for connections to peers (this node's certificate, the cluster CA).
    pub tls: Option<Arc<dyn ClientConfigSource>>,
    /// Signs every internal request with the cluster secret.
    pub signer: Option<Arc<PeerSigner>>,
}

impl Transport {
    pub fn new(security: PeerSecurity) -> Arc<Transport> {
        Arc::new(Transport {
            security,
            ..Transport::default()
        })
    }

    /// The (lazily connected) channel to `addr` (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<PeerChannel, String> {
        let mut channels = self.channels.lock().expect("transport lock poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        // With TLS the connector encrypts; the URI stays `http://` (its scheme only names
        // HTTP/2's `:scheme`, which the server does not check).
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("peer address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // One pipeline stream carries every group's messages.
            .initial_stream_window_size(PIPELINE_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(2 * PIPELINE_STREAM_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel: Channel = match &self.security.tls {
            Some(tls) => endpoint
                .connect_with_connector_lazy(millrace_security::TlsConnector::new(tls.clone())),
            None => endpoint.connect_lazy(),
        };
        let channel = PeerChannel::new(channel, self.security.signer.clone());
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// The Raft pipeline to `addr`.
    pub fn pipeline(&self, addr: &str) -> Result<Arc<Pipeline<RaftCalls>>, String> {
        let channel = self.channel(addr)?;
        let mut pipelines = self.pipelines.lock().expect("transport lock poisoned");
        Ok(pipelines
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Pipeline::new(channel)))
            .clone())
    }

    /// Counters of the AppendEntries this node's groups sent.
    pub fn appends(&self) -> &AppendCounters {
        &self.appends
    }

    pub fn client(&self, addr: &str) -> Result<InternalClient<PeerChannel>, String> {
        Ok(InternalClient::new(self.channel(addr)?)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX))
    }
}

/// Creates the per-target network clients of one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pub transport: Arc<Transport>,
    pub group_id: u64,
    pub self_id: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupClient {
        GroupClient {
            client: self.transport.client(&node.addr),
            pipeline: self.transport.pipeline(&node.addr),
            group_id: self.group_id,
            self_id: self.self_id,
            target,
            sequential: Arc::new(AtomicBool::new(false)),
            counters: self.transport.appends.clone(),
        }
    }
}

/// Sends one group's Raft messages to one peer.
pub struct GroupClient {
    client: Result<InternalClient<PeerChannel>, String>,
    pipeline: Result<Arc<Pipeline<RaftCalls>>, String>,
    group_id: u64,
    self_id: NodeId,
    target: NodeId,
    /// Set once the peer showed it predates `STREAM_APPEND`: AppendEntries then go one at a
    /// time (openraft's sequential `stream_append`).
    sequential: Arc<AtomicBool>,
    counters: Arc<AppendCounters>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotMessage {
    vote: Vote,
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(v).map_err(|e| format!("encode: {e}"))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("decode: {e}"))
}

impl GroupClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        rpc: RaftRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let unreachable = |e: &str| RPCError::Unreachable(Unreachable::from_string(e));
        let client = self.client.as_mut().map_err(|e| unreachable(e))?;
        let pipeline = self.pipeline.as_ref().map_err(|e| unreachable(e))?;
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let request = RaftRequest {
            group_id: self.group_id,
            rpc: rpc as i32,
            payload,
            from_node_id: self.self_id,
        };
        // Over the peer's pipeline; unary to a peer that predates it.
        let send = async {
            match pipeline.call(request).await {
                Ok(answer) => answer,
                Err(request) => client.raft(request).await.map(|r| r.into_inner()),
            }
        };
        let reply = tokio::time::timeout(timeout, send).await;
        let payload = reply_payload(rpc, self.target, timeout, reply)?;
        decode(&payload).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

/// The payload of a Raft call's reply (sent with deadline `timeout`), or the error openraft
/// sees: a peer that could not be reached, or any other failure as a network error.
fn reply_payload(
    rpc: RaftRpc,
    target: NodeId,
    timeout: Duration,
    reply: Result<Result<RaftReply, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<Vec<u8>, RPCError<TypeConfig>> {
    let network = |e: String| RPCError::Network(NetworkError::from_string(e));
    match reply {
        Err(_) => Err(network(format!(
            "{rpc:?} to node {target} timed out after {timeout:?}"
        ))),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => Err(RPCError::Unreachable(
            Unreachable::from_string(format!("node {target}: {}", status.message())),
        )),
        Ok(Err(status)) => Err(network(format!("node {target}: {status}"))),
        Ok(Ok(reply)) if !reply.error.is_empty() => {
            Err(network(format!("node {target}: {}", reply.error)))
        }
        Ok(Ok(reply)) => Ok(reply.payload),
    }
}

impl RaftNetworkV2<TypeConfig> for GroupClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::AppendEntries, &rpc, RAFT_RPC_TIMEOUT)
            .await
    }

    /// Pipelined: up to [`STREAM_APPEND_IN_FLIGHT_MAX`] AppendEntries (and
    /// [`STREAM_APPEND_IN_FLIGHT_BYTES_MAX`]) in flight once those in flight are large
    /// ([`STREAM_APPEND_PIPELINE_BYTES_MIN`]), queued in order on the peer's Raft pipeline,
    /// answered in order. Falls back to one at a time for a peer without it.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let pipeline = match &self.pipeline {
            Ok(p) if !self.sequential.load(Ordering::Relaxed) => p.clone(),
            _ => return stream_append_sequential(self, input, option),
        };
        let appends = PipelinedAppends {
            input: Some(input),
            pipeline,
            in_flight: VecDeque::new(),
            bytes: 0,
            group_id: self.group_id,
            self_id: self.self_id,
            target: self.target,
            sequential: self.sequential.clone(),
            counters: self.counters.clone(),
        };
        Box::pin(async move {
            let answers: BoxStream<'s, _> =
                Box::pin(futures::stream::unfold(appends, PipelinedAppends::next));
            Ok(answers)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::Vote, &rpc, RAFT_RPC_TIMEOUT).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::PreVote, &rpc, RAFT_RPC_TIMEOUT).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let msg = SnapshotMessage {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call(RaftRpc::FullSnapshot, &msg, SNAPSHOT_RPC_TIMEOUT) => r.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpc::TransferLeader, &req, RAFT_RPC_TIMEOUT)
            .await
    }
}

/// One group's AppendEntries to one follower, several in flight (see
/// [`GroupClient::stream_append`]).
struct PipelinedAppends<S> {
    /// The requests openraft produces; `None` once it ended or the stream stops.
    input: Option<S>,
    pipeline: Arc<Pipeline<RaftCalls>>,
    in_flight: VecDeque<InFlightAppend>,
    /// Payload bytes of the requests in flight.
    bytes: usize,
    group_id: u64,
    self_id: NodeId,
    target: NodeId,
    sequential: Arc<AtomicBool>,
    counters: Arc<AppendCounters>,
}

struct InFlightAppend {
    prev: Option<LogId>,
    /// Sent as `STREAM_APPEND` (else as a plain `APPEND_ENTRIES`).
    streamed: bool,
    /// The last log id the request carries (its `prev_log_id` when it carries none): an
    /// answer matching less is a partial success, after which the requests behind it cannot
    /// be accepted.
    last: Option<LogId>,
    bytes: usize,
    deadline: tokio::time::Instant,
    answer: millrace_mux::Pending<RaftCalls>,
}

enum AppendEvent {
    Request(Option<AppendEntriesRequest<TypeConfig>>),
    Answer(Result<millrace_mux::Reply<RaftCalls>, tokio::time::error::Elapsed>),
}

type AppendAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl<S> PipelinedAppends<S>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    /// The next answer, in request order; sends more requests while waiting for it, as long
    /// as there is room.
    async fn next(mut self) -> Option<(AppendAnswer, Self)> {
        loop {
            let room = self.in_flight.is_empty()
                || (self.in_flight.len() < STREAM_APPEND_IN_FLIGHT_MAX
                    && (STREAM_APPEND_PIPELINE_BYTES_MIN..STREAM_APPEND_IN_FLIGHT_BYTES_MAX)
                        .contains(&self.bytes));
            let input = self.input.as_mut().filter(|_| room);
            let event = match (self.in_flight.front_mut(), input) {
                (None, None) => return None,
                (None, Some(input)) => AppendEvent::Request(input.next().await),
                (Some(head), None) => AppendEvent::Answer(
                    tokio::time::timeout_at(head.deadline, &mut head.answer).await,
                ),
                (Some(head), Some(input)) => tokio::select! {
                    biased;
                    answer = tokio::time::timeout_at(head.deadline, &mut head.answer) =>
                        AppendEvent::Answer(answer),
                    request = input.next() => AppendEvent::Request(request),
                },
            };
            match event {
                AppendEvent::Request(None) => self.input = None,
                AppendEvent::Request(Some(request)) => {
                    if let Err(e) = self.send(request).await {
                        return Some((Err(e), self.stopped()));
                    }
                }
                AppendEvent::Answer(answer) => {
                    let head = self.in_flight.pop_front().expect("an append in flight");
                    self.bytes -= head.bytes;
                    let answer = self.answer(answer, &head);
                    // After an error, a conflict or a partial success the requests behind it
                    // cannot succeed: openraft starts a new stream from what matched.
                    let go_on = matches!(&answer, Ok(Ok(matching)) if *matching == head.last);
                    return Some((answer, if go_on { self } else { self.stopped() }));
                }
            }
        }
    }

    async fn send(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> Result<(), RPCError<TypeConfig>> {
        let last = request
            .entries
            .last()
            .map(|e| e.log_id)
            .or(request.prev_log_id);
        let prev = request.prev_log_id;
        let payload =
            encode(&request).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let bytes = payload.len();
        // Alone and small, it goes as a plain AppendEntries (nothing else is sent until it is
        // answered, so order holds without the follower's ordered stream, which costs a few
        // percent of throughput); with others in flight, or large, on the ordered stream.
        let streamed = !self.in_flight.is_empty() || bytes >= STREAM_APPEND_PIPELINE_BYTES_MIN;
        let rpc = if streamed {
            RaftRpc::StreamAppend
        } else {
            RaftRpc::AppendEntries
        };
        let call = RaftRequest {
            group_id: self.group_id,
            rpc: rpc as i32,
            payload,
            from_node_id: self.self_id,
        };
        let Ok(answer) = self.pipeline.send(call).await else {
            // The peer serves unary Raft calls only: it predates streamed appends too.
            self.sequential.store(true, Ordering::Relaxed);
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} takes Raft calls one at a time",
                self.target
            ))));
        };
        if streamed {
            self.counters.streamed.fetch_add(1, Ordering::Relaxed);
            if !self.in_flight.is_empty() {
                self.counters.pipelined.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes += bytes;
        self.in_flight.push_back(InFlightAppend {
            prev,
            last,
            streamed,
            bytes,
            deadline: tokio::time::Instant::now() + RAFT_RPC_TIMEOUT,
            answer,
        });
        Ok(())
    }

    fn answer(
        &self,
        answer: Result<millrace_mux::Reply<RaftCalls>, tokio::time::error::Elapsed>,
        sent: &InFlightAppend,
    ) -> AppendAnswer {
        let last = sent.last;
        let target = self.target;
        let network = |e: String| RPCError::Network(NetworkError::from_string(e));
        let reply = match answer {
            Ok(Err(_unsent)) => {
                return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "node {target}: the Raft stream ended before sending an AppendEntries"
                ))))
            }
            Ok(Ok(reply)) => Ok(reply),
            Err(elapsed) => Err(elapsed),
        };
        if matches!(&reply, Ok(Ok(r)) if r.error.starts_with(UNKNOWN_RPC)) {
            self.sequential.store(true, Ordering::Relaxed);
        }
        let payload = reply_payload(RaftRpc::AppendEntries, target, RAFT_RPC_TIMEOUT, reply)?;
        let result: StreamAppendResult<TypeConfig> = if sent.streamed {
            decode(&payload).map_err(network)?
        } else {
            decode::<AppendEntriesResponse<TypeConfig>>(&payload)
                .map_err(network)?
                .into_stream_result(sent.prev, last)
        };
        if let Ok(Some(matching)) = &result {
            if Some(*matching) > last {
                return Err(network(format!(
                    "node {target} matched {matching} past the request's last entry"
                )));
            }
        }
        Ok(result)
    }

    /// Sends nothing more: the next call ends the stream.
    fn stopped(mut self) -> Self {
        self.input = None;
        self.in_flight.clear();
        self.bytes = 0;
        self
    }
}

/// The groups hosted on this node, for routing inbound Raft messages.
#[derive(Default)]
pub struct GroupRegistry {
    groups: RwLock<HashMap<u64, Raft>>,
    /// Replicas rebuilt after damage (see [`crate::log_store::Repair`]): they refuse votes,
    /// pre-votes and leadership until their log is whole again.
    repairing: RwLock<HashMap<u64, crate::log_store::GroupLogStore>>,
    /// The ordered append stream of each (group, sending leader) under way.
    appends: Mutex<HashMap<(u64, NodeId), AppendSession>>,
    sweeping: AtomicBool,
    /// Set when the node stops: pipelines served end (see [`GroupRegistry::stopping`]).
    stopping: AtomicBool,
    stopped: tokio::sync::Notify,
}

/// A follower's side of one leader's streamed appends to one group: the requests, in the
/// order they arrived, go to openraft's `Raft::stream_append`, which answers them in order;
/// each call's own task takes its answer from that stream (no task of the session's own).
struct AppendSession {
    requests: tokio::sync::mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
    answers: Arc<tokio::sync::Mutex<AppendAnswers>>,
    /// Set once the stream ended (openraft ends it at the first error): later calls start a
    /// new session.
    ended: Arc<AtomicBool>,
    /// Calls queued so far: the next call's number.
    queued: u64,
    /// `queued` when the idle sweep last looked.
    queued_at_sweep: u64,
}

type AppendResults = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<StreamAppendResult<TypeConfig>, openraft::errors::Fatal<TypeConfig>>,
            > + Send,
    >,
>;

struct AppendAnswers {
    results: AppendResults,
    /// Answers taken from `results` so far (the number of the next one).
    taken: u64,
    /// Answers taken for calls that had not come for them yet.
    early: HashMap<u64, RaftReply>,
    /// Why the stream ended, once it did.
    ended: Option<&'static str>,
}

fn error_reply(error: String) -> RaftReply {
    RaftReply {
        payload: Vec::new(),
        error,
    }
}

impl AppendAnswers {
    /// The answer to call number `n` of the session.
    async fn answer(
        answers: Arc<tokio::sync::Mutex<AppendAnswers>>,
        ended: Arc<AtomicBool>,
        n: u64,
    ) -> RaftReply {
        let mut a = answers.lock().await;
        loop {
            if let Some(reply) = a.early.remove(&n) {
                return reply;
            }
            if let Some(why) = a.ended {
                // Openraft stopped at an earlier call: this one was not appended.
                ended.store(true, Ordering::Relaxed);
                return error_reply(format!("not appended: {why} before it"));
            }
            let taken = a.taken;
            let reply = match a.results.next().await {
                Some(Ok(result)) => {
                    if result.is_err() {
                        a.ended = Some("an append failed");
                    }
                    match encode(&result) {
                        Ok(payload) => RaftReply {
                            payload,
                            error: String::new(),
                        },
                        Err(e) => error_reply(e),
                    }
                }
                Some(Err(fatal)) => {
                    a.ended = Some("the group stopped");
                    error_reply(fatal.to_string())
                }
                None => {
                    a.ended = Some("the group stopped");
                    continue;
                }
            };
            if a.ended.is_some() {
                ended.store(true, Ordering::Relaxed);
            }
            a.taken += 1;
            if taken == n {
                return reply;
            }
            a.early.insert(taken, reply);
        }
    }
}

impl GroupRegistry {
    /// Marks a replica as being repaired: it refuses votes and leadership until
    /// [`GroupRegistry::repaired`].
    pub fn repairing(&self, group_id: u64, log: crate::log_store::GroupLogStore) {
        self.repairing
            .write()
            .expect("registry lock")
            .insert(group_id, log);
    }

    pub fn repaired(&self, group_id: u64) {
        self.repairing
            .write()
            .expect("registry lock")
            .remove(&group_id);
    }

    pub fn is_repairing(&self, group_id: u64) -> bool {
        self.repairing
            .read()
            .expect("registry lock")
            .contains_key(&group_id)
    }

    /// Every repair under way: (group, the repair, the log's last index).
    pub fn repairs(&self) -> Vec<(u64, crate::log_store::Repair, Option<u64>)> {
        self.repairing
            .read()
            .expect("registry lock")
            .iter()
            .filter_map(|(g, log)| Some((*g, log.repair()?, log.bounds().1)))
            .collect()
    }

    /// A replica under repair may lack entries it once acknowledged, so judged by its own log
    /// its vote could elect a candidate that lacks them too: it answers a (pre-)vote itself,
    /// not granted, unless the candidate's log is at least as up to date as its log was before
    /// the damage ([`crate::log_store::Repair::may_vote_for`]); then openraft decides as usual.
    /// `None`: no repair, or openraft may decide. `Some(Err)`: refused, with no vote to show.
    fn refused_vote(
        &self,
        group_id: u64,
        req: &VoteRequest<TypeConfig>,
    ) -> Option<Result<VoteResponse<TypeConfig>, String>> {
        let repairing = self.repairing.read().expect("registry lock");
        let log = repairing.get(&group_id)?;
        if log
            .repair()
            .is_none_or(|r| r.may_vote_for(req.last_log_id.as_ref()))
        {
            return None;
        }
        let (vote, last) = log.vote_and_last_log_id();
        Some(match vote {
            Some(vote) => Ok(VoteResponse::new(vote, last, false)),
            None => Err(format!("group {group_id}: this replica is being repaired")),
        })
    }

    pub fn insert(&self, group_id: u64, raft: Raft) {
        self.groups
            .write()
            .expect("registry lock")
            .insert(group_id, raft);
    }

    pub fn remove(&self, group_id: u64) -> Option<Raft> {
        self.groups
            .write()
            .expect("registry lock")
            .remove(&group_id)
    }

    pub fn get(&self, group_id: u64) -> Option<Raft> {
        self.groups
            .read()
            .expect("registry lock")
            .get(&group_id)
            .cloned()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.groups
            .read()
            .expect("registry lock")
            .keys()
            .copied()
            .collect()
    }

    /// Ends every pipeline this node serves (peers' Raft pipelines, clients' PutRecords
    /// pipelines): they take no more calls, answer the ones under way and end, so that the
    /// server's graceful shutdown is not held open by streams that never end on their own.
    pub fn stop_pipelines(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stopped.notify_waiters();
    }

    /// Ready once [`GroupRegistry::stop_pipelines`] was called.
    pub fn stopping(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let registry = self.clone();
        async move {
            loop {
                let notified = registry.stopped.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if registry.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Serves a peer's Raft pipeline: each call is handled as [`GroupRegistry::handle`] does.
    pub fn serve_pipeline(
        self: &Arc<Self>,
        calls: tonic::Streaming<ipb::RaftCalls>,
    ) -> RaftAnswerStream {
        let registry = self.clone();
        millrace_mux::serve(
            calls,
            |message: ipb::RaftCalls| {
                message
                    .calls
                    .into_iter()
                    .map(|c| (c.call_id, c.request.unwrap_or_default()))
                    .collect()
            },
            |answers| ipb::RaftAnswers {
                answers: answers
                    .into_iter()
                    .map(|(call_id, reply)| ipb::RaftAnswer {
                        call_id,
                        reply: Some(reply),
                    })
                    .collect(),
            },
            move |req: RaftRequest| {
                let registry = registry.clone();
                // Queued now, in arrival order (the rest runs as a task of its own).
                let streamed = if req.rpc == RaftRpc::StreamAppend as i32 {
                    Ok(registry.queue_append(req))
                } else {
                    Err(req)
                };
                async move {
                    match streamed {
                        Ok(Ok((answers, ended, n))) => {
                            AppendAnswers::answer(answers, ended, n).await
                        }
                        Ok(Err(error)) => error_reply(error),
                        Err(req) => registry.handle(req).await,
                    }
                }
            },
            PIPELINE_CALLS_MAX,
            self.stopping(),
        )
    }

    /// Queues a streamed AppendEntries behind the ones its leader sent the group before;
    /// returns where to wait for its answer.
    #[allow(clippy::type_complexity)]
    fn queue_append(
        self: &Arc<Self>,
        req: RaftRequest,
    ) -> Result<(Arc<tokio::sync::Mutex<AppendAnswers>>, Arc<AtomicBool>, u64), String> {
        let raft = self
            .get(req.group_id)
            .ok_or_else(|| format!("group {} is not hosted here", req.group_id))?;
        let mut request: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
        let key = (req.group_id, req.from_node_id);
        let mut appends = self.appends.lock().expect("registry lock");
        if let Some(session) = appends.get_mut(&key) {
            if !session.ended.load(Ordering::Relaxed) {
                match session.requests.send(request) {
                    Ok(()) => {
                        session.queued += 1;
                        return Ok((
                            session.answers.clone(),
                            session.ended.clone(),
                            session.queued - 1,
                        ));
                    }
                    Err(tokio::sync::mpsc::error::SendError(back)) => request = back,
                }
            }
        }
        let (requests, input) = tokio::sync::mpsc::unbounded_channel();
        let results: AppendResults = Box::pin(
            raft.stream_append(tokio_stream::wrappers::UnboundedReceiverStream::new(input)),
        );
        requests
            .send(request)
            .map_err(|_| "the group stopped".to_string())?;
        let session = AppendSession {
            requests,
            answers: Arc::new(tokio::sync::Mutex::new(AppendAnswers {
                results,
                taken: 0,
                early: HashMap::new(),
                ended: None,
            })),
            ended: Arc::new(AtomicBool::new(false)),
            queued: 1,
            queued_at_sweep: 0,
        };
        let answer = (session.answers.clone(), session.ended.clone(), 0);
        appends.insert(key, session);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(Self::sweep_appends(Arc::downgrade(self)));
        }
        Ok(answer)
    }

    /// Ends the append sessions that took no call for a whole sweep period (or that ended)
    /// and have no call waiting: openraft's side of each then stops.
    async fn sweep_appends(registry: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(STREAM_APPEND_SWEEP).await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let mut appends = registry.appends.lock().expect("registry lock");
            appends.retain(|_, s| {
                let idle = s.queued == s.queued_at_sweep || s.ended.load(Ordering::Relaxed);
                s.queued_at_sweep = s.queued;
                !(idle && Arc::strong_count(&s.answers) == 1)
            });
        }
    }

    /// Handles one inbound Raft message for a hosted group.
    pub async fn handle(&self, req: RaftRequest) -> RaftReply {
        match self.dispatch(req).await {
            Ok(payload) => RaftReply {
                payload,
                error: String::new(),
            },
            Err(error) => error_reply(error),
        }
    }

    async fn dispatch(&self, req: RaftRequest) -> Result<Vec<u8>, String> {
        let raft = self
            .get(req.group_id)
            .ok_or_else(|| format!("group {} is not hosted here", req.group_id))?;
        let rpc = RaftRpc::try_from(req.rpc).map_err(|_| format!("{UNKNOWN_RPC} {}", req.rpc))?;
        let p = &req.payload;
        match rpc {
            RaftRpc::AppendEntries => {
                let r = raft
                    .append_entries(decode(p)?)
                    .await
                    .map_err(|e| e.to_string())?;
                encode(&r)
            }
            RaftRpc::Vote | RaftRpc::PreVote => {
                let vote: VoteRequest<TypeConfig> = decode(p)?;
                if let Some(refusal) = self.refused_vote(req.group_id, &vote) {
                    return encode(&refusal?);
                }
                let answer = match rpc {
                    RaftRpc::Vote => raft.vote(vote).await,
                    _ => raft.pre_vote(vote).await,
                };
                encode(&answer.map_err(|e| e.to_string())?)
            }
            RaftRpc::TransferLeader if self.is_repairing(req.group_id) => Err(format!(
                "group {}: this replica is being rebuilt after damage and cannot lead",
                req.group_id
            )),
            RaftRpc::FullSnapshot => {
                let msg: SnapshotMessage = decode(p)?;
                let snapshot = openraft::type_config::alias::SnapshotOf::<TypeConfig, SnapshotData> {
                    meta: msg.meta,
                    snapshot: msg.data,
                };
                let r = raft
                    .install_full_snapshot(msg.vote, snapshot)
                    .await
                    .map_err(|e| e.to_string())?;
                encode(&r)
            }
            RaftRpc::TransferLeader => {
                use millrace_storage::calibration::{self, InjectedBug};
                if calibration::is(InjectedBug::IgnoreTransferLeader) {
                    return Err("TransferLeader dropped (calibration bug)".into());
                }
                let req: TransferLeaderRequest<TypeConfig> = decode(p)?;
                wait_for_transfer_log(&raft, &req).await;
                let r = raft
                    .handle_transfer_leader(req)
                    .await
                    .map_err(|e| e.to_string())?;
                encode(&r)
            }
            // Streamed appends are ordered per group: only the pipeline takes them.
            RaftRpc::StreamAppend => Err("STREAM_APPEND is taken over RaftPipeline only".into()),
            RaftRpc::Unspecified => Err("raft rpc not set".into()),
        }
    }
}

/// The target of a leadership transfer waits (at most [`TRANSFER_CATCH_UP_MAX`]) until its log
/// holds the leader's last entry named in the request. Entries the leader appended just before
/// it handed over are usually still on their way (replication is pipelined and travels apart
/// from this message); openraft ignores a transfer to a replica whose log is behind, and the
/// leader, which stopped proposing when it started the transfer, would then wait for an
/// election that a quiet group never holds. Other voters take the message at once.
async fn wait_for_transfer_log(raft: &Raft, req: &TransferLeaderRequest<TypeConfig>) {
    let Some(want) = req.last_log_id().map(|l| l.index) else {
        return;
    };
    if *req.to_node_id() != raft.metrics().borrow_watched().id {
        return;
    }
    let _ = raft
        .wait(Some(TRANSFER_CATCH_UP_MAX))
        .metrics(
            |m| m.last_log_index.is_some_and(|i| i >= want),
            "the transfer's last entry is in the log",
        )
        .await;
}
