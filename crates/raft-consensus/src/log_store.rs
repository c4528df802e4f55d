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
//!
//! Damage (see `docs/operations.md`, "damaged replicas"): after every flush the store records in
//! sled how far its log is known synced (`synced`, never past the durable tail: written after the
//! sync, lowered durably before a truncation). A log that opens shorter than that, or damaged in a
//! way no crash explains (cut back to its valid prefix by `SegmentLog::open_salvaging`), lost
//! entries this replica may have acknowledged. The store then records `repair_until` (durably,
//! before anything else) and reports [`GroupLogStore::repair_until`]: the group's replica must
//! not vote or stand for election until its log again reaches that index, filled in by the
//! leader as for any lagging follower.

use std::collections::VecDeque;
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
/// The highest log index known synced (≤ the durable tail; see the module docs).
const KEY_SYNCED: &str = "synced";
/// Set while the replica is rebuilt after damage: the index its log must reach again.
const KEY_REPAIR_UNTIL: &str = "repair_until";
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
    synced: Mutex<SyncedMark>,
    /// The repair under way, if the log was found damaged (see the module docs).
    repair: Mutex<Option<Repair>>,
}

/// How far the log is known synced: in memory and as last written to sled.
#[derive(Default)]
struct SyncedMark {
    /// Bumped by every truncation: a flush that completes later speaks of entries that may be
    /// gone, so it must not raise the mark.
    generation: u64,
    saved: Option<u64>,
}

/// A damaged replica's repair: why, and the index its log must reach again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub until: u64,
    /// A term no entry of the log before its damage was newer than (the term of its last
    /// entry, or the replica's vote then), if known: what [`Repair::may_vote_for`] compares.
    pub term: Option<u64>,
    pub reason: String,
}

/// `<group>/repair_until` in sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RepairMark {
    until: u64,
    term: Option<u64>,
}

impl Repair {
    /// Whether this replica may vote for a candidate whose log ends at `last`: only if that
    /// log is at least as up to date as this replica's log was before its damage (Raft's
    /// election check, against what was lost): a newer last term than any it held, or the
    /// same term and at least as long. Without a known term it votes for no one.
    pub fn may_vote_for(&self, last: Option<&LogId>) -> bool {
        match (self.term, last) {
            (Some(t), Some(l)) => {
                l.leader_id.term > t || (l.leader_id.term == t && l.index >= self.until)
            }
            _ => false,
        }
    }
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
    tail: Tail,
}

/// Entries appended to the in-memory tail at most, in count and in payload bytes; past either,
/// the oldest leave it (they are still in the segment files).
const TAIL_ENTRIES_MAX: usize = 256;
const TAIL_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Applied entries the tail keeps at most, for a follower a little behind the others; the rest
/// of what apply has read leaves it, so a quiet group holds little.
const TAIL_APPLIED_ENTRIES_MAX: usize = 4;
const TAIL_APPLIED_BYTES_MAX: usize = 256 * 1024;

/// The entries appended last, in memory. Apply and the replication of followers that keep up
/// read each entry right after it is appended; without the tail each such read went back to
/// the segment file (a `pread` into a fresh buffer, a CRC check and two copies), three times
/// per entry on the leader of three replicas. Entries share their payload (`Bytes`), so a read
/// from the tail copies nothing. Consecutive indices; what it holds is always also in the
/// segment log, written by the same `append`.
#[derive(Default)]
struct Tail {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Entries at the front that apply has read (see [`Tail::applied_through`]).
    applied: usize,
    applied_bytes: usize,
}

