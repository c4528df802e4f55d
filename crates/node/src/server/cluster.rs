//! Cluster health: node reports to the metadata leader, the cluster status, and re-creating the
//! replicas of nodes that stay down past `--dead-node-timeout` (DESIGN decision 6).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_proto::internal::{ConsumerLag, GroupReport, NodeReportRequest};
use openraft::async_runtime::WatchReceiver;
use serde_json::json;
use std::collections::VecDeque;

use super::node::Node;
use crate::api::error::ApiError;
use crate::metadata::state::{MetaCommand, ShardStatus, METADATA_GROUP_ID};
use crate::shard::sequence::SequenceNumber;

/// How often every node reports to the metadata leader.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A node unheard of for this long shows as down in the status.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);

/// What the metadata leader has heard from each node (in memory; a new leader starts afresh and
/// counts every node as seen when it took over).
#[derive(Default)]
pub struct Liveness {
    seen: HashMap<u64, (Instant, NodeReportRequest)>,
    leader_since: Option<Instant>,
    /// When leaderships were last rebalanced (the next reports must reflect it first).
    last_leader_balance: Option<Instant>,
    /// Each group's leader as last reported: group → (node, term).
    leaders: HashMap<u64, (u64, u64)>,
    /// The latest leader changes, oldest first (at most [`LEADER_CHANGES_KEPT`]).
    changes: VecDeque<LeaderChange>,
}

/// Leader changes the metadata leader remembers for the console.
pub const LEADER_CHANGES_KEPT: usize = 50;

/// A group's leadership passing from one node to another, as the reports showed it.
#[derive(Debug, Clone)]
pub struct LeaderChange {
    /// When the report showing the new leader arrived (ms since the epoch).
    pub at_ms: i64,
    pub group_id: u64,
    pub from: u64,
    pub to: u64,
    pub term: u64,
}

impl Liveness {
    /// Every node's group reports, as last heard.
    pub(super) fn group_reports(&self) -> HashMap<u64, Vec<GroupReport>> {
        self.seen
            .iter()
            .map(|(n, (_, r))| (*n, r.groups.clone()))
            .collect()
    }

    /// Each group leader's load counters as last reported: (group, leader node, when the
    /// report arrived, records, bytes).
    pub(super) fn leader_loads(&self) -> Vec<(u64, u64, Instant, u64, u64)> {
        self.seen
            .iter()
            .flat_map(|(node, (at, r))| {
                r.groups
                    .iter()
                    .filter(|g| g.leads() && g.group_id != METADATA_GROUP_ID)
                    .map(move |g| (g.group_id, *node, *at, g.records_applied, g.bytes_applied))
            })
            .collect()
    }

