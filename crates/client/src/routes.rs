//! Where a write goes first: each stream's open shards and the node that leads each, so a
//! `put_records` call reaches its shard's leader without a forwarding hop.
//!
//! Learned with ListShards (and DescribeCluster, for the node ids of this client's endpoints),
//! kept per stream and reloaded in the background once [`ROUTES_TTL`] has passed or a write
//! failed. A stale route is never wrong, only slower: the node it names forwards the write to
//! the shard's leader (or answers NOT_LEADER, and the call moves on as it always did).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use tokio::sync::watch;

use crate::{Client, PutRecord};

/// How long a stream's routes are used before they are reloaded (in the background: calls
/// meanwhile keep using the old ones).
pub const ROUTES_TTL: Duration = Duration::from_secs(3);
/// How long calls wait for a stream's first routes before going without them.
const FIRST_LOAD_WAIT_MAX: Duration = Duration::from_secs(2);

/// The hash key of a record: its explicit hash key, else the MD5 of its partition key (as
/// the server computes it).
pub(crate) fn hash_of(record: &PutRecord) -> u128 {
    record
        .explicit_hash_key
        .as_deref()
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| u128::from_be_bytes(Md5::digest(record.partition_key.as_bytes()).into()))
}

/// The route table of one client.
#[derive(Default)]
pub(crate) struct Routes {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Node id → endpoint index, once learned (or given by [`Client::discover`]).
    nodes: Option<Arc<BTreeMap<u64, usize>>>,
    streams: HashMap<String, StreamRoutes>,
}

struct StreamRoutes {
    /// (starting hash key, ending hash key, leader's endpoint index), open shards only, by
    /// starting key.
    shards: Arc<Vec<(u128, u128, Option<usize>)>>,
    /// Shard id → its leader's endpoint index, every shard (closed ones are still read).
    leaders: Arc<HashMap<String, usize>>,
    loaded: Instant,
    loading: bool,
    /// Set while the stream's first load runs: turns true when it ends.
    first_load: Option<watch::Receiver<bool>>,
}

impl StreamRoutes {
    fn endpoint_of(&self, hash: u128) -> Option<usize> {
        let i = self.shards.partition_point(|(start, _, _)| *start <= hash);
        let (_, end, leader) = self.shards.get(i.checked_sub(1)?)?;
        (hash <= *end).then_some(*leader).flatten()
    }
}

