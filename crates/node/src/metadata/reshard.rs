//! Resharding (DESIGN decision 7) as pure functions: planning SplitShard, MergeShards and
//! UpdateShardCount, and applying the two metadata steps of a reshard.
//!
//! 1. `Reshard`: the parents start *closing*; children covering exactly the parents' hash range
//!    are created *pending* (their Raft groups start, but they take no writes).
//! 2. Each parent's leader appends a *seal* entry; writes ordered after it are refused.
//! 3. `CompleteReshard`: the parents close at their seals' sequence numbers and the children
//!    open. Every record acknowledged by a parent precedes its seal, and the children take
//!    writes only after it, so per partition key every record before the reshard orders
//!    before every record after it.

use super::placement::NodeId;
use super::state::{
    shard_id, MetaResponse, MetaState, ShardMeta, ShardStatus, StreamMeta, StreamStatus,
};
use crate::shard::hashing::even_ranges;
use crate::shard::sequence::SequenceNumber;

/// Which shards close and which hash ranges the children get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardPlan {
    pub parents: Vec<String>,
    pub children: Vec<(u128, u128)>,
}

/// Why a reshard cannot be planned, worded as Kinesis words it ([`crate::messages`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{}", crate::messages::could_not_find_shard(.stream, .shard))]
    ShardNotFound { stream: String, shard: String },
    /// Closed or closing: an earlier reshard took it (or is taking it).
    #[error("{}", crate::messages::shard_not_open(.stream, .shard))]
    ShardNotOpen { stream: String, shard: String },
    #[error("{0}")]
    Invalid(String),
}

fn open_shard<'a>(stream: &'a StreamMeta, shard_id: &str) -> Result<&'a ShardMeta, PlanError> {
    let names = || (stream.name.clone(), shard_id.to_string());
    let s = stream.shard(shard_id).ok_or_else(|| {
        let (stream, shard) = names();
        PlanError::ShardNotFound { stream, shard }
    })?;
    if s.status != ShardStatus::Open {
        let (stream, shard) = names();
        return Err(PlanError::ShardNotOpen { stream, shard });
    }
    Ok(s)
}

/// SplitShard: as Kinesis has it, `new_starting_hash_key` must be greater than one plus the
/// parent's starting hash key and less than its ending hash key.
pub fn plan_split(
    stream: &StreamMeta,
    shard: &str,
    new_starting_hash_key: u128,
) -> Result<ReshardPlan, PlanError> {
    let p = open_shard(stream, shard)?;
    let (start, end) = (p.starting_hash_key, p.ending_hash_key);
    let inside = new_starting_hash_key > start.saturating_add(1) && new_starting_hash_key < end;
    if !inside {
        let range = (start, end);
        return Err(PlanError::Invalid(crate::messages::split_key_outside(
            &stream.name,
            shard,
            new_starting_hash_key,
            range,
        )));
    }
    Ok(ReshardPlan {
        parents: vec![p.shard_id.clone()],
        children: vec![
            (p.starting_hash_key, new_starting_hash_key - 1),
            (new_starting_hash_key, p.ending_hash_key),
        ],
    })
}

/// MergeShards: the two shards must be open and adjacent.
pub fn plan_merge(
    stream: &StreamMeta,
    shard: &str,
    adjacent: &str,
) -> Result<ReshardPlan, PlanError> {
    let a = open_shard(stream, shard)?;
    let b = open_shard(stream, adjacent)?;
    let (lo, hi) = if a.starting_hash_key < b.starting_hash_key {
        (a, b)
    } else {
        (b, a)
    };
    if lo.ending_hash_key.checked_add(1) != Some(hi.starting_hash_key) {
        return Err(PlanError::Invalid(crate::messages::shards_not_adjacent(
            &stream.name,
            shard,
            adjacent,
        )));
    }
    Ok(ReshardPlan {
        parents: vec![lo.shard_id.clone(), hi.shard_id.clone()],
        children: vec![(lo.starting_hash_key, hi.ending_hash_key)],
    })
}

