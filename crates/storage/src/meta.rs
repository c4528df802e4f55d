//! sled-backed node metadata.
//!
//! One sled database per node (`DATA_DIR/meta`). Trees and keys (format version 2):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `node` | `format_version` | u32 LE |
//! | `node` | any node-level key (e.g. `node_id`) | JSON |
//! | `groups` | `<group id, 20 digits>/vote`, `…/committed`, `…/purged`, `…/snapshot_meta` | JSON |
//! | `groups` | `<group id, 20 digits>/snapshot_data` | raw bytes (the state machine's snapshot) |
//!
//! Format 1 kept each group in a tree of its own (`group/<id>`, the same keys without the
//! prefix). sled rewrites its list of trees whenever a tree is created, so with thousands of
//! groups per node that list (hundreds of KiB) was rewritten for every new group: 885 MiB of sled
//! files per node for 10,000 shards. Format 1 databases are migrated when opened.
//!
//! sled makes writes durable only at `flush`; callers flush before acknowledging anything that
//! depends on a write (votes) and treat everything else as a hint that may roll back to an
//! earlier value after a crash.
//!
//! sled's own `flush` is not enough on Linux: it ends its writes with `sync_file_range`, which
//! neither syncs the file's size nor flushes the disk's write cache (and does nothing on a FUSE
//! filesystem), so a power cut can take back a "flushed" vote. Every flush here is followed by
//! an `fsync` of sled's files ([`SledFlusher::flush_durable`]); sled's background flush every
//! 500 ms `fsync`s its log file `db` only, never the large-value files in `blobs/` (values over
//! ~128 KiB), so only writes made durable by a flush here are sure to have theirs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{StorageError, StorageResult};
use crate::segment::sync_dir;

pub const META_FORMAT_VERSION: u32 = 2;
const NODE_TREE: &str = "node";
const GROUPS_TREE: &str = "groups";
/// Format 1: one tree per group, named with this prefix.
const V1_GROUP_TREE_PREFIX: &str = "group/";
const FORMAT_KEY: &str = "format_version";
/// In the `node` tree: the generation of the last sealed flush (u64 LE; see [`Seal`]).
const GENERATION_KEY: &str = "flush_generation";

/// The node's metadata database.
#[derive(Clone)]
pub struct NodeMeta {
    db: sled::Db,
    node: sled::Tree,
    groups: sled::Tree,
    flusher: Arc<SledFlusher>,
}

fn meta_err(verb: &'static str) -> impl Fn(sled::Error) -> StorageError {
    move |source| StorageError::Meta { verb, source }
}

/// Group commit for sled flushes: one flush runs at a time, and every caller whose writes came
/// before a flush started is answered by that flush.
///
/// Without it, many concurrent flushes (one per vote save, e.g. when hundreds of new shard
/// groups elect at once) occupy sled's I/O threads together, and sled's batch writes spin on
/// its concurrency control while they run: a node was seen burning two cores for minutes.
struct SledFlusher {
    db: sled::Db,
    /// Flush requests so far (a request's ticket is the count after it).
    requested: AtomicU64,
    /// Every request with a ticket up to this is durable.
    durable: AtomicU64,
    running: tokio::sync::Mutex<()>,
    node: sled::Tree,
    /// The generation of the last flush (see [`Seal`]).
    generation: AtomicU64,
    seal_path: PathBuf,
    /// One seal write at a time (flushes from blocking callers bypass `running`).
    seal: std::sync::Mutex<()>,
    /// sled's log file (`db`), kept open to `fsync` it after each flush.
    db_file: std::fs::File,
    /// sled's directory of large values (`blobs`), written without any sync by sled.
    blobs_dir: PathBuf,
    /// Blob files already synced, with their length when synced: sled writes a blob in place
    /// (no rename) while other writes go on, so a listing may catch one half written; a blob
    /// whose length changed since is synced again.
    synced_blobs: std::sync::Mutex<std::collections::HashMap<std::ffi::OsString, u64>>,
}

