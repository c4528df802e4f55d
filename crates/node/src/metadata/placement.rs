//! Replica placement across fault domains (DESIGN decision 6): a pure function of the members
//! and their current load.

use std::collections::BTreeMap;

pub type NodeId = u64;

/// A candidate node and how much it already carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    pub node_id: NodeId,
    pub zone: String,
    pub replicas: usize,
    pub leaders: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor {replication_factor} needs at least {replication_factor} nodes, the cluster has {nodes}")]
    NotEnoughNodes {
        replication_factor: usize,
        nodes: usize,
    },
}

/// Chooses `replication_factor` distinct nodes for a new shard: distinct zones while there are
/// enough of them (else as even a spread as possible), least-loaded nodes first. The first node
/// returned is the preferred leader: the chosen node with the fewest leaderships. `loads` is
/// updated so that successive calls spread shards.
pub fn place_replicas(
    loads: &mut [NodeLoad],
    replication_factor: usize,
) -> Result<Vec<NodeId>, PlacementError> {
    if loads.len() < replication_factor || replication_factor == 0 {
        return Err(PlacementError::NotEnoughNodes {
            replication_factor,
            nodes: loads.len(),
        });
    }
    let mut chosen: Vec<usize> = Vec::with_capacity(replication_factor);
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..replication_factor {
        let best = (0..loads.len())
            .filter(|i| !chosen.contains(i))
            .min_by_key(|&i| {
                let l = &loads[i];
                (
                    per_zone.get(l.zone.as_str()).copied().unwrap_or(0),
                    l.replicas,
                    l.node_id,
                )
            })
            .expect("enough nodes checked above");
        *per_zone.entry(loads[best].zone.as_str()).or_default() += 1;
        chosen.push(best);
    }
    let leader_pos = (0..chosen.len())
        .min_by_key(|&p| (loads[chosen[p]].leaders, loads[chosen[p]].node_id))
        .expect("at least one replica");
    chosen.swap(0, leader_pos);
    for (p, &i) in chosen.iter().enumerate() {
        loads[i].replicas += 1;
        if p == 0 {
            loads[i].leaders += 1;
        }
    }
    Ok(chosen.iter().map(|&i| loads[i].node_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, zone: &str) -> NodeLoad {
        NodeLoad {
            node_id: id,
            zone: zone.into(),
            replicas: 0,
            leaders: 0,
        }
    }

    #[test]
    fn replicas_go_to_distinct_zones_and_spread() {
        let mut loads = vec![
            node(1, "a"),
            node(2, "a"),
            node(3, "b"),
            node(4, "b"),
            node(5, "c"),
            node(6, "c"),
        ];
        for _ in 0..12 {
            let r = place_replicas(&mut loads, 3).unwrap();
            let mut zones: Vec<_> = r
                .iter()
                .map(|id| {
                    loads
                        .iter()
                        .find(|l| l.node_id == *id)
                        .unwrap()
                        .zone
                        .clone()
                })
                .collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "placement {r:?} repeats a zone");
        }
        assert!(loads.iter().all(|l| l.replicas == 6), "{loads:?}");
        assert!(loads.iter().all(|l| l.leaders == 2), "{loads:?}");
    }

    #[test]
    fn fewer_zones_than_replicas_spread_evenly() {
        let mut loads = vec![node(1, "a"), node(2, "a"), node(3, "b")];
        let r = place_replicas(&mut loads, 3).unwrap();
        assert_eq!(r.len(), 3);
        let mut loads = vec![node(1, "a"), node(2, "b")];
        assert_eq!(
            place_replicas(&mut loads, 3),
            Err(PlacementError::NotEnoughNodes {
                replication_factor: 3,
                nodes: 2
            })
        );
    }
}