    /// The consumer groups' lag, as the nodes last reported it.
    fn consumer_lags(&self) -> super::cluster_view::ReportedLags {
        super::cluster_view::reported_lags(
            self.seen
                .iter()
                .map(|(n, (_, r))| (*n, r.consumer_lags.as_slice())),
        )
    }

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
        let mut leaders = Vec::new();
        // One pass over the groups, each read under its metrics borrow: looking every group
        // up again and cloning its whole metrics cost an idle node most of its CPU once it
        // held thousands of groups.
        let mut led = std::collections::HashSet::new();
        let mut shard_term_max = 0;
        self.groups.for_each_raft(|id, raft| {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            leaders.push((id, m.current_leader.unwrap_or(0)));
            if m.state.is_leader() {
                led.insert(id);
            }
            if id != METADATA_GROUP_ID {
                shard_term_max = shard_term_max.max(m.current_term);
            }
            groups.push(GroupReport {
                group_id: id,
                state: format!("{:?}", m.state),
                role: group_role(m.state) as i32,
                leader_id: m.current_leader.unwrap_or(0),
                applied_index: m.last_applied.map_or(0, |l| l.index),
                has_applied: m.last_applied.is_some(),
                term: m.current_term,
                ..Default::default()
            });
        });
        for (group_id, repair, last) in self.groups.registry().repairs() {
            if let Some(g) = groups.iter_mut().find(|g| g.group_id == group_id) {
                g.repair_until = repair.until;
                g.last_log_index = last.unwrap_or(0);
            }
        }
        // The shards this node leads carry their load (for ON_DEMAND scaling).
        {
            let shards = self.shards.lock().expect("shards lock");
            for g in groups.iter_mut().filter(|g| led.contains(&g.group_id)) {
                if let Some(shared) = shards.get(&g.group_id) {
                    (g.records_applied, g.bytes_applied) = shared.applied_load();
                }
            }
        }
        self.metrics.note_leaders(&leaders);
        self.metrics
            .shard_term_max
            .store(shard_term_max, std::sync::atomic::Ordering::Relaxed);
        // Deleted streams' counters go (not only when something scrapes /metrics): the
        // names first, so no metrics lock is taken under the metadata lock.
        let streams: std::collections::HashSet<String> =
            self.meta.read(|s| s.streams.keys().cloned().collect());
        self.metrics
            .forget_streams_except(|name| streams.contains(name));
        NodeReportRequest {
            node_id: self.id,
            groups,
            traffic: self.metrics.traffic(),
            consumer_lags: self.consumer_lags(&led),
        }
    }

    /// How far each consumer group is behind on the shards this node leads (`led`): records
    /// after its checkpoint and the age of the oldest of them. Finished leases are not behind
    /// and are left out; so is a checkpoint that is not a sequence number.
    fn consumer_lags(&self, led: &std::collections::HashSet<u64>) -> Vec<ConsumerLag> {
        // (stream, group, shard id, group id, checkpoint), copied out of the metadata lock.
        type Wanted = (String, String, String, u64, Option<(u64, u32)>);
        let wanted: Vec<Wanted> = self.meta.read(|s| {
            let mut out = Vec::new();
            for g in s.consumer_groups.values() {
                let Some(stream) = s.streams.get(&g.stream) else {
                    continue;
                };
                for sh in stream.shards.iter().filter(|sh| led.contains(&sh.group_id)) {
                    let Some(lease) = g.leases.get(&sh.shard_id).filter(|l| !l.finished) else {
                        continue;
                    };
                    let checkpoint = match lease.checkpoint.as_deref() {
                        None => None,
                        Some(text) => match SequenceNumber::parse("checkpoint", text) {
                            Ok(seq) => Some((seq.log_index, seq.position)),
                            Err(_) => continue,
                        },
                    };
                    let names = (g.stream.clone(), g.name.clone(), sh.shard_id.clone());
                    out.push((names.0, names.1, names.2, sh.group_id, checkpoint));
                }
            }
            out
        });
        let now = super::now_ms();
        let mut lags = Vec::with_capacity(wanted.len());
        for (stream, group, shard_id, group_id, checkpoint) in wanted {
            let (Some(h), Some(shared)) = (self.groups.get(group_id), self.shard_shared(group_id))
            else {
                continue;
            };
            let behind = shared.behind(checkpoint);
            let arrival = match behind.first_index {
                None => None,
                Some(index) => {
                    match shared.arrival_of(index, || crate::shard::read::arrival_at(&h.log, index))
                    {
                        Ok(arrival) => arrival,
                        Err(e) => {
                            tracing::warn!(group_id, index, error = %e, "cannot read an arrival time");
                            continue;
                        }
                    }
                }
            };
            lags.push(ConsumerLag {
                stream,
                group,
                shard_id,
                records: behind.records,
                millis: arrival.map_or(0, |at| (now - at).max(0) as u64),
            });
        }
        lags
    }

    /// On the metadata leader: remembers a node's report.
    pub fn record_report(&self, report: NodeReportRequest) {
        let mut l = self.liveness.lock().expect("liveness lock");
        let l = &mut *l;
        for g in report.groups.iter().filter(|g| g.leads()) {
            let known = l.leaders.get(&g.group_id).copied();
            if known.is_some_and(|(_, term)| term >= g.term) {
                continue;
            }
            l.leaders.insert(g.group_id, (report.node_id, g.term));
            if let Some((from, _)) = known.filter(|(from, _)| *from != report.node_id) {
                if l.changes.len() == LEADER_CHANGES_KEPT {
                    l.changes.pop_front();
                }
                l.changes.push_back(LeaderChange {
                    at_ms: super::now_ms(),
                    group_id: g.group_id,
                    from,
                    to: report.node_id,
                    term: g.term,
                });
            }
        }
        l.seen.insert(report.node_id, (Instant::now(), report));
    }

    /// Notes that this node leads (or no longer leads) the metadata group.
    fn note_leadership(&self, leading: bool) {
        let mut l = self.liveness.lock().expect("liveness lock");
        match (leading, l.leader_since) {
            (true, None) => {
                l.leader_since = Some(Instant::now());
                l.seen.clear();
                l.leaders.clear();
                l.changes.clear();
            }
            (false, Some(_)) => l.leader_since = None,
            _ => {}
        }
    }

    pub(super) fn silent_for(&self, node: u64) -> Duration {
        self.liveness
            .lock()
            .expect("liveness lock")
            .silent_for(node, Instant::now())
    }

    /// The cluster status (on the metadata leader); with `detail`, also what the console shows
    /// (see [`super::cluster_view`]).
    pub fn cluster_status(&self, detail: bool) -> serde_json::Value {
        let (reports, traffic, changes, traffic_nodes, lags) = {
            let l = self.liveness.lock().expect("liveness lock");
            let reports = l.group_reports();
            let traffic: Vec<_> = match detail {
                true => l
                    .seen
                    .values()
                    .flat_map(|(_, r)| r.traffic.clone())
                    .collect(),
                false => Vec::new(),
            };
            let changes = l.changes.iter().cloned().collect::<Vec<_>>();
            let lags = match detail {
                true => l.consumer_lags(),
                false => Default::default(),
            };
            (reports, traffic, changes, l.seen.len(), lags)
        };
        let up = |n: u64| self.silent_for(n) < DOWN_AFTER;
        // Each group's replicas as reported, so that a shard's are found without a scan of
        // every report (thousands of groups per node).
        let mut by_group: HashMap<u64, Vec<(u64, &GroupReport)>> = HashMap::new();
        for (node, groups) in &reports {
            for g in groups {
                by_group.entry(g.group_id).or_default().push((*node, g));
            }
        }
        self.meta.read(|s| {
            let mut shards_per_node: BTreeMap<u64, usize> = BTreeMap::new();
            let mut leaders_per_node: BTreeMap<u64, usize> = BTreeMap::new();
            let (mut under_replicated, mut under_spread, mut catching_up, mut moving) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            // Replicas rebuilt after damage (they refuse votes until whole again).
            let mut repairing: Vec<serde_json::Value> = by_group
                .get(&METADATA_GROUP_ID)
                .into_iter()
                .flatten()
                .filter(|(_, g)| g.repair_until > 0)
                .map(|(node, g)| json!({"group_id": METADATA_GROUP_ID, "node_id": node, "repair_until": g.repair_until, "last_log_index": g.last_log_index}))
                .collect();
            let zones: BTreeSet<&str> = s.members.values().map(|m| m.zone.as_str()).collect();
            for st in s.streams.values() {
                for sh in st.shards.iter().filter(|sh| sh.status != ShardStatus::Closed) {
                    let replicas_reported = by_group.get(&sh.group_id).map_or(&[][..], Vec::as_slice);
                    let leader_applied = replicas_reported
                        .iter()
                        .find(|(_, g)| g.leads())
                        .map(|(_, g)| g.applied_index);
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
                    for (node, g) in replicas_reported.iter().filter(|(_, g)| g.repair_until > 0) {
                        repairing.push(json!({"stream": st.name, "shard_id": sh.shard_id, "group_id": sh.group_id, "node_id": node, "repair_until": g.repair_until, "last_log_index": g.last_log_index}));
                    }
                    for (node, g) in replicas_reported {
                        if let Some(la) = leader_applied {
                            if !g.leads() && g.applied_index + 100 < la {
                                catching_up.push(json!({"stream": st.name, "shard_id": sh.shard_id, "node_id": node, "applied_index": g.applied_index, "leader_applied_index": la}));
                            }
                        }
                    }
                }
            }
            // A down node leads nothing, whatever its last report said.
            for (node, groups) in reports.iter().filter(|(n, _)| up(**n)) {
                let led = groups.iter().filter(|g| g.group_id != METADATA_GROUP_ID && g.leads()).count();
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
            let mut status = json!({
                "metadata_leader": self.id,
                "nodes": nodes,
                "under_replicated": under_replicated,
                "under_spread": under_spread,
                "catching_up": catching_up,
                "moving": moving,
                "repairing": repairing,
            });
            if detail {
                let leaders = super::cluster_view::leaders(&reports, &up);
                let detail = super::cluster_view::Detail {
                    leaders: &leaders,
                    traffic: &traffic,
                    traffic_nodes,
                    changes: &changes,
                    lags: &lags,
                };
                super::cluster_view::add_detail(&mut status, s, &detail);
            }
            status
        })
    }

    /// Every consumer group with its lag, as the metadata leader sees it (from the nodes'
    /// last reports).
    pub fn consumer_group_lags(&self) -> Vec<super::cluster_view::GroupLag> {
        let (reports, lags) = {
            let l = self.liveness.lock().expect("liveness lock");
            (l.group_reports(), l.consumer_lags())
        };
        let up = |n: u64| self.silent_for(n) < DOWN_AFTER;
        let leaders = super::cluster_view::leaders(&reports, &up);
        let now = super::now_ms();
        self.meta
            .read(|s| super::cluster_view::group_lags(s, &leaders, &lags, now))
    }

    /// On the metadata leader: admits a joining node as a member and a metadata learner.
    pub async fn admit(
        &self,
        req: millrace_proto::internal::JoinClusterRequest,
    ) -> Result<(), ApiError> {
        if req.node_id == 0 || req.zone.is_empty() || req.grpc_addr.is_empty() {
            return Err(ApiError::InvalidArgument(
                "a joining node needs an id, a zone and addresses".into(),
            ));
        }
        let member = crate::metadata::state::Member {
            node_id: req.node_id,
            zone: req.zone,
            grpc_addr: req.grpc_addr.clone(),
            http_addr: req.http_addr,
            decommissioning: false,
        };
        self.propose_meta(&MetaCommand::RegisterNode(member))
            .await?;
        let known = {
            let m = self.meta_group.raft.metrics().borrow_watched().clone();
            let membership = m.membership_config.membership();
            let found = membership
                .voter_ids()
                .chain(membership.learner_ids())
                .any(|id| id == req.node_id);
            found
        };
        if !known {
            self.meta_group
                .raft
                .add_learner(req.node_id, openraft::BasicNode::new(req.grpc_addr), false)
                .await
                .map_err(|e| ApiError::Unavailable(format!("adding a metadata learner: {e}")))?;
            tracing::info!(node_id = req.node_id, "node joined as a metadata learner");
        }
        Ok(())
    }

    /// The cluster status from the metadata leader, wherever it is (`detail`: see
    /// [`Node::cluster_status`]).
    pub async fn fetch_cluster_status(&self, detail: bool) -> Result<serde_json::Value, ApiError> {
        if self.meta_group.raft.is_leader() {
            return Ok(self.cluster_status(detail));
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
            .cluster_status(millrace_proto::internal::ClusterStatusRequest { detail })
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
            let reply = tokio::time::timeout(REPORT_INTERVAL, client.node_report(report)).await;
            // A decommissioned node may be cut off from the metadata before it applies its own
            // removal; the leader's answer tells it.
            if let Ok(Ok(r)) = reply {
                if r.into_inner().not_a_member && node.is_registered() {
                    node.leave.notify_one();
                }
            }
        }
    }
}

