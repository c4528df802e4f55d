//! The detailed cluster status the console shows (`/console/state`), built on the metadata
//! leader from the metadata and the nodes' last reports: every stream with its shards, their
//! leaders and replicas and the stream's traffic, consumer groups with their lag, and the
//! latest leader changes. Bounded: a stream lists at most [`SHARDS_LISTED_MAX`] shards.

use std::collections::{BTreeMap, HashMap};

use millrace_proto::internal::{ConsumerLag, GroupReport, StreamTraffic};
use serde_json::{json, Value};

use super::cluster::LeaderChange;
use crate::metadata::state::{MetaState, ShardStatus, METADATA_GROUP_ID};
use crate::shard::sequence::SequenceNumber;

/// Shards listed per stream (the rest are counted in `shards_omitted`).
pub const SHARDS_LISTED_MAX: usize = 256;

/// A group's leader as the live nodes report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Led {
    pub node: u64,
    pub term: u64,
    pub applied_index: u64,
}

/// Each group's leader: of the nodes up that report leading it, the one in the highest term
/// (a node that just lost leadership may not have reported so yet).
pub fn leaders(
    reports: &HashMap<u64, Vec<GroupReport>>,
    up: &impl Fn(u64) -> bool,
) -> HashMap<u64, Led> {
    let mut out: HashMap<u64, Led> = HashMap::new();
    for (node, groups) in reports.iter().filter(|(n, _)| up(**n)) {
        for g in groups.iter().filter(|g| g.leads()) {
            let led = Led {
                node: *node,
                term: g.term,
                applied_index: g.applied_index,
            };
            out.entry(g.group_id)
                .and_modify(|known| {
                    if led.term > known.term {
                        *known = led;
                    }
                })
                .or_insert(led);
        }
    }
    out
}

/// What the metadata leader heard, for [`add_detail`].
pub struct Detail<'a> {
    pub leaders: &'a HashMap<u64, Led>,
    /// Every node's per-stream counters, from its last report.
    pub traffic: &'a [StreamTraffic],
    /// How many nodes' reports `traffic` sums (the console restarts its rates when it changes).
    pub traffic_nodes: usize,
    pub changes: &'a [LeaderChange],
    pub lags: &'a ReportedLags,
}

/// Consumer groups' lag as the nodes reported it for the shards they led:
/// (stream, group, shard id, reporting node) → (records, millis). Keyed by node too, so that
/// a former leader's last report (a node gone silent) never hides the current leader's.
pub type ReportedLags = HashMap<(String, String, String, u64), (u64, u64)>;

/// Collects the consumer groups' lag from every node's last report.
pub fn reported_lags<'a>(reports: impl Iterator<Item = (u64, &'a [ConsumerLag])>) -> ReportedLags {
    let mut out = ReportedLags::new();
    for (node, lags) in reports {
        for l in lags {
            let key = (l.stream.clone(), l.group.clone(), l.shard_id.clone(), node);
            out.insert(key, (l.records, l.millis));
        }
    }
    out
}

/// How far a consumer group is behind on one shard (each `None` when unknown: no leader yet,
/// or its leader has not reported the group yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardLag {
    /// Log entries the shard's leader applied past the checkpoint.
    pub entries: Option<u64>,
    /// Records past the checkpoint.
    pub records: Option<u64>,
    /// Age of the oldest record past the checkpoint (0 with none).
    pub millis: Option<u64>,
}

/// A group's lag on `shard_id` of `stream`: 0 once the lease is finished; otherwise entries
/// from the leader's applied index, records and age from the leader's own report (a report
/// from a node that no longer leads the shard is stale and not used).
fn shard_lag(
    key: (&str, &str, &str),
    lease: &crate::metadata::groups::Lease,
    leader: Option<&Led>,
    lags: &ReportedLags,
) -> ShardLag {
    if lease.finished {
        return ShardLag {
            entries: Some(0),
            records: Some(0),
            millis: Some(0),
        };
    }
    let (stream, group, shard) = key;
    let reported = leader.and_then(|led| {
        lags.get(&(
            stream.to_string(),
            group.to_string(),
            shard.to_string(),
            led.node,
        ))
    });
    ShardLag {
        entries: lag_entries(false, lease.checkpoint.as_deref(), leader),
        records: reported.map(|(records, _)| *records),
        millis: reported.map(|(_, millis)| *millis),
    }
}

/// A consumer group's live workers: those holding an unexpired lease (a worker that stopped
/// is listed until some other worker's heartbeat prunes it; its leases expire regardless).
fn live_workers(g: &crate::metadata::groups::ConsumerGroup, now_ms: i64) -> Vec<&str> {
    let mut live: Vec<&str> = g
        .leases
        .values()
        .filter(|l| l.expires_ms >= now_ms)
        .filter_map(|l| l.owner.as_deref())
        .collect();
    live.sort_unstable();
    live.dedup();
    live
}

/// The group id of each shard of `stream`, by shard id.
fn groups_by_shard(s: &MetaState, stream: &str) -> HashMap<String, u64> {
    s.streams.get(stream).map_or_else(HashMap::new, |st| {
        st.shards
            .iter()
            .map(|sh| (sh.shard_id.clone(), sh.group_id))
            .collect()
    })
}

