//! Read-ahead for consumers reading a shard page after page: once a leader has served a page
//! that its bounds cut short (more is readable), it reads the next page on a blocking thread
//! while the consumer receives and decodes this one, so the consumer's next GetRecords finds it
//! ready. A consumer reads one page at a time, so without it the leader's disk reads, the
//! transfer and the consumer's decoding take turns (a profile of `bench consume` had the
//! machine 47 % idle).
//!
//! What is read ahead is what a read at that time would have returned: committed records from
//! the segment log, up to the applied index then. It is served only to the read it was made for
//! (same start and bounds) and only while still what a fresh read returns: a page cut short by
//! the applied index is dropped once more has been applied. A few pages per shard at most
//! ([`READ_AHEAD_PAGES_PER_SHARD`], for consumers reading it side by side), pages of all shards
//! within [`READ_AHEAD_BYTES_MAX`], and a page nobody asks for within [`READ_AHEAD_TTL`] is
//! dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace_raft::log_store::GroupLogStore;

use super::machine::ShardShared;
use super::read::{read_records, ReadBounds, ReadOutcome};

/// Bytes all shards' read-ahead pages of a node may hold at most (each page reserves its
/// bounds' `max_bytes` while it is held).
pub const READ_AHEAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A page read ahead and not asked for within this long is dropped.
pub const READ_AHEAD_TTL: Duration = Duration::from_secs(10);
/// Pages read ahead per shard at most (the oldest makes room).
pub const READ_AHEAD_PAGES_PER_SHARD: usize = 4;

static RESERVED_BYTES: AtomicUsize = AtomicUsize::new(0);
static PAGES_SERVED: AtomicU64 = AtomicU64::new(0);

/// Pages this process served from read-ahead.
pub fn pages_served() -> u64 {
    PAGES_SERVED.load(Ordering::Relaxed)
}

/// One shard's pages read ahead, oldest first.
#[derive(Default)]
pub struct ReadAhead {
    pages: Arc<Mutex<Vec<Ahead>>>,
    next_id: AtomicU64,
}

struct Ahead {
    id: u64,
    bounds: ReadBounds,
    /// The readable (applied) index the page was read up to.
    readable: u64,
    read: tokio::task::JoinHandle<Result<ReadOutcome, String>>,
    _budget: Reservation,
}

/// Bytes held against [`READ_AHEAD_BYTES_MAX`]; given back when dropped.
struct Reservation(usize);

impl Reservation {
    fn take(bytes: usize) -> Option<Reservation> {
        RESERVED_BYTES
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= READ_AHEAD_BYTES_MAX).then_some(held + bytes)
            })
            .ok()
            .map(|_| Reservation(bytes))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED_BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}

fn same_start(a: &ReadBounds, b: &ReadBounds) -> bool {
    a.from_index == b.from_index
        && a.from_position == b.from_position
        && a.max_records == b.max_records
        && a.max_bytes == b.max_bytes
        && a.at_timestamp_ms.is_none()
        && b.at_timestamp_ms.is_none()
}

impl ReadAhead {
    /// The page read ahead for `bounds` (waiting for it if it is still being read), when it
    /// is what a read now, up to `readable`, would return. Any other page is dropped.
    pub async fn take(&self, bounds: &ReadBounds, readable: u64) -> Option<ReadOutcome> {
        let ahead = {
            let mut pages = self.pages.lock().expect("read-ahead lock");
            let at = pages.iter().position(|a| same_start(&a.bounds, bounds))?;
            pages.remove(at)
        };
        if readable < ahead.readable {
            return None;
        }
        let outcome = ahead.read.await.ok()?.ok()?;
        // Cut short by what was applied then, while more is applied now: read again.
        let reached_end = outcome.next_index > ahead.readable;
        if reached_end && readable > ahead.readable {
            return None;
        }
        PAGES_SERVED.fetch_add(1, Ordering::Relaxed);
        Some(outcome)
    }

    /// After serving `served` (read with `bounds` up to `readable`), starts reading the page
    /// after it if its bounds cut it short. Does nothing when the node's read-ahead budget is
    /// spent.
    pub fn start_after(
        &self,
        served: &ReadOutcome,
        bounds: &ReadBounds,
        readable: u64,
        log: &GroupLogStore,
        shared: &Arc<ShardShared>,
    ) {
        if served.next_index > readable || bounds.at_timestamp_ms.is_some() {
            return;
        }
        let next = ReadBounds {
            from_index: served.next_index,
            from_position: served.next_position,
            ..*bounds
        };
        let Some(budget) = Reservation::take(next.max_bytes) else {
            return;
        };
        let (log, reader) = (log.clone(), shared.clone());
        let read = tokio::task::spawn_blocking(move || {
            read_records(&log, readable, next, &|index| reader.duplicate_spans(index))
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut pages = self.pages.lock().expect("read-ahead lock");
            pages.retain(|a| !same_start(&a.bounds, &next));
            if pages.len() >= READ_AHEAD_PAGES_PER_SHARD {
                pages.remove(0);
            }
            pages.push(Ahead {
                id,
                bounds: next,
                readable,
                read,
                _budget: budget,
            });
        }
        let pages = Arc::downgrade(&self.pages);
        tokio::spawn(async move {
            tokio::time::sleep(READ_AHEAD_TTL).await;
            if let Some(pages) = pages.upgrade() {
                pages
                    .lock()
                    .expect("read-ahead lock")
                    .retain(|a| a.id != id);
            }
        });
    }
}
