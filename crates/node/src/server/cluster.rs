//! Cluster health: node reports to the metadata leader, the cluster status, and re-creating the
//! replicas of nodes that stay down past `--dead-node-timeout` (DESIGN decision 6).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_proto::internal::{GroupReport, NodeReportRequest};
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

use super::node::Node;
use crate::api::error::ApiError;
use crate::metadata::state::{MetaCommand, ShardStatus, METADATA_GROUP_ID};

/// How often every node reports to the metadata leader.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A node unheard of for this long shows as down in the status.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);

/// What the metadata leader has heard from each node (in memory; a new leader starts afresh and
/// counts every node as seen when it took over).
#[derive(Default)]
pub struct Liveness {
    seen: HashMap<u64, (Instant, Vec<GroupReport>)>,
    leader_since: Option<Instant>,
}

impl Liveness {
    /// Time since `node` was last heard of, counting from this node's leadership at most.
    fn silent_for(&self, node: u64, now: Instant) -> Duration {
        let since = self.leader_since.unwrap_or(now);
        let last = self.seen.get(&node).map_or(since, |(t, _)| (*t).max(since));
        now.saturating_duration_since(last)
    }
}

impl Node {
    /// This node's report: every local group's role and applied index.
    pub fn local_report(&self) -> NodeReportRequest {
        let mut groups = Vec::new();
        for id in self.groups.group_ids() {
            let Some(h) = self.groups.get(id) else {
                continue;
            };
            let m = h.raft.metrics().borrow_watched().clone();
            groups.push(GroupReport {
                group_id: id,
                state: format!("{:?}", m.state),
                leader_id: m.current_leader.unwrap_or(0),
                applied_index: m.last_applied.map_or(0, |l| l.index),
                has_applied: m.last_applied.is_some(),
            });
        }
        NodeReportRequest {
            node_id: self.id,
            groups,
        }
    }

    /// On the metadata leader: remembers a node's report.
    pub fn record_report(&self, report: NodeReportRequest) {
        let mut l = self.liveness.lock().expect("liveness lock");
        l.seen
            .insert(report.node_id, (Instant::now(), report.groups));
    }

    /// Notes that this node leads (or no longer leads) the metadata group.
    fn note_leadership(&self, leading: bool) {
        let mut l = self.liveness.lock().expect("liveness lock");
        match (leading, l.leader_since) {
            (true, None) => {
                l.leader_since = Some(Instant::now());
                l.seen.clear();
            }
            (false, Some(_)) => l.leader_since = None,
            _ => {}
        }
    }

    fn silent_for(&self, node: u64) -> Duration {
        self.liveness
            .lock()
            .expect("liveness lock")
            .silent_for(node, Instant::now())
    }

    /// The cluster status (on the metadata leader).
    pub fn cluster_status(&self) -> serde_json::Value {
        let reports: HashMap<u64, Vec<GroupReport>> = {
            let l = self.liveness.lock().expect("liveness lock");
            l.seen.iter().map(|(n, (_, g))| (*n, g.clone())).collect()
        };
        let up = |n: u64| self.silent_for(n) < DOWN_AFTER;
        self.meta.read(|s| {
            let mut shards_per_node: BTreeMap<u64, usize> = BTreeMap::new();
            let mut leaders_per_node: BTreeMap<u64, usize> = BTreeMap::new();
            let (mut under_replicated, mut under_spread, mut catching_up, mut moving) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let zones: BTreeSet<&str> = s.members.values().map(|m| m.zone.as_str()).collect();
            for st in s.streams.values() {
                for sh in st.shards.iter().filter(|sh| sh.status != ShardStatus::Closed) {
                    let leader_applied = reports
                        .values()
                        .flatten()
                        .find(|g| g.group_id == sh.group_id && g.state == "Leader")
                        .map(|g| g.applied_index);
                    for r in &sh.replicas {
                        *shards_per_node.entry(*r).or_default() += 1;
                    }
                    let live: Vec<u64> = sh.replicas.iter().copied().filter(|r| up(*r)).collect();
                    if live.len() < sh.replicas.len() || sh.replicas.len() < st.replication_factor as usize {
                        under_replicated.push(json!({"stream": st.name, "shard_id": sh.shard_id, "replicas": sh.replicas, "live_replicas": live}));
                    }
                    let shard_zones: BTreeSet<&str> = sh
                        .replicas
                        .iter()
                        .filter_map(|r| s.members.get(r).map(|m| m.zone.as_str()))
                        .collect();
                    if shard_zones.len() < sh.replicas.len().min(zones.len()) || zones.len() < sh.replicas.len() {
                        under_spread.push(json!({"stream": st.name, "shard_id": sh.shard_id, "zones": shard_zones}));
                    }
                    if let Some((from, to)) = sh.moving {
                        moving.push(json!({"stream": st.name, "shard_id": sh.shard_id, "from": from, "to": to}));
                    }
                    for (node, groups) in &reports {
                        let Some(g) = groups.iter().find(|g| g.group_id == sh.group_id) else { continue };
                        if let Some(la) = leader_applied {
                            if g.state != "Leader" && g.applied_index + 100 < la {
                                catching_up.push(json!({"stream": st.name, "shard_id": sh.shard_id, "node_id": node, "applied_index": g.applied_index, "leader_applied_index": la}));
                            }
                        }
                    }
                }
            }
            for (node, groups) in &reports {
                let led = groups.iter().filter(|g| g.group_id != METADATA_GROUP_ID && g.state == "Leader").count();
                leaders_per_node.insert(*node, led);
            }
            let nodes: Vec<serde_json::Value> = s
                .members
                .values()
                .map(|m| {
                    json!({
                        "node_id": m.node_id,
                        "zone": m.zone,
                        "grpc_addr": m.grpc_addr,
                        "http_addr": m.http_addr,
                        "up": up(m.node_id),
                        "silent_ms": self.silent_for(m.node_id).as_millis() as u64,
                        "shards": shards_per_node.get(&m.node_id).copied().unwrap_or(0),
                        "leaderships": leaders_per_node.get(&m.node_id).copied().unwrap_or(0),
                    })
                })
                .collect();
            json!({
                "metadata_leader": self.id,
                "nodes": nodes,
                "under_replicated": under_replicated,
                "under_spread": under_spread,
                "catching_up": catching_up,
                "moving": moving,
            })
        })
    }

