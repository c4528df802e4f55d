//! The client's error type: what failed, and whether the operation may still have happened.

use std::time::Duration;

/// Errors from the client. `outcome_unknown()` tells a caller whether a failed write may
/// nevertheless have been applied (and so must not be blindly retried).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error; the operation did not happen.
    #[error("{symbol}: {message}")]
    Server {
        code: tonic::Code,
        symbol: String,
        message: String,
    },
    /// The request may or may not have been applied (connection lost after sending, timeout).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// No endpoint could be reached before the deadline; nothing was sent.
    #[error("no endpoint reachable within {deadline:?}: {last_error}")]
    Unreachable {
        deadline: Duration,
        last_error: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Unknown(_))
    }

    /// The stable error symbol, when the server sent one.
    pub fn symbol(&self) -> Option<&str> {
        match self {
            ClientError::Server { symbol, .. } => Some(symbol),
            _ => None,
        }
    }

    pub(crate) fn from_status(status: tonic::Status) -> ClientError {
        // The request never left this process (typed: see `millrace_mux::never_sent`).
        if millrace_mux::never_sent(&status) {
            return ClientError::Unreachable {
                deadline: Duration::ZERO,
                last_error: status.message().to_string(),
            };
        }
        let symbol = status
            .metadata()
            .get(millrace_proto::ERROR_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match symbol {
            Some(symbol) if symbol != "UNKNOWN_OUTCOME" => ClientError::Server {
                code: status.code(),
                symbol,
                message: status.message().to_string(),
            },
            _ => ClientError::Unknown(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// True when trying another endpoint (or the same one later) is safe and may help.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Server { symbol, .. } => {
                matches!(symbol.as_str(), "NOT_LEADER" | "UNAVAILABLE" | "NOT_READY")
            }
            _ => false,
        }
    }
}