fn payload_bytes(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(r) => r.0.len(),
        _ => 0,
    }
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn push(&mut self, entry: Entry) {
        if self
            .entries
            .back()
            .is_some_and(|b| b.log_id.index + 1 != entry.log_id.index)
        {
            self.clear();
        }
        self.bytes += payload_bytes(&entry);
        self.entries.push_back(entry);
        while self.entries.len() > TAIL_ENTRIES_MAX || self.bytes > TAIL_BYTES_MAX {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            let n = payload_bytes(&e);
            self.bytes -= n;
            if self.applied > 0 {
                self.applied -= 1;
                self.applied_bytes -= n;
            }
        }
    }

    fn clear(&mut self) {
        *self = Tail::default();
    }

    /// Drops entries after `index` (a truncated log).
    fn truncate_after(&mut self, index: Option<u64>) {
        while self
            .entries
            .back()
            .is_some_and(|b| Some(b.log_id.index) > index)
        {
            let e = self.entries.pop_back().expect("back exists");
            let n = payload_bytes(&e);
            self.bytes -= n;
            if self.applied > self.entries.len() {
                self.applied -= 1;
                self.applied_bytes -= n;
            }
        }
    }

    /// Drops entries up to and including `index` (a purged log).
    fn purge_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|f| f <= index) {
            self.pop_front();
        }
    }

    /// Apply has read every entry before `end`: keep only a few of them.
    fn applied_through(&mut self, end: u64) {
        let applied = match self.first_index() {
            Some(first) if end > first => ((end - first) as usize).min(self.entries.len()),
            _ => return,
        };
        while self.applied < applied {
            self.applied_bytes += payload_bytes(&self.entries[self.applied]);
            self.applied += 1;
        }
        while self.applied > TAIL_APPLIED_ENTRIES_MAX
            || (self.applied > 0 && self.applied_bytes > TAIL_APPLIED_BYTES_MAX)
        {
            self.pop_front();
        }
    }

    /// The entries of `[start, end)` it holds from `start` on, within `bytes_max` of payload
    /// (at least one entry when `first` is set); nothing when it does not hold `start`.
    fn read(&self, start: u64, end: u64, bytes_max: usize, first: bool) -> Vec<Entry> {
        let Some(front) = self.first_index() else {
            return Vec::new();
        };
        if start < front {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self.entries.iter().skip((start - front) as usize) {
            if e.log_id.index >= end {
                break;
            }
            let n = payload_bytes(e);
            if (!out.is_empty() || !first) && bytes + n > bytes_max {
                break;
            }
            bytes += n;
            out.push(e.clone());
        }
        out
    }
}

/// Records that the replica of a group must be rebuilt up to log index `until` when it is next
/// opened (its log and metadata were lost, e.g. with a damaged node metadata store). Durable
/// once the caller flushes `meta`.
pub fn mark_for_repair(meta: &GroupMeta, last: LogId) -> millrace_storage::StorageResult<()> {
    let mark = RepairMark {
        until: last.index,
        term: Some(last.leader_id.term),
    };
    meta.put(KEY_REPAIR_UNTIL, &Some(mark))
}

/// The id of the last entry a group's segment files in `dir` hold, read without changing
/// them (see [`mark_for_repair`]).
pub fn last_log_id_on_disk(dir: &Path) -> io::Result<Option<LogId>> {
    match SegmentLog::last_frame_on_disk(dir).map_err(io_err)? {
        Some((index, payload)) => decode_log_id(index, &payload).map(Some).map_err(io_err),
        None => Ok(None),
    }
}

impl Inner {
    /// A flush of the entries up to `last` completed: raise the synced mark (unless a
    /// truncation came in between). Written to sled without a flush: sled's own background
    /// flush makes it durable within half a second, always after the entries it speaks of.
    fn note_synced(&self, generation: u64, last: u64) {
        let mut mark = self.synced.lock().expect("synced lock");
        if mark.generation != generation || mark.saved >= Some(last) {
            return;
        }
        match self.meta.put(KEY_SYNCED, &Some(last)) {
            Ok(()) => mark.saved = Some(last),
            Err(e) => tracing::warn!(error = %e, "could not record how far the log is synced"),
        }
    }
}