/// On the metadata leader: keeps every shard fully replicated on available nodes and the load
/// even (DESIGN decision 6). Replicas on nodes silent for longer than `--dead-node-timeout` or
/// being decommissioned are re-created elsewhere (a zone the shard does not use yet first, then
/// the least loaded node); when nothing needs re-creating and no move is running, one replica
/// moves from the most to the least loaded node (one at a time, so rebalancing never starves
/// client traffic); a decommissioned node with no replica left gives up any metadata vote and
/// leaves the membership.
pub async fn heal_and_balance(node: &Arc<Node>) {
    let leading = node.meta_group.raft.is_leader();
    node.note_leadership(leading);
    if !leading {
        return;
    }
    let timeout = node.config.dead_node_timeout;
    let members = node.members();
    let dead: BTreeSet<u64> = members
        .keys()
        .copied()
        .filter(|n| *n != node.id && node.silent_for(*n) > timeout)
        .collect();
    let leaving: BTreeSet<u64> = members
        .values()
        .filter(|m| m.decommissioning)
        .map(|m| m.node_id)
        .collect();
    let unavailable: BTreeSet<u64> = dead.union(&leaving).copied().collect();
    let plan = node.meta.read(|s| plan_moves(s, &unavailable));
    for cmd in plan {
        match node.propose_meta(&cmd).await {
            Ok(_) => tracing::warn!(?cmd, "moving a replica"),
            Err(e) => tracing::debug!(error = %e, "cannot start a replica move yet"),
        }
    }
    shape_metadata_voters(node, &unavailable).await;
    let idle = node.meta.read(|s| {
        s.streams
            .values()
            .flat_map(|st| &st.shards)
            .all(|sh| sh.moving.is_none())
    });
    if idle {
        balance_leaders(node, &unavailable).await;
    }
    for n in leaving {
        let holds = node.meta.read(|s| {
            s.shards_on(n)
                .any(|(_, sh)| sh.status != ShardStatus::Closed)
        });
        let voter = node.meta_group.raft.voter_ids().any(|v| v == n);
        if !holds && !voter {
            match node
                .propose_meta(&MetaCommand::RemoveMember { node_id: n })
                .await
            {
                Ok(_) => {
                    tracing::info!(node_id = n, "decommissioned node left the cluster");
                    let gone: BTreeSet<u64> = [n].into();
                    let _ = node
                        .meta_group
                        .raft
                        .change_membership(openraft::ChangeMembers::RemoveNodes(gone), false)
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "cannot remove the node yet"),
            }
        }
    }
}

