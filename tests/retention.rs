//! Retention: expired records are purged on every replica (segment files deleted), and a replica
//! that was away during the purge comes back with exactly the retained records.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Cluster};
use millrace_client::{PutRecord, StartPosition};
use millrace_raft::codec::decode_entry;
use millrace_storage::{SegmentLog, SegmentLogConfig};

/// Test-only retention: every stream keeps records for this many seconds.
const RETENTION_SECS: u64 = 8;

fn log_index(seq: &str) -> u64 {
    (seq.parse::<u128>().unwrap() >> 20) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_records_are_purged_and_a_returning_replica_gets_exactly_the_rest() {
    let retention = RETENTION_SECS.to_string();
    let env = [
        ("MILLRACE_TEST_RETENTION_SECONDS", retention.as_str()),
        ("MILLRACE_RETENTION_CHECK_INTERVAL_MS", "200"),
        ("MILLRACE_SEGMENT_BYTES_MAX", "8192"),
    ];
    let mut cluster = Cluster::start_with_env("retention", 3, &env).await;
    let client = cluster.client();
    client.create_stream("ret", 1).await.expect("create");
    client
        .wait_for_active("ret", Duration::from_secs(60))
        .await
        .expect("active");
    let shard = client.list_shards("ret").await.unwrap()[0].shard_id.clone();
    let group = *cluster.group_dirs(1).first().expect("the shard's group");

    // Node 3 is away while records expire and are purged. The client talks to the nodes that
    // stay: a write in flight to a node as it is killed has an unknown outcome.
    cluster.kill(3);
    let client = millrace_client::Client::with_config(
        [1, 2].map(|id| cluster.client_for(id).endpoints()[0].clone()),
        common::test_client_config(),
    )
    .expect("client");
    let mut old_indexes = Vec::new();
    for call in 0..20 {
        let batch = (0..10)
            .map(|i| PutRecord::new(format!("old-{call}-{i}"), vec![b'o'; 200]))
            .collect();
        let r = client.put_records("ret", batch).await.expect("put old");
        old_indexes.push(log_index(&r[0].as_ref().expect("acked").sequence_number));
    }
    let (first_old, last_old) = (old_indexes[0], *old_indexes.last().unwrap());
    assert!(
        cluster.segment_bases(1, group).len() > 3,
        "the old records span several segments"
    );

    // Once they are all older than the retention period, write the records to keep.
    let written = Instant::now();
    let expiry = written + Duration::from_secs(RETENTION_SECS) + Duration::from_millis(300);
    wait_until(
        Duration::from_secs(RETENTION_SECS + 30),
        "the old records expire",
        || async move { Instant::now() >= expiry },
    )
    .await;
    let kept_at = Instant::now();
    let mut kept = Vec::new();
    for call in 0..5 {
        let batch = (0..10)
            .map(|i| PutRecord::new(format!("new-{call}-{i}"), vec![b'n'; 200]))
            .collect();
        let r = client.put_records("ret", batch).await.expect("put new");
        kept.extend(r.into_iter().map(|r| r.expect("acked").sequence_number));
    }
    let first_kept = log_index(&kept[0]);

    // Retention rounds purge the old records (a round may catch only part of them).
    wait_until(
        Duration::from_secs(20),
        "only retained records are readable",
        || {
            let (client, shard) = (client.clone(), shard.clone());
            async move {
                let it = client
                    .get_shard_iterator("ret", &shard, StartPosition::TrimHorizon)
                    .await
                    .unwrap();
                let page = client.get_records(&it, 10_000).await.unwrap();
                page.records
                    .first()
                    .is_some_and(|r| r.partition_key.starts_with("new-"))
            }
        },
    )
    .await;
    // The live replicas' oldest segment files are deleted from disk.
    for id in [1, 2] {
        wait_until(
            Duration::from_secs(20),
            &format!("node {id} deletes expired segments"),
            || {
                let bases = cluster.segment_bases(id, group);
                async move { bases.first().is_some_and(|b| *b > first_old) }
            },
        )
        .await;
    }
    let it = client
        .get_shard_iterator("ret", &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    let page = client.get_records(&it, 10_000).await.unwrap();
    let keys: Vec<&str> = page
        .records
        .iter()
        .map(|r| r.partition_key.as_str())
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("new-")),
        "only retained records are readable: {keys:?}"
    );
    assert_eq!(keys.len(), kept.len());

    // Node 3 comes back: it gets the snapshot at the boundary and then the retained entries.
    cluster.spawn(3);
    cluster.wait_ready(Duration::from_secs(60)).await;
    let leader_applied = cluster
        .applied(1)
        .into_iter()
        .chain(cluster.applied(2))
        .filter(|(g, _)| *g == group)
        .filter_map(|(_, a)| a)
        .max()
        .unwrap();
    wait_until(Duration::from_secs(20), "node 3 catches up", || {
        let caught = cluster
            .applied(3)
            .into_iter()
            .any(|(g, a)| g == group && a.is_some_and(|a| a >= leader_applied));
        async move { caught }
    })
    .await;
    assert!(
        kept_at.elapsed() < Duration::from_secs(RETENTION_SECS),
        "the check ran before the kept records could expire"
    );
    // The metrics saw it: the live replicas built snapshots at the retention point and purged
    // their logs; node 3 installed the leader's snapshot.
    for id in [1, 2] {
        let built = cluster.metric(id, "millrace_raft_snapshots_built_total");
        let purges = cluster.metric(id, "millrace_raft_log_purges_total");
        assert!(
            built >= Some(1.0) && purges >= Some(1.0),
            "node {id}: snapshots built {built:?}, purges {purges:?}"
        );
    }
    let installed = cluster.metric(3, "millrace_raft_snapshots_installed_total");
    assert!(installed >= Some(1.0), "node 3 installed {installed:?}");

    // Read node 3's log from a copy of its segment files.
    let copy = cluster.root.join("node-3-log-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(cluster.group_dir(3, group)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let (log, _) =
        SegmentLog::open(&copy, SegmentLogConfig::default(), None).expect("node 3's log");
    let (first, last) = (log.first_index().unwrap(), log.last_index().unwrap());
    // Segments hold whole frames, so a partly purged first segment may still begin earlier;
    // what matters is that no expired record is left and every retained one is there.
    let entries = log.read(first, last + 1, usize::MAX).unwrap();
    let mut indexes = Vec::new();
    for (i, raw) in &entries {
        let e = decode_entry(*i, raw).unwrap();
        if let openraft::EntryPayload::Normal(_) = e.payload {
            indexes.push(*i);
        }
    }
    assert!(
        first > last_old || indexes.iter().all(|i| *i > last_old || *i < first_old),
        "node 3 holds no expired record (its log starts at {first}; old records were {first_old}..={last_old})"
    );
    for k in &kept {
        assert!(
            entries.iter().any(|(i, _)| *i == log_index(k)),
            "node 3 holds retained entry {}",
            log_index(k)
        );
    }
    assert!(
        first_kept >= first,
        "node 3's log covers every retained record"
    );
}

/// The log entries (index → is a record batch) held in a copy of a replica's segment files.
fn replica_log(cluster: &Cluster, node: u64, group: u64, name: &str) -> Vec<(u64, bool)> {
    let copy = cluster.root.join(name);
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(cluster.group_dir(node, group)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let (log, _) = SegmentLog::open(&copy, SegmentLogConfig::default(), None).expect("replica log");
    let (Some(first), Some(last)) = (log.first_index(), log.last_index()) else {
        return Vec::new();
    };
    log.read(first, last + 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(i, raw)| {
            let normal = matches!(
                decode_entry(i, &raw).unwrap().payload,
                openraft::EntryPayload::Normal(_)
            );
            (i, normal)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_added_after_a_purge_receives_exactly_the_retained_records() {
    const SECS: u64 = 10;
    let retention = SECS.to_string();
    let env = [
        ("MILLRACE_TEST_RETENTION_SECONDS", retention.as_str()),
        ("MILLRACE_RETENTION_CHECK_INTERVAL_MS", "200"),
        ("MILLRACE_SEGMENT_BYTES_MAX", "8192"),
    ];
    let cluster = Cluster::start_with_env("retention-join", 4, &env).await;
    let client = cluster.client();
    client.create_stream("join", 1).await.expect("create");
    let d = client
        .wait_for_active("join", Duration::from_secs(60))
        .await
        .expect("active");
    let shard = d.shards[0].clone();
    let replicas = shard.replica_node_ids.clone();
    let newcomer = (1..=4)
        .find(|n| !replicas.contains(n))
        .expect("a node without a replica");
    let leaving = *replicas
        .iter()
        .find(|r| **r != shard.leader_node_id)
        .expect("a follower");
    let group = *cluster.group_dirs(replicas[0]).first().expect("group");
    assert!(cluster.group_dirs(newcomer).is_empty());

    let mut old = Vec::new();
    for call in 0..20 {
        let batch = (0..10)
            .map(|i| PutRecord::new(format!("old-{call}-{i}"), vec![b'o'; 200]))
            .collect();
        let r = client.put_records("join", batch).await.expect("put old");
        old.push(log_index(&r[0].as_ref().unwrap().sequence_number));
    }
    let expiry = Instant::now() + Duration::from_secs(SECS) + Duration::from_millis(300);
    wait_until(
        Duration::from_secs(SECS + 30),
        "the old records expire",
        || async move { Instant::now() >= expiry },
    )
    .await;
    let kept_at = Instant::now();
    let mut kept = Vec::new();
    for call in 0..5 {
        let batch = (0..10)
            .map(|i| PutRecord::new(format!("new-{call}-{i}"), vec![b'n'; 200]))
            .collect();
        let r = client.put_records("join", batch).await.expect("put new");
        kept.extend(
            r.into_iter()
                .map(|r| log_index(&r.unwrap().sequence_number)),
        );
    }
    wait_until(
        Duration::from_secs(20),
        "the old records are purged",
        || {
            let client = client.clone();
            let shard_id = shard.shard_id.clone();
            async move {
                let it = client
                    .get_shard_iterator("join", &shard_id, StartPosition::TrimHorizon)
                    .await
                    .unwrap();
                let page = client.get_records(&it, 10_000).await.unwrap();
                page.records
                    .first()
                    .is_some_and(|r| r.partition_key.starts_with("new-"))
            }
        },
    )
    .await;

    // Move a replica onto the node that never had one: it joins as a learner after the purge.
    client
        .move_shard_replica("join", &shard.shard_id, leaving, newcomer)
        .await
        .expect("move");
    wait_until(Duration::from_secs(30), "the move completes", || {
        let client = client.clone();
        async move {
            let d = client.describe_stream("join").await.unwrap();
            let r = &d.shards[0].replica_node_ids;
            r.contains(&newcomer) && !r.contains(&leaving)
        }
    })
    .await;
    wait_until(
        Duration::from_secs(20),
        "the old replica is deleted from disk",
        || {
            let gone = !cluster.group_dirs(leaving).contains(&group);
            async move { gone }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the new replica holds the retained records",
        || {
            let log = replica_log(&cluster, newcomer, group, "probe");
            let _ = std::fs::remove_dir_all(cluster.root.join("probe"));
            let done = kept.iter().all(|k| log.iter().any(|(i, _)| i == k));
            async move { done }
        },
    )
    .await;
    assert!(
        kept_at.elapsed() < Duration::from_secs(SECS),
        "checked before the kept records expire"
    );
    let log = replica_log(&cluster, newcomer, group, "newcomer-log");
    let (first_old, last_old) = (old[0], *old.last().unwrap());
    let expired: Vec<u64> = log
        .iter()
        .filter(|(i, normal)| *normal && *i >= first_old && *i <= last_old)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        expired.is_empty(),
        "the new replica received expired entries {expired:?}"
    );
    let first_new = log.first().map(|(i, _)| *i).unwrap();
    assert!(
        first_new > first_old,
        "the new replica's log starts after the purge point ({first_new})"
    );
}
