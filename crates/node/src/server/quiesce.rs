//! Quiet shard groups: thousands of idle shards must cost little (issue: many shards).
//!
//! Shard groups run with openraft's periodic heartbeats and election timers *off*. Instead:
//! * every node pings each peer node (one call per peer, whatever the number of groups);
//! * after a write commits, the leader sends one heartbeat for the group (coalesced every 100 ms),
//!   so followers learn the commit point and apply;
//! * a follower whose leader's node has not answered pings for a while, or that knows no leader,
//!   first nudges the group's replicas (a live leader answers with a heartbeat) and only then
//!   starts a pre-vote election.
//!
//! Raft's safety does not depend on heartbeats; only how fast a dead leader is replaced does.
//! The metadata group keeps ordinary heartbeats.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use super::node::Node;
use crate::metadata::state::METADATA_GROUP_ID;

/// How often peers are pinged and quiet groups checked.
const TICK: Duration = Duration::from_millis(250);
/// A leader whose node has not answered pings for this long (plus per-group jitter) is replaced.
const LEADER_SILENT_AFTER: Duration = Duration::from_millis(1500);
/// Nudges sent before a follower that knows no leader starts an election.
const NUDGES_BEFORE_ELECTION: u32 = 4;
/// While every peer answers pings and no group is being nudged, the local groups' leaders are
/// checked every this many ticks (1 s) instead of every tick. A dead leader's node stops
/// answering first, which brings back the check every tick well before any group may call its
/// leader silent (`LEADER_SILENT_AFTER`); what waits longer is only a group that lost its leader
/// while every node stayed up (a refused transfer, a new group), found within 1 s instead of
/// 250 ms. At 10,000 groups a node spent 5% of a core on the check every tick.
const CALM_CHECK_EVERY_TICKS: u32 = 4;

/// Liveness of peer nodes and groups with commits to announce.
#[derive(Default)]
pub struct Quiet {
    peer_seen: HashMap<u64, Instant>,
    dirty: HashSet<u64>,
    /// Per group: nudges sent without finding a leader, and when it last elected.
    nudges: HashMap<u64, u32>,
    last_election: HashMap<u64, Instant>,
}

impl Node {
    /// Marks a group whose leader committed something followers should learn about.
    pub fn announce_commit(&self, group_id: u64) {
        self.quiet
            .lock()
            .expect("quiet lock")
            .dirty
            .insert(group_id);
    }

    /// A peer node answered (or pinged us).
    pub fn peer_alive(&self, node_id: u64) {
        self.quiet
            .lock()
            .expect("quiet lock")
            .peer_seen
            .insert(node_id, Instant::now());
    }

    /// Each peer member and whether it answered this node's pings within
    /// `LEADER_SILENT_AFTER`.
    pub fn peers_up(&self) -> Vec<(u64, bool)> {
        let members: Vec<u64> = self.meta.read(|s| s.members.keys().copied().collect());
        let q = self.quiet.lock().expect("quiet lock");
        let now = Instant::now();
        members
            .into_iter()
            .filter(|m| *m != self.id)
            .map(|m| {
                let fresh = q
                    .peer_seen
                    .get(&m)
                    .is_some_and(|t| now.duration_since(*t) < LEADER_SILENT_AFTER);
                (m, fresh)
            })
            .collect()
    }

    /// `from` knows no leader for `groups`: heartbeats for those this node leads. Where this
    /// replica still takes `from` for the leader, `from` has lost that leadership (restarted)
    /// without anyone electing another: a replica that cannot stand itself (one being repaired
    /// after damage) would otherwise wait for ever, since `from` answers pings. Such a group
    /// gets a pre-vote election here, at most once per silence window (jittered).
    pub async fn nudge(&self, from: u64, groups: &[u64]) {
        let now = Instant::now();
        for g in groups {
            let Some(h) = self.groups.get(*g) else {
                continue;
            };
            if h.raft.is_leader() {
                let _ = h.raft.trigger().heartbeat().await;
                continue;
            }
            let stale_leader = {
                let m = h.raft.metrics();
                let m = m.borrow_watched();
                m.current_leader == Some(from) && m.state == ServerState::Follower
            };
            if !stale_leader || self.groups.registry().is_repairing(*g) {
                continue;
            }
            let due = {
                let mut q = self.quiet.lock().expect("quiet lock");
                let recently = q.last_election.get(g).is_some_and(|t| {
                    now.duration_since(*t) < 2 * LEADER_SILENT_AFTER + jitter(self.id, *g)
                });
                if !recently {
                    q.last_election.insert(*g, now);
                }
                !recently
            };
            if due {
                tracing::info!(
                    group_id = *g,
                    leader = from,
                    "the leader's node knows no leader: starting an election"
                );
                self.metrics
                    .elections_started
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = h.raft.trigger().elect(true).await;
            }
        }
    }
}