/// Evens out shard leaderships: when a live node leads at least two more shards than another,
/// one of its groups that has a replica on the other node hands its leadership over.
async fn balance_leaders(node: &Arc<Node>, unavailable: &BTreeSet<u64>) {
    let led = |groups: &[GroupReport]| -> Vec<u64> {
        groups
            .iter()
            .filter(|g| g.group_id != METADATA_GROUP_ID && g.leads())
            .map(|g| g.group_id)
            .collect()
    };
    // The shard groups each live node leads, from its last report (read under the lock, at
    // most once per balancing period: copying every report each round cost an idle metadata
    // leader with thousands of groups more than everything else it did).
    let led_by: Vec<(u64, Vec<u64>)> = {
        let mut l = node.liveness.lock().expect("liveness lock");
        if l.last_leader_balance
            .is_some_and(|t| t.elapsed() < 3 * REPORT_INTERVAL)
        {
            return;
        }
        let led_by: Vec<(u64, Vec<u64>)> = l
            .seen
            .iter()
            .filter(|(n, (t, _))| !unavailable.contains(n) && t.elapsed() < DOWN_AFTER)
            .map(|(n, (_, r))| (*n, led(&r.groups)))
            .collect();
        if led_by.len() < 2 {
            return;
        }
        l.last_leader_balance = Some(Instant::now());
        led_by
    };
    let (max_node, max_groups) = led_by
        .iter()
        .max_by_key(|(n, g)| (g.len(), std::cmp::Reverse(*n)))
        .map(|(n, g)| (*n, g.clone()))
        .expect("reports");
    let (min_node, min_count) = led_by
        .iter()
        .map(|(n, g)| (*n, g.len()))
        .min_by_key(|(n, c)| (*c, *n))
        .expect("reports");
    if max_groups.len() < min_count + 2 {
        return;
    }
    let hosts_min = |group: u64| {
        node.meta.read(|s| {
            s.group(group)
                .is_some_and(|(_, sh)| sh.replicas.contains(&min_node))
        })
    };
    // A random candidate: one group whose transfer is refused (a lagging replica) must not
    // hold up the balancing of the others.
    let candidates: Vec<u64> = max_groups.into_iter().filter(|g| hosts_min(*g)).collect();
    if candidates.is_empty() {
        return;
    }
    let group = candidates[rand::random_range(0..candidates.len())];
    let Some(addr) = node.addr_of(max_node) else {
        return;
    };
    if let Ok(mut client) = node.groups.transport().client(&addr) {
        let req = millrace_proto::internal::TransferLeadershipRequest {
            group_id: group,
            to: min_node,
        };
        let reply =
            tokio::time::timeout(Duration::from_secs(2), client.transfer_leadership(req)).await;
        if let Ok(Ok(r)) = reply {
            let r = r.into_inner();
            if !r.error.is_empty() || r.not_leader.is_some() {
                tracing::debug!(group, to = min_node, error = %r.error, "leadership not moved");
                return;
            }
            tracing::info!(
                group,
                from = max_node,
                to = min_node,
                "balancing leaderships"
            );
        }
    }
}