impl SledFlusher {
    async fn flush(self: &Arc<Self>) -> StorageResult<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = self.running.lock().await;
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(()); // a flush that started after our writes has finished
        }
        // Everything requested so far was written before this flush starts.
        let covers = self.requested.load(Ordering::SeqCst);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_sealed())
            .await
            .map_err(|e| StorageError::Meta {
                verb: "flush",
                source: sled::Error::Io(std::io::Error::other(e.to_string())),
            })??;
        self.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Flushes sled and then records, in the seal file, the generation the flush made durable
    /// (see [`Seal`]). Blocking.
    fn flush_sealed(&self) -> StorageResult<()> {
        let _sealing = self.seal.lock().expect("seal lock");
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.node
            .insert(GENERATION_KEY, &generation.to_le_bytes())
            .map_err(meta_err("write"))?;
        self.flush_durable()?;
        Seal::write(&self.seal_path, generation)
    }

    /// sled's flush, then an `fsync` of its log file and of any large-value file not synced yet
    /// (see the module comment: sled's flush alone does not survive a power cut). Blocking.
    fn flush_durable(&self) -> StorageResult<()> {
        self.db.flush().map_err(meta_err("flush"))?;
        self.db_file
            .sync_all()
            .map_err(|e| StorageError::io("sync", "node metadata (sled db)", e))?;
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("list", self.blobs_dir.display(), e)),
        };
        let mut synced = self.synced_blobs.lock().expect("blob set lock");
        let mut present = std::collections::HashMap::new();
        let mut added = false;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list", self.blobs_dir.display(), e))?;
            let name = entry.file_name();
            let path = entry.path();
            // The length before the sync: what the sync covers at least.
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // Removed by sled meanwhile: nothing left to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("stat", path.display(), e)),
            };
            if synced.get(&name) != Some(&len) {
                match std::fs::File::open(&path).and_then(|f| f.sync_all()) {
                    Ok(()) => added = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io("sync", path.display(), e)),
                }
            }
            present.insert(name, len);
        }
        if added {
            sync_dir(&self.blobs_dir)?;
        }
        *synced = present;
        Ok(())
    }
}

/// The seal: a small file beside the sled directory (`meta.seal`) naming the generation of the
/// last flush of the metadata, written (and synced) after that flush. sled reads a damaged
/// record in its log as the end of the log and silently drops everything after it — flushed
/// votes and purge points included (measured: about half of all single bit flips in its file lost
/// values, none was reported). A database whose generation is below the seal's lost flushed
/// writes: opening it fails with [`StorageError::MetaRolledBack`].
///
/// Format: generation u64 LE | crc32c of those 8 bytes u32 LE.
struct Seal;

impl Seal {
    fn path(meta_dir: &Path) -> PathBuf {
        meta_dir.with_extension("seal")
    }

    /// Rewrites the 12 bytes in place (one sector: a crash leaves the old or the new value). The
    /// first seal is written to a temporary file and renamed into place, so a crash never leaves
    /// a seal that exists but is empty (which would read as damage).
    fn write(path: &Path, generation: u64) -> StorageResult<()> {
        use std::io::Write;
        let mut bytes = generation.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&generation.to_le_bytes()).to_le_bytes());
        let first = !path.exists();
        let target = if first {
            path.with_extension("seal.new")
        } else {
            path.to_path_buf()
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&target)
            .and_then(|mut f| f.write_all(&bytes).map(|_| f))
            .map_err(|e| StorageError::io("write", target.display(), e))?;
        file.flush()
            .and_then(|_| file.sync_data())
            .map_err(|e| StorageError::io("sync", target.display(), e))?;
        if first {
            std::fs::rename(&target, path)
                .map_err(|e| StorageError::io("rename", target.display(), e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// The sealed generation; `None` without a seal (a database from before seals).
    fn read(path: &Path) -> StorageResult<Option<u64>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("read", path.display(), e)),
        };
        let valid = bytes.len() == 12 && crc32c::crc32c(&bytes[..8]).to_le_bytes() == bytes[8..12];
        if !valid {
            return Err(StorageError::MetaDecode {
                key: path.display().to_string(),
                reason: "the metadata seal fails its checksum".into(),
            });
        }
        Ok(Some(u64::from_le_bytes(
            bytes[..8].try_into().expect("8 bytes"),
        )))
    }
}

