//! The client library against real 3-node clusters: the batching producer (every record
//! acknowledged once, per-key order, also across a reshard; the idempotent producer while
//! leaders are killed) and the shard readers (resuming, expired iterators, subscriptions).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Cluster;
use millrace_client::{
    Client, Producer, ProducerConfig, PutRecord, ShardReader, ShardSubscription, StartPosition,
};

/// Every record of the stream: shards in id order (parents before their children), each from
/// its start to its end.
async fn read_all(client: &Client, stream: &str) -> Vec<(String, String)> {
    let mut shards: Vec<String> = client
        .list_shards(stream)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    shards.sort();
    let mut out = Vec::new();
    for shard in shards {
        let mut it = client
            .get_shard_iterator(stream, &shard, StartPosition::TrimHorizon)
            .await
            .unwrap();
        while !it.is_empty() {
            let page = client.get_records(&it, 10_000).await.unwrap();
            let caught_up = page.records.is_empty() && page.millis_behind_latest == 0;
            for r in page.records {
                out.push((r.partition_key, String::from_utf8(r.data.to_vec()).unwrap()));
            }
            it = page.next_shard_iterator;
            if caught_up {
                break;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_records_keep_per_key_order_across_a_reshard() {
    let cluster = Cluster::start("producer", 3).await;
    let client = cluster.client();
    client.create_stream("p", 3).await.unwrap();
    client
        .wait_for_active("p", Duration::from_secs(60))
        .await
        .unwrap();
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        batch_records_max: 50,
        in_flight_per_shard: 4,
        buffer_records: 200, // small: `send` must wait for room (backpressure)
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), "p", config).await.unwrap();
    let keys = 40;
    let mut pending = Vec::new();
    let mut sent: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..2 {
        for i in 0..1500u32 {
            let key = format!("key-{}", i % keys);
            let n = sent.entry(key.clone()).or_default();
            let record = PutRecord::new(key.clone(), format!("{key}:{n}").into_bytes());
            *n += 1;
            pending.push(producer.send(record).await.expect("send"));
        }
        if round == 0 {
            // Split a shard while records are still in flight.
            client
                .split_shard("p", "shardId-000000000001", &(u128::MAX / 2).to_string())
                .await
                .expect("split");
        }
    }
    producer.flush().await.unwrap();
    let mut acked = 0;
    let mut on_children = 0;
    for p in pending {
        let put = p.await.expect("every record is written");
        assert!(put.shard_id.starts_with("shardId-"));
        acked += 1;
        // Shards 0-2 are the originals; 3 and 4 are the split's children.
        on_children += usize::from(put.shard_id.as_str() >= "shardId-000000000003");
    }
    assert_eq!(acked, 3000);
    assert!(on_children > 0, "the reshard happened while producing");
    producer.close().await.unwrap();
    client
        .wait_for_active("p", Duration::from_secs(60))
        .await
        .unwrap();

    // Read back: each key's records exactly once, in the order sent.
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (key, data) in read_all(&client, "p").await {
        let (k, n) = data.split_once(':').unwrap();
        assert_eq!(k, key);
        seen.entry(key).or_default().push(n.parse().unwrap());
    }
    assert_eq!(seen.len(), keys as usize);
    for (key, numbers) in &seen {
        let expected: Vec<u32> = (0..sent[key]).collect();
        assert_eq!(numbers, &expected, "{key}: every record once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_producer_writes_each_record_once_while_leaders_are_killed() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut cluster = Cluster::start("idempotent", 3).await;
    let client = cluster.client();
    client.create_stream("i", 1).await.unwrap();
    client
        .wait_for_active("i", Duration::from_secs(60))
        .await
        .unwrap();
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        batch_records_max: 20,
        in_flight_per_shard: 2,
        retries: 40,
        idempotent: true,
        ..ProducerConfig::default()
    };
    // A client that knows every node by id, so batches go straight to the shard leader.
    let seed = format!("http://{}", cluster.nodes[1].grpc);
    let routed = Client::discover([seed.as_str()], common::test_client_config())
        .await
        .unwrap();
    let producer = Arc::new(Producer::new(routed, "i", config).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let sent_count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (producer, stop, sent_count) = (producer.clone(), stop.clone(), sent_count.clone());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut sent: BTreeMap<String, u32> = BTreeMap::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key-{}", i % 8);
                let n = sent.entry(key.clone()).or_default();
                let record = PutRecord::new(key.clone(), format!("{key}:{n}").into_bytes());
                *n += 1;
                pending.push(producer.send(record).await.expect("send"));
                sent_count.fetch_add(1, Ordering::Relaxed);
                i += 1;
                if i.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (pending, sent)
        })
    };

    // Kill the shard's leader three times while the producer writes; each comes back.
    for round in 0..3 {
        let before = sent_count.load(Ordering::Relaxed);
        common::wait_until(
            Duration::from_secs(30),
            "the producer makes progress",
            || {
                let now = sent_count.load(Ordering::Relaxed);
                async move { now >= before + 200 }
            },
        )
        .await;
        let mut leader = None;
        common::wait_until(Duration::from_secs(30), "the shard has a leader", || {
            leader = cluster
                .running()
                .into_iter()
                .find(|id| !cluster.shard_leaderships(*id).is_empty());
            let found = leader.is_some();
            async move { found }
        })
        .await;
        let victim = leader.unwrap();
        eprintln!("round {round}: killing shard leader {victim}");
        cluster.kill(victim);
        common::wait_until(Duration::from_secs(30), "a new shard leader", || {
            let new = cluster
                .running()
                .into_iter()
                .any(|id| !cluster.shard_leaderships(id).is_empty());
            async move { new }
        })
        .await;
        cluster.spawn(victim);
        cluster.wait_ready(Duration::from_secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (pending, sent) = writer.await.unwrap();
    producer.flush().await.unwrap();
    let total = pending.len();
    for p in pending {
        p.await.expect("an idempotent producer writes every record");
    }

    // Every record exactly once, each key in order: no duplicates, no losses.
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let records = read_all(&client, "i").await;
    assert_eq!(records.len(), total, "each acknowledged record once");
    for (key, data) in records {
        let (k, n) = data.split_once(':').unwrap();
        assert_eq!(k, key);
        seen.entry(key).or_default().push(n.parse().unwrap());
    }
    for (key, numbers) in &seen {
        let expected: Vec<u32> = (0..sent[key]).collect();
        assert_eq!(numbers, &expected, "{key}: every record once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shard_readers_resume_and_survive_expired_iterators() {
    let env = [("MILLRACE_TEST_ITERATOR_TTL_MS", "1500")];
    let cluster = Cluster::start_with_env("readers", 3, &env).await;
    let client = cluster.client();
    client.create_stream("r", 1).await.unwrap();
    client
        .wait_for_active("r", Duration::from_secs(60))
        .await
        .unwrap();
    let records: Vec<PutRecord> = (0..30)
        .map(|i| PutRecord::new("k", format!("{i}").into_bytes()))
        .collect();
    client.put_records("r", records).await.unwrap();
    let shard = "shardId-000000000000";
    let data = |page: &millrace_client::RecordsPage| -> Vec<String> {
        page.records
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
            .collect()
    };

    let mut reader = ShardReader::new(client.clone(), "r", shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    let first = reader.next_page(10).await.unwrap().unwrap();
    assert_eq!(
        data(&first),
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    // Let the iterator expire (1.5 s here, 5 minutes in production): the reader carries on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = reader.next_page(10).await.unwrap().unwrap();
    assert_eq!(
        data(&second),
        (10..20).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    // A new reader resumes exactly after the last record handed out.
    let mut resumed = ShardReader::new(client.clone(), "r", shard, reader.resume_position())
        .await
        .unwrap();
    let third = resumed.next_page(100).await.unwrap().unwrap();
    assert_eq!(
        data(&third),
        (20..30).map(|i| i.to_string()).collect::<Vec<_>>()
    );

    // The push reader sees the same records.
    let consumer = client.register_consumer("r", "lib").await.unwrap();
    let mut sub = ShardSubscription::new(
        client.clone(),
        &consumer.consumer_arn,
        shard,
        StartPosition::TrimHorizon,
    );
    let mut pushed = Vec::new();
    while pushed.len() < 30 {
        let event = tokio::time::timeout(Duration::from_secs(20), sub.next_event())
            .await
            .expect("an event")
            .unwrap()
            .expect("the shard is open");
        pushed.extend(
            event
                .records
                .into_iter()
                .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
        );
    }
    assert_eq!(pushed, (0..30).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(matches!(
        sub.resume_position(),
        StartPosition::AfterSequenceNumber(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_group_leases_are_shared_fenced_and_released() {
    let cluster = Cluster::start("groups", 3).await;
    let client = cluster.client();
    client.create_stream("g", 4).await.unwrap();
    client
        .wait_for_active("g", Duration::from_secs(60))
        .await
        .unwrap();
    // A lone worker takes every lease; a second one takes over half, one per heartbeat.
    let w1 = client
        .group_heartbeat("g", "app", "w1", 5_000)
        .await
        .unwrap();
    assert_eq!(w1.len(), 4);
    client
        .group_heartbeat("g", "app", "w2", 5_000)
        .await
        .unwrap();
    client
        .group_heartbeat("g", "app", "w1", 5_000)
        .await
        .unwrap();
    let w2 = client
        .group_heartbeat("g", "app", "w2", 5_000)
        .await
        .unwrap();
    let w1 = client
        .group_heartbeat("g", "app", "w1", 5_000)
        .await
        .unwrap();
    assert_eq!((w1.len(), w2.len()), (2, 2));
    // w1's stale copy of a lease w2 took over is fenced: its checkpoint is refused.
    let moved = w2[0].clone();
    let stale = pb_lease(&moved.shard_id, moved.epoch - 1);
    let fenced = client
        .checkpoint_lease("g", "app", "w1", &stale, "123", false)
        .await
        .unwrap_err();
    assert_eq!(fenced.symbol(), Some("RESOURCE_IN_USE"));
    client
        .checkpoint_lease("g", "app", "w2", &moved, "123", false)
        .await
        .unwrap();
    // w2 leaves: its leases are free at once and w1 takes them, checkpoint and all.
    client.release_leases("g", "app", "w2").await.unwrap();
    let w1 = client
        .group_heartbeat("g", "app", "w1", 5_000)
        .await
        .unwrap();
    assert_eq!(w1.len(), 4);
    let described = client.describe_consumer_group("g", "app").await.unwrap();
    assert_eq!(described.workers, vec!["w1"]);
    let lease = described
        .leases
        .iter()
        .find(|l| l.shard_id == moved.shard_id)
        .unwrap();
    assert_eq!(lease.owner, "w1");
    assert_eq!(lease.checkpoint, "123");
    assert!(lease.epoch > moved.epoch);
    let missing = client
        .describe_consumer_group("g", "nope")
        .await
        .unwrap_err();
    assert_eq!(missing.symbol(), Some("RESOURCE_NOT_FOUND"));
}

fn pb_lease(shard_id: &str, epoch: u64) -> millrace_client::proto::ShardLease {
    millrace_client::proto::ShardLease {
        shard_id: shard_id.into(),
        epoch,
        ..Default::default()
    }
}

/// Writes records `r{i}` for `i` in `range`, keyed `k{i % keys}`, checking each was written.
async fn put_numbered(client: &Client, stream: &str, range: std::ops::Range<u32>, keys: u32) {
    let records: Vec<PutRecord> = range
        .map(|i| PutRecord::new(format!("k{}", i % keys), format!("r{i}").into_bytes()))
        .collect();
    for chunk in records.chunks(200) {
        let results = client.put_records(stream, chunk.to_vec()).await.unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }
}

/// A `millrace group consume` worker process printing to a file.
fn spawn_worker_on(
    cluster: &Cluster,
    stream: &str,
    worker: &str,
    out: &std::path::Path,
) -> std::process::Child {
    let endpoints: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.grpc))
        .collect();
    std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .env("MILLRACE_ENDPOINT", endpoints.join(","))
        .args([
            "group",
            "consume",
            stream,
            "--group",
            "app",
            "--lease-ms",
            "3000",
        ])
        .args(["--worker-id", worker])
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start a group worker")
}

fn printed(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Starts `n` workers `w1`..`wn` of group `app` on `stream`; returns their output files and
/// processes.
fn start_workers(
    cluster: &Cluster,
    stream: &str,
    n: usize,
) -> (Vec<std::path::PathBuf>, Vec<std::process::Child>) {
    let dir = cluster.root.join("workers");
    std::fs::create_dir_all(&dir).unwrap();
    let outs: Vec<std::path::PathBuf> = (1..=n).map(|i| dir.join(format!("w{i}.jsonl"))).collect();
    let workers = (1..=n)
        .map(|i| spawn_worker_on(cluster, stream, &format!("w{i}"), &outs[i - 1]))
        .collect();
    (outs, workers)
}

/// The data of every record the workers printed.
fn printed_data(outs: &[std::path::PathBuf]) -> std::collections::BTreeSet<String> {
    outs.iter()
        .flat_map(|out| printed(out))
        .map(|line| line["data"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_workers_share_leases_and_take_over_from_a_killed_one() {
    let cluster = Cluster::start("group-workers", 3).await;
    let client = cluster.client();
    client.create_stream("gc", 8).await.unwrap();
    client
        .wait_for_active("gc", Duration::from_secs(60))
        .await
        .unwrap();
    put_numbered(&client, "gc", 0..800, 100).await;
    let (outs, mut workers) = start_workers(&cluster, "gc", 3);
    // All three share the eight leases.
    common::wait_until(
        Duration::from_secs(30),
        "three workers hold every lease",
        || {
            let client = client.clone();
            async move {
                let Ok(g) = client.describe_consumer_group("gc", "app").await else {
                    return false;
                };
                let owners: std::collections::BTreeSet<&str> =
                    g.leases.iter().map(|l| l.owner.as_str()).collect();
                g.leases.len() == 8 && owners.len() == 3 && !owners.contains("")
            }
        },
    )
    .await;
    // Kill one for real; write more; the others take its leases once they expire.
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    put_numbered(&client, "gc", 800..1600, 100).await;
    common::wait_until(
        Duration::from_secs(40),
        "the survivors hold every lease and caught up",
        || {
            let client = client.clone();
            async move {
                let Ok(g) = client.describe_consumer_group("gc", "app").await else {
                    return false;
                };
                let mut caught_up = true;
                for l in &g.leases {
                    if l.owner != "w2" && l.owner != "w3" {
                        return false;
                    }
                    let from = if l.checkpoint.is_empty() {
                        StartPosition::TrimHorizon
                    } else {
                        StartPosition::AfterSequenceNumber(l.checkpoint.clone())
                    };
                    let it = client
                        .get_shard_iterator("gc", &l.shard_id, from)
                        .await
                        .unwrap();
                    caught_up &= client.get_records(&it, 1).await.unwrap().records.is_empty();
                }
                caught_up
            }
        },
    )
    .await;
    // SIGTERM: the survivors release their leases and exit 0.
    for w in &mut workers[1..] {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
    }
    for w in &mut workers[1..] {
        assert!(w.wait().unwrap().success(), "a worker exits 0 on SIGTERM");
    }
    let g = client.describe_consumer_group("gc", "app").await.unwrap();
    assert!(
        g.leases.iter().all(|l| l.owner.is_empty()),
        "leases released"
    );
    // What was printed was checkpointed: each shard's checkpoint is the last record printed.
    let mut last_printed: BTreeMap<String, u128> = BTreeMap::new();
    for out in &outs {
        for line in printed(out) {
            let seq: u128 = line["sequence_number"].as_str().unwrap().parse().unwrap();
            let shard = line["shard_id"].as_str().unwrap().to_string();
            let e = last_printed.entry(shard).or_default();
            *e = (*e).max(seq);
        }
    }
    for l in &g.leases {
        let checkpoint: u128 = l.checkpoint.parse().unwrap();
        assert_eq!(checkpoint, last_printed[&l.shard_id], "{}", l.shard_id);
    }
    // At least once: every record was printed by some worker.
    let seen = printed_data(&outs);
    let missing: Vec<u32> = (0..1600)
        .filter(|i| !seen.contains(&format!("r{i}")))
        .collect();
    assert!(missing.is_empty(), "records never processed: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reshard_during_group_consumption_hands_out_children_after_their_parent() {
    let cluster = Cluster::start("group-reshard", 3).await;
    let client = cluster.client();
    client.create_stream("rs", 1).await.unwrap();
    client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .unwrap();
    put_numbered(&client, "rs", 0..300, 50).await;
    let (outs, mut workers) = start_workers(&cluster, "rs", 2);
    common::wait_until(Duration::from_secs(30), "the parent is leased", || {
        let client = client.clone();
        async move {
            client
                .describe_consumer_group("rs", "app")
                .await
                .is_ok_and(|g| g.leases.iter().any(|l| !l.owner.is_empty()))
        }
    })
    .await;
    client
        .split_shard("rs", "shardId-000000000000", &(u128::MAX / 2).to_string())
        .await
        .unwrap();
    // Once the split completes, new records go to the children.
    client
        .wait_for_active("rs", Duration::from_secs(60))
        .await
        .unwrap();
    put_numbered(&client, "rs", 300..600, 50).await;
    // Until the parent is finished, its children are not handed out to anyone.
    let parent = "shardId-000000000000";
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let g = client.describe_consumer_group("rs", "app").await.unwrap();
        let parent_done = g.leases.iter().any(|l| l.shard_id == parent && l.finished);
        let children: Vec<_> = g.leases.iter().filter(|l| l.shard_id != parent).collect();
        if !parent_done {
            for c in &children {
                assert!(
                    c.owner.is_empty() && c.checkpoint.is_empty(),
                    "child {} handed out before its parent finished: {c:?}",
                    c.shard_id
                );
            }
        } else if children.len() == 2 && children.iter().all(|c| !c.checkpoint.is_empty()) {
            break; // children are being consumed, after the parent
        }
        assert!(
            std::time::Instant::now() < deadline,
            "children never consumed: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::wait_until(Duration::from_secs(30), "every record printed", || {
        let seen = printed_data(&outs);
        let all = (0..600).all(|i| seen.contains(&format!("r{i}")));
        async move { all }
    })
    .await;
    for w in &mut workers {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        assert!(w.wait().unwrap().success());
    }
    // Within each worker's output, no child record comes before a parent record.
    for out in &outs {
        let shards: Vec<String> = printed(out)
            .iter()
            .map(|l| l["shard_id"].as_str().unwrap().to_string())
            .collect();
        let first_child = shards.iter().position(|s| s != parent);
        let last_parent = shards.iter().rposition(|s| s == parent);
        if let (Some(c), Some(p)) = (first_child, last_parent) {
            assert!(
                p < c,
                "{}: a child record before a parent record",
                out.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_discovers_the_cluster_from_one_seed_and_survives_its_loss() {
    let mut cluster = Cluster::start("discovery", 3).await;
    let seed = format!("http://{}", cluster.nodes[0].grpc);
    let client = Client::discover([seed.as_str()], common::test_client_config())
        .await
        .unwrap();
    assert_eq!(client.endpoints().len(), 3, "{:?}", client.endpoints());
    client.create_stream("d", 1).await.unwrap();
    client
        .wait_for_active("d", Duration::from_secs(60))
        .await
        .unwrap();
    // An idempotent call sent twice is written once; the retry gets the first write's sequence
    // numbers.
    let batch = || {
        vec![
            PutRecord::new("k", b"once-a".to_vec()),
            PutRecord::new("k", b"once-b".to_vec()),
        ]
    };
    let first = client
        .put_records_as("d", batch(), Some(("p1", 0)))
        .await
        .unwrap();
    let again = client
        .put_records_as("d", batch(), Some(("p1", 0)))
        .await
        .unwrap();
    assert!(first.iter().all(|r| r.is_ok()));
    assert_eq!(first, again);
    let data: Vec<String> = read_all(&client, "d")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, vec!["once-a", "once-b"]);
    // The seed goes away; the discovered members still serve (once any leadership it held has
    // moved, a write goes through again).
    cluster.kill(1);
    assert!(!client.list_streams().await.unwrap().is_empty());
    common::wait_until(
        Duration::from_secs(30),
        "a write through the other nodes",
        || {
            let client = client.clone();
            async move {
                client
                    .put_records("d", vec![PutRecord::new("k", b"after".to_vec())])
                    .await
                    .is_ok_and(|r| r[0].is_ok())
            }
        },
    )
    .await;
}

/// A read whose outcome is unknown (an endpoint that accepts connections but never answers) is
/// retried at the next endpoint; a client pinned to the silent endpoint first still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_move_on_from_an_endpoint_that_never_answers() {
    let cluster = Cluster::start("silent", 3).await;
    // Accepts TCP connections and holds them without a byte in answer.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let config = millrace_client::ClientConfig {
        request_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_secs(10),
        ..common::test_client_config()
    };
    // Each client starts at a random endpoint: with eight of them, some start at the silent
    // one (all eight start at the live one with probability 1/256).
    let live = cluster.client_for(1).endpoints()[0].clone();
    for _ in 0..8 {
        let client = Client::with_config(
            [format!("http://{silent_addr}"), live.clone()],
            config.clone(),
        )
        .unwrap();
        let described = client.describe_cluster().await;
        assert!(described.is_ok(), "{described:?}");
    }
}

/// Concurrent one-record calls through a plain client go straight to the shard's leader
/// (the client learns where it is), are merged into far fewer Raft entries than calls, share
/// fsyncs, and keep each caller's order; a whole-call error keeps its symbol over the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_go_to_the_leader_and_merge_into_entries() {
    const CALLERS: usize = 64;
    const CALLS: usize = 10;
    let cluster = Cluster::start("merge", 3).await;
    let client = cluster.client();
    client.create_stream("m", 1).await.unwrap();
    client
        .wait_for_active("m", Duration::from_secs(60))
        .await
        .unwrap();
    // One write first, so the shard has a leader that has written.
    client
        .put_records("m", vec![PutRecord::new("warm-up", b"w".to_vec())])
        .await
        .unwrap();
    let leader_before = client.list_shards("m").await.unwrap()[0].leader_node_id;
    let before = client.node_stats().await;
    assert_eq!(before.len(), 3, "every node answers GetNodeStats");
    // A fresh client: its first calls, all at once, wait for its first routes.
    let client = cluster.client();

    let callers = (0..CALLERS).map(|c| {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..CALLS {
                let record = PutRecord::new(format!("caller-{c}"), format!("{c}:{i}").into_bytes());
                let results = client.put_records("m", vec![record]).await.expect("put");
                results[0].as_ref().expect("record written");
            }
        })
    });
    for c in futures::future::join_all(callers).await {
        c.unwrap();
    }
    let after = client.node_stats().await;
    let leader_after = client.list_shards("m").await.unwrap()[0].leader_node_id;
    let nodes = millrace_cli::bench::node_deltas(&before, &after);
    let sum = |f: fn(&millrace_cli::bench::NodeDelta) -> u64| nodes.iter().map(f).sum::<u64>();
    let calls = (CALLERS * CALLS) as u64;
    assert_eq!(sum(|n| n.requests_led), calls, "{nodes:?}");
    assert_eq!(sum(|n| n.records), calls, "{nodes:?}");
    assert!(
        sum(|n| n.entries) * 2 <= calls,
        "64 concurrent callers should merge into at most half as many entries: {nodes:?}"
    );
    if leader_before == leader_after && leader_before != 0 {
        let leader = nodes.iter().find(|n| n.node_id == leader_before).unwrap();
        assert_eq!(leader.requests_led, calls, "{nodes:?}");
        assert!(
            sum(|n| n.requests_forwarded) * 20 <= calls,
            "writes should reach the leader without a hop: {nodes:?}"
        );
        assert!(
            leader.fsyncs < leader.requests_led,
            "the leader's appends should share fsyncs: {nodes:?}"
        );
        // The same counters in the node's status page.
        let status = cluster.status(leader_before).expect("leader's status");
        let before_led = before.iter().find(|s| s.node_id == leader_before).unwrap();
        assert_eq!(
            status["write_path"]["requests_led"].as_u64(),
            Some(before_led.requests_led + calls),
            "{status}"
        );
    }

    // Every caller's records, in the order it wrote them.
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (_, data) in read_all(&client, "m").await {
        if let Some((c, i)) = data.split_once(':') {
            seen.entry(c.to_string())
                .or_default()
                .push(i.parse().unwrap());
        }
    }
    assert_eq!(seen.len(), CALLERS);
    for (caller, calls) in &seen {
        assert_eq!(*calls, (0..CALLS).collect::<Vec<_>>(), "caller {caller}");
    }

    // A whole-call failure comes back over the pipeline as the unary call reports it.
    let err = client
        .put_records("no-such-stream", vec![PutRecord::new("k", b"x".to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.symbol(), Some("RESOURCE_NOT_FOUND"), "{err}");
}
