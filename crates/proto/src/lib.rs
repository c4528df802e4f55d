//! Millrace's wire contract, generated from the `.proto` files in `proto/`.
//!
//! * [`v1`]: the public gRPC API (`millrace.v1.Millrace`).
//! * [`internal`]: node-to-node RPCs (Raft transport, forwarding to leaders).
//! * [`storage`]: the on-disk record batch format (payload of shard Raft entries).
//! * [`limits`]: the limits of the public API (Kinesis's), each named once with its source.

pub mod limits;

/// Generated modules, nested as the protobuf packages are (so cross-package references work).
#[allow(clippy::all, missing_docs)]
pub mod millrace {
    pub mod v1 {
        tonic::include_proto!("millrace.v1");
    }
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("millrace.internal.v1");
        }
    }
    pub mod storage {
        pub mod v1 {
            tonic::include_proto!("millrace.storage.v1");
        }
    }
}

impl std::fmt::Debug for v1::CreateAccessKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateAccessKeyResponse")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<secret>")
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

impl internal::GroupReport {
    /// The reporting replica's role. A report from a node that predates the `role` field
    /// (a rolling upgrade) is read from its `state`, the only sign such a node gives.
    pub fn role_or_state(&self) -> internal::GroupRole {
        use internal::GroupRole;
        match self.role() {
            GroupRole::Unspecified => match self.state.as_str() {
                "Leader" => GroupRole::Leader,
                "Follower" => GroupRole::Follower,
                "Learner" => GroupRole::Learner,
                "Candidate" => GroupRole::Candidate,
                _ => GroupRole::Unspecified,
            },
            role => role,
        }
    }

    /// Whether the reporting replica leads its group.
    pub fn leads(&self) -> bool {
        self.role_or_state() == internal::GroupRole::Leader
    }
}

pub use millrace::internal::v1 as internal;
pub use millrace::storage::v1 as storage;
pub use millrace::v1;

/// gRPC metadata key carrying the stable error symbol of a failed call.
pub const ERROR_METADATA_KEY: &str = "millrace-error";
/// gRPC metadata key carrying the numeric value of the error (`ErrorCode`).
pub const ERROR_CODE_METADATA_KEY: &str = "millrace-error-code";
/// The error table's source, for checks against it.
pub const ERRORS_PROTO: &str = include_str!("../../../proto/millrace/v1/errors.proto");
/// gRPC metadata key carrying the node id of the leader a client should retry at.
pub const LEADER_HINT_METADATA_KEY: &str = "millrace-leader";

#[cfg(test)]
mod tests {
    #[test]
    fn a_group_report_leads_by_its_role_or_by_the_state_of_an_older_node() {
        use super::internal::{GroupReport, GroupRole};
        let with_role = |role: GroupRole, state: &str| GroupReport {
            role: role as i32,
            state: state.into(),
            ..Default::default()
        };
        assert!(with_role(GroupRole::Leader, "Leader").leads());
        // The role decides when set, whatever the text says.
        assert!(with_role(GroupRole::Leader, "").leads());
        assert!(!with_role(GroupRole::Follower, "Leader").leads());
        // An older node sends no role: its state is read.
        assert!(with_role(GroupRole::Unspecified, "Leader").leads());
        let old = with_role(GroupRole::Unspecified, "Learner");
        assert!(!old.leads());
        assert_eq!(old.role_or_state(), GroupRole::Learner);
        assert_eq!(
            with_role(GroupRole::Unspecified, "").role_or_state(),
            GroupRole::Unspecified
        );
    }

    #[test]
    fn a_created_key_prints_without_its_secret() {
        let r = super::v1::CreateAccessKeyResponse {
            access_key_id: "MRKEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            created_ms: 1,
        };
        let shown = format!("{r:?}");
        assert!(
            shown.contains("MRKEXAMPLE") && !shown.contains("very-secret"),
            "{shown}"
        );
    }
}
