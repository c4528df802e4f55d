//! The flush coordinator: group commit across every Raft group of a node.
//!
//! Log stores write frames with `pwrite` and hand the touched files plus a completion to the
//! coordinator. Its thread takes every request queued so far, `fdatasync`s each distinct file
//! once (in parallel when there are several), then runs the completions. While one round syncs,
//! the next round's requests queue up, so one `fdatasync` covers many appends under load.
//! A completion runs only after the data it covers is durable, or with the error that stopped it.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::{StorageError, StorageResult};

/// Called once the covered data is durable, or with the sync error (the node must then stop).
pub type FlushDone = Box<dyn FnOnce(Result<(), Arc<std::io::Error>>) + Send>;

struct FlushRequest {
    files: Vec<Arc<File>>,
    done: FlushDone,
}

/// Requests waiting for the coordinator; senders wait when it is full (backpressure).
const FLUSH_QUEUE_REQUESTS_MAX: usize = 16 * 1024;
/// One round takes at most this many requests, so completions are not delayed without bound.
const FLUSH_ROUND_REQUESTS_MAX: usize = 4 * 1024;
/// Files synced concurrently within one round.
const FLUSH_PARALLEL_FILES_MAX: usize = 8;

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub rounds: AtomicU64,
    pub requests: AtomicU64,
    pub fsyncs: AtomicU64,
}

/// Handle to the node's flush thread. Cloning shares the thread.
#[derive(Clone)]
pub struct FlushCoordinator {
    tx: mpsc::Sender<FlushRequest>,
    stats: Arc<FlushStats>,
}

impl FlushCoordinator {
    /// Starts the flush thread. It stops when every handle is dropped.
    pub fn start() -> StorageResult<FlushCoordinator> {
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_REQUESTS_MAX);
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("millrace-flush".into())
            .spawn(move || run(rx, thread_stats))
            .map_err(|e| StorageError::io("spawn", "flush thread", e))?;
        Ok(FlushCoordinator { tx, stats })
    }

    /// Queues `files` for syncing; `done` runs after they are durable.
    pub async fn submit(&self, files: Vec<Arc<File>>, done: FlushDone) -> StorageResult<()> {
        self.tx
            .send(FlushRequest { files, done })
            .await
            .map_err(|_| StorageError::FlusherStopped)
    }

    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

fn run(mut rx: mpsc::Receiver<FlushRequest>, stats: Arc<FlushStats>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < FLUSH_ROUND_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for f in batch.iter().flat_map(|r| r.files.iter()) {
            if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                files.push(f.clone());
            }
        }
        let result = sync_files(&files).map_err(Arc::new);
        if let Err(e) = &result {
            tracing::error!(error = %e, "fdatasync failed; covered appends will be reported failed");
        }
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .fsyncs
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        for r in batch {
            (r.done)(result.clone());
        }
    }
}

fn sync_files(files: &[Arc<File>]) -> std::io::Result<()> {
    if files.len() <= 1 {
        return files.iter().try_for_each(|f| f.sync_data());
    }
    for chunk in files.chunks(FLUSH_PARALLEL_FILES_MAX) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|f| s.spawn(move || f.sync_data()))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("sync thread panicked")))
            })
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn completions_run_after_sync_and_batch_up() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = FlushCoordinator::start().unwrap();
        let mut waiters = Vec::new();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        for i in 0..200u32 {
            (&*file).write_all(&i.to_le_bytes()).unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel();
            coordinator
                .submit(
                    vec![file.clone()],
                    Box::new(move |r| {
                        let _ = tx.send(r.is_ok());
                    }),
                )
                .await
                .unwrap();
            waiters.push(rx);
        }
        for w in waiters {
            assert!(w.await.unwrap());
        }
        let stats = coordinator.stats();
        assert_eq!(stats.requests.load(Ordering::Relaxed), 200);
        assert!(stats.rounds.load(Ordering::Relaxed) <= 200);
    }
}
