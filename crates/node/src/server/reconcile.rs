//! Background loops of a node: bootstrap the metadata group, register this node, keep the
//! local shard replicas in line with the metadata, and activate newly created streams.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use millrace_raft::SnapshotMode;
use openraft::BasicNode;

use super::node::Node;
use super::routing::Appended;
use crate::metadata::state::{
    Member, MetaCommand, MetaResponse, ShardStatus, StreamStatus, METADATA_GROUP_ID,
};
use crate::shard::machine::{ShardMachine, ShardShared};
use crate::shard::read::ReadBounds;

/// A shard group and its replica nodes.
type GroupReplicas = (u64, Vec<u64>);

/// How often the reconcile loop wakes without a metadata change (to retry what failed).
const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// A settled reconcile pass is repeated this often even without metadata changes (a safety net).
const RECONCILE_FULL_PASS_EVERY: Duration = Duration::from_secs(10);
/// Replica opens a reconcile pass runs at once.
const GROUP_OPENS_IN_FLIGHT: usize = 16;
/// Group initializations (each followed by the group's first election) a pass runs at once.
/// Kept at one: first elections then reach peers one group at a time. (With 16, a 100-shard
/// stream once got no leaders in 10 minutes; the cause turned out to be concurrent sled
/// flushes spinning, since fixed in `storage/src/meta.rs`, so more may now be safe — unmeasured.)
const GROUP_INITS_IN_FLIGHT: usize = 1;
/// How long a reconcile pass waits for the metadata to catch up with its leader before it
/// deletes replicas no stream places here (else they are kept until a later pass).
const ORPHAN_SYNC_WAIT: Duration = Duration::from_secs(5);
/// A group's first replica initializes it as soon as it opened its replica. Each other replica
/// does so too if the group is still uninitialized this long (times its position in the
/// placement) after it opened its own: the first replica's node may have died before it
/// initialized the group, which would otherwise stay without a leader (its stream CREATING, a
/// move of its replicas stuck) until that node came back (seen with the jepsen membership
/// nemesis). Safe because every replica initializes with the placement the metadata gives, the
/// same on all of them while the group has never had a leader (only its leader changes a
/// placement), and openraft allows initializing several replicas with the same membership.
/// Long enough that a busy first replica (creating a 1,000-shard stream initializes its
/// groups one at a time) is never overtaken.
const INIT_FALLBACK_AFTER: Duration = Duration::from_secs(30);
/// Leader probes the activation of a new stream runs at once.
const ACTIVATION_PROBES_IN_FLIGHT: usize = 32;

/// Initializes the metadata group on the lowest-numbered initial peer (once per cluster).
pub async fn bootstrap(node: &Arc<Node>) {
    let Some(first) = node.config.peers.keys().next().copied() else {
        return;
    };
    if first != node.id {
        return;
    }
    match node.meta_group.raft.is_initialized().await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot read metadata group state");
            return;
        }
    }
    let voters: BTreeMap<u64, BasicNode> = node
        .config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
        .collect();
    match node.meta_group.raft.initialize(voters).await {
        Ok(()) => tracing::info!(peers = ?node.config.peers, "initialized the metadata group"),
        Err(e) => tracing::info!(error = %e, "metadata group already initialized"),
    }
}