impl NodeMeta {
    /// The seal file of the metadata in `path` (beside it; see [`Seal`]).
    pub fn seal_path(path: &Path) -> PathBuf {
        Seal::path(path)
    }

    /// Opens (creating) the node metadata in `path`. A damaged sled configuration file (`conf`:
    /// sled's own settings, which Millrace never changes from its defaults) is set aside as
    /// `conf.damaged` and written anew: sled refuses a damaged one with "Unsupported … created
    /// using a sled version earlier than 0.29" (seen after a bit flip in it).
    pub fn open(path: &Path) -> StorageResult<NodeMeta> {
        let first = Self::open_once(path);
        let conf = path.join("conf");
        match first {
            Err(StorageError::Meta {
                source: sled::Error::Unsupported(_) | sled::Error::Corruption { .. },
                ..
            }) if conf.exists() => {}
            other => return other,
        }
        let aside = path.join("conf.damaged");
        std::fs::rename(&conf, &aside)
            .map_err(|e| StorageError::io("rename", conf.display(), e))?;
        match Self::open_once(path) {
            Ok(meta) => {
                tracing::warn!(
                    path = %aside.display(),
                    "sled's configuration file was damaged: set aside and written anew"
                );
                Ok(meta)
            }
            Err(_) => {
                // Not the configuration file: put it back and report the first error.
                std::fs::rename(&aside, &conf)
                    .map_err(|e| StorageError::io("rename", aside.display(), e))?;
                first
            }
        }
    }