/// The replica moves to start now (pure: a function of the metadata and unavailable nodes).
pub fn plan_moves(
    s: &crate::metadata::state::MetaState,
    unavailable: &BTreeSet<u64>,
) -> Vec<MetaCommand> {
    let available: Vec<&crate::metadata::state::Member> = s
        .members
        .values()
        .filter(|m| !unavailable.contains(&m.node_id))
        .collect();
    let mut load: BTreeMap<u64, usize> = available.iter().map(|m| (m.node_id, 0)).collect();
    let open = || {
        s.streams
            .values()
            .flat_map(|st| st.shards.iter().map(move |sh| (st, sh)))
            .filter(|(_, sh)| sh.status != ShardStatus::Closed)
    };
    for (_, sh) in open() {
        for r in sh.replicas.iter().chain(sh.moving.iter().map(|(_, to)| to)) {
            if let Some(l) = load.get_mut(r) {
                *l += 1;
            }
        }
    }
    let zone_of = |n: &u64| s.members.get(n).map(|m| m.zone.as_str());
    let best_target =
        |sh: &crate::metadata::state::ShardMeta, from: u64, load: &BTreeMap<u64, usize>| {
            let used: BTreeSet<&str> = sh
                .replicas
                .iter()
                .filter(|r| **r != from)
                .filter_map(zone_of)
                .collect();
            available
                .iter()
                .filter(|m| !sh.replicas.contains(&m.node_id))
                .min_by_key(|m| (used.contains(m.zone.as_str()), load[&m.node_id], m.node_id))
                .map(|m| m.node_id)
        };
    let mut out = Vec::new();
    for (st, sh) in open().filter(|(_, sh)| sh.moving.is_none()) {
        let Some(from) = sh
            .replicas
            .iter()
            .copied()
            .find(|r| unavailable.contains(r))
        else {
            continue;
        };
        if let Some(to) = best_target(sh, from, &load) {
            *load.entry(to).or_default() += 1;
            out.push(MetaCommand::MoveReplica {
                name: st.name.clone(),
                shard_id: sh.shard_id.clone(),
                from,
                to,
            });
        }
    }
    let moving = open().any(|(_, sh)| sh.moving.is_some());
    if !out.is_empty() || moving || load.len() < 2 {
        return out;
    }
    // Balance: one move from the most to the least loaded available node, keeping zones apart.
    let (&max_node, &max) = load
        .iter()
        .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
        .expect("two nodes");
    let (&min_node, &min) = load
        .iter()
        .min_by_key(|(n, l)| (**l, **n))
        .expect("two nodes");
    if max < min + 2 {
        return out;
    }
    for (st, sh) in
        open().filter(|(_, sh)| sh.replicas.contains(&max_node) && !sh.replicas.contains(&min_node))
    {
        let others: BTreeSet<&str> = sh
            .replicas
            .iter()
            .filter(|r| **r != max_node)
            .filter_map(zone_of)
            .collect();
        if zone_of(&min_node).is_some_and(|z| !others.contains(z)) {
            out.push(MetaCommand::MoveReplica {
                name: st.name.clone(),
                shard_id: sh.shard_id.clone(),
                from: max_node,
                to: min_node,
            });
            break;
        }
    }
    out
}