/// UpdateShardCount with UNIFORM_SCALING: every open shard closes and `target` children split
/// the key space evenly. Like Kinesis, the target is at most double and at least half.
pub fn plan_uniform_scaling(stream: &StreamMeta, target: u32) -> Result<ReshardPlan, String> {
    let open: Vec<&ShardMeta> = stream
        .shards
        .iter()
        .filter(|s| s.status == ShardStatus::Open)
        .collect();
    let n = open.len() as u32;
    if target == 0 || target > 2 * n || target * 2 < n {
        return Err(format!(
            "TargetShardCount {target} must be between {} and {} (half to double the {n} open shards)",
            n.div_ceil(2),
            2 * n
        ));
    }
    if target == n {
        return Err(format!("the stream already has {n} open shards"));
    }
    let mut parents: Vec<&ShardMeta> = open;
    parents.sort_by_key(|s| s.starting_hash_key);
    Ok(ReshardPlan {
        parents: parents.iter().map(|s| s.shard_id.clone()).collect(),
        children: even_ranges(target),
    })
}

/// The shards an ON_DEMAND stream needs for a warm throughput of `mibps` (one per MiB/s of
/// writes, Kinesis's shard capacity).
pub fn shards_for_mibps(mibps: u32) -> u32 {
    mibps.max(1)
}

/// UpdateStreamWarmThroughput's scaling: when the open shards cannot take `mibps`, every open
/// shard closes and [`shards_for_mibps`] children split the key space evenly (as
/// UNIFORM_SCALING, without its doubling bound); `None` when the stream already has enough.
pub fn plan_warm_throughput(stream: &StreamMeta, mibps: u32) -> Option<ReshardPlan> {
    let mut open: Vec<&ShardMeta> = stream
        .shards
        .iter()
        .filter(|s| s.status == ShardStatus::Open)
        .collect();
    let target = shards_for_mibps(mibps);
    if target as usize <= open.len() {
        return None;
    }
    open.sort_by_key(|s| s.starting_hash_key);
    Some(ReshardPlan {
        parents: open.iter().map(|s| s.shard_id.clone()).collect(),
        children: even_ranges(target),
    })
}

impl MetaState {
    pub(super) fn apply_reshard(
        &mut self,
        name: &str,
        parents: &[String],
        children: &[(u128, u128)],
        placements: &[Vec<NodeId>],
        timestamp_ms: i64,
    ) -> MetaResponse {
        if let Some(bad) = placements
            .iter()
            .flatten()
            .find(|n| !self.members.contains_key(n))
        {
            return MetaResponse::InvalidArgument(format!(
                "placement names node {bad}, which is not a member"
            ));
        }
        let mut next_group = self.next_group_id.max(1);
        let stream = match self.live_stream(name) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if stream.status != StreamStatus::Active {
            return MetaResponse::ResourceInUse(format!(
                "Stream {name} is {:?}; it must be ACTIVE to reshard",
                stream.status
            ));
        }
        if let Err(e) = check_plan(stream, parents, children, placements.len()) {
            return MetaResponse::InvalidArgument(e);
        }
        let mut new_shards = Vec::new();
        let first_number = stream.shards.len() as u64;
        for (next_number, (&(start, end), replicas)) in
            (first_number..).zip(children.iter().zip(placements))
        {
            let parent_ids = parents
                .iter()
                .filter_map(|p| stream.shard(p))
                .filter(|p| p.starting_hash_key <= end && start <= p.ending_hash_key)
                .map(|p| p.shard_id.clone())
                .collect();
            new_shards.push(ShardMeta {
                shard_id: shard_id(next_number),
                group_id: next_group,
                starting_hash_key: start,
                ending_hash_key: end,
                replicas: replicas.clone(),
                parent_shard_ids: parent_ids,
                status: ShardStatus::Pending,
                ending_sequence_number: None,
                created_ms: timestamp_ms,
                closed_ms: None,
                moving: None,
            });
            next_group += 1;
        }
        for s in stream
            .shards
            .iter_mut()
            .filter(|s| parents.contains(&s.shard_id))
        {
            s.status = ShardStatus::Closing;
        }
        stream.shards.extend(new_shards);
        stream.status = StreamStatus::Updating;
        self.next_group_id = next_group;
        MetaResponse::Ok
    }

