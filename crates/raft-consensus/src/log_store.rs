//! `RaftLogStorage` over a segment log: the Raft log *is* the shard log.
//!
//! Durability (see `docs/ARCHITECTURE.md`, "where data is fsynced"):
//! * `append` writes frames with `pwrite` (readable at once) and hands the files to the node's
//!   flush coordinator; openraft's `IOFlushed` callback fires only after that `fdatasync`.
//! * `save_vote` first syncs the active segment (so the vote is ordered after every earlier
//!   append), then writes the vote to sled and flushes sled before returning.
//! * `truncate_after` syncs before returning; `purge` flushes the purge point to sled before
//!   deleting any segment.
//! * `save_committed` is a hint (not flushed, written at most once a second); `read_committed` never reports past the durable
//!   tail, so start-up never "cleans a hole" in the log.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use millrace_storage::calibration::{self, InjectedBug};
use millrace_storage::{FlushCoordinator, GroupMeta, SegmentLog, SegmentLogConfig};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::codec::{decode_entry, decode_log_id, encode_entry};
use crate::types::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";
/// Calibration only ([`InjectedBug::AckBeforeFsync`]): the last index really fsynced.
const KEY_CALIBRATION_SYNCED: &str = "calibration-synced";
/// Calibration only: how long an acknowledged append waits before it is synced.
const CALIBRATION_LAZY_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// The log store of one group replica. Clones share the same log (reader handles).
#[derive(Clone)]
pub struct GroupLogStore {
    inner: Arc<Inner>,
}

struct Inner {
    log: Mutex<LogState2>,
    meta: GroupMeta,
    flusher: FlushCoordinator,
    /// The latest commit hint, and when a hint was last written to sled (see `save_committed`).
    committed: Mutex<CommittedHint>,
}

