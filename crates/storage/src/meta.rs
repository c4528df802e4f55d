//! sled-backed node metadata.
//!
//! One sled database per node (`DATA_DIR/meta`). Trees and keys (format version 1):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `node` | `format_version` | u32 LE |
//! | `node` | any node-level key (e.g. `node_id`) | JSON |
//! | `group/<group id, 20 digits>` | `vote`, `committed`, `purged`, `snapshot_meta` | JSON |
//! | `group/<group id, 20 digits>` | `snapshot_data` | raw bytes (the state machine's snapshot) |
//!
//! sled makes writes durable only at `flush`; callers flush before acknowledging anything that
//! depends on a write (votes) and treat everything else as a hint that may roll back to an
//! earlier value after a crash.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{StorageError, StorageResult};

pub const META_FORMAT_VERSION: u32 = 1;
const NODE_TREE: &str = "node";
const FORMAT_KEY: &str = "format_version";

/// The node's metadata database.
#[derive(Clone)]
pub struct NodeMeta {
    db: sled::Db,
    node: sled::Tree,
    flusher: Arc<SledFlusher>,
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
}

impl SledFlusher {
    async fn flush(&self) -> StorageResult<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = self.running.lock().await;
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(()); // a flush that started after our writes has finished
        }
        // Everything requested so far was written before this flush starts.
        let covers = self.requested.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StorageError::Meta {
                verb: "flush",
                source: sled::Error::Io(std::io::Error::other(e.to_string())),
            })?
            .map_err(|source| StorageError::Meta {
                verb: "flush",
                source,
            })?;
        self.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

impl NodeMeta {
    pub fn open(path: &Path) -> StorageResult<NodeMeta> {
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
        let flusher = Arc::new(SledFlusher {
            db: db.clone(),
            requested: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
        });
        let meta = NodeMeta { db, node, flusher };
        match meta
            .node
            .get(FORMAT_KEY)
            .map_err(|source| StorageError::Meta {
                verb: "read",
                source,
            })? {
            None => {
                meta.node
                    .insert(FORMAT_KEY, &META_FORMAT_VERSION.to_le_bytes())
                    .map_err(|source| StorageError::Meta {
                        verb: "write",
                        source,
                    })?;
                meta.db.flush().map_err(|source| StorageError::Meta {
                    verb: "flush",
                    source,
                })?;
            }
            Some(v) if v.as_ref() == META_FORMAT_VERSION.to_le_bytes() => {}
            Some(v) => {
                return Err(StorageError::MetaDecode {
                    key: FORMAT_KEY.into(),
                    reason: format!("unsupported node metadata format {:?}", v.as_ref()),
                })
            }
        }
        Ok(meta)
    }

    /// The metadata of one Raft group.
    pub fn group(&self, group_id: u64) -> StorageResult<GroupMeta> {
        let tree = self
            .db
            .open_tree(group_tree_name(group_id))
            .map_err(|source| StorageError::Meta {
                verb: "open tree",
                source,
            })?;
        Ok(GroupMeta {
            tree: KvTree { tree },
            flusher: self.flusher.clone(),
        })
    }

    /// Removes every key of a group (its replica is gone from this node).
    pub async fn drop_group(&self, group_id: u64) -> StorageResult<()> {
        self.db
            .drop_tree(group_tree_name(group_id))
            .map_err(|source| StorageError::Meta {
                verb: "drop tree",
                source,
            })?;
        self.flush().await
    }

    /// Groups that have metadata on this node.
    pub fn group_ids(&self) -> Vec<u64> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()?
                    .strip_prefix("group/")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    pub fn node_get<T: DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        KvTree {
            tree: self.node.clone(),
        }
        .get(key)
    }

    pub fn node_put<T: Serialize>(&self, key: &str, value: &T) -> StorageResult<()> {
        KvTree {
            tree: self.node.clone(),
        }
        .put(key, value)
    }

    pub async fn flush(&self) -> StorageResult<()> {
        self.flusher.flush().await
    }
}

fn group_tree_name(group_id: u64) -> String {
    format!("group/{group_id:020}")
}

#[derive(Clone)]
struct KvTree {
    tree: sled::Tree,
}

impl KvTree {
    fn get<T: DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        let Some(raw) = self.tree.get(key).map_err(|source| StorageError::Meta {
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
            .insert(key, raw)
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
            .get(key)
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
            batch.insert(k.as_bytes(), v.as_slice());
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
        for g in 1..=40u64 {
            assert_eq!(meta.group(g).unwrap().get::<u64>("vote").unwrap(), Some(g));
        }
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
        let meta = NodeMeta::open(&dir.path().join("meta")).unwrap();
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
