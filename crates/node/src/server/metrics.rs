//! `GET /metrics`: this node's metrics in the Prometheus (OpenMetrics) text format, encoded by
//! `prometheus-client`. Every name, unit and label is listed in `docs/metrics.md`.
//!
//! Counters the hot paths already keep (write path, group commit, admission) are read at scrape
//! time; what only this module keeps (latency histograms, per-stream counters) is recorded
//! without a lock per request: histograms are atomic buckets, and a stream's counters are found
//! under a read lock, created once. Per-stream series are capped at [`STREAM_SERIES_MAX`]; writes
//! and reads of streams past the cap are counted in `millrace_metrics_series_dropped_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use millrace_storage::{HistogramSnapshot, LatencyHistogram};
use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::node::Node;

/// Streams with series of their own at most, per node.
pub const STREAM_SERIES_MAX: usize = 1_000;

/// The metrics only this module keeps (the others are read from their owners at scrape time).
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// A PutRecords (native or Kinesis, one record or many) from its arrival to its answer.
    pub produce_seconds: LatencyHistogram,
    /// A GetRecords (native or Kinesis) from its arrival to its answer.
    pub get_records_seconds: LatencyHistogram,
    streams: RwLock<HashMap<String, Arc<StreamCounters>>>,
    series_dropped: AtomicU64,
    /// Calls by outcome, on this node.
    calls: CallCounts,
    /// Elections this node started for its shard groups (their election timers are off).
    pub elections_started: AtomicU64,
    /// Times a local group's known leader became another node, seen by the report pass.
    leader_changes: AtomicU64,
    /// Each local group's last known leader, for [`NodeMetrics::note_leaders`].
    leaders_seen: std::sync::Mutex<HashMap<u64, u64>>,
    /// The highest term among this node's shard groups, as of the last report pass.
    pub shard_term_max: AtomicU64,
}

/// The calls whose outcomes `millrace_calls_total` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    PutRecords = 0,
    GetRecords = 1,
    SubscribeToShard = 2,
}

impl Action {
    const ALL: [Action; 3] = [
        Action::PutRecords,
        Action::GetRecords,
        Action::SubscribeToShard,
    ];

    fn name(self) -> &'static str {
        match self {
            Action::PutRecords => "PutRecords",
            Action::GetRecords => "GetRecords",
            Action::SubscribeToShard => "SubscribeToShard",
        }
    }
}

/// Calls by how they were answered: `ok`, or the error's code (`errors.proto`'s names).
#[derive(Debug, Default)]
pub struct CallCounts {
    /// Calls answered without an error, per [`Action`].
    ok: [AtomicU64; 3],
    /// Calls answered with an error, per (action, error code): a rare path, so a lock.
    failed: std::sync::Mutex<std::collections::BTreeMap<(Action, &'static str), u64>>,
}

impl CallCounts {
    pub fn count<T>(&self, action: Action, outcome: &Result<T, crate::api::error::ApiError>) {
        match outcome {
            Ok(_) => {
                self.ok[action as usize].fetch_add(1, Relaxed);
            }
            Err(e) => {
                let mut failed = self.failed.lock().expect("metrics lock");
                *failed.entry((action, e.symbol())).or_default() += 1;
            }
        }
    }

    /// (action, outcome, calls): every action's `ok`, and each error seen.
    fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut calls: Vec<_> = Action::ALL
            .into_iter()
            .map(|a| (a.name(), "ok", self.ok[a as usize].load(Relaxed)))
            .collect();
        let failed = self.failed.lock().expect("metrics lock");
        calls.extend(failed.iter().map(|((a, code), n)| (a.name(), *code, *n)));
        calls
    }
}

/// Counters of one stream, on this node (the node that received the clients' calls).
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub records_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Records of PutRecords calls refused per record (throttled, not led, resharding…).
    pub records_failed: AtomicU64,
    /// Of those, the ones refused as over the shard's throughput.
    pub records_throttled: AtomicU64,
    pub records_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Calls for the stream by outcome (those refused before the stream was known, e.g. a
    /// name that does not exist, are counted per node only).
    pub calls: CallCounts,
    /// SubscribeToShard calls taken, and the records and bytes pushed to them.
    pub subscriptions: AtomicU64,
    pub records_pushed: AtomicU64,
    pub bytes_pushed: AtomicU64,
    /// The largest `MillisBehindLatest` GetRecords (or a subscription) answered lately.
    pub iterator_age: RecentMax,
    /// Per shard id, while the stream has enhanced monitoring on (at most
    /// [`SHARD_SERIES_MAX`] shards per node over all streams).
    shards: RwLock<HashMap<String, Arc<ShardCounters>>>,
}

/// Shards with series of their own at most, per node (enhanced monitoring).
pub const SHARD_SERIES_MAX: usize = 10_000;
/// Shards with series now, over every stream of this process's node.
static SHARD_SERIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Events of shards past [`SHARD_SERIES_MAX`], counted only in the dropped total.
static SHARD_SERIES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Shard-level counters (Kinesis enhanced monitoring), kept only for streams that enabled it.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub incoming_records: AtomicU64,
    pub incoming_bytes: AtomicU64,
    pub outgoing_records: AtomicU64,
    pub outgoing_bytes: AtomicU64,
    pub write_throttled: AtomicU64,
    pub iterator_age: RecentMax,
}

/// The largest value observed in the current and the previous minute (0 when none): what
/// Kinesis reports as the maximum of `IteratorAgeMilliseconds` over a period.
#[derive(Debug, Default)]
pub struct RecentMax {
    /// Per minute parity: (minute since the epoch, largest value in it).
    slots: [(AtomicU64, AtomicU64); 2],
}