/// Whether the log, as opened, lacks entries this replica may have acknowledged, and up to
/// which index it must be rebuilt: entries past its end that a flush had synced, entries cut
/// off by damage no crash explains, or a repair an earlier start did not finish.
fn repair_needed(
    report: &millrace_storage::segment::RecoveryReport,
    synced: Option<u64>,
    repair_before: Option<RepairMark>,
    vote_term: Option<u64>,
    last: Option<u64>,
) -> Option<Repair> {
    let mut reasons = Vec::new();
    let mut until = None;
    // No entry is newer than the vote the replica had when its log was damaged.
    let mut term = vote_term;
    if let Some(d) = &report.damage {
        reasons.push(d.reason.clone());
        until = until.max(Some(d.first_lost_index.max(d.last_index_seen.unwrap_or(0))));
    }
    if let Some(s) = synced.filter(|s| Some(*s) > last) {
        reasons.push(format!(
            "entries up to log index {s} were synced but the log ends at {}",
            last.map_or("nothing".into(), |l| l.to_string())
        ));
        until = until.max(Some(s));
    }
    if let Some(r) = repair_before {
        if reasons.is_empty() {
            reasons.push("a repair begun before the last restart".into());
            term = r.term;
        } else {
            term = term.max(r.term);
        }
        until = until.max(Some(r.until));
    }
    let until = until.filter(|u| Some(*u) > last)?;
    Some(Repair {
        until,
        term,
        reason: reasons.join("; "),
    })
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
        let synced: Option<u64> = meta
            .get::<Option<u64>>(KEY_SYNCED)
            .map_err(io_err)?
            .flatten();
        let repair_before: Option<RepairMark> = meta
            .get::<Option<RepairMark>>(KEY_REPAIR_UNTIL)
            .map_err(io_err)?
            .flatten();
        let (mut segments, report) =
            SegmentLog::open_salvaging(dir, config, last_purged.map(|l| l.index))
                .map_err(io_err)?;
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
        let last = last_log_id.map(|l| l.index);
        let vote_term = vote.map(|v| v.leader_id().term);
        let repair = repair_needed(&report, synced, repair_before, vote_term, last);
        match &repair {
            Some(r) => {
                tracing::error!(
                    dir = %dir.display(), repair_until = r.until, last_index = ?last, reason = %r.reason,
                    "replica lost log entries it may have acknowledged: it will not vote until the leader has rebuilt them"
                );
                // The target is kept by `repair_until` from now on; the synced mark again
                // speaks of this log as it is (synced above).
                let mark = RepairMark {
                    until: r.until,
                    term: r.term,
                };
                meta.put(KEY_REPAIR_UNTIL, &Some(mark)).map_err(io_err)?;
                meta.put(KEY_SYNCED, &last).map_err(io_err)?;
                meta.flush_blocking().map_err(io_err)?;
            }
            None if repair_before.is_some() => {
                meta.put(KEY_REPAIR_UNTIL, &None::<RepairMark>)
                    .map_err(io_err)?;
            }
            None => {}
        }
        Ok(GroupLogStore {
            inner: Arc::new(Inner {
                log: Mutex::new(LogState2 {
                    segments,
                    last_log_id,
                    last_purged,
                    vote,
                    tail: Tail::default(),
                }),
                meta,
                flusher,
                committed: Mutex::new(CommittedHint::default()),
                synced: Mutex::new(SyncedMark {
                    generation: 0,
                    saved: synced.min(last),
                }),
                repair: Mutex::new(repair),
            }),
        })
    }

    /// The repair under way: this replica lost entries it may have acknowledged and must not
    /// vote or stand for election until its log again reaches `until`.
    pub fn repair(&self) -> Option<Repair> {
        self.inner.repair.lock().expect("repair lock").clone()
    }

    /// Ends the repair once the log has reached its index again (durably, before it returns
    /// `true`); `false` while the log is still short.
    pub async fn finish_repair(&self) -> io::Result<bool> {
        let Some(until) = self.repair().map(|r| r.until) else {
            return Ok(true);
        };
        // Whole again once entries up to `until` are synced, or purged (a snapshot installed
        // past it; the purge point is durable before the purge).
        let synced = self.inner.synced.lock().expect("synced lock").saved;
        let purged = self.lock().last_purged.map(|l| l.index);
        if synced.max(purged) < Some(until) {
            return Ok(false);
        }
        self.inner
            .meta
            .put(KEY_REPAIR_UNTIL, &None::<RepairMark>)
            .map_err(io_err)?;
        self.inner.meta.flush().await.map_err(io_err)?;
        *self.inner.repair.lock().expect("repair lock") = None;
        Ok(true)
    }

    /// The vote and last log id, for a vote this replica refuses while it is repaired.
    pub fn vote_and_last_log_id(&self) -> (Option<Vote>, Option<LogId>) {
        let log = self.lock();
        (log.vote, log.last_log_id)
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
    ) -> io::Result<Vec<(u64, bytes::Bytes)>> {
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

    /// Entries in `[start, end)` within `bytes_max` of payload (at least one): from the segment
    /// files up to where the in-memory tail begins, then from the tail.
    fn read_entries(&self, start: u64, end: u64, bytes_max: usize) -> io::Result<Vec<Entry>> {
        let log = self.lock();
        let tail_first = log.tail.first_index().unwrap_or(u64::MAX);
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let mut next = start;
        if next < tail_first {
            let (Some(first), Some(last)) = (log.segments.first_index(), log.segments.last_index())
            else {
                return Ok(out);
            };
            next = next.max(first);
            let disk_end = end.min(tail_first);
            if next < disk_end && next <= last {
                for (i, raw) in log
                    .segments
                    .read(next, disk_end, bytes_max)
                    .map_err(io_err)?
                {
                    let e = decode_entry(i, &raw).map_err(io_err)?;
                    bytes += payload_bytes(&e);
                    next = i + 1;
                    out.push(e);
                }
            }
            if next < tail_first {
                // Stopped on the byte bound, or the range ends before the tail.
                return Ok(out);
            }
        }
        if next < end {
            let rest = bytes_max.saturating_sub(bytes);
            out.extend(log.tail.read(next, end, rest, out.is_empty()));
        }
        Ok(out)
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

    /// What apply reads: committed entries, which then mostly leave the in-memory tail.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures::Stream<Item = Result<Entry, io::Error>> + openraft::OptionalSend
    where
        RB: RangeBounds<u64> + Clone + std::fmt::Debug + openraft::OptionalSend,
    {
        let (start, end) = range_to_bounds(&range);
        let read = self.read_entries(start, end, usize::MAX);
        if read.is_ok() {
            self.lock().tail.applied_through(end);
        }
        let items: Vec<Result<Entry, io::Error>> = match read {
            Ok(entries) => entries.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
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
        let mut appended = Vec::new();
        let mut last = None;
        for e in entries {
            encoded.push((e.log_id.index, encode_entry(&e)));
            last = Some(e.log_id);
            appended.push(e);
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
            for e in appended {
                log.tail.push(e);
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
        let inner = self.inner.clone();
        let generation = inner.synced.lock().expect("synced lock").generation;
        let last = last.map(|l| l.index);
        self.inner
            .flusher
            .submit(
                files,
                Box::new(move |r| {
                    if let (Ok(()), Some(last)) = (&r, last) {
                        inner.note_synced(generation, last);
                    }
                    callback.io_completed(r.map_err(|e| io::Error::new(e.kind(), e.to_string())))
                }),
            )
            .await
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        // The synced mark never points past the durable tail: lower it durably first.
        let keep = last_log_id.map(|l| l.index);
        let lowered = {
            let mut mark = self.inner.synced.lock().expect("synced lock");
            mark.generation += 1;
            if mark.saved > keep {
                mark.saved = keep;
                self.inner.meta.put(KEY_SYNCED, &keep).map_err(io_err)?;
                true
            } else {
                false
            }
        };
        if lowered {
            self.inner.meta.flush().await.map_err(io_err)?;
        }
        let mut log = self.lock();
        let from = last_log_id.map_or(0, |l| l.index + 1);
        log.tail.truncate_after(last_log_id.map(|l| l.index));
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
        log.tail.purge_through(log_id.index);
        log.last_purged = Some(log_id);
        if log.last_log_id < Some(log_id) {
            log.last_log_id = Some(log_id);
        }
        crate::events::log_purged();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{log_id, Request};
    use millrace_storage::{NodeMeta, SyncMethod};

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: openraft::EntryPayload::Normal(Request(vec![index as u8; bytes].into())),
        }
    }

    fn indices(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn the_tail_is_bounded_and_keeps_few_applied_entries() {
        let mut t = Tail::default();
        for i in 1..=TAIL_ENTRIES_MAX as u64 + 10 {
            t.push(entry(i, 10));
        }
        assert_eq!(t.entries.len(), TAIL_ENTRIES_MAX);
        assert_eq!(t.first_index(), Some(11));
        // Apply read everything: a few applied entries stay.
        t.applied_through(TAIL_ENTRIES_MAX as u64 + 11);
        assert_eq!(t.entries.len(), TAIL_APPLIED_ENTRIES_MAX);
        assert_eq!(t.bytes, 10 * TAIL_APPLIED_ENTRIES_MAX);
        // Large entries: the byte bounds hold too.
        let mut t = Tail::default();
        for i in 1..=6 {
            t.push(entry(i, TAIL_BYTES_MAX / 4));
        }
        assert!(t.bytes <= TAIL_BYTES_MAX);
        assert_eq!(t.first_index(), Some(3));
        t.applied_through(5);
        assert_eq!(
            t.first_index(),
            Some(5),
            "applied entries over the byte bound leave"
        );
        assert_eq!((t.applied, t.entries.len()), (0, 2));
    }

    #[test]
    fn the_tail_follows_truncation_purge_and_gaps() {
        let mut t = Tail::default();
        for i in 1..=5 {
            t.push(entry(i, 10));
        }
        t.applied_through(3);
        t.truncate_after(Some(2));
        assert_eq!(indices(&t.read(1, 10, usize::MAX, true)), vec![1, 2]);
        assert_eq!((t.applied, t.applied_bytes, t.bytes), (2, 20, 20));
        t.purge_through(1);
        assert_eq!(indices(&t.read(2, 10, usize::MAX, true)), vec![2]);
        assert!(t.read(1, 10, usize::MAX, true).is_empty(), "1 is not held");
        // An entry that does not follow the last starts the tail afresh.
        t.push(entry(9, 10));
        assert_eq!(indices(&t.read(9, 10, usize::MAX, true)), vec![9]);
        assert_eq!(t.bytes, 10);
        // The byte bound of a read, and its first entry whatever its size.
        t.push(entry(10, 10));
        assert_eq!(indices(&t.read(9, 11, 15, true)), vec![9]);
        assert_eq!(indices(&t.read(9, 11, 5, true)), vec![9]);
        assert!(t.read(9, 11, 5, false).is_empty());
    }

    fn open_store(dir: &Path, meta: &NodeMeta, flusher: &FlushCoordinator) -> GroupLogStore {
        GroupLogStore::open(
            &dir.join("log"),
            SegmentLogConfig::default(),
            meta.group(1).unwrap(),
            flusher.clone(),
        )
        .unwrap()
    }

    async fn append_synced(log: &mut GroupLogStore, range: std::ops::RangeInclusive<u64>) {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        let entries: Vec<Entry> = range.map(|i| entry(i, 100)).collect();
        log.append(entries, IOFlushed::<TypeConfig>::signal(tx))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
    }

    /// The (single) segment in `dir/log`, and where each of its frames begins, then the end
    /// of the last one.
    fn frame_offsets(dir: &Path) -> (PathBuf, Vec<usize>) {
        let seg = std::fs::read_dir(dir.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let offsets =
            millrace_storage::segment::frame::frame_offsets(&std::fs::read(&seg).unwrap());
        (seg, offsets)
    }

    use std::path::PathBuf;

    /// A log that opens shorter than what its flushes had synced lost entries this replica may
    /// have acknowledged (a tail cut that recovery cannot tell from a torn write): the store
    /// asks for a repair up to the synced mark, keeps asking across restarts, and ends it only
    /// once the entries are back and synced.
    #[tokio::test]
    async fn a_log_cut_back_past_what_was_synced_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
        let flusher = FlushCoordinator::start(SyncMethod::Auto).unwrap();
        let mut log = open_store(dir.path(), &meta, &flusher);
        assert_eq!(log.repair(), None);
        append_synced(&mut log, 1..=20).await;
        assert_eq!(log.inner.synced.lock().unwrap().saved, Some(20));
        drop(log);
        meta.flush().await.unwrap();
        // Cut the segment in the middle of entry 18's frame: a torn write, to recovery.
        let (seg, offsets) = frame_offsets(dir.path());
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len((offsets[17] + 7) as u64).unwrap();
        let log = open_store(dir.path(), &meta, &flusher);
        let repair = log.repair().expect("a repair");
        assert_eq!(repair.until, 20);
        assert!(repair.reason.contains("synced"), "{}", repair.reason);
        assert_eq!(log.bounds(), (Some(1), Some(17)));
        assert!(
            !log.finish_repair().await.unwrap(),
            "the log is still short"
        );
        // Restarted before the leader filled it in: still under repair.
        drop(log);
        let mut log = open_store(dir.path(), &meta, &flusher);
        assert_eq!(log.repair().map(|r| r.until), Some(20));
        append_synced(&mut log, 18..=19).await;
        assert!(!log.finish_repair().await.unwrap());
        append_synced(&mut log, 20..=21).await;
        assert!(log.finish_repair().await.unwrap());
        assert_eq!(log.repair(), None);
        drop(log);
        let log = open_store(dir.path(), &meta, &flusher);
        assert_eq!(log.repair(), None, "the end of the repair is durable");
    }

    /// Damage a crash cannot explain (a flipped bit before valid frames): the log is cut back
    /// to the entries before it and repaired up to the last entry still seen after it.
    #[tokio::test]
    async fn a_log_damaged_mid_way_is_cut_back_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
        let flusher = FlushCoordinator::start(SyncMethod::Auto).unwrap();
        let mut log = open_store(dir.path(), &meta, &flusher);
        append_synced(&mut log, 1..=30).await;
        drop(log);
        // Lose the synced mark, so that only the damage itself tells how far the log went.
        meta.group(1)
            .unwrap()
            .put(KEY_SYNCED, &None::<u64>)
            .unwrap();
        meta.flush().await.unwrap();
        let (seg, offsets) = frame_offsets(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[offsets[9] + 30] ^= 0x10; // inside entry 10's payload
        std::fs::write(&seg, &bytes).unwrap();
        let log = open_store(dir.path(), &meta, &flusher);
        assert_eq!(
            log.bounds(),
            (Some(1), Some(9)),
            "cut back before the damage"
        );
        let repair = log.repair().expect("a repair");
        assert_eq!(repair.until, 30, "the last entry seen past the damage");
        assert!(repair.reason.contains("checksum"), "{}", repair.reason);
    }

    /// A replica under repair votes only for a candidate at least as up to date as its log
    /// was before the damage (Raft's check against what it lost): a newer last term, or the
    /// same term and at least as long; with no term known, for no one.
    #[test]
    fn a_replica_under_repair_votes_only_for_logs_as_long_as_it_had() {
        let repair = Repair {
            until: 100,
            term: Some(4),
            reason: String::new(),
        };
        let may = |term, index| repair.may_vote_for(Some(&log_id(term, 2, index)));
        assert!(may(5, 1), "a newer last term");
        assert!(
            may(4, 100) && may(4, 150),
            "the same term, as long or longer"
        );
        assert!(
            !may(4, 99),
            "the same term, shorter: it may lack what was lost"
        );
        assert!(!may(3, 500), "an older last term");
        assert!(!repair.may_vote_for(None), "an empty log");
        let unknown = Repair {
            term: None,
            ..repair
        };
        assert!(!unknown.may_vote_for(Some(&log_id(9, 2, 900))));
    }

    /// A truncation (Raft replacing a conflicting suffix) lowers the synced mark durably before
    /// it cuts the log: a restart afterwards finds nothing to repair.
    #[tokio::test]
    async fn a_truncated_log_is_not_taken_for_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
        let flusher = FlushCoordinator::start(SyncMethod::Auto).unwrap();
        let mut log = open_store(dir.path(), &meta, &flusher);
        append_synced(&mut log, 1..=10).await;
        log.truncate_after(Some(log_id(1, 1, 5))).await.unwrap();
        assert_eq!(log.inner.synced.lock().unwrap().saved, Some(5));
        drop(log);
        let log = open_store(dir.path(), &meta, &flusher);
        assert_eq!(log.bounds(), (Some(1), Some(5)));
        assert_eq!(log.repair(), None);
    }

    #[tokio::test]
    async fn reads_span_the_segment_files_and_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
        let flusher = FlushCoordinator::start(SyncMethod::Auto).unwrap();
        let mut log = GroupLogStore::open(
            &dir.path().join("log"),
            SegmentLogConfig {
                segment_bytes_max: 64 * 1024,
            },
            meta.group(1).unwrap(),
            flusher,
        )
        .unwrap();
        let n = TAIL_ENTRIES_MAX as u64 + 50;
        let written: Vec<Entry> = (1..=n).map(|i| entry(i, 100 + i as usize)).collect();
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        let callback = IOFlushed::<TypeConfig>::signal(tx);
        log.append(written.clone(), callback).await.unwrap();
        rx.await.unwrap().unwrap();
        assert_eq!(
            log.lock().tail.first_index(),
            Some(51),
            "the oldest left the tail"
        );
        let all = log.try_get_log_entries(1..=n).await.unwrap();
        assert_eq!(all, written, "disk then tail, in order");
        let some = log.try_get_log_entries(40..60).await.unwrap();
        assert_eq!(some, written[39..59].to_vec());
        // A byte-bounded read across the split stops at the bound.
        for bytes_max in [1000, 2000] {
            let bounded = log.read_entries(45, n + 1, bytes_max).unwrap();
            let got = indices(&bounded);
            assert_eq!(got, (45..45 + got.len() as u64).collect::<Vec<_>>());
            let payload: usize = bounded.iter().map(payload_bytes).sum();
            assert!(
                payload <= bytes_max && payload + 200 > bytes_max,
                "{payload} of {bytes_max}"
            );
        }
        // Apply reads: most of the tail goes, and reads still see everything.
        let applied: Vec<Entry> =
            futures::StreamExt::collect::<Vec<_>>(log.entries_stream(1..=n).await)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        assert_eq!(applied, written);
        assert_eq!(log.lock().tail.entries.len(), TAIL_APPLIED_ENTRIES_MAX);
        assert_eq!(log.try_get_log_entries(1..=n).await.unwrap(), written);
    }
}