/// Adds `streams`, `consumer_groups`, `leader_changes` and `traffic_nodes` to the cluster
/// status `status`.
pub fn add_detail(status: &mut Value, s: &MetaState, d: &Detail<'_>) {
    let (leaders, traffic, changes) = (d.leaders, d.traffic, d.changes);
    let now_ms = super::now_ms();
    let mut totals: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    for t in traffic {
        let sum = totals.entry(t.stream.as_str()).or_default();
        for (total, v) in sum.iter_mut().zip([
            t.records_written,
            t.bytes_written,
            t.records_read,
            t.bytes_read,
        ]) {
            *total += v;
        }
    }
    let mut shard_of_group: HashMap<u64, (&str, &str)> = HashMap::new();
    let streams: Vec<Value> = s
        .streams
        .values()
        .map(|st| {
            let current: Vec<_> = st
                .shards
                .iter()
                .filter(|sh| sh.status != ShardStatus::Closed)
                .collect();
            for sh in &st.shards {
                shard_of_group.insert(sh.group_id, (st.name.as_str(), sh.shard_id.as_str()));
            }
            let shards: Vec<Value> = current
                .iter()
                .take(SHARDS_LISTED_MAX)
                .map(|sh| {
                    let led = leaders.get(&sh.group_id);
                    json!({
                        "shard_id": sh.shard_id,
                        "status": format!("{:?}", sh.status),
                        "group_id": sh.group_id,
                        "leader": led.map(|l| l.node),
                        "term": led.map(|l| l.term),
                        "replicas": sh.replicas,
                    })
                })
                .collect();
            let [records_written, bytes_written, records_read, bytes_read] =
                totals.get(st.name.as_str()).copied().unwrap_or_default();
            json!({
                "name": st.name,
                "status": format!("{:?}", st.status),
                "replication_factor": st.replication_factor,
                "open_shards": current.len(),
                "closed_shards": st.shards.len() - current.len(),
                "shards": shards,
                "shards_omitted": current.len().saturating_sub(SHARDS_LISTED_MAX),
                "traffic": {
                    "records_written": records_written,
                    "bytes_written": bytes_written,
                    "records_read": records_read,
                    "bytes_read": bytes_read,
                },
            })
        })
        .collect();
    let groups: Vec<Value> = s
        .consumer_groups
        .values()
        .map(|g| {
            let by_shard = groups_by_shard(s, &g.stream);
            let group_of_shard = |shard_id: &str| by_shard.get(shard_id).copied();
            let shards: Vec<Value> = g
                .leases
                .iter()
                .map(|(shard_id, lease)| {
                    let leader = group_of_shard(shard_id).and_then(|id| leaders.get(&id));
                    let lag = shard_lag((&g.stream, &g.name, shard_id), lease, leader, d.lags);
                    json!({
                        "shard_id": shard_id,
                        "owner": lease.owner,
                        "checkpoint": lease.checkpoint,
                        "finished": lease.finished,
                        "lag_entries": lag.entries,
                        "lag_records": lag.records,
                        "lag_millis": lag.millis,
                    })
                })
                .collect();
            json!({
                "stream": g.stream,
                "name": g.name,
                "workers": live_workers(g, now_ms),
                "shards": shards,
            })
        })
        .collect();
    let changes: Vec<Value> = changes
        .iter()
        .rev()
        .map(|c| {
            let (stream, shard_id) = match c.group_id {
                METADATA_GROUP_ID => (Some("(metadata)"), None),
                id => shard_of_group
                    .get(&id)
                    .map_or((None, None), |(st, sh)| (Some(*st), Some(*sh))),
            };
            json!({
                "at_ms": c.at_ms,
                "group_id": c.group_id,
                "stream": stream,
                "shard_id": shard_id,
                "from": c.from,
                "to": c.to,
                "term": c.term,
            })
        })
        .collect();
    status["streams"] = Value::from(streams);
    status["consumer_groups"] = Value::from(groups);
    status["leader_changes"] = Value::from(changes);
    status["traffic_nodes"] = Value::from(d.traffic_nodes);
    status["generated_ms"] = Value::from(now_ms);
}

/// A consumer group's state for the metrics (see [`group_lags`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub stream: String,
    pub group: String,
    pub workers: u64,
    /// Times a lease was handed out (first owner, a move, a take-over): the sum of the
    /// leases' epochs.
    pub leases_acquired: u64,
    pub lease_expiries: u64,
    /// Per shard with a lease: how far behind the group is.
    pub shards: Vec<(String, ShardLag)>,
}