impl RecentMax {
    pub fn observe(&self, value: u64, now_ms: u64) {
        let minute = now_ms / 60_000;
        let (at, max) = &self.slots[(minute % 2) as usize];
        if at.load(Relaxed) == minute {
            max.fetch_max(value, Relaxed);
        } else {
            at.store(minute, Relaxed);
            max.store(value, Relaxed);
        }
    }

    pub fn get(&self, now_ms: u64) -> u64 {
        let minute = now_ms / 60_000;
        self.slots
            .iter()
            .filter(|(at, _)| at.load(Relaxed) + 1 >= minute && at.load(Relaxed) <= minute)
            .map(|(_, max)| max.load(Relaxed))
            .max()
            .unwrap_or(0)
    }
}

/// The data bytes of a PutRecords call's records, noted before they are written: their total,
/// and each one's size only when it is needed (a call of several records, or one whose
/// stream counts per shard).
#[derive(Debug, Default)]
pub struct WrittenSizes {
    total: u64,
    each: Vec<usize>,
    /// The stream counts per shard (enhanced monitoring).
    per_shard: bool,
}

impl WrittenSizes {
    pub fn note(&mut self, sizes: impl ExactSizeIterator<Item = usize>, per_shard: bool) {
        self.per_shard = per_shard;
        if sizes.len() > 1 || per_shard {
            self.each.extend(sizes);
            self.total = self.each.iter().sum::<usize>() as u64;
        } else {
            self.total = sizes.sum::<usize>() as u64;
        }
    }
}

