//! The node's API error and its single mapping onto the error table in
//! `proto/millrace/v1/errors.proto` (gRPC status, stable symbol and number, Kinesis name).

use millrace_proto::v1::ErrorCode;
use millrace_proto::{ERROR_CODE_METADATA_KEY, ERROR_METADATA_KEY, LEADER_HINT_METADATA_KEY};
use tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    #[error("{0}")]
    ProvisionedThroughputExceeded(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    ExpiredNextToken(String),
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
    /// The caller did not prove who it is (no, or a wrong, signature or certificate).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    AccessDenied(String),
}

impl ApiError {
    /// The row of the error table.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::ResourceNotFound(_) => ErrorCode::ResourceNotFound,
            ApiError::ResourceInUse(_) => ErrorCode::ResourceInUse,
            ApiError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ApiError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            ApiError::ExpiredIterator(_) => ErrorCode::ExpiredIterator,
            ApiError::ProvisionedThroughputExceeded(_) => ErrorCode::ProvisionedThroughputExceeded,
            ApiError::Validation(_) => ErrorCode::Validation,
            ApiError::ExpiredNextToken(_) => ErrorCode::ExpiredNextToken,
            ApiError::NotLeader { .. } => ErrorCode::NotLeader,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::UnknownOutcome(_) => ErrorCode::UnknownOutcome,
            ApiError::Internal(_) => ErrorCode::InternalFailure,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::AccessDenied(_) => ErrorCode::AccessDenied,
        }
    }

    /// The stable symbol (e.g. `RESOURCE_NOT_FOUND`).
    pub fn symbol(&self) -> &'static str {
        self.code().as_str_name()
    }

    /// Rebuilds an error from a symbol another node reported.
    pub fn from_symbol(symbol: &str, message: String) -> ApiError {
        match ErrorCode::from_str_name(symbol) {
            Some(ErrorCode::ResourceNotFound) => ApiError::ResourceNotFound(message),
            Some(ErrorCode::ResourceInUse) => ApiError::ResourceInUse(message),
            Some(ErrorCode::InvalidArgument) => ApiError::InvalidArgument(message),
            Some(ErrorCode::LimitExceeded) => ApiError::LimitExceeded(message),
            Some(ErrorCode::ExpiredIterator) => ApiError::ExpiredIterator(message),
            Some(ErrorCode::ProvisionedThroughputExceeded) => {
                ApiError::ProvisionedThroughputExceeded(message)
            }
            Some(ErrorCode::Validation) => ApiError::Validation(message),
            Some(ErrorCode::ExpiredNextToken) => ApiError::ExpiredNextToken(message),
            Some(ErrorCode::NotLeader) => ApiError::NotLeader {
                what: message,
                leader_id: None,
            },
            Some(ErrorCode::Unavailable) => ApiError::Unavailable(message),
            Some(ErrorCode::UnknownOutcome) => ApiError::UnknownOutcome(message),
            Some(ErrorCode::Unauthenticated) => ApiError::Unauthenticated(message),
            Some(ErrorCode::AccessDenied) => ApiError::AccessDenied(message),
            _ => ApiError::Internal(message),
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.code() {
            ErrorCode::ResourceNotFound => Code::NotFound,
            ErrorCode::ResourceInUse => Code::FailedPrecondition,
            ErrorCode::InvalidArgument
            | ErrorCode::ExpiredIterator
            | ErrorCode::Validation
            | ErrorCode::ExpiredNextToken => Code::InvalidArgument,
            ErrorCode::LimitExceeded | ErrorCode::ProvisionedThroughputExceeded => {
                Code::ResourceExhausted
            }
            ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::UnknownOutcome => {
                Code::Unavailable
            }
            ErrorCode::InternalFailure | ErrorCode::Unspecified => Code::Internal,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::AccessDenied => Code::PermissionDenied,
        }
    }

    /// The Kinesis exception name the HTTP API answers with.
    pub fn kinesis_name(&self) -> &'static str {
        match self.code() {
            ErrorCode::ResourceNotFound => "ResourceNotFoundException",
            ErrorCode::ResourceInUse => "ResourceInUseException",
            ErrorCode::InvalidArgument => "InvalidArgumentException",
            ErrorCode::LimitExceeded => "LimitExceededException",
            ErrorCode::ExpiredIterator => "ExpiredIteratorException",
            ErrorCode::ProvisionedThroughputExceeded => "ProvisionedThroughputExceededException",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::ExpiredNextToken => "ExpiredNextTokenException",
            ErrorCode::Unauthenticated => "UnrecognizedClientException",
            ErrorCode::AccessDenied => "AccessDeniedException",
            ErrorCode::NotLeader
            | ErrorCode::Unavailable
            | ErrorCode::UnknownOutcome
            | ErrorCode::InternalFailure
            | ErrorCode::Unspecified => "InternalFailure",
        }
    }

    /// May the caller retry without risking a duplicate?
    pub fn retryable(&self) -> bool {
        matches!(self, ApiError::NotLeader { .. } | ApiError::Unavailable(_))
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.grpc_code(), e.to_string());
        if let Ok(v) = e.symbol().parse() {
            status.metadata_mut().insert(ERROR_METADATA_KEY, v);
        }
        if let Ok(v) = (e.code() as i32).to_string().parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA_KEY, v);
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