impl Routes {
    pub(crate) fn with_nodes(nodes: BTreeMap<u64, usize>) -> Routes {
        Routes {
            state: Mutex::new(State {
                nodes: (!nodes.is_empty()).then(|| Arc::new(nodes)),
                streams: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a cache: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn node_index(&self, node_id: u64) -> Option<usize> {
        self.lock().nodes.as_ref()?.get(&node_id).copied()
    }

    /// Makes the next call reload `stream`'s routes.
    pub(crate) fn expire(&self, stream: &str) {
        if let Some(s) = self.lock().streams.get_mut(stream) {
            s.loaded = Instant::now() - ROUTES_TTL;
        }
    }
}

/// What to do about a stream's routes on this call.
enum Lookup<T> {
    /// Fresh enough, or being reloaded by another call already.
    Use(Option<T>),
    /// Stale: use them, and reload them in the background.
    Refresh(Option<T>),
    /// Being loaded for the first time: wait for it.
    Wait(watch::Receiver<bool>),
}

impl Client {
    /// The endpoint of the node leading the shard of `records`' first record, when known.
    pub(crate) async fn leader_endpoint(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Option<usize> {
        let hash = hash_of(records.first()?);
        self.route(stream, |s| s.endpoint_of(hash)).await
    }

    /// The endpoint of the node leading the shard a shard iterator reads, when known.
    pub(crate) async fn iterator_endpoint(&self, iterator: &str) -> Option<usize> {
        let (stream, shard) = iterator_shard(iterator)?;
        self.route(&stream, |s| s.leaders.get(&shard).copied())
            .await
    }

    /// `find` over `stream`'s routes: loads them the first time, reloads them in the
    /// background once stale.
    async fn route<T>(&self, stream: &str, find: impl Fn(&StreamRoutes) -> Option<T>) -> Option<T> {
        let lookup = {
            let mut state = self.routes().lock();
            match state.streams.get_mut(stream) {
                Some(StreamRoutes {
                    first_load: Some(done),
                    ..
                }) => Lookup::Wait(done.clone()),
                Some(s) if s.loading || s.loaded.elapsed() < ROUTES_TTL => Lookup::Use(find(s)),
                Some(s) => {
                    s.loading = true;
                    Lookup::Refresh(find(s))
                }
                None => {
                    // The first load runs as a task of its own (a caller giving up cannot
                    // leave it half done); every call meanwhile waits for it, so a burst of
                    // first calls does not all go the long way.
                    let (done_tx, done) = watch::channel(false);
                    state.streams.insert(
                        stream.to_string(),
                        StreamRoutes {
                            shards: Arc::default(),
                            leaders: Arc::default(),
                            loaded: Instant::now(),
                            loading: true,
                            first_load: Some(done.clone()),
                        },
                    );
                    let (client, name) = (self.clone(), stream.to_string());
                    tokio::spawn(async move {
                        client.load_routes(&name).await;
                        let _ = done_tx.send(true);
                    });
                    Lookup::Wait(done)
                }
            }
        };
        match lookup {
            Lookup::Use(e) => e,
            Lookup::Refresh(e) => {
                let (client, stream) = (self.clone(), stream.to_string());
                tokio::spawn(async move { client.load_routes(&stream).await });
                e
            }
            Lookup::Wait(mut done) => {
                // Bounded: a load that hangs only costs these calls their direct route.
                let _ = tokio::time::timeout(FIRST_LOAD_WAIT_MAX, done.wait_for(|d| *d)).await;
                let state = self.routes().lock();
                let routes = state.streams.get(stream)?;
                routes.first_load.is_none().then(|| find(routes)).flatten()
            }
        }
    }

    /// Reads `stream`'s shards and their leaders (and, the first time, which endpoint is
    /// which node). A failure leaves no routes until the next reload: calls then go wherever
    /// they would without routes.
    async fn load_routes(&self, stream: &str) {
        let known = self.routes().lock().nodes.clone();
        let nodes = match known {
            Some(n) => Some(n),
            None => self.learn_nodes().await,
        };
        let (shards, leaders) = match (&nodes, self.list_shards(stream).await) {
            (Some(nodes), Ok(shards)) => {
                let leaders: HashMap<String, usize> = shards
                    .iter()
                    .filter_map(|s| Some((s.shard_id.clone(), *nodes.get(&s.leader_node_id)?)))
                    .collect();
                let open = crate::open_shard_ranges(shards)
                    .into_iter()
                    .map(|(start, end, id)| (start, end, leaders.get(&id).copied()))
                    .collect();
                (open, leaders)
            }
            _ => (Vec::new(), HashMap::new()),
        };
        self.routes().lock().streams.insert(
            stream.to_string(),
            StreamRoutes {
                shards: Arc::new(shards),
                leaders: Arc::new(leaders),
                loaded: Instant::now(),
                loading: false,
                first_load: None,
            },
        );
    }

    /// Matches the cluster's members to this client's endpoints by address.
    async fn learn_nodes(&self) -> Option<Arc<BTreeMap<u64, usize>>> {
        let cluster = self.describe_cluster().await.ok()?;
        let urls = self.endpoints();
        let nodes: BTreeMap<u64, usize> = cluster
            .nodes
            .iter()
            .filter_map(|n| {
                let url = crate::connection::member_url(urls, &n.grpc_addr);
                Some((n.node_id, urls.iter().position(|u| *u == url)?))
            })
            .collect();
        let nodes = Arc::new(nodes);
        self.routes().lock().nodes = Some(nodes.clone());
        Some(nodes)
    }
}

/// The stream and shard a shard iterator reads, from its public part (Millrace iterators,
/// format v1: `base64url(JSON).base64url(MAC)`, `node/src/api/iterator.rs` and
/// `docs/ARCHITECTURE.md` decision 11); `None` for anything else. Only a routing hint: the
/// server still verifies the whole iterator.
fn iterator_shard(iterator: &str) -> Option<(String, String)> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Public {
        s: String,
        h: String,
    }
    let (payload, _mac) = iterator.split_once('.')?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let public: Public = serde_json::from_slice(&json).ok()?;
    Some((public.s, public.h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_finds_the_shard_that_covers_it() {
        let routes = StreamRoutes {
            shards: Arc::new(vec![
                (0, 99, Some(0)),
                (100, 199, None),
                (300, 399, Some(2)),
            ]),
            leaders: Arc::default(),
            loaded: Instant::now(),
            loading: false,
            first_load: None,
        };
        assert_eq!(routes.endpoint_of(0), Some(0));
        assert_eq!(routes.endpoint_of(99), Some(0));
        assert_eq!(routes.endpoint_of(150), None, "leader unknown");
        assert_eq!(
            routes.endpoint_of(250),
            None,
            "a gap (children not open yet)"
        );
        assert_eq!(routes.endpoint_of(300), Some(2));
        assert_eq!(routes.endpoint_of(400), None);
    }

    #[test]
    fn an_iterator_names_its_stream_and_shard() {
        use base64::Engine;
        let payload = br#"{"v":1,"s":"orders","h":"shardId-000000000003","g":9,"i":1,"p":0,"e":5}"#;
        let iterator = format!(
            "{}.bWFj",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
        );
        assert_eq!(
            iterator_shard(&iterator),
            Some(("orders".into(), "shardId-000000000003".into()))
        );
        assert_eq!(iterator_shard("not an iterator"), None);
        assert_eq!(iterator_shard("e30.bWFj"), None, "JSON without the fields");
    }

    #[test]
    fn an_explicit_hash_key_wins_over_the_partition_key() {
        let mut r = PutRecord::new("k", Vec::new());
        let by_key = hash_of(&r);
        assert_eq!(by_key, u128::from_be_bytes(Md5::digest(b"k").into()));
        r.explicit_hash_key = Some("42".into());
        assert_eq!(hash_of(&r), 42);
    }
}