    fn open_once(path: &Path) -> StorageResult<NodeMeta> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| StorageError::Meta {
                verb: "open",
                source,
            })?;
        let node = db
            .open_tree(NODE_TREE)
            .map_err(|source| StorageError::Meta {
                verb: "open tree",
                source,
            })?;
        let groups = db.open_tree(GROUPS_TREE).map_err(meta_err("open tree"))?;
        let seal_path = Seal::path(path);
        let generation = node
            .get(GENERATION_KEY)
            .map_err(meta_err("read"))?
            .map_or(0, |v| {
                u64::from_le_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
            });
        if let Some(sealed) = Seal::read(&seal_path)? {
            if generation < sealed {
                return Err(StorageError::MetaRolledBack {
                    found: generation,
                    sealed,
                });
            }
        }
        let flusher = Arc::new(SledFlusher {
            db: db.clone(),
            requested: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
            node: node.clone(),
            generation: AtomicU64::new(generation),
            seal_path,
            seal: std::sync::Mutex::new(()),
            db_file: std::fs::File::open(path.join("db"))
                .map_err(|e| StorageError::io("open", path.join("db").display(), e))?,
            blobs_dir: path.join("blobs"),
            synced_blobs: Default::default(),
        });
        let meta = NodeMeta {
            db,
            node,
            groups,
            flusher,
        };
        let version = meta.node.get(FORMAT_KEY).map_err(meta_err("read"))?;
        match version.as_deref() {
            None => meta.write_format_version()?,
            Some(v) if v == META_FORMAT_VERSION.to_le_bytes() => {}
            Some(v) if v == 1u32.to_le_bytes() => meta.migrate_from_v1()?,
            Some(v) => {
                return Err(StorageError::MetaDecode {
                    key: FORMAT_KEY.into(),
                    reason: format!("unsupported node metadata format {v:?}"),
                })
            }
        }
        Ok(meta)
    }

    fn write_format_version(&self) -> StorageResult<()> {
        self.node
            .insert(FORMAT_KEY, &META_FORMAT_VERSION.to_le_bytes())
            .map_err(meta_err("write"))?;
        self.flusher.flush_sealed()
    }

    /// Format 1 → 2: every group tree's keys are copied into `groups` under the group's prefix
    /// and made durable, then the old trees are dropped, then the version is written. A crash at
    /// any point leaves the database at version 1 with every value still in its old tree (or
    /// copied identically), so the migration simply runs again.
    fn migrate_from_v1(&self) -> StorageResult<()> {
        let old: Vec<(u64, sled::IVec)> = self
            .db
            .tree_names()
            .into_iter()
            .filter_map(|name| {
                let id = std::str::from_utf8(&name)
                    .ok()?
                    .strip_prefix(V1_GROUP_TREE_PREFIX)?
                    .parse()
                    .ok()?;
                Some((id, name))
            })
            .collect();
        for (id, name) in &old {
            let tree = self.db.open_tree(name).map_err(meta_err("open tree"))?;
            let mut batch = sled::Batch::default();
            for kv in tree.iter() {
                let (k, v) = kv.map_err(meta_err("read"))?;
                let mut key = group_prefix(*id).into_bytes();
                key.extend_from_slice(&k);
                batch.insert(key, v);
            }
            self.groups
                .apply_batch(batch)
                .map_err(meta_err("write batch"))?;
        }
        self.flusher.flush_sealed()?;
        for (_, name) in &old {
            self.db.drop_tree(name).map_err(meta_err("drop tree"))?;
        }
        tracing::info!(
            groups = old.len(),
            "node metadata migrated from format 1 to {META_FORMAT_VERSION}"
        );
        self.write_format_version()
    }

    /// The metadata of one Raft group.
    pub fn group(&self, group_id: u64) -> StorageResult<GroupMeta> {
        Ok(GroupMeta {
            tree: KvTree {
                tree: self.groups.clone(),
                prefix: group_prefix(group_id),
            },
            flusher: self.flusher.clone(),
        })
    }

    /// Makes every write so far durable, on a thread that may block.
    pub fn flush_blocking(&self) -> StorageResult<()> {
        self.flusher.flush_sealed()
    }

    /// Removes every key of a group (its replica is gone from this node).
    pub async fn drop_group(&self, group_id: u64) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for k in self.groups.scan_prefix(group_prefix(group_id)).keys() {
            batch.remove(k.map_err(meta_err("read"))?);
        }
        self.groups
            .apply_batch(batch)
            .map_err(meta_err("write batch"))?;
        self.flush().await
    }

    /// Groups that have metadata on this node, in order (one pass over the keys: cheaper in
    /// sled than a seek per group).
    pub fn group_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = Vec::new();
        for key in self.groups.iter().keys() {
            let Ok(key) = key else { break };
            let id = key
                .get(..20)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u64>().ok());
            if let Some(id) = id {
                if ids.last() != Some(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    pub fn node_get<T: DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        KvTree {
            tree: self.node.clone(),
            prefix: String::new(),
        }
        .get(key)
    }

    pub fn node_put<T: Serialize>(&self, key: &str, value: &T) -> StorageResult<()> {
        KvTree {
            tree: self.node.clone(),
            prefix: String::new(),
        }
        .put(key, value)
    }

    pub async fn flush(&self) -> StorageResult<()> {
        self.flusher.flush().await
    }
}

/// The prefix of a group's keys in the `groups` tree.
fn group_prefix(group_id: u64) -> String {
    format!("{group_id:020}/")
}

/// A tree, or the part of one under a key prefix.
#[derive(Clone)]
struct KvTree {
    tree: sled::Tree,
    prefix: String,
}

impl KvTree {
    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        let Some(raw) = self
            .tree
            .get(self.key(key))
            .map_err(|source| StorageError::Meta {
                verb: "read",
                source,
            })?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StorageError::MetaDecode {
                key: key.into(),
                reason: e.to_string(),
            })
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> StorageResult<()> {
        let raw = serde_json::to_vec(value).map_err(|e| StorageError::MetaDecode {
            key: key.into(),
            reason: e.to_string(),
        })?;
        self.tree
            .insert(self.key(key), raw)
            .map(|_| ())
            .map_err(|source| StorageError::Meta {
                verb: "write",
                source,
            })
    }
}

/// The keys of one Raft group.
#[derive(Clone)]
pub struct GroupMeta {
    tree: KvTree,
    flusher: Arc<SledFlusher>,
}