impl StreamCounters {
    /// Counts a PutRecords call's answer: what it wrote, what was refused, and per shard
    /// when the stream counts per shard (`sizes.each` then holds every record's size).
    pub fn count_written(
        &self,
        resp: &millrace_proto::v1::PutRecordsResponse,
        sizes: &WrittenSizes,
    ) {
        const THROTTLED: &str = "PROVISIONED_THROUGHPUT_EXCEEDED";
        let failed = resp.failed_record_count as u64;
        let throttled = || {
            resp.records
                .iter()
                .filter(|r| r.error_code == THROTTLED)
                .count() as u64
        };
        let (records, bytes) = match failed {
            0 => (resp.records.len() as u64, sizes.total),
            _ if sizes.each.is_empty() => (0, 0),
            _ => resp
                .records
                .iter()
                .zip(&sizes.each)
                .filter(|(r, _)| r.error_code.is_empty())
                .fold((0, 0), |(n, b), (_, size)| (n + 1, b + *size as u64)),
        };
        self.records_written.fetch_add(records, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
        if failed > 0 {
            self.records_failed.fetch_add(failed, Relaxed);
            self.records_throttled.fetch_add(throttled(), Relaxed);
        }
        if !sizes.per_shard || sizes.each.len() != resp.records.len() {
            return;
        }
        for (r, size) in resp.records.iter().zip(&sizes.each) {
            let Some(shard) = self.shard(&r.shard_id) else {
                continue;
            };
            if r.error_code.is_empty() {
                shard.incoming_records.fetch_add(1, Relaxed);
                shard.incoming_bytes.fetch_add(*size as u64, Relaxed);
            } else if r.error_code == THROTTLED {
                shard.write_throttled.fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts a GetRecords answer; `shard_id` when the stream counts per shard.
    pub fn count_read(
        &self,
        resp: &millrace_proto::v1::GetRecordsResponse,
        shard_id: Option<&str>,
    ) {
        let bytes = self.count_outgoing(&resp.records, resp.millis_behind_latest, shard_id);
        self.records_read
            .fetch_add(resp.records.len() as u64, Relaxed);
        self.bytes_read.fetch_add(bytes, Relaxed);
    }

    /// Counts an event pushed to a SubscribeToShard subscriber; `shard_id` when the stream
    /// counts per shard.
    pub fn count_pushed(
        &self,
        event: &millrace_proto::v1::SubscribeToShardEvent,
        shard_id: Option<&str>,
    ) {
        let bytes = self.count_outgoing(&event.records, event.millis_behind_latest, shard_id);
        self.records_pushed
            .fetch_add(event.records.len() as u64, Relaxed);
        self.bytes_pushed.fetch_add(bytes, Relaxed);
    }

    /// What GetRecords and subscriptions share: the iterator age, and the shard's outgoing
    /// counts. Answers the records' data bytes.
    fn count_outgoing(
        &self,
        records: &[millrace_proto::v1::Record],
        millis_behind: i64,
        shard_id: Option<&str>,
    ) -> u64 {
        let bytes: u64 = records.iter().map(|r| r.data.len() as u64).sum();
        let now = super::now_ms().max(0) as u64;
        let behind = millis_behind.max(0) as u64;
        self.iterator_age.observe(behind, now);
        if let Some(shard) = shard_id.and_then(|id| self.shard(id)) {
            shard
                .outgoing_records
                .fetch_add(records.len() as u64, Relaxed);
            shard.outgoing_bytes.fetch_add(bytes, Relaxed);
            shard.iterator_age.observe(behind, now);
        }
        bytes
    }

    /// The shard's counters (made on first use); `None` for no shard id, or past
    /// [`SHARD_SERIES_MAX`] shards of this stream.
    fn shard(&self, shard_id: &str) -> Option<Arc<ShardCounters>> {
        if shard_id.is_empty() {
            return None;
        }
        if let Some(c) = self.shards.read().expect("metrics lock").get(shard_id) {
            return Some(c.clone());
        }
        let mut shards = self.shards.write().expect("metrics lock");
        if let Some(c) = shards.get(shard_id) {
            return Some(c.clone());
        }
        if SHARD_SERIES.fetch_add(1, Relaxed) >= SHARD_SERIES_MAX {
            SHARD_SERIES.fetch_sub(1, Relaxed);
            SHARD_SERIES_DROPPED.fetch_add(1, Relaxed);
            return None;
        }
        let c = Arc::new(ShardCounters::default());
        shards.insert(shard_id.to_string(), c.clone());
        Some(c)
    }
}

impl Drop for StreamCounters {
    /// A forgotten (deleted) stream frees its shards' places under the cap.
    fn drop(&mut self) {
        let shards = self.shards.get_mut().map_or(0, |s| s.len());
        SHARD_SERIES.fetch_sub(shards, Relaxed);
    }
}

impl NodeMetrics {
    /// The stream's counters, or `None` once [`STREAM_SERIES_MAX`] streams have series here
    /// (then the caller's events are counted as dropped).
    pub fn stream(&self, name: &str) -> Option<Arc<StreamCounters>> {
        if let Some(c) = self.streams.read().expect("metrics lock").get(name) {
            return Some(c.clone());
        }
        let mut streams = self.streams.write().expect("metrics lock");
        if let Some(c) = streams.get(name) {
            return Some(c.clone());
        }
        if streams.len() >= STREAM_SERIES_MAX {
            self.series_dropped.fetch_add(1, Relaxed);
            return None;
        }
        let c = Arc::new(StreamCounters::default());
        streams.insert(name.to_string(), c.clone());
        Some(c)
    }

    /// Counts a call's outcome on this node (see [`CallCounts::count`]).
    pub fn call<T>(&self, action: Action, outcome: &Result<T, crate::api::error::ApiError>) {
        self.calls.count(action, outcome);
    }

    /// Notes each local group's current leader (`(group, leader)`, 0 for none) and counts the
    /// groups whose known leader became another node since the last call.
    pub fn note_leaders(&self, current: &[(u64, u64)]) {
        let mut seen = self.leaders_seen.lock().expect("metrics lock");
        let mut changes = 0;
        for (group, leader) in current.iter().filter(|(_, l)| *l != 0) {
            if seen
                .insert(*group, *leader)
                .is_some_and(|was| was != *leader)
            {
                changes += 1;
            }
        }
        if seen.len() > current.len() {
            let hosted: std::collections::HashSet<u64> = current.iter().map(|(g, _)| *g).collect();
            seen.retain(|g, _| hosted.contains(g));
        }
        self.leader_changes.fetch_add(changes, Relaxed);
    }

    /// What this node's clients wrote and read per stream, for the node's report (the console
    /// sums it over the nodes).
    pub fn traffic(&self) -> Vec<millrace_proto::internal::StreamTraffic> {
        let streams = self.streams.read().expect("metrics lock");
        streams
            .iter()
            .map(|(name, c)| millrace_proto::internal::StreamTraffic {
                stream: name.clone(),
                records_written: c.records_written.load(Relaxed),
                bytes_written: c.bytes_written.load(Relaxed),
                // Reads by GetRecords and by subscriptions alike.
                records_read: c.records_read.load(Relaxed) + c.records_pushed.load(Relaxed),
                bytes_read: c.bytes_read.load(Relaxed) + c.bytes_pushed.load(Relaxed),
            })
            .collect()
    }

    /// Forgets the series of streams that no longer exist (deleted), so they stop being
    /// reported and free their place under the cap.
    pub fn forget_streams_except(&self, exists: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let streams = self.streams.read().expect("metrics lock");
            streams.keys().filter(|n| !exists(n)).cloned().collect()
        };
        if !gone.is_empty() {
            let mut streams = self.streams.write().expect("metrics lock");
            for name in gone {
                streams.remove(&name);
            }
        }
    }
}

/// The node's metrics, as `GET /metrics` answers them.
pub fn render(node: &Node) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape::of(node)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Everything one scrape reports, read from the node at once.
#[derive(Debug)]
struct Scrape {
    node_id: u64,
    zone: String,
    version: &'static str,
    write: millrace_proto::v1::GetNodeStatsResponse,
    flush_round: HistogramSnapshot,
    produce: HistogramSnapshot,
    commit: HistogramSnapshot,
    get_records: HistogramSnapshot,
    /// Per stream: written records and bytes, failed, read records and bytes, throttled,
    /// iterator age (ms), subscriptions, records and bytes pushed to them.
    streams: Vec<(String, [u64; 10])>,
    /// Per shard of the streams with enhanced monitoring on.
    shards: Vec<ShardSeries>,
    /// (stream, action, outcome, calls).
    stream_calls: Vec<(String, &'static str, &'static str, u64)>,
    series_dropped: u64,
    /// (action, outcome, calls).
    calls: Vec<(&'static str, &'static str, u64)>,
    groups_hosted: u64,
    groups_led: u64,
    requests_in_flight: u64,
    admission: super::admission::AdmissionCounts,
    pages_read_ahead: u64,
    /// Per follower node: the most entries it is behind in a group this node leads.
    follower_lag: std::collections::BTreeMap<u64, u64>,
    /// Per stream: bytes of its shards' segment files on this node.
    stream_disk_bytes: Vec<(String, u64)>,
    /// (port, accepted, handshakes failed, handshakes timed out, refused over the limit).
    connections: [(&'static str, [u64; 4]); 2],
    open_files: u64,
    elections_started: u64,
    leader_changes: u64,
    /// The metadata group's term, as this node knows it.
    metadata_term: u64,
    shard_term_max: u64,
    storage_events: millrace_raft::events::StorageEvents,
    /// Per peer member: whether it answered this node's pings lately.
    peers_up: Vec<(u64, bool)>,
    /// On the metadata leader only: the cluster's health as [`Node::cluster_status`] sees it.
    cluster: Option<ClusterHealth>,
    /// On the metadata leader only: the consumer groups.
    groups: Vec<super::cluster_view::GroupLag>,
}

/// Consumer-group lag series (group × shard) the metadata leader exports at most (the
/// console lists them all).
pub const GROUP_LAG_SERIES_MAX: usize = 10_000;

/// One shard's series: only the metrics its stream enabled (Kinesis names, "ALL" expanded).
#[derive(Debug)]
struct ShardSeries {
    stream: String,
    shard_id: String,
    enabled: std::collections::BTreeSet<String>,
    /// Incoming records and bytes, outgoing records and bytes, writes throttled, iterator
    /// age (ms).
    values: [u64; 6],
}

/// The shard-level families: (Kinesis metric, family name, help, unit, index in
/// [`ShardSeries::values`]); the iterator age is the gauge, the rest are counters.
const SHARD_FAMILIES: [(&str, &str, &str, Option<Unit>, usize); 6] = [
    ("IncomingRecords", "millrace_shard_incoming_records", "Records written to the shard through this node", None, 0),
    ("IncomingBytes", "millrace_shard_incoming", "Record data written to the shard through this node", Some(Unit::Bytes), 1),
    ("OutgoingRecords", "millrace_shard_outgoing_records", "Records GetRecords returned, or subscriptions were pushed, from the shard through this node", None, 2),
    ("OutgoingBytes", "millrace_shard_outgoing", "Record data GetRecords returned, or subscriptions were pushed, from the shard through this node", Some(Unit::Bytes), 3),
    ("WriteProvisionedThroughputExceeded", "millrace_shard_write_throttled", "Records refused as over the shard's write throughput", None, 4),
    ("IteratorAgeMilliseconds", "millrace_shard_iterator_age", "The largest MillisBehindLatest GetRecords (or a subscription) answered for the shard in this minute and the last", Some(Unit::Seconds), 5),
];

impl ShardSeries {
    /// The shard series of `stream` whose enhanced monitoring is on (none when it is off).
    fn of(node: &Node, stream: &str, c: &StreamCounters, now: u64) -> Vec<ShardSeries> {
        let enabled = node.meta.read(|s| {
            s.streams
                .get(stream)
                .map(|st| st.shard_level_metrics.clone())
                .unwrap_or_default()
        });
        if enabled.is_empty() {
            return Vec::new();
        }
        let shards = c.shards.read().expect("metrics lock");
        shards
            .iter()
            .map(|(id, sh)| ShardSeries {
                stream: stream.to_string(),
                shard_id: id.clone(),
                enabled: enabled.clone(),
                values: [
                    sh.incoming_records.load(Relaxed),
                    sh.incoming_bytes.load(Relaxed),
                    sh.outgoing_records.load(Relaxed),
                    sh.outgoing_bytes.load(Relaxed),
                    sh.write_throttled.load(Relaxed),
                    sh.iterator_age.get(now),
                ],
            })
            .collect()
    }
}

/// Counts from the cluster status, exported by the metadata leader.
#[derive(Debug, Default)]
struct ClusterHealth {
    nodes_up: u64,
    nodes_down: u64,
    under_replicated: u64,
    under_spread: u64,
    catching_up: u64,
    moving: u64,
}

impl ClusterHealth {
    fn of(status: &serde_json::Value) -> ClusterHealth {
        let count = |key: &str| status[key].as_array().map_or(0, |a| a.len() as u64);
        let nodes = status["nodes"].as_array().map_or(&[][..], Vec::as_slice);
        let up = nodes
            .iter()
            .filter(|n| n["up"].as_bool() == Some(true))
            .count() as u64;
        ClusterHealth {
            nodes_up: up,
            nodes_down: nodes.len() as u64 - up,
            under_replicated: count("under_replicated"),
            under_spread: count("under_spread"),
            catching_up: count("catching_up"),
            moving: count("moving"),
        }
    }
}

impl Scrape {
    fn of(node: &Node) -> Scrape {
        let m = &node.metrics;
        m.forget_streams_except(|name| node.meta.read(|s| s.streams.contains_key(name)));
        let now = super::now_ms().max(0) as u64;
        let mut shards = Vec::new();
        let mut stream_calls = Vec::new();
        let mut streams: Vec<(String, [u64; 10])> = m
            .streams
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(name, c)| {
                let v = [
                    c.records_written.load(Relaxed),
                    c.bytes_written.load(Relaxed),
                    c.records_failed.load(Relaxed),
                    c.records_read.load(Relaxed),
                    c.bytes_read.load(Relaxed),
                    c.records_throttled.load(Relaxed),
                    c.iterator_age.get(now),
                    c.subscriptions.load(Relaxed),
                    c.records_pushed.load(Relaxed),
                    c.bytes_pushed.load(Relaxed),
                ];
                shards.extend(ShardSeries::of(node, name, c, now));
                stream_calls.extend(
                    c.calls
                        .snapshot()
                        .into_iter()
                        .map(|(a, o, n)| (name.clone(), a, o, n)),
                );
                (name.clone(), v)
            })
            .collect();
        streams.sort();
        shards.sort_by(|a, b| (&a.stream, &a.shard_id).cmp(&(&b.stream, &b.shard_id)));
        stream_calls.sort();
        let stream_of: HashMap<u64, String> = node.meta.read(|s| {
            s.streams
                .values()
                .flat_map(|st| st.shards.iter().map(|sh| (sh.group_id, st.name.clone())))
                .collect()
        });
        let (mut hosted, mut led) = (0, 0);
        let mut follower_lag = std::collections::BTreeMap::new();
        let mut disk: HashMap<&str, u64> = HashMap::new();
        for id in node.groups.group_ids() {
            let Some(h) = node.groups.get(id) else {
                continue;
            };
            hosted += 1;
            if let Some(stream) = stream_of.get(&id) {
                *disk.entry(stream.as_str()).or_default() += h.log.disk_bytes();
            }
            let m = h.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(node.id) {
                continue;
            }
            led += 1;
            let last = m.last_log_index.unwrap_or(0);
            for (follower, matched) in m.replication.iter().flatten() {
                if *follower == node.id {
                    continue;
                }
                let behind = last.saturating_sub(matched.as_ref().map_or(0, |l| l.index));
                let worst = follower_lag.entry(*follower).or_insert(0);
                *worst = (*worst).max(behind);
            }
        }
        let mut stream_disk_bytes: Vec<(String, u64)> =
            disk.into_iter().map(|(s, b)| (s.to_string(), b)).collect();
        stream_disk_bytes.sort();
        stream_disk_bytes.truncate(STREAM_SERIES_MAX);
        let accepts = |c: &millrace_security::incoming::AcceptCounters| {
            [
                c.accepted.load(Relaxed),
                c.handshakes_failed.load(Relaxed),
                c.handshakes_timed_out.load(Relaxed),
                c.refused_over_limit.load(Relaxed),
            ]
        };
        let admission = node.admission.counts();
        let leading = node.meta_group.raft.is_leader();
        Scrape {
            node_id: node.id,
            zone: node.config.zone.clone(),
            version: env!("CARGO_PKG_VERSION"),
            write: node.write_stats(),
            flush_round: node.groups.flusher().stats().round_seconds.snapshot(),
            produce: m.produce_seconds.snapshot(),
            commit: node.stats.commit_seconds.snapshot(),
            get_records: m.get_records_seconds.snapshot(),
            streams,
            shards,
            stream_calls,
            series_dropped: m.series_dropped.load(Relaxed) + SHARD_SERIES_DROPPED.load(Relaxed),
            calls: m.calls.snapshot(),
            groups_hosted: hosted,
            groups_led: led,
            requests_in_flight: admission.in_flight,
            admission,
            pages_read_ahead: crate::shard::read_ahead::pages_served(),
            follower_lag,
            stream_disk_bytes,
            connections: [
                ("grpc", accepts(&node.security.grpc_accepts)),
                ("http", accepts(&node.security.http_accepts)),
            ],
            open_files: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            elections_started: m.elections_started.load(Relaxed),
            leader_changes: m.leader_changes.load(Relaxed),
            storage_events: millrace_raft::events::storage_events(),
            metadata_term: node.meta_group.raft.metrics().borrow_watched().current_term,
            shard_term_max: m.shard_term_max.load(Relaxed),
            peers_up: node.peers_up(),
            cluster: leading.then(|| ClusterHealth::of(&node.cluster_status(false))),
            groups: if leading {
                node.consumer_group_lags()
            } else {
                Vec::new()
            },
        }
    }
}

impl Scrape {
    /// The consumer groups' series (the metadata leader's).
    fn encode_groups(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let labels = |g: &super::cluster_view::GroupLag| {
            [("stream", g.stream.clone()), ("group", g.group.clone())]
        };
        for (name, help, kind, value) in [
            (
                "millrace_consumer_group_workers",
                "Workers of the group holding an unexpired lease",
                Gauge,
                (|g| g.workers) as fn(&super::cluster_view::GroupLag) -> u64,
            ),
            (
                "millrace_consumer_group_leases_acquired",
                "Times a lease of the group was handed out: to a first owner, moved to even the load, or taken over",
                Counter,
                |g| g.leases_acquired,
            ),
            (
                "millrace_consumer_group_lease_expiries",
                "Leases taken over because their owner stopped heartbeating and the lease expired",
                Counter,
                |g| g.lease_expiries,
            ),
        ] {
            let mut family = e.encode_descriptor(name, help, None, kind)?;
            for g in &self.groups {
                let labels = labels(g);
                let mut metric = family.encode_family(&labels)?;
                match kind {
                    Gauge => metric.encode_gauge(&(value(g) as i64))?,
                    _ => metric.encode_counter::<NoLabelSet, _, u64>(&value(g), None)?,
                }
            }
        }
        type Lag = super::cluster_view::ShardLag;
        for (name, help, value) in [
            (
                "millrace_consumer_group_lag_entries",
                "Per group and shard: log entries the shard's leader applied past the group's checkpoint (0 once a closed shard is finished)",
                (|l| l.entries.map(|n| n as f64)) as fn(&Lag) -> Option<f64>,
            ),
            (
                "millrace_consumer_group_lag_records",
                "Per group and shard: records past the group's checkpoint, counted by the shard's leader (0 once a closed shard is finished)",
                |l| l.records.map(|n| n as f64),
            ),
            (
                "millrace_consumer_group_lag_seconds",
                "Per group and shard: how long the oldest record past the group's checkpoint has waited (0 when none is)",
                |l| l.millis.map(|ms| ms as f64 / 1000.0),
            ),
        ] {
            let mut family = e.encode_descriptor(name, help, None, Gauge)?;
            let series = self
                .groups
                .iter()
                .flat_map(|g| g.shards.iter().map(move |(shard, lag)| (g, shard, lag)))
                .filter_map(|(g, shard, lag)| value(lag).map(|v| (g, shard, v)))
                .take(GROUP_LAG_SERIES_MAX);
            for (g, shard, behind) in series {
                let labels = [
                    ("stream", g.stream.as_str()),
                    ("group", g.group.as_str()),
                    ("shard", shard.as_str()),
                ];
                family.encode_family(&labels)?.encode_gauge(&behind)?;
            }
        }
        Ok(())
    }
}

/// Writes one unlabelled counter or gauge.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => metric.encode_gauge(&(value as i64)),
    }
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let info = [
            ("node_id", self.node_id.to_string()),
            ("zone", self.zone.clone()),
            ("version", self.version.to_string()),
        ];
        e.encode_descriptor("millrace_node", "This node", None, MetricType::Info)?
            .encode_info(&info)?;

        // The write path and its group commit.
        let w = &self.write;
        let counters: [(&str, &str, u64); 9] = [
            (
                "millrace_requests_led",
                "Write requests appended here as their shard's leader",
                w.requests_led,
            ),
            (
                "millrace_requests_forwarded",
                "Write requests handed on to their shard leader's node",
                w.requests_forwarded,
            ),
            (
                "millrace_entries_proposed",
                "Raft entries of records proposed here as a shard leader",
                w.entries_proposed,
            ),
            (
                "millrace_records_proposed",
                "Records in the entries proposed here",
                w.records_proposed,
            ),
            (
                "millrace_flush_rounds",
                "Group-commit rounds of this node's flush thread",
                w.flush_rounds,
            ),
            (
                "millrace_flush_requests",
                "Appends made durable by the flush rounds",
                w.flush_requests,
            ),
            (
                "millrace_fsyncs",
                "Sync calls (fdatasync of a file or syncfs of a filesystem)",
                w.fsyncs,
            ),
            (
                "millrace_filesystem_syncs",
                "Of the sync calls, those of a whole filesystem (syncfs)",
                w.filesystem_syncs,
            ),
            (
                "millrace_read_ahead_pages",
                "GetRecords pages served from read-ahead",
                self.pages_read_ahead,
            ),
        ];
        for (name, help, v) in counters {
            single(&mut e, name, help, None, Counter, v)?;
        }
        e.encode_descriptor(
            "millrace_flush",
            "Time the flush thread spent syncing",
            Some(&Unit::Seconds),
            Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&(w.flush_micros as f64 / 1e6), None)?;
        histogram(
            &mut e,
            "millrace_flush_round",
            "How long one group-commit round's syncs took",
            &self.flush_round,
        )?;
        histogram(
            &mut e,
            "millrace_produce",
            "PutRecords calls from arrival to answer (the ack)",
            &self.produce,
        )?;
        histogram(
            &mut e,
            "millrace_commit",
            "Record batch entries from proposal to commit on a majority and apply, on their shard leader",
            &self.commit,
        )?;
        histogram(
            &mut e,
            "millrace_get_records",
            "GetRecords calls from arrival to answer",
            &self.get_records,
        )?;

        let mut calls = e.encode_descriptor(
            "millrace_calls",
            "PutRecords and GetRecords calls (native or Kinesis) by outcome: ok, or the error's code",
            None,
            Counter,
        )?;
        for (action, outcome, n) in &self.calls {
            calls
                .encode_family(&[("action", *action), ("outcome", *outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        // Raft groups on this node.
        single(
            &mut e,
            "millrace_raft_groups",
            "Raft groups (shards and the metadata group) with a replica here",
            None,
            Gauge,
            self.groups_hosted,
        )?;
        single(
            &mut e,
            "millrace_raft_groups_led",
            "Raft groups this node leads",
            None,
            Gauge,
            self.groups_led,
        )?;

        single(
            &mut e,
            "millrace_raft_elections",
            "Elections this node started for its shard groups (their leader went silent, or the group is new)",
            None,
            Counter,
            self.elections_started,
        )?;
        single(
            &mut e,
            "millrace_raft_leader_changes",
            "Times a group with a replica here got another leader (seen once a second)",
            None,
            Counter,
            self.leader_changes,
        )?;
        let ev = &self.storage_events;
        for (name, help, value) in [
            ("millrace_raft_snapshots_built", "Snapshots this node's groups built (shard groups at their retention point, the metadata group every 1,000 entries)", ev.snapshots_built),
            ("millrace_raft_snapshots_installed", "Snapshots received from a leader and installed (a replica too far behind)", ev.snapshots_installed),
            ("millrace_raft_log_purges", "Log prefixes purged (segments deleted) once a snapshot covered them", ev.log_purges),
            ("millrace_replica_repairs_started", "Replicas found at start-up to lack log entries they may have acknowledged (a damaged or truncated log), whose rebuild from the other replicas began", ev.repairs_started),
            ("millrace_replica_repairs_finished", "Damaged replicas rebuilt up to their former end: they vote again", ev.repairs_finished),
        ] {
            single(&mut e, name, help, None, Counter, value)?;
        }
        let mut peers = e.encode_descriptor(
            "millrace_peer_up",
            "Per peer member: 1 if it answered this node's pings in the last 1.5 s, else 0",
            None,
            Gauge,
        )?;
        for (peer, up) in &self.peers_up {
            peers
                .encode_family(&[("peer", peer.to_string())])?
                .encode_gauge(&i64::from(*up))?;
        }
        single(
            &mut e,
            "millrace_metadata_term",
            "The metadata group's Raft term as this node knows it (each election raises it)",
            None,
            Gauge,
            self.metadata_term,
        )?;
        single(
            &mut e,
            "millrace_raft_shard_term_max",
            "The highest Raft term among this node's shard groups (each has its own; a rise is an election in one of them)",
            None,
            Gauge,
            self.shard_term_max,
        )?;
        single(
            &mut e,
            "millrace_metadata_leader",
            "1 on the metadata leader, which alone exports the millrace_cluster_ series; else 0",
            None,
            Gauge,
            u64::from(self.cluster.is_some()),
        )?;
        if let Some(c) = &self.cluster {
            let mut nodes = e.encode_descriptor(
                "millrace_cluster_nodes",
                "Member nodes by state (down: unheard of for 3 s)",
                None,
                Gauge,
            )?;
            for (state, n) in [("up", c.nodes_up), ("down", c.nodes_down)] {
                nodes
                    .encode_family(&[("state", state)])?
                    .encode_gauge(&(n as i64))?;
            }
            for (name, help, value) in [
                ("millrace_cluster_shards_under_replicated", "Open shards with a replica down or fewer replicas than the stream's replication factor", c.under_replicated),
                ("millrace_cluster_shards_under_spread", "Open shards with replicas sharing a zone while another zone has none", c.under_spread),
                ("millrace_cluster_replicas_catching_up", "Replicas more than 100 entries behind their shard's leader", c.catching_up),
                ("millrace_cluster_replicas_moving", "Replica moves in progress", c.moving),
            ] {
                single(&mut e, name, help, None, Gauge, value)?;
            }
        }

        if self.cluster.is_some() {
            self.encode_groups(&mut e)?;
        }

        let mut lag = e.encode_descriptor(
            "millrace_raft_follower_lag_entries",
            "Per follower: the most log entries it is behind in a group this node leads",
            None,
            Gauge,
        )?;
        for (follower, behind) in &self.follower_lag {
            let labels = [("follower", follower.to_string())];
            lag.encode_family(&labels)?
                .encode_gauge(&(*behind as i64))?;
        }

        // Connections and files.
        let kinds: [(&str, &str, usize); 4] = [
            ("millrace_connections_accepted", "Connections accepted", 0),
            ("millrace_connections_handshake_failed", "Connections whose TLS handshake failed", 1),
            ("millrace_connections_handshake_timed_out", "Connections that did not finish their handshake (or, without TLS, send anything) in time", 2),
            ("millrace_connections_refused", "Connections closed at once because the port held its maximum", 3),
        ];
        for (name, help, i) in kinds {
            let mut family = e.encode_descriptor(name, help, None, Counter)?;
            for (port, counts) in &self.connections {
                family
                    .encode_family(&[("port", *port)])?
                    .encode_counter::<NoLabelSet, _, u64>(&counts[i], None)?;
            }
        }
        single(
            &mut e,
            "millrace_open_files",
            "File descriptors this process holds open",
            None,
            Gauge,
            self.open_files,
        )?;

        // Admission.
        single(
            &mut e,
            "millrace_requests_in_flight",
            "Public API requests being served",
            None,
            Gauge,
            self.requests_in_flight,
        )?;
        let a = &self.admission;
        let refused: [(&str, &str, u64); 5] = [
            (
                "millrace_requests_refused_in_flight",
                "Requests refused at the in-flight limit",
                a.refused_in_flight,
            ),
            (
                "millrace_grpc_calls_timed_out",
                "gRPC calls ended at the call timeout",
                a.calls_timed_out,
            ),
            (
                "millrace_requests_refused_key_rate",
                "Requests refused at an access key's rate limit",
                a.refused_key_rate,
            ),
            (
                "millrace_kinesis_bodies_too_large",
                "Kinesis requests refused for their body size (413)",
                a.kinesis_bodies_too_large,
            ),
            (
                "millrace_kinesis_bodies_timed_out",
                "Kinesis requests whose body did not arrive in time (408)",
                a.kinesis_bodies_timed_out,
            ),
        ];
        for (name, help, value) in refused {
            single(&mut e, name, help, None, Counter, value)?;
        }

        // Per stream.
        let per_stream: [(&str, &str, Option<Unit>, usize); 8] = [
            (
                "millrace_stream_subscriptions",
                "SubscribeToShard calls this node took for the stream",
                None,
                7,
            ),
            (
                "millrace_stream_records_pushed",
                "Records this node pushed to SubscribeToShard subscribers",
                None,
                8,
            ),
            (
                "millrace_stream_pushed",
                "Record data this node pushed to SubscribeToShard subscribers",
                Some(Unit::Bytes),
                9,
            ),
            (
                "millrace_stream_records_written",
                "Records acknowledged to writers through this node",
                None,
                0,
            ),
            (
                "millrace_stream_written",
                "Record data acknowledged to writers through this node",
                Some(Unit::Bytes),
                1,
            ),
            (
                "millrace_stream_records_failed",
                "Records of PutRecords calls refused per record (throttled, resharding, …)",
                None,
                2,
            ),
            (
                "millrace_stream_records_read",
                "Records returned to readers by this node's GetRecords",
                None,
                3,
            ),
            (
                "millrace_stream_read",
                "Record data returned to readers by this node's GetRecords",
                Some(Unit::Bytes),
                4,
            ),
        ];
        for (name, help, unit, i) in per_stream {
            let mut family = e.encode_descriptor(name, help, unit.as_ref(), Counter)?;
            for (stream, v) in &self.streams {
                let labels = [("stream", stream.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v[i], None)?;
            }
        }
        let mut calls = e.encode_descriptor(
            "millrace_stream_calls",
            "Calls for the stream by action and outcome, on the node the client called",
            None,
            Counter,
        )?;
        for (stream, action, outcome, n) in &self.stream_calls {
            let labels = [
                ("stream", stream.as_str()),
                ("action", *action),
                ("outcome", *outcome),
            ];
            calls
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut throttled = e.encode_descriptor(
            "millrace_stream_records_throttled",
            "Records of PutRecords calls refused as over their shard's write throughput",
            None,
            Counter,
        )?;
        for (stream, v) in &self.streams {
            throttled
                .encode_family(&[("stream", stream.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&v[5], None)?;
        }
        let mut age = e.encode_descriptor(
            "millrace_stream_iterator_age",
            "The largest MillisBehindLatest this node's GetRecords (or subscriptions) answered for the stream in this minute and the last (0 if none)",
            Some(&Unit::Seconds),
            Gauge,
        )?;
        for (stream, v) in &self.streams {
            age.encode_family(&[("stream", stream.as_str())])?
                .encode_gauge(&(v[6] as f64 / 1000.0))?;
        }
        for (metric, name, help, unit, i) in SHARD_FAMILIES {
            let mut series = self
                .shards
                .iter()
                .filter(|s| s.enabled.contains(metric))
                .peekable();
            if series.peek().is_none() {
                continue;
            }
            let kind = if i == 5 { Gauge } else { Counter };
            let mut family = e.encode_descriptor(name, help, unit.as_ref(), kind)?;
            for s in series {
                let labels = [
                    ("stream", s.stream.as_str()),
                    ("shard", s.shard_id.as_str()),
                ];
                let mut metric = family.encode_family(&labels)?;
                match kind {
                    Gauge => metric.encode_gauge(&(s.values[i] as f64 / 1000.0))?,
                    _ => metric.encode_counter::<NoLabelSet, _, u64>(&s.values[i], None)?,
                }
            }
        }
        let mut disk = e.encode_descriptor(
            "millrace_stream_disk",
            "Segment files of the stream's shard replicas on this node",
            Some(&Unit::Bytes),
            Gauge,
        )?;
        for (stream, bytes) in &self.stream_disk_bytes {
            disk.encode_family(&[("stream", stream.as_str())])?
                .encode_gauge(&(*bytes as i64))?;
        }
        single(
            &mut e,
            "millrace_metrics_series_dropped",
            "Events of streams (or enhanced-monitoring shards) past the per-node series caps (1,000 streams, 10,000 shards), not counted per stream (or shard)",
            None,
            Counter,
            self.series_dropped,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_max_covers_this_minute_and_the_last() {
        let m = RecentMax::default();
        assert_eq!(m.get(0), 0);
        m.observe(5, 60_000);
        m.observe(3, 61_000);
        assert_eq!(m.get(61_000), 5);
        m.observe(2, 120_000);
        assert_eq!(m.get(120_000), 5, "the previous minute still counts");
        assert_eq!(m.get(180_000), 2, "two minutes on, only the last one");
        assert_eq!(m.get(240_000), 0, "nothing in the last two minutes");
    }

    #[test]
    fn writes_are_counted_per_stream_and_per_shard_with_throttled_ones_apart() {
        use millrace_proto::v1::{PutRecordsResponse, PutRecordsResultEntry};
        let entry = |shard: &str, error: &str| PutRecordsResultEntry {
            shard_id: shard.into(),
            error_code: error.into(),
            ..Default::default()
        };
        let c = StreamCounters::default();
        let resp = PutRecordsResponse {
            failed_record_count: 2,
            records: vec![
                entry("s0", ""),
                entry("s1", "PROVISIONED_THROUGHPUT_EXCEEDED"),
                entry("s1", ""),
                entry("s0", "UNAVAILABLE"),
            ],
        };
        let mut sizes = WrittenSizes::default();
        sizes.note([10, 20, 30, 40].into_iter(), true);
        c.count_written(&resp, &sizes);
        assert_eq!(c.records_written.load(Relaxed), 2);
        assert_eq!(c.bytes_written.load(Relaxed), 40);
        assert_eq!(c.records_failed.load(Relaxed), 2);
        assert_eq!(c.records_throttled.load(Relaxed), 1);
        let s1 = c.shard("s1").unwrap();
        assert_eq!(s1.incoming_records.load(Relaxed), 1);
        assert_eq!(s1.incoming_bytes.load(Relaxed), 30);
        assert_eq!(s1.write_throttled.load(Relaxed), 1);
        // One record, no per-shard counting: its size needs no list.
        let one = StreamCounters::default();
        let mut sizes = WrittenSizes::default();
        sizes.note([7].into_iter(), false);
        assert!(sizes.each.is_empty());
        let resp = PutRecordsResponse {
            failed_record_count: 0,
            records: vec![entry("s0", "")],
        };
        one.count_written(&resp, &sizes);
        assert_eq!(one.bytes_written.load(Relaxed), 7);
        assert!(one.shards.read().unwrap().is_empty());
        // Several records of a stream that does not count per shard: no shard counters.
        let many = StreamCounters::default();
        let mut sizes = WrittenSizes::default();
        sizes.note([1, 2].into_iter(), false);
        let resp = PutRecordsResponse {
            failed_record_count: 1,
            records: vec![entry("s0", ""), entry("s1", "UNAVAILABLE")],
        };
        many.count_written(&resp, &sizes);
        assert_eq!(many.bytes_written.load(Relaxed), 1);
        assert!(many.shards.read().unwrap().is_empty());
    }

    #[test]
    fn streams_past_the_cap_are_counted_as_dropped_and_deleted_ones_free_their_place() {
        let m = NodeMetrics::default();
        for i in 0..STREAM_SERIES_MAX {
            assert!(m.stream(&format!("s{i}")).is_some());
        }
        // The same stream again: its counters, not a new series.
        let a = m.stream("s0").unwrap();
        a.records_written.fetch_add(3, Relaxed);
        assert_eq!(m.stream("s0").unwrap().records_written.load(Relaxed), 3);
        assert!(m.stream("one-too-many").is_none());
        assert_eq!(m.series_dropped.load(Relaxed), 1);
        m.forget_streams_except(|name| name != "s1");
        assert!(m.stream("one-too-many").is_some(), "s1's place was freed");
        assert_eq!(m.streams.read().unwrap().len(), STREAM_SERIES_MAX);
    }
}
