//! The flush coordinator: group commit across every Raft group of a node.
//!
//! Log stores write frames with `pwrite` and hand the touched files plus a completion to the
//! coordinator. Its thread takes every request queued so far, `fdatasync`s each distinct file
//! once (in parallel when there are several), then runs the completions. While one round syncs,
//! the next round's requests queue up, so one `fdatasync` covers many appends under load.
//! A completion runs only after the data it covers is durable, or with the error that stopped it.
//!
//! A round that covers several files of one filesystem syncs that filesystem once (`syncfs`)
//! instead of each file ([`SyncMethod::Auto`], the default): a node leading or following many busy
//! shards then pays one journal commit and one device flush per round, not one per shard. `syncfs`
//! writes back and waits for every dirty page of the filesystem and reports writeback errors of any
//! file in it (Linux ≥ 5.8), so it is at least as strong as an `fdatasync` of each file. That
//! holds for disk filesystems only: on FUSE (Linux sends `FUSE_SYNCFS` to virtiofs alone), NFS
//! and the like `syncfs` may make nothing durable, so files elsewhere than on ext4, XFS, btrfs,
//! F2FS or tmpfs are always synced one by one ([`syncfs_covers`]).

use std::collections::HashMap;
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

/// A round with at least this many files on one filesystem syncs the filesystem instead.
/// Measured on the project's VM (ext4 on virtio-blk, `docs/benchmarks.md`): with one file
/// `fdatasync` and `syncfs` cost the same; from two on, `syncfs` costs less CPU and time.
pub const SYNCFS_FILES_MIN: usize = 2;

/// How a flush round makes its files durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// `syncfs` once per filesystem when a round covers [`SYNCFS_FILES_MIN`] or more of its
    /// files, `fdatasync` otherwise.
    #[default]
    Auto,
    /// Always `fdatasync` each file (for data dirs on a filesystem shared with heavy writers,
    /// where a filesystem-wide sync would wait for their dirty pages too).
    PerFile,
}

impl std::str::FromStr for SyncMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SyncMethod::Auto),
            "per-file" => Ok(SyncMethod::PerFile),
            other => Err(format!(
                "unknown flush sync method {other:?}: expected \"auto\" or \"per-file\""
            )),
        }
    }
}

impl std::fmt::Display for SyncMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMethod::Auto => "auto",
            SyncMethod::PerFile => "per-file",
        })
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub rounds: AtomicU64,
    pub requests: AtomicU64,
    /// Sync calls issued: one per file synced alone, one per filesystem synced whole.
    pub fsyncs: AtomicU64,
    /// Of `fsyncs`, the `syncfs` calls (each covering several files).
    pub filesystem_syncs: AtomicU64,
    /// Time spent syncing, over all rounds (microseconds).
    pub sync_micros: AtomicU64,
    /// How long each round's syncs took.
    pub round_seconds: crate::histogram::LatencyHistogram,
}

/// Handle to the node's flush thread. Cloning shares the thread.
#[derive(Clone)]
pub struct FlushCoordinator {
    tx: mpsc::Sender<FlushRequest>,
    stats: Arc<FlushStats>,
}

impl FlushCoordinator {
    /// Starts the flush thread. It stops when every handle is dropped.
    pub fn start(method: SyncMethod) -> StorageResult<FlushCoordinator> {
        let method = match method {
            SyncMethod::Auto if !syncfs_reports_errors() => {
                tracing::warn!(
                    "this kernel's syncfs does not report writeback errors (before Linux 5.8): \
                     syncing each segment file instead"
                );
                SyncMethod::PerFile
            }
            m => m,
        };
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_REQUESTS_MAX);
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("millrace-flush".into())
            .spawn(move || run(rx, method, thread_stats))
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

fn run(mut rx: mpsc::Receiver<FlushRequest>, method: SyncMethod, stats: Arc<FlushStats>) {
    let mut helpers = SyncHelpers::default();
    let mut syncfs_trusted = HashMap::new();
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
        let started = std::time::Instant::now();
        let plan = SyncPlan::new(files, method, &mut syncfs_trusted);
        let result = if crate::calibration::is(crate::calibration::InjectedBug::SkipFsync) {
            Ok(())
        } else {
            plan.run(&mut helpers).map_err(Arc::new)
        };
        let took = started.elapsed();
        stats
            .sync_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        stats.round_seconds.observe(took);
        if let Err(e) = &result {
            tracing::error!(error = %e, "sync failed; covered appends will be reported failed");
        }
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.fsyncs.fetch_add(
            (plan.whole.len() + plan.each.len()) as u64,
            Ordering::Relaxed,
        );
        stats
            .filesystem_syncs
            .fetch_add(plan.whole.len() as u64, Ordering::Relaxed);
        for r in batch {
            (r.done)(result.clone());
        }
    }
}

/// `syncfs` reports writeback errors from Linux 5.8 on; before, it returned success even when
/// data could not be written, so it could not stand in for `fdatasync`.
fn syncfs_reports_errors() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    kernel_at_least(&release, (5, 8))
}

