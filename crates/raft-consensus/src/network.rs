//! The multi-raft transport: one lazily connected gRPC channel per peer address, shared by every
//! group; each message names its group. The receiving side demultiplexes with [`GroupRegistry`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use millrace_mux::{Opening, Outbound, Pipeline, Protocol};
use millrace_proto::internal as ipb;
use millrace_proto::internal::internal_client::InternalClient;
use millrace_proto::internal::{RaftReply, RaftRequest, RaftRpc};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::state_machine::SnapshotData;
use crate::types::{NodeId, Raft, SnapshotMeta, TypeConfig, Vote};

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

/// One channel per peer address, shared by every group on this node, and over it one Raft
/// pipeline (see [`RaftCalls`]).
#[derive(Default)]
pub struct Transport {
    channels: Mutex<HashMap<String, Channel>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline<RaftCalls>>>>,
}

/// Raft messages as [`millrace_mux`] carries them between two nodes.
pub struct RaftCalls;

impl Protocol for RaftCalls {
    type Request = RaftRequest;
    type Response = RaftReply;
    type Calls = ipb::RaftCalls;
    type Answers = ipb::RaftAnswers;

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

    fn open(channel: Channel, calls: Outbound<ipb::RaftCalls>) -> Opening<ipb::RaftAnswers> {
        Box::pin(async move {
            let mut client = InternalClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
            Ok(client.raft_pipeline(calls).await?.into_inner())
        })
    }
}

impl Transport {
    pub fn new() -> Arc<Transport> {
        Arc::new(Transport::default())
    }

    /// The (lazily connected) channel to `addr` (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("transport lock poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("peer address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // One pipeline stream carries every group's messages.
            .initial_stream_window_size(PIPELINE_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(2 * PIPELINE_STREAM_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
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

    pub fn client(&self, addr: &str) -> Result<InternalClient<Channel>, String> {
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
        }
    }
}

/// Sends one group's Raft messages to one peer.
pub struct GroupClient {
    client: Result<InternalClient<Channel>, String>,
    pipeline: Result<Arc<Pipeline<RaftCalls>>, String>,
    group_id: u64,
    self_id: NodeId,
    target: NodeId,
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
        let reply = match tokio::time::timeout(timeout, send).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "{rpc:?} to node {} timed out after {timeout:?}",
                    self.target
                ))))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "node {}: {}",
                    self.target,
                    status.message()
                ))))
            }
            Ok(Err(status)) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "node {}: {status}",
                    self.target
                ))))
            }
            Ok(Ok(r)) => r,
        };
        if !reply.error.is_empty() {
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "node {}: {}",
                self.target, reply.error
            ))));
        }
        decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
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

/// The groups hosted on this node, for routing inbound Raft messages.
#[derive(Default)]
pub struct GroupRegistry {
    groups: RwLock<HashMap<u64, Raft>>,
}

impl GroupRegistry {
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
            move |req| {
                let registry = registry.clone();
                async move { registry.handle(req).await }
            },
            PIPELINE_CALLS_MAX,
        )
    }

    /// Handles one inbound Raft message for a hosted group.
    pub async fn handle(&self, req: RaftRequest) -> RaftReply {
        match self.dispatch(req).await {
            Ok(payload) => RaftReply {
                payload,
                error: String::new(),
            },
            Err(error) => RaftReply {
                payload: Vec::new(),
                error,
            },
        }
    }

    async fn dispatch(&self, req: RaftRequest) -> Result<Vec<u8>, String> {
        let raft = self
            .get(req.group_id)
            .ok_or_else(|| format!("group {} is not hosted here", req.group_id))?;
        let rpc =
            RaftRpc::try_from(req.rpc).map_err(|_| format!("unknown raft rpc {}", req.rpc))?;
        let p = &req.payload;
        match rpc {
            RaftRpc::AppendEntries => {
                let r = raft
                    .append_entries(decode(p)?)
                    .await
                    .map_err(|e| e.to_string())?;
                encode(&r)
            }
            RaftRpc::Vote => encode(&raft.vote(decode(p)?).await.map_err(|e| e.to_string())?),
            RaftRpc::PreVote => {
                encode(&raft.pre_vote(decode(p)?).await.map_err(|e| e.to_string())?)
            }
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
                let r = raft
                    .handle_transfer_leader(decode(p)?)
                    .await
                    .map_err(|e| e.to_string())?;
                encode(&r)
            }
            RaftRpc::Unspecified => Err("raft rpc not set".into()),
        }
    }
}
