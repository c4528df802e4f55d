//! The node's API error and its single mapping onto gRPC statuses and stable symbols.
//! The full table lives in `docs/errors.md` (and grows into `proto/` with the streams issue).

use millrace_proto::{ERROR_METADATA_KEY, LEADER_HINT_METADATA_KEY};
use tonic::Status;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    ExpiredIterator(String),
    /// Not applied anywhere; safe to retry (possibly at `leader_id`).
    #[error("not the leader of {what}")]
    NotLeader {
        what: String,
        leader_id: Option<u64>,
    },
    /// Not applied anywhere; safe to retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    UnknownOutcome(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The stable symbol (docs/errors.md).
    pub fn symbol(&self) -> &'static str {
        match self {
            ApiError::ResourceNotFound(_) => "RESOURCE_NOT_FOUND",
            ApiError::ResourceInUse(_) => "RESOURCE_IN_USE",
            ApiError::InvalidArgument(_) => "INVALID_ARGUMENT",
            ApiError::LimitExceeded(_) => "LIMIT_EXCEEDED",
            ApiError::ExpiredIterator(_) => "EXPIRED_ITERATOR",
            ApiError::NotLeader { .. } => "NOT_LEADER",
            ApiError::Unavailable(_) => "UNAVAILABLE",
            ApiError::UnknownOutcome(_) => "UNKNOWN_OUTCOME",
            ApiError::Internal(_) => "INTERNAL_FAILURE",
        }
    }

    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ApiError::ResourceNotFound(_) => Code::NotFound,
            ApiError::ResourceInUse(_) => Code::FailedPrecondition,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::LimitExceeded(_) => Code::ResourceExhausted,
            ApiError::ExpiredIterator(_) => Code::InvalidArgument,
            ApiError::NotLeader { .. } | ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::UnknownOutcome(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// May the caller retry without risking a duplicate?
    pub fn retryable(&self) -> bool {
        matches!(self, ApiError::NotLeader { .. } | ApiError::Unavailable(_))
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let Ok(v) = e.symbol().parse() {
            status.metadata_mut().insert(ERROR_METADATA_KEY, v);
        }
        if let ApiError::NotLeader {
            leader_id: Some(id),
            ..
        } = &e
        {
            if let Ok(v) = id.to_string().parse() {
                status.metadata_mut().insert(LEADER_HINT_METADATA_KEY, v);
            }
        }
        status
    }
}