fn kernel_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= wanted,
        _ => false,
    }
}

/// What one round syncs: whole filesystems (through one of their files) and single files.
struct SyncPlan {
    whole: Vec<Arc<File>>,
    each: Vec<Arc<File>>,
}

/// True when `syncfs` on the filesystem of `file` writes back and waits for every dirty page of
/// it: the disk filesystems. FUSE passes `syncfs` to virtiofs only, and network filesystems
/// answer it without asking their server, so there each file is synced on its own.
pub fn syncfs_covers(file: &File) -> bool {
    const TRUSTED: [u64; 5] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // XFS
        0x9123_683E, // btrfs
        0xF2F5_2010, // F2FS
        0x0102_1994, // tmpfs (nothing is durable there; syncfs is as good as fdatasync)
    ];
    rustix::fs::fstatfs(file).is_ok_and(|st| TRUSTED.contains(&(st.f_type as u64)))
}

impl SyncPlan {
    /// `trusted` remembers, per device, whether [`syncfs_covers`] its filesystem.
    fn new(
        files: Vec<Arc<File>>,
        method: SyncMethod,
        trusted: &mut HashMap<u64, bool>,
    ) -> SyncPlan {
        if method == SyncMethod::PerFile || files.len() < SYNCFS_FILES_MIN {
            return SyncPlan {
                whole: Vec::new(),
                each: files,
            };
        }
        use std::os::unix::fs::MetadataExt;
        // Files grouped by filesystem; a file whose filesystem cannot be told is synced alone.
        let mut by_dev: Vec<(u64, Vec<Arc<File>>)> = Vec::new();
        let mut each = Vec::new();
        for f in files {
            match f.metadata() {
                Ok(m) if !*trusted.entry(m.dev()).or_insert_with(|| syncfs_covers(&f)) => {
                    each.push(f)
                }
                Ok(m) => match by_dev.iter_mut().find(|(d, _)| *d == m.dev()) {
                    Some((_, group)) => group.push(f),
                    None => by_dev.push((m.dev(), vec![f])),
                },
                Err(_) => each.push(f),
            }
        }
        let mut whole = Vec::new();
        for (_, mut group) in by_dev {
            if group.len() >= SYNCFS_FILES_MIN {
                whole.push(group.swap_remove(0));
            } else {
                each.append(&mut group);
            }
        }
        SyncPlan { whole, each }
    }

    fn run(&self, helpers: &mut SyncHelpers) -> std::io::Result<()> {
        let mut result = Ok(());
        for f in &self.whole {
            if let Err(e) = rustix::fs::syncfs(&**f) {
                result = Err(std::io::Error::from(e));
            }
        }
        let each = helpers.sync_files(&self.each);
        result.and(each)
    }
}

type SyncJob = (Arc<File>, std::sync::mpsc::Sender<std::io::Result<()>>);

/// Threads that sync files beside the flush thread when a round covers several, started the
/// first time they are needed and kept (never one spawned per round).
#[derive(Default)]
struct SyncHelpers {
    workers: Vec<std::sync::mpsc::Sender<SyncJob>>,
}

