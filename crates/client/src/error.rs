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
            // The error table's "yes: nothing was applied" rows.
            ClientError::Server { symbol, .. } => matches!(
                millrace_proto::v1::ErrorCode::from_str_name(symbol),
                Some(
                    millrace_proto::v1::ErrorCode::NotLeader
                        | millrace_proto::v1::ErrorCode::Unavailable
                )
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(symbol: &str) -> ClientError {
        ClientError::Server {
            code: tonic::Code::Unavailable,
            symbol: symbol.into(),
            message: String::new(),
        }
    }

    /// The client retries exactly the error table's rows whose retry column says nothing was
    /// applied; a symbol the table does not define is never retried.
    #[test]
    fn retries_follow_the_error_table() {
        let table = millrace_proto::ERRORS_PROTO;
        let mut rows = 0;
        for line in table
            .lines()
            .filter(|l| l.contains(" = ") && l.contains("//"))
        {
            let symbol = line.trim().split(' ').next().expect("symbol");
            if symbol == "ERROR_CODE_UNSPECIFIED" {
                continue;
            }
            rows += 1;
            let nothing_applied = line.ends_with("| yes: nothing was applied");
            assert_eq!(server(symbol).retryable(), nothing_applied, "{line}");
        }
        assert!(rows >= 14, "the table was read: {rows} rows");
        assert!(!server("NOT_READY").retryable());
        assert!(ClientError::Unreachable {
            deadline: Duration::ZERO,
            last_error: String::new()
        }
        .retryable());
        assert!(!ClientError::Unknown("lost".into()).retryable());
    }
}
