//! Consumer groups (DESIGN decision 9): what the Kinesis Client Library keeps in DynamoDB — one
//! lease per shard with an owner, an epoch that fences stale owners, an expiry on the server's
//! clock, and a checkpoint — kept in the metadata group instead. Every command carries the time
//! the metadata leader proposed it at (`now_ms`), so applying it is deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{MetaResponse, StreamMeta};

/// Group names: like stream names.
pub const GROUP_NAME_CHARS_MAX: usize = 128;
/// Lease durations a worker may ask for.
pub const LEASE_MS_MIN: i64 = 1_000;
pub const LEASE_MS_MAX: i64 = 300_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub stream: String,
    pub name: String,
    /// By shard id.
    pub leases: BTreeMap<String, Lease>,
    /// Live workers: id → time of their last heartbeat.
    pub workers: BTreeMap<String, i64>,
    /// Leases taken over from another worker whose lease had expired (it stopped
    /// heartbeating), since the group was made.
    #[serde(default)]
    pub lease_expiries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: Option<String>,
    /// Raised every time the lease changes hands; a checkpoint must name the current one.
    pub epoch: u64,
    pub expires_ms: i64,
    /// The last sequence number processed (resume after it).
    pub checkpoint: Option<String>,
    /// The shard is closed and was processed to its end: its children may be handed out.
    pub finished: bool,
}

/// The metadata key of a group.
pub fn group_key(stream: &str, group: &str) -> String {
    format!("{stream}/{group}")
}

/// Names of streams, consumers and groups: 1-`max` characters of `[a-zA-Z0-9_.-]`.
pub fn is_resource_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn validate_group_name(name: &str) -> Result<(), String> {
    if is_resource_name(name, GROUP_NAME_CHARS_MAX) {
        Ok(())
    } else {
        Err(format!(
            "group name {name:?} must be 1-{GROUP_NAME_CHARS_MAX} characters of [a-zA-Z0-9_.-]"
        ))
    }
}

impl ConsumerGroup {
    /// A shard may be handed out once every parent of it in this stream is finished.
    fn eligible(&self, stream: &StreamMeta, shard_id: &str) -> bool {
        let Some(shard) = stream.shard(shard_id) else {
            return false;
        };
        if self.leases.get(shard_id).is_some_and(|l| l.finished) {
            return false;
        }
        shard
            .parent_shard_ids
            .iter()
            .all(|p| stream.shard(p).is_none() || self.leases.get(p).is_some_and(|l| l.finished))
    }

    fn held_by(&self, worker: &str, now_ms: i64) -> usize {
        self.leases
            .values()
            .filter(|l| l.owner.as_deref() == Some(worker) && l.expires_ms >= now_ms)
            .count()
    }

    /// A worker's heartbeat: it is live until `now + lease_ms`; its leases are renewed; it takes
    /// free (unowned or expired) leases up to its fair share, and when none are free, one lease
    /// from the most loaded worker above the fair share (so load evens out gradually).
    pub fn heartbeat(&mut self, stream: &StreamMeta, worker: &str, now_ms: i64, lease_ms: i64) {
        self.workers.insert(worker.to_string(), now_ms);
        self.workers.retain(|_, seen| *seen + lease_ms >= now_ms);
        for shard in &stream.shards {
            if shard.status != super::state::ShardStatus::Pending {
                self.leases.entry(shard.shard_id.clone()).or_default();
            }
        }
        self.leases.retain(|id, _| stream.shard(id).is_some());
        for lease in self.leases.values_mut() {
            if lease.owner.as_deref() == Some(worker) && lease.expires_ms >= now_ms {
                lease.expires_ms = now_ms + lease_ms;
            }
        }
        let eligible: Vec<String> = self
            .leases
            .keys()
            .filter(|id| self.eligible(stream, id))
            .cloned()
            .collect();
        let workers = self.workers.len().max(1);
        let share = eligible.len().div_ceil(workers);
        let mut held = self.held_by(worker, now_ms);
        for id in &eligible {
            if held >= share {
                break;
            }
            let lease = self.leases.get_mut(id).expect("lease");
            if lease.owner.is_none() || lease.expires_ms < now_ms {
                if lease.owner.as_deref().is_some_and(|o| o != worker) {
                    self.lease_expiries += 1;
                }
                lease.owner = Some(worker.to_string());
                lease.epoch += 1;
                lease.expires_ms = now_ms + lease_ms;
                held += 1;
            }
        }
        if held < share {
            // Take one lease over from the most loaded worker above its share.
            let mut load: BTreeMap<String, usize> = BTreeMap::new();
            for id in &eligible {
                if let Some(owner) = &self.leases[id].owner {
                    *load.entry(owner.clone()).or_default() += 1;
                }
            }
            let busiest = load
                .into_iter()
                .filter(|(w, n)| w != worker && *n > share)
                .max_by_key(|(w, n)| (*n, std::cmp::Reverse(w.clone())));
            if let Some((busiest, _)) = busiest {
                let id = eligible
                    .iter()
                    .rev()
                    .find(|id| self.leases[*id].owner.as_deref() == Some(busiest.as_str()))
                    .cloned();
                if let Some(id) = id {
                    let lease = self.leases.get_mut(&id).expect("lease");
                    lease.owner = Some(worker.to_string());
                    lease.epoch += 1;
                    lease.expires_ms = now_ms + lease_ms;
                }
            }
        }
    }