/// Turns periodic heartbeats and election timers off for a shard group replica.
pub fn quiet_group(raft: &millrace_raft::Raft) {
    raft.runtime_config().heartbeat(false);
    raft.runtime_config().elect(false);
    // The tick only drives those two timers: stop it too, so an idle group's task sleeps.
    raft.runtime_config().tick(false);
}

pub async fn quiesce_loop(node: Arc<Node>) {
    for tick in 0u32.. {
        tokio::time::sleep(TICK / 2).await;
        announce(&node).await;
        tokio::time::sleep(TICK / 2).await;
        announce(&node).await;
        let nudges = if tick % CALM_CHECK_EVERY_TICKS == 0 || !calm(&node) {
            watch_leaders(&node).await
        } else {
            HashMap::new()
        };
        ping_peers(&node, &nudges).await;
    }
}

/// Whether every peer member answered a ping within `LEADER_SILENT_AFTER` and no group is
/// being nudged: then no group's leader can be silent yet.
fn calm(node: &Node) -> bool {
    let peers: Vec<u64> = node.members().into_keys().collect();
    let q = node.quiet.lock().expect("quiet lock");
    all_peers_fresh(node.id, &peers, &q.peer_seen, Instant::now()) && q.nudges.is_empty()
}

/// Whether every peer in `members` (this node aside) was seen within `LEADER_SILENT_AFTER`.
fn all_peers_fresh(
    me: u64,
    members: &[u64],
    peer_seen: &HashMap<u64, Instant>,
    now: Instant,
) -> bool {
    members.iter().filter(|m| **m != me).all(|m| {
        peer_seen
            .get(m)
            .is_some_and(|t| now.duration_since(*t) <= LEADER_SILENT_AFTER)
    })
}

/// One heartbeat per group that committed since the last round.
async fn announce(node: &Node) {
    let dirty: Vec<u64> = std::mem::take(&mut node.quiet.lock().expect("quiet lock").dirty)
        .into_iter()
        .collect();
    for g in dirty {
        if let Some(h) = node.groups.get(g) {
            if h.raft.is_leader() {
                let _ = h.raft.trigger().heartbeat().await;
            }
        }
    }
}

/// Per-group jitter so that replicas of one group do not all elect at once.
fn jitter(node_id: u64, group_id: u64) -> Duration {
    Duration::from_millis((node_id.wrapping_mul(7919) ^ group_id.wrapping_mul(104_729)) % 1500)
}

/// A follower replica whose leader seems gone.
struct Silent {
    group_id: u64,
    raft: millrace_raft::Raft,
    leader: Option<u64>,
    /// The other voters of the group.
    voters: Vec<u64>,
}