/// Registers this node (zone, addresses) in the metadata, retrying until it succeeds. A node
/// started with `--join` asks the metadata leader (found through the seed) to admit it.
pub async fn register(node: Arc<Node>) {
    let me = Member {
        node_id: node.id,
        zone: node.config.zone.clone(),
        grpc_addr: node.config.advertise_grpc_addr.clone(),
        http_addr: node.config.advertise_http_addr.clone(),
        decommissioning: false,
    };
    let mut target = node.config.join.clone();
    loop {
        let current = node.meta.read(|s| s.members.get(&node.id).cloned());
        let same = current.is_some_and(|c| {
            c.zone == me.zone && c.grpc_addr == me.grpc_addr && c.http_addr == me.http_addr
        });
        if same {
            node.registered.store(true, Ordering::Relaxed);
            tracing::info!(zone = %me.zone, "registered in the cluster metadata");
            return;
        }
        match &target {
            Some(addr) => match join_via(&node, addr, &me).await {
                Ok(None) => {}
                Ok(Some(leader_addr)) => target = Some(leader_addr),
                Err(e) => {
                    tracing::debug!(error = %e, seed = %addr, "join not possible yet; retrying");
                    target = node.config.join.clone();
                }
            },
            None => match node
                .propose_meta(&MetaCommand::RegisterNode(me.clone()))
                .await
            {
                Ok(MetaResponse::Ok) => {}
                Ok(other) => tracing::warn!(?other, "registration refused; retrying"),
                Err(e) => tracing::debug!(error = %e, "registration not yet possible; retrying"),
            },
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asks `addr` to admit this node; `Ok(Some(leader))` when another node leads the metadata.
async fn join_via(node: &Node, addr: &str, me: &Member) -> Result<Option<String>, String> {
    let mut client = node.groups.transport().client(addr)?;
    let reply = client
        .join_cluster(millrace_proto::internal::JoinClusterRequest {
            node_id: me.node_id,
            zone: me.zone.clone(),
            grpc_addr: me.grpc_addr.clone(),
            http_addr: me.http_addr.clone(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    if let Some(nl) = reply.not_leader {
        return match nl.leader_grpc_addr.is_empty() {
            true => Err("the seed knows no metadata leader".into()),
            false => Ok(Some(nl.leader_grpc_addr)),
        };
    }
    if !reply.error.is_empty() {
        return Err(reply.error);
    }
    Ok(None)
}

/// Keeps local shard replicas in line with the metadata: opens the replicas placed here and
/// initializes new groups on their first replica.
///
/// A pass opens every missing replica first (several at once) and only then initializes the
/// groups this node leads, one at a time, so that by the time the first elections run the peers
/// (doing the same pass) have mostly opened their replicas too.
pub async fn reconcile_groups(node: Arc<Node>) {
    let mut changes = node.meta.subscribe();
    // Groups this node must initialize (not before the instant given) whose initialization
    // has not succeeded yet.
    let mut to_initialize: BTreeMap<u64, (Vec<u64>, Instant)> = BTreeMap::new();
    let mut done: Option<(u64, Instant)> = None;
    loop {
        // A pass reads every placed shard and lists every stored group (sled keys and the
        // groups directory): with 10,000 groups that cost an idle node 3% of a core every
        // 500 ms. Nothing it decides changes until the metadata does, so a pass that left
        // nothing to retry is repeated only after a metadata change, or as a safety net.
        let version = node.meta.version();
        let due =
            done.is_none_or(|(v, at)| v != version || at.elapsed() >= RECONCILE_FULL_PASS_EVERY);
        if due {
            let settled = reconcile_pass(&node, &mut to_initialize).await;
            done = settled.then(|| (version, Instant::now()));
        }
        let _ = tokio::time::timeout(RECONCILE_INTERVAL, changes.changed()).await;
    }
}

/// One reconcile pass: opens the replicas placed here, initializes new groups this node
/// starts, deletes the replicas of deleted streams. Returns whether it settled everything
/// (nothing failed or waits for a retry).
async fn reconcile_pass(
    node: &Arc<Node>,
    to_initialize: &mut BTreeMap<u64, (Vec<u64>, Instant)>,
) -> bool {
    let mut settled = true;
    // The open groups once per pass, and replica lists copied only for the groups to
    // open: a lookup (and handle clone) per group every pass was an idle cost that grew
    // with the number of groups.
    let open: HashSet<u64> = node.groups.group_ids().into_iter().collect();
    let (wanted_ids, missing, next_group_id): (HashSet<u64>, Vec<GroupReplicas>, u64) =
        node.meta.read(|s| {
            let wanted_ids = wanted_here(s, node.id);
            let missing = s
                .shards_on(node.id)
                .filter(|(st, sh)| {
                    st.status != StreamStatus::Deleting && !open.contains(&sh.group_id)
                })
                .map(|(_, sh)| (sh.group_id, sh.replicas.clone()))
                .collect();
            (wanted_ids, missing, s.next_group_id)
        });
    let opened: Vec<(u64, Vec<u64>, Result<(), String>)> = futures::stream::iter(missing)
        .map(|(group_id, replicas)| {
            let node = Arc::clone(node);
            async move {
                let r = open_replica(&node, group_id, &replicas).await;
                (group_id, replicas, r)
            }
        })
        .buffer_unordered(GROUP_OPENS_IN_FLIGHT)
        .collect()
        .await;
    for (group_id, replicas, r) in opened {
        match r {
            Ok(()) => {
                if let Some(at) = initialize_not_before(&replicas, node.id, Instant::now()) {
                    to_initialize.insert(group_id, (replicas, at));
                }
            }
            Err(e) => {
                settled = false;
                tracing::error!(group_id, error = %e, "cannot open shard replica")
            }
        }
    }
    to_initialize.retain(|g, _| wanted_ids.contains(g));
    let now = Instant::now();
    let due: Vec<GroupReplicas> = to_initialize
        .iter()
        .filter(|(_, (_, at))| *at <= now)
        .map(|(g, (replicas, _))| (*g, replicas.clone()))
        .collect();
    let initialized: Vec<(u64, Result<(), String>)> = futures::stream::iter(due)
        .map(|(group_id, replicas)| {
            let node = Arc::clone(node);
            async move { (group_id, initialize_group(&node, group_id, &replicas).await) }
        })
        .buffer_unordered(GROUP_INITS_IN_FLIGHT)
        .collect()
        .await;
    for (group_id, r) in initialized {
        match r {
            Ok(()) => {
                to_initialize.remove(&group_id);
            }
            Err(e) => tracing::warn!(group_id, error = %e, "cannot initialize shard group yet"),
        }
    }
    // Group ids are never reused, so a replica of an allocated group that no live stream
    // places here belongs to a deleted stream or was moved away. That holds only on metadata
    // caught up with the leader's commit: just after a restart the local metadata can be a
    // stale prefix, in which a group moved onto this node since reads as placed elsewhere, and
    // deleting it wiped a voter's log and vote (found by the jepsen membership nemesis, as
    // replicas that disagreed on a committed entry). So orphans are looked for on the local
    // view, and deleted only if still orphans once the metadata has caught up.
    let stored = node.groups.stored_group_ids();
    let orphans = |wanted: &HashSet<u64>, next_group_id: u64| -> Vec<u64> {
        stored
            .iter()
            .copied()
            .filter(|g| *g != METADATA_GROUP_ID && *g < next_group_id && !wanted.contains(g))
            .collect()
    };
    if !orphans(&wanted_ids, next_group_id).is_empty() {
        match node.sync_meta_within(ORPHAN_SYNC_WAIT).await {
            Ok(()) => {
                let (wanted, next) = node
                    .meta
                    .read(|s| (wanted_here(s, node.id), s.next_group_id));
                for group_id in orphans(&wanted, next) {
                    match node.groups.remove_group(group_id).await {
                        Ok(()) => {
                            node.shards.lock().expect("shards lock").remove(&group_id);
                            node.set_leader_hint(group_id, None);
                            tracing::info!(
                                group_id,
                                "deleted a replica no stream places here (its stream deleted, \
                                 or the replica moved away)"
                            );
                        }
                        Err(e) => {
                            settled = false;
                            tracing::error!(group_id, error = %e, "cannot delete replica")
                        }
                    }
                }
            }
            Err(e) => {
                settled = false;
                tracing::debug!(error = %e, "replicas no stream places here are kept until the metadata has caught up");
            }
        }
    }
    let removed = node.is_registered() && node.meta.read(|s| !s.members.contains_key(&node.id));
    if removed {
        node.leave.notify_one();
    }
    // A fallback initialization not yet due leaves the pass settled: the safety-net pass (every
    // RECONCILE_FULL_PASS_EVERY) picks it up, instead of a full pass every RECONCILE_INTERVAL
    // meanwhile (with 10,000 groups, 3 % of a core for up to a minute after a stream is made).
    let now = Instant::now();
    settled && to_initialize.values().all(|(_, at)| *at > now)
}

/// The shard groups the metadata places on node `me` (replicas and moves in), but those of
/// streams being deleted.
fn wanted_here(s: &crate::metadata::state::MetaState, me: u64) -> HashSet<u64> {
    s.shards_on(me)
        .filter(|(st, _)| st.status != StreamStatus::Deleting)
        .map(|(_, sh)| sh.group_id)
        .collect()
}

/// When this node (`me`) should initialize a group placed on `replicas`, its replica opened
/// `now`: at once on the first replica, [`INIT_FALLBACK_AFTER`] times its position on the
/// others, never on a node the placement does not list (a replica being moved in joins the
/// group its leader leads).
fn initialize_not_before(replicas: &[u64], me: u64, now: Instant) -> Option<Instant> {
    let position = replicas.iter().position(|r| *r == me)?;
    Some(now + INIT_FALLBACK_AFTER * position as u32)
}

/// Opens (creating if new) the local replica of a shard group, quiet from the start.
/// `replicas`: where the metadata places the group (restates a snapshot's lost membership).
async fn open_replica(node: &Arc<Node>, group_id: u64, replicas: &[u64]) -> Result<(), String> {
    let shared = Arc::new(ShardShared::new());
    // Only a complete placement can stand in for a lost membership.
    let placed: BTreeMap<u64, BasicNode> = replicas
        .iter()
        .map(|r| Some((*r, BasicNode::new(node.addr_of(*r)?))))
        .collect::<Option<_>>()
        .unwrap_or_default();
    let handle = node
        .groups
        .open_group(
            group_id,
            Box::new(ShardMachine::new(shared.clone())),
            SnapshotMode::OnRequest,
            &placed,
        )
        .await
        .map_err(|e| e.to_string())?;
    node.shards
        .lock()
        .expect("shards lock")
        .insert(group_id, shared);
    super::quiesce::quiet_group(&handle.raft);
    Ok(())
}

/// Writes the initial membership (once) and elects the first leader: on the group's first
/// replica, or on another when the group is still uninitialized long after (see
/// [`INIT_FALLBACK_AFTER`]). A group already initialized (e.g. before a restart, or by a
/// leader that reached this replica) is left alone.
async fn initialize_group(node: &Arc<Node>, group_id: u64, replicas: &[u64]) -> Result<(), String> {
    let handle = node
        .groups
        .get(group_id)
        .ok_or_else(|| format!("group {group_id} is not open"))?;
    // A replica rebuilt after damage joins the group its leader leads; it starts nothing.
    if node.groups.registry().is_repairing(group_id) {
        return Ok(());
    }
    if handle
        .raft
        .is_initialized()
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    let mut voters = BTreeMap::new();
    for r in replicas {
        let addr = node
            .addr_of(*r)
            .ok_or_else(|| format!("no address for node {r}"))?;
        voters.insert(*r, BasicNode::new(addr));
    }
    handle
        .raft
        .initialize(voters)
        .await
        .map_err(|e| e.to_string())?;
    if replicas.first() == Some(&node.id) {
        tracing::info!(group_id, ?replicas, "initialized shard group");
    } else {
        tracing::warn!(
            group_id,
            ?replicas,
            "shard group still uninitialized long after its replica opened: initialized it in \
             place of its first replica"
        );
    }
    // Election timers are off for shard groups: elect the first leader explicitly (if a peer
    // has not opened its replica yet, the quiet-group watcher elects again shortly).
    node.metrics
        .elections_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = handle.raft.trigger().elect(false).await;
    Ok(())
}

/// On the metadata leader: activates streams whose shards all have leaders and drops the
/// records of deleted streams (their replicas are then deleted by every node).
pub async fn leader_loop(node: Arc<Node>) {
    let mut confirmed = HashSet::new();
    loop {
        super::cluster::heal_and_balance(&node).await;
        if node.meta_group.raft.is_leader() {
            if node.meta.cluster_secret().is_none() {
                let secret: [u8; 32] = rand::random();
                let cmd = MetaCommand::InitClusterSecret {
                    secret_hex: crate::metadata::access::Secret(hex::encode(secret)),
                };
                if let Err(e) = node.propose_meta(&cmd).await {
                    tracing::warn!(error = %e, "cannot store the cluster secret yet");
                }
            }
            activate_streams(&node, &mut confirmed).await;
            complete_reshards(&node).await;
            drive_moves(&node).await;
            remove_deleted_streams(&node).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stream's shards in one reshard state: (shard id, group id, replicas).
type ShardGroups = Vec<(String, u64, Vec<u64>)>;

/// Drives reshards (DESIGN decision 7): seal every closing parent at its leader, wait until
/// every pending child has a leader, then record the seals, which closes the parents and opens
/// the children.
async fn complete_reshards(node: &Arc<Node>) {
    let work: Vec<(String, ShardGroups, ShardGroups)> = node.meta.read(|s| {
        s.streams
            .values()
            .filter(|st| st.status == StreamStatus::Updating)
            .map(|st| {
                let pick = |status: ShardStatus| -> ShardGroups {
                    st.shards
                        .iter()
                        .filter(|sh| sh.status == status)
                        .map(|sh| (sh.shard_id.clone(), sh.group_id, sh.replicas.clone()))
                        .collect()
                };
                (
                    st.name.clone(),
                    pick(ShardStatus::Closing),
                    pick(ShardStatus::Pending),
                )
            })
            .collect()
    });
    'streams: for (name, closing, pending) in work {
        let mut seals = Vec::new();
        for (shard_id, group_id, replicas) in closing {
            let seal =
                tokio::time::timeout(Duration::from_secs(5), node.shard_seal(group_id, &replicas))
                    .await;
            match seal {
                Ok(Ok(Appended::At { index, .. })) => seals.push((shard_id, index)),
                other => {
                    tracing::debug!(stream = %name, %shard_id, ?other, "seal not done yet");
                    continue 'streams;
                }
            }
        }
        for (_, group_id, replicas) in &pending {
            let probe = node.shard_read(*group_id, replicas, ReadBounds::probe(None));
            if !matches!(
                tokio::time::timeout(Duration::from_secs(2), probe).await,
                Ok(Ok(_))
            ) {
                continue 'streams;
            }
        }
        let cmd = MetaCommand::CompleteReshard {
            name: name.clone(),
            seals,
            timestamp_ms: super::now_ms(),
        };
        match node.propose_meta(&cmd).await {
            Ok(_) => {
                tracing::info!(stream = %name, "reshard complete: parents closed, children open")
            }
            Err(e) => tracing::warn!(stream = %name, error = %e, "cannot complete reshard yet"),
        }
    }
}

/// Drives replica moves: the shard leader adds the new node as a learner (it catches up, through
/// the retention snapshot if needed), promotes it and drops the old voter; then the metadata
/// records the new replica set, and the old node deletes its replica.
async fn drive_moves(node: &Arc<Node>) {
    type Move = (String, String, u64, Vec<u64>, (u64, u64));
    let moves: Vec<Move> = node.meta.read(|s| {
        s.streams
            .values()
            .flat_map(|st| {
                st.shards.iter().filter_map(move |sh| {
                    let m = sh.moving?;
                    Some((
                        st.name.clone(),
                        sh.shard_id.clone(),
                        sh.group_id,
                        sh.replicas.clone(),
                        m,
                    ))
                })
            })
            .collect()
    });
    for (name, shard_id, group_id, replicas, (from, to)) in moves {
        let Some(addr) = node.addr_of(to) else {
            continue;
        };
        let voters: Vec<u64> = replicas
            .iter()
            .copied()
            .filter(|r| *r != from)
            .chain([to])
            .collect();
        let changed = node.shard_membership(group_id, &replicas, to, &addr, &voters);
        match tokio::time::timeout(Duration::from_secs(30), changed).await {
            Ok(Ok(())) => {
                let cmd = MetaCommand::CompleteMove {
                    name: name.clone(),
                    shard_id: shard_id.clone(),
                    from,
                    to,
                };
                match node.propose_meta(&cmd).await {
                    Ok(_) => tracing::info!(stream = %name, %shard_id, from, to, "replica moved"),
                    Err(e) => {
                        tracing::warn!(stream = %name, %shard_id, error = %e, "cannot record the move yet")
                    }
                }
            }
            other => {
                tracing::debug!(stream = %name, %shard_id, ?other, "replica move not done yet")
            }
        }
    }
}

async fn remove_deleted_streams(node: &Arc<Node>) {
    let deleting: Vec<String> = node.meta.read(|s| {
        s.streams
            .values()
            .filter(|st| st.status == StreamStatus::Deleting)
            .map(|st| st.name.clone())
            .collect()
    });
    for name in deleting {
        match node
            .propose_meta(&MetaCommand::RemoveStream { name: name.clone() })
            .await
        {
            Ok(_) => tracing::info!(stream = %name, "stream deleted"),
            Err(e) => {
                tracing::warn!(stream = %name, error = %e, "cannot finish deleting stream yet")
            }
        }
    }
}

/// On the metadata leader: a CREATING stream becomes ACTIVE once every shard has had a leader
/// that answered a linearizable probe. Shards confirmed in an earlier pass are not probed again
/// (`confirmed`), and probes run several at once, so a 1,000-shard stream needs about 1,000
/// probes in all rather than a full sequential pass after every miss.
async fn activate_streams(node: &Arc<Node>, confirmed: &mut HashSet<u64>) {
    let creating: Vec<(String, Vec<GroupReplicas>)> = node.meta.read(|s| {
        s.streams
            .values()
            .filter(|st| st.status == StreamStatus::Creating)
            .map(|st| {
                (
                    st.name.clone(),
                    st.shards
                        .iter()
                        .map(|sh| (sh.group_id, sh.replicas.clone()))
                        .collect(),
                )
            })
            .collect()
    });
    let creating_ids: HashSet<u64> = creating
        .iter()
        .flat_map(|(_, shards)| shards.iter().map(|(g, _)| *g))
        .collect();
    confirmed.retain(|g| creating_ids.contains(g));
    for (name, shards) in creating {
        let unconfirmed: Vec<GroupReplicas> = shards
            .iter()
            .filter(|(g, _)| !confirmed.contains(g))
            .cloned()
            .collect();
        let results: Vec<(u64, bool)> = futures::stream::iter(unconfirmed)
            .map(|(group_id, replicas)| async move {
                let probe = node.shard_read(group_id, &replicas, ReadBounds::probe(None));
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(2), probe).await,
                    Ok(Ok(_))
                );
                (group_id, ok)
            })
            .buffer_unordered(ACTIVATION_PROBES_IN_FLIGHT)
            .collect()
            .await;
        confirmed.extend(results.iter().filter(|(_, ok)| *ok).map(|(g, _)| *g));
        let waiting = shards
            .iter()
            .filter(|(g, _)| !confirmed.contains(g))
            .count();
        if waiting > 0 {
            tracing::debug!(stream = %name, waiting, "shards without a leader yet");
            continue;
        }
        let cmd = MetaCommand::SetStreamStatus {
            name: name.clone(),
            status: StreamStatus::Active,
        };
        match node.propose_meta(&cmd).await {
            Ok(_) => tracing::info!(stream = %name, "stream is ACTIVE"),
            Err(e) => tracing::warn!(stream = %name, error = %e, "cannot activate stream yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_replica_initializes_at_once_the_others_later_in_turn_and_others_never() {
        let now = Instant::now();
        assert_eq!(initialize_not_before(&[3, 1, 2], 3, now), Some(now));
        assert_eq!(
            initialize_not_before(&[3, 1, 2], 1, now),
            Some(now + INIT_FALLBACK_AFTER)
        );
        assert_eq!(
            initialize_not_before(&[3, 1, 2], 2, now),
            Some(now + 2 * INIT_FALLBACK_AFTER)
        );
        // A replica being moved in is not in the placement yet: it never initializes.
        assert_eq!(initialize_not_before(&[3, 1, 2], 4, now), None);
    }
}
