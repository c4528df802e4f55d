//! On the metadata leader: ON_DEMAND streams scale themselves (issue 17). Once a second, each
//! shard leader's load counters (from the nodes' reports) become write rates, and
//! [`Scaler`](crate::metadata::autoscale::Scaler) decides a split or a merge per stream, which
//! goes through the ordinary SplitShard / MergeShards path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_proto::v1 as pb;

use super::cluster::DOWN_AFTER;
use super::node::Node;
use crate::api::grpc::MillraceService;
use crate::metadata::autoscale::{
    grow_to_warm, Decision, Rates, Scaler, ShardLoad, MERGE_AFTER, ON_DEMAND_SHARDS_MIN,
};
use crate::metadata::reshard::shards_for_mibps;
use crate::metadata::state::{ShardStatus, StreamMode, StreamStatus};

/// How often the scaler looks (the nodes report once a second).
const SCALE_INTERVAL: Duration = Duration::from_secs(1);

/// One ON_DEMAND stream as the scaler sees it: its open shards (id, group, range), its floor.
struct Candidate {
    name: String,
    open: Vec<(String, u64, u128, u128)>,
    shards_min: u32,
    /// Open shards its warm throughput asks for (one per MiB/s; 0 without one).
    warm_shards: u32,
}

pub async fn scale_loop(node: Arc<Node>) {
    let split_after = Duration::from_millis(node.config.on_demand_split_after_ms);
    let mut scalers: HashMap<String, Scaler> = HashMap::new();
    let mut rates = Rates::default();
    loop {
        tokio::time::sleep(SCALE_INTERVAL).await;
        if !node.meta_group.raft.is_leader() {
            scalers.clear();
            rates = Rates::default();
            continue;
        }
        let (loads, reports) = {
            let l = node.liveness.lock().expect("liveness lock");
            (l.leader_loads(), l.group_reports())
        };
        // Only the leader in the highest term counts (a deposed leader may still report
        // itself leader for a moment; alternating between the two would reset the rates).
        let up = |n: u64| node.silent_for(n) < DOWN_AFTER;
        let leaders = super::cluster_view::leaders(&reports, &up);
        for (group, leader, at, records, bytes) in loads {
            if leaders.get(&group).is_some_and(|led| led.node == leader) {
                rates.sample(group, leader, at, records, bytes);
            }
        }
        let candidates = on_demand_streams(&node);
        scalers.retain(|name, _| candidates.iter().any(|c| &c.name == name));
        let open_groups: std::collections::HashSet<u64> = candidates
            .iter()
            .flat_map(|c| c.open.iter().map(|(_, group, ..)| *group))
            .collect();
        rates.retain(&|group| open_groups.contains(&group));
        let now = Instant::now();
        for c in candidates {
            let loads: Option<Vec<ShardLoad>> = c
                .open
                .iter()
                .map(|(id, group, start, end)| {
                    let (records_per_sec, bytes_per_sec) = rates.of(*group)?;
                    Some(ShardLoad {
                        shard_id: id.clone(),
                        starting_hash_key: *start,
                        ending_hash_key: *end,
                        records_per_sec,
                        bytes_per_sec,
                    })
                })
                .collect();
            // A shard whose leader has not reported long enough yet: decide next time.
            let Some(loads) = loads else { continue };
            let scaler = scalers
                .entry(c.name.clone())
                .or_insert_with(|| Scaler::new(split_after, MERGE_AFTER));
            scaler.retain(&|id| c.open.iter().any(|(open, ..)| open == id));
            let max = node.config.shards_per_stream_max;
            let decision = grow_to_warm(&loads, c.warm_shards, max)
                .or_else(|| scaler.observe(&loads, now, c.shards_min, max));
            if let Some(decision) = decision {
                apply(&node, &c.name, decision).await;
            }
        }
    }
}

/// The ACTIVE ON_DEMAND streams (one reshard at a time: an UPDATING stream waits).
fn on_demand_streams(node: &Node) -> Vec<Candidate> {
    node.meta.read(|s| {
        s.streams
            .values()
            .filter(|st| st.stream_mode == StreamMode::OnDemand)
            .filter(|st| st.status == StreamStatus::Active)
            .map(|st| Candidate {
                name: st.name.clone(),
                open: st
                    .shards
                    .iter()
                    .filter(|sh| sh.status == ShardStatus::Open)
                    .map(|sh| {
                        let range = (sh.starting_hash_key, sh.ending_hash_key);
                        (sh.shard_id.clone(), sh.group_id, range.0, range.1)
                    })
                    .collect(),
                shards_min: match st.warm_throughput_mibps {
                    0 => ON_DEMAND_SHARDS_MIN,
                    w => ON_DEMAND_SHARDS_MIN.max(shards_for_mibps(w)),
                },
                warm_shards: match st.warm_throughput_mibps {
                    0 => 0,
                    w => shards_for_mibps(w),
                },
            })
            .collect()
    })
}

async fn apply(node: &Arc<Node>, stream: &str, decision: Decision) {
    let svc = MillraceService { node: node.clone() };
    let outcome = match &decision {
        Decision::Split { shard_id, at } => {
            svc.split_shard_impl(pb::SplitShardRequest {
                stream_name: stream.to_string(),
                shard_to_split: shard_id.clone(),
                new_starting_hash_key: at.to_string(),
            })
            .await
        }
        Decision::Merge { shard_id, adjacent } => {
            svc.merge_shards_impl(pb::MergeShardsRequest {
                stream_name: stream.to_string(),
                shard_to_merge: shard_id.clone(),
                adjacent_shard_to_merge: adjacent.clone(),
            })
            .await
        }
    };
    match outcome {
        Ok(()) => tracing::info!(stream, ?decision, "ON_DEMAND stream rescaled"),
        Err(e) => tracing::warn!(stream, ?decision, error = %e, "ON_DEMAND rescale refused"),
    }
}