/// How many metadata voters a cluster with `members` eligible members should have: 3, or 5 once
/// there are five members (all of them below three).
pub fn metadata_voter_target(members: usize) -> usize {
    match members {
        0..=2 => members,
        3 | 4 => 3,
        _ => 5,
    }
}

/// The metadata voters a cluster should have: `target` members spread over as many zones as
/// possible, keeping current voters where they fit (so a healthy set never churns), then the
/// lowest node ids. `keep` are current voters that may stay; `add` are members that may become
/// voters. Returns fewer than `target` only when there are not enough candidates.
pub fn choose_metadata_voters(
    target: usize,
    keep: &BTreeSet<u64>,
    add: &BTreeSet<u64>,
    zone_of: &BTreeMap<u64, String>,
) -> BTreeSet<u64> {
    // Candidates per zone, current voters first, then by id.
    let mut by_zone: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for n in keep.iter().chain(add.iter().filter(|n| !keep.contains(n))) {
        if let Some(z) = zone_of.get(n) {
            by_zone.entry(z.as_str()).or_default().push(*n);
        }
    }
    for list in by_zone.values_mut() {
        list.sort_by_key(|n| (!keep.contains(n), *n));
        list.reverse(); // pop() takes the best
    }
    // Zones with a current voter first, so a spread set stays as it is.
    let mut zones: Vec<&str> = by_zone.keys().copied().collect();
    zones.sort_by_key(|z| {
        let best = by_zone[z].last().copied();
        (!best.is_some_and(|b| keep.contains(&b)), best)
    });
    let mut chosen = BTreeSet::new();
    while chosen.len() < target {
        let before = chosen.len();
        for z in &zones {
            if chosen.len() == target {
                break;
            }
            if let Some(n) = by_zone.get_mut(z).and_then(Vec::pop) {
                chosen.insert(n);
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    chosen
}

/// Keeps the metadata group at 3 or 5 voters spread over zones, the other members learners:
/// demotes extra voters (e.g. when `--peers` lists more nodes), promotes learners when members
/// join, and replaces voters that are dead or leaving with live members, preferring zones the
/// remaining voters do not cover.
async fn shape_metadata_voters(node: &Arc<Node>, unavailable: &BTreeSet<u64>) {
    let m = node.meta_group.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership().clone();
    if m.membership_config.membership().get_joint_config().len() > 1 {
        return; // a change is in progress
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    let members = node.members();
    // While initial peers are still registering, their zones are unknown: wait.
    if voters
        .iter()
        .any(|v| !members.contains_key(v) && node.config.peers.contains_key(v))
    {
        return;
    }
    let zone_of: BTreeMap<u64, String> = members
        .values()
        .map(|m| (m.node_id, m.zone.clone()))
        .collect();
    let eligible = |n: &u64| members.contains_key(n) && !unavailable.contains(n);
    let live = |n: &u64| *n == node.id || node.silent_for(*n) < DOWN_AFTER;
    let keep: BTreeSet<u64> = voters.iter().copied().filter(eligible).collect();
    let add: BTreeSet<u64> = learners
        .iter()
        .copied()
        .filter(|n| eligible(n) && live(n))
        .collect();
    let target = metadata_voter_target(members.keys().filter(|n| eligible(n)).count());
    let desired = choose_metadata_voters(target, &keep, &add, &zone_of);
    // Only a full set replaces the current one: with too few candidates, keep what there is
    // (removing a dead voter without a replacement would not make the group any safer).
    if desired == voters || desired.len() < target || desired.is_empty() {
        return;
    }
    match node
        .meta_group
        .raft
        .change_membership(desired.clone(), true)
        .await
    {
        Ok(_) => tracing::warn!(?voters, ?desired, "changed the metadata voters"),
        Err(e) => tracing::debug!(error = %e, "cannot change the metadata voters yet"),
    }
}

/// A replica's role as reported to the metadata leader.
fn group_role(state: openraft::ServerState) -> millrace_proto::internal::GroupRole {
    use millrace_proto::internal::GroupRole;
    match state {
        openraft::ServerState::Leader => GroupRole::Leader,
        openraft::ServerState::Follower => GroupRole::Follower,
        openraft::ServerState::Learner => GroupRole::Learner,
        openraft::ServerState::Candidate => GroupRole::Candidate,
        openraft::ServerState::Shutdown => GroupRole::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(z: &[(u64, &str)]) -> BTreeMap<u64, String> {
        z.iter().map(|(n, z)| (*n, z.to_string())).collect()
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn voter_targets_are_three_or_five() {
        let targets: Vec<usize> = (0..8).map(metadata_voter_target).collect();
        assert_eq!(targets, vec![0, 1, 2, 3, 3, 5, 5, 5]);
    }

    #[test]
    fn extra_voters_are_demoted_keeping_the_zone_spread() {
        // Four initial voters in zones a, b, c, d: three stay, one per zone, lowest ids.
        let z = zones(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
        assert_eq!(
            choose_metadata_voters(3, &set(&[1, 2, 3, 4]), &set(&[]), &z),
            set(&[1, 2, 3])
        );
        // Six nodes in three zones, two each: five voters cover all three zones.
        let z = zones(&[(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]);
        let chosen = choose_metadata_voters(5, &set(&[1, 2, 3, 4, 5, 6]), &set(&[]), &z);
        assert_eq!(chosen.len(), 5);
        let covered: BTreeSet<&String> = chosen.iter().map(|n| &z[n]).collect();
        assert_eq!(covered.len(), 3);
    }

    #[test]
    fn a_lost_voter_is_replaced_from_an_uncovered_zone_and_healthy_sets_stay() {
        let z = zones(&[(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")]);
        // Voter 2 (zone b) is gone: 5 (zone b) replaces it rather than 4 (zone a).
        assert_eq!(
            choose_metadata_voters(3, &set(&[1, 3]), &set(&[4, 5, 6]), &z),
            set(&[1, 3, 5])
        );
        // A healthy, spread set is kept even when lower ids are learners.
        let z = zones(&[(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")]);
        assert_eq!(
            choose_metadata_voters(3, &set(&[4, 5, 6]), &set(&[1, 2, 3]), &z),
            set(&[4, 5, 6])
        );
        // Two voters in one zone while another zone has a learner: the set spreads.
        let z = zones(&[(1, "a"), (2, "a"), (3, "b"), (4, "c")]);
        assert_eq!(
            choose_metadata_voters(3, &set(&[1, 2, 3]), &set(&[4]), &z),
            set(&[1, 3, 4])
        );
        // Too few candidates: fewer than the target come back.
        assert_eq!(
            choose_metadata_voters(3, &set(&[1]), &set(&[]), &z),
            set(&[1])
        );
    }
}
