//! Millrace's on-disk formats.
//!
//! * [`segment`]: the per-Raft-group segment log. Every Raft entry is written once, framed with a
//!   length, its log index and CRC32C checksums; this log *is* the shard log.
//! * [`meta`]: the sled-backed node metadata (votes, committed and applied pointers, membership,
//!   the metadata state machine).
//! * [`flush`]: the flush coordinator that batches `fdatasync` across groups (group commit) and
//!   completes callbacks only once the data is durable.
//!
//! The formats are documented in `docs/storage-format.md`; changing them means bumping the
//! version constants in this crate.

pub mod calibration;
pub mod error;
pub mod flush;
pub mod histogram;
pub mod meta;
pub mod segment;

pub use error::{StorageError, StorageResult};
pub use flush::{FlushCoordinator, FlushStats, SyncMethod};
pub use histogram::{HistogramSnapshot, LatencyHistogram};
pub use meta::{GroupMeta, NodeMeta};
pub use segment::{LogDamage, SegmentLog, SegmentLogConfig};