impl SyncHelpers {
    /// Syncs every file, up to [`FLUSH_PARALLEL_FILES_MAX`] at a time; the first error wins.
    fn sync_files(&mut self, files: &[Arc<File>]) -> std::io::Result<()> {
        let Some((own, rest)) = files.split_first() else {
            return Ok(());
        };
        let wanted = rest.len().min(FLUSH_PARALLEL_FILES_MAX - 1);
        while self.workers.len() < wanted {
            if !self.spawn_worker() {
                break;
            }
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut handed = 0usize;
        let mut inline: Vec<&Arc<File>> = vec![own];
        for (i, f) in rest.iter().enumerate() {
            let sent = match self.workers.get(i % self.workers.len().max(1)) {
                Some(w) => w.send((f.clone(), done_tx.clone())).is_ok(),
                None => false,
            };
            if sent {
                handed += 1;
            } else {
                inline.push(f);
            }
        }
        drop(done_tx);
        let mut result = inline.iter().try_for_each(|f| f.sync_data());
        for _ in 0..handed {
            let r = done_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("a sync helper thread stopped")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn spawn_worker(&mut self) -> bool {
        let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
        let spawned = std::thread::Builder::new()
            .name("millrace-sync".into())
            .spawn(move || {
                for (file, done) in rx {
                    let _ = done.send(file.sync_data());
                }
            });
        match spawned {
            Ok(_) => {
                self.workers.push(tx);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "no sync helper thread; syncing in turn");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn completions_run_after_sync_and_batch_up() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = FlushCoordinator::start(SyncMethod::Auto).unwrap();
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

    /// `count` requests, request `i` covering file `i % files.len()` (after writing to it),
    /// all queued before the flush thread starts, as if they arrived during a sync. Returns how
    /// many completed successfully and the thread's counters.
    fn run_queued(files: &[Arc<File>], count: usize, method: SyncMethod) -> (usize, FlushStats) {
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_REQUESTS_MAX);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for i in 0..count {
            let file = files[i % files.len()].clone();
            (&*file).write_all(b"frame").unwrap();
            let done_tx = done_tx.clone();
            let request = FlushRequest {
                files: vec![file],
                done: Box::new(move |r| {
                    let _ = done_tx.send(r.is_ok());
                }),
            };
            assert!(tx.try_send(request).is_ok());
        }
        drop((tx, done_tx));
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        std::thread::spawn(move || run(rx, method, thread_stats))
            .join()
            .unwrap();
        let ok = done_rx.iter().filter(|ok| *ok).count();
        let stats = Arc::try_unwrap(stats).expect("the flush thread has ended");
        (ok, stats)
    }

    fn create_files(dir: &std::path::Path, n: usize) -> Vec<Arc<File>> {
        (0..n)
            .map(|i| Arc::new(File::create(dir.join(format!("f{i}"))).unwrap()))
            .collect()
    }

    /// Everything queued while a round syncs goes into the next round: one sync per file for
    /// all of it.
    #[test]
    fn requests_queued_meanwhile_share_one_round_and_one_sync_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = create_files(dir.path(), 3);
        let (ok, stats) = run_queued(&files, 300, SyncMethod::PerFile);
        assert_eq!(ok, 300);
        assert_eq!(stats.rounds.load(Ordering::Relaxed), 1);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 300);
        assert_eq!(
            stats.fsyncs.load(Ordering::Relaxed),
            3,
            "one sync per distinct file"
        );
        assert_eq!(stats.filesystem_syncs.load(Ordering::Relaxed), 0);
    }

    /// With `Auto`, a round over several files of one filesystem is one `syncfs`, and a round
    /// over one file stays an `fdatasync`.
    #[test]
    fn auto_syncs_a_filesystem_once_for_many_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = create_files(dir.path(), 4);
        let (ok, stats) = run_queued(&files, 40, SyncMethod::Auto);
        assert_eq!(ok, 40);
        assert_eq!(stats.rounds.load(Ordering::Relaxed), 1);
        assert_eq!(stats.fsyncs.load(Ordering::Relaxed), 1, "one sync call");
        assert_eq!(stats.filesystem_syncs.load(Ordering::Relaxed), 1);

        let single = SyncPlan::new(
            vec![files[0].clone()],
            SyncMethod::Auto,
            &mut HashMap::new(),
        );
        assert_eq!((single.whole.len(), single.each.len()), (0, 1));
        let per_file = SyncPlan::new(files.clone(), SyncMethod::PerFile, &mut HashMap::new());
        assert_eq!((per_file.whole.len(), per_file.each.len()), (0, 4));
    }

    #[test]
    fn files_on_a_filesystem_syncfs_may_not_cover_are_synced_one_by_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let files = create_files(dir.path(), 4);
        let dev = files[0].metadata().unwrap().dev();
        // As the flush thread remembers a FUSE or network filesystem.
        let mut trusted = HashMap::from([(dev, false)]);
        let plan = SyncPlan::new(files.clone(), SyncMethod::Auto, &mut trusted);
        assert_eq!((plan.whole.len(), plan.each.len()), (0, 4));
        // The test's own disk is one syncfs covers (ext4 or tmpfs here).
        assert!(syncfs_covers(&files[0]));
        let mut trusted = HashMap::new();
        let plan = SyncPlan::new(files, SyncMethod::Auto, &mut trusted);
        assert_eq!((plan.whole.len(), plan.each.len()), (1, 0));
        assert_eq!(trusted, HashMap::from([(dev, true)]));
    }

    #[test]
    fn syncfs_is_trusted_from_linux_5_8_only() {
        assert!(kernel_at_least("6.18.44-fc-v1147\n", (5, 8)));
        assert!(kernel_at_least("5.8.0", (5, 8)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 8)));
        assert!(!kernel_at_least("4.19.0", (5, 8)));
        assert!(!kernel_at_least("", (5, 8)), "unknown: not trusted");
    }

    #[test]
    fn sync_method_parses_and_names_the_choices_on_error() {
        assert_eq!("auto".parse::<SyncMethod>(), Ok(SyncMethod::Auto));
        assert_eq!("per-file".parse::<SyncMethod>(), Ok(SyncMethod::PerFile));
        let err = "fsync".parse::<SyncMethod>().unwrap_err();
        assert!(err.contains("auto") && err.contains("per-file"), "{err}");
    }

    #[test]
    fn helpers_sync_many_files_and_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = create_files(dir.path(), 20);
        let mut helpers = SyncHelpers::default();
        helpers.sync_files(&files).unwrap();
        assert_eq!(helpers.workers.len(), FLUSH_PARALLEL_FILES_MAX - 1);
        helpers.sync_files(&files[..2]).unwrap();
        assert_eq!(
            helpers.workers.len(),
            FLUSH_PARALLEL_FILES_MAX - 1,
            "none spawned again"
        );
        helpers.sync_files(&[]).unwrap();
    }
}