/// Checks every local shard group; returns, per peer, the groups to nudge.
///
/// One pass over the groups under the metrics borrow of each, with the peers' liveness read
/// once: per group per tick it costs a few comparisons when the leader is alive (the common
/// case). Locking the quiet state and collecting each group's voters per group per tick was
/// most of an idle node's CPU with 10,000 groups.
async fn watch_leaders(node: &Arc<Node>) -> HashMap<u64, Vec<u64>> {
    let now = Instant::now();
    let peer_seen = node.quiet.lock().expect("quiet lock").peer_seen.clone();
    let mut silent = Vec::new();
    // Replicas under repair that know no membership yet (their log was set aside whole).
    let mut unknown_members = Vec::new();
    node.groups.for_each_raft(|g, raft| {
        if g == METADATA_GROUP_ID {
            return;
        }
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        // A stopped replica (say, at an entry it cannot apply) elects nothing either.
        let membership = m.membership_config.membership();
        if membership.voter_ids().next().is_none() {
            // No membership known (a learner of nothing): only a replica under repair, whose
            // log was set aside whole, has a group to find (below).
            if m.current_leader.is_none() && m.state != ServerState::Shutdown {
                unknown_members.push((g, raft.clone()));
            }
            return;
        }
        if matches!(
            m.state,
            ServerState::Leader | ServerState::Learner | ServerState::Shutdown
        ) {
            return;
        }
        if !membership.voter_ids().any(|v| v != node.id) {
            return;
        }
        let leader_silent = match m.current_leader {
            // A leader removed from the group (a replica move) leads nothing any more.
            Some(l) if l != node.id && !membership.voter_ids().any(|v| v == l) => true,
            Some(l) if l != node.id => peer_seen
                .get(&l)
                .is_none_or(|t| now.duration_since(*t) > LEADER_SILENT_AFTER + jitter(node.id, g)),
            _ => true,
        };
        if !leader_silent {
            return;
        }
        silent.push(Silent {
            group_id: g,
            raft: raft.clone(),
            leader: m.current_leader,
            voters: membership.voter_ids().filter(|v| *v != node.id).collect(),
        });
    });
    // A repaired replica with an empty log learns its group's replicas from the metadata, to
    // nudge them: in a quiet group nothing else tells the leader that it must fill it in.
    for (g, raft) in unknown_members {
        if !node.groups.registry().is_repairing(g) {
            continue;
        }
        let voters: Vec<u64> = node.meta.read(|s| {
            s.shards_on(node.id)
                .find(|(_, sh)| sh.group_id == g)
                .map(|(_, sh)| {
                    sh.replicas
                        .iter()
                        .copied()
                        .filter(|r| *r != node.id)
                        .collect()
                })
                .unwrap_or_default()
        });
        if !voters.is_empty() {
            silent.push(Silent {
                group_id: g,
                raft,
                leader: None,
                voters,
            });
        }
    }
    let mut nudges: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut elections = Vec::new();
    {
        let mut q = node.quiet.lock().expect("quiet lock");
        // Nudges count within one spell of silence: a group not silent now (its leader
        // answers, it leads, or it is gone) starts from zero next time.
        let silent_ids: HashSet<u64> = silent.iter().map(|s| s.group_id).collect();
        q.nudges.retain(|g, _| silent_ids.contains(g));
        for s in silent {
            let g = s.group_id;
            let sent = q.nudges.get(&g).copied().unwrap_or(0);
            // Replicas that know no leader nudge for a while (jittered per replica), so that
            // they do not all start elections at once and split the vote.
            let patience =
                NUDGES_BEFORE_ELECTION + (jitter(node.id, g).as_millis() / TICK.as_millis()) as u32;
            // A replica rebuilt after damage stands for nothing until it is whole again: it
            // only nudges (a replica that still takes it for the leader then elects; see
            // `Node::nudge`).
            let repairing = node.groups.registry().is_repairing(g);
            if (s.leader.is_none() && sent < patience) || repairing {
                // Maybe a live leader just has had nothing to say: ask the replicas to speak up.
                for v in &s.voters {
                    nudges.entry(*v).or_default().push(g);
                }
                *q.nudges.entry(g).or_default() += 1;
                continue;
            }
            let recently = q.last_election.get(&g).is_some_and(|t| {
                now.duration_since(*t) < 2 * LEADER_SILENT_AFTER + jitter(node.id, g)
            });
            if !recently {
                q.last_election.insert(g, now);
                elections.push(s);
            }
        }
    }
    for s in elections {
        tracing::info!(group_id = s.group_id, leader = ?s.leader, "shard leader silent: starting an election");
        // With a known (now silent) leader, pre-vote first so a healthy leader is not deposed;
        // with none known (a new group, or after a leader left), a plain election.
        node.metrics
            .elections_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = s.raft.trigger().elect(s.leader.is_some()).await;
    }
    nudges
}

/// Pings every peer member (carrying nudges) and records who answered.
async fn ping_peers(node: &Arc<Node>, nudges: &HashMap<u64, Vec<u64>>) {
    let peers: Vec<(u64, String)> = node
        .members()
        .values()
        .filter(|m| m.node_id != node.id)
        .map(|m| (m.node_id, m.grpc_addr.clone()))
        .collect();
    let answered: Arc<Mutex<Vec<u64>>> = Arc::default();
    let pings = peers.into_iter().map(|(id, addr)| {
        let answered = answered.clone();
        let groups = nudges.get(&id).cloned().unwrap_or_default();
        let node = node.clone();
        async move {
            let Ok(mut client) = node.groups.transport().client(&addr) else {
                return;
            };
            let req = millrace_proto::internal::PingRequest {
                from_node_id: node.id,
                nudge_groups: groups,
            };
            if let Ok(Ok(_)) = tokio::time::timeout(TICK * 2, client.ping(req)).await {
                answered.lock().expect("answered lock").push(id);
            }
        }
    });
    futures::future::join_all(pings).await;
    for id in answered.lock().expect("answered lock").drain(..) {
        node.peer_alive(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_fresh_only_if_every_other_member_was_seen_recently() {
        let now = Instant::now();
        let recent = now - Duration::from_millis(200);
        let stale = now - LEADER_SILENT_AFTER - Duration::from_millis(1);
        let seen: HashMap<u64, Instant> = [(2, recent), (3, recent)].into();
        assert!(all_peers_fresh(1, &[1, 2, 3], &seen, now));
        // This node itself needs no ping.
        assert!(all_peers_fresh(1, &[1], &HashMap::new(), now));
        // A member never seen (down since this node started) is not fresh.
        assert!(!all_peers_fresh(1, &[1, 2, 3, 4], &seen, now));
        let seen: HashMap<u64, Instant> = [(2, recent), (3, stale)].into();
        assert!(!all_peers_fresh(1, &[1, 2, 3], &seen, now));
    }
}
