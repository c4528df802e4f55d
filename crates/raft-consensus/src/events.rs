//! Counts of the storage events that matter to an operator — snapshots built and installed,
//! log purges — over every group of this process (one node), for its metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static SNAPSHOTS_BUILT: AtomicU64 = AtomicU64::new(0);
static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);
static LOG_PURGES: AtomicU64 = AtomicU64::new(0);

/// The counts since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageEvents {
    /// Snapshots a group's state machine built and persisted (shard groups at their retention
    /// point, the metadata group every so many entries).
    pub snapshots_built: u64,
    /// Snapshots received from a leader and installed (a replica too far behind its log).
    pub snapshots_installed: u64,
    /// Log prefixes purged (segments deleted) after a snapshot covered them.
    pub log_purges: u64,
}

pub fn storage_events() -> StorageEvents {
    StorageEvents {
        snapshots_built: SNAPSHOTS_BUILT.load(Relaxed),
        snapshots_installed: SNAPSHOTS_INSTALLED.load(Relaxed),
        log_purges: LOG_PURGES.load(Relaxed),
    }
}

pub(crate) fn snapshot_built() {
    SNAPSHOTS_BUILT.fetch_add(1, Relaxed);
}

pub(crate) fn snapshot_installed() {
    SNAPSHOTS_INSTALLED.fetch_add(1, Relaxed);
}

pub(crate) fn log_purged() {
    LOG_PURGES.fetch_add(1, Relaxed);
}
