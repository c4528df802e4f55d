//! The storage layer's error type.

use std::io;
use std::path::PathBuf;

pub type StorageResult<T> = Result<T, StorageError>;

/// Everything the storage layer can fail with. `Corruption` is never retryable: the caller must
/// stop serving the affected group rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{verb} {subject}: {source}")]
    Io {
        subject: String,
        verb: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("corrupt segment {} at byte {offset}: {reason}", path.display())]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("log index {index} is not in the log (it holds {first}..={last})")]
    OutOfRange { index: u64, first: u64, last: u64 },
    #[error("append out of order: expected log index {expected}, got {got}")]
    NonContiguous { expected: u64, got: u64 },
    #[error("entry of {bytes} bytes exceeds the frame limit of {max_bytes} bytes")]
    EntryTooLarge { bytes: usize, max_bytes: usize },
    #[error("node metadata {verb}: {source}")]
    Meta {
        verb: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("node metadata key {key} holds an undecodable value: {reason}")]
    MetaDecode { key: String, reason: String },
    #[error("node metadata lost flushed writes: it holds flush generation {found}, but generation {sealed} was made durable (a damaged record cut its log short)")]
    MetaRolledBack { found: u64, sealed: u64 },
    #[error("the flush coordinator has stopped")]
    FlusherStopped,
}

impl StorageError {
    /// Damage found in stored data (not an I/O failure or a wrong use).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StorageError::Corruption { .. }
                | StorageError::MetaDecode { .. }
                | StorageError::MetaRolledBack { .. }
                | StorageError::Meta {
                    source: sled::Error::Corruption { .. },
                    ..
                }
        )
    }

    pub(crate) fn io(
        verb: &'static str,
        subject: impl std::fmt::Display,
        source: io::Error,
    ) -> Self {
        StorageError::Io {
            subject: subject.to_string(),
            verb,
            source,
        }
    }
}
