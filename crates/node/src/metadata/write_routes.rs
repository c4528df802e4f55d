//! A stream as the write path needs it: its open shards sorted by hash key, with each
//! shard's group and replicas. Built once per metadata version and shared, so a PutRecords
//! call neither copies the stream's metadata nor scans every shard per record.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::machine::MetaShared;
use super::placement::NodeId;
use super::state::{StreamMeta, StreamStatus};

#[derive(Debug)]
pub struct WriteRoutes {
    /// The metadata version these routes were built from.
    version: u64,
    pub name: String,
    pub deleting: bool,
    pub max_record_bytes: usize,
    /// Enhanced monitoring is on for some shard-level metric: writes are counted per shard.
    pub shard_level_metrics: bool,
    /// The AUTO record distribution strategy: records go to shards at random, evenly.
    pub auto_distribution: bool,
    /// Open (and closing) shards, by starting hash key.
    shards: Vec<ShardRoute>,
}

#[derive(Debug, Clone)]
pub struct ShardRoute {
    pub starting_hash_key: u128,
    pub ending_hash_key: u128,
    pub shard_id: String,
    pub group_id: u64,
    pub replicas: Vec<NodeId>,
}

impl WriteRoutes {
    fn of(stream: &StreamMeta, version: u64) -> WriteRoutes {
        let mut shards: Vec<ShardRoute> = stream
            .shards
            .iter()
            .filter(|s| s.is_current())
            .map(|s| ShardRoute {
                starting_hash_key: s.starting_hash_key,
                ending_hash_key: s.ending_hash_key,
                shard_id: s.shard_id.clone(),
                group_id: s.group_id,
                replicas: s.replicas.clone(),
            })
            .collect();
        shards.sort_by_key(|s| s.starting_hash_key);
        WriteRoutes {
            version,
            name: stream.name.clone(),
            deleting: stream.status == StreamStatus::Deleting,
            max_record_bytes: stream.max_record_bytes,
            shard_level_metrics: !stream.shard_level_metrics.is_empty(),
            auto_distribution: stream.record_distribution_auto,
            shards,
        }
    }

    /// Index (in [`WriteRoutes::shard`]) of the open shard owning `hash`; `None` while its
    /// range has no open shard (a reshard's children not open yet).
    pub fn shard_of(&self, hash: u128) -> Option<usize> {
        let i = self
            .shards
            .partition_point(|s| s.starting_hash_key <= hash)
            .checked_sub(1)?;
        (hash <= self.shards[i].ending_hash_key).then_some(i)
    }

    /// A hash key of a shard chosen at random, each as likely as the others (the AUTO record
    /// distribution strategy); `None` with no shard.
    pub fn any_shard_key(&self) -> Option<u128> {
        (!self.shards.is_empty())
            .then(|| self.shards[rand::random_range(0..self.shards.len())].starting_hash_key)
    }

    pub fn shard(&self, i: usize) -> &ShardRoute {
        &self.shards[i]
    }
}

/// The routes of each stream written to, by name (see [`MetaShared::write_routes`]).
#[derive(Debug, Default)]
pub struct RouteCache {
    streams: RwLock<HashMap<String, Arc<WriteRoutes>>>,
}

impl MetaShared {
    /// `name`'s write routes as of the current metadata, if this node knows the stream.
    pub fn write_routes(&self, name: &str) -> Option<Arc<WriteRoutes>> {
        // The version first: state read after it is at least as new, so a change in between
        // only makes the next call rebuild.
        let version = self.version();
        let cache = &self.route_cache().streams;
        if let Some(r) = cache.read().expect("route cache lock").get(name) {
            if r.version == version {
                return Some(r.clone());
            }
        }
        let built = self.read(|s| s.streams.get(name).map(|st| WriteRoutes::of(st, version)));
        let mut cache = cache.write().expect("route cache lock");
        match built {
            Some(routes) => {
                let routes = Arc::new(routes);
                cache.insert(name.to_string(), routes.clone());
                Some(routes)
            }
            None => {
                cache.remove(name);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::{ShardMeta, ShardStatus};

    fn shard(id: &str, start: u128, end: u128, status: ShardStatus) -> ShardMeta {
        ShardMeta {
            shard_id: id.into(),
            group_id: start as u64 + 1,
            starting_hash_key: start,
            ending_hash_key: end,
            replicas: vec![1, 2, 3],
            status,
            ..Default::default()
        }
    }

    #[test]
    fn a_hash_routes_to_the_open_shard_covering_it() {
        let stream = StreamMeta {
            name: "s".into(),
            status: StreamStatus::Active,
            shards: vec![
                shard("parent", 0, 199, ShardStatus::Closed),
                shard("right", 100, 199, ShardStatus::Open),
                shard("left", 0, 49, ShardStatus::Open),
            ],
            ..Default::default()
        };
        let routes = WriteRoutes::of(&stream, 7);
        let id = |h| {
            routes
                .shard_of(h)
                .map(|i| routes.shard(i).shard_id.as_str())
        };
        assert_eq!(id(0), Some("left"));
        assert_eq!(id(49), Some("left"));
        assert_eq!(id(50), None, "no open shard covers 50-99 yet");
        assert_eq!(id(100), Some("right"));
        assert_eq!(id(199), Some("right"));
        assert_eq!(id(200), None);
    }
}