    pub(super) fn apply_complete_reshard(
        &mut self,
        name: &str,
        seals: &[(String, u64)],
        timestamp_ms: i64,
    ) -> MetaResponse {
        let stream = match self.live_stream(name) {
            Ok(s) => s,
            Err(r) => return r,
        };
        for (parent, seal_index) in seals {
            if let Some(s) = stream.shards.iter_mut().find(|s| &s.shard_id == parent) {
                if s.status == ShardStatus::Closing {
                    s.status = ShardStatus::Closed;
                    s.ending_sequence_number =
                        Some(SequenceNumber::new(*seal_index, 0).to_string());
                    s.closed_ms = Some(timestamp_ms);
                }
            }
        }
        let closed: Vec<String> = stream
            .shards
            .iter()
            .filter(|s| s.status == ShardStatus::Closed)
            .map(|s| s.shard_id.clone())
            .collect();
        for s in stream
            .shards
            .iter_mut()
            .filter(|s| s.status == ShardStatus::Pending)
        {
            if s.parent_shard_ids.iter().all(|p| closed.contains(p)) {
                s.status = ShardStatus::Open;
            }
        }
        if stream
            .shards
            .iter()
            .all(|s| matches!(s.status, ShardStatus::Open | ShardStatus::Closed))
        {
            stream.status = StreamStatus::Active;
        }
        MetaResponse::Ok
    }
}

