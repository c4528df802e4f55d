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

    // Node 3 is away while records expire and are purged.
    cluster.kill(3);
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
