//! The openraft type configuration shared by every Raft group.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state_machine::GroupSm;

pub type NodeId = u64;

/// An application command, opaque at this layer (a metadata command or a record batch).
/// Shared bytes: the log store's in-memory tail, apply and replication hand the same entry
/// around without copying it (serialised as a byte string, as before).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub bytes::Bytes);

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} bytes)", self.0.len())
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The state machine's answer to a [`Request`], opaque at this layer.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Millrace's openraft types: u64 node ids, nodes addressed by their gRPC address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, GroupSm>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;

/// Builds a log id from its parts.
pub fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    openraft::LogId::new(
        openraft::vote::leader_id_adv::LeaderId { term, node_id },
        index,
    )
}