/// Every consumer group with its lag per shard (see [`shard_lag`]).
pub fn group_lags(
    s: &MetaState,
    leaders: &HashMap<u64, Led>,
    lags: &ReportedLags,
    now_ms: i64,
) -> Vec<GroupLag> {
    s.consumer_groups
        .values()
        .map(|g| {
            let by_shard = groups_by_shard(s, &g.stream);
            let shards = g
                .leases
                .iter()
                .map(|(shard_id, lease)| {
                    let leader = by_shard.get(shard_id).and_then(|id| leaders.get(id));
                    let lag = shard_lag((&g.stream, &g.name, shard_id), lease, leader, lags);
                    (shard_id.clone(), lag)
                })
                .collect();
            GroupLag {
                stream: g.stream.clone(),
                group: g.name.clone(),
                workers: live_workers(g, now_ms).len() as u64,
                leases_acquired: g.leases.values().map(|l| l.epoch).sum(),
                lease_expiries: g.lease_expiries,
                shards,
            }
        })
        .collect()
}

/// Log entries the shard's leader has applied past a group's checkpoint: 0 once the lease is
/// finished, every applied entry with no checkpoint yet, unknown (`None`) without a leader
/// (or with a checkpoint that is not a sequence number).
fn lag_entries(finished: bool, checkpoint: Option<&str>, leader: Option<&Led>) -> Option<u64> {
    if finished {
        return Some(0);
    }
    let applied = leader?.applied_index;
    let done = match checkpoint {
        Some(text) => SequenceNumber::parse("checkpoint", text).ok()?.log_index,
        None => 0,
    };
    Some(applied.saturating_sub(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::internal::GroupRole;

    fn report(group_id: u64, role: GroupRole, term: u64, applied_index: u64) -> GroupReport {
        GroupReport {
            group_id,
            role: role as i32,
            term,
            applied_index,
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_is_the_live_node_leading_in_the_highest_term() {
        let reports = HashMap::from([
            (1, vec![report(7, GroupRole::Leader, 3, 10)]),
            (
                2,
                vec![
                    report(7, GroupRole::Leader, 4, 12),
                    report(8, GroupRole::Follower, 4, 1),
                ],
            ),
            (3, vec![report(7, GroupRole::Leader, 5, 14)]),
        ]);
        let all = leaders(&reports, &|_| true);
        assert_eq!(all[&7].node, 3);
        assert!(!all.contains_key(&8));
        let without_3 = leaders(&reports, &|n| n != 3);
        assert_eq!(
            without_3[&7],
            Led {
                node: 2,
                term: 4,
                applied_index: 12
            }
        );
    }

    #[test]
    fn lag_counts_entries_past_the_checkpoint() {
        let led = Led {
            node: 1,
            term: 2,
            applied_index: 50,
        };
        let at_40 = SequenceNumber::new(40, 3).to_string();
        assert_eq!(lag_entries(false, Some(&at_40), Some(&led)), Some(10));
        assert_eq!(lag_entries(false, None, Some(&led)), Some(50));
        assert_eq!(lag_entries(true, None, None), Some(0));
        assert_eq!(lag_entries(false, Some(&at_40), None), None);
        assert_eq!(lag_entries(false, Some("not a number"), Some(&led)), None);
    }

    #[test]
    fn records_and_time_behind_come_from_the_shards_current_leader() {
        let lease = |finished| crate::metadata::groups::Lease {
            owner: Some("w1".into()),
            epoch: 1,
            expires_ms: 0,
            checkpoint: Some(SequenceNumber::new(40, 0).to_string()),
            finished,
        };
        let led = |node| Led {
            node,
            term: 2,
            applied_index: 50,
        };
        let reported = reported_lags(
            [
                (
                    2,
                    &[ConsumerLag {
                        stream: "s".into(),
                        group: "g".into(),
                        shard_id: "shard-0".into(),
                        records: 17,
                        millis: 1500,
                    }][..],
                ),
                (3, &[][..]),
            ]
            .into_iter(),
        );
        let key = ("s", "g", "shard-0");
        assert_eq!(
            shard_lag(key, &lease(false), Some(&led(2)), &reported),
            ShardLag {
                entries: Some(10),
                records: Some(17),
                millis: Some(1500)
            }
        );
        // Node 2 no longer leads: its report is stale until node 3 reports the group.
        assert_eq!(
            shard_lag(key, &lease(false), Some(&led(3)), &reported),
            ShardLag {
                entries: Some(10),
                records: None,
                millis: None
            }
        );
        assert_eq!(
            shard_lag(key, &lease(false), None, &reported),
            ShardLag::default()
        );
        // Both the former leader (2, silent since) and the new one (3) reported the group:
        // the new leader's report is the one used, whichever was heard last.
        let lag = |node, records| {
            let l = ConsumerLag {
                stream: "s".into(),
                group: "g".into(),
                shard_id: "shard-0".into(),
                records,
                millis: 10,
            };
            (node, vec![l])
        };
        for order in [[lag(3, 4), lag(2, 17)], [lag(2, 17), lag(3, 4)]] {
            let both = reported_lags(order.iter().map(|(n, l)| (*n, l.as_slice())));
            let now = shard_lag(key, &lease(false), Some(&led(3)), &both);
            assert_eq!(now.records, Some(4));
        }
        assert_eq!(
            shard_lag(key, &lease(true), None, &reported),
            ShardLag {
                entries: Some(0),
                records: Some(0),
                millis: Some(0)
            }
        );
    }
}