/// Parents open and contiguous; children contiguous and covering exactly the same range.
fn check_plan(
    stream: &StreamMeta,
    parents: &[String],
    children: &[(u128, u128)],
    placements: usize,
) -> Result<(), String> {
    if parents.is_empty() || children.is_empty() || placements != children.len() {
        return Err("a reshard needs parents, children and one placement per child".into());
    }
    let mut ps: Vec<&ShardMeta> = parents
        .iter()
        .map(|p| open_shard(stream, p))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ps.sort_by_key(|s| s.starting_hash_key);
    for w in ps.windows(2) {
        if w[0].ending_hash_key.checked_add(1) != Some(w[1].starting_hash_key) {
            return Err("the parent shards are not contiguous".into());
        }
    }
    for w in children.windows(2) {
        if w[0].1.checked_add(1) != Some(w[1].0) {
            return Err("the children's hash key ranges are not contiguous".into());
        }
    }
    let (first, last) = (ps[0], ps[ps.len() - 1]);
    if children[0].0 != first.starting_hash_key
        || children[children.len() - 1].1 != last.ending_hash_key
    {
        return Err("the children must cover exactly the parents' hash key range".into());
    }
    if children.iter().any(|(a, b)| a > b) {
        return Err("a child's hash key range is empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::{Member, MetaCommand};

    fn state_with_stream(shards: usize) -> MetaState {
        let mut st = MetaState::default();
        st.apply(&MetaCommand::RegisterNode(Member {
            node_id: 1,
            zone: "a".into(),
            grpc_addr: "x".into(),
            http_addr: "y".into(),
            decommissioning: false,
        }));
        st.apply(&MetaCommand::CreateStream {
            name: "s".into(),
            creation_timestamp_ms: 1,
            retention_period_hours: 24,
            replication_factor: 1,
            placements: vec![vec![1]; shards],
            max_record_bytes: 1 << 20,
            stream_mode: Default::default(),
        });
        st.apply(&MetaCommand::SetStreamStatus {
            name: "s".into(),
            status: StreamStatus::Active,
        });
        st
    }

    fn reshard(st: &mut MetaState, plan: ReshardPlan) -> MetaResponse {
        let n = plan.children.len();
        st.apply(&MetaCommand::Reshard {
            name: "s".into(),
            parents: plan.parents,
            children: plan.children,
            placements: vec![vec![1]; n],
            timestamp_ms: 5,
        })
    }

    #[test]
    fn split_then_complete() {
        let mut st = state_with_stream(2);
        let s = st.streams["s"].clone();
        let mid = s.shards[0].ending_hash_key / 2;
        assert!(
            plan_split(&s, "shardId-000000000000", 0).is_err(),
            "not strictly inside"
        );
        assert!(plan_split(&s, "shardId-000000000000", s.shards[0].ending_hash_key + 1).is_err());
        let plan = plan_split(&s, "shardId-000000000000", mid).unwrap();
        assert_eq!(reshard(&mut st, plan.clone()), MetaResponse::Ok);
        let s = &st.streams["s"];
        assert_eq!(s.status, StreamStatus::Updating);
        assert_eq!(s.shards[0].status, ShardStatus::Closing);
        assert_eq!(s.shards[2].status, ShardStatus::Pending);
        assert_eq!(s.shards[2].parent_shard_ids, vec!["shardId-000000000000"]);
        assert_eq!(s.shards[3].starting_hash_key, mid);
        assert_eq!(
            s.shard_for_hash(0).unwrap().shard_id,
            "shardId-000000000000",
            "parent owns writes while closing"
        );
        assert!(
            matches!(reshard(&mut st, plan), MetaResponse::ResourceInUse(_)),
            "one reshard at a time"
        );
        let done = MetaCommand::CompleteReshard {
            name: "s".into(),
            seals: vec![("shardId-000000000000".into(), 7)],
            timestamp_ms: 9,
        };
        assert_eq!(st.apply(&done), MetaResponse::Ok);
        let s = &st.streams["s"];
        assert_eq!(s.status, StreamStatus::Active);
        assert_eq!(s.shards[0].status, ShardStatus::Closed);
        assert_eq!(
            s.shards[0].ending_sequence_number.as_deref(),
            Some("7340032")
        );
        assert_eq!(s.shards[2].status, ShardStatus::Open);
        assert_eq!(
            s.shard_for_hash(0).unwrap().shard_id,
            "shardId-000000000002"
        );
        assert_eq!(s.children_of("shardId-000000000000").count(), 2);
    }

    #[test]
    fn merge_needs_adjacent_open_shards() {
        let mut st = state_with_stream(3);
        let s = st.streams["s"].clone();
        assert!(plan_merge(&s, "shardId-000000000000", "shardId-000000000002").is_err());
        let plan = plan_merge(&s, "shardId-000000000001", "shardId-000000000000").unwrap();
        assert_eq!(
            plan.parents,
            vec!["shardId-000000000000", "shardId-000000000001"]
        );
        assert_eq!(reshard(&mut st, plan), MetaResponse::Ok);
        let child = &st.streams["s"].shards[3];
        assert_eq!(child.parent_shard_ids.len(), 2);
        assert_eq!(child.starting_hash_key, 0);
    }

    #[test]
    fn uniform_scaling_bounds_and_parents() {
        let st = state_with_stream(3);
        let s = &st.streams["s"];
        assert!(plan_uniform_scaling(s, 7).is_err());
        assert!(plan_uniform_scaling(s, 1).is_err());
        assert!(plan_uniform_scaling(s, 3).is_err());
        let mut st2 = st.clone();
        let plan = plan_uniform_scaling(s, 4).unwrap();
        assert_eq!(plan.children.len(), 4);
        assert_eq!(reshard(&mut st2, plan), MetaResponse::Ok);
        let s = &st2.streams["s"];
        // Each child lists exactly the parents its range overlaps.
        assert_eq!(s.shards[3].parent_shard_ids, vec!["shardId-000000000000"]);
        assert_eq!(
            s.shards[4].parent_shard_ids,
            vec!["shardId-000000000000", "shardId-000000000001"]
        );
        assert_eq!(s.shards[6].parent_shard_ids, vec!["shardId-000000000002"]);
    }

    #[test]
    fn warm_throughput_scales_up_only_past_the_open_shards() {
        let st = state_with_stream(3);
        let s = &st.streams["s"];
        assert_eq!(plan_warm_throughput(s, 0), None);
        assert_eq!(plan_warm_throughput(s, 3), None);
        // Beyond double at once, unlike UpdateShardCount.
        let plan = plan_warm_throughput(s, 10).expect("a plan");
        assert_eq!(plan.parents.len(), 3);
        assert_eq!(plan.children, even_ranges(10));
        let mut st2 = st.clone();
        assert_eq!(reshard(&mut st2, plan), MetaResponse::Ok);
    }
}