    /// The cluster status from the metadata leader, wherever it is.
    pub async fn fetch_cluster_status(&self) -> Result<serde_json::Value, ApiError> {
        if self.meta_group.raft.is_leader() {
            return Ok(self.cluster_status());
        }
        let leader = self
            .metadata_leader()
            .ok_or_else(|| ApiError::Unavailable("no metadata leader is known".into()))?;
        let addr = self
            .addr_of(leader)
            .ok_or_else(|| ApiError::Unavailable(format!("no address for node {leader}")))?;
        let mut client = self
            .groups
            .transport()
            .client(&addr)
            .map_err(ApiError::Internal)?;
        let reply = client
            .cluster_status(millrace_proto::internal::ClusterStatusRequest {})
            .await
            .map_err(|s| ApiError::Unavailable(s.message().to_string()))?
            .into_inner();
        if reply.not_leader.is_some() || !reply.error.is_empty() {
            return Err(ApiError::Unavailable(
                "the metadata leader moved; retry".into(),
            ));
        }
        serde_json::from_str(&reply.status_json).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// Every node: report to the metadata leader once a second.
pub async fn report_loop(node: Arc<Node>) {
    loop {
        tokio::time::sleep(REPORT_INTERVAL).await;
        let report = node.local_report();
        if node.meta_group.raft.is_leader() {
            node.record_report(report);
            continue;
        }
        let Some(addr) = node.metadata_leader().and_then(|l| node.addr_of(l)) else {
            continue;
        };
        if let Ok(mut client) = node.groups.transport().client(&addr) {
            let _ = tokio::time::timeout(REPORT_INTERVAL, client.node_report(report)).await;
        }
    }
}

/// On the metadata leader: replicas on nodes silent for longer than the dead-node timeout are
/// re-created on live nodes (a zone not yet used by the shard first, then the least loaded).
pub async fn replace_dead_replicas(node: &Arc<Node>) {
    let leading = node.meta_group.raft.is_leader();
    node.note_leadership(leading);
    if !leading {
        return;
    }
    let timeout = node.config.dead_node_timeout;
    let dead: BTreeSet<u64> = node
        .members()
        .keys()
        .copied()
        .filter(|n| *n != node.id && node.silent_for(*n) > timeout)
        .collect();
    if dead.is_empty() {
        return;
    }
    let moves: Vec<MetaCommand> = node.meta.read(|s| {
        let mut load: BTreeMap<u64, usize> = s.members.keys().map(|n| (*n, 0)).collect();
        for sh in s.streams.values().flat_map(|st| &st.shards) {
            for r in &sh.replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for st in s.streams.values() {
            for sh in st
                .shards
                .iter()
                .filter(|sh| sh.status != ShardStatus::Closed && sh.moving.is_none())
            {
                let Some(from) = sh.replicas.iter().copied().find(|r| dead.contains(r)) else {
                    continue;
                };
                let used_zones: BTreeSet<&str> = sh
                    .replicas
                    .iter()
                    .filter(|r| **r != from)
                    .filter_map(|r| s.members.get(r).map(|m| m.zone.as_str()))
                    .collect();
                let target = s
                    .members
                    .values()
                    .filter(|m| !sh.replicas.contains(&m.node_id) && !dead.contains(&m.node_id))
                    .min_by_key(|m| {
                        (
                            used_zones.contains(m.zone.as_str()),
                            load[&m.node_id],
                            m.node_id,
                        )
                    });
                if let Some(t) = target {
                    *load.entry(t.node_id).or_default() += 1;
                    out.push(MetaCommand::MoveReplica {
                        name: st.name.clone(),
                        shard_id: sh.shard_id.clone(),
                        from,
                        to: t.node_id,
                    });
                }
            }
        }
        out
    });
    for cmd in moves {
        match node.propose_meta(&cmd).await {
            Ok(_) => tracing::warn!(?cmd, "re-creating a replica of a dead node"),
            Err(e) => tracing::debug!(error = %e, "cannot start replacing a dead replica yet"),
        }
    }
}