/// Payload bytes of log entries replication reads for one AppendEntries (the first entry always
/// goes, whatever its size): a follower far behind on large entries is sent batches of this
/// size, never one message over the transport's cap (`max_payload_entries` alone would allow
/// 256 entries of up to 5 MiB each).
pub const REPLICATION_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How often the commit hint is written to sled at most: it is a hint (losing it only means
/// re-learning the commit point from the leader), and a sled write on every commit advance
/// cost the write path a serialisation and an insert per entry.
const COMMITTED_HINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct CommittedHint {
    latest: Option<Option<LogId>>,
    saved_at: Option<std::time::Instant>,
}

struct LogState2 {
    segments: SegmentLog,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl GroupLogStore {
    /// Opens (recovering) the log in `dir` with its metadata in `meta`.
    pub fn open(
        dir: &Path,
        config: SegmentLogConfig,
        meta: GroupMeta,
        flusher: FlushCoordinator,
    ) -> io::Result<GroupLogStore> {
        let last_purged: Option<LogId> = meta.get(KEY_PURGED).map_err(io_err)?;
        let vote: Option<Vote> = meta.get(KEY_VOTE).map_err(io_err)?;
        let (mut segments, report) =
            SegmentLog::open(dir, config, last_purged.map(|l| l.index)).map_err(io_err)?;
        if report.torn_bytes_truncated > 0 {
            tracing::warn!(dir = %dir.display(), ?report, "segment log recovered after a crash");
        }
        if let Some(p) = last_purged {
            segments.drop_prefix(p.index).map_err(io_err)?;
        }
        if calibration::is(InjectedBug::AckBeforeFsync) {
            // What a power cut would have left of the lazily synced tail.
            let synced: Option<u64> = meta.get(KEY_CALIBRATION_SYNCED).map_err(io_err)?;
            let floor = last_purged.map_or(0, |p| p.index);
            if let (Some(synced), Some(last)) = (synced, segments.last_index()) {
                if synced < last && synced >= floor {
                    tracing::warn!(
                        dir = %dir.display(), synced, last,
                        "CALIBRATION BUG ack-before-fsync: dropping entries that were acknowledged but never synced"
                    );
                    segments.truncate_from(synced + 1).map_err(io_err)?;
                }
            }
        }
        // Whatever survived is now made durable, so "the log" means "the durable log".
        segments.sync_all().map_err(io_err)?;
        let last_log_id = match segments.last_index() {
            Some(i) => {
                let raw = segments.read(i, i + 1, usize::MAX).map_err(io_err)?;
                Some(decode_log_id(i, &raw[0].1).map_err(io_err)?)
            }
            None => None,
        };
        let last_log_id = std::cmp::max(last_log_id, last_purged);
        Ok(GroupLogStore {
            inner: Arc::new(Inner {
                log: Mutex::new(LogState2 {
                    segments,
                    last_log_id,
                    last_purged,
                    vote,
                }),
                meta,
                flusher,
                committed: Mutex::new(CommittedHint::default()),
            }),
        })
    }

    /// The calibration bug [`InjectedBug::AckBeforeFsync`]: reports the append durable now and
    /// syncs it later, remembering how far the log was really synced.
    fn ack_before_fsync(
        &self,
        files: Vec<Arc<std::fs::File>>,
        last: Option<u64>,
        callback: IOFlushed<TypeConfig>,
    ) {
        callback.io_completed(Ok(()));
        let flusher = self.inner.flusher.clone();
        let meta = self.inner.meta.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CALIBRATION_LAZY_SYNC).await;
            let done = Box::new(move |r: Result<(), _>| {
                if let (Ok(()), Some(last)) = (r, last) {
                    let _ = meta.put(KEY_CALIBRATION_SYNCED, &last);
                }
            });
            let _ = flusher.submit(files, done).await;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState2> {
        // A poisoned lock means a panic mid-write: refuse to go on rather than guess.
        self.inner.log.lock().expect("log store lock poisoned")
    }

    /// Reads raw frames (log index, encoded entry) in `[start, end)` up to `bytes_max`; used by
    /// the shard read path, which decodes only what it needs.
    pub fn read_raw(
        &self,
        start: u64,
        end: u64,
        bytes_max: usize,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let log = self.lock();
        let (Some(first), Some(last)) = (log.segments.first_index(), log.segments.last_index())
        else {
            return Ok(Vec::new());
        };
        // Missing entries are fine at the start (purged) and at the end (not yet appended).
        let start = start.max(first);
        if start >= end || start > last {
            return Ok(Vec::new());
        }
        log.segments.read(start, end, bytes_max).map_err(io_err)
    }

    /// (first readable index, last index) of the local log.
    pub fn bounds(&self) -> (Option<u64>, Option<u64>) {
        let log = self.lock();
        (log.segments.first_index(), log.segments.last_index())
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.lock().segments.disk_bytes()
    }

    fn read_entries(&self, start: u64, end: u64, bytes_max: usize) -> io::Result<Vec<Entry>> {
        self.read_raw(start, end, bytes_max)?
            .into_iter()
            .map(|(i, raw)| decode_entry(i, &raw).map_err(io_err))
            .collect()
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_bounds(&range);
        self.read_entries(start, end, usize::MAX)
    }

    /// What replication reads: at most [`REPLICATION_BATCH_BYTES_MAX`] of payload (and at
    /// least one entry).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_entries(start, end, REPLICATION_BATCH_BYTES_MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = GroupLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.lock();
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: log.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Order the vote after every earlier append: sync the log first.
        let active = self.lock().segments.active_file();
        if let Some(file) = active {
            tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .map_err(io_err)??;
        }
        self.inner.meta.put(KEY_VOTE, vote).map_err(io_err)?;
        self.inner.meta.flush().await.map_err(io_err)?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint: losing it only means re-learning the commit point from the leader, so it is
        // written at most once per COMMITTED_HINT_INTERVAL, not on every commit advance.
        let now = std::time::Instant::now();
        {
            let mut hint = self.inner.committed.lock().expect("hint lock");
            hint.latest = Some(committed);
            if hint
                .saved_at
                .is_some_and(|t| now.duration_since(t) < COMMITTED_HINT_INTERVAL)
            {
                return Ok(());
            }
            hint.saved_at = Some(now);
        }
        self.inner
            .meta
            .put(KEY_COMMITTED, &committed)
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let latest = self.inner.committed.lock().expect("hint lock").latest;
        let saved: Option<Option<LogId>> = match latest {
            Some(latest) => Some(latest),
            None => self.inner.meta.get(KEY_COMMITTED).map_err(io_err)?,
        };
        let saved = saved.flatten();
        let last = self.lock().last_log_id;
        // Never report a commit point past the durable tail of this replica's log.
        Ok(match (saved, last) {
            (Some(c), Some(l)) if c.index > l.index => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        let mut last = None;
        for e in entries {
            encoded.push((e.log_id.index, encode_entry(&e)));
            last = Some(e.log_id);
        }
        let files = {
            let mut log = self.lock();
            let files = log
                .segments
                .append(encoded.iter().map(|(i, p)| (*i, p.as_slice())))
                .map_err(io_err)?;
            if last.is_some() {
                log.last_log_id = last;
            }
            files
        };
        if files.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        if calibration::is(InjectedBug::AckBeforeFsync) {
            self.ack_before_fsync(files, last.map(|l| l.index), callback);
            return Ok(());
        }
        self.inner
            .flusher
            .submit(
                files,
                Box::new(move |r| {
                    callback.io_completed(r.map_err(|e| io::Error::new(e.kind(), e.to_string())))
                }),
            )
            .await
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let mut log = self.lock();
        let from = last_log_id.map_or(0, |l| l.index + 1);
        log.segments.truncate_from(from).map_err(io_err)?;
        log.last_log_id = match last_log_id {
            Some(l) if log.segments.last_index() == Some(l.index) => Some(l),
            _ => match log.segments.last_index() {
                Some(i) => {
                    let raw = log.segments.read(i, i + 1, usize::MAX).map_err(io_err)?;
                    Some(decode_log_id(i, &raw[0].1).map_err(io_err)?)
                }
                None => None,
            },
        };
        log.last_log_id = std::cmp::max(log.last_log_id, log.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point is durable before any segment is deleted.
        self.inner.meta.put(KEY_PURGED, &log_id).map_err(io_err)?;
        self.inner.meta.flush().await.map_err(io_err)?;
        let mut log = self.lock();
        log.segments.drop_prefix(log_id.index).map_err(io_err)?;
        log.last_purged = Some(log_id);
        if log.last_log_id < Some(log_id) {
            log.last_log_id = Some(log_id);
        }
        Ok(())
    }
}