    /// Records a checkpoint from the lease's current owner and epoch; anything else is fenced.
    pub fn checkpoint(
        &mut self,
        shard_id: &str,
        worker: &str,
        epoch: u64,
        sequence: Option<String>,
        finished: bool,
    ) -> MetaResponse {
        let Some(lease) = self.leases.get_mut(shard_id) else {
            return MetaResponse::ResourceNotFound(format!(
                "group {} has no lease for shard {shard_id}",
                self.name
            ));
        };
        if lease.owner.as_deref() != Some(worker) || lease.epoch != epoch {
            return MetaResponse::ResourceInUse(format!(
                "lease of {shard_id} is at epoch {} held by {:?}: the checkpoint of {worker} at epoch {epoch} is fenced",
                lease.epoch, lease.owner
            ));
        }
        if sequence.is_some() {
            lease.checkpoint = sequence;
        }
        lease.finished |= finished;
        if lease.finished {
            lease.owner = None;
        }
        MetaResponse::Ok
    }

    /// A worker leaving: its leases are free at once.
    pub fn release(&mut self, worker: &str) {
        self.workers.remove(worker);
        for lease in self.leases.values_mut() {
            if lease.owner.as_deref() == Some(worker) {
                lease.owner = None;
                lease.expires_ms = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::{ShardMeta, ShardStatus};

    fn stream(shards: &[(&str, &[&str], ShardStatus)]) -> StreamMeta {
        StreamMeta {
            name: "s".into(),
            shards: shards
                .iter()
                .map(|(id, parents, status)| ShardMeta {
                    shard_id: id.to_string(),
                    parent_shard_ids: parents.iter().map(|p| p.to_string()).collect(),
                    status: *status,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn owned(g: &ConsumerGroup, worker: &str) -> Vec<String> {
        g.leases
            .iter()
            .filter(|(_, l)| l.owner.as_deref() == Some(worker))
            .map(|(id, _)| id.clone())
            .collect()
    }

    #[test]
    fn leases_spread_over_workers_and_move_when_one_dies() {
        use ShardStatus::Open;
        let s = stream(&[
            ("a", &[], Open),
            ("b", &[], Open),
            ("c", &[], Open),
            ("d", &[], Open),
        ]);
        let mut g = ConsumerGroup::default();
        g.heartbeat(&s, "w1", 0, 10_000);
        assert_eq!(owned(&g, "w1").len(), 4, "a lone worker takes everything");
        // A second worker takes over from the first until both hold two.
        g.heartbeat(&s, "w2", 1_000, 10_000);
        g.heartbeat(&s, "w1", 1_100, 10_000);
        g.heartbeat(&s, "w2", 1_200, 10_000);
        assert_eq!((owned(&g, "w1").len(), owned(&g, "w2").len()), (2, 2));
        // w1 stops heartbeating: after its leases expire, w2 takes them (epochs raised).
        let taken = owned(&g, "w1");
        let epochs: Vec<u64> = taken.iter().map(|id| g.leases[id].epoch).collect();
        g.heartbeat(&s, "w2", 12_000, 10_000);
        assert_eq!(owned(&g, "w2").len(), 4);
        for (id, before) in taken.iter().zip(epochs) {
            assert!(g.leases[id].epoch > before);
        }
        // Those two were taken over on expiry; the moves between live workers were not.
        assert_eq!(g.lease_expiries, 2);
        // The fenced owner's checkpoint is refused; the new owner's is kept.
        let lease = g.leases[&taken[0]].clone();
        assert!(matches!(
            g.checkpoint(&taken[0], "w1", lease.epoch - 1, Some("5".into()), false),
            MetaResponse::ResourceInUse(_)
        ));
        assert_eq!(
            g.checkpoint(&taken[0], "w2", lease.epoch, Some("5".into()), false),
            MetaResponse::Ok
        );
        assert_eq!(g.leases[&taken[0]].checkpoint.as_deref(), Some("5"));
    }

    #[test]
    fn children_are_handed_out_only_after_their_parents_finish() {
        use ShardStatus::{Closed, Open};
        let s = stream(&[
            ("p", &[], Closed),
            ("c1", &["p"], Open),
            ("c2", &["p"], Open),
        ]);
        let mut g = ConsumerGroup::default();
        g.heartbeat(&s, "w", 0, 10_000);
        assert_eq!(owned(&g, "w"), vec!["p"]);
        let epoch = g.leases["p"].epoch;
        assert_eq!(
            g.checkpoint("p", "w", epoch, Some("9".into()), true),
            MetaResponse::Ok
        );
        g.heartbeat(&s, "w", 100, 10_000);
        assert_eq!(owned(&g, "w"), vec!["c1", "c2"]);
        // Released leases are free at once.
        g.release("w");
        assert!(owned(&g, "w").is_empty());
        g.heartbeat(&s, "v", 200, 10_000);
        assert_eq!(owned(&g, "v"), vec!["c1", "c2"]);
        assert_eq!(g.lease_expiries, 0, "released leases did not expire");
    }
}