impl GroupMeta {
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        self.tree.get(key)
    }

    /// Writes a key; it is durable only after [`GroupMeta::flush`].
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> StorageResult<()> {
        self.tree.put(key, value)
    }

    /// Reads a raw (non-JSON) value.
    pub fn get_raw(&self, key: &str) -> StorageResult<Option<Vec<u8>>> {
        self.tree
            .tree
            .get(self.tree.key(key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|source| StorageError::Meta {
                verb: "read",
                source,
            })
    }

    /// Writes several keys atomically (all or none survive a crash).
    pub fn put_batch(&self, kvs: &[(&str, Vec<u8>)]) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in kvs {
            batch.insert(self.tree.key(k), v.as_slice());
        }
        self.tree
            .tree
            .apply_batch(batch)
            .map_err(|source| StorageError::Meta {
                verb: "write batch",
                source,
            })
    }

    pub async fn flush(&self) -> StorageResult<()> {
        self.flusher.flush().await
    }

    /// Like [`GroupMeta::flush`], on a thread that may block (not in an async task).
    pub fn flush_blocking(&self) -> StorageResult<()> {
        self.flusher.flush_sealed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `path` again after a `NodeMeta` on it was dropped, waiting (at most 10 s) for the
    /// lock: sled's background flusher thread holds the database until it notices the drop.
    async fn reopen(path: &Path) -> NodeMeta {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match NodeMeta::open(path) {
                Ok(meta) => return meta,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopening {}: {e}", path.display()),
            }
        }
    }

    /// Damage to the metadata store is either harmless (every value reads back as written) or
    /// an error that [`StorageError::is_corruption`] names (the node then sets its data aside
    /// and rebuilds): never a panic, another error, a different or a missing value. Without the
    /// seal about half of these flips lost values silently.
    #[tokio::test]
    async fn flipped_bits_in_the_metadata_are_noticed_as_corruption() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let meta = NodeMeta::open(&path).unwrap();
            for g in 1..=20u64 {
                meta.group(g).unwrap().put("vote", &(g * 1000)).unwrap();
            }
            meta.flush().await.unwrap();
        }
        drop(reopen(&path).await);
        let db = std::fs::read(path.join("db")).unwrap();
        let (mut noticed, mut unnoticed) = (0, 0);
        let end = db.iter().rposition(|b| *b != 0).unwrap_or(0) + 1;
        for offset in (0..end).step_by(3) {
            let work = dir.path().join(format!("w{offset}"));
            std::fs::create_dir_all(work.join("blobs")).unwrap();
            std::fs::copy(path.join("conf"), work.join("conf")).unwrap();
            std::fs::write(work.join("db"), &db).unwrap();
            std::fs::copy(Seal::path(&path), Seal::path(&work)).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(work.join("db"))
                .unwrap();
            f.write_all_at(&[db[offset] ^ 0x04], offset as u64).unwrap();
            let opened = std::panic::catch_unwind(|| NodeMeta::open(&work));
            match opened {
                Ok(Ok(meta)) => {
                    for g in 1..=20u64 {
                        match meta.group(g).unwrap().get::<u64>("vote") {
                            Ok(v) => assert!(
                                v == Some(g * 1000),
                                "offset {offset}: read {v:?} for group {g}"
                            ),
                            Err(e) => assert!(e.is_corruption(), "offset {offset}: {e}"),
                        }
                    }
                    unnoticed += 1;
                }
                Ok(Err(e)) => {
                    assert!(
                        e.is_corruption(),
                        "offset {offset}: not named corruption: {e:?}"
                    );
                    noticed += 1;
                }
                Err(_) => panic!("offset {offset}: opening damaged metadata panicked"),
            }
            std::fs::remove_dir_all(&work).unwrap();
        }
        eprintln!("of {end} bytes, flips noticed {noticed}, unnoticed {unnoticed}");
        assert!(noticed > 0, "noticed {noticed}, unnoticed {unnoticed}");
    }

    /// A damaged sled configuration file is set aside and written anew; every value stays.
    #[tokio::test]
    async fn a_damaged_sled_configuration_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let meta = NodeMeta::open(&path).unwrap();
            meta.group(3).unwrap().put("vote", &7u64).unwrap();
            meta.flush().await.unwrap();
        }
        drop(reopen(&path).await);
        let mut conf = std::fs::read(path.join("conf")).unwrap();
        conf[5] ^= 0x80; // what a flipped bit there did in a jepsen run: not UTF-8 any more
        std::fs::write(path.join("conf"), &conf).unwrap();
        let meta = reopen(&path).await;
        assert_eq!(meta.group(3).unwrap().get::<u64>("vote").unwrap(), Some(7));
        assert!(path.join("conf.damaged").exists());
    }

    #[tokio::test]
    async fn concurrent_flushes_are_coalesced_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
            let writers = (1..=40u64).map(|g| {
                let group = meta.group(g).unwrap();
                tokio::spawn(async move {
                    group.put("vote", &g).unwrap();
                    group.flush().await.unwrap();
                })
            });
            for w in writers.collect::<Vec<_>>() {
                w.await.unwrap();
            }
            // Fewer flushes ran than were asked for, and every request is covered.
            let f = &meta.flusher;
            assert_eq!(f.requested.load(Ordering::SeqCst), 40);
            assert_eq!(f.durable.load(Ordering::SeqCst), 40);
        }
        let meta = reopen(&dir.path().join("meta")).await;
        for g in 1..=40u64 {
            assert_eq!(meta.group(g).unwrap().get::<u64>("vote").unwrap(), Some(g));
        }
    }

    /// A format-1 database (a tree per group) opens as format 2 with every value kept.
    #[tokio::test]
    async fn format_1_is_migrated_with_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let db = sled::open(&path).unwrap();
            db.open_tree(NODE_TREE)
                .unwrap()
                .insert(FORMAT_KEY, &1u32.to_le_bytes())
                .unwrap();
            db.open_tree(NODE_TREE)
                .unwrap()
                .insert("node_id", b"3")
                .unwrap();
            for g in [0u64, 7, 12] {
                let t = db.open_tree(format!("group/{g:020}")).unwrap();
                t.insert("vote", format!("[{g},1]").as_bytes()).unwrap();
                t.insert("snapshot_data", &[0u8, 1, 2, g as u8][..])
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let meta = reopen(&path).await;
        assert_eq!(meta.group_ids(), vec![0, 7, 12]);
        for g in [0u64, 7, 12] {
            let group = meta.group(g).unwrap();
            assert_eq!(group.get::<(u64, u64)>("vote").unwrap(), Some((g, 1)));
            assert_eq!(
                group.get_raw("snapshot_data").unwrap(),
                Some(vec![0, 1, 2, g as u8])
            );
        }
        assert_eq!(meta.node_get::<u64>("node_id").unwrap(), Some(3));
        assert!(
            !meta
                .db
                .tree_names()
                .iter()
                .any(|n| n.starts_with(V1_GROUP_TREE_PREFIX.as_bytes())),
            "the old trees are gone"
        );
        drop(meta);
        // Reopening finds format 2 and the same values.
        let meta = reopen(&path).await;
        assert_eq!(
            meta.node.get(FORMAT_KEY).unwrap().unwrap().as_ref(),
            META_FORMAT_VERSION.to_le_bytes()
        );
        assert_eq!(
            meta.group(12).unwrap().get::<(u64, u64)>("vote").unwrap(),
            Some((12, 1))
        );
        // Dropping one group leaves the others.
        meta.drop_group(7).await.unwrap();
        assert_eq!(meta.group_ids(), vec![0, 12]);
        assert_eq!(
            meta.group(7).unwrap().get::<(u64, u64)>("vote").unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn values_survive_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
            let g = meta.group(7).unwrap();
            g.put("vote", &(3u64, 1u64)).unwrap();
            meta.node_put("node_id", &1u64).unwrap();
            g.flush().await.unwrap();
        }
        let meta = reopen(&dir.path().join("meta")).await;
        assert_eq!(
            meta.group(7).unwrap().get::<(u64, u64)>("vote").unwrap(),
            Some((3, 1))
        );
        assert_eq!(meta.node_get::<u64>("node_id").unwrap(), Some(1));
        assert_eq!(meta.group_ids(), vec![7]);
        meta.drop_group(7).await.unwrap();
        assert!(meta.group_ids().is_empty());
    }
}