/// One row of the error table in `errors.proto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRow {
    pub symbol: String,
    pub number: i32,
    pub grpc_status: String,
    pub kinesis_name: String,
    pub http_status: u16,
    pub retry: String,
}

/// Parses the table from `errors.proto`.
pub fn error_table() -> Vec<ErrorRow> {
    millrace_proto::ERRORS_PROTO
        .lines()
        .filter_map(|line| {
            let (decl, comment) = line.trim().split_once("; //")?;
            let (symbol, number) = decl.split_once('=')?;
            let cols: Vec<&str> = comment.split('|').map(str::trim).collect();
            let [grpc, kinesis, http, retry] = cols.as_slice() else {
                return None;
            };
            Some(ErrorRow {
                symbol: symbol.trim().to_string(),
                number: number.trim().parse().ok()?,
                grpc_status: grpc.to_string(),
                kinesis_name: kinesis.to_string(),
                http_status: http.parse().ok()?,
                retry: retry.to_string(),
            })
        })
        .collect()
}

/// `docs/errors.md`, generated from the table.
pub fn errors_markdown() -> String {
    let mut out = String::from(
        "# Errors\n\n\
         Generated from `proto/millrace/v1/errors.proto` (the one error table) by\n\
         `MILLRACE_BLESS=1 cargo test -p millrace-node error_docs`; a test fails when this file\n\
         and the table differ. gRPC calls carry the symbol in the `millrace-error` metadata key and\n\
         the number in `millrace-error-code`; PutRecords entries carry the symbol in `error_code`;\n\
         the Kinesis HTTP API answers with the exception name.\n\n\
         | number | symbol | gRPC status | Kinesis exception | HTTP | retry |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in error_table() {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            r.number, r.symbol, r.grpc_status, r.kinesis_name, r.http_status, r.retry
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_error() -> Vec<ApiError> {
        let m = || "m".to_string();
        vec![
            ApiError::ResourceNotFound(m()),
            ApiError::ResourceInUse(m()),
            ApiError::InvalidArgument(m()),
            ApiError::LimitExceeded(m()),
            ApiError::ExpiredIterator(m()),
            ApiError::ProvisionedThroughputExceeded(m()),
            ApiError::Validation(m()),
            ApiError::ExpiredNextToken(m()),
            ApiError::NotLeader {
                what: m(),
                leader_id: None,
            },
            ApiError::Unavailable(m()),
            ApiError::UnknownOutcome(m()),
            ApiError::Internal(m()),
            ApiError::Unauthenticated(m()),
            ApiError::AccessDenied(m()),
        ]
    }

    #[test]
    fn code_matches_the_error_table() {
        let table = error_table();
        assert_eq!(table.len(), every_error().len(), "one row per error");
        for e in every_error() {
            let row = table
                .iter()
                .find(|r| r.symbol == e.symbol())
                .unwrap_or_else(|| panic!("{} missing from errors.proto", e.symbol()));
            assert_eq!(row.number, e.code() as i32, "{}", e.symbol());
            assert_eq!(
                row.grpc_status,
                format!("{:?}", e.grpc_code())
                    .chars()
                    .fold(String::new(), |mut s, c| {
                        if c.is_uppercase() && !s.is_empty() {
                            s.push('_');
                        }
                        s.push(c.to_ascii_uppercase());
                        s
                    }),
                "{}",
                e.symbol()
            );
            assert_eq!(row.kinesis_name, e.kinesis_name(), "{}", e.symbol());
            assert_eq!(
                row.http_status == 500,
                e.kinesis_name() == "InternalFailure",
                "{}",
                e.symbol()
            );
            assert_eq!(
                ApiError::from_symbol(e.symbol(), "m".into()).code(),
                e.code()
            );
        }
    }

    #[test]
    fn error_docs_match_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
        let generated = errors_markdown();
        if std::env::var_os("MILLRACE_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let current = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            current == generated,
            "docs/errors.md is out of date; run MILLRACE_BLESS=1 cargo test -p millrace-node error_docs"
        );
    }
}
