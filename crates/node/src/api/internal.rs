//! The node-to-node gRPC service: Raft messages and requests forwarded to leaders.

use std::sync::Arc;

use millrace_proto::internal as ipb;
use millrace_proto::internal::internal_server::Internal;
use tonic::{Request, Response, Status};

use crate::server::node::{LocalWrite, Node};
use crate::shard::read::ReadBounds;

pub struct InternalService {
    pub node: Arc<Node>,
}

impl InternalService {
    fn not_leader(&self, leader: Option<u64>) -> ipb::NotLeader {
        let leader_id = leader.filter(|l| *l != self.node.id).unwrap_or(0);
        ipb::NotLeader {
            leader_id,
            leader_grpc_addr: self.node.addr_of(leader_id).unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl Internal for InternalService {
    type RaftPipelineStream = millrace_raft::network::RaftAnswerStream;

    async fn raft_pipeline(
        &self,
        req: Request<tonic::Streaming<ipb::RaftCalls>>,
    ) -> Result<Response<Self::RaftPipelineStream>, Status> {
        Ok(Response::new(
            self.node.groups.registry().serve_pipeline(req.into_inner()),
        ))
    }

    async fn raft(
        &self,
        req: Request<ipb::RaftRequest>,
    ) -> Result<Response<ipb::RaftReply>, Status> {
        Ok(Response::new(
            self.node.groups.registry().handle(req.into_inner()).await,
        ))
    }

    async fn meta_propose(
        &self,
        req: Request<ipb::MetaProposeRequest>,
    ) -> Result<Response<ipb::MetaProposeReply>, Status> {
        let req = req.into_inner();
        let reply = match self.node.propose_meta_local(&req.command).await {
            Ok(Ok(resp)) => ipb::MetaProposeReply {
                response: serde_json::to_vec(&resp).unwrap_or_default(),
                ..Default::default()
            },
            Ok(Err(leader)) => ipb::MetaProposeReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            },
            Err(e) => ipb::MetaProposeReply {
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn meta_read_index(
        &self,
        _req: Request<ipb::MetaReadIndexRequest>,
    ) -> Result<Response<ipb::MetaReadIndexReply>, Status> {
        let reply = match self.node.meta_read_index().await {
            Ok(Ok(index)) => ipb::MetaReadIndexReply {
                read_index: index.unwrap_or(0),
                has_read_index: index.is_some(),
                ..Default::default()
            },
            Ok(Err(leader)) => ipb::MetaReadIndexReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            },
            Err(e) => ipb::MetaReadIndexReply {
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn shard_append(
        &self,
        req: Request<ipb::ShardAppendRequest>,
    ) -> Result<Response<ipb::ShardAppendReply>, Status> {
        let req = req.into_inner();
        tracing::debug!(
            request_id = %req.request_id,
            group_id = req.group_id,
            "a write forwarded from another node"
        );
        let local = if req.seal {
            self.node.seal_local(req.group_id).await
        } else {
            let producer =
                (!req.producer_id.is_empty()).then_some((req.producer_id, req.producer_sequence));
            self.node
                .append_local(req.group_id, req.batch, producer)
                .await
        };
        let reply = match local {
            Ok(LocalWrite::Done { index, position }) => ipb::ShardAppendReply {
                log_index: index,
                first_position: position,
                ..Default::default()
            },
            Ok(LocalWrite::Closed) => ipb::ShardAppendReply {
                closed: true,
                ..Default::default()
            },
            Ok(LocalWrite::NotLeader(leader)) => ipb::ShardAppendReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            },
            Err(e) => ipb::ShardAppendReply {
                error_code: e.symbol().to_string(),
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn shard_membership(
        &self,
        req: Request<ipb::ShardMembershipRequest>,
    ) -> Result<Response<ipb::ShardMembershipReply>, Status> {
        let req = req.into_inner();
        let r = self
            .node
            .membership_local(
                req.group_id,
                req.learner_id,
                &req.learner_grpc_addr,
                &req.voters,
            )
            .await;
        let reply = match r {
            Ok(Ok(())) => ipb::ShardMembershipReply::default(),
            Ok(Err(leader)) => ipb::ShardMembershipReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            },
            Err(e) => ipb::ShardMembershipReply {
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn join_cluster(
        &self,
        req: Request<ipb::JoinClusterRequest>,
    ) -> Result<Response<ipb::JoinClusterReply>, Status> {
        let proven = req
            .extensions()
            .get::<crate::server::security::ProvenPeer>()
            .copied();
        let req = req.into_inner();
        if let Some(crate::server::security::ProvenPeer(id)) = proven {
            if id != req.node_id {
                return Err(Status::permission_denied(format!(
                    "node {id} may join only as itself, not as node {}",
                    req.node_id
                )));
            }
        }
        if !self.node.meta_group.raft.is_leader() {
            let leader = self.node.metadata_leader();
            return Ok(Response::new(ipb::JoinClusterReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            }));
        }
        let reply = match self.node.admit(req).await {
            Ok(()) => ipb::JoinClusterReply::default(),
            Err(e) => ipb::JoinClusterReply {
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn transfer_leadership(
        &self,
        req: Request<ipb::TransferLeadershipRequest>,
    ) -> Result<Response<ipb::TransferLeadershipReply>, Status> {
        let req = req.into_inner();
        let reply = match self.node.groups.get(req.group_id) {
            Some(h) if h.raft.is_leader() => {
                match crate::server::node::ready_for_transfer(&h.raft, req.to).await {
                    Err(why) => ipb::TransferLeadershipReply {
                        error: why,
                        ..Default::default()
                    },
                    Ok(()) => match h.raft.trigger().transfer_leader(req.to).await {
                        Ok(()) => {
                            crate::server::node::watch_transfer(
                                self.node.clone(),
                                h.raft.clone(),
                                req.group_id,
                                req.to,
                            );
                            ipb::TransferLeadershipReply::default()
                        }
                        Err(e) => ipb::TransferLeadershipReply {
                            error: e.to_string(),
                            ..Default::default()
                        },
                    },
                }
            }
            _ => ipb::TransferLeadershipReply {
                not_leader: Some(self.not_leader(self.node.local_leader(req.group_id))),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn ping(
        &self,
        req: Request<ipb::PingRequest>,
    ) -> Result<Response<ipb::PingReply>, Status> {
        let req = req.into_inner();
        self.node.peer_alive(req.from_node_id);
        // Answer at once: a ping's round trip is the failure detector, and nudging many groups
        // must not delay it.
        if !req.nudge_groups.is_empty() {
            let node = self.node.clone();
            tokio::spawn(async move { node.nudge(req.from_node_id, &req.nudge_groups).await });
        }
        Ok(Response::new(ipb::PingReply {}))
    }

    async fn node_report(
        &self,
        req: Request<ipb::NodeReportRequest>,
    ) -> Result<Response<ipb::NodeReportReply>, Status> {
        if !self.node.meta_group.raft.is_leader() {
            let leader = self.node.metadata_leader();
            return Ok(Response::new(ipb::NodeReportReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            }));
        }
        let req = req.into_inner();
        let member = self
            .node
            .meta
            .read(|s| s.members.contains_key(&req.node_id));
        self.node.record_report(req);
        Ok(Response::new(ipb::NodeReportReply {
            not_a_member: !member,
            ..Default::default()
        }))
    }

    async fn cluster_status(
        &self,
        req: Request<ipb::ClusterStatusRequest>,
    ) -> Result<Response<ipb::ClusterStatusReply>, Status> {
        if !self.node.meta_group.raft.is_leader() {
            let leader = self.node.metadata_leader();
            return Ok(Response::new(ipb::ClusterStatusReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            }));
        }
        Ok(Response::new(ipb::ClusterStatusReply {
            status_json: self.node.cluster_status(req.get_ref().detail).to_string(),
            ..Default::default()
        }))
    }

    async fn shard_read(
        &self,
        req: Request<ipb::ShardReadRequest>,
    ) -> Result<Response<ipb::ShardReadReply>, Status> {
        let req = req.into_inner();
        let bounds = ReadBounds {
            from_index: req.from_index,
            from_position: req.from_position,
            max_records: req.max_records as usize,
            max_bytes: req.max_bytes as usize,
            at_timestamp_ms: req.by_timestamp.then_some(req.at_timestamp_ms),
        };
        let reply = match self.node.read_as_leader(req.group_id, bounds).await {
            Ok(Ok(read)) => ipb::ShardReadReply {
                records: read.outcome.records,
                next_index: read.outcome.next_index,
                next_position: read.outcome.next_position,
                applied_index: read.applied.unwrap_or(0),
                has_applied: read.applied.is_some(),
                latest_arrival_timestamp_ms: read.latest_arrival_ms,
                sealed: read.sealed_at.is_some(),
                sealed_at: read.sealed_at.unwrap_or(0),
                ..Default::default()
            },
            Ok(Err(leader)) => ipb::ShardReadReply {
                not_leader: Some(self.not_leader(leader)),
                ..Default::default()
            },
            Err(e) => ipb::ShardReadReply {
                error_code: e.symbol().to_string(),
                error: e.to_string(),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }
}
