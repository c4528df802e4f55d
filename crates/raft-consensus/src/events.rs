//! Counts of the storage events that matter to an operator — snapshots built and installed,
//! log purges — over every group of this process (one node), for its metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static SNAPSHOTS_BUILT: AtomicU64 = AtomicU64::new(0);
static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);
static LOG_PURGES: AtomicU64 = AtomicU64::new(0);
static REPAIRS_STARTED: AtomicU64 = AtomicU64::new(0);
static REPAIRS_FINISHED: AtomicU64 = AtomicU64::new(0);

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
    /// Replicas found damaged at start-up (log entries lost that they may have acknowledged)
    /// whose rebuild from the other replicas began.
    pub repairs_started: u64,
    /// Of those, the rebuilds that finished: the replica votes again.
    pub repairs_finished: u64,
}

pub fn storage_events() -> StorageEvents {
    StorageEvents {
        snapshots_built: SNAPSHOTS_BUILT.load(Relaxed),
        snapshots_installed: SNAPSHOTS_INSTALLED.load(Relaxed),
        log_purges: LOG_PURGES.load(Relaxed),
        repairs_started: REPAIRS_STARTED.load(Relaxed),
        repairs_finished: REPAIRS_FINISHED.load(Relaxed),
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

pub(crate) fn repair_started() {
    REPAIRS_STARTED.fetch_add(1, Relaxed);
}

pub(crate) fn repair_finished() {
    REPAIRS_FINISHED.fetch_add(1, Relaxed);
}
