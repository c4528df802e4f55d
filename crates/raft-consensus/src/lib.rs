//! Millrace consensus: many openraft groups per process.
//!
//! * [`types`]: the openraft type config. Requests and responses are opaque bytes, so one Raft
//!   type serves the metadata group and every shard group; the node crate gives them meaning.
//! * [`codec`]: how a Raft entry is laid out in a segment-log frame (format version 1).
//! * [`log_store`]: `RaftLogStorage` over a [`millrace_storage::SegmentLog`] with group commit.
//! * [`state_machine`]: `RaftStateMachine` adapter over a [`GroupStateMachine`].
//! * [`network`]: one gRPC channel per peer shared by all groups; messages carry the group id.
//! * [`group`]: creating, looking up and removing group replicas on this node.

pub mod codec;
pub mod events;
pub mod group;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

pub use group::{GroupManager, GroupSettings, SnapshotMode};
pub use state_machine::{GroupStateMachine, UnappliableEntry};
pub use types::{NodeId, Raft, Request, Response, TypeConfig};
